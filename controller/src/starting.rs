//! The TaskRuns that began to create their children in this term and whose cached status does
//! not show it yet, by uid.
//!
//! Two TaskRuns of one task that got past the webhook together (at different versions: at one
//! version the child names settle it) can each be reconciled before the other's status is in
//! the TaskRun cache. Each then sees the other as not run, creation times are whole seconds,
//! and when the tie falls to the one created second, both ran. So a TaskRun that has not run
//! asks whether another runs instead, and is noted as starting, under one lock; a TaskRun noted
//! here counts as having run for the others' asking (`reconcile::runs_instead`). An entry goes
//! once a status naming its Job or ending its version is written (from then the written status,
//! `cache::WrittenStatus`, then the cache tell the others), or once the TaskRun is deleted: the
//! set holds only TaskRuns between their first reconcile and that write, and those waiting for
//! a name or refused a create.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

#[derive(Default)]
pub struct Starting(Mutex<HashSet<String>>);

impl Starting {
    /// Asks `runs_instead` (given whether a uid is starting) for the TaskRun that runs instead
    /// of the one with `uid`, all under the lock; when there is none, notes `uid` as starting.
    /// One noted already is not asked about again: it may have made children, and the others
    /// yield to it (a retry would otherwise have it yield to one that yields to it).
    pub fn unless_another_runs<T>(
        &self,
        uid: &str,
        runs_instead: impl FnOnce(&dyn Fn(&str) -> bool) -> Option<T>,
    ) -> Option<T> {
        let mut starting = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if starting.contains(uid) {
            return None;
        }
        let other = runs_instead(&|u| starting.contains(u));
        if other.is_none() {
            starting.insert(uid.to_owned());
        }
        other
    }

    /// The TaskRun with `uid` has run, ended its version, or is gone: its status (or its
    /// absence) tells the others from now on.
    pub fn settled(&self, uid: &str) {
        let mut starting = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if starting.remove(uid) && starting.is_empty() {
            // A burst of thousands leaves no table of that size behind.
            starting.shrink_to_fit();
        }
    }

    /// Called for every event of the TaskRun watch: a TaskRun deleted is settled, even one
    /// that had no last reconcile (its finalizer removed by hand).
    pub fn seen(&self, event: &kube::runtime::watcher::Event<taskrun::TaskRun>) {
        if let kube::runtime::watcher::Event::Delete(tr) = event {
            self.settled(tr.metadata.uid.as_deref().unwrap_or_default());
        }
    }

    #[cfg(test)]
    pub fn contains(&self, uid: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(uid)
    }
}

#[cfg(test)]
mod tests {
    use super::Starting;

    #[test]
    fn a_taskrun_is_noted_only_when_none_runs_instead_until_settled() {
        let starting = Starting::default();
        assert_eq!(starting.unless_another_runs::<()>("a", |_| None), None);
        assert!(starting.contains("a"));
        // Asked again (a retry), a goes on: it is not asked about again.
        assert_eq!(starting.unless_another_runs("a", |_| Some("c")), None);
        // b asks next: a counts as having run, and b is not noted.
        let other =
            starting.unless_another_runs("b", |is_starting| is_starting("a").then_some("a"));
        assert_eq!(other, Some("a"));
        assert!(!starting.contains("b"));
        starting.settled("a");
        assert!(!starting.contains("a"));
        assert_eq!(
            starting.unless_another_runs("b", |is_starting| is_starting("a").then_some("a")),
            None
        );
        assert!(starting.contains("b"));
        // Deleted without a last reconcile: gone from the set too.
        let gone: taskrun::TaskRun = serde_json::from_value(serde_json::json!({
            "apiVersion": "orchestrator.io/v1", "kind": "TaskRun",
            "metadata": {"name": "b", "namespace": "ns", "uid": "b"},
            "spec": {"taskId": 1, "serviceName": "svc", "markdownFiles": []},
        }))
        .expect("a TaskRun");
        starting.seen(&kube::runtime::watcher::Event::Apply(gone.clone()));
        assert!(starting.contains("b"));
        starting.seen(&kube::runtime::watcher::Event::Delete(gone));
        assert!(!starting.contains("b"));
    }
}
