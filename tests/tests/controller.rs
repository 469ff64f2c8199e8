//! taskrun-controller against the real control plane (kube-apiserver, etcd and
//! kube-controller-manager with the Job controller and the garbage collector). No webhook is
//! registered. There is no kubelet: pods are moved to Succeeded/Failed through the
//! pods/status subresource, as a kubelet would, and the real Job controller does the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use taskrun::{Phase, TaskRun, labels, names};
use taskrun_tests::controller::{Controller, LEASE_NAMESPACE};
use taskrun_tests::fault_proxy::FaultProxy;
use taskrun_tests::kubelet::{PodEnd, bind_pod, confirm_stopped, finish_pod, start_pod};
use taskrun_tests::policy::Refusal;
use taskrun_tests::{ControlPlane, http_get, metric, wait_for, wait_gone};

const WAIT: Duration = Duration::from_secs(60);

fn taskrun(
    name: &str,
    service: &str,
    task_id: i64,
    version: i64,
    files: &[(&str, &str)],
) -> TaskRun {
    let files: Vec<_> = files
        .iter()
        .map(|(f, c)| json!({"filename": f, "content": c}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "orchestrator.io/v1",
        "kind": "TaskRun",
        "metadata": {"name": name},
        "spec": {
            "taskId": task_id,
            "serviceName": service,
            "agentName": "claude",
            "contextVersion": version,
            "markdownFiles": files,
        }
    }))
    .expect("a valid TaskRun")
}

async fn create(api: &Api<TaskRun>, tr: &TaskRun) -> TaskRun {
    api.create(&PostParams::default(), tr)
        .await
        .unwrap_or_else(|e| panic!("create TaskRun {}: {e}", tr.name_any()))
}

/// The message of the TaskRun's status.
fn message(tr: &TaskRun) -> Option<&str> {
    tr.status.as_ref()?.message.as_deref()
}

/// Waits until the TaskRun's status satisfies `ok`, and returns the TaskRun.
async fn wait_status(
    api: &Api<TaskRun>,
    name: &str,
    what: &str,
    ok: impl Fn(&TaskRun) -> bool,
) -> TaskRun {
    wait_for(what, WAIT, || async {
        api.get_opt(name).await.ok().flatten().filter(|tr| ok(tr))
    })
    .await
}

/// Edits the spec without a new version, which makes the controller look at the TaskRun
/// again, and waits until it has (observedGeneration); returns the TaskRun as it left it.
async fn look_again(api: &Api<TaskRun>, name: &str) -> TaskRun {
    let patch = json!({"spec": {"markdownFiles": [{"filename": "task.md", "content": "edited"}]}});
    let generation = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("edit spec")
        .metadata
        .generation;
    wait_status(api, name, "the edit to be observed", |tr| {
        tr.status.as_ref().and_then(|s| s.observed_generation) == generation
    })
    .await
}

fn phase(tr: &TaskRun) -> Option<Phase> {
    tr.status.as_ref().and_then(|s| s.phase)
}

/// Failed as a Duplicate, its message containing `words` (the holder's name).
fn duplicate_naming(tr: &TaskRun, words: &str) -> bool {
    condition(tr, "Succeeded") == Some(("False", "Duplicate"))
        && message(tr).is_some_and(|m| m.contains(words))
}

fn condition<'a>(tr: &'a TaskRun, type_: &str) -> Option<(&'a str, &'a str)> {
    tr.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

/// The unlabelled metric `name` of the controller; `None` when `/metrics` did not answer with
/// it.
async fn controller_metric(ctrl: &Controller, name: &str) -> Option<f64> {
    let text = http_get(ctrl.http_addr(), "/metrics").await?;
    metric(&text, name)
}

/// The controller's count of failed reconciles; `None` when `/metrics` did not answer with it.
async fn reconcile_errors(ctrl: &Controller) -> Option<f64> {
    controller_metric(ctrl, "taskrun_controller_reconcile_errors_total").await
}

/// The count of failed reconciles now, as a baseline: waited for, never taken as 0 when
/// `/metrics` does not answer (a count already moving would then pass any wait for it to grow).
async fn reconcile_errors_now(ctrl: &Controller) -> f64 {
    wait_for("the controller's count of failed reconciles", WAIT, || {
        reconcile_errors(ctrl)
    })
    .await
}

/// The pods of a Job, found by the label the Job controller sets.
async fn pods_of(client: &Client, ns: &str, job: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// Creates TaskRun "t" of `service` and `task_id` at version 1, binds its pod to a node (so
/// that a deletion waits for `confirm_stopped`), starts it and waits until the TaskRun is
/// Running; the pod's name.
async fn running_on_a_node(
    client: &Client,
    api: &Api<TaskRun>,
    ns: &str,
    service: &str,
    task_id: i64,
) -> String {
    create(api, &taskrun("t", service, task_id, 1, &[("task.md", "x")])).await;
    let job = names::job_name(service, task_id, 1);
    let pod = bind_pod(client, ns, &job).await;
    start_pod(client, ns, &job).await;
    wait_status(api, "t", "Running", |tr| phase(tr) == Some(Phase::Running)).await;
    pod
}

/// The Events recorded about the TaskRun with `uid`.
async fn events_of(client: &Client, ns: &str, uid: &str) -> Option<Vec<Event>> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = events.list(&ListParams::default()).await.ok()?;
    let about = |e: &Event| e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid);
    Some(list.items.into_iter().filter(about).collect())
}

/// How many times each reason was recorded: an Event that a recorder made into a series (or
/// counted the old way) counts as often as it says.
fn count_reasons(events: &[Event]) -> BTreeMap<String, i32> {
    let mut counts = BTreeMap::new();
    for e in events {
        let times = e
            .series
            .as_ref()
            .map(|s| s.count)
            .or(e.deprecated_count)
            .unwrap_or(1);
        *counts
            .entry(e.reason.clone().unwrap_or_default())
            .or_insert(0) += times;
    }
    counts
}

#[tokio::test]
async fn a_taskrun_runs_to_success_in_a_restricted_namespace_and_stays_succeeded() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp
        .namespace_with_labels(
            "ctrl-ok",
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await;
    let ctrl = Controller::start(
        cp,
        &[
            &format!("--namespace={ns}"),
            "--secret-env=API_KEY=agent-secrets:api-key",
        ],
    );
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let created = create(
        &api,
        &taskrun(
            "fix-login",
            "billing",
            42,
            1,
            &[("task.md", "# Fix the login"), ("spec.md", "spec")],
        ),
    )
    .await;
    let uid = created.uid().expect("uid");

    // Status from the first reconcile, finalizer in place.
    let tr = wait_status(&api, "fix-login", "a first status", |tr| {
        phase(tr).is_some()
    })
    .await;
    assert!(tr.finalizers().iter().any(|f| f == taskrun::FINALIZER));
    let status = tr.status.clone().expect("status");
    assert_eq!(status.job_name.as_deref(), Some("billing-42-v1"));
    assert_eq!(
        status.config_map_name.as_deref(),
        Some("billing-42-v1-files")
    );
    assert_eq!(status.observed_context_version, Some(1));
    assert_eq!(status.attempts, Some(1));
    assert_eq!(condition(&tr, "Succeeded").map(|c| c.0), Some("Unknown"));

    // Children: names, labels, owner, files, mount, env, security context.
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("billing-42-v1-files")
        .await
        .expect("ConfigMap");
    let data = cm.data.clone().expect("data");
    assert_eq!(
        data.get("task.md").map(String::as_str),
        Some("# Fix the login")
    );
    assert_eq!(data.get("spec.md").map(String::as_str), Some("spec"));
    let job = Api::<Job>::namespaced(client.clone(), &ns)
        .get("billing-42-v1")
        .await
        .expect("Job");
    for meta in [&cm.metadata, &job.metadata] {
        let owner = &meta.owner_references.clone().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("TaskRun", uid.as_str(), Some(true))
        );
        let l = meta.labels.clone().expect("labels");
        assert_eq!(l[labels::TASKRUN], "fix-login");
        assert_eq!(l[labels::TASK_ID], "42");
        assert_eq!(l[labels::SERVICE_NAME], "billing");
        assert_eq!(l[labels::CONTEXT_VERSION], "1");
        assert_eq!(l[labels::MANAGED_BY], "taskrun-controller");
    }
    let pod = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec");
    let c = &pod.containers[0];
    let mount = &c.volume_mounts.clone().expect("mounts")[0];
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/context", Some(true))
    );
    let env: std::collections::BTreeMap<_, _> = c
        .env
        .clone()
        .expect("env")
        .into_iter()
        .map(|e| (e.name.clone(), e))
        .collect();
    for (k, v) in [
        ("TASK_ID", "42"),
        ("SERVICE_NAME", "billing"),
        ("AGENT_NAME", "claude"),
        ("CONTEXT_VERSION", "1"),
        ("CONTEXT_DIR", "/context"),
    ] {
        assert_eq!(env[k].value.as_deref(), Some(v), "{k}");
    }
    assert_eq!(
        env["API_KEY"].value, None,
        "secrets are referenced, never copied"
    );
    assert!(
        env["API_KEY"]
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .is_some()
    );
    let sc = c.security_context.clone().expect("securityContext");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));

    // Pod Security admission (enforce=restricted) let the Job controller create the pod. Until
    // it runs (scheduled, its image pulled), the TaskRun says so, and is not Running.
    let pending = wait_status(&api, "fix-login", "PodPending once the pod exists", |tr| {
        condition(tr, "Succeeded") == Some(("Unknown", "PodPending"))
    })
    .await;
    assert_eq!(phase(&pending), Some(Phase::Pending));
    start_pod(&client, &ns, "billing-42-v1").await;
    let tr = wait_status(&api, "fix-login", "Running once the pod runs", |tr| {
        phase(tr) == Some(Phase::Running)
    })
    .await;
    assert_eq!(pods_of(&client, &ns, "billing-42-v1").await.len(), 1);
    assert!(
        tr.status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .is_some()
    );

    finish_pod(&client, &ns, "billing-42-v1", PodEnd::Succeeded).await;
    let out = cp
        .kubectl()
        .args([
            "wait",
            "-n",
            &ns,
            "taskrun/fix-login",
            "--for=condition=Succeeded",
            "--timeout=60s",
        ])
        .output()
        .expect("kubectl wait");
    assert!(
        out.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tr = wait_status(&api, "fix-login", "Succeeded", |tr| {
        phase(tr) == Some(Phase::Succeeded)
    })
    .await;
    assert!(
        tr.status
            .as_ref()
            .and_then(|s| s.completion_time.as_ref())
            .is_some()
    );
    assert_eq!(condition(&tr, "Succeeded"), Some(("True", "Completed")));
    assert_eq!(condition(&tr, "Ready"), Some(("True", "Completed")));

    // `kubectl get` shows the phase, and `-o wide` the Job, from the printer columns.
    let out = cp
        .kubectl()
        .args(["get", "taskruns", "-n", &ns, "-o", "wide", "--no-headers"])
        .output()
        .expect("kubectl get");
    let row = String::from_utf8_lossy(&out.stdout);
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert!(
        cells.len() == 7 && cells[4] == "Succeeded" && cells[6] == "billing-42-v1",
        "NAME TASK SERVICE VERSION PHASE AGE JOB expected, got: {row}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The Job goes (by hand, as its TTL would do): the TaskRun stays Succeeded, no new Job.
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    jobs.delete("billing-42-v1", &DeleteParams::background())
        .await
        .expect("delete Job");
    wait_gone("the Job to be gone", WAIT, &jobs, "billing-42-v1").await;
    // A spec edit without a new version makes the controller look again (observedGeneration).
    let patch = json!({"spec": {"markdownFiles": [{"filename": "task.md", "content": "# Fix the login", }, {"filename": "spec.md", "content": "spec v1b"}]}});
    let edited = api
        .patch("fix-login", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("edit spec");
    let generation = edited.metadata.generation;
    let tr = wait_status(&api, "fix-login", "the edit to be observed", |tr| {
        tr.status.as_ref().and_then(|s| s.observed_generation) == generation
    })
    .await;
    assert_eq!(phase(&tr), Some(Phase::Succeeded));
    assert!(
        jobs.get_opt("billing-42-v1").await.expect("get").is_none(),
        "a finished version got a new Job"
    );

    // An Event for every phase the TaskRun went through, each recorded once: the echoes of
    // the controller's own status writes, and the look after the edit, record none again.
    let reasons = wait_for("Events for each phase", WAIT, || async {
        let reasons = count_reasons(&events_of(&client, &ns, &uid).await?);
        reasons.contains_key("Completed").then_some(reasons)
    })
    .await;
    // (One per phase: PodPending, within Pending, records none of its own.)
    let once = BTreeMap::from(["JobCreated", "Running", "Completed"].map(|r| (r.to_owned(), 1)));
    assert_eq!(reasons, once);

    // Probes and metrics.
    assert!(
        http_get(ctrl.http_addr(), "/healthz")
            .await
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    );
    assert!(
        http_get(ctrl.http_addr(), "/readyz")
            .await
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    );
    // The per-phase gauge reads the controller's cache, which may trail the API by a moment.
    let metrics = wait_for("the Succeeded TaskRun in /metrics", WAIT, || async {
        let text = http_get(ctrl.http_addr(), "/metrics").await?;
        text.contains("taskrun_controller_taskruns{phase=\"Succeeded\"} 1")
            .then_some(text)
    })
    .await;
    for needle in [
        "taskrun_controller_reconciles_total",
        "taskrun_controller_reconcile_errors_total",
        "taskrun_controller_reconcile_duration_seconds_bucket",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn failing_pods_fail_the_taskrun_with_backoff_limit_exceeded() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-fail").await;
    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}"), "--backoff-limit=0"]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    create(&api, &taskrun("t", "pay", 7, 1, &[("task.md", "x")])).await;
    finish_pod(&client, &ns, "pay-7-v1", PodEnd::Failed).await;
    let tr = wait_status(&api, "t", "Failed", |tr| phase(tr) == Some(Phase::Failed)).await;
    assert_eq!(
        condition(&tr, "Succeeded"),
        Some(("False", "BackoffLimitExceeded"))
    );
    assert_eq!(condition(&tr, "Ready").map(|c| c.0), Some("False"));
    assert!(
        tr.status
            .as_ref()
            .and_then(|s| s.completion_time.as_ref())
            .is_some()
    );
}

/// Events are recorded off the reconcile's path: refused (as a quota or another team's policy
/// may refuse them), they hold up neither the Job nor the status, fail no reconcile, and the
/// refusal is logged.
#[tokio::test]
async fn a_refused_event_holds_up_no_taskrun() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-no-events").await;
    let probe: Event = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "probe", "reportingInstance": "probe",
        "action": "Probe", "reason": "Probe", "type": "Normal",
        "regarding": {"apiVersion": "v1", "kind": "ConfigMap", "namespace": ns, "name": "probe"},
    }))
    .expect("an Event");
    let refusal = Refusal::of_creates(&client, &ns, probe, "Forbidden", "no events here").await;
    let ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    create(&api, &taskrun("t", "quiet", 9, 1, &[("task.md", "x")])).await;
    start_pod(&client, &ns, "quiet-9-v1").await;
    finish_pod(&client, &ns, "quiet-9-v1", PodEnd::Succeeded).await;
    wait_status(&api, "t", "Succeeded", |tr| {
        phase(tr) == Some(Phase::Succeeded)
    })
    .await;
    let log = ctrl.log_tail(200);
    assert!(
        log.contains("could not record an Event") && log.contains("no events here"),
        "{log}"
    );
    assert_eq!(reconcile_errors(&ctrl).await, Some(0.0), "{log}");
    refusal.lift().await;
}

