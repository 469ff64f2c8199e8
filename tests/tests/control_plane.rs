//! The control plane is real and the CRD holds on its own: the API server accepts and serves
//! the generated CRD, its schema alone (no webhook is registered in this binary) rejects bad
//! TaskRuns with the API server's own messages, server-side apply merges file lists, and the
//! Job and garbage-collector controllers of kube-controller-manager run.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use taskrun::TaskRun;
use taskrun_tests::{ControlPlane, log_tail, repo_root, spawn_logged, wait_for, workspace_bin};
use tokio::sync::{RwLock, RwLockReadGuard};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Tests share the API server; the restart test needs it to itself.
static APISERVER: RwLock<()> = RwLock::const_new(());

async fn cluster() -> (RwLockReadGuard<'static, ()>, &'static ControlPlane) {
    let guard = APISERVER.read().await;
    (guard, ControlPlane::shared())
}

fn task_run(name: &str, spec: Value) -> TaskRun {
    serde_json::from_value(json!({
        "apiVersion": "orchestrator.io/v1",
        "kind": "TaskRun",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("a TaskRun")
}

fn valid_spec() -> Value {
    json!({
        "taskId": 7,
        "serviceName": "billing",
        "markdownFiles": [{"filename": "task.md", "fileType": "task", "content": "# Do it\n"}],
    })
}

/// The API server's status message for a rejected write, asserting it is a 422.
fn invalid_message<T: std::fmt::Debug>(result: kube::Result<T>) -> String {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "expected 422 Invalid, got {status:?}");
            status.message
        }
        other => panic!("expected the API server to reject it, got {other:?}"),
    }
}

fn kubectl_ok(cp: &ControlPlane, args: &[&str]) -> String {
    let out = cp.kubectl().args(args).output().expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_crd_is_established_and_served() {
    let (_gate, cp) = cluster().await;
    let crds = Api::<CustomResourceDefinition>::all(cp.client().await);
    let crd = crds.get("taskruns.orchestrator.io").await.expect("CRD");
    let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
    for wanted in ["Established", "NamesAccepted"] {
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == wanted && c.status == "True"),
            "{wanted} not True in {conditions:?}"
        );
    }
    let version = kubectl_ok(cp, &["version", "-o", "json"]);
    let version: Value = serde_json::from_str(&version).expect("json");
    assert_eq!(version["serverVersion"]["gitVersion"], "v1.37.2");
}

#[tokio::test]
async fn kubectl_explain_prints_the_field_docs() {
    let (_gate, cp) = cluster().await;
    let out = kubectl_ok(cp, &["explain", "taskrun.spec.markdownFiles"]);
    for wanted in [
        "KIND:       TaskRun",
        "FIELD: markdownFiles <[]Object>",
        "The markdown files the agent reads, 1 to 64",
        "filename\t<string> -required-",
        "content\t<string> -required-",
        "fileType\t<string>",
        "enum: task, design-spec",
    ] {
        assert!(out.contains(wanted), "{wanted:?} missing from:\n{out}");
    }
}

#[tokio::test]
async fn kubectl_get_prints_the_printer_columns() {
    let (_gate, cp) = cluster().await;
    let ns = cp.namespace("columns").await;
    Api::<TaskRun>::namespaced(cp.client().await, &ns)
        .create(&PostParams::default(), &task_run("report", valid_spec()))
        .await
        .expect("create");
    let out = kubectl_ok(cp, &["get", "tr", "-n", &ns]);
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        ["NAME", "TASK", "SERVICE", "VERSION", "PHASE", "AGE"],
        "{out}"
    );
    // No controller runs here, so Phase is empty and the row has one column less.
    assert_eq!(lines[1][..4], ["report", "7", "billing", "1"], "{out}");
    let wide = kubectl_ok(cp, &["get", "taskruns", "-n", &ns, "-o", "wide"]);
    assert!(
        wide.lines().next().is_some_and(|h| h.ends_with("JOB")),
        "{wide}"
    );
}

