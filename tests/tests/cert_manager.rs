//! cert-manager for real (issue 7): cert-manager's own controller and cainjector, built from
//! the pinned Go module by `tests/certmanager/build.sh`, run against the test control plane
//! with the module's CRDs. The cert-manager overlay's Issuers and Certificates issue the
//! webhook's serving Secret, cainjector fills the caBundle of both webhook configurations,
//! and `taskrun-webhook`, serving the Secret's files from a directory written the way the
//! kubelet projects a Secret volume, admits `kubectl apply`. A forced renewal (what
//! `cmctl renew` does) rotates the certificate while two clients send admission requests
//! without pause: none of them may fail.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};
use taskrun::TaskRun;
use taskrun_tests::{ChildGuard, ControlPlane, repo_root, spawn_logged, wait_for, workspace_bin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The overlay's namespace (its kustomization sets it on every namespaced resource).
const SYSTEM_NS: &str = "taskrun-system";
const SERVING: &str = "taskrun-webhook-tls";
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
    let webhook_addr = free_loopback_addr();
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
        .get("taskrun-ca")
        .await
        .unwrap_or_else(|e| panic!("the CA Secret taskrun-ca: {e}"));
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
    // ... and the validating one answers too: a duplicate of that task is denied.
    let duplicate = kubectl_output(
        cp,
        &["apply", "-n", &ns, "-f", "-"],
        &task_run("applied-again", 1).to_string(),
    );
    let stderr = String::from_utf8_lossy(&duplicate.stderr);
    assert!(
        !duplicate.status.success()
            && stderr.contains(r#"admission webhook "validate.taskruns.orchestrator.io" denied"#)
            && stderr.contains("applied"),
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
    force_renewal(client.clone()).await;
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
}

// ---- cert-manager ----

/// Runs `tests/certmanager/build.sh` (returns at once when cached) and returns its cache
/// directory: `bin/` and `crds/`.
fn build_cert_manager() -> PathBuf {
    let script = repo_root().join("tests/certmanager/build.sh");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The processes this test starts; a wait fails at once, with the log tail, when one died.
#[derive(Default)]
struct Procs(Vec<(String, ChildGuard)>);

impl Procs {
    fn start_go(&mut self, cp: &ControlPlane, cm_dir: &Path, name: &str) {
        let mut cmd = Command::new(cm_dir.join("bin").join(name));
        cmd.arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
            .arg("-v=2");
        self.spawn(cmd, name);
    }

    fn start_webhook(&mut self, cp: &ControlPlane, addr: SocketAddr, cert_dir: &Path) {
        let mut cmd = Command::new(workspace_bin("taskrun-webhook"));
        cmd.env("KUBECONFIG", cp.kubeconfig())
            .arg(format!("--listen={addr}"))
            .arg(format!("--cert-dir={}", cert_dir.display()))
            .arg("--metrics-listen=off")
            .arg("--log-format=text");
        self.spawn(cmd, "taskrun-webhook");
    }

    fn spawn(&mut self, cmd: Command, name: &str) {
        let child = spawn_logged(cmd, name).unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.0.push((name.to_owned(), child));
    }

    fn check(&mut self) {
        for (name, child) in &mut self.0 {
            if !child.is_running() {
                let log = std::fs::read_to_string(child.log_path()).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                panic!(
                    "{name} exited; last lines of {}:\n{}",
                    child.log_path().display(),
                    lines[lines.len().saturating_sub(30)..].join("\n")
                );
            }
        }
    }
}

/// The overlay's Namespace, Issuers, Certificates and webhook configurations, from
/// `kubectl kustomize`, adapted to a webhook on this machine's loopback (see below).
fn overlay_objects(cp: &ControlPlane, webhook: SocketAddr) -> Vec<Value> {
    let overlay = repo_root().join("manifests/overlays/cert-manager");
    let yaml = kubectl(cp, &["kustomize", &path_str(&overlay)]);
    let mut selected = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(&yaml) {
        let object: Value = serde::Deserialize::deserialize(document)
            .unwrap_or_else(|e| panic!("kubectl kustomize printed bad YAML: {e}"));
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "Namespace" | "Issuer" => selected.push(object),
            "Certificate" => selected.push(loopback_certificate(object)),
            "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration" => {
                selected.push(loopback_webhooks(object, webhook))
            }
            _ => {}
        }
    }
    selected
}

/// The overlay's serving Certificate names the Service's DNS names; here kube-apiserver
/// reaches the webhook at https://127.0.0.1, so this test variant asks for that IP address
/// instead. Everything else (issuer, duration, key and rotation policy, usages) is the
/// overlay's.
fn loopback_certificate(mut certificate: Value) -> Value {
    if certificate["metadata"]["name"] == SERVING {
        let spec = &mut certificate["spec"];
        assert!(
            spec["dnsNames"].is_array(),
            "the overlay's serving Certificate: {spec}"
        );
        spec.as_object_mut().map(|s| s.remove("dnsNames"));
        spec["ipAddresses"] = json!(["127.0.0.1"]);
    }
    certificate
}

/// A webhook configuration from the overlay, calling `https://<addr><path>` instead of the
/// Service (there is no Service routing on this control plane). The inject-ca-from
/// annotation, rules, selectors and policies stay as they are.
fn loopback_webhooks(mut config: Value, addr: SocketAddr) -> Value {
    assert_eq!(
        config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{SYSTEM_NS}/{SERVING}"),
        "the overlay annotates {} for cainjector",
        config["kind"]
    );
    for webhook in config["webhooks"].as_array_mut().into_iter().flatten() {
        let path = webhook["clientConfig"]["service"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("webhook without a service path: {webhook}"))
            .to_owned();
        webhook["clientConfig"] = json!({"url": format!("https://{addr}{path}")});
    }
    config
}

/// What `cmctl renew` does: set the Certificate's Issuing condition to True
/// (reason ManuallyTriggered) through the status subresource; cert-manager then issues a
/// new revision.
async fn force_renewal(client: kube::Client) {
    let certificates = certificates(client);
    let mut certificate = certificates
        .get(SERVING)
        .await
        .unwrap_or_else(|e| panic!("Certificate {SERVING}: {e}"));
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = certificate
        .data
        .get_mut("status")
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("Certificate {SERVING} has no status"));
    let conditions = status
        .entry("conditions")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .unwrap_or_else(|| panic!("Certificate {SERVING}: conditions is not a list"));
    conditions.retain(|c| c["type"] != "Issuing");
    conditions.push(json!({
        "type": "Issuing",
        "status": "True",
        "reason": "ManuallyTriggered",
        "message": "Certificate re-issuance manually triggered",
        "lastTransitionTime": now,
    }));
    certificates
        .replace_status(SERVING, &PostParams::default(), &certificate)
        .await
        .unwrap_or_else(|e| panic!("cannot trigger the renewal of {SERVING}: {e}"));
}

async fn certificate_revision(client: kube::Client) -> Option<i64> {
    let certificate = certificates(client).get(SERVING).await.ok()?;
    certificate.data["status"]["revision"].as_i64()
}

fn certificates(client: kube::Client) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "cert-manager.io".into(),
        version: "v1".into(),
        api_version: "cert-manager.io/v1".into(),
        kind: "Certificate".into(),
        plural: "certificates".into(),
    };
    Api::namespaced_with(client, SYSTEM_NS, &resource)
}

