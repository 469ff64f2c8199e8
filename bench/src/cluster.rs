//! The benchmark's work against the real API server: creating TaskRuns, watching them reach
//! a status that names their Job, the minimal write loop the controller is compared with,
//! the controller process, webhook (de)registration, and resident memory.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use taskrun::{FINALIZER, TaskRun};
use taskrun_controller::config::Args;
use taskrun_controller::template::JobTemplate;
use taskrun_controller::{job, status, writes};
use taskrun_tests::webhook::CONFIGURATION_NAME;
use taskrun_tests::{ChildGuard, ControlPlane, spawn_logged, workspace_bin};

use crate::review;

/// Creates tasks `range` in `namespace` with `concurrency` requests in flight; returns each
/// create's latency.
pub async fn create_taskruns(
    client: &Client,
    namespace: &str,
    range: std::ops::Range<u64>,
    concurrency: usize,
) -> anyhow::Result<Vec<Duration>> {
    let api: Api<TaskRun> = Api::namespaced(client.clone(), namespace);
    stream::iter(range)
        .map(|i| {
            let api = api.clone();
            async move {
                let tr: TaskRun = serde_json::from_value(review::taskrun(namespace, i))?;
                let started = Instant::now();
                api.create(&PostParams::default(), &tr)
                    .await
                    .with_context(|| format!("creating TaskRun {i}"))?;
                anyhow::Ok(started.elapsed())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
}

/// Resolves when `expected` TaskRuns of `namespace` have a status naming their Job (seen
/// through a watch, so the moment is not rounded to a polling interval).
pub async fn all_have_jobs(
    client: &Client,
    namespace: &str,
    expected: usize,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let api: Api<TaskRun> = Api::namespaced(client.clone(), namespace);
    let mut done = HashSet::new();
    let mut events = std::pin::pin!(
        watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
    );
    let deadline = tokio::time::Instant::now() + timeout;
    while done.len() < expected {
        let next = tokio::time::timeout_at(deadline, events.try_next()).await;
        match next {
            Err(_) => bail!(
                "only {} of {expected} TaskRuns in {namespace} named their Job within {timeout:?}",
                done.len()
            ),
            Ok(Err(e)) => bail!("watching TaskRuns: {e}"),
            Ok(Ok(None)) => bail!("the TaskRun watch ended"),
            Ok(Ok(Some(tr))) => {
                if tr.status.as_ref().is_some_and(|s| s.job_name.is_some()) {
                    done.insert(tr.name_any());
                }
            }
        }
    }
    Ok(Instant::now())
}

/// The least a controller must do for each TaskRun, with the same client and concurrency:
/// the writes the controller issues (finalizer, ConfigMap, Job, status), none of its reads.
/// (The finalizer too: these TaskRuns are created with no webhook registered to stamp it.)
/// The objects come from the controller's own builders with the template its flags give
/// (`CONTROLLER_JOB_FLAGS`), so both sides store the same bytes, and go through the same
/// requests (`taskrun_controller::writes`: answered with metadata only).
pub async fn minimal_loop(
    client: &Client,
    namespace: &str,
    concurrency: usize,
) -> anyhow::Result<usize> {
    let template = job_template()?;
    let api: Api<TaskRun> = Api::namespaced(client.clone(), namespace);
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let list = api.list(&ListParams::default()).await?;
    let count = list.items.len();
    stream::iter(list.items)
        .map(|tr| {
            let (api, jobs, config_maps, template) = (&api, &jobs, &config_maps, &template);
            async move {
                let name = tr.name_any();
                let finalizer = json!({"metadata": {
                    "finalizers": [FINALIZER], "resourceVersion": tr.resource_version()}});
                api.patch_metadata(&name, &PatchParams::default(), &Patch::Merge(&finalizer))
                    .await?;
                let owner = job::owner_reference(&tr).context("TaskRun without uid")?;
                writes::create(config_maps, &job::config_map(&tr, owner.clone())).await?;
                let (job_name, cm_name) = job::child_names(&tr);
                let created = writes::create(jobs, &job::job(&tr, owner, template)).await?;
                let seen = status::Observed {
                    generation: tr.metadata.generation,
                    context_version: tr.spec.context_version,
                    job_name: Some(job_name.clone()),
                    config_map_name: Some(cm_name),
                    attempts: 1,
                    started_at: created.creation_timestamp,
                };
                let outcome = status::job_outcome(&job_name, None);
                let next =
                    status::next_status(&Default::default(), &seen, &outcome, &status::now());
                writes::apply_status(api, &name, "taskrun-bench", &next).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<()>()
        .await?;
    Ok(count)
}

/// The flags that shape the benchmarked controller's Jobs.
const CONTROLLER_JOB_FLAGS: [&str; 1] = ["--image=registry.example/agent:bench"];

/// The Job template the controller builds from `CONTROLLER_JOB_FLAGS`.
fn job_template() -> anyhow::Result<JobTemplate> {
    let args =
        Args::try_parse_from(std::iter::once("taskrun-controller").chain(CONTROLLER_JOB_FLAGS))?;
    Ok(args.job_template()?)
}

/// A release `taskrun-controller` watching one namespace, with production logging (info).
pub struct Controller {
    pub child: ChildGuard,
    pub http_addr: SocketAddr,
}

impl Controller {
    pub fn start(cp: &ControlPlane, namespace: &str) -> anyhow::Result<Controller> {
        let http_addr = taskrun_tests::free_addr();
        let mut cmd = Command::new(workspace_bin("taskrun-controller"));
        cmd.args([
            format!("--http-addr={http_addr}"),
            "--log-format=text".into(),
            format!("--namespace={namespace}"),
            format!("--lease-name=bench-{namespace}"),
            "--lease-namespace=default".into(),
            format!("--identity=bench-{namespace}"),
        ])
        .args(CONTROLLER_JOB_FLAGS)
        .env("KUBECONFIG", cp.kubeconfig())
        .env("TASKRUN_LOG_LEVEL", "info")
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE");
        let child = spawn_logged(cmd, &format!("taskrun-controller-{namespace}"))?;
        Ok(Controller { child, http_addr })
    }

    /// Waits until /readyz answers 200 (leader, caches synced).
    pub async fn ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.child.is_running() {
                bail!(
                    "taskrun-controller exited; see {}",
                    self.child.log_path().display()
                );
            }
            if http_status(self.http_addr, "/readyz").await == Some(200) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("taskrun-controller not ready within {timeout:?}")
    }
}

/// Waits until the controller's `taskrun_controller_reconciles_total` reaches `n`; false after
/// `timeout`.
pub async fn reconciled_at_least(controller: &Controller, n: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let count = taskrun_tests::http_get(controller.http_addr, "/metrics")
            .await
            .and_then(|text| taskrun_tests::metric(&text, "taskrun_controller_reconciles_total"));
        if count.is_some_and(|c| c >= n as f64) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    String::from_utf8_lossy(&out)
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// VmRSS of `pid` in MiB, from /proc/<pid>/status.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    memory_mib(pid, "VmRSS")
}

/// A memory line of /proc/<pid>/status in MiB: `VmRSS` (now) or `VmHWM` (the peak so far).
pub fn memory_mib(pid: u32, field: &str) -> anyhow::Result<f64> {
    let kib = taskrun_tests::memory_kib(pid, field).with_context(|| format!("no {field} line"))?;
    Ok(kib as f64 / 1024.0)
}

/// A client for the admin of `cp` built as the controller builds its own
/// (`taskrun_apiclient::client`): what the minimal loop writes through.
pub async fn controller_client(cp: &ControlPlane) -> anyhow::Result<Client> {
    Ok(taskrun_apiclient::client(cp.config().await)?)
}

/// The API server's own metrics, as text.
async fn api_metrics(client: &Client) -> anyhow::Result<String> {
    let request = hyper::Request::get("/metrics").body(Vec::new())?;
    Ok(client.request_text(request).await?)
}

/// Each sample of `metric` in a metrics text: a reader of its labels, and its value.
fn samples<'a>(
    text: &'a str,
    metric: &'a str,
) -> impl Iterator<Item = (impl Fn(&str) -> &'a str, f64)> + 'a {
    text.lines().filter_map(move |line| {
        let (labels, value) = line
            .strip_prefix(metric)?
            .strip_prefix('{')?
            .rsplit_once("} ")?;
        let label = move |key: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix("=\"")?.strip_suffix('"'))
                .unwrap_or_default()
        };
        Some((label, value.trim().parse::<f64>().unwrap_or(0.0)))
    })
}

/// Requests the API server has answered so far, by "VERB resource[/subresource]", from its
/// own `apiserver_request_total` metric (every client counts).
pub async fn api_requests(client: &Client) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = api_metrics(client).await?;
    let mut out = BTreeMap::new();
    for (label, value) in samples(&text, "apiserver_request_total") {
        let (verb, resource, sub) = (label("verb"), label("resource"), label("subresource"));
        let key = if sub.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource}/{sub}")
        };
        *out.entry(key).or_insert(0.0) += value;
    }
    Ok(out)
}

