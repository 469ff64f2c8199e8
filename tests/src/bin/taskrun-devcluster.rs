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
    let cp = ControlPlane::start(&dir)?;
    std::fs::write(&ready, cp.server_url())?;
    eprintln!(
        "control plane ready at {} (KUBECONFIG={}); Ctrl-C stops it",
        cp.server_url(),
        cp.kubeconfig().display()
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(stop_signal())?;
    let _ = std::fs::remove_file(&ready);
    eprintln!("stopping the control plane");
    cp.stop();
    Ok(())
}

async fn stop_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
