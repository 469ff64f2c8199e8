//! The test harness: a real control plane (etcd, kube-apiserver, kube-controller-manager built
//! from the Kubernetes Go modules, see `tests/cluster/`), child processes that never outlive
//! the test binary, and polling helpers. The integration tests live in `tests/tests/`.

pub mod cluster;
pub mod controller;
pub mod fault_proxy;
pub mod identity;
pub mod kubelet;
pub mod policy;
mod ports;
mod process;
pub mod tools;
mod wait;
pub mod webhook;

use std::path::PathBuf;

pub use cluster::ControlPlane;
pub use ports::{free_addr, free_port};
#[doc(hidden)]
pub use process::use_work_dir;
pub use process::{
    ChildGuard, Ended, log_tail, memory_kib, memory_limit_kib, spawn_logged, work_dir,
};
pub use wait::{wait_for, wait_gone};

/// GET `path` from a plain HTTP server (probes, metrics): the whole response, head and body,
/// or `None` when it cannot be had within 5 s.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        Some(response)
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .ok()?
}

/// Reads (and drops) what the peer sends until it closes the connection; false if it is still
/// open after `within`.
pub async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    within: std::time::Duration,
) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// The value of an unlabelled metric in a Prometheus text response.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Path of a workspace binary built by `cargo build --workspace --bins`.
pub fn workspace_bin(name: &str) -> PathBuf {
    // A test binary runs as <target>/debug/deps/<test>-<hash>; the binaries sit in <target>/debug.
    // A binary (the benchmarks, <target>/release/taskrun-bench) finds its siblings.
    let path = std::env::current_exe().ok().and_then(|exe| {
        let sibling = exe.parent()?.join(name);
        if sibling.is_file() {
            return Some(sibling);
        }
        Some(exe.parent()?.parent()?.join(name))
    });
    match path {
        Some(path) if path.is_file() => path,
        _ => panic!(
            "binary {name} not found next to the test binary: run `cargo build --workspace --bins` first (make test does)"
        ),
    }
}

/// The repository root. Taken from cargo at run time when cargo runs the tests; otherwise (a
/// binary run by `make up` or `make bench`) the working directory or the nearest directory
/// above it that holds the CRD. The path compiled in comes last: with one target dir per
/// machine, cargo reuses a binary built in a checkout at another path (a CI clone), and the
/// path compiled into it would be that checkout's.
pub fn repo_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") {
        return parent_of(PathBuf::from(dir));
    }
    let holds_crd = |dir: &&std::path::Path| dir.join(taskrun::crd::CRD_PATH).is_file();
    std::env::current_dir()
        .ok()
        .and_then(|cwd| cwd.ancestors().find(holds_crd).map(PathBuf::from))
        .unwrap_or_else(|| parent_of(PathBuf::from(env!("CARGO_MANIFEST_DIR"))))
}

fn parent_of(dir: PathBuf) -> PathBuf {
    dir.parent()
        .map_or_else(|| PathBuf::from(".."), PathBuf::from)
}
