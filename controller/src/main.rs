//! taskrun-controller: reconciles TaskRuns into a ConfigMap and a Job per context version.

mod backoff;
mod cache;
mod config;
mod controller;
mod http;
mod job;
mod leader;
mod metrics;
mod reconcile;
mod status;
mod telemetry;
mod template;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = config::Args::parse();
    telemetry::init(args.log_format);
    let template = args.job_template()?;
    let client = kube::Client::try_default().await?;
    controller::run(args, template, client).await?;
    Ok(())
}
