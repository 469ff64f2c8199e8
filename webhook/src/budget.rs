//! A bound on the request bodies held at once. Each admission request holds room for the bytes
//! of its body as they arrive (not for the length it declares: a client that declares the
//! largest bodies and sends nothing would otherwise hold the whole budget), and gives it back
//! once answered; beyond the bound, requests wait. Without it, a client opening many
//! connections with large bodies could run the pod out of memory, each body within the
//! per-request limit.
//!
//! Bodies partly read could each wait for room the others hold, and all wait until their
//! deadline. So one body at a time may go over the bound (the overdraft, at most one body):
//! it is read to its end and answered, and gives its room back to the others.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Body, Buf, Bytes};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout_at};

/// Room for request bodies, counted in KiB.
pub struct BodyBudget {
    kib: Arc<Semaphore>,
    total_kib: u32,
    /// One permit: the body that may go over the bound.
    overdraft: Arc<Semaphore>,
}

/// Room held for a body that was read; given back when dropped.
pub struct Room {
    kib: Option<OwnedSemaphorePermit>,
    overdraft: Option<OwnedSemaphorePermit>,
}

/// Why a body was not read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// It is longer than the limit.
    TooLarge,
    /// Its bytes did not all arrive in time; `arrived` of them did.
    TimedOut { arrived: usize },
    /// The budget had no room for the bytes that came, in time.
    NoRoom,
    /// The connection failed while it was read.
    Broken(String),
}

impl BodyBudget {
    /// Room for `bodies` bodies of `max_body_bytes` each (and so for many more small ones).
    pub fn new(max_body_bytes: usize, bodies: usize) -> Self {
        let total_kib = u32::try_from(kib(max_body_bytes).saturating_mul(bodies.max(1)))
            .unwrap_or(u32::MAX)
            .clamp(1, u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        Self {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            overdraft: Arc::new(Semaphore::new(1)),
        }
    }

    /// Reads `body`, at most `limit` bytes of it, within `timeout`, holding room for what has
    /// arrived (in whole KiB, at most the whole budget) and waiting for room as more comes, or
    /// for the overdraft.
    pub async fn read<B>(
        &self,
        body: B,
        limit: usize,
        timeout: Duration,
    ) -> Result<(Bytes, Room), ReadError>
    where
        B: Body,
        B::Error: Display,
    {
        let deadline = Instant::now() + timeout;
        let mut body = std::pin::pin!(body);
        let mut collected = Collected::Empty;
        let mut len = 0usize;
        let mut room = Room {
            kib: None,
            overdraft: None,
        };
        loop {
            let frame = match timeout_at(deadline, body.frame()).await {
                Err(_) => return Err(ReadError::TimedOut { arrived: len }),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(ReadError::Broken(e.to_string())),
                Ok(Some(Ok(frame))) => frame,
            };
            // Trailers are not part of the body.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            len = len.saturating_add(data.remaining());
            if len > limit {
                return Err(ReadError::TooLarge);
            }
            let held = room.kib.as_ref().map_or(0, |p| p.num_permits());
            let more = self.kib_for(len).saturating_sub(held);
            if room.overdraft.is_none() && more > 0 {
                let more = u32::try_from(more).unwrap_or(self.total_kib);
                let granted = timeout_at(deadline, async {
                    tokio::select! {
                        biased;
                        more = self.kib.clone().acquire_many_owned(more) => more.map(Grant::Room),
                        token = self.overdraft.clone().acquire_owned() => token.map(Grant::Overdraft),
                    }
                });
                // Err inside: a closed semaphore, which these never are.
                match granted.await {
                    Ok(Ok(Grant::Room(more))) => match &mut room.kib {
                        Some(held) => held.merge(more),
                        None => room.kib = Some(more),
                    },
                    Ok(Ok(Grant::Overdraft(token))) => room.overdraft = Some(token),
                    Ok(Err(_)) | Err(_) => return Err(ReadError::NoRoom),
                }
            }
            collected.push(data, limit);
        }
        Ok((collected.into_bytes(), room))
    }

    /// Whole KiB to hold `bytes`, within the budget.
    fn kib_for(&self, bytes: usize) -> usize {
        kib(bytes).min(self.total_kib as usize)
    }
}

/// A body's bytes as they arrive. The first frame is kept as it came (most bodies are one
/// frame); from the second on, the bytes are copied into one buffer. Keeping each frame apart
/// would cost a handle per frame and keep alive the connection's read buffer each points
/// into: a body sent in one-byte chunks would take some sixty times its size. The buffer grows
/// by doubling, but never past the limit, so a body of the largest size takes no more than its
/// size (a smaller one up to twice what the budget counts); it is not sized from the declared
/// length, which would let a client that declares much and sends little take memory the
/// budget does not see.
enum Collected {
    Empty,
    One(Bytes),
    Many(Vec<u8>),
}

impl Collected {
    /// Adds `data`; the bytes held so far and `data` come to at most `limit`.
    fn push(&mut self, mut data: impl Buf, limit: usize) {
        *self = match std::mem::replace(self, Collected::Empty) {
            Collected::Empty => Collected::One(data.copy_to_bytes(data.remaining())),
            Collected::One(first) => {
                let mut all = Vec::with_capacity(first.len() + data.remaining());
                all.extend_from_slice(&first);
                put(&mut all, data, limit);
                Collected::Many(all)
            }
            Collected::Many(mut all) => {
                put(&mut all, data, limit);
                Collected::Many(all)
            }
        };
    }

