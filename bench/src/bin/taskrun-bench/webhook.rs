//! The webhook figures: throughput against the ceiling server (alternating runs), open-loop
//! p99 with the watch-fed index, memory, and the in-process 100k vs 1k index comparison.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use taskrun_bench::load::{self, Report, Target};
use taskrun_bench::{cluster, review, tls};
use taskrun_tests::webhook::Webhook;
use taskrun_tests::{free_addr, spawn_logged, workspace_bin};
use taskrun_webhook::metrics::Metrics;

use crate::settings::Settings;
use crate::summary::{Summary, round};

/// Distinct review bodies cycled through by every run.
const BODIES: u64 = 2_000;
/// Open-loop connections: enough that 2,000 req/s never wait for a free one.
const OPEN_LOOP_CONNECTIONS: usize = 32;
/// Runs of each index size in the 100k vs 1k comparison, alternating; each size gets twice
/// `BENCH_SECONDS` in all.
const SWAPS: u32 = 10;

fn target(addr: SocketAddr, ca: &Path, bodies: Arc<Vec<bytes::Bytes>>) -> anyhow::Result<Target> {
    Ok(Target {
        addr,
        server_name: "localhost".into(),
        path: "/validate".into(),
        tls: tls::client_config(ca)?,
        bodies,
    })
}

fn describe(what: &str, r: &Report) {
    let lag = if r.send_lag.is_empty() {
        String::new()
    } else {
        let ms = |q: f64| r.send_lag.value_at_quantile(q) as f64 / 1e3;
        format!(
            "; the pacer thread itself ran late by p99 {:.3} ms, max {:.3} ms",
            ms(0.99),
            ms(1.0)
        )
    };
    eprintln!(
        "  {what}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, {} errors{lag}",
        r.rps(),
        r.percentile_ms(0.5),
        r.percentile_ms(0.99),
        r.percentile_ms(0.999),
        r.errors
    );
}

/// One side's closed-loop runs, summed.
#[derive(Default)]
struct Side {
    requests: u64,
    seconds: f64,
    /// CPU seconds of the server process.
    server_cpu: f64,
    /// CPU seconds of this process, the load generator.
    client_cpu: f64,
}

impl Side {
    fn add(&mut self, run: &Side) {
        self.requests += run.requests;
        self.seconds += run.seconds;
        self.server_cpu += run.server_cpu;
        self.client_cpu += run.client_cpu;
    }

    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    fn us_per_request(&self, cpu_seconds: f64) -> f64 {
        cpu_seconds * 1e6 / self.requests.max(1) as f64
    }
}

fn check(r: &Report, what: &str) -> anyhow::Result<()> {
    if r.errors > r.requests / 100 {
        bail!("{what}: {} errors in {} requests", r.errors, r.requests);
    }
    Ok(())
}

