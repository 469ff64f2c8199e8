//! The real admission webhook (`taskrun-webhook`) as a child process of the test binary, with a
//! serving certificate from a private CA, and its registration with the API server by URL.
//!
//! Webhook configurations are cluster-scoped and the API server calls them for every
//! namespace, so register once per test binary (each binary has its own control plane):
//! [`Webhook::shared`] does that.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use taskrun_certs::{Ca, Pair};
use tokio::sync::OnceCell;

use crate::identity;
use crate::process::log_tail;
use crate::{ChildGuard, ControlPlane, free_port, spawn_logged, wait_for, work_dir, workspace_bin};

/// The names the configurations are registered under (as in `manifests/`).
pub const CONFIGURATION_NAME: &str = "taskrun-webhook";

/// A namespace with this label is left out of both webhooks as registered by the tests (the
/// shipped configurations cover every namespace), for tests of what happens where a cluster's
/// own `namespaceSelector` keeps the webhook away.
pub const UNSEEN_NAMESPACE_LABEL: &str = "taskrun-tests.example/webhook-unseen";

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `taskrun-webhook`.
pub struct Webhook {
    child: Mutex<ChildGuard>,
    port: u16,
    metrics_port: u16,
    cert_dir: PathBuf,
    ca_path: PathBuf,
    ca: Mutex<Ca>,
    rotations: AtomicU32,
}

