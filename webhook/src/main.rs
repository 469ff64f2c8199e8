//! `taskrun-webhook`: the validating and mutating admission webhook for TaskRuns (DESIGN
//! section 4). Flags: `taskrun-webhook --help`.

mod admission;
mod config;
mod idle;
mod index;
mod metrics;
mod mutate;
mod routes;
mod server;
mod telemetry;
mod tls;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = config::Config::parse();
    telemetry::init(config.log_format, &config.log_level)?;
    server::run(config).await?;
    Ok(())
}