#[tokio::test]
async fn the_schema_alone_rejects_bad_task_runs() {
    let (_gate, cp) = cluster().await;
    let client = cp.client().await;
    let webhooks = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list webhooks");
    assert!(webhooks.items.is_empty(), "a webhook is registered");
    let ns = cp.namespace("schema").await;
    let api = Api::<TaskRun>::namespaced(client, &ns);
    let pp = PostParams::default();

    let mut spec = valid_spec();
    spec["markdownFiles"] = json!([]);
    let msg = invalid_message(api.create(&pp, &task_run("empty", spec)).await);
    assert!(msg.contains("spec.markdownFiles"), "{msg}");
    assert!(msg.contains("should have at least 1 items"), "{msg}");

    let mut spec = valid_spec();
    spec["markdownFiles"] = json!([
        {"filename": "task.md", "content": "# ok"},
        {"filename": "notes.md", "content": " \n\t "},
    ]);
    let msg = invalid_message(api.create(&pp, &task_run("blank", spec)).await);
    assert!(
        msg.contains("spec.markdownFiles[1].content")
            && msg.contains("markdown file notes.md is empty or only whitespace"),
        "{msg}"
    );

    let mut spec = valid_spec();
    spec["markdownFiles"] = json!([{"filename": "../etc/passwd.md", "content": "x"}]);
    let msg = invalid_message(api.create(&pp, &task_run("badname", spec)).await);
    assert!(
        msg.contains("spec.markdownFiles[0].filename") && msg.contains("should match"),
        "{msg}"
    );

    // Four files of 250,001 characters: each within the per-file bound, over 1,000,000 in total.
    let mut spec = valid_spec();
    spec["markdownFiles"] = json!(
        (0..4)
            .map(|i| json!({"filename": format!("part-{i}.md"), "content": "x".repeat(250_001)}))
            .collect::<Vec<_>>()
    );
    let msg = invalid_message(api.create(&pp, &task_run("huge", spec)).await);
    assert!(msg.contains("too large in total"), "{msg}");

    // Updates: the transition rules compare with the stored object.
    let created = api
        .create(
            &pp,
            &task_run("update", {
                let mut spec = valid_spec();
                spec["contextVersion"] = json!(2);
                spec
            }),
        )
        .await
        .expect("a valid TaskRun is accepted");
    assert_eq!(created.spec.context_version, 2);
    let patch = |spec: Value| Patch::Merge(json!({ "spec": spec }));
    let msg = invalid_message(
        api.patch(
            "update",
            &PatchParams::default(),
            &patch(json!({"taskId": 8})),
        )
        .await,
    );
    assert!(
        msg.contains("spec.taskId: Forbidden: taskId is immutable (was 7, now 8)")
            && msg.contains("create a new TaskRun"),
        "{msg}"
    );
    let msg = invalid_message(
        api.patch(
            "update",
            &PatchParams::default(),
            &patch(json!({"serviceName": "payments"})),
        )
        .await,
    );
    assert!(
        msg.contains(
            r#"spec.serviceName: Forbidden: serviceName is immutable (was "billing", now "payments")"#
        ) && msg.contains("create a new TaskRun"),
        "{msg}"
    );
    let msg = invalid_message(
        api.patch(
            "update",
            &PatchParams::default(),
            &patch(json!({"contextVersion": 1})),
        )
        .await,
    );
    assert!(
        msg.contains(
            "spec.contextVersion: Forbidden: contextVersion may not decrease (was 2, now 1)"
        ) && msg.contains("set it to 2 or more"),
        "{msg}"
    );
    let raised = api
        .patch(
            "update",
            &PatchParams::default(),
            &patch(json!({"contextVersion": 3})),
        )
        .await
        .expect("raising contextVersion is allowed");
    assert_eq!(raised.spec.context_version, 3);
    assert_eq!(raised.spec.task_id, 7);
}

#[tokio::test]
async fn server_side_apply_by_two_managers_keeps_both_files() {
    let (_gate, cp) = cluster().await;
    let ns = cp.namespace("ssa").await;
    let api = Api::<TaskRun>::namespaced(cp.client().await, &ns);
    let apply = |manager: &str, spec: Value| {
        let api = api.clone();
        let pp = PatchParams::apply(manager);
        let body = json!({
            "apiVersion": "orchestrator.io/v1",
            "kind": "TaskRun",
            "metadata": {"name": "shared"},
            "spec": spec,
        });
        async move { api.patch("shared", &pp, &Patch::Apply(body)).await }
    };
    apply("alice", valid_spec()).await.expect("alice applies");
    apply(
        "bob",
        json!({"markdownFiles": [{"filename": "notes.md", "fileType": "context", "content": "more"}]}),
    )
    .await
    .expect("bob applies");
    let merged = api.get("shared").await.expect("get");
    let mut names: Vec<&str> = merged
        .spec
        .markdown_files
        .iter()
        .map(|f| f.filename.as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["notes.md", "task.md"]);
    let managers: Vec<String> = merged
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(managers.contains(&"alice".to_owned()) && managers.contains(&"bob".to_owned()));

    // Re-applying alice's unchanged config does not take bob's entry away.
    apply("alice", valid_spec())
        .await
        .expect("alice re-applies");
    let again = api.get("shared").await.expect("get");
    assert_eq!(again.spec.markdown_files.len(), 2);
}

