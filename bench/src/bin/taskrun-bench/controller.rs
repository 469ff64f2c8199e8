//! The controller figures: against the minimal write loop, against Helm, and its memory
//! after reconciling the indexed TaskRuns.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kube::Client;
use serde_json::json;
use taskrun_bench::cluster::{self, Controller};
use taskrun_bench::review;
use taskrun_tests::webhook::Webhook;
use taskrun_tests::{ControlPlane, repo_root};

use crate::settings::Settings;
use crate::summary::{Summary, round};

const TIMEOUT: Duration = Duration::from_secs(900);

/// The same TaskRuns in two namespaces; the controller brings one to "Job named" while the
/// minimal loop does the same writes for the other. Rates are TaskRuns per second from the
/// moment each is started (the controller process, the loop) to the last status.
pub async fn versus_minimal_loop(
    cp: &ControlPlane,
    client: &Client,
    s: &Settings,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let n = s.taskruns;
    let (ns_ctrl, ns_loop) = (
        cp.namespace("bench-ctrl").await,
        cp.namespace("bench-loop").await,
    );
    for ns in [&ns_ctrl, &ns_loop] {
        cluster::create_taskruns(client, ns, 0..n, s.api_concurrency).await?;
    }
    eprintln!(
        "controller vs minimal loop: {n} TaskRuns each, concurrency {}",
        s.api_concurrency
    );

    let cp_cpu = || -> anyhow::Result<f64> {
        let mut total = 0.0;
        for pid in cp.component_pids() {
            total += cluster::cpu_time(pid)?.as_secs_f64();
        }
        Ok(total)
    };
    // The controller's own client setup (timeouts, retries), as the controller builds it.
    let loop_client = cluster::controller_client(cp).await?;
    let before = cluster::api_requests(client).await?;
    let (cp_before, own_before) = (cp_cpu()?, cluster::cpu_time(std::process::id())?);
    let started = Instant::now();
    let count = cluster::minimal_loop(&loop_client, &ns_loop, s.api_concurrency).await?;
    let loop_secs = started.elapsed().as_secs_f64();
    let loop_cp_ms = (cp_cpu()? - cp_before) * 1e3 / n as f64;
    let loop_client_ms =
        (cluster::cpu_time(std::process::id())? - own_before).as_secs_f64() * 1e3 / n as f64;
    let loop_requests =
        cluster::moved_per(&before, &cluster::api_requests(client).await?, n as f64);
    if count as u64 != n {
        bail!("the minimal loop saw {count} TaskRuns, expected {n}");
    }
    eprintln!(
        "  minimal loop: {loop_secs:.2} s ({:.0} TaskRuns/s)",
        n as f64 / loop_secs
    );

    let watch = tokio::spawn({
        let (client, ns) = (client.clone(), ns_ctrl.clone());
        async move { cluster::all_have_jobs(&client, &ns, n as usize, TIMEOUT).await }
    });
    let before_ctrl = cluster::api_requests(client).await?;
    let cp_before = cp_cpu()?;
    let started = Instant::now();
    let mut controller = Controller::start(cp, &ns_ctrl)?;
    let done = watch.await??;
    let ctrl_secs = done.duration_since(started).as_secs_f64();
    eprintln!(
        "  controller:   {ctrl_secs:.2} s ({:.0} TaskRuns/s)",
        n as f64 / ctrl_secs
    );
    // The controller's echo reconciles and Events may still be under way; counted until here.
    let ctrl_requests = cluster::moved_per(
        &before_ctrl,
        &cluster::api_requests(client).await?,
        n as f64,
    );
    let ctrl_cp_ms = (cp_cpu()? - cp_before) * 1e3 / n as f64;
    let ctrl_own_ms = cluster::cpu_time(controller.child.pid())?.as_secs_f64() * 1e3 / n as f64;
    eprintln!(
        "  CPU per TaskRun: minimal loop {loop_client_ms:.2} ms + control plane {loop_cp_ms:.2} ms; \
         controller {ctrl_own_ms:.2} ms + control plane {ctrl_cp_ms:.2} ms"
    );
    summary.detail("cpu_ms_per_taskrun_minimal_loop", round(loop_client_ms));
    summary.detail("cpu_ms_per_taskrun_controller", round(ctrl_own_ms));
    summary.detail(
        "control_plane_cpu_ms_per_taskrun_minimal_loop",
        round(loop_cp_ms),
    );
    summary.detail(
        "control_plane_cpu_ms_per_taskrun_controller",
        round(ctrl_cp_ms),
    );
    eprintln!("  API requests per TaskRun, minimal loop: {loop_requests:?}");
    eprintln!("  API requests per TaskRun, controller:   {ctrl_requests:?}");
    controller.child.terminate();
    summary.detail(
        "api_requests_per_taskrun_minimal_loop",
        serde_json::to_value(&loop_requests)?,
    );
    summary.detail(
        "api_requests_per_taskrun_controller",
        serde_json::to_value(&ctrl_requests)?,
    );

    summary.figure("controller_vs_ceiling", loop_secs / ctrl_secs);
    summary.detail("controller_taskruns_per_s", round(n as f64 / ctrl_secs));
    summary.detail("minimal_loop_taskruns_per_s", round(n as f64 / loop_secs));
    summary.detail("controller_vs_ceiling_taskruns", n);
    Ok(())
}

