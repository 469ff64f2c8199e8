//! The statuses this controller wrote that its TaskRun cache does not show yet.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use taskrun::{TaskRun, TaskRunStatus};

use crate::status;

/// The statuses this controller wrote that its TaskRun cache may not show yet, per TaskRun
/// uid. This controller (the leader) is the only writer of the status, so what it wrote last
/// is the truth; reconciling from an older cached status would write it again, record its
/// Event twice, or (a Job removed after finishing) start a finished version over.
/// An entry goes once the watch shows what was written, so it holds only writes in flight.
#[derive(Default)]
pub struct WrittenStatus(Mutex<HashMap<String, TaskRunStatus>>);

impl WrittenStatus {
    /// The status to reconcile from: the one last written here while the cache lags behind
    /// it, the cached one otherwise.
    pub fn latest(&self, uid: &str, cached: Option<&TaskRunStatus>) -> TaskRunStatus {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match (map.get(uid), cached) {
            (Some(written), Some(c)) if !status::differs(c, written) => {
                map.remove(uid);
                c.clone()
            }
            (Some(written), _) => written.clone(),
            (None, c) => c.cloned().unwrap_or_default(),
        }
    }

    /// Called for every event of the TaskRun watch: drops the entry the cache now shows, or
    /// of a TaskRun gone (perhaps without a last reconcile: its finalizer removed by hand). Not
    /// for a list's objects (`InitApply`): the reflector puts those in the cache only when the
    /// whole list is in, and until then reconciles (of a Job's event, a retry) still read the
    /// cache from before; the reconcile's `latest` drops those entries once the cache has them.
    pub fn seen(&self, event: &kube::runtime::watcher::Event<TaskRun>) {
        use kube::runtime::watcher::Event;
        let tr = match event {
            Event::Apply(tr) => tr,
            Event::Delete(tr) => {
                self.forget(tr.metadata.uid.as_deref().unwrap_or_default());
                return;
            }
            _ => return,
        };
        let (Some(uid), Some(shown)) = (tr.metadata.uid.as_deref(), tr.status.as_ref()) else {
            return;
        };
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(uid).is_some_and(|w| !status::differs(shown, w)) {
            map.remove(uid);
        }
    }

    /// Whether the status last written for `uid`, which the cache does not show yet, says the
    /// TaskRun has run (`TaskRunStatus::has_run`).
    pub fn has_run(&self, uid: &str) -> bool {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(uid).is_some_and(TaskRunStatus::has_run)
    }

    /// Whether the status last written for `uid`, which the cache does not show yet, ended
    /// `version` without running it (Failed as a Duplicate, say).
    pub fn ended_unrun(&self, uid: &str, version: i64) -> bool {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(uid)
            .is_some_and(|s| s.job_name.is_none() && status::is_final_for(Some(s), version))
    }

    pub fn record(&self, uid: &str, written: TaskRunStatus) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(uid.to_owned(), written);
    }

    pub fn forget(&self, uid: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(uid);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fixtures::{recorded, taskrun};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn a_written_status_wins_over_the_cache_until_the_cache_shows_it() {
        let written = WrittenStatus::default();
        let running = TaskRunStatus {
            phase: Some(taskrun::Phase::Running),
            ..recorded(1)
        };
        assert_eq!(written.latest("u", None), TaskRunStatus::default());
        written.record("u", running.clone());
        // The cache has nothing yet, or an older status: what was written counts.
        assert_eq!(written.latest("u", None), running);
        assert_eq!(written.latest("u", Some(&recorded(1))), running);
        assert_eq!(written.len(), 1);
        // The cache caught up (lastUpdated aside): the entry goes.
        let shown = TaskRunStatus {
            last_updated: Some(Time(Timestamp::UNIX_EPOCH)),
            ..running.clone()
        };
        assert_eq!(written.latest("u", Some(&shown)), shown);
        assert_eq!(written.len(), 0);
        written.record("u", running.clone());
        written.forget("u");
        assert_eq!(written.len(), 0);

        // The watch delivering the written status drops the entry too.
        use kube::runtime::watcher::Event;
        written.record("u", running.clone());
        let mut tr = taskrun(1, Some(recorded(1)));
        tr.metadata.uid = Some("u".into());
        written.seen(&Event::Apply(tr.clone()));
        assert_eq!(written.len(), 1);
        tr.status = Some(running.clone());
        // Not a list's: the cache shows it only once the whole list is in.
        written.seen(&Event::InitApply(tr.clone()));
        assert_eq!(written.latest("u", Some(&recorded(1))), running);
        written.seen(&Event::Apply(tr.clone()));
        assert_eq!(written.len(), 0);
        // Deleted: gone, whatever it showed.
        written.record("u", recorded(2));
        written.seen(&Event::Delete(tr));
        assert_eq!(written.len(), 0);
    }
}
