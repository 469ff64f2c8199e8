//! taskrun-controller: reconciles TaskRuns into a ConfigMap and a Job per context version.

use std::process::ExitCode;

use clap::Parser;
use taskrun_controller::{config, controller};
use taskrun_telemetry as telemetry;

/// One thread: a reconcile is a few small API calls and waits on the API server, whose CPU
/// (about ten times the controller's per TaskRun) is what bounds throughput. On two worker
/// threads the same work cost 1.8 ms of CPU per TaskRun instead of 1.4, mostly in waking one
/// thread from the other (docs/benchmarks.md).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = config::Args::parse();
    if let Err(e) = telemetry::init(args.log_format, &args.log_level) {
        eprintln!("Error: {e}");
        return ExitCode::FAILURE;
    }
    telemetry::exit_code(run(args).await)
}

async fn run(args: config::Args) -> anyhow::Result<()> {
    let template = args.job_template()?;
    let client = taskrun_apiclient::client(kube::Config::infer().await?)?;
    controller::run(args, template, client).await?;
    Ok(())
}
