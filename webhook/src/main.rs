//! `taskrun-webhook`: the validating and mutating admission webhook for TaskRuns (DESIGN
//! section 4). Flags: `taskrun-webhook --help`.

use std::time::Duration;

use clap::Parser;
use taskrun_webhook::{config, server, telemetry};

/// mimalloc rather than glibc's malloc: fewer cycles per allocation, and freed memory goes back
/// to the OS (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Once the server has returned, how long blocking-pool work (a certificate read) may take
/// before the process exits anyway.
const BLOCKING_GRACE: Duration = Duration::from_secs(3);

/// One thread: answering a review takes a few microseconds, and on one thread a request never
/// waits for another worker to be woken. Against two worker threads on the 2-core bench
/// machine: 15.5-16 instead of 18-19 us of CPU per request, more requests per second and a
/// lower p99 at 2,000 req/s (docs/benchmarks.md). More load is met with replicas.
///
/// Built by hand rather than with `#[tokio::main]`, whose runtime, dropped, waits for every
/// blocking task: a certificate read stalled on a hung mount or a FIFO would keep the process
/// from ever exiting after SIGTERM.
fn main() -> anyhow::Result<()> {
    let config = config::Config::parse();
    telemetry::init(config.log_format, &config.log_level)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let served = runtime.block_on(server::run(config));
    runtime.shutdown_timeout(BLOCKING_GRACE);
    served?;
    Ok(())
}