/// Past `activeDeadlineSeconds` the Job controller decides the Job failed (FailureTarget) and
/// deletes its pod, and adds Failed only once the pod is gone: meanwhile the agent may still be
/// writing, so the TaskRun stays Running, and fails with DeadlineExceeded once it is gone.
#[tokio::test]
async fn a_job_past_its_deadline_fails_the_taskrun_once_its_pod_has_stopped() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-deadline").await;
    let _ctrl = Controller::start(
        cp,
        // Long enough to bind the pod first, on a busy machine too.
        &[&format!("--namespace={ns}"), "--active-deadline-seconds=15"],
    );
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    create(&api, &taskrun("t", "slow", 5, 1, &[("task.md", "x")])).await;
    let pod = bind_pod(&client, &ns, "slow-5-v1").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    start_pod(&client, &ns, "slow-5-v1").await;

    let tr = wait_status(&api, "t", "its pod stopping past the deadline", |tr| {
        message(tr).is_some_and(|m| m.contains("failed (DeadlineExceeded); its pods are stopping"))
    })
    .await;
    assert_eq!(phase(&tr), Some(Phase::Running));
    assert_eq!(condition(&tr, "Succeeded").map(|c| c.0), Some("Unknown"));
    let stopping = pods.get(&pod).await.expect("the pod, being deleted");
    assert!(stopping.metadata.deletion_timestamp.is_some());

    // Its kubelet confirms: the pod is gone, the Job failed.
    pods.delete(
        &pod,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .expect("delete the pod");
    let tr = wait_status(&api, "t", "Failed", |tr| phase(tr) == Some(Phase::Failed)).await;
    assert_eq!(
        condition(&tr, "Succeeded"),
        Some(("False", "DeadlineExceeded"))
    );
}

/// An evicted pod (a node drained, say) is replaced only once it has stopped: the agent may
/// take its grace period to stop, and two agents of one version must never run side by side.
#[tokio::test]
async fn an_evicted_pod_is_replaced_only_once_it_has_stopped() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-evict").await;
    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let pod = running_on_a_node(&client, &api, &ns, "drained", 4).await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.evict(&pod, &Default::default())
        .await
        .expect("evict the pod");
    let tr = wait_status(&api, "t", "its pod stopping", |tr| {
        message(tr).is_some_and(|m| m.contains("pod is stopping"))
    })
    .await;
    assert_eq!(phase(&tr), Some(Phase::Pending));
    assert_eq!(condition(&tr, "Succeeded"), Some(("Unknown", "Retrying")));
    // The Job controller has seen the eviction (the status says so) and has not counted the
    // pod failed, as it would at once with the default policy, nor started another, past its
    // backoff after a failure too (10 s; the default policy starts the next pod then).
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job = jobs.get("drained-4-v1").await.expect("the Job");
    let spec = job.spec.expect("spec");
    assert_eq!(spec.pod_replacement_policy.as_deref(), Some("Failed"));
    assert_eq!(job.status.and_then(|s| s.failed).unwrap_or(0), 0);
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(15) {
        let live = pods_of(&client, &ns, "drained-4-v1").await;
        assert!(
            live.iter().all(|p| p.name_any() == pod),
            "a pod beside the one stopping: {:?}",
            live.iter().map(ResourceExt::name_any).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Its kubelet ends it, Failed, and removes it: now the Job starts another pod.
    confirm_stopped(&client, &ns, "drained-4-v1", &pod).await;
    wait_for("a replacement pod", WAIT, || async {
        pods_of(&client, &ns, "drained-4-v1")
            .await
            .into_iter()
            .find(|p| p.name_any() != pod)
    })
    .await;
    start_pod(&client, &ns, "drained-4-v1").await;
    wait_status(&api, "t", "Running again", |tr| {
        phase(tr) == Some(Phase::Running)
    })
    .await;
}

/// A raised contextVersion: the old version's Job is stopped (with a `Superseded` Event) and its
/// ConfigMap removed (no Job mounts it again), the new version gets both.
#[tokio::test]
async fn a_higher_context_version_stops_the_old_job_and_runs_the_new_one() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-update").await;
    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let created = create(&api, &taskrun("t", "search", 3, 1, &[("task.md", "first")])).await;
    let uid = created.uid().expect("uid");
    start_pod(&client, &ns, "search-3-v1").await;
    wait_status(&api, "t", "v1 Running", |tr| {
        phase(tr) == Some(Phase::Running)
    })
    .await;

    let patch = json!({"spec": {"contextVersion": 2, "markdownFiles": [
        {"filename": "task.md", "content": "first"},
        {"filename": "more.md", "content": "second", "fileType": "context"}]}});
    api.patch("t", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("raise contextVersion");
    // Version 2 waits for version 1's Job to be gone (`PreviousVersionStopping`), at once here:
    // its pod is on no node.
    let tr = wait_status(&api, "t", "version 2's Job", |tr| {
        tr.status.as_ref().and_then(|s| s.job_name.as_deref()) == Some("search-3-v2")
    })
    .await;
    let status = tr.status.clone().expect("status");
    assert_eq!(status.observed_context_version, Some(2));
    assert_eq!(status.attempts, Some(2));
    assert!(
        matches!(status.phase, Some(Phase::Pending | Phase::Running)),
        "{status:?}"
    );
    assert_eq!(status.completion_time, None);

    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    wait_gone("the v1 Job to be stopped", WAIT, &jobs, "search-3-v1").await;
    let superseded = wait_for("a Superseded Event", WAIT, || async {
        let events = events_of(&client, &ns, &uid).await?;
        events
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("Superseded"))
    })
    .await;
    assert_eq!(superseded.type_.as_deref(), Some("Normal"));
    assert!(
        superseded
            .note
            .as_deref()
            .is_some_and(|n| n.starts_with("stopping Job search-3-v1:")),
        "{:?}",
        superseded.note
    );
    assert!(jobs.get_opt("search-3-v2").await.expect("get").is_some());
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    wait_gone(
        "the v1 ConfigMap to be removed",
        WAIT,
        &config_maps,
        "search-3-v1-files",
    )
    .await;
    let cm = config_maps
        .get("search-3-v2-files")
        .await
        .expect("v2 ConfigMap");
    let keys: BTreeSet<_> = cm.data.unwrap_or_default().into_keys().collect();
    assert_eq!(
        keys,
        BTreeSet::from(["more.md".to_owned(), "task.md".to_owned()])
    );
    start_pod(&client, &ns, "search-3-v2").await;
    wait_status(&api, "t", "v2 Running", |tr| {
        phase(tr) == Some(Phase::Running)
    })
    .await;
    // The old Job was stopped once, and so said once.
    let events = events_of(&client, &ns, &uid).await.expect("list Events");
    assert_eq!(count_reasons(&events).get("Superseded"), Some(&1));
}

/// Raises TaskRun "t" to version 2 and waits until that version waits for the old Job
/// (`PreviousVersionStopping`); the TaskRun as then read.
async fn raise_to_version_2_and_see_it_wait(api: &Api<TaskRun>) -> TaskRun {
    let raise = json!({"spec": {"contextVersion": 2}});
    api.patch("t", &PatchParams::default(), &Patch::Merge(&raise))
        .await
        .expect("raise contextVersion");
    wait_status(api, "t", "version 2 waiting", |tr| {
        condition(tr, "Succeeded").is_some_and(|(_, r)| r == "PreviousVersionStopping")
    })
    .await
}