/// Throughput vs ceiling, p99 at the fixed rate, RSS: the real webhook process, whose index
/// its own watch filled with the TaskRuns of `namespace` (tasks `0..indexed`).
pub async fn against_real(
    s: &Settings,
    summary: &mut Summary,
    webhook: &Webhook,
    namespace: &str,
) -> anyhow::Result<()> {
    let bodies = Arc::new(review::bodies(namespace, s.indexed, BODIES));
    let mean_request = bodies.iter().map(|b| b.len()).sum::<usize>() / bodies.len();
    let addr: SocketAddr = format!("127.0.0.1:{}", webhook.port()).parse()?;
    let hook = target(addr, webhook.ca_path(), bodies.clone())?;
    let response_bytes = load::mean_response_bytes(&hook, 100).await?;
    summary.detail("review_request_bytes_mean", mean_request);
    summary.detail("review_response_bytes_mean", response_bytes);
    summary.detail(
        "webhook_rss_mib_10k_after_sync",
        crate::summary::round(cluster::rss_mib(webhook.pid())?),
    );

    // The ceiling: same certificate and key files, same load generator and client config.
    let ceiling_addr = free_addr();
    let mut cmd = Command::new(workspace_bin("ceiling"));
    cmd.arg(format!("--listen={ceiling_addr}"))
        .arg(format!(
            "--cert={}",
            webhook.cert_dir().join("tls.crt").display()
        ))
        .arg(format!(
            "--key={}",
            webhook.cert_dir().join("tls.key").display()
        ))
        .arg(format!("--response-bytes={response_bytes}"));
    let ceiling_process = spawn_logged(cmd, "ceiling")?;
    let ceiling = target(ceiling_addr, webhook.ca_path(), bodies.clone())?;
    wait_answering(&ceiling).await?;

    eprintln!(
        "webhook throughput vs ceiling: {} rounds of {:?} each, {} connections",
        s.rounds, s.seconds, s.concurrency
    );
    let (mut hook_total, mut ceiling_total) = (Side::default(), Side::default());
    let me = std::process::id();
    for round in 0..s.rounds {
        // Alternate which goes first, so neither always runs on a warmer (or busier) machine.
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_hook in order {
            let (t, what, pid) = if is_hook {
                (&hook, "webhook", webhook.pid())
            } else {
                (&ceiling, "ceiling", ceiling_process.pid())
            };
            let (server_before, client_before) = (cluster::cpu_time(pid)?, cluster::cpu_time(me)?);
            let r = load::closed_loop(t, s.concurrency, s.seconds).await?;
            let run = Side {
                requests: r.requests,
                seconds: r.elapsed.as_secs_f64(),
                server_cpu: (cluster::cpu_time(pid)? - server_before).as_secs_f64(),
                client_cpu: (cluster::cpu_time(me)? - client_before).as_secs_f64(),
            };
            describe(&format!("round {round} {what}"), &r);
            eprintln!(
                "    CPU per request: server {:.1} µs, load generator {:.1} µs",
                run.us_per_request(run.server_cpu),
                run.us_per_request(run.client_cpu)
            );
            check(&r, what)?;
            let total = if is_hook {
                &mut hook_total
            } else {
                &mut ceiling_total
            };
            total.add(&run);
        }
    }
    let (hook_rps, ceiling_rps) = (hook_total.rps(), ceiling_total.rps());
    summary.figure("webhook_throughput_vs_ceiling", hook_rps / ceiling_rps);
    summary.detail("webhook_rps", hook_rps.round());
    summary.detail("ceiling_rps", ceiling_rps.round());
    let server_us = |t: &Side| round(t.us_per_request(t.server_cpu));
    let client_us = |t: &Side| round(t.us_per_request(t.client_cpu));
    summary.detail("webhook_cpu_us_per_request", server_us(&hook_total));
    summary.detail("ceiling_cpu_us_per_request", server_us(&ceiling_total));
    summary.detail(
        "load_generator_cpu_us_per_request_webhook",
        client_us(&hook_total),
    );
    summary.detail(
        "load_generator_cpu_us_per_request_ceiling",
        client_us(&ceiling_total),
    );
    let (admit_us, scan_us) = admission_cost(namespace, s.indexed)?;
    // The server and the load generator share the machine's cores, and the webhook uses all
    // of them (webhook/src/workers.rs): while the cores are the limit, the rates are in the
    // inverse ratio of the CPU both sides spend per request.
    let ceiling_machine_us =
        ceiling_total.us_per_request(ceiling_total.server_cpu + ceiling_total.client_cpu);
    eprintln!(
        "  admit() in-process: {admit_us:.2} µs per review (serde_json scanning it: {scan_us:.2} µs); \
         server and load generator spend {:.1} µs of CPU per request with the ceiling, \
         so at 0.8 of its rate the pair may spend {:.1} µs with the webhook (spent: {:.1})",
        ceiling_machine_us,
        ceiling_machine_us / 0.8,
        hook_total.us_per_request(hook_total.server_cpu + hook_total.client_cpu),
    );
    summary.detail("admit_us_per_review", round(admit_us));
    summary.detail("json_scan_us_per_review", round(scan_us));

    eprintln!("webhook open loop at {} req/s for {:?}", s.rate, s.seconds);
    let r = load::open_loop(&hook, s.rate, s.seconds, OPEN_LOOP_CONNECTIONS).await?;
    describe("webhook (watch-fed index)", &r);
    check(&r, "open loop")?;
    summary.figure("webhook_p99_ms", r.percentile_ms(0.99));
    summary.detail("webhook_p50_ms", r.percentile_ms(0.5));
    summary.detail("webhook_p999_ms", r.percentile_ms(0.999));
    summary.detail("webhook_open_loop_achieved_rps", r.rps().round());
    summary.detail(
        "open_loop_pacer_late_p99_ms",
        r.send_lag.value_at_quantile(0.99) as f64 / 1e3,
    );
    // The same schedule against the ceiling: the latency floor of this machine, load
    // generator and TLS, under which no webhook can answer.
    let c = load::open_loop(&ceiling, s.rate, s.seconds, OPEN_LOOP_CONNECTIONS).await?;
    describe("ceiling (same schedule)", &c);
    check(&c, "ceiling open loop")?;
    summary.detail("ceiling_open_loop_p50_ms", c.percentile_ms(0.5));
    summary.detail("ceiling_open_loop_p99_ms", c.percentile_ms(0.99));
    summary.figure("webhook_rss_mib_10k", cluster::rss_mib(webhook.pid())?);
    Ok(())
}

