//! kubectl-taskrun against the real control plane with the admission webhook registered:
//! `context add` merges with server-side apply and never loses a concurrent update, and
//! `migrate-helm` turns real Helm releases (installed by the pinned helm CLI) into admitted
//! TaskRuns, leaving failures and unverified releases alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use taskrun::{MarkdownFile, TaskRun, TaskRunSpec};
use taskrun_tests::fault_proxy::FaultProxy;
use taskrun_tests::kubelet::{PodEnd, finish_pod};
use taskrun_tests::webhook::{UNSEEN_NAMESPACE_LABEL, Webhook};
use taskrun_tests::{ControlPlane, repo_root, wait_for, work_dir, workspace_bin};

const TIMEOUT: Duration = Duration::from_secs(60);

/// The control plane with the webhook running and registered (once per binary).
async fn cluster() -> &'static ControlPlane {
    let cp = ControlPlane::shared();
    Webhook::shared(cp).await;
    cp
}

fn plugin(cp: &ControlPlane) -> Command {
    plugin_with(cp.kubeconfig())
}

/// The plugin with the cluster (and the user) that `kubeconfig` names.
fn plugin_with(kubeconfig: &Path) -> Command {
    let mut cmd = Command::new(workspace_bin("kubectl-taskrun"));
    cmd.arg("--kubeconfig").arg(kubeconfig);
    cmd
}

/// Runs the plugin and returns (exit code, stdout, stderr).
fn run(mut cmd: Command) -> (i32, String, String) {
    let out = cmd.output().expect("kubectl-taskrun runs");
    decode(out)
}

fn decode(out: Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kubectl_apply(cp: &ControlPlane, ns: &str, manager: &str, manifest: &Value) {
    let path = work_dir().join(format!("{ns}-{manager}.json"));
    std::fs::write(&path, manifest.to_string()).expect("write manifest");
    let out = cp
        .kubectl()
        .args([
            "apply",
            "--server-side",
            "--field-manager",
            manager,
            "-n",
            ns,
            "-f",
        ])
        .arg(&path)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write");
    path
}

fn filenames(tr: &TaskRun) -> BTreeSet<String> {
    tr.spec
        .markdown_files
        .iter()
        .map(|f| f.filename.clone())
        .collect()
}

/// The files (list-map keys) a field manager owns in a TaskRun.
fn owned_by(tr: &TaskRun, manager: &str) -> (BTreeSet<String>, Value) {
    let entry = tr
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|e| e.manager.as_deref() == Some(manager))
        .unwrap_or_else(|| panic!("{manager} owns nothing in {:?}", tr.metadata.managed_fields));
    let fields = entry
        .fields_v1
        .as_ref()
        .map(|f| f.0.clone())
        .unwrap_or_default();
    let files = fields
        .pointer("/f:spec/f:markdownFiles")
        .and_then(Value::as_object)
        .map(|m| {
            m.keys()
                .filter_map(|k| k.strip_prefix("k:"))
                .filter_map(|k| serde_json::from_str::<Value>(k).ok())
                .filter_map(|k| k["filename"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (files, fields)
}

/// `kubectl taskrun context add t1 -f FILE` with a file written in `dir`; it must succeed.
fn add_context(cp: &ControlPlane, ns: &str, dir: &Path, file: &str) {
    let (code, out, err) = run({
        let mut cmd = plugin(cp);
        cmd.args(["context", "add", "t1", "-n", ns, "-f"])
            .arg(write_file(dir, file, "# More context\n"));
        cmd
    });
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
}

fn gitops_manifest(name: &str, files: &[(&str, &str)]) -> Value {
    json!({
        "apiVersion": "orchestrator.io/v1",
        "kind": "TaskRun",
        "metadata": {"name": name, "annotations": {"team": "payments"}},
        "spec": {
            "taskId": 11,
            "serviceName": "payments",
            "agentName": "claude-gitops",
            "markdownFiles": files.iter().map(|(f, c)| json!({"filename": f, "content": c, "fileType": "task"})).collect::<Vec<_>>(),
        },
    })
}

/// A GitOps tool that applies contextVersion itself would send its lower value back at its
/// next sync, which is refused (and with it the sync of all it applies with it): the command
/// says so, naming the tool's field manager and the value to raise git to.
#[tokio::test]
async fn context_add_warns_when_a_gitops_tool_applies_the_context_version() {
    let cp = cluster().await;
    let ns = cp.namespace("ctx-add-gitops").await;
    let mut manifest = gitops_manifest("t1", &[("task.md", "# Task\n")]);
    manifest["spec"]["contextVersion"] = json!(1);
    kubectl_apply(cp, &ns, "kustomize-controller", &manifest);
    let dir = work_dir().join(&ns);
    let (code, out, err) = run({
        let mut cmd = plugin(cp);
        cmd.args(["context", "add", "t1", "-n", &ns, "-f"])
            .arg(write_file(&dir, "ctx-1.md", "# More context\n"));
        cmd
    });
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains("warning: kustomize-controller also applies taskrun/t1's contextVersion")
            && err.contains("at least 2"),
        "{err}"
    );
    // As it says: the tool's next apply is refused.
    let path = work_dir().join(format!("{ns}-again.json"));
    std::fs::write(&path, manifest.to_string()).expect("write manifest");
    let again = cp
        .kubectl()
        .args(["apply", "--server-side", "--force-conflicts"])
        .args(["--field-manager", "kustomize-controller", "-n", &ns, "-f"])
        .arg(&path)
        .output()
        .expect("kubectl runs");
    let refused = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && refused.contains("contextVersion may not decrease"),
        "{refused}"
    );

    // A manifest without contextVersion leaves it to the command: no warning.
    let ns = cp.namespace("ctx-add-gitops-none").await;
    kubectl_apply(
        cp,
        &ns,
        "kustomize-controller",
        &gitops_manifest("t2", &[("task.md", "# Task\n")]),
    );
    let (code, _, err) = run({
        let mut cmd = plugin(cp);
        cmd.args(["context", "add", "t2", "-n", &ns, "-f"])
            .arg(dir.join("ctx-1.md"));
        cmd
    });
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("also applies"), "{err}");
}

#[tokio::test]
async fn context_add_merges_files_and_keeps_other_managers_fields() {
    let cp = cluster().await;
    let ns = cp.namespace("ctx-add").await;
    let api = Api::<TaskRun>::namespaced(cp.client().await, &ns);
    let manifest = gitops_manifest(
        "t1",
        &[("task.md", "# Task\n"), ("design.md", "# Design\n")],
    );
    kubectl_apply(cp, &ns, "gitops", &manifest);
    let dir = work_dir().join(&ns);

    let (code, out, err) = run({
        let mut cmd = plugin(cp);
        cmd.args(["context", "add", "t1", "-n", &ns, "-f"])
            .arg(write_file(&dir, "ctx-1.md", "# More context\n"))
            .arg("-f")
            .arg(write_file(&dir, "ctx-2.md", "# Even more\n"));
        cmd
    });
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("context version 2"), "{out}");

    let tr = api.get("t1").await.expect("get");
    assert_eq!(tr.spec.context_version, 2);
    assert_eq!(
        filenames(&tr),
        BTreeSet::from(["task.md", "design.md", "ctx-1.md", "ctx-2.md"].map(String::from))
    );
    let added = tr
        .spec
        .markdown_files
        .iter()
        .find(|f| f.filename == "ctx-1.md");
    assert_eq!(
        added.and_then(|f| f.file_type.clone()),
        Some(taskrun::FileType::Context)
    );
    assert_eq!(tr.spec.agent_name.as_deref(), Some("claude-gitops"));
    // The webhook saw the update and re-stamped the version label.
    let labels = tr.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get(taskrun::labels::CONTEXT_VERSION)
            .map(String::as_str),
        Some("2")
    );

    // The same call again (a script retrying after its answer was lost): done already, and
    // no second version.
    let (code, out, err) = run({
        let mut cmd = plugin(cp);
        cmd.args(["context", "add", "t1", "-n", &ns, "-f"])
            .arg(dir.join("ctx-1.md"))
            .arg("-f")
            .arg(dir.join("ctx-2.md"));
        cmd
    });
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("context version 2: already has"), "{out}");
    let again = api.get("t1").await.expect("get");
    assert_eq!(
        again.metadata.resource_version,
        tr.metadata.resource_version
    );

    // A second add by the same manager must not drop the files of the first.
    let (code, out, err) = run({
        let mut cmd = plugin(cp);
        cmd.args(["context", "add", "t1", "-n", &ns, "--type", "prompt", "-f"])
            .arg(write_file(&dir, "ctx-3.md", "# Third\n"));
        cmd
    });
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let tr = api.get("t1").await.expect("get");
    assert_eq!(tr.spec.context_version, 3);
    assert_eq!(filenames(&tr).len(), 5, "{:?}", filenames(&tr));
    let (gitops_files, gitops_fields) = owned_by(&tr, "gitops");
    assert_eq!(
        gitops_files,
        BTreeSet::from(["task.md", "design.md"].map(String::from))
    );
    assert!(gitops_fields.pointer("/f:spec/f:agentName").is_some());
    assert!(
        gitops_fields
            .pointer("/f:metadata/f:annotations/f:team")
            .is_some()
    );
    let (ours, _) = owned_by(&tr, "taskrun-cli");
    assert_eq!(
        ours,
        BTreeSet::from(["ctx-1.md", "ctx-2.md", "ctx-3.md"].map(String::from))
    );

    // The GitOps tool re-applies its manifest: it keeps its files, ours stay too.
    kubectl_apply(cp, &ns, "gitops", &manifest);
    let tr = api.get("t1").await.expect("get");
    assert_eq!(tr.spec.context_version, 3);
    assert_eq!(filenames(&tr).len(), 5, "{:?}", filenames(&tr));

    // Refused before anything is sent: an existing name, an empty file, a bad name.
    let before = tr.metadata.resource_version.clone();
    for (name, content, wanted) in [
        ("design.md", "# again", "already has a file"),
        ("blank.md", "  \n", "empty or only whitespace"),
        ("notes.txt", "text", "is not allowed: use letters, digits"),
    ] {
        let (code, out, err) = run({
            let mut cmd = plugin(cp);
            cmd.args(["context", "add", "t1", "-n", &ns, "-f"])
                .arg(write_file(&dir.join("bad"), name, content));
            cmd
        });
        assert_eq!(code, 2, "{name}: stdout: {out}\nstderr: {err}");
        assert!(err.contains(wanted) && err.contains(name), "{err}");
    }
    let tr = api.get("t1").await.expect("get");
    assert_eq!(tr.metadata.resource_version, before, "nothing was changed");

    let (code, _, err) = run({
        let mut cmd = plugin(cp);
        cmd.args(["context", "add", "nope", "-n", &ns, "-f"])
            .arg(dir.join("ctx-1.md"));
        cmd
    });
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "error: TaskRun nope not found in namespace {ns}\n"
        )),
        "{err}"
    );
}

