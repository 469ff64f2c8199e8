//! Counts, durations and the phases to run, each overridable from the environment
//! (`make bench BENCH_X=...`).

use std::time::Duration;

pub struct Settings {
    /// TaskRuns in the webhook's index (fed by its watch) and reconciled for the RSS figure.
    pub indexed: u64,
    /// TaskRuns for controller_vs_ceiling.
    pub taskruns: u64,
    /// Tasks for speedup_vs_helm.
    pub helm_tasks: u64,
    /// Creates per block (with and without webhooks) for admission_added_p50_ms.
    pub admission_creates: u64,
    /// Length of each load run.
    pub seconds: Duration,
    /// Alternating webhook/ceiling rounds for the throughput ratio.
    pub rounds: u32,
    /// Connections of the closed-loop throughput runs.
    pub concurrency: usize,
    /// Offered load of the open-loop latency runs.
    pub rate: f64,
    /// Concurrency of the API clients (creating TaskRuns, the minimal loop).
    pub api_concurrency: usize,
    /// `BENCH_ONLY`: the phases to run (comma-separated, from [`PHASES`]); all when unset.
    only: Option<Vec<String>>,
}

/// The phases, in the order they run.
pub const PHASES: [&str; 6] = [
    "webhook",
    "admission",
    "index",
    "controller",
    "helm",
    "memory",
];

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Settings {
    pub fn from_env() -> Settings {
        Settings {
            indexed: env("BENCH_INDEXED", 10_000),
            taskruns: env("BENCH_TASKRUNS", 1_000),
            helm_tasks: env("BENCH_HELM_TASKS", 20),
            admission_creates: env("BENCH_ADMISSION_CREATES", 100),
            seconds: Duration::from_secs_f64(env("BENCH_SECONDS", 10.0)),
            rounds: env("BENCH_ROUNDS", 3),
            concurrency: env("BENCH_CONCURRENCY", 16),
            rate: env("BENCH_RATE", 2_000.0),
            api_concurrency: env("BENCH_API_CONCURRENCY", 16),
            only: std::env::var("BENCH_ONLY")
                .ok()
                .map(|v| v.split(',').map(|p| p.trim().to_owned()).collect()),
        }
    }

    /// Whether `phase` is to run; an unknown name in `BENCH_ONLY` is an error.
    pub fn runs(&self, phase: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|p| p == phase))
    }

    /// Refuses a `BENCH_ONLY` that names no known phase.
    pub fn check(&self) -> anyhow::Result<()> {
        for p in self.only.iter().flatten() {
            anyhow::ensure!(
                PHASES.contains(&p.as_str()),
                "BENCH_ONLY: unknown phase {p:?}; the phases are {}",
                PHASES.join(", ")
            );
        }
        Ok(())
    }
}