/// What admission costs per review apart from HTTP and TLS, and what scanning the JSON alone
/// costs (bench/src/bin/admit-cost.rs), in µs.
fn admission_cost(namespace: &str, indexed: u64) -> anyhow::Result<(f64, f64)> {
    let out = Command::new(workspace_bin("admit-cost"))
        .arg(format!("--namespace={namespace}"))
        .arg(format!("--indexed={indexed}"))
        .output()
        .context("running admit-cost")?;
    if !out.status.success() {
        bail!(
            "admit-cost failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let cost: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("admit-cost's answer")?;
    let field = |k: &str| {
        cost[k]
            .as_f64()
            .with_context(|| format!("admit-cost gave no {k}"))
    };
    Ok((field("admit_us")?, field("json_scan_us")?))
}

async fn wait_answering(t: &Target) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match load::mean_response_bytes(t, 1).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.context("server never answered")),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// p99 at the fixed rate with 100,000 identities indexed over p99 with 1,000: one in-process
/// server (`taskrun_webhook::server::serve`) whose index is filled and emptied in place,
/// [`SWAPS`] short runs of each size, alternating, their latencies pooled per size.
pub async fn index_size_ratio(
    s: &Settings,
    summary: &mut Summary,
    cert_dir: &Path,
    ca: &Path,
) -> anyhow::Result<()> {
    const SMALL: u64 = 1_000;
    const LARGE: u64 = 100_000;
    let namespace = "bench-inprocess";
    let index = Arc::new(review::index(namespace, SMALL));

    let addr = free_addr();
    let config = taskrun_webhook::config::Config::try_parse_from([
        "taskrun-webhook".to_owned(),
        format!("--listen={addr}"),
        format!("--cert-dir={}", cert_dir.display()),
        "--metrics-listen=off".to_owned(),
    ])
    .context("webhook flags")?;
    // On a thread of its own with a single-threaded runtime, like the process's main thread
    // (webhook/src/main.rs; `serve` starts the other connection threads); stopped when the
    // runs are done.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn({
        let index = index.clone();
        move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let metrics = Arc::new(Metrics::default());
                tokio::select! {
                    served = taskrun_webhook::server::serve(config, index, metrics) => {
                        // Said at once: the runs would only time out waiting for it.
                        served
                            .context("in-process webhook")
                            .inspect_err(|e| eprintln!("{e:#}"))
                    }
                    _ = stopped => Ok(()),
                }
            })
        }
    });
    let bodies = Arc::new(review::bodies(namespace, SMALL, BODIES));
    let t = target(addr, ca, bodies)?;
    wait_answering(&t).await?;

    // Many short runs, alternating, pooled per size, so that both sizes sample this VM's
    // stalls (several ms, now and then) over the same stretch of time.
    let run = (s.seconds * 2 / SWAPS).max(Duration::from_secs(1));
    eprintln!(
        "in-process webhook, 1k vs 100k identities, {} req/s, {SWAPS} alternations of {run:?} each",
        s.rate
    );
    let (mut small, mut large): (Option<Histogram<u64>>, Option<Histogram<u64>>) = (None, None);
    for round in 0..SWAPS {
        let mut line = format!("  round {round}:");
        for size in [SMALL, LARGE] {
            if size == LARGE {
                for i in SMALL..LARGE {
                    index.apply(review::index_entry(namespace, i));
                }
            } else {
                for i in SMALL..LARGE {
                    index.delete(&review::index_entry(namespace, i));
                }
            }
            if index.len() as u64 != size {
                bail!("index holds {} identities, expected {size}", index.len());
            }
            let r = load::open_loop(&t, s.rate, run, OPEN_LOOP_CONNECTIONS).await?;
            check(&r, "in-process open loop")?;
            line += &format!(
                " {size} indexed p99 {:.3} ms (pacer late p99 {:.3});",
                r.percentile_ms(0.99),
                r.send_lag.value_at_quantile(0.99) as f64 / 1e3
            );
            let pooled = if size == SMALL {
                &mut small
            } else {
                &mut large
            };
            match pooled {
                Some(h) => h
                    .add(&r.latency)
                    .map_err(|e| anyhow::anyhow!("pooling latencies: {e:?}"))?,
                None => *pooled = Some(r.latency),
            }
        }
        eprintln!("{line}");
    }
    drop(stop);
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the in-process webhook thread panicked"))??;
    let p99 = |h: Option<Histogram<u64>>| h.map_or(0.0, |h| h.value_at_quantile(0.99) as f64 / 1e3);
    let (small, large) = (p99(small), p99(large));
    eprintln!("  pooled: p99 {small:.3} ms with 1000 indexed, {large:.3} ms with 100000");
    summary.figure("webhook_p99_ratio_100k_vs_1k", large / small);
    summary.detail("inprocess_p99_ms_1k", small);
    summary.detail("inprocess_p99_ms_100k", large);
    summary.detail(
        "inprocess_note",
        "100k vs 1k: index filled in-process through taskrun_webhook::server::serve, same TLS and load generator",
    );
    Ok(())
}
