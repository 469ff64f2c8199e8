//! Connection threads: admission connections are spread over single-threaded tokio runtimes,
//! one per CPU the process may use (up to [`MAX_THREADS`]), each connection served wholly on
//! one of them.
//!
//! A review takes a few microseconds to answer. On tokio's work-stealing runtime a request
//! often waited for a second worker thread to be woken, which cost more than the answer; on
//! one thread it never did, but then one core was all the webhook could use. Here a connection
//! lives on one runtime, its socket registered with that runtime's reactor, so its reads and
//! writes never wait on another thread, and a new connection goes to the runtime serving the
//! fewest (docs/benchmarks.md, session 14). The caller's runtime, which also runs the
//! listeners, the index's watch and the certificate reload, counts as serving one more than it
//! does.
//!
//! The count follows `available_parallelism`: a cgroup CPU limit, a cpuset, or else the node's
//! CPUs. The webhook's Deployment sets no CPU limit, so on a large node the cap decides.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Beyond a few cores, more admission load is met with replicas (DESIGN, Scale); each thread
/// holds a runtime, a stack and an allocator heap under the pod's memory limit.
pub const MAX_THREADS: usize = 4;

/// The runtimes connections are served on: threads of their own, then the caller's.
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
    /// One runtime per CPU the process may use, up to [`MAX_THREADS`]: the caller's and a
    /// thread for each other.
    pub async fn one_per_core() -> std::io::Result<Self> {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Self::start(cpus.min(MAX_THREADS)).await
    }

    /// `count - 1` threads of their own and the caller's runtime.
    async fn start(count: usize) -> std::io::Result<Self> {
        let mut workers = Vec::with_capacity(count.max(1));
        for n in 1..count {
            workers.push(Worker {
                thread: Some(Thread::start(n).await?),
                connections: Arc::default(),
            });
        }
        workers.push(Worker {
            thread: None,
            connections: Arc::default(),
        });
        Ok(Self { workers })
    }

    /// How many runtimes serve connections.
    pub fn count(&self) -> usize {
        self.workers.len()
    }

    /// Serves `stream` with `serve` on the runtime serving the fewest connections (the
    /// caller's counted one more; ties go to the first). Called from within the caller's
    /// runtime.
    pub fn spawn<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self.workers.iter().min_by_key(|w| {
            w.connections.load(Ordering::Relaxed) + usize::from(w.thread.is_none())
        }) else {
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

impl Thread {
    /// A thread running a runtime of its own until stopped. The runtime is built, run and
    /// dropped on that thread, never in the caller's async context.
    async fn start(n: usize) -> std::io::Result<Self> {
        let (stop, stopped) = oneshot::channel::<()>();
        let (started, handle) = oneshot::channel::<std::io::Result<Handle>>();
        let joined = std::thread::Builder::new()
            .name(format!("connections-{n}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                let _ = started.send(Ok(runtime.handle().clone()));
                let _ = runtime.block_on(stopped);
                // Its connections' tasks are dropped; nothing runs on its blocking pool.
                runtime.shutdown_background();
            })?;
        let runtime = handle
            .await
            .map_err(|_| std::io::Error::other("a connection thread ended while starting"))??;
        Ok(Self {
            runtime,
            stop,
            joined,
        })
    }
}

impl Drop for Workers {
    /// Stops every thread, then waits for them; connections they still serve are dropped.
    fn drop(&mut self) {
        let threads: Vec<Thread> = self.workers.drain(..).filter_map(|w| w.thread).collect();
        let joins: Vec<JoinHandle<()>> = threads
            .into_iter()
            .map(|t| {
                let _ = t.stop.send(());
                t.joined
            })
            .collect();
        for joined in joins {
            let _ = joined.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Writes the name of the thread serving the connection, then echoes every byte until the
    /// client closes.
    async fn name_the_thread(mut stream: TcpStream) {
        let name = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned();
        if stream
            .write_all(format!("{name}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
        let mut byte = [0; 1];
        while let Ok(1) = stream.read(&mut byte).await {
            if stream.write_all(&byte).await.is_err() {
                return;
            }
        }
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

    /// Waits until `worker` serves at most `connections`: a closed connection's task ended.
    async fn until_serving(worker: &Worker, connections: usize) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while worker.connections.load(Ordering::Relaxed) > connections {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the connection's task ended");
    }

    #[tokio::test]
    async fn each_connection_goes_to_the_runtime_serving_the_fewest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let workers = Workers::start(2).await.expect("workers");
        let here = std::thread::current().name().map(str::to_owned);

        let (first, on) = connect(&listener, &workers).await;
        assert_eq!(
            on, "connections-1",
            "the first goes to the thread of its own"
        );
        let (_second, on) = connect(&listener, &workers).await;
        assert_eq!(
            on, "connections-1",
            "the caller's runtime counts as serving one more, and ties go to the thread"
        );
        let (_third, on) = connect(&listener, &workers).await;
        assert_eq!(
            Some(on),
            here,
            "with the thread serving two, the caller's runtime"
        );

        // One of the thread's connections closes: the next goes back to it.
        drop(first);
        until_serving(&workers.workers[0], 1).await;
        let (_fourth, on) = connect(&listener, &workers).await;
        assert_eq!(on, "connections-1");
    }

    /// The socket is registered with the thread's own reactor: the connection is served while
    /// the caller's runtime cannot run at all (its thread blocked in plain reads and writes).
    #[tokio::test]
    async fn a_connection_on_a_thread_is_served_while_the_callers_runtime_is_blocked() {
        let workers = Workers::start(2).await.expect("workers");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client =
            std::net::TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let (accepted, _) = listener.accept().expect("accept");
        accepted.set_nonblocking(true).expect("nonblocking");
        // Registered with the caller's reactor first, as an accepted connection is.
        let accepted = TcpStream::from_std(accepted).expect("register");
        workers.spawn(accepted, name_the_thread);

        // From here on this thread blocks: nothing on the caller's runtime runs.
        let mut name = [0; "connections-1\n".len()];
        client.read_exact(&mut name).expect("the thread wrote");
        assert_eq!(&name, b"connections-1\n");
        client.write_all(b"x").expect("write");
        let mut echo = [0; 1];
        client
            .read_exact(&mut echo)
            .expect("the thread read and wrote");
        assert_eq!(&echo, b"x");
        drop(client);
        until_serving(&workers.workers[0], 0).await;
    }

    #[tokio::test]
    async fn one_core_serves_everything_on_the_callers_runtime() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let workers = Workers::start(1).await.expect("workers");
        let here = std::thread::current().name().map(str::to_owned);
        assert_eq!(workers.count(), 1);
        let (_a, on_a) = connect(&listener, &workers).await;
        let (_b, on_b) = connect(&listener, &workers).await;
        assert_eq!((Some(on_a), Some(on_b)), (here.clone(), here));
    }

    #[tokio::test]
    async fn dropped_workers_stop_their_threads() {
        let workers = Workers::start(3).await.expect("workers");
        let handles: Vec<Handle> = workers
            .workers
            .iter()
            .filter_map(|w| w.thread.as_ref().map(|t| t.runtime.clone()))
            .collect();
        assert_eq!(handles.len(), 2);
        drop(workers);
        for handle in handles {
            // A runtime that has shut down drops what is spawned on it at once.
            let (tx, rx) = oneshot::channel::<()>();
            handle.spawn(async move {
                let _ = tx.send(());
            });
            assert!(rx.await.is_err(), "a connection thread still runs tasks");
        }
    }
}