/// A TaskRun that lost the race for its task (the controller's Succeeded=False, reason
/// Duplicate) runs no version while the TaskRun holding the task lives: the context is added,
/// and the plugin warns that it will not run, with the status's message (which names that
/// TaskRun). The status is written here as the controller writes it.
#[tokio::test]
async fn context_add_to_a_taskrun_that_lost_as_a_duplicate_warns_it_will_not_run() {
    let cp = cluster().await;
    let ns = cp.namespace("ctx-duplicate").await;
    let api = Api::<TaskRun>::namespaced(cp.client().await, &ns);
    kubectl_apply(
        cp,
        &ns,
        "gitops",
        &gitops_manifest("t1", &[("task.md", "# Task\n")]),
    );
    let held_by = "TaskRun other already runs task 11 of service payments";
    let status = json!({"status": {"conditions": [{
        "type": "Succeeded", "status": "False", "reason": "Duplicate",
        "message": held_by, "lastTransitionTime": "2026-01-01T00:00:00Z",
    }]}});
    api.patch_status(
        "t1",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&status),
    )
    .await
    .expect("status written");

    let (code, out, err) = run({
        let mut cmd = plugin(cp);
        cmd.args(["context", "add", "t1", "-n", &ns, "-f"])
            .arg(write_file(&work_dir().join(&ns), "ctx.md", "# More\n"));
        cmd
    });
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("context version 2: added ctx.md"), "{out}");
    assert!(
        err.contains("warning: taskrun/t1 failed as a duplicate") && err.contains(held_by),
        "{err}"
    );
}

/// A TaskRun being deleted (a finalizer holding it) gets no new version: that is the
/// cluster's state, not bad input, so the exit code is 1 (not 2) and the error says what to do.
#[tokio::test]
async fn context_add_to_a_taskrun_being_deleted_is_a_failure_not_bad_input() {
    let cp = cluster().await;
    let ns = cp.namespace("ctx-deleting").await;
    let api = Api::<TaskRun>::namespaced(cp.client().await, &ns);
    let mut manifest = gitops_manifest("t1", &[("task.md", "# Task\n")]);
    manifest["metadata"]["finalizers"] = json!(["example.com/hold"]);
    kubectl_apply(cp, &ns, "gitops", &manifest);
    api.delete("t1", &Default::default())
        .await
        .expect("delete the TaskRun");
    let before = api.get("t1").await.expect("held by its finalizer");
    assert!(before.metadata.deletion_timestamp.is_some());

    let (code, out, err) = run({
        let mut cmd = plugin(cp);
        cmd.args(["context", "add", "t1", "-n", &ns, "-f"])
            .arg(write_file(&work_dir().join(&ns), "ctx.md", "# More\n"));
        cmd
    });
    // Read while the finalizer still holds it: once released, the TaskRun is gone.
    let after = api.get("t1").await;
    // Let it go before asserting: nothing else removes example.com/hold.
    let release = json!({"metadata": {"finalizers": null}});
    let _ = api
        .patch(
            "t1",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&release),
        )
        .await;
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains(&format!("TaskRun t1 in namespace {ns} is being deleted"))
            && err.contains(&format!("kubectl wait --for=delete taskrun/t1 -n {ns}"))
            && err.contains("create it again")
            && err.contains("finalizer")
            && !err.contains("nothing was changed"),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");
    let after = after.expect("held by its finalizer until released");
    assert_eq!(after.spec, before.spec, "nothing was sent");
}

/// A TaskRun deleted between the plugin's read and its apply: the apply, finding nothing, is
/// taken for a create of the partial TaskRun it sends and refused as invalid. The plugin says
/// the TaskRun is not found, as when it was gone before the read, and creates nothing.
// Multi-threaded: the proxy is served on this runtime while the test waits on the plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_add_to_a_taskrun_deleted_before_its_apply_says_not_found() {
    let cp = cluster().await;
    let ns = cp.namespace("ctx-vanishing").await;
    let api = Api::<TaskRun>::namespaced(cp.client().await, &ns);
    kubectl_apply(
        cp,
        &ns,
        "gitops",
        &gitops_manifest("t1", &[("task.md", "# Task\n")]),
    );
    let proxy = FaultProxy::start_as(cp, &format!("{ns}-admin"), &["system:masters"]).await;
    proxy.hold_requests_to(&[&format!(
        "PATCH /apis/orchestrator.io/v1/namespaces/{ns}/taskruns/t1?"
    )]);
    let mut cmd = plugin_with(&proxy.kubeconfig);
    cmd.args(["context", "add", "t1", "-n", &ns, "-f"])
        .arg(write_file(&work_dir().join(&ns), "ctx.md", "# More\n"));
    let plugin = tokio::task::spawn_blocking(move || run(cmd));
    wait_for("the plugin's apply to reach the proxy", TIMEOUT, || async {
        (proxy.held() > 0).then_some(())
    })
    .await;
    api.delete("t1", &Default::default())
        .await
        .expect("delete the TaskRun");
    // Its finalizer, which the controller would remove once its children are gone.
    let release = json!({"metadata": {"finalizers": null}});
    let _ = api
        .patch(
            "t1",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&release),
        )
        .await;
    wait_for("the TaskRun to be gone", TIMEOUT, || async {
        matches!(api.get_opt("t1").await, Ok(None)).then_some(())
    })
    .await;
    proxy.release_held();
    let (code, out, err) = plugin.await.expect("the plugin's thread");
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains(&format!("TaskRun t1 not found in namespace {ns}")),
        "{err}"
    );
    assert!(
        api.get_opt("t1").await.expect("read").is_none(),
        "the apply created the TaskRun again"
    );
}

/// Flux's kustomize-controller, before each apply, takes over the fields of every field
/// manager whose name starts with "kubectl", so that hand edits are undone by the next sync
/// (`tests/fluxapply`, with Flux's own apply library and options). The plugin's manager must
/// not be one of them: Flux, then owning the context added and contextVersion, would drop both
/// from the TaskRun on its next apply of the manifest in git, and contextVersion going back to
/// 1 is refused, failing that Kustomization's every sync from then on.
#[tokio::test]
async fn a_flux_sync_keeps_the_context_the_plugin_added() {
    let cp = cluster().await;
    let ns = cp.namespace("ctx-flux").await;
    let api = Api::<TaskRun>::namespaced(cp.client().await, &ns);
    let mut manifest = gitops_manifest("t1", &[("task.md", "# Task\n")]);
    manifest["metadata"]["namespace"] = json!(ns);
    let dir = work_dir().join(&ns);
    let manifest = write_file(&dir, "taskrun.json", &manifest.to_string());
    let flux = taskrun_tests::tools::build("fluxapply");
    let sync = || {
        let mut cmd = Command::new(&flux);
        cmd.arg("--kubeconfig")
            .arg(cp.kubeconfig())
            .arg("-f")
            .arg(&manifest);
        run(cmd)
    };
    let (code, out, err) = sync();
    assert_eq!(code, 0, "the first sync: {out}{err}");
    assert!(out.contains("created"), "{out}");

    add_context(cp, &ns, &dir, "ctx-1.md");

    // The manifest in git is unchanged; Flux syncs it again, and again.
    for round in 1..=2 {
        let (code, out, err) = sync();
        assert_eq!(code, 0, "sync {round} after context add: {out}{err}");
        let tr = api.get("t1").await.expect("get");
        assert_eq!(tr.spec.context_version, 2, "after sync {round}");
        assert_eq!(
            filenames(&tr),
            BTreeSet::from(["task.md", "ctx-1.md"].map(String::from)),
            "after sync {round}"
        );
    }
}

/// A client-side `kubectl apply` of the unchanged manifest replaces the whole file list, so it
/// drops a file added with `context add`: the webhook lets it through (the run of that version
/// is made already) but warns, naming the file and saying what happened.
#[tokio::test]
async fn a_client_side_reapply_that_drops_added_context_is_warned_about() {
    let cp = cluster().await;
    let ns = cp.namespace("ctx-csa").await;
    let api = Api::<TaskRun>::namespaced(cp.client().await, &ns);
    let dir = work_dir().join(&ns);
    let manifest = write_file(
        &dir,
        "taskrun.json",
        &gitops_manifest("t1", &[("task.md", "# Task\n")]).to_string(),
    );
    let apply = || {
        let mut cmd = cp.kubectl();
        cmd.args(["apply", "-n", &ns, "-f"]).arg(&manifest);
        decode(cmd.output().expect("kubectl runs"))
    };
    let (code, out, err) = apply();
    assert_eq!(code, 0, "{out}{err}");
    add_context(cp, &ns, &dir, "ctx-1.md");

    let (code, out, err) = apply();
    assert_eq!(code, 0, "{out}{err}");
    let tr = api.get("t1").await.expect("get");
    assert_eq!(
        filenames(&tr),
        BTreeSet::from(["task.md".to_owned()]),
        "a client-side apply replaces the list"
    );
    assert!(
        err.contains("Warning: markdownFiles no longer has \"ctx-1.md\" at contextVersion 2")
            && err.contains("server-side"),
        "{err}"
    );
}