/// A raised contextVersion while the old version's pod runs on a node: the old Job is deleted
/// in the foreground, and the new version's Job is made only once that pod has stopped
/// (Pending, `PreviousVersionStopping`): the agents of two versions do not run side by side.
#[tokio::test]
async fn a_raised_context_version_waits_for_the_old_pod_to_stop() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-raise-wait").await;
    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let pod = running_on_a_node(&client, &api, &ns, "handover", 6).await;
    let (old, new) = (
        names::job_name("handover", 6, 1),
        names::job_name("handover", 6, 2),
    );

    let tr = raise_to_version_2_and_see_it_wait(&api).await;
    let status = tr.status.clone().expect("status");
    assert_eq!(status.phase, Some(Phase::Pending));
    assert_eq!(status.observed_context_version, Some(2));
    assert_eq!(status.job_name, None);
    assert!(
        message(&tr).is_some_and(|m| m.contains(&format!("Job {old} "))),
        "{:?}",
        message(&tr)
    );
    // The old pod is stopping and its Job stays until it has; nothing of version 2 runs.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    wait_for("the old pod to be deleted", WAIT, || async {
        let p = pods.get_opt(&pod).await.ok()??;
        p.metadata.deletion_timestamp.map(|_| ())
    })
    .await;
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(5) {
        assert!(
            jobs.get_opt(&new).await.expect("get").is_none(),
            "version 2's Job made while version 1's pod still stops"
        );
        let going = jobs.get_opt(&old).await.expect("get");
        assert!(
            going.is_some_and(|j| j.metadata.deletion_timestamp.is_some()),
            "version 1's Job went before its pod stopped"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    confirm_stopped(&client, &ns, &old, &pod).await;
    let tr = wait_status(&api, "t", "version 2's Job", |tr| {
        tr.status.as_ref().and_then(|s| s.job_name.as_deref()) == Some(new.as_str())
    })
    .await;
    assert_eq!(tr.status.and_then(|s| s.attempts), Some(2));
    wait_gone("version 1's Job", WAIT, &jobs, &old).await;
}

/// A controller restarted while a raised version waits: the new one, which knows nothing of
/// what the old one deleted, reads the stopping Job from its cache and still waits for its pod,
/// then makes the new version's Job, without stopping the old one again.
#[tokio::test]
async fn a_controller_restarted_while_a_version_waits_still_waits_for_the_old_pod() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-wait-restart").await;
    let args = [format!("--namespace={ns}")];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut ctrl = Controller::start(cp, &args);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let pod = running_on_a_node(&client, &api, &ns, "restart", 8).await;
    let (old, new) = (
        names::job_name("restart", 8, 1),
        names::job_name("restart", 8, 2),
    );
    let tr = raise_to_version_2_and_see_it_wait(&api).await;
    let uid = tr.uid().expect("uid");

    ctrl.kill();
    let restarted = Controller::start(cp, &args);
    // The restarted controller has looked at the TaskRun (the counter moves as a reconcile
    // returns), so the window below is one in which it decided, not one before it began.
    wait_for("the restarted controller to reconcile", WAIT, || async {
        let text = http_get(restarted.http_addr(), "/metrics").await?;
        (metric(&text, "taskrun_controller_reconciles_total")? > 0.0).then_some(())
    })
    .await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(5) {
        assert!(
            jobs.get_opt(&new).await.expect("get").is_none(),
            "the restarted controller made version 2's Job while version 1's pod still stops"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    confirm_stopped(&client, &ns, &old, &pod).await;
    wait_status(&api, "t", "version 2's Job", |tr| {
        tr.status.as_ref().and_then(|s| s.job_name.as_deref()) == Some(new.as_str())
    })
    .await;
    let events = events_of(&client, &ns, &uid).await.expect("list Events");
    assert_eq!(count_reasons(&events).get("Superseded"), Some(&1));
}

/// A Job of version 1 whose status write was lost (the controller killed right after creating
/// it, say): when the TaskRun is already at version 2, that Job is still stopped.
#[tokio::test]
async fn an_old_versions_job_that_no_status_named_is_still_stopped() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-lost-status").await;
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let tr = create(&api, &taskrun("t", "search", 4, 2, &[("task.md", "x")])).await;
    let old = names::job_name("search", 4, 1);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    jobs.create(&PostParams::default(), &version_1_job(&tr, &old))
        .await
        .expect("the version 1 Job");
    assert_eq!(tr.status, None, "no status names the version 1 Job");

    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    wait_status(&api, "t", "status of version 2", |tr| {
        tr.status.as_ref().and_then(|s| s.observed_context_version) == Some(2)
    })
    .await;
    wait_gone("the version 1 Job to be stopped", WAIT, &jobs, &old).await;
    wait_for("version 2's Job", WAIT, || async {
        jobs.get_opt(&names::job_name("search", 4, 2)).await.ok()?
    })
    .await;
}

/// The same Job, reaching the controller only once the status records version 2 (its status
/// write lost, then contextVersion raised and reconciled before the Job watch brought it): it
/// is stopped all the same.
#[tokio::test]
async fn an_old_versions_job_that_appears_after_the_new_version_runs_is_stopped() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-late-old-job").await;
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    create(&api, &taskrun("t", "late", 4, 2, &[("task.md", "x")])).await;
    let tr = wait_status(&api, "t", "version 2 with its Job", |tr| {
        tr.status
            .as_ref()
            .is_some_and(|s| s.observed_context_version == Some(2) && s.job_name.is_some())
    })
    .await;
    let old = names::job_name("late", 4, 1);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    jobs.create(&PostParams::default(), &version_1_job(&tr, &old))
        .await
        .expect("the version 1 Job");
    wait_gone("the version 1 Job to be stopped", WAIT, &jobs, &old).await;
    assert!(
        jobs.get_opt(&names::job_name("late", 4, 2))
            .await
            .expect("get")
            .is_some()
    );
}

/// Once version 2 has finished too: a Job of version 1 that appears then is stopped as well.
#[tokio::test]
async fn an_old_versions_job_that_appears_after_the_new_version_finished_is_stopped() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-late-after-end").await;
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    create(&api, &taskrun("t", "ended", 4, 2, &[("task.md", "x")])).await;
    wait_status(&api, "t", "version 2 with its Job", |tr| {
        tr.status.as_ref().is_some_and(|s| s.job_name.is_some())
    })
    .await;
    finish_pod(
        &client,
        &ns,
        &names::job_name("ended", 4, 2),
        PodEnd::Succeeded,
    )
    .await;
    let tr = wait_status(&api, "t", "version 2 succeeded", |tr| {
        phase(tr) == Some(Phase::Succeeded)
    })
    .await;
    let old = names::job_name("ended", 4, 1);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    jobs.create(&PostParams::default(), &version_1_job(&tr, &old))
        .await
        .expect("the version 1 Job");
    wait_gone("the version 1 Job to be stopped", WAIT, &jobs, &old).await;
    assert_eq!(phase(&look_again(&api, "t").await), Some(Phase::Succeeded));
}

/// A Job named for version 1 of `tr` and controlled by it, as the controller makes one.
fn version_1_job(tr: &TaskRun, name: &str) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": name,
            "labels": {labels::MANAGED_BY: labels::MANAGED_BY_VALUE},
            "ownerReferences": [{
            "apiVersion": "orchestrator.io/v1", "kind": "TaskRun", "name": tr.name_any(),
            "uid": tr.uid().expect("uid"), "controller": true}]},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "agent", "image": "registry.example/agent:v1"}]}}}
    }))
    .expect("a Job")
}

#[tokio::test]
async fn of_two_taskruns_with_one_identity_only_one_gets_a_job() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-dup").await;
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let (a, b) = (
        taskrun("a", "dup", 1, 1, &[("task.md", "x")]),
        taskrun("b", "dup", 1, 1, &[("task.md", "x")]),
    );
    // Both exist before the controller looks, as if both raced past the webhook.
    tokio::join!(create(&api, &a), create(&api, &b));
    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let finals = wait_for("one TaskRun Failed as Duplicate", WAIT, || async {
        let a = api.get("a").await.ok()?;
        let b = api.get("b").await.ok()?;
        let dup = |tr: &TaskRun| condition(tr, "Succeeded") == Some(("False", "Duplicate"));
        let has_status = |tr: &TaskRun| phase(tr).is_some();
        (has_status(&a) && has_status(&b) && (dup(&a) != dup(&b))).then_some((a, b))
    })
    .await;
    let (winner, loser) = if phase(&finals.0) == Some(Phase::Failed) {
        (finals.1, finals.0)
    } else {
        (finals.0, finals.1)
    };
    assert!(
        loser
            .status
            .as_ref()
            .and_then(|s| s.message.clone())
            .unwrap_or_default()
            .contains(&format!("TaskRun {} already runs", winner.name_any())),
        "{:?}",
        loser.status
    );
    let jobs = Api::<Job>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("list");
    assert_eq!(jobs.items.len(), 1);
    let owner = &jobs.items[0].owner_references()[0];
    assert_eq!(Some(owner.uid.clone()), winner.uid());
}

/// A duplicate does not get to run by raising its contextVersion, nor by starting above 1:
/// no name of the first TaskRun's version stands in its way there.
#[tokio::test]
async fn a_duplicate_does_not_run_at_a_higher_version() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-dup-version").await;
    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let is_duplicate_of_a = |version: i64| {
        move |tr: &TaskRun| {
            duplicate_naming(tr, "TaskRun a ")
                && tr.status.as_ref().and_then(|s| s.observed_context_version) == Some(version)
        }
    };
    create(&api, &taskrun("a", "dupver", 1, 1, &[("task.md", "x")])).await;
    wait_status(&api, "a", "a to have its Job", |tr| {
        tr.status.as_ref().and_then(|s| s.job_name.as_deref()) == Some("dupver-1-v1")
    })
    .await;
    // As if both raced past (or around) the webhook: b at version 1, c straight at 3.
    create(&api, &taskrun("b", "dupver", 1, 1, &[("task.md", "x")])).await;
    create(&api, &taskrun("c", "dupver", 1, 3, &[("task.md", "x")])).await;
    wait_status(&api, "b", "b Duplicate at version 1", is_duplicate_of_a(1)).await;
    wait_status(&api, "c", "c Duplicate at version 3", is_duplicate_of_a(3)).await;
    let patch = json!({"spec": {"contextVersion": 2}});
    api.patch("b", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("raise b's contextVersion");
    wait_status(&api, "b", "b Duplicate at version 2", is_duplicate_of_a(2)).await;

    let jobs = Api::<Job>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("list");
    let names: Vec<_> = jobs.items.iter().map(|j| j.name_any()).collect();
    assert_eq!(names, ["dupver-1-v1"]);
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels(&format!(
            "{}={}",
            labels::MANAGED_BY,
            labels::MANAGED_BY_VALUE
        )))
        .await
        .expect("list");
    let names: Vec<_> = config_maps.items.iter().map(|c| c.name_any()).collect();
    assert_eq!(names, ["dupver-1-v1-files"]);
}

#[tokio::test]
async fn a_duplicate_does_not_run_at_a_lower_version() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-dup-lower").await;
    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    // a starts at version 2 (as the webhook lets through), so no child of a's is named for
    // version 1; b comes at version 1 around the webhook.
    create(&api, &taskrun("a", "duplow", 1, 2, &[("task.md", "x")])).await;
    wait_status(&api, "a", "a to have its Job", |tr| {
        tr.status.as_ref().and_then(|s| s.job_name.as_deref()) == Some("duplow-1-v2")
    })
    .await;
    create(&api, &taskrun("b", "duplow", 1, 1, &[("task.md", "x")])).await;
    wait_status(&api, "b", "b Duplicate of a", |tr| {
        duplicate_naming(tr, "TaskRun a ")
    })
    .await;
    let jobs = Api::<Job>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("list");
    let names: Vec<_> = jobs.items.iter().map(|j| j.name_any()).collect();
    assert_eq!(names, ["duplow-1-v2"]);
}

/// Two TaskRuns of one task raced past the webhook: `a` made its ConfigMap and had its Job
/// refused (a used-up quota, here an admission policy), and `b`, first by the duplicate rule
/// (created a second earlier), came after and found that ConfigMap `a`'s. `b` fails as `a`'s
/// duplicate; `a`, holding the names, does not then fail as `b`'s, and runs once allowed.
#[tokio::test]
async fn the_taskrun_holding_the_names_runs_though_its_duplicate_was_created_first() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-dup-held").await;
    let refusal = Refusal::of_job_creates(&client, &ns, "Forbidden", "jobs are capped here").await;
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let b = create(&api, &taskrun("b", "held", 1, 1, &[("task.md", "x")])).await;
    // Creation times are whole seconds: a second later, b is first whatever the uids.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = create(&api, &taskrun("a", "held", 1, 1, &[("task.md", "x")])).await;
    assert!(a.creation_timestamp() > b.creation_timestamp());
    // a's ConfigMap, as its first reconcile made it before its Job was refused.
    let cm_name = names::config_map_name("held", 1, 1);
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": cm_name,
            "labels": {labels::MANAGED_BY: labels::MANAGED_BY_VALUE},
            "ownerReferences": [{
                "apiVersion": "orchestrator.io/v1", "kind": "TaskRun", "name": "a",
                "uid": a.uid().expect("uid"), "controller": true, "blockOwnerDeletion": true}]},
        "data": {"task.md": "x"},
    }))
    .expect("a ConfigMap");
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &cm)
        .await
        .expect("create a's ConfigMap");

    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let not_a_duplicate = |tr: &TaskRun| {
        assert_ne!(
            condition(tr, "Succeeded"),
            Some(("False", "Duplicate")),
            "a, which holds the names, failed as a duplicate: {:?}",
            tr.status
        );
    };
    wait_status(&api, "b", "b Duplicate of a", |tr| {
        duplicate_naming(tr, "TaskRun a already runs")
    })
    .await;
    let tr = wait_status(&api, "a", "a's refused Job in its status", |tr| {
        not_a_duplicate(tr);
        condition(tr, "Succeeded").is_some_and(|(_, reason)| reason == "CreateRefused")
    })
    .await;
    assert_eq!(phase(&tr), Some(Phase::Pending));

    // a is looked at again with b final: still not b's duplicate, and it runs once allowed.
    refusal.lift().await;
    let tr = wait_status(&api, "a", "a's Job once allowed", |tr| {
        not_a_duplicate(tr);
        tr.status.as_ref().and_then(|s| s.job_name.as_deref()) == Some("held-1-v1")
    })
    .await;
    assert_ne!(phase(&tr), Some(Phase::Failed));
    let jobs = Api::<Job>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("list");
    assert_eq!(jobs.items.len(), 1);
    assert_eq!(
        Some(jobs.items[0].owner_references()[0].uid.clone()),
        a.uid()
    );
    let b = api.get("b").await.expect("get b");
    assert_eq!(
        b.status.and_then(|s| s.job_name),
        None,
        "b never gets a Job"
    );
}

