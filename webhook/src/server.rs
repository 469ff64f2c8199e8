//! The listeners: HTTPS for admission (HTTP/1.1, what the API server calls webhooks with,
//! `tls.rs`; its connections spread over one thread per core, at most 4, `workers.rs`), plain
//! HTTP for metrics and probes;
//! per-connection timeouts and a connection cap; graceful shutdown on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;

use crate::budget::BodyBudget;
use crate::config::Config;
use crate::idle::IdleTimeout;
use crate::index::{self, Index};
use crate::metrics::Metrics;
use crate::routes::{App, Listener};
use crate::slots::{Slot, Slots};
use crate::tls::{self, CertStore, TlsError};
use crate::workers::Workers;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG): {0}")]
    KubeConfig(#[from] kube::config::InferConfigError),
    #[error("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG): {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot start the connection threads: {0}")]
    Workers(std::io::Error),
    #[error("cannot install a signal handler: {0}")]
    Signal(std::io::Error),
    /// A background task the answers depend on ended: exiting has the pod restarted, where
    /// serving on would answer from an index or a certificate that no longer follows changes.
    #[error("the {task} stopped ({why}); exiting so that the pod is restarted")]
    Stopped { task: &'static str, why: String },
}

/// Bodies of the largest size held at once, one more with the budget's overdraft. Reading one
/// holds up to its size again (its markdown), and more while its buffer grows: about 30 MiB
/// for one of 8 MiB (the default limit), so two at once stay within the pod's 128 MiB limit
/// however many cores read them (`tests/tests/webhook.rs`, the largest reviews at once: 56-65
/// MiB on top of what the webhook holds otherwise). With four, hostile bodies went past the
/// limit. Thousands of ordinary reviews of a few KiB fit, and the largest a review really is
/// (about 4.5 MiB: an update of a TaskRun at etcd's size limit) two at once.
const BODIES_AT_ONCE: usize = 1;

/// Connections served at once on the plain listener: probes and metrics scrapes. A new one
/// beyond closes the longest idle (`slots.rs`).
const PLAIN_CONNECTIONS: usize = 64;

/// What one admission connection may make the webhook hold besides the body being read (which
/// the body budget bounds): HTTP/1.1 reads one request at a time into a buffer of at most this
/// (hyper's default is ~400 KiB), a request head up to that size, then the body in chunks of
/// it. Still, `--max-connections` of them, with their TLS buffers, could hold more than the
/// pod's memory, which is why docs/install.md asks to keep the port to the API server.
const H1_MAX_BUFFER: usize = 64 * 1024;

/// Connection settings that every connection task needs.
struct Limits {
    handshake_timeout: Duration,
    /// Plain listener only (see `serve_tls`).
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

/// Once `run` has returned, how long blocking-pool work (a certificate read) may take before
/// the process exits anyway. After SIGTERM the process may take up to `--shutdown-delay`,
/// `--shutdown-timeout` and this together: the pod's terminationGracePeriodSeconds covers them.
pub const BLOCKING_GRACE: Duration = Duration::from_secs(3);

/// Serves admission with a duplicate index fed by a watch on every namespace's TaskRuns.
pub async fn run(config: Config) -> Result<(), ServerError> {
    let metrics = Arc::new(Metrics::default());
    let client = taskrun_apiclient::client(kube::Config::infer().await?)?;
    let index = Arc::new(Index::default());
    let follower = tokio::spawn({
        let (index, metrics) = (index.clone(), metrics.clone());
        async move { index::run(client, &index, &metrics).await }
    });
    unless_stopped(
        serve(config, index, metrics),
        follower,
        "TaskRun index watch",
    )
    .await
}

/// Runs `serving` to its end, unless `task`, which it depends on and which should never end,
/// ends first (a panic, say): then that is the error.
async fn unless_stopped<T>(
    serving: impl Future<Output = Result<(), ServerError>>,
    task: tokio::task::JoinHandle<T>,
    name: &'static str,
) -> Result<(), ServerError> {
    tokio::select! {
        served = serving => served,
        ended = task => Err(ServerError::Stopped {
            task: name,
            why: match ended {
                Ok(_) => "it returned".into(),
                Err(e) => e.to_string(),
            },
        }),
    }
}

/// Serves admission with `index` as the duplicate index, however it is fed (by the watch in
/// [`run`]; the benchmarks fill one in-process), until SIGTERM or SIGINT.
pub async fn serve(
    config: Config,
    index: Arc<Index>,
    metrics: Arc<Metrics>,
) -> Result<(), ServerError> {
    let certs = Arc::new(CertStore::new(
        config.cert_dir.join("tls.crt"),
        config.cert_dir.join("tls.key"),
    ));
    let cert_watch = tokio::spawn(tls::watch(
        certs.clone(),
        config.cert_poll_interval,
        metrics.clone(),
    ));
    let serving = serve_with(config, index, metrics, certs);
    unless_stopped(serving, cert_watch, "certificate watch").await
}

/// [`serve`] once the certificate is being watched.
async fn serve_with(
    config: Config,
    index: Arc<Index>,
    metrics: Arc<Metrics>,
    certs: Arc<CertStore>,
) -> Result<(), ServerError> {
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(certs.clone())?));
    let listener = bind(config.listen).await?;
    let plain = match config.metrics_listen.0 {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let app = Arc::new(App {
        metrics,
        bodies: BodyBudget::new(config.max_body_bytes, BODIES_AT_ONCE),
        index,
        certs,
        shutting_down: AtomicBool::new(false),
        max_body_bytes: config.max_body_bytes,
        body_read_timeout: config.body_read_timeout,
    });
    let limits = Arc::new(Limits {
        handshake_timeout: config.handshake_timeout,
        header_read_timeout: config.header_read_timeout,
        idle_timeout: config.idle_timeout,
    });
    // Each listener has its own slots, so that admission connections, however many, never
    // crowd out the kubelet's probes. Beyond the cap, a new admission connection waits in the
    // listen backlog; a new plain one closes the longest idle plain one.
    let tls_slots = Arc::new(Semaphore::new(config.max_connections));
    let plain_slots = Slots::new(PLAIN_CONNECTIONS);
    let workers = Workers::one_per_core()
        .await
        .map_err(ServerError::Workers)?;
    let graceful = GracefulShutdown::new();
    let mut signals = Signals::new()?;
    let mut drain: Option<Pin<Box<Sleep>>> = None;
    tracing::info!(
        listen = %config.listen,
        metrics_listen = ?config.metrics_listen.0,
        threads = workers.count(),
        "serving admission over HTTPS"
    );

    loop {
        let (accepted, listener_kind) = tokio::select! {
            () = signals.recv() => {
                if drain.is_some() {
                    break;
                }
                // The API server goes on calling this pod until the Service's endpoints drop
                // it, seconds after the signal: refusing those calls would fail the user's
                // apply (failurePolicy Fail). So: report not ready, keep answering, then close.
                app.shutting_down.store(true, Ordering::Release);
                tracing::info!(delay = ?config.shutdown_delay, "not ready; answering on until the delay ends or a second signal");
                drain = Some(Box::pin(tokio::time::sleep(config.shutdown_delay)));
                continue;
            }
            () = until(&mut drain) => break,
            (accepted, permit) = accept(&listener, &tls_slots) => (accepted, Accepted::Tls(permit)),
            accepted = accept_plain(plain.as_ref()) => (accepted, Accepted::Plain),
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (app, limits, watcher) = (app.clone(), limits.clone(), graceful.watcher());
        match listener_kind {
            Accepted::Tls(permit) => {
                let acceptor = acceptor.clone();
                workers.spawn(stream, move |stream| {
                    serve_tls(app, limits, acceptor, stream, watcher, permit)
                });
            }
            Accepted::Plain => match plain_slots.take() {
                Some(slot) => {
                    tokio::spawn(serve_plain(app, limits, stream, watcher, slot));
                }
                None => tracing::debug!(
                    "every plain connection has a request in progress: closed a new one"
                ),
            },
        }
    }

    app.shutting_down.store(true, Ordering::Release);
    drop((listener, plain));
    tracing::info!(
        connections = graceful.count(),
        "shutting down: finishing in-flight requests"
    );
    if tokio::time::timeout(config.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?config.shutdown_timeout, "in-flight requests did not finish in time");
    }
    Ok(())
}

async fn serve_tls(
    app: Arc<App>,
    limits: Arc<Limits>,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    watcher: Watcher,
    _permit: OwnedSemaphorePermit,
) {
    // Answers are small and written whole: send them at once rather than waiting for the
    // peer to acknowledge the previous segment (Nagle).
    let _ = stream.set_nodelay(true);
    let stream = IdleTimeout::new(stream, limits.idle_timeout);
    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            app.metrics.tls_handshake_failures.inc();
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            app.metrics.tls_handshake_failures.inc();
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    let service = service_fn(move |req| app.clone().handle(req, Listener::Tls));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .max_buf_size(H1_MAX_BUFFER)
        // hyper starts the head timer as soon as it waits for the next request, so on a
        // kept-alive connection it is an idle timeout too. The API server pools its HTTP/1.1
        // connections and keeps them idle for up to 90 s; a review it sends down one that is
        // being closed fails with EOF and is not retried. So the wait for a head gets the idle
        // timeout, longer than that, and the client closes idle connections, not us. A head
        // that stops arriving is cut off by it too.
        .header_read_timeout(limits.idle_timeout);
    let result = watcher
        .watch(builder.serve_connection(TokioIo::new(tls), service))
        .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

async fn serve_plain(
    app: Arc<App>,
    limits: Arc<Limits>,
    stream: TcpStream,
    watcher: Watcher,
    slot: Slot,
) {
    let io = TokioIo::new(IdleTimeout::new(stream, limits.idle_timeout));
    let service = service_fn(|req| {
        let (app, busy) = (app.clone(), slot.busy());
        async move {
            let answer = app.handle(req, Listener::Plain).await;
            drop(busy);
            answer
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .max_buf_size(H1_MAX_BUFFER)
        // Short, idle time between requests included, so that a connection sending nothing
        // holds its slot briefly (and is the first closed for a new one when all 64 are
        // taken). A scraper's kept-alive connection is closed between scrapes; its GET, if it
        // races the close, is retried (it is idempotent).
        .header_read_timeout(limits.header_read_timeout);
    tokio::select! {
        served = watcher.watch(builder.serve_connection(io, service)) => {
            if let Err(e) = served {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        }
        () = slot.closed_for_another() => {}
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Waits for a free slot, then accepts. With every slot taken, new connections wait in the
/// listen backlog.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> (
    std::io::Result<(TcpStream, SocketAddr)>,
    OwnedSemaphorePermit,
) {
    // The semaphore is never closed.
    let Ok(permit) = slots.clone().acquire_owned().await else {
        return std::future::pending().await;
    };
    (listener.accept().await, permit)
}

/// Accepts on the plain listener, if there is one (never resolves when there is none).
async fn accept_plain(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the sleep, once there is one, is over.
async fn until(sleep: &mut Option<Pin<Box<Sleep>>>) {
    match sleep {
        Some(s) => s.as_mut().await,
        None => std::future::pending().await,
    }
}

/// What was accepted: an admission connection holds its slot from before the accept.
enum Accepted {
    Tls(OwnedSemaphorePermit),
    Plain,
}

/// SIGTERM and SIGINT.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> Result<Self, ServerError> {
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(ServerError::Signal)?,
            int: signal(SignalKind::interrupt()).map_err(ServerError::Signal)?,
        })
    }

    /// Resolves on the next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
            _ = self.int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ServerError, unless_stopped};
    use std::future::pending;

    #[tokio::test]
    async fn serving_ends_when_a_task_it_depends_on_stops() {
        let panicked = tokio::spawn(async { panic!("a bug in the watch") });
        let stopped = unless_stopped(pending(), panicked, "TaskRun index watch").await;
        let Err(ServerError::Stopped { task, why }) = stopped else {
            panic!("served on after the task panicked: {stopped:?}");
        };
        assert_eq!(task, "TaskRun index watch");
        assert!(why.contains("panicked"), "{why}");
        let returned = tokio::spawn(async {});
        let stopped = unless_stopped(pending(), returned, "certificate watch").await;
        assert!(stopped.is_err_and(|e| {
            e.to_string()
                .contains("certificate watch stopped (it returned)")
        }));
        // Serving that ends first (a signal) is the answer; the task runs on.
        let runs_on = tokio::spawn(pending::<()>());
        assert!(unless_stopped(async { Ok(()) }, runs_on, "x").await.is_ok());
    }
}