/// Helm: one `helm install` of the legacy chart per task, one after another. TaskRuns: the
/// same tasks applied one after another (with both webhooks registered and the controller
/// running and ready), until every TaskRun names its Job.
pub async fn versus_helm(
    cp: &ControlPlane,
    client: &Client,
    webhook: &Webhook,
    s: &Settings,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let n = s.helm_tasks;
    let helm = helm_bin()?;
    let ns_helm = cp.namespace("bench-helm").await;
    let home = cp.work_dir().join("helm-home");
    let values_dir = cp.work_dir().join("helm-values");
    std::fs::create_dir_all(&values_dir)?;
    let chart = repo_root().join("tests/fixtures/legacy-chart");
    let mut values = Vec::new();
    for i in 0..n {
        let tr = review::taskrun(&ns_helm, i);
        let spec = &tr["spec"];
        let files: serde_json::Map<_, _> = spec["markdownFiles"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                (
                    f["filename"].as_str().unwrap_or_default().to_owned(),
                    f["content"].clone(),
                )
            })
            .collect();
        let v = json!({
            "serviceName": spec["serviceName"], "taskId": spec["taskId"].to_string(),
            "agentName": "", "files": files,
        });
        let path = values_dir.join(format!("{i}.json"));
        std::fs::write(&path, v.to_string())?;
        values.push((review::name(i), path));
    }
    eprintln!("helm: {n} sequential installs of the legacy chart");
    let started = Instant::now();
    for (name, path) in &values {
        let out = Command::new(&helm)
            .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
            .args(["--namespace", &ns_helm, "install", name])
            .arg(&chart)
            .arg("-f")
            .arg(path)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .output()?;
        if !out.status.success() {
            bail!(
                "helm install {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let helm_secs = started.elapsed().as_secs_f64();
    eprintln!("  helm: {helm_secs:.2} s");

    webhook.register(cp).await;
    let ns_fast = cp.namespace("bench-fast").await;
    let mut controller = Controller::start(cp, &ns_fast)?;
    controller.ready(Duration::from_secs(60)).await?;
    let watch = tokio::spawn({
        let (client, ns) = (client.clone(), ns_fast.clone());
        async move { cluster::all_have_jobs(&client, &ns, n as usize, TIMEOUT).await }
    });
    // Let the watch list the (empty) namespace before the clock starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cluster::api_requests(client).await?;
    let started = Instant::now();
    let creates = cluster::create_taskruns(client, &ns_fast, 0..n, 1).await?;
    let created_secs = started.elapsed().as_secs_f64();
    let done = watch.await??;
    let fast_secs = done.duration_since(started).as_secs_f64();
    let requests = cluster::moved_per(&before, &cluster::api_requests(client).await?, n as f64);
    let create_ms: f64 = creates.iter().map(|d| d.as_secs_f64() * 1e3).sum::<f64>() / n as f64;
    eprintln!(
        "  TaskRuns: {fast_secs:.3} s (all created after {created_secs:.3} s, {create_ms:.1} ms per create)"
    );
    eprintln!("  API requests per TaskRun, creates included: {requests:?}");
    summary.detail("taskruns_created_seconds", round(created_secs));
    summary.detail(
        "api_requests_per_taskrun_vs_helm",
        serde_json::to_value(&requests)?,
    );
    controller.child.terminate();
    cluster::unregister_webhooks(client).await?;

    summary.figure("speedup_vs_helm", helm_secs / fast_secs);
    summary.detail("helm_seconds", round(helm_secs));
    summary.detail("taskruns_seconds", round(fast_secs));
    Ok(())
}

/// A controller for the namespace holding the indexed TaskRuns; its RSS once every one names
/// its Job.
pub async fn memory(
    cp: &ControlPlane,
    client: &Client,
    namespace: &str,
    s: &Settings,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    eprintln!("controller reconciling {} TaskRuns", s.indexed);
    let watch = tokio::spawn({
        let (client, ns, n) = (client.clone(), namespace.to_owned(), s.indexed as usize);
        async move { cluster::all_have_jobs(&client, &ns, n, TIMEOUT).await }
    });
    let started = Instant::now();
    let mut controller = Controller::start(cp, namespace)?;
    let done = watch.await??;
    let secs = done.duration_since(started).as_secs_f64();
    // A moment for the last status writes' responses and events to settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = cluster::rss_mib(controller.child.pid())?;
    let peak = cluster::memory_mib(controller.child.pid(), "VmHWM")?;
    eprintln!(
        "  {secs:.1} s ({:.0} TaskRuns/s), RSS {rss:.1} MiB (peak {peak:.1})",
        s.indexed as f64 / secs
    );
    controller.child.terminate();
    summary.figure("controller_rss_mib_10k", rss);
    summary.detail("controller_peak_rss_mib_10k", round(peak));
    summary.detail("controller_10k_seconds", round(secs));

    // A new leader over the same, finished, TaskRuns: it lists all of them and all their
    // children at once before its first reconcile. That peak, not the steady RSS, is what the
    // pod's memory limit must cover.
    let mut restarted = Controller::start(cp, namespace)?;
    restarted.ready(Duration::from_secs(120)).await?;
    // Ready once its caches are filled; done once it has reconciled every TaskRun once.
    let reconciled = cluster::reconciled_at_least(&restarted, s.indexed, Duration::from_secs(300));
    if !reconciled.await {
        bail!(
            "the restarted controller did not reconcile {} TaskRuns in 300 s",
            s.indexed
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = restarted.child.pid();
    let restart_peak = cluster::memory_mib(pid, "VmHWM")?;
    let restart_rss = cluster::rss_mib(pid)?;
    eprintln!("  restarted over them: peak {restart_peak:.1} MiB, then RSS {restart_rss:.1} MiB");
    restarted.child.terminate();
    summary.detail("controller_restart_peak_rss_mib_10k", round(restart_peak));
    summary.detail("controller_restart_rss_mib_10k", round(restart_rss));
    Ok(())
}

fn helm_bin() -> anyhow::Result<PathBuf> {
    let out = Command::new(repo_root().join("tests/helm/build.sh"))
        .output()
        .context("running tests/helm/build.sh")?;
    if !out.status.success() {
        bail!(
            "tests/helm/build.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}
