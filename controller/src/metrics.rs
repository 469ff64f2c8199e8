//! Prometheus metrics: reconciles, errors, reconcile duration, watch failures, TaskRuns per
//! phase, whether this replica leads, and Events dropped.

use std::time::Duration;

use kube::runtime::reflector::Store;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use taskrun::TaskRun;

type Labels = Vec<(&'static str, &'static str)>;

/// The resources the leader watches, as `watch_failures` labels them.
pub mod watched {
    pub const TASKRUNS: &str = "taskruns";
    pub const JOBS: &str = "jobs";
    pub const CONFIG_MAPS: &str = "configmaps";
    pub(super) const ALL: [&str; 3] = [TASKRUNS, JOBS, CONFIG_MAPS];
}

pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Counter,
    duration: Histogram,
    watch_failures: Family<Labels, Counter>,
    phases: Family<Labels, Gauge>,
    leading: Gauge,
    events_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("taskrun_controller");
        let reconciles = Counter::default();
        let errors = Counter::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let watch_failures = Family::<Labels, Counter>::default();
        // Served at 0 from the start, so that an alert on their rate has a series to watch.
        for resource in watched::ALL {
            let _ = watch_failures.get_or_create(&vec![("resource", resource)]);
        }
        let phases = Family::<Labels, Gauge>::default();
        let leading = Gauge::default();
        let events_dropped = Counter::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register("reconcile_errors", "Reconciles that failed", errors.clone());
        registry.register(
            "reconcile_duration_seconds",
            "How long a reconcile took",
            duration.clone(),
        );
        registry.register(
            "watch_failures",
            "Failures of the leader's watches, by resource",
            watch_failures.clone(),
        );
        registry.register("taskruns", "TaskRuns by phase", phases.clone());
        registry.register(
            "leading",
            "1 while this replica holds the Lease and reconciles, else 0",
            leading.clone(),
        );
        registry.register(
            "events_dropped",
            "Events not recorded because too many were being recorded already",
            events_dropped.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            watch_failures,
            phases,
            leading,
            events_dropped,
        }
    }
}

impl Metrics {
    pub fn observe(&self, took: Duration, failed: bool) {
        self.reconciles.inc();
        if failed {
            self.errors.inc();
        }
        self.duration.observe(took.as_secs_f64());
    }

    /// A watch of `resource` (`taskruns`, `jobs`, `configmaps`) failed.
    pub fn watch_failed(&self, resource: &'static str) {
        self.watch_failures
            .get_or_create(&vec![("resource", resource)])
            .inc();
    }

    /// An Event was dropped: too many were being recorded already.
    pub fn event_dropped(&self) {
        self.events_dropped.inc();
    }

    pub fn set_leading(&self, leading: bool) {
        self.leading.set(i64::from(leading));
    }

    /// The Prometheus text format, with the per-phase counts taken from `store` (the
    /// leader's cache; a standby reports none).
    pub fn render(&self, store: Option<&Store<TaskRun>>) -> String {
        let mut counts = [0i64; 5];
        for tr in store.map(Store::state).unwrap_or_default() {
            let i = match tr.status.as_ref().and_then(|s| s.phase) {
                None => 0,
                Some(taskrun::Phase::Pending) => 1,
                Some(taskrun::Phase::Running) => 2,
                Some(taskrun::Phase::Succeeded) => 3,
                Some(taskrun::Phase::Failed) => 4,
            };
            counts[i] += 1;
        }
        for (name, count) in ["None", "Pending", "Running", "Succeeded", "Failed"]
            .into_iter()
            .zip(counts)
        {
            self.phases.get_or_create(&vec![("phase", name)]).set(count);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_phases() {
        let m = Metrics::default();
        m.observe(Duration::from_millis(3), false);
        m.observe(Duration::from_millis(5), true);
        let text = m.render(None);
        assert!(text.contains("taskrun_controller_leading 0"), "{text}");
        assert!(
            text.contains("taskrun_controller_reconciles_total 2"),
            "{text}"
        );
        assert!(
            text.contains("taskrun_controller_reconcile_errors_total 1"),
            "{text}"
        );
        assert!(
            text.contains("taskrun_controller_reconcile_duration_seconds_count 2"),
            "{text}"
        );
        assert!(
            text.contains("taskrun_controller_taskruns{phase=\"Running\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("taskrun_controller_watch_failures_total{resource=\"configmaps\"} 0"),
            "{text}"
        );
        m.watch_failed("jobs");
        m.watch_failed("jobs");
        let text = m.render(None);
        assert!(
            text.contains("taskrun_controller_watch_failures_total{resource=\"jobs\"} 2"),
            "{text}"
        );
        m.set_leading(true);
        assert!(m.render(None).contains("taskrun_controller_leading 1"));
    }
}