/// Two TaskRuns of one task created in the same second at different versions, as if both
/// raced past the webhook: the first one's reconcile runs before the second is cached, and
/// the second's before the first one's status is, so neither has run in the other's view
/// and the duplicate rule's tie (creation times are whole seconds) falls to the uids. Half
/// the pairs ran twice before the controller noted, in process, the TaskRuns that had begun
/// to create their children (`controller/src/starting.rs`). Exactly one of each pair runs.
#[tokio::test]
async fn two_taskruns_of_a_task_created_together_at_different_versions_run_once() {
    const PAIRS: i64 = 12;
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-dup-race").await;
    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    for id in 1..=PAIRS {
        create(
            &api,
            &taskrun(&format!("a{id}"), "race", id, 1, &[("task.md", "x")]),
        )
        .await;
        create(
            &api,
            &taskrun(&format!("b{id}"), "race", id, 2, &[("task.md", "x")]),
        )
        .await;
    }
    for id in 1..=PAIRS {
        let (a, b) = (format!("a{id}"), format!("b{id}"));
        let settled = |tr: &TaskRun| {
            tr.status.as_ref().is_some_and(|s| s.job_name.is_some())
                || condition(tr, "Succeeded") == Some(("False", "Duplicate"))
        };
        let a = wait_status(&api, &a, "a settled", settled).await;
        let b = wait_status(&api, &b, "b settled", settled).await;
        let ran: Vec<_> = [&a, &b]
            .into_iter()
            .filter(|tr| tr.status.as_ref().is_some_and(|s| s.job_name.is_some()))
            .map(|tr| tr.name_any())
            .collect();
        assert_eq!(ran.len(), 1, "task {id}: {ran:?} ran");
    }
    let jobs = Api::<Job>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("list");
    assert_eq!(jobs.items.len(), PAIRS as usize, "one Job per task");
}

#[tokio::test]
async fn deleting_a_taskrun_removes_its_children_and_its_finalizer() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-del").await;
    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    // A second finalizer keeps the TaskRun after the controller is done with it. The garbage
    // collector removes a background-deleted owner's children only once the owner is gone,
    // so children gone while it is still here were removed by the controller itself.
    const HOLD: &str = "example.com/hold";
    let mut held = taskrun("t", "gone", 5, 1, &[("task.md", "x")]);
    held.metadata.finalizers = Some(vec![HOLD.to_owned()]);
    create(&api, &held).await;
    wait_status(&api, "t", "a Job", |tr| {
        tr.status
            .as_ref()
            .and_then(|s| s.job_name.as_ref())
            .is_some()
    })
    .await;
    api.delete("t", &DeleteParams::default())
        .await
        .expect("delete");
    wait_status(&api, "t", "the controller's finalizer to go", |tr| {
        tr.finalizers() == [HOLD]
    })
    .await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let job = jobs
        .get_opt(&names::job_name("gone", 5, 1))
        .await
        .expect("get the Job");
    let cm = cms
        .get_opt(&names::config_map_name("gone", 5, 1))
        .await
        .expect("get the ConfigMap");
    assert!(
        job.is_none_or(|j| j.metadata.deletion_timestamp.is_some()),
        "the finalizer went but the Job was not deleted"
    );
    assert!(
        cm.is_none_or(|c| c.metadata.deletion_timestamp.is_some()),
        "the finalizer went but the ConfigMap was not deleted"
    );
    api.patch(
        "t",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("release the hold");
    wait_gone("the TaskRun to be gone", WAIT, &api, "t").await;
    wait_for("no children left", WAIT, || async {
        let j = jobs.get_opt(&names::job_name("gone", 5, 1)).await.ok()?;
        let c = cms
            .get_opt(&names::config_map_name("gone", 5, 1))
            .await
            .ok()?;
        (j.is_none() && c.is_none()).then_some(())
    })
    .await;

    // Delete and recreate of the same task works (the old children are gone first).
    create(&api, &taskrun("t2", "gone", 5, 1, &[("task.md", "again")])).await;
    let tr = wait_status(&api, "t2", "the recreated task's Job", |tr| {
        tr.status
            .as_ref()
            .and_then(|s| s.job_name.as_ref())
            .is_some()
    })
    .await;
    assert_ne!(phase(&tr), Some(Phase::Failed));
}

/// An orphaning delete of a TaskRun (`kubectl delete --cascade=orphan`, Argo CD's
/// `PrunePropagationPolicy=orphan`) whose children the garbage collector has already let go of
/// (here while the controller is down): the controller still stops the agent's Job and removes
/// the ConfigMap before the finalizer goes, so the task created again runs rather than failing
/// on the names (`NameConflict`).
#[tokio::test]
async fn an_orphaning_delete_of_a_taskrun_still_removes_its_children() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-orphan").await;
    let args = [format!("--namespace={ns}")];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut ctrl = Controller::start(cp, &args);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let (job_name, cm_name) = (
        names::job_name("orphan", 3, 1),
        names::config_map_name("orphan", 3, 1),
    );
    create(&api, &taskrun("t", "orphan", 3, 1, &[("task.md", "x")])).await;
    start_pod(&client, &ns, &job_name).await;
    wait_status(&api, "t", "Running", |tr| phase(tr) == Some(Phase::Running)).await;

    ctrl.kill();
    api.delete("t", &DeleteParams::orphan())
        .await
        .expect("delete, orphaning");
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    wait_for(
        "the garbage collector to orphan both children",
        WAIT,
        || async {
            let job = jobs.get_opt(&job_name).await.ok()??;
            let cm = cms.get_opt(&cm_name).await.ok()??;
            (job.owner_references().is_empty() && cm.owner_references().is_empty()).then_some(())
        },
    )
    .await;

    let _restarted = Controller::start(cp, &args);
    wait_gone("the TaskRun to be gone", WAIT, &api, "t").await;
    wait_gone("the orphaned Job to be gone", WAIT, &jobs, &job_name).await;
    wait_gone("the orphaned ConfigMap to be gone", WAIT, &cms, &cm_name).await;

    create(&api, &taskrun("t", "orphan", 3, 1, &[("task.md", "again")])).await;
    let tr = wait_status(&api, "t", "the recreated task's Job", |tr| {
        tr.status
            .as_ref()
            .is_some_and(|s| s.job_name.as_deref() == Some(job_name.as_str()))
    })
    .await;
    assert_ne!(phase(&tr), Some(Phase::Failed), "{:?}", tr.status);
}

/// A task recreated while the old TaskRun and its Job are still going away: the new TaskRun
/// waits for the name (Pending, `WaitingForPreviousOwner`) rather than failing as a duplicate
/// or a name conflict, and runs once they are gone.
#[tokio::test]
async fn a_task_recreated_while_its_old_job_goes_away_waits_then_runs() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-recreate").await;
    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    const HOLD: &str = "example.com/hold";
    let job_name = names::job_name("again", 5, 1);
    let mut held = taskrun("t", "again", 5, 1, &[("task.md", "x")]);
    held.metadata.finalizers = Some(vec![HOLD.to_owned()]);
    create(&api, &held).await;
    wait_status(&api, "t", "a Job", |tr| {
        tr.status
            .as_ref()
            .and_then(|s| s.job_name.as_ref())
            .is_some()
    })
    .await;
    let hold = |finalizers: serde_json::Value| {
        Patch::Merge(json!({"metadata": {"finalizers": finalizers}}))
    };
    jobs.patch(&job_name, &PatchParams::default(), &hold(json!([HOLD])))
        .await
        .expect("hold the Job");

    api.delete("t", &DeleteParams::default())
        .await
        .expect("delete");
    wait_status(&api, "t", "the controller's finalizer to go", |tr| {
        tr.finalizers() == [HOLD]
    })
    .await;
    let t2 = create(&api, &taskrun("t2", "again", 5, 1, &[("task.md", "again")])).await;
    let waiting = wait_status(&api, "t2", "the new TaskRun to wait", |tr| {
        condition(tr, "Succeeded").is_some_and(|(_, r)| r == "WaitingForPreviousOwner")
    })
    .await;
    assert_eq!(phase(&waiting), Some(Phase::Pending));

    jobs.patch(
        &job_name,
        &PatchParams::default(),
        &hold(serde_json::Value::Null),
    )
    .await
    .expect("release the Job");
    api.patch("t", &PatchParams::default(), &hold(serde_json::Value::Null))
        .await
        .expect("release the old TaskRun");
    let tr = wait_status(&api, "t2", "the Job of the new TaskRun", |tr| {
        tr.status.as_ref().and_then(|s| s.job_name.as_deref()) == Some(job_name.as_str())
    })
    .await;
    let status = tr.status.expect("status");
    assert_ne!(status.phase, Some(Phase::Failed), "{status:?}");
    assert_eq!(status.attempts, Some(1));
    let job = jobs.get(&job_name).await.expect("the new Job");
    let controller = job
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone());
    assert_eq!(
        controller, t2.metadata.uid,
        "the Job is not the new TaskRun's"
    );
}

/// A task deleted while its pod runs on a node, then created again: the old Job is deleted in
/// the foreground and keeps its name until that pod has stopped, so the new TaskRun waits
/// (`WaitingForPreviousOwner`) rather than running beside the old agent.
#[tokio::test]
async fn a_task_recreated_while_its_old_pod_stops_waits_for_it() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-recreate-pod").await;
    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let pod = running_on_a_node(&client, &api, &ns, "redo", 7).await;
    let job_name = names::job_name("redo", 7, 1);
    api.delete("t", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone("the old TaskRun", WAIT, &api, "t").await;

    let t2 = create(&api, &taskrun("t2", "redo", 7, 1, &[("task.md", "again")])).await;
    let waiting = wait_status(&api, "t2", "the new TaskRun to wait", |tr| {
        condition(tr, "Succeeded").is_some_and(|(_, r)| r == "WaitingForPreviousOwner")
    })
    .await;
    assert_eq!(phase(&waiting), Some(Phase::Pending));
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let old = jobs.get(&job_name).await.expect("the old Job, still there");
    assert!(old.metadata.deletion_timestamp.is_some());

    confirm_stopped(&client, &ns, &job_name, &pod).await;
    let tr = wait_status(&api, "t2", "the Job of the new TaskRun", |tr| {
        tr.status.as_ref().and_then(|s| s.job_name.as_deref()) == Some(job_name.as_str())
    })
    .await;
    assert_ne!(phase(&tr), Some(Phase::Failed));
    let job = jobs.get(&job_name).await.expect("the new Job");
    assert_eq!(
        job.owner_references().first().map(|o| o.uid.clone()),
        t2.metadata.uid,
        "the Job is not the new TaskRun's"
    );
}

