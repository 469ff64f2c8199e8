//! The taskrun-controller binary as a child process of a test, against a [`ControlPlane`].

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::identity::{self, CONTROLLER_SERVICE_ACCOUNT, SYSTEM_NAMESPACE};
use crate::{ChildGuard, ControlPlane, Ended, free_addr, spawn_logged, workspace_bin};

/// Where the controllers of the tests hold their Leases: the operator's namespace, the only
/// one where manifests/base lets the controller's ServiceAccount use Leases.
pub const LEASE_NAMESPACE: &str = SYSTEM_NAMESPACE;

/// A running taskrun-controller. Killed when dropped.
pub struct Controller {
    child: ChildGuard,
    args: Vec<String>,
    kubeconfig: std::path::PathBuf,
    name: String,
    http_addr: SocketAddr,
}

impl Controller {
    /// Starts the controller as its ServiceAccount, with only the RBAC of manifests/base, as in
    /// a cluster; with a test image, text logs, a free /metrics port, quick retries and, unless
    /// `extra_args` name a Lease, leader election on a Lease of its own (so parallel tests
    /// never wait on each other). `extra_args` override any of these. Pass `--namespace=NS` to
    /// keep it to one test's namespace.
    pub fn start(cp: &ControlPlane, extra_args: &[&str]) -> Controller {
        let kubeconfig = identity::kubeconfig_as(cp, CONTROLLER_SERVICE_ACCOUNT);
        Self::start_through(kubeconfig, None, extra_args)
    }

    /// The same, reaching the API server as `kubeconfig` says (a fault proxy's), its log
    /// named `name` when given.
    pub fn start_through(
        kubeconfig: std::path::PathBuf,
        name: Option<&str>,
        extra_args: &[&str],
    ) -> Controller {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // The flag itself: `--lease-name` is not given by `--lease-namespace=...`.
        let given = |flag: &str| {
            extra_args.iter().any(|a| {
                a.strip_prefix(flag)
                    .is_some_and(|v| v.is_empty() || v.starts_with('='))
            })
        };
        let http_addr = extra_args
            .iter()
            .find_map(|a| a.strip_prefix("--http-addr=")?.parse().ok())
            .unwrap_or_else(free_addr);
        let mut args = Vec::new();
        let defaults = [
            ("--http-addr", http_addr.to_string()),
            ("--log-format", "text".to_owned()),
            ("--backoff-base-ms", "200".to_owned()),
            ("--backoff-max-seconds", "5".to_owned()),
            ("--image", "registry.example/agent:test".to_owned()),
            (
                "--lease-name",
                format!("taskrun-controller-test-{}-{n}", std::process::id()),
            ),
            ("--lease-namespace", LEASE_NAMESPACE.to_owned()),
            ("--lease-duration-seconds", "6".to_owned()),
            ("--lease-grace-seconds", "2".to_owned()),
            ("--identity", format!("controller-{n}")),
        ];
        for (flag, value) in defaults {
            if !given(flag) {
                args.push(format!("{flag}={value}"));
            }
        }
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        let name = name.map_or_else(|| format!("taskrun-controller-{n}"), str::to_owned);
        let child = spawn(&kubeconfig, &args, &name);
        Controller {
            child,
            args,
            kubeconfig,
            name,
            http_addr,
        }
    }

    /// SIGKILL: no cleanup, no Lease release.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// SIGTERM and wait (SIGKILL after `TERMINATE_GRACE`); how it ended.
    pub fn terminate(&mut self) -> Ended {
        self.child.terminate()
    }

    /// Kills the process and starts it again with the same arguments.
    pub fn restart(&mut self) {
        self.child.kill();
        self.child = spawn(&self.kubeconfig, &self.args, &self.name);
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Where /healthz, /readyz and /metrics are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The identity this replica uses in the Lease.
    pub fn identity(&self) -> Option<&str> {
        self.args.iter().find_map(|a| a.strip_prefix("--identity="))
    }

    /// The last lines of its log, for assertion messages.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::log_tail(self.child.log_path(), lines)
    }

    /// Its log file.
    pub fn log_path(&self) -> &std::path::Path {
        self.child.log_path()
    }
}

fn spawn(kubeconfig: &std::path::Path, args: &[String], name: &str) -> ChildGuard {
    let mut cmd = Command::new(workspace_bin("taskrun-controller"));
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("TASKRUN_LOG_LEVEL", "info,taskrun_controller=debug")
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE");
    spawn_logged(cmd, name).unwrap_or_else(|e| panic!("cannot start taskrun-controller: {e}"))
}
