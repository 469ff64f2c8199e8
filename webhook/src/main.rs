//! `taskrun-webhook`: the validating and mutating admission webhook for TaskRuns (DESIGN
//! section 4). Flags: `taskrun-webhook --help`.

use clap::Parser;
use taskrun_webhook::{config, server, telemetry};

/// mimalloc rather than glibc's malloc: fewer cycles per allocation, no arena lock
/// contention between worker threads, and freed memory goes back to the OS (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = config::Config::parse();
    telemetry::init(config.log_format, &config.log_level)?;
    server::run(config).await?;
    Ok(())
}