/// The same, with the TaskRun deleted before the controller's Job watch showed its Job (made
/// a moment before, or while that watch is down): the Job its status names is asked of the
/// API server and deleted in the foreground too. Left to the garbage collector, it would go in
/// the background, its name freed while the pod still stops.
// Multi-threaded: the proxy in front of the controller is served on this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_deleted_before_the_job_watch_showed_its_job_still_stops_it_in_the_foreground() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-unseen-job").await;
    let proxy = FaultProxy::for_the_controller(cp).await;
    let _ctrl = proxy.controller("unseen-job-controller", &ns, &["--leader-elect=false"]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    // The controller is up once it has finalized a first TaskRun; from then on its Job watch
    // is held in the proxy, so its Job cache never shows the next Job.
    create(&api, &taskrun("warm", "unseen", 1, 1, &[("task.md", "x")])).await;
    wait_status(&api, "warm", "the first TaskRun's Job", |tr| {
        tr.status
            .as_ref()
            .and_then(|s| s.job_name.as_ref())
            .is_some()
    })
    .await;
    proxy.hold_requests_to(&[&format!("/namespaces/{ns}/jobs?"), "watch=true"]);
    wait_for("the Job watch to be held", WAIT, || async {
        (proxy.held() > 0).then_some(())
    })
    .await;

    create(&api, &taskrun("t", "unseen", 7, 1, &[("task.md", "x")])).await;
    let job_name = names::job_name("unseen", 7, 1);
    wait_status(&api, "t", "the status to name the Job", |tr| {
        tr.status.as_ref().and_then(|s| s.job_name.as_deref()) == Some(job_name.as_str())
    })
    .await;
    let pod = bind_pod(&client, &ns, &job_name).await;
    start_pod(&client, &ns, &job_name).await;
    api.delete("t", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone("the TaskRun", WAIT, &api, "t").await;
    // Once the pod is being deleted, a Job deleted in the background is already gone.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    wait_for("the pod to be deleted", WAIT, || async {
        let pod = pods.get_opt(&pod).await.ok()??;
        pod.metadata.deletion_timestamp.map(|_| ())
    })
    .await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let old = jobs
        .get_opt(&job_name)
        .await
        .expect("read the Job")
        .expect("the old Job went before its pod stopped");
    assert!(
        old.finalizers().iter().any(|f| f == "foregroundDeletion"),
        "{:?}",
        old.metadata
    );
    proxy.release_held();
    confirm_stopped(&client, &ns, &job_name, &pod).await;
    wait_gone("the old Job", WAIT, &jobs, &job_name).await;
}

/// SIGTERM while a reconcile is stuck (its Job's create held in the proxy): after the shutdown
/// grace the reconcile is dropped, and the leader lets the Lease go only the Lease grace later,
/// since a write it sent may still land; it says so, and holds the Lease meanwhile.
// Multi-threaded: the proxy in front of the controller is served on this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_drops_a_reconcile_at_sigterm_holds_the_lease_a_grace_longer() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-dropped").await;
    let proxy = FaultProxy::for_the_controller(cp).await;
    let lease = format!("dropped-{ns}");
    let mut ctrl = proxy.controller(
        "dropping-controller",
        &ns,
        &[
            &format!("--lease-name={lease}"),
            "--lease-grace-seconds=3",
            "--identity=dropper",
        ],
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let holder = || async {
        leases
            .get_opt(&lease)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    };
    wait_for("the controller to lead", WAIT, || async {
        (holder().await.as_deref() == Some("dropper")).then_some(())
    })
    .await;
    proxy.hold_requests_to(&["POST", &format!("/namespaces/{ns}/jobs?")]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    create(&api, &taskrun("t", "dropped", 1, 1, &[("task.md", "x")])).await;
    wait_for("the Job's create to be held", WAIT, || async {
        (proxy.held() > 0).then_some(())
    })
    .await;

    let log_path = ctrl.log_path().to_owned();
    let terminated = tokio::task::spawn_blocking(move || ctrl.terminate());
    const WAITS: &str = "reconciles were dropped: waiting before releasing the Lease";
    wait_for("the leader to say it waits", WAIT, || async {
        let log = std::fs::read_to_string(&log_path).ok()?;
        log.contains(WAITS).then_some(())
    })
    .await;
    assert_eq!(
        holder().await.as_deref(),
        Some("dropper"),
        "the Lease was let go before the grace"
    );
    let ended = terminated.await.expect("terminate");
    assert!(!ended.killed, "SIGKILLed: {ended:?}");
    let log = std::fs::read_to_string(&log_path).expect("the log");
    let at = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("{what:?} not in:\n{log}"))
    };
    assert!(at(WAITS) < at("released the leader Lease"), "{log}");
    proxy.release_held();
}

/// A reconcile that finds everything in place asks the API server nothing and writes nothing
/// (DESIGN section 5: children are read from the watches' caches, and a status is written only
/// when it changes): a change to the Job that changes nothing of the TaskRun's status, and the
/// reconciles that the watches' resumption may bring, make no request but the watches' own.
// Multi-threaded: the proxy in front of the controller is served on this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_that_finds_everything_in_place_makes_no_request() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-in-place").await;
    let proxy = FaultProxy::for_the_controller(cp).await;
    let ctrl = proxy.controller("in-place-controller", &ns, &["--leader-elect=false"]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    create(&api, &taskrun("t", "in-place", 3, 1, &[("task.md", "x")])).await;
    wait_status(&api, "t", "PodPending once the pod exists", |tr| {
        condition(tr, "Succeeded") == Some(("Unknown", "PodPending"))
    })
    .await;
    let reconciles = async || {
        controller_metric(&ctrl, "taskrun_controller_reconciles_total")
            .await
            .unwrap_or_default()
    };
    // Settled: the Job controller's last status update has been reconciled.
    let last = std::cell::Cell::new(reconciles().await);
    wait_for("the reconciles to settle", WAIT, || async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = reconciles().await;
        (now == last.replace(now) && now > 0.0).then_some(())
    })
    .await;
    let status = api.get("t").await.expect("get").status;

    proxy.note_requests();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    jobs.patch(
        &names::job_name("in-place", 3, 1),
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"example.com/touched": "yes"}}})),
    )
    .await
    .expect("annotate the Job");
    let deadline = Instant::now() + WAIT;
    while reconciles().await <= last.get() {
        assert!(
            Instant::now() < deadline,
            "no reconcile of the annotated Job; requests: {:#?}\n{}",
            proxy.requests(),
            ctrl.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = proxy.requests();
    // Anything but the watches' own requests: a watch resumed, or a list of its (paged, or at
    // any resourceVersion) should one have to list again.
    let watches = |line: &str| {
        line.starts_with("GET ")
            && ["watch=true", "limit=", "resourceVersion=0"]
                .iter()
                .any(|part| line.contains(part))
    };
    let reconciles_asked: Vec<&String> = requests.iter().filter(|l| !watches(l)).collect();
    assert!(
        reconciles_asked.is_empty(),
        "a reconcile with nothing to do made requests: {reconciles_asked:#?}"
    );
    assert!(
        requests
            .iter()
            .any(|l| l.contains("/jobs?") && l.contains("watch=true")),
        "the Job watch was not seen resuming through the proxy: {requests:#?}"
    );
    assert_eq!(api.get("t").await.expect("get").status, status);
}

/// A policy refusing every Job delete in `ns` ("jobs are frozen here"), once the API server
/// applies it to the Job `job`.
async fn freeze_job_deletes(client: &Client, ns: &str, job: &str) -> Refusal {
    let refusal = Refusal::start(
        client,
        ns,
        json!({"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["DELETE"],
               "resources": ["jobs"]}),
        "Forbidden",
        "jobs are frozen here",
    )
    .await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    wait_for("the policy to refuse Job deletes", WAIT, || async {
        let dry_run = DeleteParams {
            dry_run: true,
            ..DeleteParams::default()
        };
        matches!(jobs.delete(job, &dry_run).await,
                 Err(kube::Error::Api(e)) if e.message.contains("jobs are frozen"))
        .then_some(())
    })
    .await;
    refusal
}

/// A delete of a child that the API server refuses (an admission policy freezing Job
/// deletes): the TaskRun stays, held by its finalizer, and says why in a Warning Event
/// (`DeleteRefused`, with the policy's message), not only in the controller's log. Once the
/// policy goes, so does the TaskRun.
#[tokio::test]
async fn a_refused_delete_of_a_child_is_told_in_a_warning_event() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-delete-refused").await;
    let ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let tr = create(&api, &taskrun("t", "frozen", 1, 1, &[("task.md", "x")])).await;
    let job_name = names::job_name("frozen", 1, 1);
    wait_status(&api, "t", "a Job named", |tr| {
        tr.status.as_ref().and_then(|s| s.job_name.as_deref()) == Some(job_name.as_str())
    })
    .await;
    let refusal = freeze_job_deletes(&client, &ns, &job_name).await;

    api.delete("t", &DeleteParams::default())
        .await
        .expect("delete");
    let uid = tr.metadata.uid.clone().unwrap_or_default();
    let event = wait_for("a DeleteRefused Event", WAIT, || async {
        let events = events_of(&client, &ns, &uid).await?;
        events
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("DeleteRefused"))
    })
    .await;
    let note = event.note.clone().unwrap_or_default();
    assert_eq!(event.type_.as_deref(), Some("Warning"), "{event:?}");
    assert!(
        note.contains(&format!("deleting Job {job_name}"))
            && note.contains("jobs are frozen here")
            && note.contains("finalizer orchestrator.io/cleanup"),
        "{note}"
    );
    assert!(api.get_opt("t").await.expect("read").is_some());
    // Told once, not at every retry.
    let failed = reconcile_errors_now(&ctrl).await;
    wait_for("two more refused reconciles", WAIT, || async {
        (reconcile_errors(&ctrl).await >= Some(failed + 2.0)).then_some(())
    })
    .await;
    let refused = events_of(&client, &ns, &uid).await.unwrap_or_default();
    let told = refused
        .iter()
        .filter(|e| e.reason.as_deref() == Some("DeleteRefused"))
        .count();
    assert_eq!(told, 1, "{refused:?}");
    refusal.lift().await;
    wait_gone("the TaskRun", WAIT, &api, "t").await;
}

/// A raised contextVersion whose older Job the API server will not delete (a policy freezing
/// Job deletes): the new version waits and its status says why (`DeleteRefused`, quoting the
/// refusal), and it keeps trying to stop that Job after its status records the new version.
/// Once the policy goes, the old Job is stopped and the new version runs. It starts at version
/// 2, so that the controller's one look at the cache for older Jobs per term
/// (`Superseded::sweep_once`) is over before the raise.
#[tokio::test]
async fn a_raised_version_whose_older_job_may_not_be_deleted_says_so_and_runs_once_it_may() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-raise-refused").await;
    let ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    create(&api, &taskrun("t", "frozen", 2, 2, &[("task.md", "x")])).await;
    let (old, new) = (
        names::job_name("frozen", 2, 2),
        names::job_name("frozen", 2, 3),
    );
    wait_status(&api, "t", "a Job named", |tr| {
        tr.status.as_ref().and_then(|s| s.job_name.as_deref()) == Some(old.as_str())
    })
    .await;
    let refusal = freeze_job_deletes(&client, &ns, &old).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);

    let raise = json!({"spec": {"contextVersion": 3}});
    api.patch("t", &PatchParams::default(), &Patch::Merge(&raise))
        .await
        .expect("raise contextVersion");
    let tr = wait_status(&api, "t", "version 3 told of the refusal", |tr| {
        condition(tr, "Succeeded").is_some_and(|(_, r)| r == "DeleteRefused")
    })
    .await;
    let status = tr.status.clone().expect("status");
    assert_eq!(status.phase, Some(Phase::Pending));
    assert_eq!(status.observed_context_version, Some(3));
    assert_eq!(status.job_name, None);
    let said = message(&tr).unwrap_or_default();
    assert!(
        said.contains(&format!("deleting Job {old} of an older version"))
            && said.contains("jobs are frozen here"),
        "{said}"
    );
    // Retried after the status recorded version 3, and still refused: the status stays.
    let failed = reconcile_errors_now(&ctrl).await;
    wait_for("two more refused reconciles", WAIT, || async {
        (reconcile_errors(&ctrl).await >= Some(failed + 2.0)).then_some(())
    })
    .await;
    let tr = api.get("t").await.expect("read");
    assert_eq!(
        condition(&tr, "Succeeded").map(|(_, r)| r),
        Some("DeleteRefused")
    );
    let going = jobs.get(&old).await.expect("the old Job");
    assert_eq!(going.metadata.deletion_timestamp, None);
    assert!(jobs.get_opt(&new).await.expect("get").is_none());

    refusal.lift().await;
    wait_status(&api, "t", "version 3's Job", |tr| {
        tr.status.as_ref().and_then(|s| s.job_name.as_deref()) == Some(new.as_str())
    })
    .await;
    wait_gone("version 2's Job", WAIT, &jobs, &old).await;
    // And its ConfigMap, which no Job mounts again, as after any raise.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let old_files = names::config_map_name("frozen", 2, 2);
    wait_gone("version 2's ConfigMap", WAIT, &config_maps, &old_files).await;
}

