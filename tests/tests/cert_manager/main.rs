//! cert-manager for real (issue 7): cert-manager's own controller and cainjector, built from
//! the pinned Go module by `tests/certmanager/build.sh`, run against the test control plane
//! with the module's CRDs. The cert-manager overlay's Issuers and Certificates issue the
//! webhook's serving Secret, cainjector fills the caBundle of both webhook configurations,
//! and `taskrun-webhook`, serving the Secret's files from a directory written the way the
//! kubelet projects a Secret volume, admits `kubectl apply`. A forced renewal (what
//! `cmctl renew` does) rotates the certificate while two clients send admission requests
//! without pause: none of them may fail.

mod certificates;
mod clients;
mod install;
mod projector;
mod tls;

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::{Value, json};
use taskrun_tests::{ControlPlane, wait_for};

use certificates::{ca_bundles_are, certificate_revision, first_der, force_renewal, secret_files};
use clients::{admit_on_fresh_connections, admit_through_apiserver, both_send_more};
use install::{Procs, build_cert_manager, overlay_objects};
use projector::Projector;
use tls::{LoopbackTls, hex, serial};

/// The overlay's namespace (its kustomization sets it on every namespaced resource).
const SYSTEM_NS: &str = "taskrun-system";
const SERVING: &str = "taskrun-webhook-tls";
/// The CA Certificate and its Secret.
const CA: &str = "taskrun-ca";
const WEBHOOK_CONFIG: &str = "taskrun-webhook";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_manager_issues_injects_and_rotates_the_webhook_certificate() {
    let cm_dir = build_cert_manager();
    let cp = ControlPlane::shared();
    let client = cp.client().await;

    // The CRDs shipped in the pinned cert-manager module.
    kubectl(
        cp,
        &[
            "apply",
            "--server-side",
            "-f",
            &path_str(&cm_dir.join("crds")),
        ],
    );
    kubectl(
        cp,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/certificates.cert-manager.io",
            "crd/certificaterequests.cert-manager.io",
            "crd/issuers.cert-manager.io",
            "crd/clusterissuers.cert-manager.io",
        ],
    );
    let mut procs = Procs::default();
    procs.start_go(cp, &cm_dir, "cert-manager-controller");
    procs.start_go(cp, &cm_dir, "cert-manager-cainjector");

    // The overlay's certificate resources and webhook configurations, pointed at loopback.
    let webhook_addr = taskrun_tests::free_addr();
    let objects = overlay_objects(cp, webhook_addr);
    let kinds: Vec<String> = objects
        .iter()
        .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
        .collect();
    assert_eq!(
        objects.len(),
        7,
        "expected namespace, 2 Issuers, 2 Certificates and 2 webhook configurations: {kinds:?}"
    );
    apply_json(
        cp,
        &json!({"apiVersion": "v1", "kind": "List", "items": objects}),
    );

    // The serving Secret, issued by the CA Issuer (whose CA the self-signed Issuer issued).
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NS);
    let issued = wait_for("the serving Secret", Duration::from_secs(120), || {
        procs.check();
        let secrets = secrets.clone();
        async move {
            let files = secret_files(&secrets.get_opt(SERVING).await.ok()??);
            ["tls.crt", "tls.key", "ca.crt"]
                .iter()
                .all(|k| files.get(*k).is_some_and(|v| !v.is_empty()))
                .then_some(files)
        }
    })
    .await;
    let ca_pem = issued["ca.crt"].clone();
    let ca_secret = secrets
        .get(CA)
        .await
        .unwrap_or_else(|e| panic!("the CA Secret {CA}: {e}"));
    assert_eq!(
        secret_files(&ca_secret).get("tls.crt"),
        Some(&ca_pem),
        "the serving Secret's ca.crt is the CA Certificate's certificate"
    );
    let first_cert = first_der(&issued["tls.crt"]);

    // cainjector: the CA in every webhook of both configurations.
    wait_for(
        "caBundle injected into both webhook configurations",
        Duration::from_secs(60),
        || {
            procs.check();
            ca_bundles_are(client.clone(), ca_pem.clone())
        },
    )
    .await;

    // The webhook, serving the Secret's files from a kubelet-style projected directory.
    let cert_dir = taskrun_tests::work_dir().join("webhook-certs");
    let projector = Projector::start(secrets.clone(), cert_dir.clone(), issued.clone());
    procs.start_webhook(cp, webhook_addr, &cert_dir);
    let tls = Arc::new(LoopbackTls::new(webhook_addr, &ca_pem));
    wait_for("the webhook to be ready", Duration::from_secs(60), || {
        procs.check();
        let tls = tls.clone();
        async move { tls.get_ok("/readyz").await.then_some(()) }
    })
    .await;
    assert_eq!(tls.served_leaf().await.ok(), Some(first_cert.clone()));

    // kubectl apply goes through both webhooks: the labels prove the mutation ran.
    let ns = cp.namespace("cert-manager-apply").await;
    let applied = kubectl_stdin(
        cp,
        &["apply", "-n", &ns, "-o", "json", "-f", "-"],
        &task_run("applied", 1).to_string(),
    );
    let applied: Value = serde_json::from_str(&applied)
        .unwrap_or_else(|e| panic!("kubectl apply -o json printed no JSON ({e}): {applied}"));
    assert_eq!(
        applied["metadata"]["labels"]["orchestrator.io/task-id"], "1",
        "the mutating webhook stamps the labels: {applied}"
    );
    // ... and the validating one answers too: a duplicate of that task is denied. The index
    // follows a watch, so wait until a dry run is refused (it changes nothing) first.
    wait_for(
        "the index to see the TaskRun",
        Duration::from_secs(60),
        || async {
            let dry = kubectl_output(
                cp,
                &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
                &task_run("applied-again", 1).to_string(),
            );
            String::from_utf8_lossy(&dry.stderr)
                .contains("already holds")
                .then_some(())
        },
    )
    .await;
    let duplicate = kubectl_output(
        cp,
        &["apply", "-n", &ns, "-f", "-"],
        &task_run("applied-again", 1).to_string(),
    );
    let stderr = String::from_utf8_lossy(&duplicate.stderr);
    assert!(
        !duplicate.status.success()
            && stderr.contains(r#"admission webhook "validate.taskruns.orchestrator.io" denied"#)
            && stderr.contains(&format!("TaskRun {ns}/applied already holds")),
        "a duplicate is denied by the validating webhook, naming the existing TaskRun: {stderr}"
    );

    // Forced renewal while two clients send admission requests without pause.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let through_apiserver = tokio::spawn(admit_through_apiserver(
        Api::namespaced(client.clone(), &ns),
        sent[0].clone(),
        stop.clone(),
    ));
    let direct = tokio::spawn(admit_on_fresh_connections(
        tls.clone(),
        ns.clone(),
        sent[1].clone(),
        stop.clone(),
    ));
    both_send_more(&sent, 3).await;
    let revision_before = certificate_revision(client.clone()).await;
    let triggered = Instant::now();
    force_renewal(client.clone(), SERVING).await;
    let renewed = wait_for(
        "the renewed serving Secret",
        Duration::from_secs(120),
        || {
            procs.check();
            let (secrets, first_cert) = (secrets.clone(), first_cert.clone());
            async move {
                let files = secret_files(&secrets.get_opt(SERVING).await.ok()??);
                let cert = first_der(files.get("tls.crt")?);
                (cert != first_cert).then_some(files)
            }
        },
    )
    .await;
    let second_cert = first_der(&renewed["tls.crt"]);
    let secret_renewed = triggered.elapsed();
    assert_ne!(
        serial(&first_cert),
        serial(&second_cert),
        "the renewed certificate has a new serial"
    );
    assert_ne!(
        issued["tls.key"], renewed["tls.key"],
        "rotationPolicy: Always gives the renewed certificate a new key"
    );
    // The webhook picks the projected files up (the kubelet-style swap, or its poll).
    wait_for(
        "new TLS connections to see the renewed certificate",
        Duration::from_secs(60),
        || {
            procs.check();
            let tls = tls.clone();
            let second_cert = second_cert.clone();
            async move { (tls.served_leaf().await.ok()? == second_cert).then_some(()) }
        },
    )
    .await;
    let served_renewed = triggered.elapsed();
    both_send_more(&sent, 5).await; // requests on the new certificate, too
    stop.store(true, Ordering::Relaxed);
    let via_apiserver = through_apiserver.await.unwrap_or_else(|e| panic!("{e}"));
    let direct = direct.await.unwrap_or_else(|e| panic!("{e}"));
    projector.stop();
    eprintln!(
        "rotation: revision {revision_before:?} -> {:?}, serial {} -> {}; Secret renewed after \
         {secret_renewed:?}, served on new connections after {served_renewed:?}; {} admission \
         requests through kube-apiserver, {} on fresh TLS connections ({} on the old \
         certificate, {} on the new one)",
        certificate_revision(client.clone()).await,
        hex(&serial(&first_cert)),
        hex(&serial(&second_cert)),
        via_apiserver.ok,
        direct.ok,
        direct.on_cert(&first_cert),
        direct.on_cert(&second_cert),
    );
    assert!(
        via_apiserver.failures.is_empty() && direct.failures.is_empty(),
        "admission requests failed during the rotation: through kube-apiserver {:?}, direct {:?}",
        via_apiserver.failures,
        direct.failures
    );
    assert!(
        via_apiserver.ok >= 5,
        "too few requests through kube-apiserver: {via_apiserver:?}"
    );
    assert!(
        direct.on_cert(&first_cert) >= 1 && direct.on_cert(&second_cert) >= 1,
        "the direct client saw both certificates: {direct:?}"
    );
    // The CA did not change, so the injected bundle still verifies the renewed certificate.
    ca_bundles_are(client.clone(), renewed["ca.crt"].clone())
        .await
        .unwrap_or_else(|| panic!("the caBundle no longer matches the CA after the renewal"));

    // A renewal of the CA itself (cert-manager re-keys on renewal by default since v1.18)
    // keeps its key: the certificate served now, signed before, verifies against the new CA,
    // so the window between cainjector's new caBundle and the pods' new files fails nothing.
    let ca_before = secret_files(
        &secrets
            .get(CA)
            .await
            .unwrap_or_else(|e| panic!("{CA}: {e}")),
    );
    force_renewal(client.clone(), CA).await;
    let ca_after = wait_for("the renewed CA Secret", Duration::from_secs(120), || {
        procs.check();
        let (secrets, before) = (secrets.clone(), ca_before["tls.crt"].clone());
        async move {
            let files = secret_files(&secrets.get_opt(CA).await.ok()??);
            (files.get("tls.crt")? != &before).then_some(files)
        }
    })
    .await;
    assert_eq!(
        ca_before["tls.key"], ca_after["tls.key"],
        "the CA's renewal changed its key (privateKey.rotationPolicy: Never)"
    );
    let verified = LoopbackTls::new(webhook_addr, &ca_after["tls.crt"])
        .served_leaf()
        .await;
    assert_eq!(
        verified.as_ref().ok(),
        Some(&second_cert),
        "the renewed CA does not verify the serving certificate issued before: {verified:?}"
    );
}

fn task_run(name: &str, task_id: i64) -> Value {
    json!({
        "apiVersion": "orchestrator.io/v1",
        "kind": "TaskRun",
        "metadata": {"name": name},
        "spec": {
            "taskId": task_id,
            "serviceName": "rotation",
            "markdownFiles": [{"filename": "task.md", "content": "# Rotate\nKeep admitting."}],
        },
    })
}

fn kubectl(cp: &ControlPlane, args: &[&str]) -> String {
    kubectl_stdin(cp, args, "")
}

fn kubectl_stdin(cp: &ControlPlane, args: &[&str], stdin: &str) -> String {
    let out = kubectl_output(cp, args, stdin);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kubectl_output(cp: &ControlPlane, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = cp
        .kubectl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run kubectl: {e}"));
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .unwrap_or_else(|e| panic!("kubectl stdin: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("kubectl: {e}"))
}

fn apply_json(cp: &ControlPlane, list: &Value) {
    kubectl_stdin(
        cp,
        &["apply", "--server-side", "-f", "-"],
        &list.to_string(),
    );
}

fn path_str(path: &Path) -> String {
    path.display().to_string()
}