#[tokio::test]
async fn twenty_concurrent_context_adds_lose_no_update() {
    const CALLERS: usize = 20;
    let cp = cluster().await;
    let ns = cp.namespace("ctx-race").await;
    let api = Api::<TaskRun>::namespaced(cp.client().await, &ns);
    kubectl_apply(
        cp,
        &ns,
        "gitops",
        &gitops_manifest("race", &[("task.md", "# Task\n")]),
    );
    let dir = work_dir().join(&ns);

    let started = Instant::now();
    let runs: Vec<_> = (0..CALLERS)
        .map(|i| {
            let mut cmd = tokio::process::Command::new(workspace_bin("kubectl-taskrun"));
            cmd.arg("--kubeconfig")
                .arg(cp.kubeconfig())
                .args(["context", "add", "race", "-n", &ns, "-f"])
                .arg(write_file(
                    &dir,
                    &format!("caller-{i:02}.md"),
                    &format!("# From caller {i}\n"),
                ))
                .env("RUST_LOG", "kubectl_taskrun=debug");
            cmd.output()
        })
        .collect();
    let outputs = futures::future::join_all(runs).await;
    let elapsed = started.elapsed();
    let mut conflicts = 0;
    for out in outputs {
        let (code, stdout, stderr) = decode(out.expect("kubectl-taskrun runs"));
        assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
        conflicts += stderr.matches("conflict, retrying").count();
    }
    eprintln!("{CALLERS} concurrent context adds: {elapsed:?}, {conflicts} conflicts retried");

    let tr = api.get("race").await.expect("get");
    assert_eq!(tr.spec.context_version, 1 + CALLERS as i64);
    let mut expected: BTreeSet<String> =
        (0..CALLERS).map(|i| format!("caller-{i:02}.md")).collect();
    expected.insert("task.md".into());
    assert_eq!(filenames(&tr), expected);
}

// ---- connection and output ----

/// Like kubectl: a file KUBECONFIG lists that does not exist is skipped, the others merged; a
/// list of only missing files, or a context the kubeconfig has not, is an error that says so
/// (never a silent fall back to the in-cluster service account).
#[tokio::test]
async fn the_kubeconfig_is_found_as_kubectl_finds_it() {
    let cp = cluster().await;
    let ns = cp.namespace("kubeconfig").await;
    let missing = work_dir().join(&ns).join("no-such-kubeconfig");
    let with_env = |list: Vec<&Path>, extra: &[&str]| {
        let mut cmd = Command::new(workspace_bin("kubectl-taskrun"));
        cmd.env(
            "KUBECONFIG",
            std::env::join_paths(list).expect("a KUBECONFIG list"),
        )
        .args(["migrate-helm", "-n", &ns])
        .args(extra);
        run(cmd)
    };

    let (code, out, err) = with_env(vec![&missing, cp.kubeconfig()], &[]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains(&format!("found in namespace {ns}")), "{out}");

    let (code, out, err) = with_env(vec![&missing], &[]);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains("none of the kubeconfig files KUBECONFIG lists exists")
            && err.contains(&missing.display().to_string()),
        "{err}"
    );

    let (code, out, err) = with_env(vec![&missing, cp.kubeconfig()], &["--context", "nope"]);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains("context \"nope\" (--context) is not in the kubeconfig"),
        "{err}"
    );
}

#[tokio::test]
async fn migrate_helm_says_where_it_found_nothing() {
    let cp = cluster().await;
    let ns = cp.namespace("migrate-none").await;
    let (code, out) = migrate(cp, &ns, &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        format!(
            "No Helm releases of the legacy claude-code chart found in namespace {ns}; look in another with -n NAMESPACE, or in all with -A. Releases are read from Helm's default storage, Secrets; those kept with HELM_DRIVER=configmap or sql are not looked for.\n"
        )
    );
}

/// `-n` and `-A` exclude each other wherever `-n` is given: given before the subcommand it
/// reaches migrate-helm after clap's own conflict check, and the run would have silently
/// widened to every namespace. Refused as a usage error before any connection is made (the
/// kubeconfig named here does not exist, which would be exit code 1).
#[test]
fn namespace_and_all_namespaces_are_refused_in_either_order() {
    let missing = work_dir().join("no-such-kubeconfig-for-flags");
    for args in [
        &["-n", "team-a", "migrate-helm", "-A", "--delete-releases"][..],
        &[
            "--namespace",
            "team-a",
            "migrate-helm",
            "--all-namespaces",
            "--dry-run",
        ],
        &["migrate-helm", "-A", "-n", "team-a"],
        &["migrate-helm", "-n", "team-a", "-A"],
    ] {
        let (code, out, err) = run({
            let mut cmd = plugin_with(&missing);
            cmd.args(args);
            cmd
        });
        assert_eq!(code, 2, "{args:?}: stdout: {out}\nstderr: {err}");
        assert!(
            err.contains("--all-namespaces") && err.contains("--namespace"),
            "{args:?}: {err}"
        );
        assert!(out.is_empty(), "{args:?}: {out}");
    }
}

/// An API server that cannot be reached: the error says why (here, the connection was
/// refused), not only the client's "client error (Connect)", which reads the same for a wrong
/// CA, a name that does not resolve and a server that is down.
#[test]
fn an_unreachable_cluster_is_reported_with_the_cause() {
    let dir = work_dir().join("unreachable");
    let port = taskrun_tests::free_port();
    let kubeconfig = write_file(
        &dir,
        "kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: x\n\
             clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{port}', \
             insecure-skip-tls-verify: true}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\n\
             contexts: [{{name: x, context: {{cluster: c, user: u}}}}]\n"
        ),
    );
    let (code, out, err) = run({
        let mut cmd = plugin_with(&kubeconfig);
        cmd.args(["context", "add", "t1", "-f"])
            .arg(write_file(&dir, "ctx.md", "# More\n"));
        cmd
    });
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("Connection refused"), "{err}");
    assert!(out.is_empty(), "{out}");
}

/// `kubectl taskrun ... | head -1`: the reader goes away before the plugin writes. The plugin
/// ends with the exit code its work earned, not a panic (exit code 101).
#[tokio::test]
async fn a_reader_that_stops_early_does_not_crash_the_plugin() {
    let cp = cluster().await;
    let ns = cp.namespace("closed-pipe").await;
    let mut cmd = plugin(cp);
    cmd.args(["migrate-helm", "-n", &ns])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl-taskrun runs");
    // Closed before the plugin has even connected to the API server, let alone written.
    drop(child.stdout.take());
    let (code, _, err) = decode(child.wait_with_output().expect("kubectl-taskrun ends"));
    assert_eq!(code, 0, "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

// ---- migrate-helm ----

/// The pinned helm CLI (built once per machine by tests/helm/build.sh).
fn helm_bin() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| taskrun_tests::tools::build("helm"))
}