/// Makes a ConfigMap that no TaskRun controls under the name of version 1's ConfigMap of the
/// TaskRun "t", then "t"; returns the ConfigMap as made.
async fn taskrun_whose_name_is_taken(client: &Client, ns: &str) -> ConfigMap {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut foreign = ConfigMap {
        data: Some(BTreeMap::from([("keep.md".to_owned(), "mine".to_owned())])),
        ..ConfigMap::default()
    };
    foreign.metadata.name = Some(names::config_map_name("taken", 1, 1));
    let foreign = config_maps
        .create(&PostParams::default(), &foreign)
        .await
        .expect("create the foreign ConfigMap");
    let api: Api<TaskRun> = Api::namespaced(client.clone(), ns);
    create(&api, &taskrun("t", "taken", 1, 1, &[("task.md", "x")])).await;
    foreign
}

/// A child name of the version held by a ConfigMap no TaskRun controls: the version fails
/// with `NameConflict` (README) and gets no Job, and the ConfigMap is left as it was.
#[tokio::test]
async fn a_name_held_by_a_foreign_config_map_fails_the_version_and_leaves_it_alone() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-conflict").await;
    let foreign = taskrun_whose_name_is_taken(&client, &ns).await;
    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let tr = wait_status(&api, "t", "Failed", |tr| phase(tr) == Some(Phase::Failed)).await;
    assert_eq!(condition(&tr, "Succeeded"), Some(("False", "NameConflict")));
    let cm_name = foreign.name_any();
    let message = message(&tr).unwrap_or_default();
    assert!(
        message.starts_with(&format!("ConfigMap {cm_name} already exists")),
        "{message}"
    );

    let jobs = Api::<Job>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("list Jobs");
    assert!(jobs.items.is_empty(), "a Job was made: {:?}", jobs.items);
    let after = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get(&cm_name)
        .await
        .expect("the foreign ConfigMap");
    assert_eq!(after.data, foreign.data);
    assert_eq!(after.metadata.owner_references, None);
    assert_eq!(after.metadata.labels, None);
    assert_eq!(
        after.metadata.resource_version, foreign.metadata.resource_version,
        "the foreign ConfigMap was written to"
    );
}

/// The finalizer removed from a finished TaskRun none of whose children will change again
/// (a GitOps tool dropping it, say) is put back: only the TaskRun's own change can bring it
/// back to the controller. A name conflict makes such a TaskRun at once.
#[tokio::test]
async fn a_finalizer_dropped_from_a_finished_taskrun_is_put_back() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-refinalize").await;
    taskrun_whose_name_is_taken(&client, &ns).await;
    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let has_finalizer = |tr: &TaskRun| tr.finalizers().iter().any(|f| f == taskrun::FINALIZER);
    wait_status(&api, "t", "Failed, with the finalizer", |tr| {
        phase(tr) == Some(Phase::Failed) && has_finalizer(tr)
    })
    .await;
    api.patch(
        "t",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("drop the finalizer");
    wait_status(&api, "t", "the finalizer to be put back", has_finalizer).await;
}

#[tokio::test]
async fn a_controller_killed_mid_reconcile_leaves_exactly_one_job_per_taskrun() {
    const N: i64 = 200;
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-kill").await;
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    futures::future::join_all((1..=N).map(|i| {
        let api = api.clone();
        async move {
            create(
                &api,
                &taskrun(&format!("t{i}"), "bulk", i, 1, &[("task.md", "x")]),
            )
            .await
        }
    }))
    .await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    // Killed as soon as a watch shows the first Job, with up to eight reconciles in flight: a watch
    // sees it within milliseconds, so most TaskRuns are still to do however fast the machine
    // (a list every 200 ms could find all of them done).
    let mut first_job = std::pin::pin!(
        watcher(jobs.clone(), watcher::Config::default())
            .default_backoff()
            .applied_objects()
    );
    let mut ctrl = Controller::start(cp, &[&format!("--namespace={ns}"), "--concurrency=8"]);
    tokio::time::timeout(WAIT, first_job.try_next())
        .await
        .expect("no Job within a minute")
        .expect("watch Jobs")
        .expect("a Job");
    ctrl.kill();
    let before = jobs
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .len();
    assert!(
        (1..N as usize).contains(&before),
        "the kill came too late to interrupt anything ({before} Jobs)"
    );
    ctrl.restart();
    let started = Instant::now();
    wait_for(
        "every TaskRun to report its Job",
        Duration::from_secs(180),
        || async {
            let list = api.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .all(|tr| {
                    tr.status
                        .as_ref()
                        .and_then(|s| s.job_name.as_ref())
                        .is_some()
                })
                .then_some(())
        },
    )
    .await;
    eprintln!("restart to all {N} reported: {:?}", started.elapsed());
    let names: Vec<String> = jobs
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .iter()
        .map(|j| j.name_any())
        .collect();
    let expected: BTreeSet<String> = (1..=N).map(|i| names::job_name("bulk", i, 1)).collect();
    assert_eq!(names.len(), N as usize, "Jobs: {names:?}");
    assert_eq!(names.into_iter().collect::<BTreeSet<_>>(), expected);
    for tr in api.list(&ListParams::default()).await.expect("list").items {
        let s = tr.status.clone().expect("status");
        assert_eq!(
            s.job_name,
            Some(names::job_name("bulk", tr.spec.task_id, 1))
        );
        assert_eq!(s.attempts, Some(1), "{}", tr.name_any());
    }
}

/// How soon a leader stops on SIGTERM at most: 5 s for the reconciles in flight, the Lease
/// grace (2 s in these tests) when some had to be dropped, then 5 s to release the Lease.
const STOPS_WITHIN: Duration = Duration::from_secs(5 + 2 + 5);

/// Two replicas for `ns` sharing the Lease `lease-NS` (in the Lease namespace, through
/// `leases`): replica-a leading, and replica-b standing by, ready (so it has read the Lease)
/// and saying it does not lead.
async fn leader_and_standby(
    cp: &ControlPlane,
    ns: &str,
    leases: &Api<Lease>,
) -> (Controller, Controller, String) {
    let lease = format!("lease-{ns}");
    let lease_flag = format!("--lease-name={lease}");
    let ns_flag = format!("--namespace={ns}");
    let a = Controller::start(cp, &[&ns_flag, &lease_flag, "--identity=replica-a"]);
    wait_for("replica-a to lead", WAIT, || async {
        let holder = leases.get(&lease).await.ok()?.spec?.holder_identity?;
        (holder == "replica-a").then_some(())
    })
    .await;
    let b = Controller::start(cp, &[&ns_flag, &lease_flag, "--identity=replica-b"]);
    wait_for("replica-b to stand by", WAIT, || async {
        let ready = http_get(b.http_addr(), "/readyz").await?;
        let leading = controller_metric(&b, "taskrun_controller_leading").await?;
        (ready.starts_with("HTTP/1.1 200") && leading == 0.0).then_some(())
    })
    .await;
    (a, b, lease)
}

