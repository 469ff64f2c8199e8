//! `kubectl-taskrun`: a kubectl plugin for TaskRuns. See `kubectl taskrun --help`.

use std::process::ExitCode;

use clap::Parser;

use kubectl_taskrun::args::{Cli, Command, ContextCommand, LogFormat};
use kubectl_taskrun::{connect, context_add, error, migrate};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            err.exit_code()
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, error::Error> {
    match cli.command {
        Command::Context(ContextCommand::Add(add)) => {
            // Files first: a bad file is reported before anything else is even tried.
            let files = context_add::load(&add.files, add.file_type.into())?;
            let (client, namespace) = connect::connect(&cli.conn).await?;
            connect::check_taskruns_served(&client).await?;
            let done = context_add::run(client, &namespace, &add.name, files).await?;
            let what = if done.changed {
                "added"
            } else {
                "already has, as given (nothing sent)"
            };
            println!(
                "taskrun/{} context version {}: {what} {}",
                add.name,
                done.context_version,
                done.files.join(", ")
            );
            tracing::info!(attempts = done.attempts, "context added");
            Ok(ExitCode::from(error::OK))
        }
        Command::MigrateHelm(args) => {
            let (client, namespace) = connect::connect(&cli.conn).await?;
            connect::check_taskruns_served(&client).await?;
            let rows = migrate::run(client, &namespace, &args).await?;
            if rows.is_empty() {
                println!("no Helm releases of the legacy claude-code chart found");
            } else {
                print!("{}", migrate::render(&rows));
            }
            Ok(ExitCode::from(migrate::exit_code(&rows)))
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
