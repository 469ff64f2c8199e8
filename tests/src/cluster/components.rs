//! The control-plane processes: where their binaries are, their flags, and their readiness.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};

use super::pki::Pki;
use super::{StartError, client_for};
use crate::process::{self, ChildGuard};

/// How long a component may take to become ready (2 busy cores are slow).
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Controllers the tests rely on: Jobs run, owners cascade, namespaces can be deleted,
/// namespaces get a `default` ServiceAccount, finished Jobs with a TTL go away, ClusterRoles
/// labelled for aggregation reach the built-in `view`, `edit` and `admin`.
const CONTROLLERS: &str = "job-controller,garbage-collector-controller,namespace-controller,\
serviceaccount-controller,ttl-after-finished-controller,clusterrole-aggregation-controller";

pub(super) struct Ports {
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub apiserver: u16,
}

impl Ports {
    /// Three distinct free loopback ports.
    pub fn pick() -> Self {
        Ports {
            etcd_client: crate::free_port(),
            etcd_peer: crate::free_port(),
            apiserver: crate::free_port(),
        }
    }
}

/// `$TASKRUN_CONTROL_PLANE_BIN`, or the cached build of `tests/cluster/build.sh` (which
/// builds once per machine).
pub(super) fn locate_binaries() -> Result<PathBuf, StartError> {
    if let Some(dir) = std::env::var_os("TASKRUN_CONTROL_PLANE_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let script = crate::repo_root().join("tests/cluster/build.sh");
    let output = Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| StartError(format!("cannot run {}: {e}", script.display())))?;
    if !output.status.success() {
        return Err(StartError(format!(
            "{} failed ({}); see its output above",
            script.display(),
            output.status
        )));
    }
    let dir = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    Ok(PathBuf::from(dir))
}

pub(super) fn spawn(bin_dir: &Path, name: &str, args: &[String]) -> Result<ChildGuard, StartError> {
    let mut cmd = Command::new(bin_dir.join(name));
    cmd.args(args);
    process::spawn_logged(cmd, name).map_err(|e| StartError(format!("cannot start {name}: {e}")))
}

/// Fails with the component's log tail when it has exited.
pub(super) fn check_alive(child: &mut ChildGuard) -> Result<(), StartError> {
    if child.is_running() {
        return Ok(());
    }
    let log = child.log_path();
    let name = log.file_stem().unwrap_or_default().to_string_lossy();
    Err(StartError(format!(
        "{name} exited; last lines of {}:\n{}",
        log.display(),
        process::log_tail(log, 30)
    )))
}

