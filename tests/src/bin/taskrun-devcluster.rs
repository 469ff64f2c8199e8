//! `taskrun-devcluster --dir .dev`: the test harness's control plane for development, in the
//! foreground until SIGINT or SIGTERM (`make cluster`; `make up` runs it in the background).
//! Writes `<dir>/kubeconfig`, logs to `<dir>/logs/`, and `<dir>/cluster.ready` (the API
//! server URL) once the CRD is Established; removes the marker when it stops.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use taskrun_tests::ControlPlane;

#[derive(Parser)]
#[command(about = "Run etcd, kube-apiserver and kube-controller-manager with the TaskRun CRD")]
struct Args {
    /// State directory (certificates, etcd data, kubeconfig, logs); wiped and rewritten.
    #[arg(long, default_value = ".dev")]
    dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let ready = dir.join("cluster.ready");
    let _ = std::fs::remove_file(&ready);
    taskrun_tests::use_work_dir(dir.clone());
    let started = std::time::Instant::now();
    let cp = ControlPlane::start(&dir)?;
    std::fs::write(&ready, cp.server_url())?;
    eprintln!(
        "control plane ready at {} in {:.1}s (KUBECONFIG={}); Ctrl-C stops it",
        cp.server_url(),
        started.elapsed().as_secs_f64(),
        cp.kubeconfig().display()
    );
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run_until_stopped(&cp));
    let _ = std::fs::remove_file(&ready);
    eprintln!("stopping the control plane");
    cp.stop();
    outcome
}

/// Returns on SIGINT or SIGTERM, or with an error when a component dies: a half-alive
/// cluster must not pass for a running one (`make up` then starts a new one).
async fn run_until_stopped(cp: &ControlPlane) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = tick.tick() => cp.check_alive()?,
        }
    }
}
