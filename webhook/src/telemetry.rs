//! Logging: structured `tracing` events to stderr, as JSON lines or text.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log level {0:?}: {1}")]
    Filter(String, tracing_subscriber::filter::ParseError),
    #[error("a logger is already installed: {0}")]
    Init(String),
}

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
/// (the report of an error returned from `main` would be plain text, with no level). `{:#}`
/// gives anyhow's chain of causes on one line.
pub fn exit_code<E: std::fmt::Display>(result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A panic, wherever it happens, is logged through the logger too, with where it happened.
fn log_panics() {
    std::panic::set_hook(Box::new(|panic| {
        tracing::error!(panic = %panic, "panicked");
    }));
}
