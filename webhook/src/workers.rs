//! Connection workers: admission connections are spread over one single-threaded tokio runtime
//! per core, each connection served wholly on one of them.
//!
//! A review takes a few microseconds to answer. On tokio's work-stealing runtime a request
//! often waits for a second worker thread to be woken, which costs more than the answer; on
//! one thread it never does, but then one core is all the webhook can use. Here a connection
//! lives on one runtime, its socket registered with that runtime's reactor, so no request
//! waits on another thread, and a new connection goes to the runtime serving the fewest
//! (docs/benchmarks.md, session 14). The count follows the CPUs the process may use, its
//! cgroup's CPU limit included.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The runtimes connections are served on: the caller's own, and one thread each for the rest.
pub struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    /// `None` for the caller's runtime.
    thread: Option<Thread>,
    /// Connections being served on it.
    connections: Arc<AtomicUsize>,
}

struct Thread {
    runtime: Handle,
    stop: oneshot::Sender<()>,
    joined: JoinHandle<()>,
}

/// Counts a connection for as long as its task lives.
struct Serving(Arc<AtomicUsize>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// One runtime per CPU the process may use: the caller's and a thread for each other.
    pub fn one_per_core() -> std::io::Result<Self> {
        Self::start(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
    }

    /// The caller's runtime and `count - 1` threads of their own.
    fn start(count: usize) -> std::io::Result<Self> {
        let mut workers = vec![Worker {
            thread: None,
            connections: Arc::default(),
        }];
        for n in 1..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let joined = std::thread::Builder::new()
                .name(format!("connections-{n}"))
                .spawn(move || {
                    let _ = runtime.block_on(stopped);
                })?;
            workers.push(Worker {
                thread: Some(Thread {
                    runtime: handle,
                    stop,
                    joined,
                }),
                connections: Arc::default(),
            });
        }
        Ok(Self { workers })
    }

    /// How many runtimes serve connections.
    pub fn count(&self) -> usize {
        self.workers.len()
    }

    /// Serves `stream` with `serve` on the runtime serving the fewest connections. Called
    /// from within the caller's runtime.
    pub fn spawn<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|w| w.connections.load(Ordering::Relaxed))
        else {
            return;
        };
        worker.connections.fetch_add(1, Ordering::Relaxed);
        let serving = Serving(worker.connections.clone());
        let Some(thread) = &worker.thread else {
            tokio::spawn(async move {
                let _serving = serving;
                serve(stream).await;
            });
            return;
        };
        // Handed over as a plain socket and registered again with that runtime's reactor, so
        // that its readiness wakes that thread and no other.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand a connection to its thread");
                return;
            }
        };
        thread.runtime.spawn(async move {
            let _serving = serving;
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => tracing::warn!(error = %e, "cannot serve a connection on its thread"),
            }
        });
    }
}

impl Drop for Workers {
    /// Stops the threads; connections they still serve are dropped.
    fn drop(&mut self) {
        for worker in self.workers.drain(..) {
            if let Some(thread) = worker.thread {
                let _ = thread.stop.send(());
                let _ = thread.joined.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Serves each connection by writing the name of the thread serving it, then waiting for
    /// the client to close.
    async fn name_the_thread(mut stream: TcpStream) {
        let name = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned();
        let _ = stream.write_all(format!("{name}\n").as_bytes()).await;
        let _ = stream.read(&mut [0; 1]).await;
    }

    /// Connects a client, hands the accepted side to `workers`, and returns the client and the
    /// name of the thread that served it.
    async fn connect(listener: &TcpListener, workers: &Workers) -> (TcpStream, String) {
        let addr = listener.local_addr().expect("address");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (mut client, (server, _)) = (client.expect("connect"), accepted.expect("accept"));
        workers.spawn(server, name_the_thread);
        let mut name = Vec::new();
        loop {
            let mut byte = [0; 1];
            client
                .read_exact(&mut byte)
                .await
                .expect("the thread's name");
            if byte[0] == b'\n' {
                break;
            }
            name.push(byte[0]);
        }
        (client, String::from_utf8(name).expect("a name"))
    }

    async fn until_idle(worker: &Worker) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while worker.connections.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the connection's task ended");
    }

    #[tokio::test]
    async fn each_connection_goes_to_the_runtime_serving_the_fewest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let workers = Workers::start(2).expect("workers");
        let here = std::thread::current().name().map(str::to_owned);

        let (first, on) = connect(&listener, &workers).await;
        assert_eq!(
            Some(on),
            here,
            "the first connection stays on the caller's runtime"
        );
        let (second, on) = connect(&listener, &workers).await;
        assert_eq!(on, "connections-1", "the second goes to the idle thread");
        let (_third, on) = connect(&listener, &workers).await;
        assert_eq!(
            Some(on),
            here,
            "with both serving one, the caller's comes first"
        );

        // The thread's connection closes: the next one goes back to it, and the sockets
        // handed over work both ways on that thread.
        drop(second);
        until_idle(&workers.workers[1]).await;
        let (_fourth, on) = connect(&listener, &workers).await;
        assert_eq!(on, "connections-1");
        drop(first);
    }

    #[tokio::test]
    async fn one_core_serves_everything_on_the_callers_runtime() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let workers = Workers::start(1).expect("workers");
        let here = std::thread::current().name().map(str::to_owned);
        assert_eq!(workers.count(), 1);
        let (_a, on_a) = connect(&listener, &workers).await;
        let (_b, on_b) = connect(&listener, &workers).await;
        assert_eq!((Some(on_a), Some(on_b)), (here.clone(), here));
    }
}
