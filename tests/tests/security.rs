//! Security properties of the webhook and the controller on the real control plane: TLS
//! versions, no plaintext admission, no client-controlled paths, no secret leaking into logs or
//! objects, requests for other resources refused.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use taskrun::{Phase, TaskRun};
use taskrun_tests::controller::Controller;
use taskrun_tests::kubelet::{PodEnd, finish_pod};
use taskrun_tests::webhook::Webhook;
use taskrun_tests::{ControlPlane, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

const WAIT: Duration = Duration::from_secs(60);

async fn setup() -> (&'static ControlPlane, &'static Webhook) {
    let cp = ControlPlane::shared();
    (cp, Webhook::shared(cp).await)
}

fn manifest(name: &str, task_id: i64, filename: &str) -> Value {
    json!({
        "apiVersion": "orchestrator.io/v1",
        "kind": "TaskRun",
        "metadata": {"name": name},
        "spec": {
            "taskId": task_id,
            "serviceName": "secure",
            "markdownFiles": [{"filename": filename, "content": "# x"}],
        }
    })
}

// ---- TLS -------------------------------------------------------------------------------------

/// `openssl s_client` forced to one protocol version; returns (handshake done, output).
/// `@SECLEVEL=0` lets OpenSSL 3 actually offer TLS 1.0/1.1, so a failure is the server's.
fn s_client(w: &Webhook, version_flag: &str) -> (bool, String) {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", w.port()),
            version_flag,
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
            "-CAfile",
        ])
        .arg(w.ca_path())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("openssl s_client: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A finished handshake names its version and a cipher; a refused one says "(NONE)".
    let done = out.status.success()
        && text.contains("Verify return code: 0 (ok)")
        && text.contains("New, TLSv1.")
        && !text.contains("Cipher is (NONE)");
    (done, text)
}

#[tokio::test]
async fn only_tls_1_2_and_1_3_are_spoken() {
    let (_, w) = setup().await;
    for flag in ["-tls1_2", "-tls1_3"] {
        let (done, text) = s_client(w, flag);
        assert!(done, "{flag} handshake failed:\n{text}");
    }
    for flag in ["-tls1", "-tls1_1"] {
        let (done, text) = s_client(w, flag);
        assert!(!done, "{flag} handshake succeeded:\n{text}");
        // The ClientHello went out and the server refused it (not a client-side refusal).
        assert!(
            !text.contains("no protocols available"),
            "openssl did not offer {flag}:\n{text}"
        );
        assert!(
            text.contains("alert protocol version") || text.contains("alert handshake failure"),
            "{flag}: {text}"
        );
    }
}

