//! The TaskRun status as sigs.k8s.io/cli-utils kstatus reads it (Flux's health checks, kpt and
//! cli-utils' apply wait on it): live TaskRuns reconciled by taskrun-controller on the real
//! control plane, read by the `kstatus` CLI of `tests/kstatus/` (`status.Compute` on the
//! object as the API server returns it). Pods never run here: they are moved to
//! Succeeded/Failed through pods/status, as a kubelet would, and the Job controller does the
//! rest.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use taskrun::{Phase, TaskRun};
use taskrun_tests::controller::Controller;
use taskrun_tests::kubelet::{PodEnd, finish_pod, start_pod};
use taskrun_tests::{ControlPlane, tools, wait_for};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn in_progress_while_the_job_runs_and_current_once_it_succeeded() {
    let kstatus = tools::build("kstatus");
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("kstatus-ok").await;
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &task_run("ok", 1))
        .await
        .unwrap_or_else(|e| panic!("create TaskRun: {e}"));
    // Before the controller's first status there is no condition and no observedGeneration,
    // and kstatus takes a resource without known conditions as Current: a health check run
    // in that moment passes. The controller's first status write closes the window.
    let unreconciled = read(&kstatus, cp, &ns, "ok");
    assert_eq!(
        unreconciled["status"], "Current",
        "without status: {unreconciled}"
    );

    let _controller = Controller::start(cp, &[&format!("--namespace={ns}")]);
    start_pod(&client, &ns, "kstatus-1-v1").await;
    wait_phase(&api, "ok", Phase::Running).await;
    let running = read(&kstatus, cp, &ns, "ok");
    assert_eq!(
        running["status"], "InProgress",
        "while the Job runs: {running}"
    );

    finish_pod(&client, &ns, "kstatus-1-v1", PodEnd::Succeeded).await;
    wait_phase(&api, "ok", Phase::Succeeded).await;
    let done = read(&kstatus, cp, &ns, "ok");
    assert_eq!(done["status"], "Current", "once the pod succeeded: {done}");

    // New context (a spec change) is InProgress again until its own Job succeeds.
    let more = json!({"spec": {"contextVersion": 2, "markdownFiles": [
        {"filename": "task.md", "content": "# Check status"},
        {"filename": "notes.md", "content": "More context."},
    ]}});
    api.patch("ok", &PatchParams::default(), &Patch::Merge(&more))
        .await
        .unwrap_or_else(|e| panic!("raise contextVersion: {e}"));
    start_pod(&client, &ns, "kstatus-1-v2").await;
    wait_for("the v2 Job to run", WAIT, || async {
        let tr = api.get("ok").await.ok()?;
        let status = tr.status?;
        (status.observed_context_version == Some(2) && status.phase == Some(Phase::Running))
            .then_some(())
    })
    .await;
    let updating = read(&kstatus, cp, &ns, "ok");
    assert_eq!(
        updating["status"], "InProgress",
        "while v2 runs: {updating}"
    );
    finish_pod(&client, &ns, "kstatus-1-v2", PodEnd::Succeeded).await;
    wait_for("v2 to succeed", WAIT, || async {
        let status = api.get("ok").await.ok()?.status?;
        (status.observed_context_version == Some(2) && status.phase == Some(Phase::Succeeded))
            .then_some(())
    })
    .await;
    let done = read(&kstatus, cp, &ns, "ok");
    assert_eq!(done["status"], "Current", "once v2 succeeded: {done}");
}

/// kstatus has no rule for TaskRuns, so it reads the generic conditions: `Ready=False` alone
/// means InProgress, and only `Stalled=True` means Failed. The controller sets Stalled on a
/// failed version, so a Flux Kustomization health check fails at once instead of waiting for
/// its timeout.
#[tokio::test]
async fn a_failed_taskrun_reads_failed() {
    let kstatus = tools::build("kstatus");
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("kstatus-fail").await;
    let _controller = Controller::start(cp, &[&format!("--namespace={ns}"), "--backoff-limit=0"]);
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &task_run("bad", 2))
        .await
        .unwrap_or_else(|e| panic!("create TaskRun: {e}"));
    finish_pod(&client, &ns, "kstatus-2-v1", PodEnd::Failed).await;
    wait_phase(&api, "bad", Phase::Failed).await;
    let failed = read(&kstatus, cp, &ns, "bad");
    assert_eq!(failed["status"], "Failed", "a failed TaskRun: {failed}");
}

/// `kstatus -n NS taskrun NAME`: {"status": ..., "message": ...}.
fn read(kstatus: &PathBuf, cp: &ControlPlane, ns: &str, name: &str) -> Value {
    let out = Command::new(kstatus)
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .args(["-n", ns, "taskrun", name])
        .output()
        .unwrap_or_else(|e| panic!("cannot run kstatus: {e}"));
    assert!(
        out.status.success(),
        "kstatus failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "kstatus printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    eprintln!("kstatus {ns}/{name}: {value}");
    value
}

fn task_run(name: &str, task_id: i64) -> TaskRun {
    serde_json::from_value(json!({
        "apiVersion": "orchestrator.io/v1",
        "kind": "TaskRun",
        "metadata": {"name": name},
        "spec": {
            "taskId": task_id,
            "serviceName": "kstatus",
            "markdownFiles": [{"filename": "task.md", "content": "# Check status"}],
        },
    }))
    .unwrap_or_else(|e| panic!("a valid TaskRun: {e}"))
}

async fn wait_phase(api: &Api<TaskRun>, name: &str, phase: Phase) {
    wait_for(&format!("TaskRun {name} to be {phase:?}"), WAIT, || async {
        (api.get(name).await.ok()?.status?.phase? == phase).then_some(())
    })
    .await;
}