/// Some(()) when every webhook of both configurations carries exactly `ca_pem`.
async fn ca_bundles_are(client: kube::Client, ca_pem: Vec<u8>) -> Option<()> {
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get(WEBHOOK_CONFIG)
        .await
        .ok()?;
    let mutating = Api::<MutatingWebhookConfiguration>::all(client)
        .get(WEBHOOK_CONFIG)
        .await
        .ok()?;
    let bundles: Vec<Option<Vec<u8>>> = validating
        .webhooks
        .iter()
        .flatten()
        .map(|w| w.client_config.ca_bundle.as_ref().map(|b| b.0.clone()))
        .chain(
            mutating
                .webhooks
                .iter()
                .flatten()
                .map(|w| w.client_config.ca_bundle.as_ref().map(|b| b.0.clone())),
        )
        .collect();
    (bundles.len() == 2 && bundles.iter().all(|b| b.as_deref() == Some(&ca_pem))).then_some(())
}

fn secret_files(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

/// The DER of the first certificate in a PEM bundle.
fn first_der(pem: &[u8]) -> Vec<u8> {
    rustls_pemfile::certs(&mut &pem[..])
        .next()
        .and_then(Result::ok)
        .map(|c| c.to_vec())
        .unwrap_or_else(|| panic!("no certificate in {}", String::from_utf8_lossy(pem)))
}

/// The serial number of a DER certificate: Certificate ::= SEQUENCE { tbsCertificate
/// SEQUENCE { [0] version OPTIONAL, serialNumber INTEGER, ... }, ... }.
fn serial(der: &[u8]) -> Vec<u8> {
    /// Splits one DER element off `input`: (tag, contents, rest).
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, input) = input.split_first()?;
        let (&first, mut input) = input.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            let (bytes, rest) = input.split_at_checked(n)?;
            input = rest;
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        };
        let (contents, rest) = input.split_at_checked(len)?;
        Some((tag, contents, rest))
    }
    let parse = || {
        let (_, certificate, _) = element(der)?;
        let (_, tbs, _) = element(certificate)?;
        let (tag, contents, rest) = element(tbs)?;
        let (tag, contents) = if tag == 0xa0 {
            let (tag, contents, _) = element(rest)?;
            (tag, contents)
        } else {
            (tag, contents)
        };
        (tag == 0x02).then(|| contents.to_vec())
    };
    parse().unwrap_or_else(|| panic!("not a DER certificate"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

// ---- the webhook and its certificate directory ----

/// Keeps a directory in sync with a Secret the way the kubelet maintains a Secret volume:
/// the files live in a timestamped directory, `..data` is a symlink to it, each key is a
/// symlink `key -> ..data/key`, and an update writes a new timestamped directory and swaps
/// `..data` with one rename, so a reader never sees a certificate without its key.
struct Projector {
    task: tokio::task::JoinHandle<()>,
}

impl Projector {
    fn start(secrets: Api<Secret>, dir: PathBuf, initial: BTreeMap<String, Vec<u8>>) -> Self {
        project(&dir, &initial).unwrap_or_else(|e| panic!("cannot project the Secret: {e}"));
        let task = tokio::spawn(async move {
            let mut current = initial;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Ok(Some(secret)) = secrets.get_opt(SERVING).await else {
                    continue;
                };
                let files = secret_files(&secret);
                if files != current {
                    project(&dir, &files).unwrap_or_else(|e| panic!("cannot project: {e}"));
                    current = files;
                }
            }
        });
        Projector { task }
    }

    fn stop(self) {
        self.task.abort();
    }
}

fn project(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let target = dir.join(&stamp);
    std::fs::create_dir(&target)?;
    for (key, value) in files {
        std::fs::File::create(target.join(key))?.write_all(value)?;
    }
    let data = dir.join("..data");
    let old = std::fs::read_link(&data).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, &data)?;
    for key in files.keys() {
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(key), &link)?;
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old))?;
    }
    Ok(())
}

