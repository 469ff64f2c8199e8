//! What the webhook's admission code costs per review, apart from HTTP and TLS: `admit()`
//! over the benchmark's review bodies, in-process on one thread with the webhook's allocator
//! and an index filled as its watch fills it; next to it, what serde_json takes just to scan
//! the same bodies, the least any reader built on it can pay. Prints one JSON line.
//!
//!     admit-cost --namespace NS --indexed N

use std::time::{Duration, Instant};

use clap::Parser;
use taskrun_bench::review;
use taskrun_webhook::admission::{Hook, admit};

/// The webhook's allocator (webhook/src/main.rs), so allocations cost what they cost there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// The namespace of the review bodies and the index entries.
    #[arg(long)]
    namespace: String,
    /// Tasks `0..indexed` are in the index, as in the webhook process.
    #[arg(long)]
    indexed: u64,
    /// Distinct review bodies, cycled through.
    #[arg(long, default_value_t = 2_000)]
    bodies: u64,
}

/// Mean time of `f` per body, over whole passes of at least a second after one warm-up pass.
fn per_body(bodies: &[bytes::Bytes], mut f: impl FnMut(&[u8]) -> usize) -> (Duration, usize) {
    let mut kept = bodies.iter().map(|b| f(b)).sum::<usize>();
    let (started, mut calls) = (Instant::now(), 0u32);
    while started.elapsed() < Duration::from_secs(1) {
        kept += bodies.iter().map(|b| f(b)).sum::<usize>();
        calls += bodies.len() as u32;
    }
    (started.elapsed() / calls, kept)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let index = review::index(&args.namespace, args.indexed);
    let bodies = review::bodies(&args.namespace, args.indexed, args.bodies);

    // The answer's length is kept so that no work can be optimised away.
    let (admit, answered) = per_body(&bodies, |b| admit(Hook::Validate, b, &index).body.len());
    let (scan, scanned) = per_body(&bodies, |b| {
        usize::from(serde_json::from_slice::<serde::de::IgnoredAny>(b).is_ok())
    });
    if answered == 0 || scanned == 0 {
        anyhow::bail!("no review was answered or scanned");
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{}",
        serde_json::json!({"admit_us": us(admit), "json_scan_us": us(scan)})
    );
    Ok(())
}