fn helm_command(cp: &ControlPlane, ns: &str, args: &[&str]) -> Command {
    let home = work_dir().join("helm-home");
    let mut cmd = Command::new(helm_bin());
    cmd.arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(["--namespace", ns])
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

fn helm(cp: &ControlPlane, ns: &str, args: &[&str]) -> String {
    let out = helm_command(cp, ns, args).output().expect("helm runs");
    assert!(
        out.status.success(),
        "helm {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Installs (or upgrades) a legacy task release and returns the TaskRun spec it should become.
fn install_task(
    cp: &ControlPlane,
    ns: &str,
    verb: &str,
    service: &str,
    id: i64,
    agent: &str,
    files: &[(&str, &str)],
) -> TaskRunSpec {
    install_task_with(cp, ns, verb, service, id, agent, files, &[])
}

/// `install_task` with more arguments for helm (`--set` of other values, say).
#[allow(clippy::too_many_arguments)]
fn install_task_with(
    cp: &ControlPlane,
    ns: &str,
    verb: &str,
    service: &str,
    id: i64,
    agent: &str,
    files: &[(&str, &str)],
    more: &[&str],
) -> TaskRunSpec {
    let chart = repo_root().join("tests/fixtures/legacy-chart");
    let values = json!({
        "serviceName": service,
        "taskId": id.to_string(),
        "agentName": agent,
        "files": files.iter().map(|(f, c)| (f.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
    });
    let name = format!("{service}-task-{id}");
    let path = write_file(
        &work_dir().join(ns),
        &format!("{name}-{verb}.json"),
        &values.to_string(),
    );
    let chart = chart.to_string_lossy();
    let path = path.to_string_lossy();
    let mut args = vec![verb, &name, &chart, "-f", &path];
    args.extend_from_slice(more);
    helm(cp, ns, &args);
    let files: BTreeMap<&str, &str> = files.iter().copied().collect();
    TaskRunSpec {
        task_id: id,
        service_name: service.into(),
        agent_name: (!agent.is_empty()).then(|| agent.to_owned()),
        context_version: 1,
        markdown_files: files
            .into_iter()
            .map(|(f, c)| MarkdownFile {
                filename: f.into(),
                content: c.into(),
                file_type: None,
            })
            .collect(),
    }
}

/// Ends the run of every unfinished legacy Job in `ns` but those named in `running`, as a
/// kubelet would, and waits until the Job controller has marked each Complete.
async fn finish_legacy_jobs(cp: &ControlPlane, ns: &str, running: &[&str]) {
    let client = cp.client().await;
    let jobs = Api::<Job>::namespaced(client.clone(), ns);
    let list = jobs
        .list(&ListParams::default().labels("managed-by=orchestrator"))
        .await
        .expect("list the legacy Jobs");
    let names: Vec<String> = list
        .items
        .into_iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .filter(job_unfinished)
        .filter_map(|j| j.metadata.name)
        .filter(|n| !running.contains(&n.as_str()))
        .collect();
    for name in &names {
        finish_pod(&client, ns, name, PodEnd::Succeeded).await;
    }
    for name in &names {
        wait_for(
            &format!("legacy Job {name} to complete"),
            TIMEOUT,
            || async {
                let job = jobs.get(name).await.ok()?;
                let done = job
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Complete" && c.status == "True");
                done.then_some(())
            },
        )
        .await;
    }
}

/// True until the Job controller has marked the Job Complete or Failed.
fn job_unfinished(job: &Job) -> bool {
    let conditions = job.status.as_ref().and_then(|s| s.conditions.as_deref());
    !conditions
        .unwrap_or_default()
        .iter()
        .any(|c| matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True")
}

fn helm_releases(cp: &ControlPlane, ns: &str) -> BTreeMap<String, String> {
    let out = helm(cp, ns, &["list", "--all", "-o", "json"]);
    let list: Vec<Value> = serde_json::from_str(&out).expect("helm list json");
    list.iter()
        .map(|r| {
            let revision = r["revision"].as_str().map(str::to_owned);
            (
                r["name"].as_str().unwrap_or_default().to_owned(),
                revision.unwrap_or_else(|| r["revision"].to_string()),
            )
        })
        .collect()
}

fn migrate(cp: &ControlPlane, ns: &str, flags: &[&str]) -> (i32, String) {
    migrate_through(cp.kubeconfig(), ns, flags)
}

/// `migrate` with the cluster (and the user) that `kubeconfig` names.
fn migrate_through(kubeconfig: &Path, ns: &str, flags: &[&str]) -> (i32, String) {
    let (code, out, err) = run({
        let mut cmd = plugin_with(kubeconfig);
        cmd.args(["migrate-helm", "-n", ns]).args(flags);
        cmd
    });
    eprintln!("migrate-helm {flags:?} -> {code}\n{out}{err}");
    (code, out)
}

/// The table row of a release.
fn row<'a>(out: &'a str, release: &str) -> &'a str {
    out.lines()
        .find(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|c| c.ends_with(&format!("/{release}")))
        })
        .unwrap_or_else(|| panic!("no row for {release} in:\n{out}"))
}

#[tokio::test]
async fn migrate_helm_turns_releases_into_admitted_task_runs() {
    let cp = cluster().await;
    let ns = cp.namespace("migrate").await;
    let client = cp.client().await;
    let taskruns = Api::<TaskRun>::namespaced(client.clone(), &ns);
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let jobs = Api::<Job>::namespaced(client.clone(), &ns);

    let mut expected = BTreeMap::new();
    for (service, id) in [("billing", 1), ("billing", 2), ("search", 7), ("search", 8)] {
        let files = [
            ("task.md", "# Task\nDo it.\n"),
            ("design-spec.md", "# Design\n"),
        ];
        let spec = install_task(cp, &ns, "install", service, id, "claude-1", &files);
        expected.insert(format!("{service}-task-{id}"), spec);
    }
    // Upgraded once: the newest deployed revision (2) is what counts.
    install_task(
        cp,
        &ns,
        "install",
        "ledger",
        3,
        "claude-old",
        &[("task.md", "# Old\n")],
    );
    let spec = install_task(
        cp,
        &ns,
        "upgrade",
        "ledger",
        3,
        "",
        &[("task.md", "# New\n"), ("more.md", "# More\n")],
    );
    expected.insert("ledger-task-3".into(), spec);
    // Given values a TaskRun has no place for: migrated, and said.
    let spec = install_task_with(
        cp,
        &ns,
        "install",
        "extra",
        11,
        "",
        &[("task.md", "# Task\n")],
        &["--set", "image=registry.example/claude:pinned,attempt=2"],
    );
    expected.insert("extra-task-11".into(), spec);
    let told = |out: &str, made: &str| {
        for name in expected.keys() {
            let line = row(out, name);
            assert!(
                line.contains(made)
                    && line.contains(&format!(
                        "its Job {name} had completed: the TaskRun runs the task again"
                    )),
                "{line}"
            );
            let extra = line.contains("given values a TaskRun does not carry (attempt, image)");
            assert_eq!(extra, name == "extra-task-11", "{line}");
        }
    };
    // Cannot be migrated: its ConfigMap holds an empty file; its ConfigMap is gone; a TaskRun
    // of another name already holds its identity (the webhook refuses the duplicate).
    install_task(
        cp,
        &ns,
        "install",
        "broken",
        9,
        "",
        &[("task.md", "# Task\n"), ("empty.md", "   ")],
    );
    install_task(
        cp,
        &ns,
        "install",
        "nocm",
        5,
        "",
        &[("task.md", "# Task\n")],
    );
    config_maps
        .delete("nocm-task-5-files", &Default::default())
        .await
        .expect("delete ConfigMap");
    install_task(cp, &ns, "install", "dup", 4, "", &[("task.md", "# Task\n")]);
    let mut manual = gitops_manifest("dup-manual", &[("task.md", "# Task\n")]);
    manual["spec"]["serviceName"] = json!("dup");
    manual["spec"]["taskId"] = json!(4);
    kubectl_apply(cp, &ns, "kubectl", &manual);
    let failing = ["broken-task-9", "dup-task-4", "nocm-task-5"];
    let assert_failures = |out: &str| {
        let broken = row(out, "broken-task-9");
        assert!(
            broken.contains("FAILED") && broken.contains("empty.md"),
            "{broken}"
        );
        // The webhook's advice (add context to the other TaskRun, or delete it) is not for a
        // migration: the row says what to do with the release.
        let dup = row(out, "dup-task-4");
        assert!(
            dup.contains("FAILED")
                && dup.contains("already served by TaskRun dup-manual")
                && dup.contains(&format!("`helm uninstall dup-task-4 -n {ns}`"))
                && !dup.contains("context add"),
            "{dup}"
        );
        let nocm = row(out, "nocm-task-5");
        assert!(
            nocm.contains("FAILED")
                && nocm.contains("nocm-task-5-files with the task's files not found"),
            "{nocm}"
        );
        for name in failing {
            assert!(row(out, name).contains(" kept "), "{out}");
        }
    };
    // Named like a task, but of another chart: not a candidate, never touched.
    let other_chart = work_dir().join("other-chart");
    write_file(
        &other_chart,
        "Chart.yaml",
        "apiVersion: v2\nname: web\nversion: 1.0.0\n",
    );
    write_file(
        &other_chart.join("templates"),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-files\ndata:\n  task.md: x\n",
    );
    helm(
        cp,
        &ns,
        &["install", "web-task-6", &other_chart.to_string_lossy()],
    );
    let not_ours = |out: &str| assert!(!out.contains("web-task-6"), "{out}");
    // Uninstalled with its history kept: no deployed revision, so skipped (not a failure).
    install_task(
        cp,
        &ns,
        "install",
        "gone",
        2,
        "",
        &[("task.md", "# Task\n")],
    );
    helm(cp, &ns, &["uninstall", "gone-task-2", "--keep-history"]);
    let skipped = |out: &str| {
        let gone = row(out, "gone-task-2");
        assert!(
            gone.contains("skipped") && gone.contains("the newest is uninstalled"),
            "{gone}"
        );
    };

    // Its legacy Job still runs: migrating it now would run the task twice at once.
    install_task(
        cp,
        &ns,
        "install",
        "live",
        6,
        "",
        &[("task.md", "# Task\n")],
    );
    let running = |out: &str| {
        let live = row(out, "live-task-6");
        assert!(
            live.contains("not yet") && live.contains("its Job live-task-6 has not finished"),
            "{live}"
        );
        assert!(!live.contains("uninstall"), "{live}");
    };
    // Its TaskRun already exists (made earlier, by hand or by an older migrate-helm) while its
    // legacy Job still runs: the TaskRun is verified, but the release and its Job must stay
    // until the Job has finished (an uninstall would delete the Job mid-run).
    let busy_spec = install_task(
        cp,
        &ns,
        "install",
        "busy",
        4,
        "",
        &[("task.md", "# Busy\n")],
    );
    taskruns
        .create(&Default::default(), &TaskRun::new("busy-task-4", busy_spec))
        .await
        .expect("create busy-task-4's TaskRun");
    let busy = |out: &str, helm: &str| {
        let busy = row(out, "busy-task-4");
        assert!(
            busy.contains("exists, matches") && busy.contains(helm),
            "{busy}"
        );
        assert!(
            !busy.contains("uninstalled") && !busy.contains("would uninstall"),
            "{busy}"
        );
    };
    let busy_kept = |out: &str| {
        busy(out, " kept");
        assert!(
            row(out, "busy-task-4").contains(
                "its Job busy-task-4 has not finished, and uninstalling would delete it mid-run; run this again once the Job has finished"
            ),
            "{out}"
        );
    };
    finish_legacy_jobs(cp, &ns, &["live-task-6", "busy-task-4"]).await;

    let releases_before = helm_releases(cp, &ns);
    assert_eq!(releases_before.len(), 13, "{releases_before:?}");
    assert_eq!(releases_before["ledger-task-3"], "2");
    let migrated = || async {
        let list = taskruns
            .list(&Default::default())
            .await
            .expect("list")
            .items;
        list.into_iter()
            .filter(|t| {
                !matches!(
                    t.metadata.name.as_deref(),
                    Some("dup-manual" | "busy-task-4")
                )
            })
            .map(|t| (t.metadata.name.clone().unwrap_or_default(), t))
            .collect::<BTreeMap<String, TaskRun>>()
    };

    // --dry-run changes nothing, even with --delete-releases, and says what would happen.
    let (code, out) = migrate(cp, &ns, &["--dry-run", "--delete-releases"]);
    assert_eq!(code, 3, "some releases fail");
    not_ours(&out);
    skipped(&out);
    running(&out);
    busy_kept(&out);
    for name in expected.keys() {
        let line = row(&out, name);
        assert!(
            line.contains("would create") && line.contains("would uninstall"),
            "{line}"
        );
    }
    told(&out, "would create");
    assert_failures(&out);
    // Across all namespaces, this namespace's rows are the same. The other tests, running
    // meanwhile, install and delete releases of their own (some of the same names), so neither
    // the exit code nor their rows are looked at.
    let (code, all, err) = run({
        let mut cmd = plugin(cp);
        cmd.args(["migrate-helm", "-A", "--dry-run", "--delete-releases"]);
        cmd
    });
    eprintln!("migrate-helm -A --dry-run --delete-releases -> {code}\n{all}{err}");
    // The rows, without the padding (the columns are as wide as the widest cell of all).
    let ours = |table: &str| -> Vec<String> {
        table
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|l| l.starts_with(&format!("{ns}/")))
            .collect()
    };
    assert_eq!(ours(&all), ours(&out), "{all}");
    assert!(migrated().await.is_empty());
    assert_eq!(helm_releases(cp, &ns), releases_before);
    assert!(jobs.get_opt("billing-task-1").await.expect("get").is_some());

    // For real: every good release becomes an admitted TaskRun whose spec matches.
    let (code, out) = migrate(cp, &ns, &[]);
    assert_eq!(code, 3, "some releases fail");
    running(&out);
    busy(&out, " kept");
    told(&out, "created");
    for (name, spec) in &expected {
        assert!(row(&out, name).contains("created"), "{out}");
        let tr = taskruns.get(name).await.expect("migrated TaskRun");
        assert_eq!(&tr.spec, spec, "{name}");
        let labels = tr.metadata.labels.clone().unwrap_or_default();
        for (key, value) in taskrun::labels::taskrun_labels(spec) {
            assert_eq!(
                labels.get(key),
                Some(&value),
                "{name}: label {key} (stamped by the webhook)"
            );
        }
    }
    assert_failures(&out);
    let versions: BTreeMap<String, Option<String>> = migrated()
        .await
        .into_iter()
        .map(|(name, t)| (name, t.metadata.resource_version))
        .collect();
    assert_eq!(
        versions.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        helm_releases(cp, &ns),
        releases_before,
        "releases are kept without --delete-releases"
    );

    // Again: a no-op.
    let (code, out) = migrate(cp, &ns, &[]);
    assert_eq!(code, 3);
    for name in expected.keys() {
        assert!(row(&out, name).contains("exists, matches"), "{out}");
    }
    assert_failures(&out);
    let versions_after: BTreeMap<String, Option<String>> = migrated()
        .await
        .into_iter()
        .map(|(name, t)| (name, t.metadata.resource_version))
        .collect();
    assert_eq!(versions_after, versions, "nothing was written");

    // A migrated TaskRun that has since been given context still counts as migrated.
    let (code, _, err) = run({
        let mut cmd = plugin(cp);
        cmd.args(["context", "add", "billing-task-1", "-n", &ns, "-f"])
            .arg(write_file(&work_dir().join(&ns), "later.md", "# Later\n"));
        cmd
    });
    assert_eq!(code, 0, "{err}");

    // --delete-releases uninstalls the verified releases only, each said on stderr as it
    // goes (the table comes only at the end).
    let (code, out, err) = run({
        let mut cmd = plugin(cp);
        cmd.args(["migrate-helm", "-n", &ns, "--delete-releases"]);
        cmd
    });
    eprintln!("migrate-helm --delete-releases -> {code}\n{out}{err}");
    assert_eq!(code, 3);
    for name in expected.keys() {
        assert!(row(&out, name).contains("uninstalled"), "{out}");
        assert!(
            err.contains(&format!("uninstalled release {ns}/{name}: ")),
            "{err}"
        );
    }
    assert_eq!(
        err.matches("uninstalled release ").count(),
        expected.len(),
        "{err}"
    );
    assert_failures(&out);
    not_ours(&out);
    skipped(&out);
    running(&out);
    busy_kept(&out);
    assert!(
        taskruns
            .get_opt("live-task-6")
            .await
            .expect("get")
            .is_none()
    );
    for name in ["live-task-6", "busy-task-4"] {
        let job = jobs.get_opt(name).await.expect("get");
        assert!(
            job.is_some_and(|j| j.metadata.deletion_timestamp.is_none()),
            "{name}'s running Job is left alone"
        );
    }
    assert!(
        config_maps
            .get_opt("busy-task-4-files")
            .await
            .expect("get")
            .is_some()
    );
    let left = helm_releases(cp, &ns);
    let mut kept = failing.to_vec();
    kept.extend(["busy-task-4", "gone-task-2", "live-task-6", "web-task-6"]);
    kept.sort();
    assert_eq!(left.keys().collect::<Vec<_>>(), kept, "{left:?}");
    for name in expected.keys() {
        wait_for(
            &format!("{name}'s Job and ConfigMap to go"),
            TIMEOUT,
            || async {
                let job = jobs.get_opt(name).await.ok()?;
                let cm = config_maps.get_opt(&format!("{name}-files")).await.ok()?;
                (job.is_none() && cm.is_none()).then_some(())
            },
        )
        .await;
        assert!(
            taskruns.get_opt(name).await.expect("get").is_some(),
            "the TaskRun stays"
        );
    }
    assert!(jobs.get_opt("broken-task-9").await.expect("get").is_some());
    assert!(
        config_maps
            .get_opt("broken-task-9-files")
            .await
            .expect("get")
            .is_some()
    );
}

/// Exit code 3 while a release is not migrated yet because something is under way (its
/// legacy Job runs; a `helm upgrade` was killed partway, leaving its revision pending), with
/// nothing migrated from or deleted under it; 0 once everything is done, a release skipped for
/// good (uninstalled with its history kept) included.
#[tokio::test]
async fn releases_under_way_exit_3_until_done_and_final_skips_exit_0() {
    let cp = cluster().await;
    let ns = cp.namespace("migrate-later").await;
    let client = cp.client().await;
    let taskruns = Api::<TaskRun>::namespaced(client.clone(), &ns);
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let jobs = Api::<Job>::namespaced(client.clone(), &ns);
    let files = [("task.md", "# Task\n")];
    let later = install_task(cp, &ns, "install", "later", 1, "", &files);
    let pend = install_task(cp, &ns, "install", "pend", 2, "", &files);
    install_task(cp, &ns, "install", "gone", 3, "", &files);
    helm(cp, &ns, &["uninstall", "gone-task-3", "--keep-history"]);

    // An upgrade killed partway: Helm has written revision 2 as pending-upgrade (revision 1
    // is still the deployed one) and waits for the Job, which no kubelet ever ends.
    let chart = repo_root().join("tests/fixtures/legacy-chart");
    let values = work_dir().join(&ns).join("pend-task-2-install.json");
    let mut upgrade = helm_command(
        cp,
        &ns,
        &[
            "upgrade",
            "pend-task-2",
            &chart.to_string_lossy(),
            "-f",
            &values.to_string_lossy(),
            "--wait",
            "--wait-for-jobs",
            "--timeout",
            "10m",
        ],
    )
    .spawn()
    .expect("helm runs");
    let pending = "sh.helm.release.v1.pend-task-2.v2";
    wait_for(
        "helm upgrade to write its pending revision",
        TIMEOUT,
        || async {
            let secret = secrets.get_opt(pending).await.ok()??;
            let status = secret.metadata.labels?.get("status").cloned();
            (status.as_deref() == Some("pending-upgrade")).then_some(())
        },
    )
    .await;
    upgrade.kill().expect("kill helm");
    upgrade.wait().expect("reap helm");
    finish_legacy_jobs(cp, &ns, &["later-task-1"]).await;
    let revisions = || async {
        let list = secrets
            .list_metadata(&ListParams::default().labels("owner=helm,name=pend-task-2"))
            .await
            .expect("list");
        let mut names: Vec<String> = list
            .items
            .into_iter()
            .filter_map(|s| s.metadata.name)
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        revisions().await,
        ["sh.helm.release.v1.pend-task-2.v1", pending]
    );

    for flags in [
        &["--dry-run", "--delete-releases"][..],
        &["--delete-releases"],
    ] {
        let (code, out) = migrate(cp, &ns, flags);
        assert_eq!(code, 3, "{flags:?}: not everything is migrated yet\n{out}");
        let line = row(&out, "later-task-1");
        assert!(
            line.contains("not yet")
                && line.contains("its Job later-task-1 has not finished")
                && line.contains("run this again once the Job has finished"),
            "{line}"
        );
        let line = row(&out, "pend-task-2");
        assert!(
            line.contains("not yet")
                && line.contains("a Helm operation is in progress (revision 2 is pending-upgrade)")
                && line.contains("run this again once it has finished")
                && line.contains(&format!("helm rollback pend-task-2 -n {ns}")),
            "{line}"
        );
        assert!(!line.contains("uninstall"), "{line}");
        let line = row(&out, "gone-task-3");
        assert!(
            line.contains("skipped") && line.contains("no deployed revision"),
            "{line}"
        );
        assert!(
            taskruns
                .list(&Default::default())
                .await
                .expect("list")
                .items
                .is_empty()
        );
        assert_eq!(
            revisions().await,
            ["sh.helm.release.v1.pend-task-2.v1", pending],
            "the revision Helm was writing is left alone"
        );
        assert!(jobs.get_opt("later-task-1").await.expect("get").is_some());
        assert!(jobs.get_opt("pend-task-2").await.expect("get").is_some());
    }

    // The Job ends, and the interrupted upgrade is rolled back as the message says: now
    // everything is done, and the release skipped for good does not make the exit code 3.
    finish_legacy_jobs(cp, &ns, &[]).await;
    helm(cp, &ns, &["rollback", "pend-task-2"]);
    let (code, out) = migrate(cp, &ns, &["--delete-releases"]);
    assert_eq!(code, 0, "{out}");
    for (name, spec) in [("later-task-1", &later), ("pend-task-2", &pend)] {
        let line = row(&out, name);
        assert!(
            line.contains("created") && line.contains("uninstalled"),
            "{line}"
        );
        let tr = taskruns.get(name).await.expect("migrated TaskRun");
        assert_eq!(&tr.spec, spec, "{name}");
    }
    assert!(
        row(&out, "pend-task-2").contains(" 3 "),
        "the rollback's revision: {out}"
    );
    assert!(row(&out, "gone-task-3").contains("skipped"), "{out}");
    let left = helm_releases(cp, &ns);
    assert_eq!(left.keys().collect::<Vec<_>>(), ["gone-task-3"], "{left:?}");
}

#[tokio::test]
async fn a_run_after_an_uninstall_that_stopped_partway_finishes_it() {
    let cp = cluster().await;
    let ns = cp.namespace("migrate-resume").await;
    let client = cp.client().await;
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let jobs = Api::<Job>::namespaced(client.clone(), &ns);
    let files = [("task.md", "# Task\n")];
    install_task(cp, &ns, "install", "resume", 1, "", &files);
    install_task(cp, &ns, "upgrade", "resume", 1, "", &files);
    // A TaskRun of the same task made by hand, not by migrate-helm.
    install_task(cp, &ns, "install", "hand", 2, "", &files);
    let mut manual = gitops_manifest("hand-task-2", &files);
    manual["spec"]["serviceName"] = json!("hand");
    manual["spec"]["taskId"] = json!(2);
    kubectl_apply(cp, &ns, "kubectl", &manual);
    finish_legacy_jobs(cp, &ns, &[]).await;

    let (code, out) = migrate(cp, &ns, &[]);
    assert_eq!(code, 3, "{out}");
    assert!(row(&out, "resume-task-1").contains("created"), "{out}");
    assert!(row(&out, "hand-task-2").contains("FAILED"), "{out}");

    // What an uninstall that failed after the resources leaves: no ConfigMap, no Job, the
    // release records still there.
    for name in ["resume-task-1", "hand-task-2"] {
        config_maps
            .delete(&format!("{name}-files"), &Default::default())
            .await
            .expect("delete ConfigMap");
        jobs.delete(name, &Default::default())
            .await
            .expect("delete Job");
    }

    let (code, out) = migrate(cp, &ns, &["--delete-releases"]);
    assert_eq!(code, 3, "{out}");
    let resumed = row(&out, "resume-task-1");
    assert!(
        resumed.contains("exists, matches")
            && resumed.contains("uninstalled")
            && resumed.contains("deleted 0 resource(s) and 2 revision(s)"),
        "only what this run deleted counts: {resumed}"
    );
    // Without the files, a TaskRun this tool did not make proves nothing: kept, reported.
    let hand = row(&out, "hand-task-2");
    assert!(
        hand.contains("FAILED") && hand.contains("not found") && hand.contains(" kept "),
        "{hand}"
    );
    let left = helm_releases(cp, &ns);
    assert_eq!(left.keys().collect::<Vec<_>>(), ["hand-task-2"], "{left:?}");
}

#[tokio::test]
async fn a_release_record_labelled_with_another_name_is_left_alone() {
    let cp = cluster().await;
    let ns = cp.namespace("migrate-mislabelled").await;
    let secrets = Api::<Secret>::namespaced(cp.client().await, &ns);
    install_task(
        cp,
        &ns,
        "install",
        "real",
        1,
        "",
        &[("task.md", "# Task\n")],
    );
    finish_legacy_jobs(cp, &ns, &[]).await;
    // A copy of its record labelled as release other-task-2: uninstalling "other-task-2" by
    // the record's name would delete real-task-1's revisions.
    let mut copy = secrets
        .get("sh.helm.release.v1.real-task-1.v1")
        .await
        .expect("the release Secret");
    copy.metadata = kube::api::ObjectMeta {
        name: Some("sh.helm.release.v1.other-task-2.v1".into()),
        labels: copy.metadata.labels.map(|mut l| {
            l.insert("name".into(), "other-task-2".into());
            l
        }),
        ..Default::default()
    };
    secrets
        .create(&Default::default(), &copy)
        .await
        .expect("create the copy");

    let (code, out) = migrate(cp, &ns, &["--delete-releases"]);
    assert_eq!(code, 3, "{out}");
    let other = row(&out, "other-task-2");
    assert!(
        other.contains("FAILED") && other.contains("holds release \"real-task-1\""),
        "{other}"
    );
    assert!(row(&out, "real-task-1").contains("uninstalled"), "{out}");
    let left = secrets.list(&Default::default()).await.expect("list");
    let names: Vec<_> = left
        .items
        .iter()
        .filter_map(|s| s.metadata.name.as_deref())
        .collect();
    assert_eq!(names, ["sh.helm.release.v1.other-task-2.v1"], "{names:?}");
}

/// A release of the legacy chart whose name does not say its task (`{service}-task-{id}`)
/// is reported, not passed over in silence.
#[tokio::test]
async fn a_release_of_the_chart_named_otherwise_is_reported() {
    let cp = cluster().await;
    let ns = cp.namespace("migrate-odd-name").await;
    let values = json!({"serviceName": "odd", "taskId": "7", "agentName": "",
                        "files": {"task.md": "# Task\n"}});
    let path = write_file(
        &work_dir().join(&ns),
        "odd-task-07.json",
        &values.to_string(),
    );
    let chart = repo_root().join("tests/fixtures/legacy-chart");
    helm(
        cp,
        &ns,
        &[
            "install",
            "odd-task-07",
            &chart.to_string_lossy(),
            "-f",
            &path.to_string_lossy(),
        ],
    );
    finish_legacy_jobs(cp, &ns, &[]).await;

    let (code, out) = migrate(cp, &ns, &[]);
    assert_eq!(code, 3, "{out}");
    let odd = row(&out, "odd-task-07");
    assert!(
        odd.contains("FAILED") && odd.contains("is not of the form {service}-task-{id}"),
        "{odd}"
    );
}

/// In a namespace the webhook does not see (a cluster's own namespaceSelector leaves it out), a
/// TaskRun would get no duplicate check and no labels: it is not created, and the row says
/// why.
#[tokio::test]
async fn a_release_where_the_webhook_does_not_look_is_not_migrated() {
    let cp = cluster().await;
    let ns = &cp
        .namespace_with_labels("migrate-unseen", &[(UNSEEN_NAMESPACE_LABEL, "true")])
        .await;
    install_task(
        cp,
        ns,
        "install",
        "unseen",
        1,
        "",
        &[("task.md", "# Task\n")],
    );
    finish_legacy_jobs(cp, ns, &[]).await;

    let (code, out) = migrate(cp, ns, &[]);
    let unseen = row(&out, "unseen-task-1");
    let taskruns = Api::<TaskRun>::namespaced(cp.client().await, ns);
    let created = taskruns.get_opt("unseen-task-1").await.expect("get");
    helm(cp, ns, &["uninstall", "unseen-task-1"]);
    if created.is_some() {
        let _ = taskruns.delete("unseen-task-1", &Default::default()).await;
    }
    assert_eq!(code, 3, "{out}");
    assert!(
        unseen.contains("FAILED") && unseen.contains("not created"),
        "{unseen}"
    );
    assert!(
        created.is_none(),
        "a TaskRun the webhook never saw was created"
    );
}

/// Installs release `pay-task-{id}` (agent claude-1, one file), lets its Job finish, then
/// upgrades it with `--set image=...` and `--set {set}`. A Job's pod template is immutable:
/// the upgrade fails on the Job, as revision 2, after Helm has applied the rest. The spec
/// revision 1 should become.
async fn install_then_fail_an_upgrade(
    cp: &ControlPlane,
    ns: &str,
    id: i64,
    set: &str,
) -> TaskRunSpec {
    let spec = install_task(
        cp,
        ns,
        "install",
        "pay",
        id,
        "claude-1",
        &[("task.md", "# Task\n")],
    );
    finish_legacy_jobs(cp, ns, &[]).await;
    let chart = repo_root().join("tests/fixtures/legacy-chart");
    let upgrade = helm_command(
        cp,
        ns,
        &[
            "upgrade",
            &format!("pay-task-{id}"),
            &chart.to_string_lossy(),
            "--reuse-values",
            "--set",
            "image=registry.example/agent:other",
            "--set",
            set,
        ],
    )
    .output()
    .expect("helm runs");
    assert!(!upgrade.status.success(), "the upgrade was meant to fail");
    spec
}

/// With the files ConfigMap gone, the TaskRun is read to tell an uninstall stopped partway from
/// files lost. A read that fails is said as such, not as the files being missing (they may be
/// in that TaskRun): here the caller may read the release but not TaskRuns.
#[tokio::test]
async fn a_taskrun_that_cannot_be_read_is_not_reported_as_missing_files() {
    let cp = cluster().await;
    let ns = cp.namespace("migrate-unreadable").await;
    let client = cp.client().await;
    install_task(
        cp,
        &ns,
        "install",
        "gone",
        5,
        "",
        &[("task.md", "# Task\n")],
    );
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .delete("gone-task-5-files", &Default::default())
        .await
        .expect("delete the files ConfigMap");
    let user = format!("{ns}-reader");
    let params = PostParams::default();
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "release-reader"},
        "rules": [{"apiGroups": ["", "batch"], "resources": ["secrets", "configmaps", "jobs"],
                   "verbs": ["get", "list"]}],
    }))
    .expect("a Role");
    Api::<Role>::namespaced(client.clone(), &ns)
        .create(&params, &role)
        .await
        .expect("create the Role");
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "release-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "release-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .expect("a RoleBinding");
    Api::<RoleBinding>::namespaced(client, &ns)
        .create(&params, &binding)
        .await
        .expect("bind the Role");

    let mut cmd = plugin_with(&cp.kubeconfig_for(&user, &[]));
    cmd.args(["migrate-helm", "-n", &ns]);
    let (code, out, err) = run(cmd);
    assert_eq!(code, 3, "{out}{err}");
    let line = row(&out, "gone-task-5");
    assert!(
        line.contains("FAILED")
            && line.contains("reading TaskRun gone-task-5")
            && line.contains("cannot get resource \"taskruns\"")
            && !line.contains("not found"),
        "{line}"
    );
}

