//! The plain listener's connection slots (probes and scrapes). When every slot is taken, a
//! new connection closes the one that has waited longest with no request in progress: clients
//! that connect and send nothing cannot keep the kubelet's probes out, as they could when new
//! connections waited for a slot in the listen backlog.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

pub struct Slots {
    max: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    /// In the order they came.
    connections: VecDeque<(u64, Arc<Connection>)>,
}

#[derive(Default)]
struct Connection {
    /// Requests in progress.
    busy: AtomicUsize,
    closed_for_another: Notify,
}

/// A connection's slot, given back when dropped.
pub struct Slot {
    id: u64,
    connection: Arc<Connection>,
    slots: Arc<Slots>,
}

/// Held while a request is in progress on the connection: it is not closed for another.
pub struct Busy(Arc<Connection>);

impl Slots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            open: Mutex::default(),
        })
    }

    /// A slot for a connection just accepted. With every slot taken, the connection that has
    /// waited longest with no request in progress is told to close (`Slot::closed_for_another`)
    /// and gives its slot up at once; `None` when every one has a request in progress.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.connections.len() >= self.max {
            let idle = open
                .connections
                .iter()
                .position(|(_, c)| c.busy.load(Ordering::Acquire) == 0)?;
            if let Some((_, closing)) = open.connections.remove(idle) {
                closing.closed_for_another.notify_one();
            }
        }
        let id = open.next_id;
        open.next_id += 1;
        let connection = Arc::new(Connection::default());
        open.connections.push_back((id, connection.clone()));
        Some(Slot {
            id,
            connection,
            slots: self.clone(),
        })
    }
}

impl Slot {
    /// Resolves when the connection must close to make room for a new one.
    pub async fn closed_for_another(&self) {
        self.connection.closed_for_another.notified().await;
    }

    /// Marks a request in progress until the guard drops.
    pub fn busy(&self) -> Busy {
        self.connection.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.connection.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.connections.retain(|(id, _)| *id != self.id);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn closed_soon(slot: &Slot) -> bool {
        tokio::time::timeout(Duration::from_millis(50), slot.closed_for_another())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_new_connection_closes_the_longest_idle_one_never_a_busy_one() {
        let slots = Slots::new(2);
        let first = slots.take().expect("a free slot");
        let second = slots.take().expect("a free slot");
        let busy = first.busy();
        // Full: the second (the only idle one) makes room for the third.
        let third = slots.take().expect("room made");
        assert!(closed_soon(&second).await);
        assert!(!closed_soon(&first).await, "a busy connection was closed");
        // Full again, with the first busy and the third idle: the third goes.
        let _third_busy_later = slots.take().expect("room made");
        assert!(closed_soon(&third).await);
        // Every connection busy: no room.
        let _busy_too = _third_busy_later.busy();
        assert!(slots.take().is_none());
        // A request ends: its connection may be closed for a new one.
        drop(busy);
        let _fifth = slots.take().expect("room made");
        assert!(closed_soon(&first).await);
    }

    #[tokio::test]
    async fn a_closed_connection_gives_its_slot_back() {
        let slots = Slots::new(1);
        let only = slots.take().expect("a free slot");
        drop(only);
        let next = slots.take().expect("the slot given back");
        assert!(!closed_soon(&next).await);
    }
}
