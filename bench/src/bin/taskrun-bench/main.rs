//! `make bench`: starts a control plane (without kube-controller-manager) through the test
//! harness, runs the release webhook and controller against it, prints the figures of the
//! benchmarks issue and writes `.dev/bench/summary.json`. Counts come from BENCH_* variables
//! (see `settings.rs`).

mod controller;
mod settings;
mod summary;
mod webhook;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use taskrun_bench::cluster;
use taskrun_tests::webhook::Webhook;
use taskrun_tests::{ControlPlane, repo_root};

use settings::Settings;
use summary::{Summary, round};

fn main() -> anyhow::Result<()> {
    let out_dir = std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".dev/bench"));
    let work = out_dir.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    taskrun_tests::use_work_dir(work.clone());
    let started = Instant::now();
    eprintln!(
        "starting the control plane in {} (logs in logs/)",
        work.display()
    );
    let cp = ControlPlane::start_without_controller_manager(&work.join("cluster"))
        .context("starting the control plane")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(&cp, &out_dir, started));
    cp.stop();
    result
}

async fn run(cp: &ControlPlane, out_dir: &std::path::Path, started: Instant) -> anyhow::Result<()> {
    let s = Settings::from_env();
    s.check()?;
    let mut summary = Summary::default();
    let client = cp.client().await;
    summary.detail(
        "nproc",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    );
    summary.detail("loadavg_start", loadavg());

    // The release webhook, its index fed by its own watch on every namespace.
    let webhook = Webhook::start_with(cp, &["--log-level=info"]).await;
    let ns_index = cp.namespace("bench-index").await;
    if s.runs("webhook") || s.runs("memory") {
        eprintln!(
            "creating {} TaskRuns (no webhook registered yet)",
            s.indexed
        );
        let t = Instant::now();
        cluster::create_taskruns(&client, &ns_index, 0..s.indexed, s.api_concurrency).await?;
        let secs = t.elapsed().as_secs_f64();
        eprintln!("  {secs:.1} s ({:.0}/s)", s.indexed as f64 / secs);
        summary.detail("create_taskruns_per_s", round(s.indexed as f64 / secs));
        wait_indexed(&webhook, s.indexed).await?;
    }

    if s.runs("webhook") {
        // A second webhook over the same TaskRuns: it lists them all before it is ready (8 to
        // a page), as a webhook does again after its watch fails, answering creates with 503
        // meanwhile. Not a target; how long that takes at this size.
        let t = Instant::now();
        let listing = Webhook::start_with(cp, &["--log-level=info"]).await;
        let secs = t.elapsed().as_secs_f64();
        drop(listing);
        eprintln!(
            "a second webhook listed the {} TaskRuns and was ready in {secs:.2} s",
            s.indexed
        );
        summary.detail("webhook_start_listing_10k_seconds", round(secs));
        webhook::against_real(&s, &mut summary, &webhook, &ns_index).await?;
    }
    if s.runs("admission") {
        admission_added(cp, &client, &webhook, &s, &mut summary).await?;
    }
    if s.runs("index") {
        webhook::index_size_ratio(&s, &mut summary, webhook.cert_dir(), webhook.ca_path()).await?;
    }
    if s.runs("controller") {
        controller::versus_minimal_loop(cp, &client, &s, &mut summary).await?;
    }
    if s.runs("helm") {
        controller::versus_helm(cp, &client, &webhook, &s, &mut summary).await?;
    }
    webhook.stop();
    if s.runs("memory") {
        controller::memory(cp, &client, &ns_index, &s, &mut summary).await?;
    }

    summary.detail("loadavg_end", loadavg());
    summary.detail("total_seconds", started.elapsed().as_secs());
    let path = out_dir.join("summary.json");
    summary.write(&path)?;
    println!("\n{}", summary.table());
    println!("written to {}", path.display());
    Ok(())
}

/// Waits until the webhook's index (its metric) holds `n` TaskRuns.
async fn wait_indexed(webhook: &Webhook, n: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let indexed = webhook.metric("taskrun_webhook_index_taskruns");
        if indexed.is_some_and(|v| v as u64 >= n) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the webhook indexed {indexed:?} of {n} TaskRuns"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The seconds the webhook has spent answering `/validate` and `/mutate`, by its own
/// request-duration histogram.
fn webhook_seconds(webhook: &Webhook) -> f64 {
    let text = webhook.metrics();
    ["validate", "mutate"]
        .iter()
        .filter_map(|route| {
            let name = format!("taskrun_webhook_request_duration_seconds_sum{{route=\"{route}\"}}");
            taskrun_tests::metric(&text, &name)
        })
        .sum()
}

/// p50 of a sequential create through the API server with both webhooks registered minus
/// without, in alternating blocks.
async fn admission_added(
    cp: &ControlPlane,
    client: &kube::Client,
    webhook: &Webhook,
    s: &Settings,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let ns = cp.namespace("bench-admission").await;
    let block = s.admission_creates / 2;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut next = 0;
    eprintln!(
        "admission: {} sequential creates with and without the webhooks",
        2 * 2 * block
    );
    let answering = webhook_seconds(webhook);
    let calls_before = cluster::webhook_call_seconds(client).await?;
    for round in 0..2 {
        for registered in [false, true] {
            if registered {
                webhook.register(cp).await;
            } else if round > 0 {
                cluster::unregister_webhooks(client).await?;
            }
            let times = cluster::create_taskruns(client, &ns, next..next + block, 1).await?;
            next += block;
            if registered {
                with.extend(times)
            } else {
                without.extend(times)
            }
        }
    }
    cluster::unregister_webhooks(client).await?;
    let answering = webhook_seconds(webhook) - answering;
    let per_create = |seconds: f64| seconds * 1e3 / with.len().max(1) as f64;
    let webhook_ms = per_create(answering);
    let calls = cluster::moved_per(
        &calls_before,
        &cluster::webhook_call_seconds(client).await?,
        with.len().max(1) as f64 / 1e3,
    );
    let (p_without, p_with) = (p50_ms(&mut without), p50_ms(&mut with));
    eprintln!(
        "  p50 without {p_without:.3} ms, with {p_with:.3} ms; the webhook's own time answering both reviews of a create: {webhook_ms:.3} ms on average"
    );
    eprintln!("  the API server's time in each webhook call, ms per create: {calls:?}");
    summary.detail("webhook_ms_per_create", round(webhook_ms));
    summary.detail(
        "apiserver_webhook_call_ms_per_create",
        serde_json::to_value(&calls)?,
    );
    summary.figure("admission_added_p50_ms", p_with - p_without);
    summary.detail("create_p50_ms_without_webhooks", round(p_without));
    summary.detail("create_p50_ms_with_webhooks", round(p_with));
    Ok(())
}

fn p50_ms(v: &mut [Duration]) -> f64 {
    v.sort();
    v.get(v.len() / 2)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}
