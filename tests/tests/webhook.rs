//! The admission webhook on the real control plane, driven the way users and GitOps tools
//! drive it: `kubectl apply` (client- and server-side, dry-run), `kubectl label`, `kubectl
//! diff`; plus certificate rotation under load and hostile clients straight to its port.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams, ResourceExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use taskrun::TaskRun;
use taskrun::labels::{AGENT_NAME, CONTEXT_VERSION, SERVICE_NAME, TASK_ID};
use taskrun_tests::webhook::Webhook;
use taskrun_tests::{ControlPlane, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const TIMEOUT: Duration = Duration::from_secs(30);
const ARGO_LABEL: &str = "app.kubernetes.io/instance";

async fn setup() -> (&'static ControlPlane, &'static Webhook) {
    let cp = ControlPlane::shared();
    (cp, Webhook::shared(cp).await)
}

// ---- kubectl as a user runs it -------------------------------------------------------------

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn kubectl(cp: &ControlPlane, args: &[&str], stdin: Option<&Value>) -> Run {
    let mut cmd: Command = cp.kubectl();
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl runs");
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.to_string().as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("kubectl finishes");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `kubectl apply -n NS -f -` with extra flags.
fn apply(cp: &ControlPlane, ns: &str, manifest: &Value, flags: &[&str]) -> Run {
    let mut args = vec!["apply", "-n", ns, "-f", "-"];
    args.extend_from_slice(flags);
    kubectl(cp, &args, Some(manifest))
}

fn applied(cp: &ControlPlane, ns: &str, manifest: &Value, flags: &[&str]) -> Run {
    let run = apply(cp, ns, manifest, flags);
    assert!(run.ok, "kubectl apply {flags:?} failed: {}", run.stderr);
    run
}

fn refused(cp: &ControlPlane, ns: &str, manifest: &Value, flags: &[&str]) -> String {
    let run = apply(cp, ns, manifest, flags);
    assert!(
        !run.ok,
        "kubectl apply {flags:?} was accepted: {}",
        run.stdout
    );
    run.stderr
}

fn manifest(name: &str, task_id: i64, service: &str) -> Value {
    json!({
        "apiVersion": "orchestrator.io/v1",
        "kind": "TaskRun",
        "metadata": {"name": name},
        "spec": {
            "taskId": task_id,
            "serviceName": service,
            "markdownFiles": [
                {"filename": "task.md", "content": "# Task\nDo the thing.", "fileType": "task"},
                {"filename": "design.md", "content": "Some design.", "fileType": "design-spec"}
            ]
        }
    })
}

fn add_file(m: &mut Value, filename: &str, content: &str) {
    m["spec"]["markdownFiles"]
        .as_array_mut()
        .expect("the manifest has a spec.markdownFiles list")
        .push(json!({"filename": filename, "content": content}));
}

async fn labels(cp: &ControlPlane, ns: &str, name: &str) -> BTreeMap<String, String> {
    let api: Api<TaskRun> = Api::namespaced(cp.client().await, ns);
    let tr = api.get(name).await.expect("get TaskRun");
    tr.metadata.labels.unwrap_or_default()
}

fn project_labels(l: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    l.iter()
        .filter(|(k, _)| k.starts_with("orchestrator.io/"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

// ---- rejections and acceptance -------------------------------------------------------------

/// What a user applying a bad TaskRun reads, whichever layer refuses it. The empty file list,
/// the blank file, the changed taskId and the lowered contextVersion are refused by the CRD's
/// schema and CEL rules, which the API server checks before it calls the webhook: these cases
/// would pass with the webhook's own rules deleted (`webhook/src/admission/tests.rs` covers
/// those; `control_plane.rs`, `the_schema_alone_rejects_bad_task_runs`, the schema without a
/// webhook). Only the duplicate is the webhook's alone.
#[tokio::test]
async fn bad_taskruns_are_rejected_with_the_cause_named() {
    let (cp, _) = setup().await;
    let ns = cp.namespace("wh-reject").await;

    // Refused by the schema (minItems).
    let mut empty = manifest("empty", 1, "billing");
    empty["spec"]["markdownFiles"] = json!([]);
    let err = refused(cp, &ns, &empty, &[]);
    assert!(
        err.contains("spec.markdownFiles") && err.contains("should have at least 1 items"),
        "{err}"
    );
    assert!(!err.contains("admission webhook"), "{err}");

    // Refused by a CEL rule, which names the file.
    let mut blank = manifest("blank", 2, "billing");
    add_file(&mut blank, "notes.md", " \n\t ");
    let err = refused(cp, &ns, &blank, &[]);
    assert!(
        err.contains("notes.md") && err.contains("whitespace"),
        "{err}"
    );
    assert!(
        !err.contains("task.md"),
        "only the blank file is named: {err}"
    );
    assert!(!err.contains("admission webhook"), "{err}");

    // Refused by the webhook: a second TaskRun for a task that already has one. The index
    // follows a watch, so wait until a dry run is refused before the real attempt (the dry
    // run changes nothing).
    applied(cp, &ns, &manifest("original", 7, "billing"), &[]);
    let duplicate = manifest("second-try", 7, "billing");
    wait_for("the index to see the original", TIMEOUT, || async {
        (!apply(cp, &ns, &duplicate, &["--dry-run=server"]).ok).then_some(())
    })
    .await;
    let err = refused(cp, &ns, &duplicate, &[]);
    for expected in [
        "(Conflict)",
        "admission webhook \"validate.taskruns.orchestrator.io\" denied the request",
        &format!("TaskRun {ns}/original already holds task 7 of service billing"),
        &format!("kubectl taskrun context add original -n {ns} -f FILE.md"),
        "kubectl delete taskrun original",
    ] {
        assert!(err.contains(expected), "{expected:?} missing in: {err}");
    }
    let api: Api<TaskRun> = Api::namespaced(cp.client().await, &ns);
    assert!(api.get_opt("second-try").await.expect("get").is_none());

    // Refused by the CRD's transition rules, whose messages name both values and the way out.
    let moved = manifest("original", 8, "billing");
    let err = refused(cp, &ns, &moved, &[]);
    for expected in [
        "spec.taskId: Forbidden: taskId is immutable (was 7, now 8)",
        "create a new TaskRun under another metadata.name",
    ] {
        assert!(err.contains(expected), "{expected:?} missing in: {err}");
    }
    assert!(!err.contains("admission webhook"), "{err}");

    let renamed = manifest("original", 7, "payments");
    let err = refused(cp, &ns, &renamed, &[]);
    for expected in [
        r#"spec.serviceName: Forbidden: serviceName is immutable (was "billing", now "payments")"#,
        "create a new TaskRun under another metadata.name",
    ] {
        assert!(err.contains(expected), "{expected:?} missing in: {err}");
    }
    assert!(!err.contains("admission webhook"), "{err}");

    let mut raised = manifest("original", 7, "billing");
    raised["spec"]["contextVersion"] = json!(3);
    add_file(&mut raised, "more.md", "More.");
    applied(cp, &ns, &raised, &[]);
    raised["spec"]["contextVersion"] = json!(2);
    let err = refused(cp, &ns, &raised, &[]);
    for expected in [
        "spec.contextVersion: Forbidden: contextVersion may not decrease (was 3, now 2)",
        "set it to 3 or more in your manifest (or, applying server-side, leave it out)",
    ] {
        assert!(err.contains(expected), "{expected:?} missing in: {err}");
    }
    assert!(!err.contains("admission webhook"), "{err}");
}

#[tokio::test]
async fn valid_taskruns_are_accepted_and_labelled() {
    let (cp, _) = setup().await;
    let ns = cp.namespace("wh-accept").await;
    let other_ns = cp.namespace("wh-accept-other").await;

    let mut first = manifest("first", 11, "billing");
    first["spec"]["agentName"] = json!("claude");
    first["metadata"]["labels"] = json!({ARGO_LABEL: "my-app"});
    applied(cp, &ns, &first, &[]);
    // The same identity in another namespace, and the same taskId for another service.
    applied(cp, &other_ns, &manifest("first", 11, "billing"), &[]);
    applied(cp, &ns, &manifest("payments-11", 11, "payments"), &[]);

    let l = labels(cp, &ns, "first").await;
    assert_eq!(
        project_labels(&l),
        BTreeMap::from([
            (TASK_ID, "11"),
            (SERVICE_NAME, "billing"),
            (CONTEXT_VERSION, "1"),
            (AGENT_NAME, "claude")
        ])
    );
    assert_eq!(l.get(ARGO_LABEL).map(String::as_str), Some("my-app"));
    let l = labels(cp, &other_ns, "first").await;
    assert_eq!(l.get(SERVICE_NAME).map(String::as_str), Some("billing"));
    assert!(!l.contains_key(AGENT_NAME));
    let l = labels(cp, &ns, "payments-11").await;
    assert_eq!(l.get(SERVICE_NAME).map(String::as_str), Some("payments"));
    assert_eq!(l.get(TASK_ID).map(String::as_str), Some("11"));

    // Selectable with -l, which is what the labels are for.
    let run = kubectl(
        cp,
        &[
            "get",
            "taskruns",
            "-A",
            "-l",
            "orchestrator.io/task-id=11",
            "-o",
            "name",
        ],
        None,
    );
    assert_eq!(run.stdout.lines().count(), 3, "{}", run.stdout);
}

/// A task can be deleted and created again under another name: a TaskRun being deleted (held
/// here by a finalizer) no longer holds its identity.
#[tokio::test]
async fn a_terminating_taskrun_does_not_block_recreation() {
    let (cp, _) = setup().await;
    let ns = cp.namespace("wh-recreate").await;
    let mut old = manifest("old-name", 71, "billing");
    old["metadata"]["finalizers"] = json!(["example.com/hold"]);
    applied(cp, &ns, &old, &[]);
    let new = manifest("new-name", 71, "billing");
    wait_for("the index to see old-name", TIMEOUT, || async {
        (!apply(cp, &ns, &new, &["--dry-run=server"]).ok).then_some(())
    })
    .await;
    let run = kubectl(
        cp,
        &["delete", "taskrun", "old-name", "-n", &ns, "--wait=false"],
        None,
    );
    assert!(run.ok, "{}", run.stderr);
    wait_for("the index to see old-name terminating", TIMEOUT, || async {
        apply(cp, &ns, &new, &["--dry-run=server"]).ok.then_some(())
    })
    .await;
    applied(cp, &ns, &new, &[]);
    let run = kubectl(
        cp,
        &[
            "patch",
            "taskrun",
            "old-name",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ],
        None,
    );
    assert!(run.ok, "{}", run.stderr);
}

/// Two creates of one task sent at once, as Argo CD applies a sync wave (in parallel): the
/// index learns of the first only from its watch, a moment after it is stored, yet the second
/// is refused as its duplicate, with a message that says what happened. (Without the note of
/// creates just allowed, both passed in 19 of 20 rounds here.)
#[tokio::test]
async fn of_two_creates_of_one_task_at_once_only_one_is_admitted() {
    let (cp, _) = setup().await;
    let ns = cp.namespace("wh-race").await;
    let api: Api<TaskRun> = Api::namespaced(cp.client().await, &ns);
    let taskrun = |name: String, task: i64| -> TaskRun {
        serde_json::from_value(manifest(&name, task, "race")).expect("a TaskRun")
    };
    let params = PostParams::default();
    for round in 0..20 {
        let task = 500 + round;
        let (a, b) = (
            taskrun(format!("a-{round}"), task),
            taskrun(format!("b-{round}"), task),
        );
        let (a, b) = tokio::join!(api.create(&params, &a), api.create(&params, &b));
        let refused = match (a, b) {
            (Ok(_), Err(e)) | (Err(e), Ok(_)) => e,
            (a, b) => panic!(
                "round {round}: not exactly one admitted: {:?} / {:?}",
                a.map(|t| t.name_any()),
                b.map(|t| t.name_any())
            ),
        };
        let kube::Error::Api(status) = refused else {
            panic!("round {round}: {refused:?}");
        };
        assert_eq!(status.code, 409, "{status:?}");
        assert!(
            status.message.contains("was allowed a moment ago")
                || status.message.contains("already holds"),
            "{}",
            status.message
        );
    }
}

/// A TaskRun near the size limits (JSON inflates newlines and quotes) is admitted on create
/// and on update, when the review carries both the object and the old one.
#[tokio::test]
async fn a_large_taskrun_is_admitted_on_create_and_update() {
    let (cp, _) = setup().await;
    let ns = cp.namespace("wh-large").await;
    let api: Api<TaskRun> = Api::namespaced(cp.client().await, &ns);
    let mut m = manifest("large", 61, "billing");
    let chunk = "line \"quoted\"\n".repeat(15_000); // 225 KB, about 280 KB as JSON
    m["spec"]["markdownFiles"] = json!([]);
    for i in 0..4 {
        add_file(&mut m, &format!("part-{i}.md"), &chunk);
    }
    let tr: TaskRun = serde_json::from_value(m).expect("TaskRun");
    let created = api
        .create(&PostParams::default(), &tr)
        .await
        .expect("create");
    let mut next = created.clone();
    next.spec.context_version = 2;
    next.spec.markdown_files.push(taskrun::MarkdownFile {
        filename: "more.md".into(),
        content: "More context.".into(),
        file_type: None,
    });
    let updated = api
        .replace("large", &PostParams::default(), &next)
        .await
        .expect("update");
    let labels = updated.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get(CONTEXT_VERSION).map(String::as_str), Some("2"));
}

/// Markdown within the raw bound that the API server could not store (each '<' takes six bytes
/// in the JSON it stores): without the webhook the API server answers a bare 500 from its etcd
/// client; with it, a 422 that says why and what to do.
#[tokio::test]
async fn markdown_too_large_as_stored_is_refused_with_the_reason() {
    let (cp, _) = setup().await;
    let ns = cp.namespace("wh-stored").await;
    let api: Api<TaskRun> = Api::namespaced(cp.client().await, &ns);
    let mut m = manifest("angles", 62, "billing");
    m["spec"]["markdownFiles"] = json!([]);
    for i in 0..4 {
        add_file(&mut m, &format!("part-{i}.md"), &"<".repeat(240_000));
    }
    let tr: TaskRun = serde_json::from_value(m).expect("TaskRun");
    let err = api
        .create(&PostParams::default(), &tr)
        .await
        .expect_err("refused");
    let kube::Error::Api(status) = err else {
        panic!("not an API error: {err}");
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains("as the API server stores them"),
        "{}",
        status.message
    );
}

/// The examples as `make run` applies them (server-side) are admitted and labelled: a change
/// to the CRD or the rules that the examples no longer meet fails here, not in a user's hands.
#[tokio::test]
async fn the_examples_are_admitted_as_make_run_applies_them() {
    let (cp, _) = setup().await;
    let ns = cp.namespace("wh-examples").await;
    let examples = taskrun_tests::repo_root().join("examples");
    let dir = examples.to_string_lossy();
    let run = kubectl(cp, &["apply", "--server-side", "-n", &ns, "-f", &dir], None);
    assert!(
        run.ok,
        "kubectl apply --server-side -f examples/: {}",
        run.stderr
    );
    let api: Api<TaskRun> = Api::namespaced(cp.client().await, &ns);
    let names: BTreeSet<String> = api
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .iter()
        .map(|t| t.name_any())
        .collect();
    let files = std::fs::read_dir(&examples).expect("examples/").count();
    assert_eq!(names.len(), files, "one TaskRun per example: {names:?}");
    for name in &names {
        assert!(
            labels(cp, &ns, name).await.contains_key(TASK_ID),
            "{name} was not labelled"
        );
    }
}

// ---- GitOps --------------------------------------------------------------------------------

#[tokio::test]
async fn gitops_reapplies_are_accepted_and_leave_no_diff() {
    let (cp, _) = setup().await;
    let ns = cp.namespace("wh-gitops").await;
    let mut m = manifest("synced", 21, "billing");
    m["metadata"]["labels"] = json!({ARGO_LABEL: "argo-app"});

    applied(cp, &ns, &m, &[]);
    let again = applied(cp, &ns, &m, &[]);
    assert!(again.stdout.contains("unchanged"), "{}", again.stdout);
    for manager in ["argocd-controller", "kustomize-controller"] {
        applied(
            cp,
            &ns,
            &m,
            &["--server-side", &format!("--field-manager={manager}")],
        );
    }
    applied(cp, &ns, &m, &["--dry-run=server"]);
    applied(
        cp,
        &ns,
        &m,
        &[
            "--server-side",
            "--field-manager=argocd-controller",
            "--dry-run=server",
        ],
    );

    let diff = kubectl(cp, &["diff", "-n", &ns, "-f", "-"], Some(&m));
    assert!(
        diff.ok,
        "kubectl diff shows a difference:\n{}{}",
        diff.stdout, diff.stderr
    );
    assert!(diff.stdout.is_empty(), "{}", diff.stdout);

    let api: Api<TaskRun> = Api::namespaced(cp.client().await, &ns);
    let tr = api.get("synced").await.expect("get");
    assert_eq!(
        tr.metadata.generation,
        Some(1),
        "re-applies changed the spec"
    );
    // The finalizer stamped at creation (no controller runs here) survives every re-apply
    // of a manifest that does not name it.
    assert_eq!(tr.finalizers(), [taskrun::FINALIZER]);
    let l = tr.metadata.labels.unwrap_or_default();
    assert_eq!(l.get(ARGO_LABEL).map(String::as_str), Some("argo-app"));
    assert_eq!(l.get(TASK_ID).map(String::as_str), Some("21"));
}

#[tokio::test]
async fn stamped_labels_come_back_and_other_labels_are_left_alone() {
    let (cp, _) = setup().await;
    let ns = cp.namespace("wh-labels").await;
    let mut m = manifest("labelled", 31, "billing");
    m["spec"]["agentName"] = json!("claude");
    m["metadata"]["labels"] = json!({ARGO_LABEL: "argo-app"});
    applied(cp, &ns, &m, &[]);
    let label = |args: &[&str]| {
        let mut all = vec!["label", "-n", &ns, "taskrun", "labelled"];
        all.extend_from_slice(args);
        let run = kubectl(cp, &all, None);
        assert!(run.ok, "kubectl label {args:?}: {}", run.stderr);
        run.stderr
    };

    // Removing or changing a stamped label is an update, and the update stamps it again.
    label(&[&format!("{TASK_ID}-")]);
    assert_eq!(
        labels(cp, &ns, "labelled")
            .await
            .get(TASK_ID)
            .map(String::as_str),
        Some("31")
    );
    // Changing one is undone, and kubectl prints why.
    let said = label(&["--overwrite", &format!("{CONTEXT_VERSION}=99")]);
    assert!(
        said.contains(&format!(
            "Warning: label {CONTEXT_VERSION} is set by the webhook from the spec"
        )),
        "{said}"
    );
    assert_eq!(
        labels(cp, &ns, "labelled")
            .await
            .get(CONTEXT_VERSION)
            .map(String::as_str),
        Some("1")
    );

    // Argo CD's tracking label is the user's: changed and removed as they say.
    let said = label(&["--overwrite", &format!("{ARGO_LABEL}=other-app")]);
    assert!(!said.contains("Warning"), "{said}");
    assert_eq!(
        labels(cp, &ns, "labelled")
            .await
            .get(ARGO_LABEL)
            .map(String::as_str),
        Some("other-app")
    );
    label(&[&format!("{ARGO_LABEL}-")]);
    assert!(!labels(cp, &ns, "labelled").await.contains_key(ARGO_LABEL));

    // Dropping agentName drops its label; raising contextVersion moves its label (and,
    // with no new file, warns).
    let mut next = manifest("labelled", 31, "billing");
    next["spec"]["contextVersion"] = json!(2);
    let run = applied(cp, &ns, &next, &[]);
    assert!(
        run.stderr
            .contains("Warning: contextVersion raised to 2 without new or changed markdown files"),
        "{}",
        run.stderr
    );
    let l = labels(cp, &ns, "labelled").await;
    assert!(!l.contains_key(AGENT_NAME), "{l:?}");
    assert_eq!(l.get(CONTEXT_VERSION).map(String::as_str), Some("2"));
}

// ---- certificate rotation ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_load_fails_no_request() {
    let (cp, webhook) = setup().await;
    let ns = cp.namespace("wh-rotate").await;
    let api: Api<TaskRun> = Api::namespaced(cp.client().await, &ns);
    let probe: TaskRun =
        serde_json::from_value(manifest("rotation-probe", 41, "billing")).expect("TaskRun");
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let (through_api, direct) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let last_cert = Arc::new(Mutex::new(Vec::<u8>::new()));

    // Through the API server (its own connections to the webhook, both webhooks per call).
    let api_load = tokio::spawn({
        let (stop, failures, count) = (stop.clone(), failures.clone(), through_api.clone());
        async move {
            let dry_run = PostParams {
                dry_run: true,
                ..PostParams::default()
            };
            while !stop.load(Ordering::Relaxed) {
                match api.create(&dry_run, &probe).await {
                    Ok(tr)
                        if tr
                            .metadata
                            .labels
                            .as_ref()
                            .is_some_and(|l| l.contains_key(TASK_ID)) =>
                    {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => failures.lock().expect("lock").push("not labelled".into()),
                    Err(e) => failures
                        .lock()
                        .expect("lock")
                        .push(format!("via API server: {e}")),
                }
            }
        }
    });
    // Straight to the webhook, a new connection per request, noting the certificate served.
    let direct_load = tokio::spawn({
        let (stop, failures, count, last_cert) = (
            stop.clone(),
            failures.clone(),
            direct.clone(),
            last_cert.clone(),
        );
        let body = serde_json::to_vec(&review(
            "CREATE",
            "taskruns",
            manifest("direct", 42, "billing"),
        ))
        .expect("json");
        async move {
            while !stop.load(Ordering::Relaxed) {
                match send(webhook, &post("/validate", "application/json", &body)).await {
                    Ok(r) if r.status == 200 && r.json()["response"]["allowed"] == true => {
                        *last_cert.lock().expect("lock") = r.peer_cert;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures
                        .lock()
                        .expect("lock")
                        .push(format!("direct: {} {}", r.status, r.body)),
                    Err(e) => failures.lock().expect("lock").push(format!("direct: {e}")),
                }
            }
        }
    });

    let reloads_before = metric(webhook, "taskrun_webhook_certificate_reloads_total");
    for round in 1..=3 {
        let (a, d) = (
            through_api.load(Ordering::Relaxed),
            direct.load(Ordering::Relaxed),
        );
        wait_for("requests to flow", TIMEOUT, || async {
            (through_api.load(Ordering::Relaxed) >= a + 5
                && direct.load(Ordering::Relaxed) >= d + 5)
                .then_some(())
        })
        .await;
        let old = last_cert.lock().expect("lock").clone();
        let pair = webhook.rotate();
        let new = CertificateDer::from_pem_slice(pair.cert_pem.as_bytes())
            .expect("pem")
            .to_vec();
        assert_ne!(old, new);
        wait_for(
            &format!("new connections to get certificate #{round}"),
            TIMEOUT,
            || async { (*last_cert.lock().expect("lock") == new).then_some(()) },
        )
        .await;
    }
    let (a, d) = (
        through_api.load(Ordering::Relaxed),
        direct.load(Ordering::Relaxed),
    );
    wait_for("requests after the last rotation", TIMEOUT, || async {
        (through_api.load(Ordering::Relaxed) >= a + 5 && direct.load(Ordering::Relaxed) >= d + 5)
            .then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    api_load.await.expect("api load");
    direct_load.await.expect("direct load");

    let failures = failures.lock().expect("lock");
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(metric(webhook, "taskrun_webhook_certificate_reloads_total") >= reloads_before + 3.0);
    assert_eq!(
        webhook.metric("taskrun_webhook_certificate_reload_failures_total"),
        Some(0.0)
    );
    eprintln!(
        "rotation: {} requests through the API server, {} direct, 0 failed",
        through_api.load(Ordering::Relaxed),
        direct.load(Ordering::Relaxed)
    );
}

// ---- hostile clients -----------------------------------------------------------------------

/// A webhook of its own with short timeouts and a small body limit (not registered, so its
/// abuse cannot disturb the other tests).
async fn hostile_target(cp: &ControlPlane) -> Webhook {
    Webhook::start_with(
        cp,
        &[
            "--handshake-timeout=2s",
            "--header-read-timeout=2s",
            "--body-read-timeout=2s",
            "--idle-timeout=8s",
            "--max-body-bytes=65536",
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_clean_errors_and_readyz_keeps_answering() {
    let cp = ControlPlane::shared();
    let webhook = hostile_target(cp).await;
    let w = &webhook;

    // Meanwhile, a kept-alive connection as the API server pools them (HTTP/1.1 for a
    // Service-referenced webhook, idle for up to 90 s): silent for longer than the header read
    // timeout but not the idle timeout, it still takes the next review.
    let pooled = tokio::spawn({
        let (port, ca) = (w.port(), w.ca_pem());
        let body = serde_json::to_vec(&review(
            "CREATE",
            "taskruns",
            manifest("kept-alive", 9055, "billing"),
        ))
        .expect("json");
        async move {
            let mut s = tls_to(port, &ca, &[b"http/1.1"]).await.expect("handshake");
            assert!(
                !allowed_on(&mut s, &body).await,
                "the first answer closed the connection"
            );
            // --header-read-timeout=2s < 4 s < --idle-timeout=8s (4 s of room for a machine
            // busy with the abuse below).
            tokio::time::sleep(Duration::from_secs(4)).await;
            assert!(
                !allowed_on(&mut s, &body).await,
                "the second answer closed the connection"
            );
        }
    });

    let r = send(
        w,
        &post("/validate", "application/json", b"this is not json"),
    )
    .await
    .expect("answer");
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["kind"], "Status");
    assert!(
        r.body
            .contains("not an admission.k8s.io/v1 AdmissionReview"),
        "{}",
        r.body
    );

    let r = send(w, &post("/validate", "application/json", b""))
        .await
        .expect("answer");
    assert_eq!(r.status, 400, "{}", r.body);

    let r = send(w, &post("/mutate", "text/plain", b"{}"))
        .await
        .expect("answer");
    assert_eq!(r.status, 415, "{}", r.body);
    // Refused before its review was read, and logged at warn like a review that cannot be
    // judged: the request counter's result="error" has a line to go with it.
    wait_for(
        "the 415 in the webhook's log",
        Duration::from_secs(10),
        || async {
            let log = std::fs::read_to_string(w.log_path()).unwrap_or_default();
            log.lines()
                .any(|l| {
                    l.contains("WARN")
                        && l.contains("bad admission request")
                        && l.contains("status=415")
                })
                .then_some(())
        },
    )
    .await;

    let pods = serde_json::to_vec(&review(
        "CREATE",
        "pods",
        json!({"metadata": {"name": "p"}}),
    ))
    .expect("json");
    let r = send(w, &post("/validate", "application/json", &pods))
        .await
        .expect("answer");
    assert_eq!(r.status, 200, "{}", r.body);
    let response = &r.json()["response"];
    assert_eq!(response["allowed"], false);
    assert_eq!(response["uid"], "test-uid");
    assert_eq!(response["status"]["code"], 400);
    assert!(
        response["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("admits only taskruns")),
        "{}",
        r.body
    );

    let nested = format!(r#"{{"x":{}{}}}"#, "[".repeat(20_000), "]".repeat(20_000));
    let r = send(w, &post("/validate", "application/json", nested.as_bytes()))
        .await
        .expect("answer");
    // Skipped unread (it is no field of a review), without recursion: a clean 400.
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body
            .contains("not an admission.k8s.io/v1 AdmissionReview"),
        "{}",
        r.body
    );

    let r = send(
        w,
        &post("/mutate", "application/json", &vec![b' '; 200_000]),
    )
    .await
    .expect("answer");
    assert_eq!(r.status, 413, "{}", r.body);

    // Far over the limit, declared: answered 413 (or cut off) without reading it all.
    let mut huge = format!(
        "POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        512 * 1024 * 1024
    )
    .into_bytes();
    huge.extend(vec![b'{'; 1024 * 1024]);
    // Cut off means the connection closed at once: not the client's 15 s read timeout.
    let cut_off = |started: Instant, e: std::io::Error| {
        assert!(
            started.elapsed() < Duration::from_secs(10) && !e.to_string().contains("Elapsed"),
            "neither answered nor cut off after {:?}: {e}",
            started.elapsed()
        );
    };
    let started = Instant::now();
    match send(w, &huge).await {
        Ok(r) => assert_eq!(r.status, 413, "{}", r.body),
        Err(e) => cut_off(started, e),
    }
    // Over the limit, chunked (no length to refuse up front): cut at the limit.
    let mut chunked = b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..40 {
        chunked.extend(format!("{:x}\r\n", 4096).as_bytes());
        chunked.extend(vec![b' '; 4096]);
        chunked.extend(b"\r\n");
    }
    let started = Instant::now();
    match send(w, &chunked).await {
        Ok(r) => assert_eq!(r.status, 413, "{}", r.body),
        Err(e) => cut_off(started, e),
    }

    // A body that stops arriving: 408 after the body timeout.
    let started = Instant::now();
    let r = send(
        w,
        b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"apiVersion\"",
    )
    .await
    .expect("answer");
    assert_eq!(r.status, 408, "{}", r.body);
    assert!(
        r.body.contains("within 2s (13 of 1000 bytes came)"),
        "{}",
        r.body
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // Many slow and idle connections at once.
    let mut idle_tcp = Vec::new();
    for _ in 0..200 {
        idle_tcp.push(
            TcpStream::connect(("127.0.0.1", w.port()))
                .await
                .expect("connect"),
        );
    }
    let mut slow_headers = Vec::new();
    for _ in 0..20 {
        let mut s = tls(w).await.expect("handshake");
        s.write_all(b"POST /validate HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        s.flush().await.expect("flush");
        slow_headers.push(s);
    }
    let mut silent_tls = Vec::new();
    for _ in 0..20 {
        silent_tls.push(tls(w).await.expect("handshake"));
    }
    // The server keeps answering while they hang on.
    for _ in 0..5 {
        let started = Instant::now();
        let r = send(
            w,
            b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("readyz");
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "readyz took {:?}",
            started.elapsed()
        );
    }
    // ...and cuts every one of them off after its timeout (the slow headers and the silent
    // TLS connections after the idle timeout, 8 s).
    let started = Instant::now();
    for s in &mut idle_tcp {
        assert_closed(s).await;
    }
    for s in &mut slow_headers {
        assert_closed(s).await;
    }
    for s in &mut silent_tls {
        assert_closed(s).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );

    assert!(w.is_running());
    let r = send(
        w,
        b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("readyz");
    assert_eq!(r.status, 200);
    assert!(metric(w, "taskrun_webhook_tls_handshake_failures_total") >= 200.0);
    pooled.await.expect("the pooled connection's reviews");
}

/// The API server calls admission webhooks over HTTP/1.1 only, so only HTTP/1.1 is offered: a
/// client that asks for HTTP/2 alone is refused at the handshake, one that offers both gets
/// HTTP/1.1. A body of the largest size allowed arrives whole.
#[tokio::test]
async fn only_http1_is_offered_and_the_largest_body_still_arrives() {
    let cp = ControlPlane::shared();
    let webhook = Webhook::start(cp).await;
    let ca = webhook.ca_pem();

    let refused = tls_to(webhook.port(), &ca, &[b"h2"]).await;
    let error = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("NoApplicationProtocol"), "{error:?}");
    let both = tls_to(webhook.port(), &ca, &[b"h2", b"http/1.1"])
        .await
        .expect("handshake");
    assert_eq!(both.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    drop(both);

    // Exactly --max-body-bytes (8 MiB): a small review padded with whitespace.
    let mut body = serde_json::to_vec(&review(
        "CREATE",
        "taskruns",
        manifest("largest-body", 9056, "billing"),
    ))
    .expect("json");
    body.resize(8 * 1024 * 1024, b' ');
    let started = Instant::now();
    let r = send(&webhook, &post("/validate", "application/json", &body))
        .await
        .expect("answer");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["response"]["allowed"], true, "{}", r.body);
    eprintln!("8 MiB over HTTP/1.1: {:?}", started.elapsed());
}

/// Reviews of the largest size, as many at once as connections allow, each built to make
/// reading it hold the most: one file whose content is nearly the whole body, and an oldObject
/// whose spec is not a spec, so the body is read a second time with the specs kept raw. The
/// webhook stays within its Deployment's memory limit (`manifests/base/webhook.yaml`).
#[tokio::test]
async fn the_largest_reviews_at_once_stay_within_the_memory_limit() {
    const AT_ONCE: usize = 8;
    const ROUNDS: usize = 3;
    let cp = ControlPlane::shared();
    // Reviews beyond those held at once wait for room, up to the body read timeout: a loaded
    // machine gets more than the default 10 s.
    let webhook = Webhook::start_with(cp, &["--body-read-timeout=60s"]).await;
    let max_body = 8 * 1024 * 1024;
    let mut review = review(
        "UPDATE",
        "taskruns",
        manifest("largest-read", 9057, "billing"),
    );
    review["request"]["object"]["spec"]["markdownFiles"][0]["content"] = json!("");
    review["request"]["oldObject"] = json!({"metadata": {"name": "largest-read"}, "spec": 5});
    let room = max_body - serde_json::to_vec(&review).expect("json").len();
    review["request"]["object"]["spec"]["markdownFiles"][0]["content"] = json!("x".repeat(room));
    let body = serde_json::to_vec(&review).expect("json");
    assert_eq!(body.len(), max_body);
    let request = Arc::new(post("/validate", "application/json", &body));

    for _ in 0..ROUNDS {
        let answers = futures::future::join_all((0..AT_ONCE).map(|_| {
            let request = request.clone();
            let webhook = &webhook;
            async move { send(webhook, &request).await }
        }))
        .await;
        for answer in answers {
            let r = answer.expect("an answer");
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.json()["response"]["allowed"], false, "{}", r.body);
        }
    }
    let peak = taskrun_tests::memory_kib(webhook.pid(), "VmHWM").expect("VmHWM");
    let limit = taskrun_tests::memory_limit_kib("webhook.yaml");
    eprintln!("peak RSS reading {AT_ONCE} of the largest reviews at once: {peak} KiB");
    assert!(
        peak < limit,
        "the webhook peaked at {peak} KiB reading {AT_ONCE} of the largest reviews at once; its limit is {limit} KiB"
    );
}

/// Reads until the server closes the connection; fails if it stays open past 10 s.
async fn assert_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) {
    assert!(
        taskrun_tests::closed_within(s, Duration::from_secs(10)).await,
        "the server left an idle connection open"
    );
}

/// Two requests in flight, each on its own connection. On a machine of two or more cores the
/// webhook serves them on its connection threads (`webhook/src/workers.rs`) rather than its
/// main runtime, which handles the signal: both are finished.
#[tokio::test]
async fn sigterm_finishes_the_requests_in_flight_then_exits() {
    let cp = ControlPlane::shared();
    let webhook = Webhook::start_with(cp, &["--body-read-timeout=20s"]).await;
    let in_flight = || metric(&webhook, "taskrun_webhook_requests_in_flight") as i64;
    // A scrape may count itself.
    let idle = in_flight();
    let body = serde_json::to_vec(&review(
        "CREATE",
        "taskruns",
        manifest("inflight", 51, "billing"),
    ))
    .expect("json");
    let head = format!(
        "POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut connections = Vec::new();
    for _ in 0..2 {
        let mut s = tls(&webhook).await.expect("handshake");
        s.write_all(head.as_bytes()).await.expect("write");
        s.write_all(&body[..10]).await.expect("write");
        s.flush().await.expect("flush");
        connections.push(s);
    }
    // Only a request the server has begun is in flight: on a loaded machine the headers may
    // not have been read yet when SIGTERM arrives, and an idle connection is closed at once.
    wait_for("both requests to be in flight", TIMEOUT, || async {
        (in_flight() >= idle + 2).then_some(())
    })
    .await;

    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(webhook.pid() as libc::pid_t, libc::SIGTERM) };
    wait_for("the listener to close", TIMEOUT, || async {
        TcpStream::connect(("127.0.0.1", webhook.port()))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    for mut s in connections {
        s.write_all(&body[10..]).await.expect("write the rest");
        s.flush().await.expect("flush");
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        let r = Response::parse(&raw, Vec::new()).expect("a response");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["response"]["allowed"], true, "{}", r.body);
    }
    wait_for("the webhook to exit", TIMEOUT, || async {
        (!webhook.is_running()).then_some(())
    })
    .await;
}

/// A certificate read that never returns (a hung mount; here a FIFO nobody writes to) holds a
/// thread of the blocking pool: SIGTERM still ends the process, a few seconds after the server
/// has stopped, instead of never.
#[tokio::test]
async fn sigterm_exits_while_a_certificate_read_is_stalled() {
    let cp = ControlPlane::shared();
    let webhook = Webhook::start_with(cp, &["--cert-poll-interval=1s"]).await;
    let cert = webhook.cert_dir().join("tls.crt");
    std::fs::remove_file(&cert).expect("rm tls.crt");
    let made = Command::new("mkfifo").arg(&cert).status().expect("mkfifo");
    assert!(made.success(), "mkfifo failed");
    // The directory watch, or the poll a second later, starts a read that blocks in open(2).
    // /proc shows it: where the thread sleeps (wchan), or the system call it is in.
    const OPENAT: &str = if cfg!(target_arch = "aarch64") {
        "56"
    } else {
        "257"
    };
    let pid = webhook.pid();
    let started = Instant::now();
    let blocked = loop {
        let blocked = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|task| {
                let read = |f: &str| std::fs::read_to_string(task.path().join(f));
                read("wchan").is_ok_and(|w| w.contains("wait_for_partner"))
                    || read("syscall").is_ok_and(|s| s.split(' ').next() == Some(OPENAT))
            });
        if blocked || started.elapsed() > Duration::from_secs(5) {
            break blocked;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        blocked,
        "no thread of the webhook was seen blocked opening the FIFO: nothing stalled"
    );
    assert!(webhook.is_running());

    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let signalled = Instant::now();
    wait_for("the webhook to exit", TIMEOUT, || async {
        (!webhook.is_running()).then_some(())
    })
    .await;
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
}

#[tokio::test]
async fn beyond_max_connections_a_connection_waits_and_probes_still_answer() {
    let cp = ControlPlane::shared();
    let webhook = Webhook::start_with(cp, &["--max-connections=1"]).await;
    let first = tls(&webhook).await.expect("the first connection");
    // The second waits in the listen backlog: connected, but no handshake until a slot frees.
    let second = tokio::spawn({
        let (port, ca) = (webhook.port(), webhook.ca_pem());
        async move { tls_to(port, &ca, &[b"http/1.1"]).await.map(drop) }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !second.is_finished(),
        "the second connection was not kept waiting: {:?}",
        second.await
    );
    assert_eq!(
        webhook.get_plain("/healthz").map(|(code, _)| code),
        Some(200),
        "admission connections crowd out the probes"
    );
    drop(first);
    let second = tokio::time::timeout(TIMEOUT, second)
        .await
        .expect("the second connection is served once the first closes")
        .expect("task");
    second.expect("handshake");
}

/// Connections to the probe port that send nothing cannot keep the kubelet's probes out: with
/// all 64 slots held, a new connection closes the longest idle one (they used to wait in the
/// listen backlog until the header read timeout, 10 s, freed a slot, past a probe's 1 s).
#[tokio::test]
async fn idle_connections_to_the_probe_port_do_not_keep_probes_out() {
    let cp = ControlPlane::shared();
    // Idle connections are never timed out here: only closing the longest idle for a new one
    // lets a probe in (within get_plain's 5 s read timeout).
    let webhook = Webhook::start_with(cp, &["--header-read-timeout=600s"]).await;
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(
            TcpStream::connect(webhook.metrics_addr())
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let answer = webhook.get_plain("/readyz");
        assert_eq!(answer.map(|(code, _)| code), Some(200));
    }
}

#[tokio::test]
async fn after_sigterm_it_answers_while_not_ready_until_a_second_signal() {
    let cp = ControlPlane::shared();
    // Longer than the test: only the second signal can end it.
    let webhook = Webhook::start_with(cp, &["--shutdown-delay=600s"]).await;
    let body = |name: &str, task_id: i64| {
        serde_json::to_vec(&review(
            "CREATE",
            "taskruns",
            manifest(name, task_id, "billing"),
        ))
        .expect("json")
    };
    // A keep-alive connection opened before the signal, as the API server pools them.
    let mut pooled = tls(&webhook).await.expect("handshake");
    assert!(
        !allowed_on(&mut pooled, &body("pooled-before", 53)).await,
        "an answer before the signal closed its connection"
    );

    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(webhook.pid() as libc::pid_t, libc::SIGTERM) };
    wait_for("/readyz to report shutting down", TIMEOUT, || async {
        webhook
            .get_plain("/readyz")
            .filter(|(code, body)| *code == 503 && body.contains("shutting down"))
    })
    .await;
    // The Service still routes here until its endpoints are updated: a new connection is
    // accepted and its review answered.
    let r = send(
        &webhook,
        &post("/validate", "application/json", &body("draining", 52)),
    )
    .await
    .expect("an answer while draining");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["response"]["allowed"], true, "{}", r.body);
    // The pooled connection gets its answer, and is closed after it, so that the API server's
    // next review goes to a pod still ready.
    assert!(
        allowed_on(&mut pooled, &body("pooled-after", 54)).await,
        "a connection pooled before the signal was left open"
    );
    assert_closed(&mut pooled).await;
    assert!(webhook.is_running());

    // SAFETY: as above.
    unsafe { libc::kill(webhook.pid() as libc::pid_t, libc::SIGTERM) };
    wait_for("the webhook to exit", TIMEOUT, || async {
        (!webhook.is_running()).then_some(())
    })
    .await;
}

// ---- raw HTTPS client ----------------------------------------------------------------------

fn review(operation: &str, resource: &str, object: Value) -> Value {
    let group = if resource == "taskruns" {
        "orchestrator.io"
    } else {
        ""
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "test-uid",
            "kind": {"group": group, "version": "v1", "kind": "Whatever"},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "name": object["metadata"]["name"], "namespace": "default",
            "operation": operation,
            "userInfo": {"username": "test"},
            "object": object,
            "oldObject": null,
            "dryRun": false
        }
    })
}

fn post(path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

struct Response {
    status: u16,
    body: String,
    peer_cert: Vec<u8>,
}

impl Response {
    fn parse(raw: &[u8], peer_cert: Vec<u8>) -> Option<Response> {
        let text = String::from_utf8_lossy(raw);
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n")?.1.to_owned();
        Some(Response {
            status,
            body,
            peer_cert,
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

async fn tls(w: &Webhook) -> std::io::Result<TlsStream<TcpStream>> {
    tls_to(w.port(), &w.ca_pem(), &[b"http/1.1"]).await
}

/// A TLS connection to the webhook on `port`, whose CA is `ca_pem`, offering `protocols` by
/// ALPN.
async fn tls_to(
    port: u16,
    ca_pem: &str,
    protocols: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(std::io::Error::other)?)
        .map_err(std::io::Error::other)?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    // As the API server's client does (Go sets it on every TCP connection).
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("127.0.0.1").map_err(std::io::Error::other)?;
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// One request on a new HTTPS connection (HTTP/1.1); the response and the certificate served.
async fn send(w: &Webhook, request: &[u8]) -> std::io::Result<Response> {
    let mut s = tls(w).await?;
    let peer_cert = s
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    // A server that refuses early may close before everything is written; read what it said.
    // The flush sends what TLS still holds: write_all may return with the last records
    // buffered in the TLS session (the socket was full), and nothing else would send them.
    let written = match s.write_all(request).await {
        Ok(()) => s.flush().await,
        failed => failed,
    };
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut raw)).await;
    match Response::parse(&raw, peer_cert) {
        Some(r) => Ok(r),
        None => Err(std::io::Error::other(format!(
            "no response (write: {written:?}, read: {read:?}, {} bytes)",
            raw.len()
        ))),
    }
}

/// Sends a review on a keep-alive connection and checks that it is allowed; whether the
/// answer closes the connection.
async fn allowed_on<S>(s: &mut S, body: &[u8]) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let head = format!(
        "POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
    s.flush().await.expect("flush");
    let (head, body) = read_response(s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("\"allowed\":true"), "{body}");
    head.to_ascii_lowercase().contains("connection: close")
}

/// One response on a connection that may stay open: the head, and the body (by its
/// Content-Length).
async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> (String, String) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if raw.len() >= end + 4 + length {
                    let body = String::from_utf8_lossy(&raw[end + 4..end + 4 + length]);
                    return (head, body.into_owned());
                }
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => panic!("closed before a whole response: {raw:?}"),
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.expect("a response in time")
}

fn metric(w: &Webhook, name: &str) -> f64 {
    w.metric(name).unwrap_or(0.0)
}
