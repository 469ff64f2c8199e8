//! Logging: structured `tracing` events to stderr, as JSON lines or text.

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
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    }
    .map_err(|e| TelemetryError::Init(e.to_string()))
}
