//! Creates this replica allowed a moment ago that its index has not shown yet. The index
//! follows the API server by a watch event, so two creates of one identity sent at once (a
//! GitOps tool applying a sync wave in parallel) would both find the identity free. The first
//! one allowed is noted here until the watch shows it, or for [`HELD_FOR`] when it never does
//! (its create failed after admission), and the other is refused as its duplicate. Per
//! replica: two such creates answered by different replicas still both pass, and the
//! controller's duplicate rule decides between them (DESIGN section 3).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use taskrun::Identity;

/// How long a create allowed and not seen by the watch holds its identity: far longer than a
/// watch event takes, short enough that a create refused after admission (by another policy,
/// say) does not keep the task from being created for long.
pub const HELD_FOR: Duration = Duration::from_secs(5);

/// The most creates noted at once. Beyond it (more than this many allowed within
/// [`HELD_FOR`] and not yet seen), a create is not noted, and may race as before.
pub const MAX_NOTED: usize = 4096;

#[derive(Debug, Default)]
pub struct Admitted {
    by_identity: HashMap<Identity, (Box<str>, Instant)>,
    /// No note expires before this, so a full map is not pruned before it.
    next_expiry: Option<Instant>,
}

impl Admitted {
    /// For a create of `name` holding `identity` at `now`: the name of another create allowed
    /// for it and still held, if any; else, with `note`, `name` is noted as allowed (a create of
    /// that name again, or after a note expired, is held from now on, with no new entry).
    pub fn held_by_another(
        &mut self,
        identity: &Identity,
        name: &str,
        note: bool,
        now: Instant,
    ) -> Option<String> {
        if let Some((noted, at)) = self.by_identity.get_mut(identity) {
            let held = now.saturating_duration_since(*at) < HELD_FOR;
            if held && **noted != *name {
                return Some(noted.to_string());
            }
            if note {
                if **noted != *name {
                    *noted = name.into();
                }
                *at = now;
            }
            return None;
        }
        if note {
            self.insert(identity, name, now);
        }
        None
    }

    /// A new note, unless [`MAX_NOTED`] are held: a full map is pruned of expired notes first,
    /// no sooner than the first of them expires.
    fn insert(&mut self, identity: &Identity, name: &str, now: Instant) {
        if self.by_identity.len() >= MAX_NOTED {
            if self.next_expiry.is_some_and(|t| now < t) {
                return;
            }
            self.by_identity
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < HELD_FOR);
            self.next_expiry = self
                .by_identity
                .values()
                .map(|(_, at)| *at + HELD_FOR)
                .min();
            if self.by_identity.len() >= MAX_NOTED {
                return;
            }
        }
        let expiry = now + HELD_FOR;
        self.next_expiry = Some(self.next_expiry.map_or(expiry, |t| t.min(expiry)));
        self.by_identity
            .insert(identity.clone(), (name.into(), now));
    }

    /// Whether a create of `name` is noted for `identity`, held still or not.
    pub fn is_noted(&self, identity: &Identity, name: &str) -> bool {
        self.by_identity
            .get(identity)
            .is_some_and(|(noted, _)| **noted == *name)
    }

    /// The watch showed `name` holding `identity` (made or changed; not gone, which may be an
    /// earlier TaskRun of that name): the index knows of it now, and a note of it is done.
    pub fn seen(&mut self, identity: &Identity, name: &str) {
        if self.is_noted(identity, name) {
            self.by_identity.remove(identity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(task: i64) -> Identity {
        Identity::new("team-a", "billing", task)
    }

    /// Another create's name holding `identity` against `name`, noting nothing.
    fn other(
        admitted: &mut Admitted,
        identity: &Identity,
        name: &str,
        now: Instant,
    ) -> Option<String> {
        admitted.held_by_another(identity, name, false, now)
    }

    #[test]
    fn a_create_allowed_holds_its_identity_until_seen_or_expired() {
        let t0 = Instant::now();
        let mut admitted = Admitted::default();
        assert_eq!(admitted.held_by_another(&id(1), "first", true, t0), None);
        assert_eq!(
            other(&mut admitted, &id(1), "second", t0).as_deref(),
            Some("first")
        );
        // Its own name again (a retry of the same create), another identity: free.
        assert_eq!(other(&mut admitted, &id(1), "first", t0), None);
        assert_eq!(other(&mut admitted, &id(2), "second", t0), None);
        // Expired: a create refused after admission keeps its identity no longer.
        let later = t0 + HELD_FOR;
        assert_eq!(other(&mut admitted, &id(1), "second", later), None);
        // Seen by the watch under another name: not this note's end.
        admitted.seen(&id(1), "other");
        assert_eq!(admitted.by_identity.len(), 1);
        admitted.seen(&id(1), "first");
        assert!(admitted.by_identity.is_empty());
    }

    #[test]
    fn at_most_max_noted_and_a_full_map_is_pruned_once_notes_expire() {
        let t0 = Instant::now();
        let mut admitted = Admitted::default();
        for task in 0..MAX_NOTED as i64 {
            admitted.held_by_another(&id(task), "n", true, t0);
        }
        let over = id(MAX_NOTED as i64);
        admitted.held_by_another(&over, "n", true, t0 + Duration::from_secs(1));
        assert_eq!(admitted.by_identity.len(), MAX_NOTED);
        assert_eq!(other(&mut admitted, &over, "m", t0), None, "not noted");
        // Once the first ones expire, the next note prunes them and is kept.
        admitted.held_by_another(&over, "n", true, t0 + HELD_FOR);
        assert_eq!(admitted.by_identity.len(), 1);
        assert_eq!(
            other(&mut admitted, &over, "m", t0 + HELD_FOR).as_deref(),
            Some("n")
        );
    }
}