/// A request the API server cannot answer now (429 or 503 after the plugin's brief retries)
/// leaves its step for a later run: reading the legacy Job before the TaskRun is made, and
/// deleting a release record in the uninstall. Each is "not yet" (exit 3), not a failure, and
/// the run after it finishes.
// Multi-threaded: the proxy is served on this runtime while the plugin runs, blocking one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_the_api_server_cannot_answer_for_now_is_left_for_a_later_run() {
    let cp = cluster().await;
    let ns = cp.namespace("migrate-unanswered").await;
    let client = cp.client().await;
    let taskruns = Api::<TaskRun>::namespaced(client, &ns);
    install_task(
        cp,
        &ns,
        "install",
        "busy",
        6,
        "",
        &[("task.md", "# Task\n")],
    );
    finish_legacy_jobs(cp, &ns, &[]).await;
    let proxy = FaultProxy::start_as(cp, &format!("{ns}-admin"), &["system:masters"]).await;

    proxy.refuse_requests_to(&[&format!("GET /apis/batch/v1/namespaces/{ns}/jobs/")]);
    let (code, out) = migrate_through(&proxy.kubeconfig, &ns, &["--delete-releases"]);
    assert_eq!(code, 3, "{out}");
    let line = row(&out, "busy-task-6");
    assert!(
        line.contains("not yet")
            && line.contains("reading the release's Job \"busy-task-6\"")
            && line.contains("run this again in a moment"),
        "{line}"
    );
    assert!(proxy.refused() > 0, "nothing was refused");
    assert!(
        taskruns
            .get_opt("busy-task-6")
            .await
            .expect("get")
            .is_none()
    );

    let line = uninstall_stopped_at_the_records(&proxy, &ns, "busy-task-6");
    assert!(
        line.contains("created")
            && line.contains(" kept ")
            && line.contains("deleting release record sh.helm.release.v1.busy-task-6.v1")
            && line.contains("run this again in a moment"),
        "{line}"
    );
    assert!(!line.contains("FAILED"), "{line}");

    uninstall_finished(cp, &proxy, &ns, "busy-task-6");
}

