//! Kubernetes Events on a TaskRun, recorded in the background.

use kube::Resource;
use kube::runtime::events::{Event, Recorder};
use taskrun::TaskRun;

use crate::controller::Ctx;

/// Records an Event on the TaskRun in the background: an Event is for people, and the
/// TaskRun's progress must not wait for it. A new Recorder each time, so it only ever creates
/// (a shared one patches repeats into a series); the RBAC grants `create` alone.
pub(super) fn record(ctx: &Ctx, tr: &TaskRun, mut event: Event) {
    event.note = event.note.map(fit_note);
    let recorder = Recorder::new(ctx.base.client.clone(), ctx.base.reporter.clone());
    let reference = tr.object_ref(&());
    tokio::spawn(async move {
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
    use super::fit_note;

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