// ---- clients ----

#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    failures: Vec<String>,
    /// DER of the certificate served on each successful fresh connection.
    served: Vec<Vec<u8>>,
}

impl Tally {
    fn on_cert(&self, der: &[u8]) -> usize {
        self.served.iter().filter(|s| s.as_slice() == der).count()
    }
}

/// Waits until each client has sent `more` further requests.
async fn both_send_more(sent: &[Arc<AtomicUsize>; 2], more: usize) {
    let targets = sent.clone().map(|s| s.load(Ordering::Relaxed) + more);
    wait_for(
        "both clients to send requests",
        Duration::from_secs(30),
        || {
            let done = sent
                .iter()
                .zip(targets)
                .all(|(s, t)| s.load(Ordering::Relaxed) >= t);
            async move { done.then_some(()) }
        },
    )
    .await;
}

/// Server-side dry-run creates through kube-apiserver, which calls both webhooks; each
/// response must carry the mutating webhook's labels.
async fn admit_through_apiserver(
    api: Api<TaskRun>,
    sent: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut n = 1000;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        sent.fetch_add(1, Ordering::Relaxed);
        let task_run: TaskRun = serde_json::from_value(task_run(&format!("dry-{n}"), n))
            .unwrap_or_else(|e| panic!("{e}"));
        let params = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        match api.create(&params, &task_run).await {
            Ok(created)
                if created
                    .metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.get("orchestrator.io/task-id") == Some(&n.to_string())) =>
            {
                tally.ok += 1
            }
            Ok(created) => tally.failures.push(format!(
                "dry-{n}: not mutated: {:?}",
                created.metadata.labels
            )),
            Err(e) => tally.failures.push(format!("dry-{n}: {e}")),
        }
    }
    tally
}

