//! Kubernetes Events on a TaskRun, recorded in the background.

use std::sync::atomic::{AtomicU64, Ordering};

use kube::Resource;
use kube::runtime::events::{Event, Recorder};
use taskrun::TaskRun;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::controller::Ctx;

/// Events being recorded at once, at most. While the API server is slow to take Events, a
/// burst of phase changes (thousands of TaskRuns at a restart) would otherwise pile up a task
/// and a request for each; beyond this many, an Event is dropped, logged and counted.
const MAX_IN_FLIGHT: usize = 256;

static IN_FLIGHT: Semaphore = Semaphore::const_new(MAX_IN_FLIGHT);

/// Events dropped since the start, for the log's sampling (the metric counts them all).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// A place among the Events being recorded, if there is one.
fn slot() -> Option<SemaphorePermit<'static>> {
    IN_FLIGHT.try_acquire().ok()
}

/// Records an Event on the TaskRun in the background: an Event is for people, and the
/// TaskRun's progress must not wait for it. A new Recorder each time, so it only ever creates
/// (a shared one patches repeats into a series); the RBAC grants `create` alone.
pub(super) fn record(ctx: &Ctx, tr: &TaskRun, mut event: Event) {
    let Some(slot) = slot() else {
        ctx.base.shared.metrics.event_dropped();
        let dropped = DROPPED.fetch_add(1, Ordering::Relaxed) + 1;
        let (taskrun, namespace) = (
            tr.metadata.name.as_deref().unwrap_or_default(),
            tr.metadata.namespace.as_deref().unwrap_or_default(),
        );
        // The first, then one in a hundred: a burst drops thousands.
        if dropped == 1 || dropped.is_multiple_of(100) {
            tracing::warn!(taskrun, namespace, reason = %event.reason, dropped,
                "dropped an Event: {MAX_IN_FLIGHT} are being recorded already");
        } else {
            tracing::debug!(taskrun, namespace, reason = %event.reason, "dropped an Event");
        }
        return;
    };
    event.note = event.note.map(fit_note);
    let recorder = Recorder::new(ctx.base.client.clone(), ctx.base.reporter.clone());
    let reference = tr.object_ref(&());
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(error) = recorder.publish(&event, &reference).await {
            tracing::warn!(
                taskrun = reference.name.as_deref().unwrap_or_default(),
                namespace = reference.namespace.as_deref().unwrap_or_default(),
                reason = %event.reason,
                %error,
                "could not record an Event"
            );
        }
    });
}

/// events.k8s.io refuses a note of more than 1 KiB, and a message can quote an API server's
/// refusal at any length: the note is cut to fit, on a character boundary, marked with '…'.
fn fit_note(mut note: String) -> String {
    const MAX_NOTE_BYTES: usize = 1024;
    if note.len() > MAX_NOTE_BYTES {
        let mut end = MAX_NOTE_BYTES - '…'.len_utf8();
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push('…');
    }
    note
}

#[cfg(test)]
mod tests {
    use super::{MAX_IN_FLIGHT, fit_note, slot};

    #[test]
    fn no_more_events_are_recorded_at_once_than_the_bound() {
        let taken: Vec<_> = std::iter::from_fn(slot).take(MAX_IN_FLIGHT + 1).collect();
        assert_eq!(taken.len(), MAX_IN_FLIGHT);
        assert!(slot().is_none());
        drop(taken);
        assert!(
            slot().is_some(),
            "a slot is free again once an Event is recorded"
        );
    }

    #[test]
    fn an_event_note_is_cut_to_one_kib_on_a_character_boundary() {
        assert_eq!(fit_note("short".into()), "short");
        let exact = "x".repeat(1024);
        assert_eq!(fit_note(exact.clone()), exact);
        // 'é' is two bytes: 1021 bytes of text do not end on a character boundary.
        let long = format!("{}{}", "x", "é".repeat(1000));
        let cut = fit_note(long.clone());
        assert!(cut.len() <= 1024, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(long.starts_with(cut.trim_end_matches('…')));
    }
}