    /// Bytes held, spare capacity included.
    #[cfg(test)]
    fn held(&self) -> usize {
        match self {
            Collected::Empty => 0,
            Collected::One(b) => b.len(),
            Collected::Many(v) => v.capacity(),
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Collected::Empty => Bytes::new(),
            Collected::One(b) => b,
            Collected::Many(v) => Bytes::from(v),
        }
    }
}

/// Appends `data` to `all`, growing it by doubling up to `limit` (or what it must hold, if more).
fn put(all: &mut Vec<u8>, mut data: impl Buf, limit: usize) {
    let needed = all.len().saturating_add(data.remaining());
    if needed > all.capacity() {
        let grown = all.capacity().saturating_mul(2).min(limit).max(needed);
        all.reserve_exact(grown - all.len());
    }
    while data.has_remaining() {
        let chunk = data.chunk();
        all.extend_from_slice(chunk);
        let n = chunk.len();
        data.advance(n);
    }
}

enum Grant {
    Room(OwnedSemaphorePermit),
    Overdraft(OwnedSemaphorePermit),
}

/// Whole KiB needed to hold `bytes`.
fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;

    const SOON: Duration = Duration::from_millis(100);

    fn full(bytes: usize) -> Full<Bytes> {
        Full::new(Bytes::from(vec![b'x'; bytes]))
    }

    /// `first` bytes, then nothing more, ever.
    fn stalled(first: usize) -> impl Body<Data = Bytes, Error = std::io::Error> {
        let first = futures::stream::iter([Ok(Frame::data(Bytes::from(vec![b'x'; first])))]);
        StreamBody::new(futures::StreamExt::chain(first, futures::stream::pending()))
    }

    #[tokio::test]
    async fn room_is_held_for_what_arrived_waited_for_and_given_back() {
        let budget = BodyBudget::new(2048, 2);
        let (body, first) = budget.read(full(2048), 4096, SOON).await.expect("read");
        assert_eq!(body.len(), 2048);
        let (_, second) = budget.read(full(1500), 4096, SOON).await.expect("read");
        // Four KiB are held: one body may go over (the overdraft); while it is held, even a
        // one-byte body finds no room.
        let (_, over) = budget
            .read(full(1), 4096, SOON)
            .await
            .expect("the overdraft");
        assert!(over.overdraft.is_some());
        assert_eq!(
            budget.read(full(1), 4096, SOON).await.err(),
            Some(ReadError::NoRoom)
        );
        drop(first);
        let (_, third) = budget.read(full(1), 4096, SOON).await.expect("room again");
        assert!(third.kib.is_some() && third.overdraft.is_none());
        drop((second, third, over));
        // A body larger than the whole budget gets all of it instead of waiting for ever.
        let (_, all) = budget.read(full(8192), 8192, SOON).await.expect("read");
        assert_eq!(all.kib.map(|p| p.num_permits()), Some(4));
    }

