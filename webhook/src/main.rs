//! `taskrun-webhook`: the validating and mutating admission webhook for TaskRuns (DESIGN
//! section 4). Flags: `taskrun-webhook --help`.

use std::process::ExitCode;

use clap::Parser;
use taskrun_telemetry as telemetry;
use taskrun_webhook::{config, server};

/// mimalloc rather than glibc's malloc: fewer cycles per allocation, and freed memory goes back
/// to the OS (docs/benchmarks.md). Its v2 line (the `v2` feature) gives it back 10 ms after it
/// is freed; v3 waits a second, and a burst of the largest reviews then took the webhook past
/// its pod's memory limit.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Admission connections are served on one single-threaded runtime per core, at most 4
/// (`workers.rs`); this one runs the listeners, the index's watch and the certificate reload,
/// and serves its share of the connections.
///
/// Built by hand rather than with `#[tokio::main]`, whose runtime, dropped, waits for every
/// blocking task: a certificate read stalled on a hung mount or a FIFO would keep the process
/// from ever exiting after SIGTERM.
fn main() -> ExitCode {
    let config = config::Config::parse();
    if let Err(e) = telemetry::init(config.log_format, &config.log_level) {
        eprintln!("Error: {e}");
        return ExitCode::FAILURE;
    }
    telemetry::exit_code(run(config))
}

fn run(config: config::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let served = runtime.block_on(server::run(config));
    runtime.shutdown_timeout(server::BLOCKING_GRACE);
    served?;
    Ok(())
}