#[tokio::test]
async fn the_job_controller_completes_a_job_whose_pod_succeeded() {
    let (_gate, cp) = cluster().await;
    let ns = cp.namespace("job").await;
    let client = cp.client().await;
    let jobs = Api::<Job>::namespaced(client.clone(), &ns);
    let pods = Api::<Pod>::namespaced(client, &ns);
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "agent", "image": "example.invalid/agent:1"}],
            }},
        },
    }))
    .expect("job");
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("create job");

    let pod = wait_for("the Job controller to create a pod", TIMEOUT, || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("job-name=agent"))
                .await
                .ok()?;
            list.items.into_iter().next()
        }
    })
    .await;
    // What the kubelet would report: the container ran and exited 0.
    let status = json!({"status": {
        "phase": "Succeeded",
        "containerStatuses": [{
            "name": "agent", "image": "example.invalid/agent:1", "imageID": "", "ready": false,
            "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:01Z"}},
        }],
    }});
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .expect("pods/status");

    let done = wait_for("the Job to become Complete", TIMEOUT, || {
        let jobs = jobs.clone();
        async move {
            let job = jobs.get("agent").await.ok()?;
            let status = job.status?;
            let complete = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Complete" && c.status == "True");
            complete.then_some(status.succeeded)
        }
    })
    .await;
    assert_eq!(done, Some(1));
}

// Multi-thread flavor on purpose: the harness must start from either kind of runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_owner_removes_what_it_owns() {
    let (_gate, cp) = cluster().await;
    let ns = cp.namespace("gc").await;
    let client = cp.client().await;
    let task_runs = Api::<TaskRun>::namespaced(client.clone(), &ns);
    let config_maps = Api::<ConfigMap>::namespaced(client, &ns);
    let owner = task_runs
        .create(&PostParams::default(), &task_run("owner", valid_spec()))
        .await
        .expect("create owner");
    let owner_ref = owner.controller_owner_ref(&()).expect("owner reference");
    let child: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "owner-files", "ownerReferences": [owner_ref]},
        "data": {"task.md": "# Do it\n"},
    }))
    .expect("config map");
    config_maps
        .create(&PostParams::default(), &child)
        .await
        .expect("create child");

    task_runs
        .delete("owner", &DeleteParams::background())
        .await
        .expect("delete owner");
    wait_for("the garbage collector to delete the child", TIMEOUT, || {
        let config_maps = config_maps.clone();
        async move {
            match config_maps.get_opt("owner-files").await {
                Ok(None) => Some(()),
                _ => None,
            }
        }
    })
    .await;
}

#[tokio::test]
async fn rbac_and_pod_security_are_enforced() {
    let (_gate, cp) = cluster().await;
    let ns = cp
        .namespace_with_labels(
            "restricted",
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await;

    let nobody = cp.kubeconfig_for("nobody", &["some-group"]);
    let out = std::process::Command::new(cp.bin_dir().join("kubectl"))
        .arg(format!("--kubeconfig={}", nobody.display()))
        .args(["get", "taskruns", "-n", &ns])
        .output()
        .expect("kubectl runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unbound user may list TaskRuns");
    assert!(
        stderr.contains("User \"nobody\" cannot list resource \"taskruns\""),
        "{stderr}"
    );

    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "privileged"},
        "spec": {"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": true}}]},
    }))
    .expect("pod");
    let result = Api::<Pod>::namespaced(cp.client().await, &ns)
        .create(&PostParams::default(), &pod)
        .await;
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(
                status
                    .message
                    .contains("violates PodSecurity \"restricted:latest\""),
                "{status:?}"
            );
        }
        other => panic!("a privileged pod was admitted in a restricted namespace: {other:?}"),
    }
}