/// `--delete-releases` through `proxy` with every delete of a release record refused: the
/// uninstall stops after the release's resources. Exit code 3; the release's row.
fn uninstall_stopped_at_the_records(proxy: &FaultProxy, ns: &str, release: &str) -> String {
    proxy.refuse_requests_to(&[&format!("DELETE /api/v1/namespaces/{ns}/secrets/")]);
    let (code, out) = migrate_through(&proxy.kubeconfig, ns, &["--delete-releases"]);
    assert_eq!(code, 3, "{out}");
    row(&out, release).to_owned()
}

/// `--delete-releases` through `proxy` once it passes everything again: the release's
/// TaskRun matches, the release is uninstalled, and none is left in `ns`.
fn uninstall_finished(cp: &ControlPlane, proxy: &FaultProxy, ns: &str, release: &str) {
    proxy.close_window();
    let (code, out) = migrate_through(&proxy.kubeconfig, ns, &["--delete-releases"]);
    assert_eq!(code, 0, "{out}");
    let line = row(&out, release);
    assert!(
        line.contains("exists, matches") && line.contains("uninstalled"),
        "{line}"
    );
    assert!(helm_releases(cp, ns).is_empty());
}

/// A TaskRun applied by hand (or from git) that matches its release is marked as made from
/// it before the uninstall deletes anything: an uninstall cut off after the release's files
/// ConfigMap is gone (its records left) is then finished by the next run, instead of failing
/// for want of the files it can no longer compare.
// Multi-threaded: the proxy is served on this runtime while the plugin runs, blocking one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taskrun_already_there_is_marked_before_its_release_is_uninstalled() {
    let cp = cluster().await;
    let ns = cp.namespace("migrate-mark").await;
    let client = cp.client().await;
    let taskruns = Api::<TaskRun>::namespaced(client, &ns);
    install_task(
        cp,
        &ns,
        "install",
        "marked",
        4,
        "",
        &[("task.md", "# Task\n")],
    );
    finish_legacy_jobs(cp, &ns, &[]).await;
    let by_hand = json!({
        "apiVersion": "orchestrator.io/v1",
        "kind": "TaskRun",
        "metadata": {"name": "marked-task-4"},
        "spec": {
            "taskId": 4,
            "serviceName": "marked",
            "markdownFiles": [{"filename": "task.md", "content": "# Task\n"}],
        },
    });
    kubectl_apply(cp, &ns, "kubectl", &by_hand);
    let migrated_from = |tr: &TaskRun| {
        tr.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("orchestrator.io/migrated-from"))
            .cloned()
    };
    // Without --delete-releases nothing is written to it.
    let (_, out) = migrate(cp, &ns, &[]);
    assert!(
        row(&out, "marked-task-4").contains("exists, matches"),
        "{out}"
    );
    let tr = taskruns.get("marked-task-4").await.expect("get");
    assert_eq!(migrated_from(&tr), None);

    // The uninstall stops after the resources: the release records cannot be deleted.
    let proxy = FaultProxy::start_as(cp, &format!("{ns}-admin"), &["system:masters"]).await;
    let line = uninstall_stopped_at_the_records(&proxy, &ns, "marked-task-4");
    assert!(
        line.contains("exists, matches") && line.contains(" kept "),
        "{line}"
    );
    let tr = taskruns.get("marked-task-4").await.expect("get");
    assert_eq!(
        migrated_from(&tr).as_deref(),
        Some(format!("helm release {ns}/marked-task-4 revision 1").as_str())
    );
    let config_maps = Api::<ConfigMap>::namespaced(cp.client().await, &ns);
    assert!(
        config_maps
            .get_opt("marked-task-4-files")
            .await
            .expect("get")
            .is_none(),
        "the uninstall did not get as far as the files"
    );
    uninstall_finished(cp, &proxy, &ns, "marked-task-4");
}

