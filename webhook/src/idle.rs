//! A stream that fails with `TimedOut` when neither direction makes progress for a while: the
//! peer sends nothing and takes nothing. So silent connections (no TLS handshake, no request)
//! do not pile up, and neither do connections whose peer stops reading:
//! a client that pipelines requests and never reads the answers leaves hyper blocked in a write,
//! never polling a read, and would otherwise hold its slot for as long as it stays connected.
//! A client that reads a large answer slowly, or a server writing one to a silent client, is
//! making progress and is not idle.
//!
//! A read or write only notes the time; the timer is moved when it fires early (there was
//! progress since it was set), so a busy keep-alive connection costs no timer-wheel work per
//! read or write. The timer wakes the task that last waited on the stream: hyper polls both
//! directions of a connection from one task.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pub struct IdleTimeout<S> {
    inner: S,
    timeout: Duration,
    /// When a byte last went in either direction.
    last_progress: Instant,
    /// Fires at or before `last_progress + timeout`.
    deadline: Pin<Box<Sleep>>,
}

impl<S> IdleTimeout<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            last_progress: Instant::now(),
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    /// Ready once nothing has moved for `timeout`.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.deadline.as_mut().poll(cx));
            let due = self.last_progress + self.timeout;
            if Instant::now() >= due {
                return Poll::Ready(());
            }
            self.deadline.as_mut().reset(due);
        }
    }

    /// A write's result, its progress noted; `TimedOut` instead of `Pending` once stalled.
    fn noted(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match poll {
            Poll::Ready(result) => {
                if result.as_ref().is_ok_and(|&n| n > 0) {
                    self.last_progress = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.pending_or_timed_out(cx),
        }
    }

    /// What an operation that made no progress returns: `Pending`, or `TimedOut` once the
    /// connection has been stalled for the timeout.
    fn pending_or_timed_out<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.poll_stalled(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "nothing was sent or received on the connection for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.last_progress = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.pending_or_timed_out(cx),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.noted(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.noted(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    // The inner stream here is a socket, which holds no buffer of its own to flush: a flush
    // or shutdown that waits is waiting for the peer, as a write is, with no progress to note.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        if poll.is_pending() {
            return this.pending_or_timed_out(cx);
        }
        poll
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        if poll.is_pending() {
            return this.pending_or_timed_out(cx);
        }
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn silence_times_out_and_traffic_keeps_it_open() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = IdleTimeout::new(server, Duration::from_secs(10));
        let mut client = client;
        let mut buf = [0u8; 8];
        for _ in 0..5 {
            // Data every 6 s: never 10 s of silence.
            tokio::time::sleep(Duration::from_secs(6)).await;
            client.write_all(b"x").await.expect("write");
            assert_eq!(server.read(&mut buf).await.expect("read"), 1);
        }
        let err = server.read(&mut buf).await.expect_err("times out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_times_out_a_blocked_write() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = IdleTimeout::new(server, Duration::from_secs(10));
        // The peer takes 16 bytes every 6 s, 10 times (60 s in all): the writer, blocked
        // behind the full buffer most of that time, is never 10 s without progress.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                client.read_exact(&mut buf).await.expect("read");
            }
            // Then it stays connected and reads no more.
            client
        });
        let started = Instant::now();
        let chunk = [b'x'; 16];
        let writes = async {
            loop {
                if let Err(e) = server.write_all(&chunk).await {
                    break e;
                }
            }
        };
        let err = tokio::time::timeout(Duration::from_secs(120), writes)
            .await
            .expect("the blocked write was never timed out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // 60 s of slow reading, then the timeout once the reads stop.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(70) && took <= Duration::from_secs(71),
            "{took:?}"
        );
        let _client = reader.await.expect("reader");
    }
}