    #[tokio::test]
    async fn a_body_that_stalls_holds_only_what_it_sent() {
        let budget = Arc::new(BodyBudget::new(2048, 2));
        // Four bodies that send nothing (a declared length promises nothing), and one that
        // sends 2 KiB, stall.
        let stalls: Vec<_> = [0, 0, 0, 0, 2048]
            .into_iter()
            .map(|first| {
                let budget = budget.clone();
                tokio::spawn(async move {
                    budget
                        .read(stalled(first), 4096, Duration::from_secs(60))
                        .await
                        .err()
                })
            })
            .collect();
        tokio::time::sleep(SOON).await;
        let (body, _held) = budget
            .read(full(2048), 4096, SOON)
            .await
            .expect("the other 2 KiB are free");
        assert_eq!(body.len(), 2048);
        let (_, _over) = budget
            .read(full(1), 4096, SOON)
            .await
            .expect("the overdraft");
        assert_eq!(
            budget.read(full(1), 4096, SOON).await.err(),
            Some(ReadError::NoRoom)
        );
        for s in stalls {
            s.abort();
        }
    }

    /// Four bodies that each fill a quarter of the budget, then send as much again: each
    /// waits for room the others hold. The overdraft lets one finish at a time, and every one
    /// is read long before the deadline.
    #[tokio::test]
    async fn bodies_partly_read_do_not_wait_on_each_other_until_their_deadline() {
        let budget = Arc::new(BodyBudget::new(2048, 2));
        let mut senders = Vec::new();
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (tx, rx) =
                    futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, std::io::Error>>();
                senders.push(tx);
                let budget = budget.clone();
                tokio::spawn(async move {
                    let (body, room) = budget
                        .read(StreamBody::new(rx), 4096, Duration::from_secs(60))
                        .await?;
                    drop(room);
                    Ok::<_, ReadError>(body.len())
                })
            })
            .collect();
        let half = || Ok(Frame::data(Bytes::from(vec![b'x'; 1024])));
        for tx in &senders {
            tx.unbounded_send(half()).expect("send");
        }
        tokio::time::sleep(SOON).await;
        for tx in senders {
            tx.unbounded_send(half()).expect("send");
        }
        for reader in readers {
            let read = tokio::time::timeout(Duration::from_secs(5), reader)
                .await
                .expect("read well before its deadline")
                .expect("task");
            assert_eq!(read, Ok(2048));
        }
    }

    /// A body in one-byte frames is held as one buffer of about its size, and read whole; one
    /// of the largest size takes no more than that size.
    #[tokio::test]
    async fn a_body_in_tiny_frames_takes_about_its_own_size() {
        let n = 100_000;
        for limit in [4 * n, n] {
            let mut collected = Collected::Empty;
            for i in 0..n {
                collected.push(Bytes::from(vec![b'a' + (i % 26) as u8]), limit);
            }
            let most = if limit == n { n } else { 2 * n };
            assert!(collected.held() <= most, "held {} bytes", collected.held());
        }
        let frames = (0..n).map(|i| {
            Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![b'a' + (i % 26) as u8])))
        });
        let budget = BodyBudget::new(n, 1);
        let (body, _) = budget
            .read(
                StreamBody::new(futures::stream::iter(frames)),
                n,
                Duration::from_secs(30),
            )
            .await
            .expect("read");
        assert_eq!(body.len(), n);
        assert!(
            body.iter()
                .enumerate()
                .all(|(i, b)| *b == b'a' + (i % 26) as u8)
        );
    }

    #[tokio::test]
    async fn too_long_and_too_slow_bodies_are_told_apart() {
        let budget = BodyBudget::new(1024, 4);
        assert_eq!(
            budget.read(stalled(1025), 1024, SOON).await.err(),
            Some(ReadError::TooLarge)
        );
        assert_eq!(
            budget.read(stalled(10), 1024, SOON).await.err(),
            Some(ReadError::TimedOut { arrived: 10 })
        );
        let (body, _) = budget.read(full(0), 1024, SOON).await.expect("empty");
        assert!(body.is_empty());
    }
}