#[tokio::test]
async fn there_is_no_plaintext_admission() {
    let (_, w) = setup().await;
    let body = serde_json::to_vec(&review("CREATE", "taskruns", manifest("p", 1, "task.md")))
        .expect("json");
    // Plain HTTP to the admission port: no HTTP answer, let alone an AdmissionReview.
    let mut s = TcpStream::connect(("127.0.0.1", w.port())).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = s.write_all(&post("/validate", &body));
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(
        !text.contains("AdmissionReview") && !text.contains("\"allowed\""),
        "{text}"
    );
    // The plain metrics listener does not serve admission.
    for path in ["/validate", "/mutate"] {
        let mut s = TcpStream::connect(w.metrics_addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(&post(path, &body)).expect("write");
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        let status = response.split(' ').nth(1).unwrap_or("");
        assert!(
            matches!(status, "404" | "405"),
            "POST {path} on the metrics port: {response}"
        );
        assert!(!response.contains("\"allowed\""), "{response}");
    }
}

// ---- paths -----------------------------------------------------------------------------------

const HOSTILE_FILENAMES: [&str; 6] = [
    "../x.md",
    "../../etc/passwd.md",
    "/etc/x.md",
    "a/b.md",
    "..md",
    ".hidden.md",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filenames_never_leave_the_mount() {
    let (cp, w) = setup().await;
    let client = cp.client().await;
    let ns = cp.namespace("sec-paths").await;
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    for (i, filename) in HOSTILE_FILENAMES.iter().enumerate() {
        let tr: TaskRun =
            serde_json::from_value(manifest(&format!("p{i}"), 10 + i as i64, filename))
                .expect("TaskRun");
        // Through the API server (schema and webhook)...
        let err = api
            .create(&PostParams::default(), &tr)
            .await
            .expect_err(&format!("{filename} was admitted"));
        assert!(err.to_string().contains("filename"), "{filename}: {err}");
        // ...and the webhook on its own (defence in depth if the schema were loosened).
        let r = send(
            w,
            &post(
                "/validate",
                &serde_json::to_vec(&review(
                    "CREATE",
                    "taskruns",
                    manifest("p", 10 + i as i64, filename),
                ))
                .expect("json"),
            ),
        )
        .await;
        assert_eq!(r["response"]["allowed"], false, "{filename}: {r}");
        assert_eq!(r["response"]["status"]["code"], 422, "{filename}: {r}");
    }
    assert!(
        api.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );

    // An admitted TaskRun's files become ConfigMap keys that map to plain names in the mount.
    let _ctrl = Controller::start(cp, &[&format!("--namespace={ns}")]);
    let tr: TaskRun = serde_json::from_value(json!({
        "apiVersion": "orchestrator.io/v1", "kind": "TaskRun", "metadata": {"name": "ok"},
        "spec": {"taskId": 1, "serviceName": "secure", "markdownFiles": [
            {"filename": "task.md", "content": "a"}, {"filename": "v1.2_notes-x.md", "content": "b"}]}
    }))
    .expect("TaskRun");
    api.create(&PostParams::default(), &tr)
        .await
        .expect("create");
    let job_name = taskrun::names::job_name("secure", 1, 1);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job = wait_for("the Job", WAIT, || async {
        jobs.get_opt(&job_name).await.ok().flatten()
    })
    .await;
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get(&taskrun::names::config_map_name("secure", 1, 1))
        .await
        .expect("ConfigMap");
    let keys: Vec<String> = cm.data.unwrap_or_default().into_keys().collect();
    assert_eq!(keys, ["task.md", "v1.2_notes-x.md"]);
    let pod = job.spec.and_then(|s| s.template.spec).expect("pod spec");
    let volume = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .next()
        .expect("a volume");
    let source = volume.config_map.expect("a configMap volume");
    // What keeps the files in the mount: without `items` the kubelet writes every key under
    // its own name, and the API server allows ConfigMap keys only of [-._a-zA-Z0-9]+ (no '/').
    // An `items` list could put a key under another name or in a subdirectory: when there is
    // one, each key must still land under its own name.
    if let Some(items) = &source.items {
        for item in items {
            assert!(
                item.path == item.key && !item.path.contains('/'),
                "key {} is mounted at {}",
                item.key,
                item.path
            );
        }
    }
    let mount = pod.containers[0]
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.name == volume.name)
        .expect("the files are mounted");
    assert_eq!(mount.read_only, Some(true));
    assert!(mount.sub_path.is_none() && mount.sub_path_expr.is_none());
}

// ---- secrets ---------------------------------------------------------------------------------

/// Every object in the namespace as JSON, except Secrets.
fn namespace_objects(cp: &ControlPlane, ns: &str) -> String {
    let resources = cp
        .kubectl()
        .args([
            "api-resources",
            "--verbs=list",
            "--namespaced",
            "-o",
            "name",
        ])
        .output()
        .expect("kubectl api-resources");
    let resources: Vec<String> = String::from_utf8_lossy(&resources.stdout)
        .lines()
        .filter(|r| !r.starts_with("secrets"))
        .map(str::to_owned)
        .collect();
    assert!(resources.iter().any(|r| r == "configmaps"), "{resources:?}");
    let out = cp
        .kubectl()
        .args(["get", &resources.join(","), "-n", ns, "-o", "json"])
        .output()
        .expect("kubectl get");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_value_appears_in_no_log_and_no_object() {
    let (cp, w) = setup().await;
    let client = cp.client().await;
    let ns = cp.namespace("sec-secret").await;
    let planted = format!("planted-{}-{}", std::process::id(), rand_suffix());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "agent-secrets"},
        "stringData": {"api-key": planted},
    }))
    .expect("Secret");
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the Secret");
    let ctrl = Controller::start(
        cp,
        &[
            &format!("--namespace={ns}"),
            "--secret-env=API_KEY=agent-secrets:api-key",
            "--env-from-secret=agent-secrets",
        ],
    );
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let tr: TaskRun = serde_json::from_value(manifest("run", 1, "task.md")).expect("TaskRun");
    api.create(&PostParams::default(), &tr)
        .await
        .expect("create");
    let job_name = taskrun::names::job_name("secure", 1, 1);
    finish_pod(&client, &ns, &job_name, PodEnd::Succeeded).await;
    wait_for("the TaskRun to succeed", WAIT, || async {
        api.get("run")
            .await
            .ok()
            .filter(|t| t.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded))
    })
    .await;

    // The Job references the Secret rather than carrying its value.
    let job = Api::<Job>::namespaced(client.clone(), &ns)
        .get(&job_name)
        .await
        .expect("Job");
    let job_json = serde_json::to_string(&job).expect("json");
    assert!(job_json.contains("\"secretKeyRef\""), "{job_json}");

    let encoded = k8s_openapi::ByteString(planted.clone().into_bytes());
    let encoded = serde_json::to_value(&encoded).expect("base64");
    let encoded = encoded.as_str().unwrap_or_default().to_owned();
    let haystacks = [
        ("controller log", ctrl.log_tail(1_000_000)),
        (
            "webhook log",
            std::fs::read_to_string(w.log_path()).unwrap_or_default(),
        ),
        ("objects in the namespace", namespace_objects(cp, &ns)),
        ("objects in default", namespace_objects(cp, "default")),
    ];
    for (what, text) in &haystacks {
        assert!(!text.is_empty(), "{what} is empty: nothing was searched");
        for needle in [&planted, &encoded] {
            assert!(
                !text.contains(needle.as_str()),
                "the secret is in the {what}"
            );
        }
    }
    // The search can find it: the Secret itself holds it.
    let all = cp
        .kubectl()
        .args(["get", "secret", "agent-secrets", "-n", &ns, "-o", "json"])
        .output()
        .expect("kubectl");
    assert!(String::from_utf8_lossy(&all.stdout).contains(&encoded));
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

