//! Prometheus metrics: requests by route, operation and result, latency, in-flight requests,
//! index size and watch failures, certificate reloads and expiry.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // the label values as Prometheus shows them
pub enum Outcome {
    allowed,
    denied,
    error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    /// CREATE, UPDATE, DELETE, CONNECT; empty when the request was not an admission review.
    pub operation: &'static str,
    pub result: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram>,
    pub in_flight: Gauge,
    pub index_size: Gauge,
    pub index_watch_failures: Counter,
    pub cert_reloads: Counter,
    pub cert_reload_failures: Counter,
    /// notAfter of the certificate served, as Unix seconds; 0 when unknown (none loaded yet,
    /// or the served one's notAfter cannot be parsed).
    pub cert_expiry: Gauge,
    pub tls_handshake_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("taskrun_webhook");
        let requests = Family::<RequestLabels, Counter>::default();
        // 50 µs .. ~1.6 s doubling (admission answers in well under a millisecond), then up
        // to 10 s, so that a p99 nearing the webhook configurations' 5 s timeout shows.
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(latency_buckets())) as fn() -> Histogram,
        );
        let in_flight = Gauge::default();
        let index_size = Gauge::default();
        let index_watch_failures = Counter::default();
        let cert_reloads = Counter::default();
        let cert_reload_failures = Counter::default();
        let cert_expiry = Gauge::default();
        let tls_handshake_failures = Counter::default();
        registry.register(
            "requests",
            "HTTP requests by route, admission operation and result",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a request, body read included",
            latency.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests being answered",
            in_flight.clone(),
        );
        registry.register(
            "index_taskruns",
            "TaskRuns in the duplicate index",
            index_size.clone(),
        );
        registry.register(
            "index_watch_failures",
            "TaskRun watch failures; after each, /validate answers 503 until a fresh list is indexed",
            index_watch_failures.clone(),
        );
        registry.register(
            "certificate_reloads",
            "Serving certificates loaded from disk",
            cert_reloads.clone(),
        );
        registry.register(
            "certificate_reload_failures",
            "Certificate/key pairs on disk that could not be loaded (the previous pair kept serving)",
            cert_reload_failures.clone(),
        );
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate loaded last, as Unix seconds (0: unknown, none loaded yet or its notAfter unreadable)",
            cert_expiry.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Connections closed because the TLS handshake failed or timed out",
            tls_handshake_failures.clone(),
        );
        // The admission series exist from the start, at 0, so that rate() and increase() see
        // the first errors of a new pod: a series born at 1 shows no increase until its next.
        for route in ADMISSION_ROUTES {
            let _ = latency.get_or_create(&RouteLabels { route });
            for (operation, result) in ADMISSION_OPERATIONS
                .iter()
                .flat_map(|op| {
                    [Outcome::allowed, Outcome::denied, Outcome::error].map(|r| (*op, r))
                })
                // Refused before its review was read: no operation known.
                .chain([("", Outcome::error)])
            {
                let _ = requests.get_or_create(&RequestLabels {
                    route,
                    operation,
                    result,
                });
            }
        }
        Self {
            registry,
            requests,
            latency,
            in_flight,
            index_size,
            index_watch_failures,
            cert_reloads,
            cert_reload_failures,
            cert_expiry,
            tls_handshake_failures,
        }
    }
}

/// The routes that take admission reviews, as the `route` label names them.
pub const ADMISSION_ROUTES: [&str; 2] = ["validate", "mutate"];

/// The operations the webhook configurations send (`manifests/base/webhook-configurations.yaml`).
const ADMISSION_OPERATIONS: [&str; 2] = ["CREATE", "UPDATE"];

fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.00005, 2.0, 16).chain([2.5, 5.0, 10.0])
}

impl Metrics {
    /// The text exposition (OpenMetrics, which Prometheus scrapes as such).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exposed() {
        let m = Metrics::default();
        m.requests
            .get_or_create(&RequestLabels {
                route: "validate",
                operation: "CREATE",
                result: Outcome::denied,
            })
            .inc();
        m.latency
            .get_or_create(&RouteLabels { route: "validate" })
            .observe(0.0002);
        m.cert_reloads.inc();
        let text = m.encode();
        for needle in [
            r#"taskrun_webhook_requests_total{route="validate",operation="CREATE",result="denied"} 1"#,
            "taskrun_webhook_request_duration_seconds_bucket",
            "taskrun_webhook_requests_in_flight 0",
            "taskrun_webhook_index_taskruns 0",
            "taskrun_webhook_index_watch_failures_total 0",
            "taskrun_webhook_certificate_reloads_total 1",
            "taskrun_webhook_certificate_reload_failures_total 0",
            "taskrun_webhook_certificate_expiry_timestamp_seconds 0",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }

    #[test]
    fn admission_series_start_at_zero() {
        let text = Metrics::default().encode();
        for route in ADMISSION_ROUTES {
            for needle in [
                format!(
                    r#"taskrun_webhook_requests_total{{route="{route}",operation="CREATE",result="error"}} 0"#
                ),
                format!(
                    r#"taskrun_webhook_requests_total{{route="{route}",operation="UPDATE",result="denied"}} 0"#
                ),
                format!(
                    r#"taskrun_webhook_requests_total{{route="{route}",operation="",result="error"}} 0"#
                ),
                format!(r#"taskrun_webhook_request_duration_seconds_count{{route="{route}"}} 0"#),
            ] {
                assert!(text.contains(&needle), "{needle} missing in\n{text}");
            }
        }
    }

    #[test]
    fn latency_near_the_admission_timeout_falls_in_its_own_buckets() {
        let m = Metrics::default();
        let validate = m.latency.get_or_create(&RouteLabels { route: "validate" });
        validate.observe(0.0002);
        validate.observe(4.0);
        validate.observe(7.0);
        let text = m.encode();
        let bucket = |le: &str| {
            let series = format!(
                "taskrun_webhook_request_duration_seconds_bucket{{le=\"{le}\",route=\"validate\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
                .to_owned()
        };
        // Cumulative: a 4 s answer is above 2.5 s and within 5 s, a 7 s one within 10 s.
        assert_eq!(bucket("2.5"), "1");
        assert_eq!(bucket("5.0"), "2");
        assert_eq!(bucket("10.0"), "3");
        assert_eq!(bucket("+Inf"), "3");
    }
}
