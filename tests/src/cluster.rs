//! A real control plane: etcd, kube-apiserver and kube-controller-manager (built from the
//! Kubernetes Go modules by `tests/cluster/build.sh`) on free loopback ports, with the TaskRun
//! CRD installed. One per test binary ([`ControlPlane::shared`]); the dev cluster
//! (`taskrun-devcluster`, behind `make up`) runs the same code with a persistent directory.

mod components;
mod pki;

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::process::{self, ChildGuard};
use components::Ports;
use pki::Pki;

/// Why the control plane could not start (the message includes the log tail of the
/// component that failed).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(String);

/// A running control plane: etcd, kube-apiserver, kube-controller-manager, the TaskRun CRD.
pub struct ControlPlane {
    bin_dir: PathBuf,
    work_dir: PathBuf,
    kubeconfig: PathBuf,
    ca_path: PathBuf,
    pki: Mutex<Pki>,
    server_url: String,
    apiserver_args: Vec<String>,
    apiserver: Mutex<Option<ChildGuard>>,
    others: Mutex<Vec<ChildGuard>>,
    counter: AtomicU64,
    /// False for [`ControlPlane::start_without_controller_manager`].
    controller_manager: bool,
}

impl ControlPlane {
    /// The control plane of this test binary, started on the first call (blocking; allow up
    /// to a couple of minutes on 2 cores). Panics with the failing component's log tail.
    pub fn shared() -> &'static ControlPlane {
        static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
        let started = SHARED.get_or_init(|| {
            let work_dir = process::work_dir().to_path_buf();
            Self::start(&work_dir).map_err(|e| e.to_string())
        });
        match started {
            Ok(cp) => cp,
            Err(e) => panic!("the test control plane did not start: {e}"),
        }
    }

    /// Starts a control plane whose state lives in `work_dir` (certificates in `pki/`, etcd
    /// data in `etcd/`, logs in the process work dir's `logs/`, admin kubeconfig at
    /// `kubeconfig`). Retries with other ports when one was taken in the meantime.
    pub fn start(work_dir: &Path) -> Result<ControlPlane, StartError> {
        Self::start_with(work_dir, true)
    }

    /// Like [`ControlPlane::start`] but without kube-controller-manager (no Job, garbage or
    /// namespace controller): the benchmarks measure the TaskRun controller's own API work.
    pub fn start_without_controller_manager(work_dir: &Path) -> Result<ControlPlane, StartError> {
        Self::start_with(work_dir, false)
    }

    fn start_with(work_dir: &Path, controller_manager: bool) -> Result<ControlPlane, StartError> {
        let bin_dir = components::locate_binaries()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(&bin_dir, work_dir, controller_manager) {
                Err(e) if attempt < 3 && e.0.contains("address already in use") => continue,
                other => return other,
            }
        }
    }

    fn start_once(
        bin_dir: &Path,
        work_dir: &Path,
        controller_manager: bool,
    ) -> Result<ControlPlane, StartError> {
        let ports = Ports::pick();
        let server_url = format!("https://127.0.0.1:{}", ports.apiserver);
        let pki = Pki::create(work_dir, &server_url)?;
        let etcd = components::start_etcd(bin_dir, work_dir, &ports)?;
        let apiserver_args = components::apiserver_args(work_dir, &pki, &ports);
        let apiserver = components::spawn(bin_dir, "kube-apiserver", &apiserver_args)?;
        let cp = ControlPlane {
            bin_dir: bin_dir.to_path_buf(),
            work_dir: work_dir.to_path_buf(),
            kubeconfig: pki.admin_kubeconfig.clone(),
            ca_path: pki.ca_path.clone(),
            pki: Mutex::new(pki),
            server_url,
            apiserver_args,
            apiserver: Mutex::new(Some(apiserver)),
            others: Mutex::new(vec![etcd]),
            counter: AtomicU64::new(0),
            controller_manager,
        };
        let kubeconfig = cp.kubeconfig().to_path_buf();
        let crd = crate::repo_root().join(taskrun::crd::CRD_PATH);
        on_own_runtime(async move {
            cp.wait_until_ready().await?;
            components::install_crd(&kubeconfig, &crd).await?;
            if !cp.controller_manager {
                return Ok(cp);
            }
            // After the CRD: the garbage collector's first discovery then sees TaskRuns.
            let kcm_args = components::controller_manager_args(&kubeconfig);
            let kcm = components::spawn(&cp.bin_dir, "kube-controller-manager", &kcm_args)?;
            cp.others().push(kcm);
            Ok(cp)
        })
    }

    /// The admin kubeconfig (client certificate in group `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The CA that signed the API server's serving certificate and every client certificate.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// Where kube-apiserver, kube-controller-manager, etcd and kubectl are.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// This control plane's directory (`logs/` inside), removed at exit for tests.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// The process ids of the running components (kube-apiserver, etcd, ...), for the
    /// benchmarks' CPU accounting.
    pub fn component_pids(&self) -> Vec<u32> {
        let apiserver = self.apiserver.lock().unwrap_or_else(|e| e.into_inner());
        let others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        apiserver
            .iter()
            .chain(others.iter())
            .map(|c| c.pid())
            .collect()
    }

    /// The admin's client configuration, for a client built another way (the controller's).
    pub async fn config(&self) -> kube::Config {
        config_for(self.kubeconfig())
            .await
            .unwrap_or_else(|e| panic!("cannot read the test cluster's kubeconfig: {e}"))
    }

    /// A new admin client on the calling runtime.
    pub async fn client(&self) -> kube::Client {
        client_for(self.kubeconfig())
            .await
            .unwrap_or_else(|e| panic!("cannot build a client for the test cluster: {e}"))
    }

    /// `kubectl --kubeconfig=<admin>`, with a discovery cache private to this binary.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("kubectl"));
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig().display()))
            .arg(format!(
                "--cache-dir={}",
                self.work_dir.join("kubectl-cache").display()
            ));
        cmd
    }

    /// A kubeconfig for `user` in `groups`, authenticated by a client certificate signed by
    /// the cluster CA.
    pub fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.pki
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .user_kubeconfig(&format!("user-{n}"), user, groups, &self.server_url)
            .unwrap_or_else(|e| panic!("cannot write a kubeconfig for {user}: {e}"))
    }

    /// Creates a namespace `<prefix>-<counter>-<random>` and returns its name.
    pub async fn namespace(&self, prefix: &str) -> String {
        self.namespace_with_labels(prefix, &[]).await
    }

    /// Like [`ControlPlane::namespace`], with these labels (e.g. Pod Security levels).
    pub async fn namespace_with_labels(&self, prefix: &str, labels: &[(&str, &str)]) -> String {
        let name = self.namespace_name(prefix);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        kube::Api::<Namespace>::all(self.client().await)
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
        name
    }

    /// Stops kube-apiserver (SIGTERM, then SIGKILL after 10 s).
    pub fn stop_apiserver(&self) {
        if let Some(mut apiserver) = self.apiserver_slot().take() {
            apiserver.terminate();
        }
    }

    /// Starts kube-apiserver again (same port, etcd and flags) and waits until it is ready.
    pub fn start_apiserver(&self) {
        {
            let mut slot = self.apiserver_slot();
            if slot.as_mut().is_some_and(ChildGuard::is_running) {
                return;
            }
            let apiserver =
                components::spawn(&self.bin_dir, "kube-apiserver", &self.apiserver_args)
                    .unwrap_or_else(|e| panic!("{e}"));
            *slot = Some(apiserver);
        }
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    runtime().block_on(async {
                        self.wait_until_ready().await?;
                        let client = self.client().await;
                        components::wait_for_openapi(&client).await
                    })
                })
                .join()
        })
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        .unwrap_or_else(|e| panic!("kube-apiserver did not come back: {e}"));
    }

    /// Fails, with its log tail, when a component has exited (a stopped API server counts
    /// as intended).
    pub fn check_alive(&self) -> Result<(), StartError> {
        for child in self.others().iter_mut() {
            components::check_alive(child)?;
        }
        match self.apiserver_slot().as_mut() {
            Some(apiserver) => components::check_alive(apiserver),
            None => Ok(()),
        }
    }

    /// Stops every component (SIGTERM, then SIGKILL), the controller manager first.
    pub fn stop(&self) {
        let mut others = self.others();
        if self.controller_manager
            && let Some(mut kcm) = others.pop()
        {
            kcm.terminate();
        }
        self.stop_apiserver();
        for mut child in others.drain(..) {
            child.terminate();
        }
    }

    fn apiserver_slot(&self) -> MutexGuard<'_, Option<ChildGuard>> {
        self.apiserver.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn others(&self) -> MutexGuard<'_, Vec<ChildGuard>> {
        self.others.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn namespace_name(&self, prefix: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(n);
        let random = format!("{:x}", hasher.finish() & 0xf_ffff);
        let prefix: String = prefix
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let prefix = prefix.trim_matches('-');
        let prefix = if prefix.is_empty() { "test" } else { prefix };
        format!("{prefix}-{n}-{random}")
    }

    /// Polls `/readyz` for up to 90 s; fails early, with its log tail, if a component died.
    async fn wait_until_ready(&self) -> Result<(), StartError> {
        let client = client_for(self.kubeconfig())
            .await
            .map_err(|e| StartError(format!("cannot build a client: {e}")))?;
        let deadline = std::time::Instant::now() + components::READY_TIMEOUT;
        loop {
            let readyz = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| StartError(e.to_string()))?;
            if client.request_text(readyz).await.is_ok() {
                return Ok(());
            }
            self.check_alive()?;
            if std::time::Instant::now() >= deadline {
                let log = self.work_dir_log("kube-apiserver");
                return Err(StartError(format!(
                    "kube-apiserver not ready after {:?}; last lines of {}:\n{}",
                    components::READY_TIMEOUT,
                    log.display(),
                    process::log_tail(&log, 30)
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    fn work_dir_log(&self, name: &str) -> PathBuf {
        process::work_dir().join("logs").join(format!("{name}.log"))
    }
}

async fn config_for(kubeconfig: &Path) -> Result<kube::Config, String> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).map_err(|e| e.to_string())?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| e.to_string())
}

async fn client_for(kubeconfig: &Path) -> Result<kube::Client, String> {
    kube::Client::try_from(config_for(kubeconfig).await?).map_err(|e| e.to_string())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot build a tokio runtime: {e}"))
}

/// Runs `fut` to completion on a fresh thread with its own runtime, so blocking callers work
/// from inside any tokio runtime, whatever its flavor.
fn on_own_runtime<T: Send + 'static>(
    fut: impl Future<Output = Result<T, StartError>> + Send + 'static,
) -> Result<T, StartError> {
    std::thread::spawn(move || runtime().block_on(fut))
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