#[tokio::test]
async fn the_apiserver_restarts_on_the_same_port_with_its_data() {
    let _exclusive = APISERVER.write().await;
    let cp = ControlPlane::shared();
    let ns = cp.namespace("restart").await;
    let client = cp.client().await;
    let api = Api::<TaskRun>::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &task_run("survivor", valid_spec()))
        .await
        .expect("create");

    cp.stop_apiserver();
    assert!(
        api.get("survivor").await.is_err(),
        "the API server still answers"
    );
    cp.start_apiserver();
    let back = api
        .get("survivor")
        .await
        .expect("the TaskRun is still there");
    assert_eq!(back.spec.task_id, 7);
    cp.check_alive()
        .expect("etcd and kube-controller-manager outlive the outage");
}

#[test]
fn spawned_children_log_and_stop() {
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        "echo started; trap 'echo bye; exit 0' TERM; while :; do sleep 0.1; done",
    ]);
    let mut child = spawn_logged(cmd, "harness-self-test").expect("spawn");
    assert!(child.is_running());
    let log = child.log_path().to_path_buf();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("started")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing logged to {log:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.terminate();
    assert!(!child.is_running());
    assert!(std::fs::read_to_string(&log).expect("log").contains("bye"));
}

/// The harness reports a child that exits with its log's last 30 lines: a Rust binary's
/// returned error must be among them even when RUST_BACKTRACE=1 asks for backtraces.
#[test]
fn a_childs_startup_error_is_in_its_log_tail_under_rust_backtrace() {
    let mut cmd = std::process::Command::new(workspace_bin("taskrun-webhook"));
    cmd.env("RUST_BACKTRACE", "1")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST");
    let mut child = spawn_logged(cmd, "harness-startup-error").expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "taskrun-webhook kept running without a kubeconfig"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let tail = log_tail(child.log_path(), 30);
    // A JSON line at level ERROR, like every other line of a pod's log.
    assert!(
        tail.lines().any(|l| l.starts_with('{')
            && l.contains(r#""level":"ERROR""#)
            && l.contains("cannot reach the Kubernetes API")),
        "the error is not in the last 30 lines:\n{tail}"
    );
}

/// A log filter that hides errors does not hide the one that ends the process: it goes to
/// stderr as it is.
#[test]
fn a_fatal_error_is_printed_even_when_the_log_filter_hides_errors() {
    let out = std::process::Command::new(workspace_bin("taskrun-webhook"))
        .arg("--log-level=off")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("taskrun-webhook runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.starts_with("Error: cannot reach the Kubernetes API"),
        "{stderr}"
    );
}

#[tokio::test]
#[should_panic(expected = "timed out after 300ms waiting for the impossible")]
async fn wait_for_names_what_it_waited_for() {
    wait_for("the impossible", Duration::from_millis(300), || async {
        None::<()>
    })
    .await;
}

/// docs/install.md's recipe for TaskRuns left Terminating once the operator is gone removes the
/// operator's finalizer, wherever it is in the list, and no other.
#[tokio::test]
async fn the_documented_finalizer_removal_leaves_other_finalizers() {
    let (_gate, cp) = cluster().await;
    let ns = cp.namespace("unfinalize").await;
    let api = Api::<TaskRun>::namespaced(cp.client().await, &ns);
    let other = "example.com/keep";
    for (name, finalizers) in [
        ("ours-last", [other, taskrun::FINALIZER]),
        ("ours-first", [taskrun::FINALIZER, other]),
    ] {
        let mut tr = task_run(name, valid_spec());
        tr.metadata.finalizers = Some(finalizers.map(str::to_owned).to_vec());
        api.create(&PostParams::default(), &tr)
            .await
            .expect("create");
        api.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }

    let install = std::fs::read_to_string(repo_root().join("docs/install.md")).expect("install.md");
    let (_, after) = install
        .split_once("To finish by hand")
        .expect("the recipe's paragraph");
    let (_, block) = after.split_once("```sh\n").expect("its sh block");
    let (recipe, _) = block.split_once("```").expect("the block's end");
    // For this test's namespace only: the control plane is shared.
    let all = "kubectl get taskruns -A ";
    assert!(recipe.contains(all), "{recipe}");
    let recipe = recipe.replace(all, &format!("kubectl get taskruns -n {ns} "));
    let kubectl = cp.kubectl().get_program().to_owned();
    let bin_dir = std::path::Path::new(&kubectl)
        .parent()
        .expect("kubectl's directory");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &recipe])
        .env("PATH", path)
        .env("KUBECONFIG", cp.kubeconfig())
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for name in ["ours-last", "ours-first"] {
        let tr = api
            .get(name)
            .await
            .expect("still there, held by the other finalizer");
        assert_eq!(tr.finalizers(), [other], "{name}");
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("let it go");
    }
}
