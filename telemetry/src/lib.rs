//! How the webhook and the controller log: structured `tracing` events to stderr, as JSON lines
//! or text, and the process's last words (a fatal error, a panic) through the same logger.

use std::io::Write;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log level {0:?}: {1}")]
    Filter(String, tracing_subscriber::filter::ParseError),
    #[error("a logger is already installed: {0}")]
    Init(String),
}

/// Installs the global subscriber, with `level` as an `EnvFilter` ("info",
/// "info,taskrun_controller=debug").
pub fn init(format: LogFormat, level: &str) -> Result<(), TelemetryError> {
    let filter =
        EnvFilter::try_new(level).map_err(|e| TelemetryError::Filter(level.to_owned(), e))?;
    // Colours only for a person at a terminal, not in log files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        // The current span is the last of the span list already.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    }
    .map_err(|e| TelemetryError::Init(e.to_string()))?;
    log_panics();
    Ok(())
}

/// The process's exit for what its work returned. A fatal error goes through the logger, so
/// that under `--log-format=json` the reason a pod crash-loops is a JSON line like every other
/// (the report of an error returned from `main` would be plain text, with no level), its causes
/// on the same line.
/// A filter that hides errors (`off`) does not hide this one: it goes to stderr as it is.
pub fn exit_code<E>(result: Result<(), E>) -> std::process::ExitCode
where
    E: AsRef<dyn std::error::Error + Send + Sync + 'static>,
{
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let error = taskrun::client::error_chain(e.as_ref());
            if tracing::enabled!(tracing::Level::ERROR) {
                tracing::error!(%error, "exiting");
            } else {
                let _ = writeln!(std::io::stderr(), "Error: {error}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// A panic, wherever it happens, is logged through the logger too, with where it happened (and
/// the backtrace, when `RUST_BACKTRACE` asks for one). Under a filter that hides errors, Rust's
/// own report of it goes to stderr, as without a logger.
fn log_panics() {
    let unlogged = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |panic| {
        if !tracing::enabled!(tracing::Level::ERROR) {
            return unlogged(panic);
        }
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(panic = %panic, %backtrace, "panicked");
        } else {
            tracing::error!(panic = %panic, "panicked");
        }
    }));
}