/// Starts etcd on fresh data and waits until its client port accepts connections.
pub(super) fn start_etcd(
    bin_dir: &Path,
    work_dir: &Path,
    ports: &Ports,
) -> Result<ChildGuard, StartError> {
    let data_dir = work_dir.join("etcd");
    if data_dir.exists() {
        std::fs::remove_dir_all(&data_dir)
            .map_err(|e| StartError(format!("cannot clear {}: {e}", data_dir.display())))?;
    }
    let client = format!("http://127.0.0.1:{}", ports.etcd_client);
    let peer = format!("http://127.0.0.1:{}", ports.etcd_peer);
    let args = [
        "--name=default".to_owned(),
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=default={peer}"),
        // Test data is disposable: skipping fsync makes etcd fast on a busy disk.
        "--unsafe-no-fsync=true".to_owned(),
        "--log-level=warn".to_owned(),
    ];
    let mut etcd = spawn(bin_dir, "etcd", &args)?;
    let deadline = Instant::now() + READY_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", ports.etcd_client)).is_err() {
        check_alive(&mut etcd)?;
        if Instant::now() >= deadline {
            return Err(StartError(format!(
                "etcd not listening after {READY_TIMEOUT:?}; last lines of its log:\n{}",
                process::log_tail(etcd.log_path(), 30)
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(etcd)
}

pub(super) fn apiserver_args(work_dir: &Path, pki: &Pki, ports: &Ports) -> Vec<String> {
    let server = format!("https://127.0.0.1:{}", ports.apiserver);
    vec![
        format!("--etcd-servers=http://127.0.0.1:{}", ports.etcd_client),
        format!("--secure-port={}", ports.apiserver),
        "--bind-address=127.0.0.1".to_owned(),
        "--advertise-address=127.0.0.1".to_owned(),
        // The `kubernetes` Service's endpoints may not be loopback, and nothing in-cluster
        // needs them.
        "--endpoint-reconciler-type=none".to_owned(),
        format!("--cert-dir={}", work_dir.join("pki").display()),
        format!("--tls-cert-file={}", pki.serving_cert.display()),
        format!("--tls-private-key-file={}", pki.serving_key.display()),
        format!("--client-ca-file={}", pki.ca_path.display()),
        "--authorization-mode=RBAC".to_owned(),
        format!("--service-account-issuer={server}"),
        format!(
            "--service-account-key-file={}",
            pki.service_account_cert.display()
        ),
        format!(
            "--service-account-signing-key-file={}",
            pki.service_account_key.display()
        ),
        "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
        "--allow-privileged=true".to_owned(),
        // No token controller mounts service-account tokens (envtest does the same); the
        // PodSecurity plugin stays on.
        "--disable-admission-plugins=ServiceAccount".to_owned(),
        // As on hardened clusters (and OpenShift): setting blockOwnerDeletion on a child needs
        // `update` on the owner's finalizers, so the controller's RBAC is tested for it.
        "--enable-admission-plugins=OwnerReferencesPermissionEnforcement".to_owned(),
        // One client (the tests) and no fairness to protect: skip the APF machinery.
        "--enable-priority-and-fairness=false".to_owned(),
        // On SIGTERM, end open watches after 1 s instead of waiting out the 60 s server
        // shutdown timeout: stop_apiserver (fault injection) and make down stay quick.
        "--shutdown-watch-termination-grace-period=1s".to_owned(),
    ]
}

pub(super) fn controller_manager_args(kubeconfig: &Path) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--controllers={CONTROLLERS}"),
        "--leader-elect=false".to_owned(),
        "--use-service-account-credentials=false".to_owned(),
        "--secure-port=0".to_owned(),
    ]
}

/// Server-side applies the committed CRD and waits until it is Established.
pub(super) async fn install_crd(kubeconfig: &Path, crd_path: &Path) -> Result<(), StartError> {
    let err = |what: &str, e: &dyn std::fmt::Display| {
        StartError(format!("CRD {}: {what}: {e}", crd_path.display()))
    };
    let yaml = std::fs::read_to_string(crd_path).map_err(|e| err("cannot read", &e))?;
    let crd: CustomResourceDefinition =
        serde_yaml_ng::from_str(&yaml).map_err(|e| err("cannot parse", &e))?;
    let name = crd.metadata.name.clone().unwrap_or_default();
    let client = client_for(kubeconfig)
        .await
        .map_err(|e| err("no client", &e))?;
    let api = kube::Api::<CustomResourceDefinition>::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply("taskrun-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .map_err(|e| err("the API server rejected it", &e))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let current = api
            .get(&name)
            .await
            .map_err(|e| err("cannot read back", &e))?;
        let established = current
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            break;
        }
        if Instant::now() >= deadline {
            return Err(err("not Established", &format!("after {READY_TIMEOUT:?}")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_openapi(&client).await
}

/// Waits until the API server publishes the TaskRun schema in OpenAPI v3 (asynchronously,
/// after Established), which `kubectl explain` and client-side validation read.
pub(super) async fn wait_for_openapi(client: &kube::Client) -> Result<(), StartError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let request = http::Request::get("/openapi/v3")
            .body(Vec::new())
            .map_err(|e| StartError(e.to_string()))?;
        if let Ok(text) = client.request_text(request).await
            && text.contains("\"apis/orchestrator.io/v1\"")
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(StartError(format!(
                "the TaskRun schema is not in /openapi/v3 after {READY_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
