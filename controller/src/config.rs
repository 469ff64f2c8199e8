//! Command-line flags (each with an environment fallback) and the Job template they build.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::template::{
    EnvFromSecret, JobTemplate, SecretEnv, SecretName, TemplateError, parse_secret_env,
};
pub use taskrun_telemetry::LogFormat;

#[derive(Clone, Debug, Parser)]
#[command(
    name = "taskrun-controller",
    version,
    about = "Reconciles TaskRuns into Jobs and tracks them to the end"
)]
pub struct Args {
    /// Address of the plain-HTTP server for /healthz, /readyz and /metrics.
    #[arg(long, env = "TASKRUN_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Log format (on stderr).
    #[arg(long, env = "TASKRUN_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// Log filter, e.g. "info" or "info,taskrun_controller=debug".
    #[arg(long, env = "TASKRUN_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "TASKRUN_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// How many TaskRuns are reconciled at once, at least 1 (kube-runtime reads 0 as no
    /// bound at all).
    #[arg(long, env = "TASKRUN_CONCURRENCY", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// First retry delay after a failed reconcile, in milliseconds; doubles per failure.
    #[arg(long, env = "TASKRUN_BACKOFF_BASE_MS", default_value_t = 500)]
    pub backoff_base_ms: u64,
    /// The longest retry delay after failed reconciles, in seconds.
    #[arg(long, env = "TASKRUN_BACKOFF_MAX_SECONDS", default_value_t = 300)]
    pub backoff_max_seconds: u64,

    /// Elect a leader through a Lease, so of several replicas only one acts (`false`: every
    /// replica reconciles, so only with one replica).
    #[arg(long, env = "TASKRUN_LEADER_ELECT", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the Lease the replicas elect their leader through.
    #[arg(long, env = "TASKRUN_LEASE_NAME", default_value = "taskrun-controller")]
    pub lease_name: String,
    /// Namespace of the Lease (default: POD_NAMESPACE, else `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// How long the Lease lasts unrenewed: a standby takes it over once it has seen it
    /// unchanged this long.
    #[arg(long, env = "TASKRUN_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// How much sooner a leader that cannot renew stops acting (below the duration). It
    /// renews every (duration - grace) / 4.
    #[arg(long, env = "TASKRUN_LEASE_GRACE_SECONDS", default_value_t = 5)]
    pub lease_grace_seconds: u64,
    /// This replica's identity in the Lease (default: POD_NAME, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// YAML Job template (see controller/job-template.example.yaml), with the flags below laid
    /// over it: a scalar flag, --command and --arg replace the file's value or list;
    /// --secret-env replaces the file's env entry of the same NAME, or adds one;
    /// --env-from-secret is added to the file's envFrom; each resource flag sets one key.
    #[arg(long, env = "TASKRUN_JOB_TEMPLATE")]
    pub job_template: Option<String>,
    /// The agent's image: required, here or as `image:` in the template file.
    #[arg(long, env = "TASKRUN_IMAGE")]
    pub image: Option<String>,
    /// imagePullPolicy of the agent's container (default: Kubernetes' own).
    #[arg(long, env = "TASKRUN_IMAGE_PULL_POLICY")]
    pub image_pull_policy: Option<String>,
    /// The agent's command (repeat for each element).
    #[arg(long = "command")]
    pub command: Vec<String>,
    /// The agent's arguments (repeat for each element).
    #[arg(long = "arg", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// The ServiceAccount the agent's pod runs as; its token is mounted only when one is set.
    #[arg(long, env = "TASKRUN_SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// An env var from a Secret key: NAME=SECRET:KEY (repeatable). The value is never read.
    #[arg(long = "secret-env", value_parser = parse_secret_env)]
    pub secret_env: Vec<SecretEnv>,
    /// All keys of a Secret as env vars (repeatable).
    #[arg(long = "env-from-secret")]
    pub env_from_secret: Vec<String>,
    /// backoffLimit of each version's Job: pod failures retried before the version fails
    /// (default: Kubernetes' own, 6).
    #[arg(long, env = "TASKRUN_BACKOFF_LIMIT")]
    pub backoff_limit: Option<i32>,
    /// activeDeadlineSeconds of each version's Job: how long it may run (default: no limit).
    #[arg(long, env = "TASKRUN_ACTIVE_DEADLINE_SECONDS")]
    pub active_deadline_seconds: Option<i64>,
    /// ttlSecondsAfterFinished of each version's Job: how long a finished Job and its pods'
    /// logs are kept (default: until the TaskRun is deleted).
    #[arg(long, env = "TASKRUN_TTL_SECONDS_AFTER_FINISHED")]
    pub ttl_seconds_after_finished: Option<i32>,
    /// Where the markdown files are mounted in the agent's container, an absolute path
    /// (default /context); the agent gets it as CONTEXT_DIR.
    #[arg(long, env = "TASKRUN_CONTEXT_DIR")]
    pub context_dir: Option<String>,
    /// The agent container's CPU request (a quantity: 500m).
    #[arg(long)]
    pub cpu_request: Option<String>,
    /// The agent container's memory request (a quantity: 512Mi).
    #[arg(long)]
    pub memory_request: Option<String>,
    /// The agent container's CPU limit.
    #[arg(long)]
    pub cpu_limit: Option<String>,
    /// The agent container's memory limit.
    #[arg(long)]
    pub memory_limit: Option<String>,
}

