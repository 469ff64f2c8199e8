//! How the webhook, the controller and the plugin use the API server: how long a watch
//! request lasts, how long a request may hear nothing (all three), how many TaskRuns a list
//! page holds, and how retries space out. The daemons read TaskRuns the same way, so these are
//! decided once.

use std::time::Duration;

/// How long one watch request lasts. The API server ends it then and the watcher resumes from
/// where it was, with no list; a connection that went silently dead (a dropped NAT entry, a
/// peer gone without a reset) is noticed this long plus a few seconds after its last event,
/// instead of after about 295 s (kube-runtime's default watch of 290 s and its margin), during
/// which every change is missed.
pub const WATCH_TIMEOUT_SECS: u32 = 60;

/// How long a request may hear nothing from the API server: longer than a quiet watch lasts,
/// far shorter than TCP takes to give up on a connection gone silently dead. The request then
/// fails and is retried on a new connection, and a watch is resumed.
pub const READ_TIMEOUT: Duration = Duration::from_secs(WATCH_TIMEOUT_SECS as u64 + 10);

/// TaskRuns per page when the webhook and the controller list them. A client holds a whole
/// page in memory, about four times over (kube buffers the response body, copies it, then
/// decodes it), and a TaskRun may carry up to `limits::MAX_TOTAL_BYTES` of markdown: a page of
/// the largest is 8 MB of JSON here, within the pods' memory limits, where kube-runtime's
/// default of 500 would be 500 MB (tests/tests/large.rs).
pub const LIST_PAGE_SIZE: u32 = 8;

/// An error and its causes on one line, each cause only if the messages before it do not
/// already say it (kube's and hyper's errors often repeat their source in their own message,
/// others do not: "client error (Connect)" alone says neither "connection refused" nor
/// "certificate unknown").
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
}

/// The delay before the next try after `failures` failures in a row (from 1; 0 counts as 1):
/// `base`, doubled per failure, at most `cap`. Its callers add jitter: the webhook's re-lists,
/// so that its replicas do not list in step, and the controller's retries of a TaskRun, so
/// that TaskRuns that failed together are not retried together.
pub fn retry_delay(failures: u32, base: Duration, cap: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    base.saturating_mul(1u32 << doublings).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(500);
    const CAP: Duration = Duration::from_secs(300);

    #[test]
    fn retries_double_from_the_base_up_to_the_cap() {
        let got: Vec<u128> = (1..=6)
            .map(|n| retry_delay(n, BASE, CAP).as_millis())
            .collect();
        assert_eq!(got, [500, 1000, 2000, 4000, 8000, 16000]);
        assert_eq!(retry_delay(11, BASE, CAP), CAP);
        assert_eq!(retry_delay(u32::MAX, BASE, CAP), CAP);
        assert_eq!(retry_delay(40, Duration::MAX, CAP), CAP, "no overflow");
        assert_eq!(retry_delay(0, BASE, CAP), BASE);
    }

    /// An error that wraps another, printing it in its own message or not.
    #[derive(Debug)]
    struct Wrap(&'static str, Option<Box<Wrap>>, bool);

    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            match (&self.1, self.2) {
                (Some(inner), true) => write!(f, "{} ({inner})", self.0),
                _ => f.write_str(self.0),
            }
        }
    }

    impl std::error::Error for Wrap {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn an_error_chain_names_each_cause_once() {
        let refused = Wrap("connection refused", None, false);
        let connect = Wrap("tcp connect error", Some(Box::new(refused)), true);
        let client = Wrap("client error (Connect)", Some(Box::new(connect)), false);
        assert_eq!(
            error_chain(&client),
            "client error (Connect): tcp connect error (connection refused)"
        );
    }

    #[test]
    fn a_watch_ends_before_a_request_times_out() {
        assert!(Duration::from_secs(WATCH_TIMEOUT_SECS.into()) < READ_TIMEOUT);
    }
}
