//! Closed-loop (as fast as each connection can go) and open-loop (requests sent on a fixed
//! schedule) load over keep-alive TLS connections.
//!
//! In open loop, each request's latency is measured from the moment it was *scheduled*, not
//! from when a connection became free, so a server that stalls cannot hide its queueing
//! (coordinated omission) and a slow client cannot inflate it either as long as enough
//! connections are open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Where to send requests, and what.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub server_name: String,
    pub path: String,
    pub tls: Arc<rustls::ClientConfig>,
    /// Request bodies, used in turn.
    pub bodies: Arc<Vec<Bytes>>,
}

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency in microseconds.
    pub latency: Histogram<u64>,
    /// Open loop: how late (µs) the pacer thread, which does nothing but sleep until each
    /// request's time, handed requests on: the machine's own scheduling delay, a floor under
    /// any latency measured here. Empty in closed loop.
    pub send_lag: Histogram<u64>,
}

impl Report {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

async fn connect(target: &Target) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .context("connecting")?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(target.server_name.clone())?;
    let tls = TlsConnector::from(target.tls.clone())
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    target: &Target,
    body: Bytes,
) -> anyhow::Result<()> {
    sender.ready().await?;
    let request = hyper::Request::post(&target.path)
        .header("content-type", "application/json")
        .header("host", &target.server_name)
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() || body.is_empty() {
        bail!("status {status}, {} bytes", body.len());
    }
    Ok(())
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

/// `concurrency` connections, each sending its next request as soon as the last one returned,
/// for `duration`.
pub async fn closed_loop(
    target: &Target,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let target = target.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut latency = histogram();
            let mut errors = 0u64;
            let mut sender = connect(&target).await?;
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let body = target.bodies[i % target.bodies.len()].clone();
                let sent = Instant::now();
                match send(&mut sender, &target, body).await {
                    Ok(()) => latency.record(sent.elapsed().as_micros() as u64)?,
                    Err(_) => {
                        errors += 1;
                        sender = connect(&target).await?;
                    }
                }
            }
            anyhow::Ok((latency, errors))
        }));
    }
    collect(workers, start).await
}

/// Requests scheduled at `rate` per second for `duration`, spread over up to `connections`
/// keep-alive connections; latency counts from each request's scheduled time.
///
/// The schedule is kept by a dedicated OS thread sleeping with `nanosleep` (tens of
/// microseconds of slack), not by tokio's timer, whose 1 ms ticks would make every request up
/// to a millisecond late and count that lateness as server latency.
pub async fn open_loop(
    target: &Target,
    rate: f64,
    duration: Duration,
    connections: usize,
) -> anyhow::Result<Report> {
    let total = (rate * duration.as_secs_f64()).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let (tx, rx) = async_channel::<(usize, Instant)>(total);
    // Every connection is up (TLS handshakes done) before the schedule starts.
    let senders = futures::future::try_join_all((0..connections).map(|_| connect(target))).await?;
    let start = Instant::now() + Duration::from_millis(10);
    let mut workers = Vec::with_capacity(connections);
    for mut sender in senders {
        let target = target.clone();
        let rx = rx.clone();
        workers.push(tokio::spawn(async move {
            let mut latency = histogram();
            let mut errors = 0u64;
            while let Ok((i, scheduled)) = rx.recv().await {
                let body = target.bodies[i % target.bodies.len()].clone();
                match send(&mut sender, &target, body).await {
                    Ok(()) => latency.record(scheduled.elapsed().as_micros() as u64)?,
                    Err(_) => {
                        errors += 1;
                        sender = connect(&target).await?;
                    }
                }
            }
            anyhow::Ok((latency, errors))
        }));
    }
    drop(rx);
    let pacer = std::thread::Builder::new()
        .name("open-loop-pacer".into())
        .spawn(move || {
            let mut late = histogram();
            for i in 0..total {
                let scheduled = start + interval.mul_f64(i as f64);
                if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let _ = late.record(scheduled.elapsed().as_micros() as u64);
                if tx.blocking_send((i, scheduled)).is_err() {
                    break;
                }
            }
            late
        })?;
    let mut report = collect(workers, start).await?;
    report.send_lag = pacer
        .join()
        .map_err(|_| anyhow::anyhow!("the open-loop pacer panicked"))?;
    Ok(report)
}

type Worker = tokio::task::JoinHandle<anyhow::Result<(Histogram<u64>, u64)>>;

async fn collect(workers: Vec<Worker>, start: Instant) -> anyhow::Result<Report> {
    let mut latency = histogram();
    let mut errors = 0;
    for worker in workers {
        let (h, e) = worker.await??;
        latency.add(&h)?;
        errors += e;
    }
    Ok(Report {
        requests: latency.len(),
        errors,
        elapsed: start.elapsed(),
        latency,
        send_lag: histogram(),
    })
}

/// A multi-consumer queue: tokio's mpsc has one consumer, so share it behind a mutex.
fn async_channel<T: Send + 'static>(
    capacity: usize,
) -> (tokio::sync::mpsc::Sender<T>, SharedReceiver<T>) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
    (tx, SharedReceiver(Arc::new(tokio::sync::Mutex::new(rx))))
}

struct SharedReceiver<T>(Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<T>>>);

impl<T> Clone for SharedReceiver<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> SharedReceiver<T> {
    async fn recv(&self) -> Result<T, ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}

/// Sends the first `count` bodies once, in turn, on one connection; returns the mean size of
/// the response bodies (what the ceiling server's canned answer is sized to).
pub async fn mean_response_bytes(target: &Target, count: usize) -> anyhow::Result<usize> {
    let mut sender = connect(target).await?;
    let mut total = 0;
    let count = count.clamp(1, target.bodies.len());
    for body in target.bodies.iter().take(count) {
        sender.ready().await?;
        let request = hyper::Request::post(&target.path)
            .header("content-type", "application/json")
            .header("host", &target.server_name)
            .body(Full::new(body.clone()))?;
        let response = sender.send_request(request).await?;
        total += response.into_body().collect().await?.to_bytes().len();
    }
    Ok(total / count)
}