/// Seconds the API server has spent so far calling each admission webhook, by webhook name,
/// from its own `apiserver_admission_webhook_admission_duration_seconds`: the call, and for
/// a mutating webhook applying its patch.
pub async fn webhook_call_seconds(client: &Client) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = api_metrics(client).await?;
    let mut out = BTreeMap::new();
    let metric = "apiserver_admission_webhook_admission_duration_seconds_sum";
    for (label, value) in samples(&text, metric) {
        *out.entry(label("name").to_owned()).or_insert(0.0) += value;
    }
    Ok(out)
}

/// `after - before` per key, divided by `per`, keeping the keys that moved.
pub fn moved_per(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    per: f64,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d > 0.0).then(|| (k.clone(), (d / per * 100.0).round() / 100.0))
        })
        .collect()
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> anyhow::Result<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start at the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed /proc/<pid>/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i).context("short /proc/<pid>/stat")?.parse()?)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(std::time::Duration::from_micros(total * 1_000_000 / hz))
}

/// Removes both webhook configurations and waits until a dry-run create is no longer
/// mutated (the API server has dropped them).
pub async fn unregister_webhooks(client: &Client) -> anyhow::Result<()> {
    let dp = DeleteParams::default();
    let _ = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .delete(CONFIGURATION_NAME, &dp)
        .await;
    let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(CONFIGURATION_NAME, &dp)
        .await;
    let api: Api<TaskRun> = Api::namespaced(client.clone(), "default");
    let probe: TaskRun = serde_json::from_value(review::taskrun("default", 0))?;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(created) = api.create(&dry_run, &probe).await
            && !created.labels().contains_key(taskrun::labels::TASK_ID)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the API server still calls the webhooks a minute after they were removed")
}