/// A failed `helm upgrade` leaves a newer revision above the deployed one. `helm uninstall`
/// would act on that newer revision (its manifest, its hooks), so `--delete-releases` leaves
/// such a release for Helm, saying why, instead of uninstalling from the revision migrated.
#[tokio::test]
async fn a_release_whose_upgrade_failed_is_migrated_but_left_for_helm_to_uninstall() {
    let cp = cluster().await;
    let ns = cp.namespace("migrate-failed-upgrade").await;
    let client = cp.client().await;
    // The upgrade also names another agent (a value the TaskRun spec takes), so the spec
    // tells which revision was migrated.
    let spec = install_then_fail_an_upgrade(cp, &ns, 6, "agentName=claude-2").await;
    let history = helm(cp, &ns, &["history", "pay-task-6", "-o", "json"]);
    assert!(history.contains("\"failed\""), "{history}");
    let failed_values = helm(
        cp,
        &ns,
        &[
            "get",
            "values",
            "pay-task-6",
            "--revision",
            "2",
            "-o",
            "json",
        ],
    );
    assert!(failed_values.contains("claude-2"), "{failed_values}");

    let (code, out) = migrate(cp, &ns, &["--delete-releases"]);
    assert_eq!(code, 3, "{out}");
    let line = row(&out, "pay-task-6");
    assert!(
        line.contains("UNINSTALL FAILED")
            && line.contains("revision 2 (failed) is newer than the migrated revision 1"),
        "{line}"
    );
    // Migrated from the deployed revision; Helm's release and its resources stay.
    let tr = Api::<TaskRun>::namespaced(client.clone(), &ns)
        .get("pay-task-6")
        .await
        .expect("the TaskRun");
    assert_eq!(
        tr.spec.agent_name.as_deref(),
        Some("claude-1"),
        "not the deployed revision's agent"
    );
    assert_eq!(tr.spec, spec);
    assert_eq!(
        helm_releases(cp, &ns).get("pay-task-6").map(String::as_str),
        Some("2")
    );
    Api::<Job>::namespaced(client.clone(), &ns)
        .get("pay-task-6")
        .await
        .expect("the release's Job is still there");

    // A failed upgrade that also changed the files: Helm updated the ConfigMap before the Job
    // refused its change, so the ConfigMap holds revision 2's files under revision 1's values.
    // Not migrated; the rollback the row advises makes it migrate as revision 1 was.
    let spec = install_then_fail_an_upgrade(cp, &ns, 7, "files.task\\.md=# Changed").await;
    let files = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("pay-task-7-files")
        .await
        .expect("the files ConfigMap");
    assert_eq!(
        files
            .data
            .and_then(|d| d.get("task.md").cloned())
            .as_deref(),
        Some("# Changed"),
        "the failed upgrade changed the files"
    );
    let (code, out) = migrate(cp, &ns, &[]);
    assert_eq!(code, 3, "{out}");
    let line = row(&out, "pay-task-7");
    assert!(
        line.contains("FAILED")
            && line.contains("no longer holds the files revision 1 rendered (\"task.md\" differ)")
            && line.contains(&format!("`helm rollback pay-task-7 1 -n {ns}`")),
        "{line}"
    );
    let taskruns = Api::<TaskRun>::namespaced(client, &ns);
    assert!(
        taskruns
            .get_opt("pay-task-7")
            .await
            .expect("read")
            .is_none(),
        "migrated from files no revision deployed"
    );
    helm(cp, &ns, &["rollback", "pay-task-7", "1"]);
    let (code, out) = migrate(cp, &ns, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(row(&out, "pay-task-7").contains("created"), "{out}");
    let tr = taskruns.get("pay-task-7").await.expect("the TaskRun");
    assert_eq!(tr.spec, spec);
}

/// `helm install --wait` that timed out (its Job runs on) leaves a release whose only revision
/// is `failed`: not migrated, and not done either, so not a skip with exit code 0 but a
/// failure (exit code 3) whose row says what to do; done as it says, the release migrates.
#[tokio::test]
async fn a_release_never_deployed_fails_with_advice_until_it_is() {
    let cp = cluster().await;
    let ns = cp.namespace("migrate-never-deployed").await;
    let client = cp.client().await;
    let taskruns = Api::<TaskRun>::namespaced(client.clone(), &ns);
    let files = [("task.md", "# Task\n")];
    let values = json!({"serviceName": "slow", "taskId": "4", "agentName": "",
                        "files": {"task.md": "# Task\n"}});
    let path = write_file(
        &work_dir().join(&ns),
        "slow-task-4-install.json",
        &values.to_string(),
    );
    let chart = repo_root().join("tests/fixtures/legacy-chart");
    let install = helm_command(
        cp,
        &ns,
        &[
            "install",
            "slow-task-4",
            &chart.to_string_lossy(),
            "-f",
            &path.to_string_lossy(),
            "--wait",
            "--wait-for-jobs",
            "--timeout",
            "3s",
        ],
    )
    .output()
    .expect("helm runs");
    assert!(
        !install.status.success(),
        "the install was meant to time out"
    );
    let history = helm(cp, &ns, &["history", "slow-task-4", "-o", "json"]);
    assert!(history.contains("\"failed\""), "{history}");
    // A release uninstalled with its history kept: skipped for good, as before.
    install_task(cp, &ns, "install", "gone", 5, "", &files);
    helm(cp, &ns, &["uninstall", "gone-task-5", "--keep-history"]);

    for flags in [
        &["--dry-run", "--delete-releases"][..],
        &["--delete-releases"],
    ] {
        let (code, out) = migrate(cp, &ns, flags);
        assert_eq!(code, 3, "{flags:?}: the release is not migrated\n{out}");
        let line = row(&out, "slow-task-4");
        assert!(
            line.contains("FAILED")
                && line.contains(" kept ")
                && line.contains("no deployed revision: the newest, revision 1, is failed")
                && line.contains(&format!("helm upgrade slow-task-4 CHART -n {ns}"))
                && line.contains(&format!("helm uninstall slow-task-4 -n {ns}")),
            "{line}"
        );
        assert!(!line.contains("skipped"), "{line}");
        let gone = row(&out, "gone-task-5");
        assert!(gone.contains("skipped"), "{gone}");
        assert!(
            out.contains("1 failed") && out.contains("1 skipped"),
            "{out}"
        );
        assert!(
            taskruns
                .get_opt("slow-task-4")
                .await
                .expect("get")
                .is_none(),
            "{flags:?}"
        );
    }

    // Done as the row says: the Job ends, an upgrade gives the release a deployed revision.
    finish_legacy_jobs(cp, &ns, &[]).await;
    let spec = install_task(cp, &ns, "upgrade", "slow", 4, "", &files);
    let (code, out) = migrate(cp, &ns, &["--delete-releases"]);
    assert_eq!(code, 0, "{out}");
    let line = row(&out, "slow-task-4");
    assert!(
        line.contains("created") && line.contains("uninstalled"),
        "{line}"
    );
    assert_eq!(
        taskruns.get("slow-task-4").await.expect("migrated").spec,
        spec
    );
}

/// The uninstall deletes the release's revision Secrets as Helm selects them (type
/// `helm.sh/release.v1`, with a numeric version): another Secret that happens to carry the
/// labels `owner=helm,name=RELEASE` is neither deleted nor counted.
#[tokio::test]
async fn an_uninstall_deletes_only_the_releases_own_records() {
    let cp = cluster().await;
    let ns = cp.namespace("migrate-stray-secrets").await;
    let secrets = Api::<Secret>::namespaced(cp.client().await, &ns);
    install_task(cp, &ns, "install", "own", 1, "", &[("task.md", "# Task\n")]);
    finish_legacy_jobs(cp, &ns, &[]).await;
    let stray = |name: &str, type_: &str, version: Option<&str>| {
        let mut labels = BTreeMap::from([
            ("owner".to_owned(), "helm".to_owned()),
            ("name".to_owned(), "own-task-1".to_owned()),
        ]);
        if let Some(version) = version {
            labels.insert("version".into(), version.into());
            labels.insert("status".into(), "deployed".into());
        }
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels),
                ..Default::default()
            },
            type_: Some(type_.into()),
            string_data: Some(BTreeMap::from([(
                "note".to_owned(),
                "not Helm's".to_owned(),
            )])),
            ..Default::default()
        }
    };
    let strays = [
        // Another tool's Secret with Helm's labels, a version label included.
        stray("own-task-1-credentials", "Opaque", Some("9")),
        stray("own-task-1-notes", "Opaque", None),
        // Of Helm's type, but not a revision: no version label.
        stray("own-task-1-unversioned", "helm.sh/release.v1", None),
    ];
    for secret in &strays {
        secrets
            .create(&Default::default(), secret)
            .await
            .expect("create a stray Secret");
    }

    let (code, out) = migrate(cp, &ns, &["--dry-run", "--delete-releases"]);
    assert_eq!(code, 0, "{out}");
    let line = row(&out, "own-task-1");
    assert!(
        line.contains("would uninstall")
            && line.contains("would delete 2 resource(s) and 1 revision(s)"),
        "{line}"
    );

    let (code, out) = migrate(cp, &ns, &["--delete-releases"]);
    assert_eq!(code, 0, "{out}");
    let line = row(&out, "own-task-1");
    assert!(
        line.contains("created")
            && line.contains("uninstalled")
            && line.contains("deleted 2 resource(s) and 1 revision(s)"),
        "{line}"
    );
    let mut left: Vec<String> = secrets
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "own-task-1-credentials",
            "own-task-1-notes",
            "own-task-1-unversioned"
        ]
    );
}