#[tokio::test]
async fn of_two_replicas_only_the_leader_acts_and_a_successor_takes_over() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-leader").await;
    let leases: Api<Lease> =
        Api::namespaced(client.clone(), taskrun_tests::controller::LEASE_NAMESPACE);
    let holder = |l: Lease| l.spec.and_then(|s| s.holder_identity);
    // The standby stands by before the TaskRun is made: a standby that wrongly acted would
    // reconcile it as its watch brings it.
    let (mut a, mut b, lease) = leader_and_standby(cp, &ns, &leases).await;

    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    create(&api, &taskrun("one", "lead", 1, 1, &[("task.md", "x")])).await;
    wait_status(&api, "one", "a status", |tr| phase(tr).is_some()).await;
    let reconciles = |text: Option<String>| {
        text.and_then(|t| metric(&t, "taskrun_controller_reconciles_total"))
            .unwrap_or(0.0)
    };
    // The counter moves when the reconcile returns, just after its status write.
    wait_for("the leader to count its reconciles", WAIT, || async {
        (reconciles(http_get(a.http_addr(), "/metrics").await) > 0.0).then_some(())
    })
    .await;
    // And the standby, over a few seconds, does nothing.
    for _ in 0..6 {
        let b_metrics = http_get(b.http_addr(), "/metrics")
            .await
            .expect("replica-b serves /metrics");
        assert_eq!(
            metric(&b_metrics, "taskrun_controller_leading"),
            Some(0.0),
            "replica-b says it leads"
        );
        assert_eq!(
            reconciles(Some(b_metrics)),
            0.0,
            "the standby acted:\n{}",
            b.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // SIGKILL: the Lease is not released; the standby takes it once it expires (6 s).
    a.kill();
    let killed = Instant::now();
    wait_for("replica-b to take the Lease", WAIT, || async {
        (holder(leases.get(&lease).await.ok()?)? == "replica-b").then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(6 + 8), "handover took {took:?}");
    eprintln!("handover after SIGKILL: {took:?}");
    create(&api, &taskrun("two", "lead", 2, 1, &[("task.md", "x")])).await;
    wait_status(&api, "two", "the successor to reconcile", |tr| {
        phase(tr).is_some()
    })
    .await;

    // SIGTERM: a graceful exit, in time, gives the Lease up instead of leaving it to expire.
    let ended = b.terminate();
    assert!(
        !ended.killed && ended.status.is_some_and(|s| s.success()),
        "replica-b did not exit cleanly on SIGTERM: {ended:?}\n{}",
        b.log_tail(20)
    );
    let after = ended.after.expect("replica-b ran until SIGTERM");
    assert!(after <= STOPS_WITHIN, "replica-b took {after:?} to stop");
    assert!(!b.is_running());
    let released = leases.get(&lease).await.expect("lease");
    assert!(
        holder(released).is_none_or(|h| h.is_empty()),
        "the Lease was not released:\n{}",
        b.log_tail(20)
    );
}

/// The one exception to waiting out a Lease (DESIGN section 5): its holder cleared or changed
/// by hand. A free Lease may be taken at once by either replica; a leader that reads another
/// holder stops acting at once. Either way, soon exactly one replica leads, the one the Lease
/// names.
#[tokio::test]
async fn a_lease_changed_by_hand_ends_with_one_leader_the_one_it_names() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-lease-by-hand").await;
    let leases: Api<Lease> =
        Api::namespaced(client.clone(), taskrun_tests::controller::LEASE_NAMESPACE);
    let (a, b, lease) = leader_and_standby(cp, &ns, &leases).await;
    let holder = async || leases.get(&lease).await.ok()?.spec?.holder_identity;
    let leading = async |c: &Controller| controller_metric(c, "taskrun_controller_leading").await;
    // The replica that leads, if exactly one does and the Lease names it.
    let one_leader = async || {
        let holder = holder().await?;
        let named = match (leading(&a).await? == 1.0, leading(&b).await? == 1.0) {
            (true, false) => "replica-a",
            (false, true) => "replica-b",
            _ => return None,
        };
        (named == holder).then_some(holder)
    };
    let set_holder = async |holder: Option<&str>| {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let patch = json!({"spec": {"holderIdentity": holder, "renewTime": now}});
        leases
            .patch(&lease, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .expect("change the Lease by hand");
    };

    // Cleared: whoever reads it first takes it (the leader, renewing, most often).
    set_holder(None).await;
    wait_for("one leader, the Lease's holder", WAIT, || one_leader()).await;
    // Handed to the standby: the leader reads another holder, and stops acting; the standby
    // renews what names it. Seen twice a Lease's duration apart, so that a settled state is
    // not taken for a passing one.
    set_holder(Some("replica-b")).await;
    for _ in 0..2 {
        wait_for("replica-b alone to lead", WAIT, || async {
            (one_leader().await? == "replica-b").then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    assert_eq!(
        one_leader().await.as_deref(),
        Some("replica-b"),
        "replica-a:\n{}\nreplica-b:\n{}",
        a.log_tail(20),
        b.log_tail(20)
    );
    assert!(
        a.log_tail(50)
            .contains("another replica holds the Lease: stopped acting")
    );
}

/// A template the API server refuses, though the controller's own checks pass it, stops the
/// controller at start (a dry-run create of a Job built from it, in the controller's own
/// namespace), with the API server's message, instead of failing every TaskRun as
/// InvalidTemplate. The same template with its values in order starts.
#[tokio::test]
async fn a_template_the_api_server_refuses_stops_the_controller_at_start() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("ctrl-refused-template").await;
    let ns_flag = format!("--namespace={ns}");
    let cases: [(&[&str], &str); 2] = [
        // 422 Invalid: a request above its limit.
        (
            &["--memory-request=512Mi", "--memory-limit=256Mi"],
            "must be less than or equal to memory limit of 256Mi",
        ),
        // 400 BadRequest: a quantity that does not parse.
        (
            &["--cpu-request=lots"],
            "quantities must match the regular expression",
        ),
    ];
    for (flags, says) in cases {
        let args = [&[ns_flag.as_str()][..], flags].concat();
        let mut ctrl = Controller::start(cp, &args);
        wait_for("the controller to exit", Duration::from_secs(30), || {
            let exited = !ctrl.is_running();
            async move { exited.then_some(()) }
        })
        .await;
        let ended = ctrl.terminate();
        let log = ctrl.log_tail(30);
        assert!(
            ended.status.is_some_and(|s| !s.success()),
            "{flags:?}: {ended:?}\n{log}"
        );
        assert!(
            log.contains(says) && log.contains("Fix the template"),
            "{flags:?}: the log does not give the API server's message:\n{log}"
        );
        assert!(!log.contains("leading"), "{flags:?}: it started:\n{log}");
    }

    let ctrl = Controller::start(
        cp,
        &[&ns_flag, "--memory-request=256Mi", "--memory-limit=512Mi"],
    );
    wait_for("the controller to lead", WAIT, || async {
        let text = http_get(ctrl.http_addr(), "/metrics").await?;
        (metric(&text, "taskrun_controller_leading")? == 1.0).then_some(())
    })
    .await;
    assert!(
        ctrl.log_tail(100)
            .contains("the API server accepts the Job template"),
        "{}",
        ctrl.log_tail(30)
    );
}

/// A Job the API server refuses as invalid still fails its TaskRun as InvalidTemplate when the
/// start-up check could not tell (here its namespace does not exist: the API server answers
/// 404, and the controller starts unchecked).
#[tokio::test]
async fn a_job_the_api_server_refuses_fails_the_taskrun_as_invalid_template() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-invalid").await;
    let absent = format!("--lease-namespace={ns}-absent");
    // Passes the controller's own checks; the API server refuses a request above its limit.
    let ctrl = Controller::start(
        cp,
        &[
            &format!("--namespace={ns}"),
            "--memory-request=512Mi",
            "--memory-limit=256Mi",
            "--leader-elect=false",
            &absent,
        ],
    );
    let deadline = Instant::now() + WAIT;
    let gave_up = |log: String| {
        log.lines()
            .any(|l| l.contains("could not check the Job template") && l.contains("404 NotFound"))
    };
    while !gave_up(ctrl.log_tail(100)) {
        assert!(
            Instant::now() < deadline,
            "the check did not give up on a missing namespace:\n{}",
            ctrl.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    create(&api, &taskrun("t", "bad", 1, 1, &[("task.md", "x")])).await;
    let tr = wait_status(&api, "t", "Failed", |tr| phase(tr) == Some(Phase::Failed)).await;
    assert_eq!(
        condition(&tr, "Succeeded"),
        Some(("False", "InvalidTemplate"))
    );
    // The API server's own words, which name the resource that is out of bounds.
    let said = message(&tr).unwrap_or_default();
    assert!(
        said.starts_with("the Job for this TaskRun was refused: ") && said.contains("memory"),
        "{said}"
    );
    let jobs = Api::<Job>::namespaced(client, &ns)
        .list(&ListParams::default())
        .await
        .expect("list");
    assert!(jobs.items.is_empty());
}

/// A Job removed before its end was seen (by hand here; a short TTL while no replica was
/// watching does the same) ends its version as Failed, JobLost, and is not created again:
/// running it twice could do the task twice.
#[tokio::test]
async fn a_job_removed_before_its_end_was_seen_fails_the_version_for_good() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-lost-job").await;
    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    create(&api, &taskrun("t", "lost", 1, 1, &[("task.md", "x")])).await;
    start_pod(&client, &ns, "lost-1-v1").await;
    wait_status(&api, "t", "Running", |tr| phase(tr) == Some(Phase::Running)).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    jobs.delete("lost-1-v1", &DeleteParams::background())
        .await
        .expect("delete the Job");
    let tr = wait_status(&api, "t", "Failed", |tr| phase(tr) == Some(Phase::Failed)).await;
    assert_eq!(condition(&tr, "Succeeded"), Some(("False", "JobLost")));
    let said = message(&tr).unwrap_or_default();
    assert!(
        said.contains("Job lost-1-v1 was removed before its end was seen")
            && said.contains("raise contextVersion to run the task again"),
        "{said}"
    );

    let tr = look_again(&api, "t").await;
    assert_eq!(phase(&tr), Some(Phase::Failed));
    assert!(
        jobs.get_opt("lost-1-v1").await.expect("get").is_none(),
        "the lost Job was created again"
    );
}

/// A Job deleted in the foreground before its end stays while its pods stop, and the Job
/// controller starts no other: the status says the Job is going (not that a pod is retried),
/// and the version ends as JobLost once it is gone.
#[tokio::test]
async fn a_job_deleted_in_the_foreground_is_reported_going_then_lost() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-foreground").await;
    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let pod = running_on_a_node(&client, &api, &ns, "fore", 2).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    jobs.delete("fore-2-v1", &DeleteParams::foreground())
        .await
        .expect("delete the Job");
    let tr = wait_status(&api, "t", "JobDeleting", |tr| {
        condition(tr, "Succeeded") == Some(("Unknown", "JobDeleting"))
    })
    .await;
    assert!(message(&tr).is_some_and(|m| m.contains("ends as JobLost once it is gone")));

    // Its pod's kubelet ends it: the Job goes, and with it the version.
    confirm_stopped(&client, &ns, "fore-2-v1", &pod).await;
    let tr = wait_status(&api, "t", "Failed", |tr| phase(tr) == Some(Phase::Failed)).await;
    assert_eq!(condition(&tr, "Succeeded"), Some(("False", "JobLost")));
}

/// The API server refuses the Job (here an admission policy; a used-up ResourceQuota answers
/// the same 403): the status says why while the reconcile is retried, and the Job is made once
/// the refusal is lifted.
#[tokio::test]
async fn a_refused_job_is_shown_in_the_status_and_made_once_allowed() {
    refused_job_is_shown_and_made_once_allowed("ctrl-refused-job", "Forbidden").await;
}

/// The same with a policy answering 422 Invalid (what one that names no reason answers), which
/// is the code the Job's own validation answers too: a refusal by admission still passes, and
/// is not taken for an invalid template.
#[tokio::test]
async fn a_job_refused_as_invalid_by_a_policy_is_retried_too() {
    refused_job_is_shown_and_made_once_allowed("ctrl-refused-invalid", "Invalid").await;
}

async fn refused_job_is_shown_and_made_once_allowed(ns: &str, reason: &str) {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace(ns).await;
    let refusal = Refusal::of_job_creates(&client, &ns, reason, "jobs are capped here").await;
    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    create(&api, &taskrun("t", "capped", 1, 1, &[("task.md", "x")])).await;
    let tr = wait_status(&api, "t", "the refusal in the status", |tr| {
        condition(tr, "Succeeded").is_some_and(|(_, reason)| reason == "CreateRefused")
    })
    .await;
    let status = tr.status.as_ref().expect("a status");
    assert_eq!(status.phase, Some(Phase::Pending));
    let message = status.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("Job") && message.contains("jobs are capped here"),
        "{message}"
    );
    assert_eq!(status.job_name, None);

    refusal.lift().await;
    let tr = wait_status(&api, "t", "the Job once allowed", |tr| {
        tr.status.as_ref().is_some_and(|s| s.job_name.is_some())
    })
    .await;
    assert_ne!(
        condition(&tr, "Succeeded").map(|(_, reason)| reason),
        Some("CreateRefused")
    );
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    assert!(jobs.get_opt("capped-1-v1").await.expect("get").is_some());
}

/// A Job made by a later reconcile than its ConfigMap (here its create was refused, then
/// allowed) is made only for the TaskRun as the API server has it then, not as the cache had
/// it: raised meanwhile while the controller's TaskRun watch lagged, the old version's Job is
/// never made (and so never started, then stopped), and the new version runs once the watch
/// shows it.
// Multi-threaded: the proxy in front of the controller is served on this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_made_after_its_config_map_is_made_for_the_version_the_api_server_has() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-late-job").await;
    let refusal = Refusal::of_job_creates(&client, &ns, "Forbidden", "jobs are capped here").await;
    let proxy = FaultProxy::for_the_controller(cp).await;
    let args = ["--leader-elect=false", "--backoff-max-seconds=1"];
    let ctrl = proxy.controller("late-job-controller", &ns, &args);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let tr = create(&api, &taskrun("t", "late", 1, 1, &[("task.md", "x")])).await;
    wait_status(&api, "t", "the refusal in the status", |tr| {
        condition(tr, "Succeeded").is_some_and(|(_, reason)| reason == "CreateRefused")
    })
    .await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    assert!(
        config_maps
            .get_opt("late-1-v1-files")
            .await
            .expect("get")
            .is_some()
    );

    // The controller's TaskRun watch lags from now on: its cache keeps version 1.
    proxy.hold_requests_to(&[&format!("/namespaces/{ns}/taskruns?"), "watch=true"]);
    wait_for("the TaskRun watch to be held", WAIT, || async {
        (proxy.held() > 0).then_some(())
    })
    .await;
    let raise = json!({"spec": {"contextVersion": 2}});
    api.patch("t", &PatchParams::default(), &Patch::Merge(&raise))
        .await
        .expect("raise contextVersion");
    refusal.lift().await;
    // Reconciles retried after the lift (at most a second apart) find version 2 and make no Job.
    let reconciles = async || {
        controller_metric(&ctrl, "taskrun_controller_reconciles_total")
            .await
            .unwrap_or_default()
    };
    let lifted = reconciles().await;
    wait_for("two reconciles after the lift", WAIT, || async {
        (reconciles().await >= lifted + 2.0).then_some(())
    })
    .await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    assert!(
        jobs.get_opt("late-1-v1").await.expect("get").is_none(),
        "version 1's Job was made for a TaskRun at version 2"
    );

    proxy.release_held();
    wait_status(&api, "t", "version 2's Job", |tr| {
        tr.status.as_ref().and_then(|s| s.job_name.as_deref()) == Some("late-1-v2")
    })
    .await;
    let uid = tr.uid().expect("uid");
    let events = events_of(&client, &ns, &uid).await.expect("list Events");
    assert_eq!(count_reasons(&events).get("Superseded"), None, "{events:?}");
    assert!(jobs.get_opt("late-1-v1").await.expect("get").is_none());
}

/// The ConfigMap of a running version removed by hand, and its re-creation refused: the
/// status keeps naming the version's Job (a status without it, CreateRefused, could have the
/// Job made again once its TTL removed it), and goes on following the Job: its end is reported
/// while the refusal holds.
#[tokio::test]
async fn a_refused_config_map_under_a_running_version_keeps_its_job_in_the_status() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-refused-cm").await;
    let ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    create(&api, &taskrun("t", "kept", 1, 1, &[("task.md", "x")])).await;
    wait_status(&api, "t", "a Job named", |tr| {
        tr.status.as_ref().is_some_and(|s| s.job_name.is_some())
    })
    .await;
    let probe: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "probe"}})).expect("a ConfigMap");
    let refusal = Refusal::of_creates(
        &client,
        &ns,
        probe,
        "Forbidden",
        "no ConfigMaps here for now",
    )
    .await;
    let errors = async || reconcile_errors(&ctrl).await.unwrap_or_default();
    let before = reconcile_errors_now(&ctrl).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    config_maps
        .delete(
            &names::config_map_name("kept", 1, 1),
            &DeleteParams::default(),
        )
        .await
        .expect("delete the ConfigMap");
    // The reconcile that tried to make the ConfigMap again has failed: an error counted, and
    // the refusal's own words in the controller's log (not some other error's).
    wait_for("a refused re-creation", WAIT, || async {
        (errors().await > before && ctrl.log_tail(200).contains("no ConfigMaps here for now"))
            .then_some(())
    })
    .await;
    let tr = api.get("t").await.expect("get");
    let status = tr.status.as_ref().expect("a status");
    assert_eq!(
        status.job_name.as_deref(),
        Some(names::job_name("kept", 1, 1).as_str())
    );
    assert_ne!(
        condition(&tr, "Succeeded").map(|(_, reason)| reason),
        Some("CreateRefused")
    );
    let job = names::job_name("kept", 1, 1);
    start_pod(&client, &ns, &job).await;
    finish_pod(&client, &ns, &job, PodEnd::Succeeded).await;
    let tr = wait_status(&api, "t", "Succeeded while the refusal holds", |tr| {
        phase(tr) == Some(Phase::Succeeded)
    })
    .await;
    assert_eq!(condition(&tr, "Succeeded"), Some(("True", "Completed")));
    refusal.lift().await;
}

