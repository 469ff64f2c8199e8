//! `kubectl-taskrun`: a kubectl plugin for TaskRuns. See `kubectl taskrun --help`.

use std::io::Write;
use std::process::ExitCode;

use kubectl_taskrun::args::{Cli, Command, ContextCommand, LogFormat};
use kubectl_taskrun::{connect, context_add, error, migrate, output};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse_checked();
    init_logging(cli.log_format);
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            // Nowhere left to say it if stderr is gone too; the exit code still tells.
            let _ = writeln!(std::io::stderr(), "error: {err}");
            err.exit_code()
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, error::Error> {
    match cli.command {
        Command::Context(ContextCommand::Add(add)) => {
            // Files first: a bad file is reported before anything else is even tried.
            let files = context_add::load(&add.files, add.file_type)?;
            let (client, namespace) = connect::connect(&cli.conn).await?;
            connect::check_taskruns_served(&client).await?;
            let done = context_add::run(client, &namespace, &add.name, files).await?;
            tracing::info!(attempts = done.attempts, "context added");
            output::print(&format!("{}\n", done.summary(&add.name)))?;
            if let Some(why) = &done.lost_as_duplicate {
                let _ = writeln!(
                    std::io::stderr(),
                    "warning: taskrun/{} failed as a duplicate, so no version of it runs while the \
                     TaskRun holding its task lives: {why}",
                    add.name
                );
            }
            for manager in &done.also_applied_by {
                let _ = writeln!(
                    std::io::stderr(),
                    "warning: {manager} also applies taskrun/{}'s contextVersion (a GitOps tool): \
                     its next apply of a lower value is refused, and with it the sync of what it \
                     applies with it; raise contextVersion to at least {} where {manager} \
                     applies from (git)",
                    add.name,
                    done.context_version
                );
            }
            Ok(ExitCode::from(error::OK))
        }
        Command::MigrateHelm(args) => {
            let (client, namespace) = connect::connect(&cli.conn).await?;
            connect::check_taskruns_served(&client).await?;
            let rows = migrate::run(client, &namespace, &args).await?;
            let code = ExitCode::from(migrate::exit_code(&rows));
            if rows.is_empty() {
                output::print(&migrate::nothing_found(&namespace, args.all_namespaces))?;
            } else {
                output::print(&migrate::render(&rows))?;
            }
            Ok(code)
        }
    }
}

/// Warnings, but not kube's line for each failed HTTP attempt: a refused attempt is retried,
/// and one that fails for good ends in the plugin's own `error:` line.
const DEFAULT_LOG_FILTER: &str = "warn,kube_client::client::builder=off";

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a person at a terminal, not in a CI log or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