impl Webhook {
    /// The webhook of this test binary, started and registered on first use.
    pub async fn shared(cp: &ControlPlane) -> &'static Webhook {
        static SHARED: OnceCell<Webhook> = OnceCell::const_new();
        SHARED
            .get_or_init(|| async {
                let webhook = Webhook::start(cp).await;
                webhook.register(cp).await;
                webhook
            })
            .await
    }

    /// Starts a webhook with default flags and waits until it is ready.
    pub async fn start(cp: &ControlPlane) -> Webhook {
        Self::start_with(cp, &[]).await
    }

    /// Starts a webhook with extra flags (e.g. shorter timeouts) and waits until it is ready
    /// (certificate loaded, TaskRun index synced). As in a cluster, it runs as its
    /// ServiceAccount, with only the RBAC of manifests/base.
    pub async fn start_with(cp: &ControlPlane, extra_args: &[&str]) -> Webhook {
        let kubeconfig = identity::kubeconfig_as(cp, identity::WEBHOOK_SERVICE_ACCOUNT);
        Self::start_with_kubeconfig(extra_args, &kubeconfig).await
    }

    /// Starts a webhook that reaches the API server through `kubeconfig` (a proxy's, say)
    /// and waits until it is ready.
    pub async fn start_with_kubeconfig(extra_args: &[&str], kubeconfig: &Path) -> Webhook {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let name = if n == 0 {
            "taskrun-webhook".to_owned()
        } else {
            format!("taskrun-webhook-{n}")
        };
        let dir = work_dir().join(&name);
        let cert_dir = dir.join("certs");
        std::fs::create_dir_all(&cert_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", cert_dir.display()));
        let ca = Ca::new("taskrun-test-webhook-ca").unwrap_or_else(|e| panic!("CA: {e}"));
        let ca_path = dir.join("ca.crt");
        std::fs::write(&ca_path, &ca.pair().cert_pem)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", ca_path.display()));
        let (port, metrics_port) = (free_port(), free_port());
        let mut cmd = Command::new(workspace_bin("taskrun-webhook"));
        cmd.arg(format!("--listen=127.0.0.1:{port}"))
            .arg(format!("--metrics-listen=127.0.0.1:{metrics_port}"))
            .arg(format!("--cert-dir={}", cert_dir.display()))
            .arg("--log-format=text");
        // Debug logs for tests, unless the caller picks a level (the benchmarks use info).
        if !extra_args.iter().any(|a| a.starts_with("--log-level")) {
            cmd.arg("--log-level=info,taskrun_webhook=debug");
        }
        // No endpoints to drain here: stop at once on SIGTERM, unless the test is about that.
        if !extra_args.iter().any(|a| a.starts_with("--shutdown-delay")) {
            cmd.arg("--shutdown-delay=0s");
        }
        cmd.args(extra_args).env("KUBECONFIG", kubeconfig);
        // The Secret-volume layout, so rotation is the same symlink swap cert-manager causes;
        // in place before the process starts, as a pod's volumes are.
        write_rotation(&cert_dir, &ca, 0);
        let child = spawn_logged(cmd, &name).unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let webhook = Webhook {
            child: Mutex::new(child),
            port,
            metrics_port,
            cert_dir,
            ca_path,
            ca: Mutex::new(ca),
            rotations: AtomicU32::new(1),
        };
        webhook.wait_ready().await;
        webhook
    }

    /// Registers the two webhook configurations of manifests/base (their rules, match
    /// conditions and policies as shipped) pointing at this webhook by URL, with a
    /// `namespaceSelector` that leaves out namespaces labelled [`UNSEEN_NAMESPACE_LABEL`], and
    /// waits until the API server calls both.
    pub async fn register(&self, cp: &ControlPlane) {
        let client = cp.client().await;
        let path = crate::repo_root().join("manifests/base/webhook-configurations.yaml");
        let yaml = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let mut configurations =
            identity::parse_documents(&yaml).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for configuration in &mut configurations {
            configuration["metadata"] = json!({"name": CONFIGURATION_NAME});
            for hook in configuration["webhooks"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                assert!(
                    hook["namespaceSelector"].is_null(),
                    "{}: the shipped webhooks cover every namespace; the tests' selector would replace this one",
                    path.display()
                );
                hook["namespaceSelector"] = json!({"matchExpressions": [
                    {"key": UNSEEN_NAMESPACE_LABEL, "operator": "DoesNotExist"},
                ]});
                let route = hook["clientConfig"]["service"]["path"].clone();
                hook["clientConfig"] = json!({
                    "url": format!("{}{}", self.url(), route.as_str().unwrap_or_default()),
                    "caBundle": ByteString(self.ca_pem().into_bytes()),
                });
            }
        }
        let params = PatchParams::apply("taskrun-tests").force();
        for configuration in &configurations {
            let result = match configuration["kind"].as_str() {
                Some("ValidatingWebhookConfiguration") => {
                    Api::<ValidatingWebhookConfiguration>::all(client.clone())
                        .patch(CONFIGURATION_NAME, &params, &Patch::Apply(configuration))
                        .await
                        .map(drop)
                }
                Some("MutatingWebhookConfiguration") => {
                    Api::<MutatingWebhookConfiguration>::all(client.clone())
                        .patch(CONFIGURATION_NAME, &params, &Patch::Apply(configuration))
                        .await
                        .map(drop)
                }
                other => panic!("{}: unexpected kind {other:?}", path.display()),
            };
            result.unwrap_or_else(|e| panic!("cannot register {}: {e}", configuration["kind"]));
        }
        self.wait_registered(&client).await;
    }

    /// A server-side dry-run create goes through both webhooks once the API server has picked
    /// up the configurations: the mutation shows in the returned labels, the validation in
    /// the webhook's request counter.
    async fn wait_registered(&self, client: &kube::Client) {
        let api: Api<taskrun::TaskRun> = Api::namespaced(client.clone(), "default");
        let probe: taskrun::TaskRun = serde_json::from_value(json!({
            "apiVersion": "orchestrator.io/v1", "kind": "TaskRun",
            "metadata": {"name": "webhook-registration-probe"},
            "spec": {"taskId": 1, "serviceName": "probe",
                     "markdownFiles": [{"filename": "task.md", "content": "probe"}]},
        }))
        .unwrap_or_else(|e| panic!("probe TaskRun: {e}"));
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        wait_for(
            "the API server to call both webhooks",
            READY_TIMEOUT,
            || {
                let (api, probe, dry_run) = (&api, &probe, &dry_run);
                async move {
                    let created = api.create(dry_run, probe).await.ok()?;
                    let stamped = created
                        .metadata
                        .labels
                        .as_ref()
                        .is_some_and(|l| l.contains_key(taskrun::labels::TASK_ID));
                    // Its series exist at 0 from the start: one must have counted a call.
                    let validated = self.metrics().lines().any(|l| {
                        l.starts_with("taskrun_webhook_requests_total{route=\"validate\"")
                            && !l.ends_with(" 0")
                    });
                    (stamped && validated).then_some(())
                }
            },
        )
        .await;
    }

    /// The HTTPS base URL, e.g. `https://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The plain-HTTP metrics/probe listener, e.g. `127.0.0.1:40124`.
    pub fn metrics_addr(&self) -> String {
        format!("127.0.0.1:{}", self.metrics_port)
    }

    /// The CA that signed the serving certificate (the caBundle).
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    pub fn ca_pem(&self) -> String {
        self.ca().pair().cert_pem.clone()
    }

    /// The directory the webhook serves `tls.crt`/`tls.key` from (a Secret-volume layout:
    /// the files are symlinks through `..data`).
    pub fn cert_dir(&self) -> &Path {
        &self.cert_dir
    }

    /// Issues a new serving certificate from the same CA and swaps it in the way the kubelet
    /// updates a Secret volume (new directory, `..data` symlink renamed over the old one).
    /// Returns the new pair.
    pub fn rotate(&self) -> Pair {
        let n = self.rotations.fetch_add(1, Ordering::Relaxed);
        write_rotation(&self.cert_dir, &self.ca(), n)
    }

    /// GET on the plain listener; returns (status code, body), or None if it did not answer.
    pub fn get_plain(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.metrics_addr(), path)
    }

    /// The Prometheus text of `/metrics` (empty if it did not answer).
    pub fn metrics(&self) -> String {
        self.get_plain("/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// The value of the unlabelled metric `name` (e.g. `taskrun_webhook_index_taskruns`), if
    /// `/metrics` answered with it.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    pub fn pid(&self) -> u32 {
        self.child().pid()
    }

    pub fn is_running(&self) -> bool {
        self.child().is_running()
    }

    pub fn log_path(&self) -> PathBuf {
        self.child().log_path().to_path_buf()
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL.
    pub fn stop(&self) {
        self.child().terminate();
    }

    /// SIGKILL.
    pub fn kill(&self) {
        self.child().kill();
    }

    async fn wait_ready(&self) {
        let what = format!("taskrun-webhook on port {} to be ready", self.port);
        wait_for(&what, READY_TIMEOUT, || async {
            if !self.is_running() {
                panic!(
                    "taskrun-webhook exited; last lines of {}:\n{}",
                    self.log_path().display(),
                    log_tail(&self.log_path(), 30)
                );
            }
            matches!(self.get_plain("/readyz"), Some((200, _))).then_some(())
        })
        .await;
    }

    fn child(&self) -> MutexGuard<'_, ChildGuard> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ca(&self) -> MutexGuard<'_, Ca> {
        self.ca.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A minimal HTTP/1.1 GET with a short timeout (probes and metrics, plain listener).
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// Writes a new serving pair from `ca` into `cert_dir` as the kubelet updates a Secret volume:
/// the files in a new `..v<n>` directory, then the `..data` symlink swapped to it in one
/// rename, with `tls.crt` and `tls.key` links through `..data` (made once).
fn write_rotation(cert_dir: &Path, ca: &Ca, n: u32) -> Pair {
    let pair = ca
        .serving(&["127.0.0.1", "localhost"])
        .unwrap_or_else(|e| panic!("serving certificate: {e}"));
    let fail = |what: &str, e: std::io::Error| panic!("rotation: {what}: {e}");
    let version = format!("..v{n}");
    let version_dir = cert_dir.join(&version);
    std::fs::create_dir_all(&version_dir).unwrap_or_else(|e| fail("mkdir", e));
    pair.write(&version_dir, "tls")
        .unwrap_or_else(|e| panic!("rotation: write: {e}"));
    let tmp = cert_dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&version, &tmp).unwrap_or_else(|e| fail("symlink", e));
    std::fs::rename(&tmp, cert_dir.join("..data")).unwrap_or_else(|e| fail("rename", e));
    for file in ["tls.crt", "tls.key"] {
        let link = cert_dir.join(file);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{file}"), &link)
                .unwrap_or_else(|e| fail("symlink", e));
        }
    }
    pair
}
