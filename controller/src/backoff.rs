//! How the controller waits before trying again:
//! - a reconcile that failed: per object, base, 2x base, 4x base ... up to a cap, the count
//!   reset by the object's next successful reconcile (`taskrun::client::retry_delay`);
//! - a watch that failed: each watch on its own ([`watch`]);
//! - the Controller's merged trigger stream: not at all ([`NoPause`]).

use std::time::Duration;

use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::watcher::ExponentialBackoff;

/// How a failed watch is retried: after 100 ms, doubling up to 2 s, each delay plus up to as
/// much again of jitter (so at most 4 s apart), reset after 2 minutes of health or by any
/// event. After an API server restart a watch meets several errors in a row (connection
/// refused, 403 while the new server's RBAC cache fills, 410 for its old resourceVersion), each
/// waiting out the delay the outage grew: kube-runtime's default (up to 30 s) held TaskRuns
/// created after a restart for a minute, a 5 s cap still for 10-15 s.
pub fn watch() -> ResetTimerBackoff<ExponentialBackoff> {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(exponential.into(), Duration::from_secs(120))
}

/// The Controller's backoff on the stream that merges its triggers (the TaskRun, Job and
/// ConfigMap watches): none, as each of those watches already backs off on its own
/// ([`watch`]). kube-runtime's default here pauses every trigger whenever any one watch fails,
/// growing to 30 s with each failure of any of them; after an API server restart (three
/// watches failing in turn) it held new TaskRuns for 60-90 s.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPause;

impl Iterator for NoPause {
    type Item = Duration;

    /// Always `Some`: a `None` would end the trigger stream, and with it the Controller.
    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl Backoff for NoPause {
    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_watch_is_retried_within_4_s_however_often_it_failed() {
        let mut b = watch();
        let delays: Vec<Duration> = (0..50).map(|_| b.next().expect("never gives up")).collect();
        assert!(delays[0] >= Duration::from_millis(100), "{delays:?}");
        assert!(delays[0] <= Duration::from_millis(200), "{delays:?}");
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(4)),
            "{delays:?}"
        );
        assert!(delays[49] >= Duration::from_secs(2), "{delays:?}");
    }

    #[test]
    fn the_trigger_stream_never_pauses_nor_ends() {
        let mut b = NoPause;
        assert!((0..1000).all(|_| b.next() == Some(Duration::ZERO)));
    }
}
