//! Command-line flags, each with an environment fallback so a Deployment can set either.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
pub use taskrun_telemetry::LogFormat;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "taskrun-webhook",
    version,
    about = "Validating and mutating admission webhook for TaskRuns (taskruns.orchestrator.io/v1)"
)]
pub struct Config {
    /// Address of the HTTPS listener (admission, probes, metrics).
    #[arg(long, env = "WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Directory holding tls.crt and tls.key (a Secret volume); watched for changes.
    #[arg(long, env = "WEBHOOK_CERT_DIR", default_value = "/certs")]
    pub cert_dir: PathBuf,

    /// Address of a plain-HTTP listener for /metrics, /healthz and /readyz (no admission);
    /// "off" disables it.
    #[arg(long, env = "WEBHOOK_METRICS_LISTEN", default_value = "0.0.0.0:9090", value_parser = parse_optional_addr)]
    pub metrics_listen: OptionalAddr,

    /// Log format.
    #[arg(long, env = "WEBHOOK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Log filter, e.g. "info" or "info,taskrun_webhook=debug".
    #[arg(long, env = "WEBHOOK_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Largest accepted request body in bytes (413 beyond).
    ///
    /// An UPDATE review carries the object and the old object, each up to etcd's 1.5 MiB, so
    /// the default leaves room for the largest legitimate TaskRun.
    #[arg(long, env = "WEBHOOK_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024, value_parser = positive_count)]
    pub max_body_bytes: usize,

    /// Time allowed for a TLS handshake ("10s", "500ms").
    #[arg(long, env = "WEBHOOK_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub handshake_timeout: Duration,

    /// On the plain listener (probes, metrics): time allowed for a request's head to arrive,
    /// counted from when the connection starts waiting for it, so it also bounds the idle time
    /// between requests on a kept-alive connection.
    ///
    /// Not used on the admission listener: there the wait for a request's head, idle time
    /// included, is bounded by --idle-timeout, because the API server keeps its HTTP/1.1
    /// connections idle in its pool for up to 90 s and a connection closed under it as it
    /// sends a review fails that review.
    #[arg(long, env = "WEBHOOK_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub header_read_timeout: Duration,

    /// Time allowed for a request's body to arrive (408 beyond).
    #[arg(long, env = "WEBHOOK_BODY_READ_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub body_read_timeout: Duration,

    /// A connection on which nothing moves for this long, no byte received and none taken by
    /// the client, is closed. On the admission listener it is also the time an HTTP/1.1
    /// connection waits for its next request, and for that request's head.
    ///
    /// Keep it longer than the API server's idle-connection timeout (Go's 90 s), so that the
    /// client, not the webhook, closes a pooled connection: a review the API server sends down
    /// a connection the webhook is closing at that moment fails with EOF and is not retried.
    #[arg(long, env = "WEBHOOK_IDLE_TIMEOUT", default_value = "120s", value_parser = positive_duration)]
    pub idle_timeout: Duration,

    /// Most admission connections served at once (at most 1048576); further ones wait in the
    /// listen backlog.
    #[arg(long, env = "WEBHOOK_MAX_CONNECTIONS", default_value_t = 4096, value_parser = connection_limit)]
    pub max_connections: usize,

    /// How often the certificate files are compared with what is served, in case a change
    /// notification was missed.
    #[arg(long, env = "WEBHOOK_CERT_POLL_INTERVAL", default_value = "10s", value_parser = positive_duration)]
    pub cert_poll_interval: Duration,

    /// After SIGTERM, how long to go on accepting and answering, with /readyz failing, before
    /// the listeners close: the API server calls this pod until the Service's endpoints drop
    /// it. A second SIGTERM or SIGINT ends the delay at once.
    #[arg(long, env = "WEBHOOK_SHUTDOWN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,