/// The Job finishes and its TTL removes it while every status write is refused (an admission
/// policy, as a quota or a policy controller could). Once writes pass again, the status says
/// what the Job did: the retries after the Job was gone still know how it ended.
#[tokio::test]
async fn a_job_removed_while_status_writes_fail_still_ends_as_it_did() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-ttl-refused").await;
    let ctrl = Controller::start(
        cp,
        &[
            &format!("--namespace={ns}"),
            "--ttl-seconds-after-finished=0",
        ],
    );
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    create(&api, &taskrun("t", "refused", 1, 1, &[("task.md", "x")])).await;
    wait_status(&api, "t", "a Job named", |tr| {
        tr.status.as_ref().is_some_and(|s| s.job_name.is_some())
    })
    .await;

    let refusal = Refusal::start(
        &client,
        &ns,
        json!({"apiGroups": ["orchestrator.io"], "apiVersions": ["v1"], "operations": ["UPDATE"],
               "resources": ["taskruns/status"]}),
        "Forbidden",
        "no status writes here for now",
    )
    .await;
    wait_for("the policy to refuse status writes", WAIT, || async {
        let dry_run = PatchParams {
            dry_run: true,
            ..PatchParams::default()
        };
        let patch = json!({"status": {"message": "probe"}});
        matches!(api.patch_status("t", &dry_run, &Patch::Merge(&patch)).await,
                 Err(kube::Error::Api(e)) if e.message.contains("no status writes"))
        .then_some(())
    })
    .await;
    finish_pod(&client, &ns, "refused-1-v1", PodEnd::Succeeded).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    wait_gone(
        "the TTL controller to remove the Job",
        WAIT,
        &jobs,
        "refused-1-v1",
    )
    .await;
    // Two more refused reconciles, both after the Job was gone: the second is a retry of the
    // first.
    let errors = async || reconcile_errors(&ctrl).await.unwrap_or_default();
    let gone_at = reconcile_errors_now(&ctrl).await;
    wait_for(
        "two refused reconciles after the Job was gone",
        WAIT,
        || async { (errors().await >= gone_at + 2.0).then_some(()) },
    )
    .await;
    refusal.lift().await;

    let tr = wait_status(&api, "t", "a final phase", |tr| {
        phase(tr).is_some_and(|p| p.is_final())
    })
    .await;
    assert_eq!(
        phase(&tr),
        Some(Phase::Succeeded),
        "the Job succeeded; the status says {:?}",
        message(&tr)
    );
    assert!(
        jobs.get_opt("refused-1-v1").await.expect("get").is_none(),
        "the finished version ran again"
    );
}

#[tokio::test]
async fn a_job_removed_by_its_ttl_is_not_run_again() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-ttl").await;
    let _ctrl = Controller::start(
        cp,
        &[
            &format!("--namespace={ns}"),
            "--ttl-seconds-after-finished=0",
        ],
    );
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    create(&api, &taskrun("t", "ttl", 1, 1, &[("task.md", "x")])).await;
    finish_pod(&client, &ns, "ttl-1-v1", PodEnd::Succeeded).await;
    wait_status(&api, "t", "Succeeded", |tr| {
        phase(tr) == Some(Phase::Succeeded)
    })
    .await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    wait_gone(
        "the TTL controller to remove the Job",
        WAIT,
        &jobs,
        "ttl-1-v1",
    )
    .await;
    let tr = look_again(&api, "t").await;
    assert_eq!(phase(&tr), Some(Phase::Succeeded));
    assert!(
        jobs.get_opt("ttl-1-v1").await.expect("get").is_none(),
        "the finished version ran again"
    );
}

/// A status that another writer pointed at a Job the TaskRun does not control (here one of
/// another team's, at an older version than the spec's): the controller replaces the status
/// but does not stop that Job.
#[tokio::test]
async fn a_job_the_status_names_but_the_taskrun_does_not_control_is_left_alone() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-foreign-job").await;
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let tr = create(&api, &taskrun("t", "search", 6, 2, &[("task.md", "x")])).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let mut foreign = version_1_job(&tr, "db-migrate");
    foreign.metadata.owner_references = None;
    foreign.metadata.labels = None;
    jobs.create(&PostParams::default(), &foreign)
        .await
        .expect("another team's Job");
    let status = json!({"status": {
        "observedContextVersion": 1, "phase": "Running", "jobName": "db-migrate"}});
    api.patch_status("t", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("a status naming another Job");

    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let tr = wait_status(&api, "t", "status of version 2", |tr| {
        tr.status.as_ref().and_then(|s| s.observed_context_version) == Some(2)
    })
    .await;
    assert_eq!(
        tr.status.and_then(|s| s.job_name).as_deref(),
        Some("search-6-v2")
    );
    let left = jobs.get_opt("db-migrate").await.expect("get");
    assert!(
        left.is_some_and(|j| j.metadata.deletion_timestamp.is_none()),
        "the controller deleted a Job it does not control"
    );
}

/// The API server takes date-times in a status that the controller's reader does not (more
/// than nine fraction digits). One such TaskRun must not make the list it is on unreadable,
/// which would stop the controller for every TaskRun.
#[tokio::test]
async fn a_status_time_the_reader_cannot_parse_stops_nothing() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-odd-time").await;
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    create(&api, &taskrun("odd", "search", 7, 1, &[("task.md", "x")])).await;
    let odd = "2026-01-01T00:00:00.1234567890Z";
    let status = json!({"status": {"lastUpdated": odd, "conditions": [{"type": "Ready",
        "status": "False", "reason": "Pending", "message": "", "lastTransitionTime": odd}]}});
    // Untyped: what the API server stores, whatever this crate's reader makes of it.
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource::erase::<TaskRun>(&()),
    );
    let stored = raw
        .patch_status("odd", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("the API server takes the time");
    assert_eq!(stored.data["status"]["lastUpdated"], odd, "stored as sent");

    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    create(&api, &taskrun("plain", "search", 8, 1, &[("task.md", "x")])).await;
    for name in ["plain", "odd"] {
        wait_status(&api, name, "a Job in the status", |tr| {
            tr.status
                .as_ref()
                .and_then(|s| s.job_name.as_deref())
                .is_some()
        })
        .await;
    }
}

/// The probe and metrics port closes a connection that sends no request, so idle
/// connections cannot pile up.
#[tokio::test]
async fn an_idle_connection_to_the_probe_port_is_closed() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("ctrl-idle-probe").await;
    let ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    wait_for("the probe port", WAIT, || async {
        http_get(ctrl.http_addr(), "/healthz").await
    })
    .await;
    let mut idle = tokio::net::TcpStream::connect(ctrl.http_addr())
        .await
        .expect("connect");
    assert!(
        taskrun_tests::closed_within(&mut idle, Duration::from_secs(30)).await,
        "an idle connection stayed open"
    );
    assert!(http_get(ctrl.http_addr(), "/healthz").await.is_some());
}

/// The controller's writes ask the API server to answer with the object's metadata only
/// (`taskrun_controller::writes`): with that `Accept` header, the real API server answers a
/// create and a status apply with a PartialObjectMetadata, without the data or the spec.
#[tokio::test]
async fn the_writes_accept_header_gets_metadata_only_answers() {
    use kube::core::Request;
    use taskrun_controller::writes::METADATA_ONLY;
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-metadata-only").await;
    let send = |request: Result<http::Request<Vec<u8>>, kube::core::request::Error>| {
        let client = client.clone();
        async move {
            let mut request = request.expect("a request");
            request.headers_mut().insert(
                http::header::ACCEPT,
                http::HeaderValue::from_static(METADATA_ONLY),
            );
            let text = client.request_text(request).await.expect("an answer");
            serde_json::from_str::<serde_json::Value>(&text).expect("JSON")
        }
    };
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "m"}, "data": {"task.md": "the markdown"}});
    let answer = send(
        Request::new(format!("/api/v1/namespaces/{ns}/configmaps"))
            .create(&PostParams::default(), cm.to_string().into_bytes()),
    )
    .await;
    assert_eq!(answer["kind"], "PartialObjectMetadata", "{answer}");
    assert_eq!(answer["metadata"]["name"], "m");
    assert!(answer.get("data").is_none(), "{answer}");

    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    create(&api, &taskrun("t", "meta", 1, 1, &[("task.md", "x")])).await;
    let status = json!({"apiVersion": "orchestrator.io/v1", "kind": "TaskRun",
                        "status": {"message": "written"}});
    let answer = send(
        Request::new(format!("/apis/orchestrator.io/v1/namespaces/{ns}/taskruns"))
            .patch_subresource(
                "status",
                "t",
                &PatchParams::apply("metadata-only-test").force(),
                &Patch::Apply(status),
            ),
    )
    .await;
    assert_eq!(answer["kind"], "PartialObjectMetadata", "{answer}");
    assert!(
        answer.get("spec").is_none() && answer.get("status").is_none(),
        "{answer}"
    );
    let stored = api.get_status("t").await.expect("get");
    assert_eq!(message(&stored), Some("written"));
}

/// Children are named by task and version, so a successor TaskRun of the same task can make
/// its own child under a name while the controller's cache still shows the old one. The
/// controller's deletes name the uid they saw (`taskrun_controller::writes::delete_child`):
/// the real API server refuses such a delete of the successor's child, and the refusal, like
/// a child already gone, counts as done.
#[tokio::test]
async fn a_childs_delete_names_its_uid_and_spares_a_successor_under_that_name() {
    use kube::api::PropagationPolicy::Background;
    let delete_child =
        |api, name, uid| taskrun_controller::writes::delete_child(api, name, uid, Background);
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("ctrl-delete-uid").await;
    let api: Api<ConfigMap> = Api::namespaced(client, &ns);
    let make = || async {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "svc-1-v1-files"}}))
            .expect("a ConfigMap");
        let made = api
            .create(&PostParams::default(), &cm)
            .await
            .expect("create");
        made.metadata.uid.expect("a uid")
    };
    let first = make().await;
    assert!(
        delete_child(&api, "svc-1-v1-files", Some(&first))
            .await
            .expect("delete"),
        "the child it names is deleted"
    );
    wait_gone("the deleted ConfigMap", WAIT, &api, "svc-1-v1-files").await;

    let successor = make().await;
    assert!(
        !delete_child(&api, "svc-1-v1-files", Some(&first))
            .await
            .expect("a stale delete is done"),
        "a delete naming the old uid reports nothing deleted"
    );
    let kept = api
        .get("svc-1-v1-files")
        .await
        .expect("the successor's child is kept");
    assert_eq!(kept.metadata.uid.as_deref(), Some(successor.as_str()));

    assert!(
        delete_child(&api, "svc-1-v1-files", Some(&successor))
            .await
            .expect("delete")
    );
    wait_gone("the deleted ConfigMap", WAIT, &api, "svc-1-v1-files").await;
    assert!(
        !delete_child(&api, "svc-1-v1-files", Some(&successor))
            .await
            .expect("a missing child is done"),
        "nothing left to delete"
    );
}