impl Args {
    pub fn backoff(&self) -> (Duration, Duration) {
        (
            Duration::from_millis(self.backoff_base_ms.max(1)),
            Duration::from_secs(self.backoff_max_seconds.max(1)),
        )
    }

    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "taskrun-controller".into());
            format!("{host}-{}", std::process::id())
        })
    }

    /// The template file (if any) with the flags laid over it, validated.
    pub fn job_template(&self) -> Result<JobTemplate, TemplateError> {
        let mut t = match &self.job_template {
            Some(path) => JobTemplate::from_file(path)?,
            None => JobTemplate::default(),
        };
        if let Some(image) = &self.image {
            t.image.clone_from(image);
        }
        overlay(&mut t.image_pull_policy, &self.image_pull_policy);
        overlay(&mut t.service_account_name, &self.service_account);
        overlay(&mut t.backoff_limit, &self.backoff_limit);
        overlay(
            &mut t.active_deadline_seconds,
            &self.active_deadline_seconds,
        );
        overlay(
            &mut t.ttl_seconds_after_finished,
            &self.ttl_seconds_after_finished,
        );
        if let Some(dir) = &self.context_dir {
            t.context_dir.clone_from(dir);
        }
        if !self.command.is_empty() {
            t.command.clone_from(&self.command);
        }
        if !self.args.is_empty() {
            t.args.clone_from(&self.args);
        }
        for e in &self.secret_env {
            t.env.retain(|old| old.name != e.name);
            t.env.push(e.clone());
        }
        t.env_from
            .extend(self.env_from_secret.iter().map(|name| EnvFromSecret {
                secret_ref: SecretName {
                    name: name.clone(),
                    optional: None,
                },
            }));
        let quantity = |v: &Option<String>| v.clone().map(Quantity);
        let mut resources = t.resources.take().unwrap_or_default();
        let put = |map: &mut Option<BTreeMap<String, Quantity>>, key: &str, v: Option<Quantity>| {
            if let Some(v) = v {
                map.get_or_insert_with(BTreeMap::new)
                    .insert(key.to_owned(), v);
            }
        };
        put(&mut resources.requests, "cpu", quantity(&self.cpu_request));
        put(
            &mut resources.requests,
            "memory",
            quantity(&self.memory_request),
        );
        put(&mut resources.limits, "cpu", quantity(&self.cpu_limit));
        put(
            &mut resources.limits,
            "memory",
            quantity(&self.memory_limit),
        );
        t.resources = (resources != ResourceRequirements::default()).then_some(resources);
        t.validate()?;
        Ok(t)
    }
}

/// A flag that was given replaces the file's value.
fn overlay<T: Clone>(slot: &mut Option<T>, flag: &Option<T>) {
    if flag.is_some() {
        slot.clone_from(flag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("taskrun-controller").chain(args.iter().copied()))
            .expect("flags parse")
    }

    #[test]
    fn flags_build_a_template() {
        let a = parse(&[
            "--image=agent:2",
            "--command=/agent",
            "--arg=run",
            "--arg=--fast",
            "--secret-env=API_KEY=s:k",
            "--env-from-secret=agent-env",
            "--backoff-limit=0",
            "--memory-limit=1Gi",
        ]);
        let t = a.job_template().expect("valid");
        assert_eq!(t.image, "agent:2");
        assert_eq!(t.args, ["run", "--fast"]);
        assert_eq!(t.env[0].name, "API_KEY");
        assert_eq!(t.env_from[0].secret_ref.name, "agent-env");
        assert_eq!(t.backoff_limit, Some(0));
        let limits = t.resources.and_then(|r| r.limits).expect("limits");
        assert_eq!(limits["memory"], Quantity("1Gi".into()));
    }

    #[test]
    fn flags_override_the_file() {
        // From cargo at run time (see taskrun_tests::repo_root).
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test");
        let path = format!("{dir}/job-template.example.yaml");
        let a = parse(&[
            "--job-template",
            &path,
            "--image=other:1",
            "--backoff-limit=5",
        ]);
        let t = a.job_template().expect("valid");
        assert_eq!(t.image, "other:1");
        assert_eq!(t.backoff_limit, Some(5));
        assert_eq!(t.service_account_name.as_deref(), Some("agent"));
    }

    #[test]
    fn no_image_is_an_error() {
        assert!(parse(&[]).job_template().is_err());
    }

    #[test]
    fn a_concurrency_of_zero_is_refused() {
        assert_eq!(parse(&["--concurrency=1"]).concurrency, 1);
        let zero = ["taskrun-controller", "--concurrency=0"];
        assert!(Args::try_parse_from(zero).is_err());
    }

    #[test]
    fn leader_election_can_be_turned_off() {
        assert!(parse(&[]).leader_elect);
        assert!(!parse(&["--leader-elect=false"]).leader_elect);
        assert!(!parse(&["--leader-elect", "false"]).leader_elect);
        // Given bare, as a switch, it turns it on.
        assert!(parse(&["--leader-elect", "--concurrency=2"]).leader_elect);
    }
}
