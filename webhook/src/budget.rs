//! A bound on the request bodies held at once. Each admission request reserves room for its
//! declared length (the body limit when it declares none) before its body is read, and gives it
//! back once answered; beyond the bound, requests wait. Without it, a client opening many
//! HTTP/2 streams with large bodies could run the pod out of memory, each body within the
//! per-request limit.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Room for request bodies, counted in KiB.
pub struct BodyBudget {
    kib: Arc<Semaphore>,
    total_kib: u32,
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
        }
    }

    /// Reserves room for a body of `bytes` (at least 1 KiB, at most the whole budget), waiting
    /// while it is taken; the room is given back when the permit drops.
    pub async fn reserve(&self, bytes: usize) -> OwnedSemaphorePermit {
        let wanted = u32::try_from(kib(bytes))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_kib);
        match self.kib.clone().acquire_many_owned(wanted).await {
            Ok(permit) => permit,
            // The semaphore is never closed.
            Err(_) => std::future::pending().await,
        }
    }
}

/// Whole KiB needed to hold `bytes`.
fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn room_is_waited_for_and_given_back() {
        let budget = BodyBudget::new(2048, 2);
        let first = budget.reserve(2048).await;
        let second = budget.reserve(1500).await;
        // Four KiB are taken: even a one-byte body waits.
        let waiting = tokio::time::timeout(Duration::from_millis(100), budget.reserve(1)).await;
        assert!(waiting.is_err(), "a body was let in beyond the budget");
        drop(first);
        let third = budget.reserve(1).await;
        drop((second, third));
        // A body declared larger than the whole budget gets all of it instead of waiting for
        // ever (the body limit refuses it once read).
        let all = tokio::time::timeout(Duration::from_secs(1), budget.reserve(usize::MAX))
            .await
            .expect("the whole budget");
        assert_eq!(all.num_permits(), 4);
    }
}