/// AdmissionReviews posted straight to the webhook, each on a new TLS connection that
/// trusts only the CA from the Secret, recording which certificate each connection saw.
async fn admit_on_fresh_connections(
    tls: Arc<LoopbackTls>,
    namespace: String,
    sent: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut n = 5000;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        sent.fetch_add(1, Ordering::Relaxed);
        let uid = format!("rotation-{n}");
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "orchestrator.io", "version": "v1", "kind": "TaskRun"},
                "resource": {"group": "orchestrator.io", "version": "v1", "resource": "taskruns"},
                "name": format!("direct-{n}"),
                "namespace": namespace,
                "operation": "CREATE",
                "userInfo": {"username": "rotation-test"},
                "object": task_run(&format!("direct-{n}"), n),
                "dryRun": true,
            }
        });
        match tls.post("/validate", &review.to_string()).await {
            Ok((leaf, status, body)) => {
                let response: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                if status == 200
                    && response["response"]["uid"] == uid
                    && response["response"]["allowed"] == true
                {
                    tally.ok += 1;
                    tally.served.push(leaf);
                } else {
                    tally.failures.push(format!("{uid}: {status} {body}"));
                }
            }
            Err(e) => tally.failures.push(format!("{uid}: {e}")),
        }
    }
    tally
}

/// A TLS client for the webhook on loopback that opens a new connection per request.
struct LoopbackTls {
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
}

impl LoopbackTls {
    fn new(addr: SocketAddr, ca_pem: &[u8]) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
            let cert = cert.unwrap_or_else(|e| panic!("bad CA PEM: {e}"));
            roots.add(cert).unwrap_or_else(|e| panic!("bad CA: {e}"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("{e}"))
            .with_root_certificates(roots)
            .with_no_client_auth();
        // A resumed session reports the certificate of the session it resumes: every
        // connection makes a full handshake so it sees what is served now.
        config.resumption = rustls::client::Resumption::disabled();
        LoopbackTls {
            addr,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    async fn connect(
        &self,
    ) -> Result<
        (
            tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
            Vec<u8>,
        ),
        String,
    > {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = rustls::pki_types::ServerName::from(self.addr.ip());
        let stream = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .ok_or("no peer certificate")?;
        Ok((stream, leaf))
    }

    /// The leaf certificate a new connection is served.
    async fn served_leaf(&self) -> Result<Vec<u8>, String> {
        self.connect().await.map(|(_, leaf)| leaf)
    }

    async fn get_ok(&self, path: &str) -> bool {
        matches!(self.request("GET", path, "").await, Ok((_, 200, _)))
    }

    async fn post(&self, path: &str, body: &str) -> Result<(Vec<u8>, u16, String), String> {
        self.request("POST", path, body).await
    }

    /// One HTTP/1.1 request with `Connection: close`; returns the served leaf, the status
    /// and the body.
    async fn request(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(Vec<u8>, u16, String), String> {
        let (mut stream, leaf) = self.connect().await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let exchange = async {
            stream.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            Ok::<_, std::io::Error>(response)
        };
        let response = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| "no response within 10 s".to_owned())?
            .map_err(|e| format!("exchange: {e}"))?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header end")?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line: {head}"))?;
        Ok((leaf, status, body.to_owned()))
    }
}

// ---- small helpers ----

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

fn free_loopback_addr() -> SocketAddr {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
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