// ---- proxies -------------------------------------------------------------------------------

/// An HTTP CONNECT proxy on a port of its own, tunnelling each connection to the address it is
/// asked for (on threads: the plugin runs in a blocking subprocess call), noting each address.
struct ConnectProxy {
    url: String,
    asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ConnectProxy {
    fn start() -> Self {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let noted = asked.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let noted = noted.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(client.try_clone().expect("clone"));
                    let mut line = String::new();
                    reader.read_line(&mut line).expect("request line");
                    let target = line
                        .strip_prefix("CONNECT ")
                        .and_then(|rest| rest.split_whitespace().next())
                        .map(str::to_owned);
                    // The rest of the head.
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                            break;
                        }
                    }
                    let mut client = client;
                    let Some(target) = target else {
                        let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n");
                        return;
                    };
                    noted.lock().expect("unpoisoned").push(target.clone());
                    let Ok(upstream) = std::net::TcpStream::connect(&target) else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                        return;
                    };
                    let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                    let (mut up_read, mut up_write) =
                        (upstream.try_clone().expect("clone"), upstream);
                    let mut down_write = client.try_clone().expect("clone");
                    std::thread::spawn(move || std::io::copy(&mut up_read, &mut down_write));
                    let _ = std::io::copy(&mut reader, &mut up_write);
                });
            }
        });
        ConnectProxy { url, asked }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().expect("unpoisoned").clone()
    }
}

/// The plugin reaches the API server as kubectl would: through the cluster's `proxy-url`, and
/// never through `HTTPS_PROXY` for a server on a loopback address (kube's client alone refused
/// to start with `HTTPS_PROXY` set at all).
#[tokio::test]
async fn the_plugin_uses_a_proxy_as_kubectl_does() {
    let cp = cluster().await;
    let ns = cp.namespace("cli-proxy").await;
    let server = cp.config().await.cluster_url;
    let api_address = format!(
        "{}:{}",
        server.host().expect("host"),
        server.port_u16().expect("port")
    );
    let nothing =
        format!("No Helm releases of the legacy claude-code chart found in namespace {ns}");

    // A proxy variable set for the internet, where nothing listens: not used for 127.0.0.1.
    let dead = format!("http://127.0.0.1:{}", taskrun_tests::free_port());
    let mut cmd = plugin(cp);
    cmd.args(["migrate-helm", "-n", &ns])
        .env("HTTPS_PROXY", &dead)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    let (code, out, err) = run(cmd);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&nothing), "{out}{err}");

    // The kubeconfig's proxy-url for the cluster is used, whatever the server's address.
    let proxy = ConnectProxy::start();
    let mut kubeconfig =
        kube::config::Kubeconfig::read_from(cp.kubeconfig()).expect("the test kubeconfig");
    for named in &mut kubeconfig.clusters {
        if let Some(cluster) = named.cluster.as_mut() {
            cluster.proxy_url = Some(proxy.url.clone());
        }
    }
    let proxied = work_dir().join(format!("{ns}-proxied.kubeconfig"));
    std::fs::write(&proxied, serde_json::to_vec(&kubeconfig).expect("JSON")).expect("write");
    let mut cmd = plugin_with(&proxied);
    cmd.args(["migrate-helm", "-n", &ns])
        .env_remove("HTTPS_PROXY");
    let (code, out, err) = run(cmd);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&nothing), "{out}{err}");
    let asked = proxy.asked();
    assert!(
        !asked.is_empty() && asked.iter().all(|a| *a == api_address),
        "tunnels asked for: {asked:?}, the API server is {api_address}"
    );

    // A proxy variable kube cannot read is named, with what to do.
    let mut cmd = plugin(cp);
    cmd.args(["migrate-helm", "-n", &ns])
        .env("HTTPS_PROXY", &dead)
        .env("NO_PROXY", "example.com,,localhost");
    let (code, _, err) = run(cmd);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("kube cannot read NO_PROXY")
            && err.contains("remove its empty or malformed entries"),
        "{err}"
    );
}