    /// Once the listeners close, how long in-flight requests may take before the process exits
    /// anyway.
    #[arg(long, env = "WEBHOOK_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

/// An address, or none when the listener is switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

/// The longest duration a flag takes. Deadlines are the time now plus a duration, which
/// panics when it overflows; none of these needs to be longer.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// "250ms", "10s", "2m" or a bare number of seconds; at most `MAX_DURATION`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 500ms, 10s or 2m"))?;
    let seconds = value * scale;
    if seconds > MAX_DURATION.as_secs_f64() {
        return Err(format!("{s:?} is too long: at most 1440m (one day)"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

/// A duration of more than zero: a timeout or interval of zero would end every connection at
/// once or (the certificate poll) stop the reloads.
fn positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err(format!("{s:?}: must be more than zero")),
        d => Ok(d),
    }
}

/// A count of at least one: a limit of zero would refuse everything.
fn positive_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{s:?} is not a whole number: {e}")),
    }
}

/// Far above any process's file descriptors, and within what a semaphore can count.
const MAX_CONNECTIONS: usize = 1 << 20;

fn connection_limit(s: &str) -> Result<usize, String> {
    match positive_count(s)? {
        n if n > MAX_CONNECTIONS => Err(format!("{s:?} is too many: at most {MAX_CONNECTIONS}")),
        n => Ok(n),
    }
}

fn parse_optional_addr(s: &str) -> Result<OptionalAddr, String> {
    if s.is_empty() || s == "off" {
        return Ok(OptionalAddr(None));
    }
    s.parse()
        .map(|a| OptionalAddr(Some(a)))
        .map_err(|e| format!("{s:?} is not an address such as 0.0.0.0:9090: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    /// A deadline this far away would overflow the clock and panic the server.
    #[test]
    fn durations_longer_than_a_day_are_refused() {
        assert_eq!(parse_duration("1440m"), Ok(MAX_DURATION));
        for long in ["86401s", "1e30", "inf", "1e300m"] {
            assert_eq!(
                parse_duration(long),
                Err(format!("{long:?} is too long: at most 1440m (one day)"))
            );
        }
        let e = Config::try_parse_from(["taskrun-webhook", "--idle-timeout=1e20s"])
            .expect_err("too long");
        assert!(e.to_string().contains("\"1e20s\" is too long"), "{e}");
    }

    /// More than a semaphore can count would panic the server at start.
    #[test]
    fn a_connection_limit_beyond_any_use_is_refused() {
        let ok = Config::try_parse_from(["taskrun-webhook", "--max-connections=1048576"])
            .expect("the largest limit");
        assert_eq!(ok.max_connections, 1 << 20);
        let e =
            Config::try_parse_from(["taskrun-webhook", "--max-connections=18446744073709551615"])
                .expect_err("too many");
        assert!(
            e.to_string().contains("is too many: at most 1048576"),
            "{e}"
        );
    }

    #[test]
    fn limits_and_timeouts_of_zero_are_refused() {
        for flag in [
            "--handshake-timeout=0s",
            "--header-read-timeout=0",
            "--body-read-timeout=0ms",
            "--idle-timeout=0m",
            "--cert-poll-interval=0s",
            "--max-body-bytes=0",
            "--max-connections=0",
        ] {
            let e = Config::try_parse_from(["taskrun-webhook", flag]).expect_err(flag);
            assert!(
                e.to_string().contains("zero") || e.to_string().contains("at least 1"),
                "{flag}: {e}"
            );
        }
        let c = Config::try_parse_from(["taskrun-webhook", "--shutdown-timeout=0s"])
            .expect("no drain at all is a choice");
        assert_eq!(c.shutdown_timeout, Duration::ZERO);
    }

    #[test]
    fn defaults_parse() {
        let c = Config::try_parse_from(["taskrun-webhook"]).expect("defaults");
        assert_eq!(c.max_body_bytes, 8 * 1024 * 1024);
        // Longer than the API server keeps a pooled connection idle (Go's IdleConnTimeout).
        assert!(c.idle_timeout > Duration::from_secs(90));
        assert!(c.metrics_listen.0.is_some());
        let c =
            Config::try_parse_from(["taskrun-webhook", "--metrics-listen", "off"]).expect("off");
        assert_eq!(c.metrics_listen, OptionalAddr(None));
    }
}