// ---- other resources and kinds ---------------------------------------------------------------

#[tokio::test]
async fn requests_for_other_resources_or_kinds_are_refused_not_processed() {
    let (_, w) = setup().await;
    let object = manifest("x", 1, "task.md");
    let mut cases = Vec::new();
    for path in ["/validate", "/mutate"] {
        cases.push((path, review("CREATE", "pods", object.clone())));
        cases.push((path, review("CREATE", "secrets", object.clone())));
        let mut other_group = review("CREATE", "taskruns", object.clone());
        other_group["request"]["resource"]["group"] = json!("evil.example");
        cases.push((path, other_group));
        let mut other_version = review("CREATE", "taskruns", object.clone());
        other_version["request"]["resource"]["version"] = json!("v2");
        cases.push((path, other_version));
    }
    for (path, case) in &cases {
        let r = send(w, &post(path, &serde_json::to_vec(case).expect("json"))).await;
        let response = &r["response"];
        assert_eq!(response["allowed"], false, "{path} {case}: {r}");
        assert_eq!(response["uid"], "sec-uid");
        assert!(
            response.get("patch").is_none_or(Value::is_null),
            "{path}: {r}"
        );
    }
    // A status write is not the webhook's to judge (DESIGN §4): let through, never patched.
    for path in ["/validate", "/mutate"] {
        let mut status = review("UPDATE", "taskruns", object.clone());
        status["request"]["subResource"] = json!("status");
        status["request"]["oldObject"] = object.clone();
        let r = send(w, &post(path, &serde_json::to_vec(&status).expect("json"))).await;
        assert_eq!(r["response"]["allowed"], true, "{path}: {r}");
        assert!(
            r["response"].get("patch").is_none_or(Value::is_null),
            "{path}: {r}"
        );
    }
    // Not an AdmissionReview of admission.k8s.io/v1 at all: a 400, nothing processed.
    for path in ["/validate", "/mutate"] {
        let mut v1beta1 = review("CREATE", "taskruns", object.clone());
        v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
        let mut other_kind = review("CREATE", "taskruns", object.clone());
        other_kind["kind"] = json!("TokenReview");
        for body in [v1beta1, other_kind] {
            let raw = raw_send(w, &post(path, &serde_json::to_vec(&body).expect("json"))).await;
            assert!(raw.starts_with("HTTP/1.1 400"), "{path}: {raw}");
        }
    }
}

// ---- raw HTTPS client ------------------------------------------------------------------------

fn review(operation: &str, resource: &str, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "sec-uid",
            "kind": {"group": "orchestrator.io", "version": "v1", "kind": "TaskRun"},
            "resource": {"group": if resource == "taskruns" {"orchestrator.io"} else {""},
                         "version": "v1", "resource": resource},
            "name": object["metadata"]["name"], "namespace": "default",
            "operation": operation,
            "userInfo": {"username": "test"},
            "object": object,
            "oldObject": null,
            "dryRun": false
        }
    })
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// One request over HTTPS, trusting only the webhook's CA; the raw response.
async fn raw_send(w: &Webhook, request: &[u8]) -> String {
    let roots = {
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(w.ca_pem().as_bytes()).expect("CA pem");
        roots.add(ca).expect("CA");
        roots
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", w.port()))
        .await
        .expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut s = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake");
    s.write_all(request).await.expect("write");
    s.flush().await.expect("flush");
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut raw)).await;
    String::from_utf8_lossy(&raw).into_owned()
}

/// The JSON body of the response.
async fn send(w: &Webhook, request: &[u8]) -> Value {
    let raw = raw_send(w, request).await;
    raw.split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or_else(|| panic!("not a JSON response: {raw}"))
}
