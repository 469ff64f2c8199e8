//! Unfinished Jobs of older versions, as the Job watch brings them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, Once, PoisonError};

use kube::runtime::reflector::Store;
use taskrun::TaskRun;

use super::{CachedJob, ChildRef, controller_of, controller_ref, runs_another_version};
use crate::job;

/// Unfinished Jobs of a version older than their TaskRun's, by the TaskRun's uid, as the Job
/// watch brings them. The reconcile stops the older Jobs it finds in the cache until the
/// status records the new version; a Job that reaches the cache only after that (its status
/// write lost, then contextVersion raised and reconciled before the watch brought the Job)
/// would otherwise run on beside the new version. The TaskRun's reconcile stops each one here.
/// A Job deleted is remembered as such until the watch shows it gone: an event the watch brings
/// late (of before the delete) must not have it deleted, and announced, twice, and the next
/// version waits for it even while the cache does not hold it (`Children::stopping`).
pub struct Superseded {
    jobs: Mutex<HashMap<String, BTreeMap<String, Noted>>>,
    swept: Once,
}

/// A Job noted, with the uid its delete names: to stop, or deleted and not yet seen gone.
#[derive(Clone, Debug, PartialEq)]
enum Noted {
    ToStop(Option<String>),
    Deleted(String),
}

impl Default for Superseded {
    fn default() -> Self {
        Self {
            jobs: Mutex::default(),
            swept: Once::new(),
        }
    }
}

impl Superseded {
    /// Called for every Job the watch reports added or changed.
    pub fn record(&self, job: &CachedJob, taskruns: &Store<TaskRun>) {
        let Some(name) = job.metadata.name.as_deref() else {
            return;
        };
        let Some((tr, uid)) = controller_of(&job.metadata, taskruns) else {
            return;
        };
        let mut map = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let deleted =
            |n: &Noted| matches!(n, Noted::Deleted(d) if job.metadata.uid.as_ref() == Some(d));
        let noted = map.get(uid).and_then(|n| n.get(name));
        if noted.is_some_and(deleted) {
            // Deleted here: forgotten once the watch shows it gone (`gone`).
            return;
        }
        if !runs_another_version(job, &job::child_names(&tr).0) {
            // Finished or going since it was noted, if it was: nothing to stop, and a finished
            // Job is kept with its pods' logs.
            drop(map);
            self.forget(uid, Some(name));
            return;
        }
        map.entry(uid.to_owned())
            .or_default()
            .insert(name.to_owned(), Noted::ToStop(job.metadata.uid.clone()));
    }

    /// Called for every Job the watch reports gone.
    pub fn gone(&self, job: &CachedJob) {
        if let (Some(name), Some(owner)) =
            (job.metadata.name.as_deref(), controller_ref(&job.metadata))
        {
            self.forget(&owner.uid, Some(name));
        }
    }

    /// Notes every cached Job `record` would, once per term (the first time it is called):
    /// the Jobs listed when a term starts may come before the TaskRuns are cached, and are
    /// noted by nobody else.
    pub(super) fn sweep_once(&self, jobs: &Store<CachedJob>, taskruns: &Store<TaskRun>) {
        self.swept.call_once(|| {
            for job in jobs.state() {
                self.record(&job, taskruns);
            }
        });
    }

    /// The Jobs of the TaskRun `uid` to stop.
    pub(super) fn of(&self, uid: &str) -> Vec<ChildRef> {
        let map = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(uid)
            .into_iter()
            .flatten()
            .filter_map(|(name, noted)| match noted {
                Noted::ToStop(uid) => Some(ChildRef::new(name, uid.as_deref())),
                Noted::Deleted(_) => None,
            })
            .collect()
    }

    /// A Job of the TaskRun `uid` that this controller failed to stop (its delete refused, or
    /// no answer): stopped at the next reconcile even once the status records the new version,
    /// whose reconciles look for older Jobs only here. Not when it was deleted already.
    pub(super) fn to_stop(&self, uid: &str, job: &ChildRef) {
        let mut map = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let noted = map.entry(uid.to_owned()).or_default();
        if !matches!(noted.get(&job.name), Some(Noted::Deleted(_))) {
            noted.insert(job.name.clone(), Noted::ToStop(job.uid.clone()));
        }
    }

    /// The Job `name` (uid `job_uid`) of the TaskRun `uid` was deleted here: not to be deleted
    /// again, and waited for, until the watch shows it gone.
    pub(super) fn deleted(&self, uid: &str, name: &str, job_uid: &str) {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(uid.to_owned())
            .or_default()
            .insert(name.to_owned(), Noted::Deleted(job_uid.to_owned()));
    }

    /// The Jobs of the TaskRun `uid` deleted here and not yet seen gone, with their uids.
    pub(super) fn deleted_of(&self, uid: &str) -> Vec<ChildRef> {
        let map = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(uid)
            .into_iter()
            .flatten()
            .filter_map(|(name, noted)| match noted {
                Noted::Deleted(job_uid) => Some(ChildRef::new(name, Some(job_uid))),
                Noted::ToStop(_) => None,
            })
            .collect()
    }

    /// Forgets one Job of the TaskRun `uid`, or all of them.
    pub fn forget(&self, uid: &str, name: Option<&str>) {
        let mut map = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(names) = map.get_mut(uid) else {
            return;
        };
        if let Some(name) = name {
            names.remove(name);
        }
        if name.is_none() || names.is_empty() {
            map.remove(uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fixtures::{job, owner_at};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn unfinished_jobs_of_older_versions_are_noted_until_stopped() {
        let store = owner_at(3, false);
        let superseded = Superseded::default();
        superseded.record(&job("svc-1-v1", None), &store);
        superseded.record(&job("svc-1-v2", Some("Complete")), &store);
        superseded.record(&job("svc-1-v3", None), &store);
        let mut going = job("svc-1-v2", None);
        going.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        superseded.record(&going, &store);
        // Another TaskRun of that name (the owner's uid differs).
        let mut stranger = job("svc-1-v2", None);
        if let Some(o) = stranger.metadata.owner_references.as_mut() {
            o[0].uid = "another".into();
        }
        superseded.record(&stranger, &store);
        assert_eq!(
            superseded.of("u"),
            [ChildRef {
                name: "svc-1-v1".into(),
                uid: Some("uid-svc-1-v1".into()),
            }],
            "only the unfinished older one, with the uid its delete names"
        );
        superseded.forget("u", Some("svc-1-v1"));
        assert!(superseded.of("u").is_empty());
        superseded.record(&job("svc-1-v1", None), &store);
        superseded.forget("u", None);
        assert!(superseded.jobs.lock().expect("lock").is_empty());
    }

    #[test]
    fn a_deleted_job_is_not_stopped_again_and_is_waited_for_until_seen_gone() {
        let store = owner_at(3, false);
        let superseded = Superseded::default();
        let old = job("svc-1-v1", None);
        superseded.record(&old, &store);
        superseded.deleted("u", "svc-1-v1", "uid-svc-1-v1");
        let deleted = || {
            superseded
                .deleted_of("u")
                .into_iter()
                .map(|c| c.name)
                .collect::<Vec<_>>()
        };
        // An event of before the delete, brought late by the watch, then the delete's own.
        superseded.record(&old, &store);
        let mut going = old.clone();
        going.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        superseded.record(&going, &store);
        assert!(superseded.of("u").is_empty());
        assert_eq!(deleted(), ["svc-1-v1"]);
        // Another Job under that name (made again by someone): to stop.
        let mut another = job("svc-1-v1", None);
        another.metadata.uid = Some("a-new-uid".into());
        superseded.record(&another, &store);
        assert_eq!(superseded.of("u").len(), 1);
        assert!(deleted().is_empty());
        // Seen gone: forgotten.
        superseded.deleted("u", "svc-1-v1", "uid-svc-1-v1");
        superseded.gone(&old);
        assert!(superseded.jobs.lock().expect("lock").is_empty());
    }

    #[test]
    fn a_job_whose_stop_failed_stays_to_stop_until_deleted_or_finished() {
        let store = owner_at(3, false);
        let superseded = Superseded::default();
        // Cached while it was the current version's Job: the watch never noted it.
        let refused = ChildRef::new("svc-1-v2", Some("uid-svc-1-v2"));
        superseded.to_stop("u", &refused);
        assert_eq!(superseded.of("u"), std::slice::from_ref(&refused));
        // Tried again and deleted: waited for, not stopped again, even if noted once more.
        superseded.deleted("u", "svc-1-v2", "uid-svc-1-v2");
        superseded.to_stop("u", &refused);
        assert!(superseded.of("u").is_empty());
        assert_eq!(superseded.deleted_of("u"), [refused]);
        // Finished before it could be stopped: left alone, and kept with its pods' logs.
        superseded.to_stop("u", &ChildRef::new("svc-1-v1", Some("uid-svc-1-v1")));
        superseded.record(&job("svc-1-v1", Some("Complete")), &store);
        assert!(superseded.of("u").is_empty());
    }

    #[test]
    fn a_noted_job_that_finishes_before_it_is_stopped_is_left_alone() {
        let store = owner_at(3, false);
        let superseded = Superseded::default();
        superseded.record(&job("svc-1-v1", None), &store);
        superseded.record(&job("svc-1-v2", None), &store);
        superseded.record(&job("svc-1-v1", Some("Complete")), &store);
        let names: Vec<String> = superseded.of("u").into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["svc-1-v2"], "the finished one is kept, not stopped");
        let mut going = job("svc-1-v2", None);
        going.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        superseded.record(&going, &store);
        assert!(superseded.jobs.lock().expect("lock").is_empty());
    }

    #[test]
    fn the_first_ask_of_a_term_notes_the_older_jobs_already_cached() {
        let taskruns = owner_at(3, false);
        let (jobs, mut job_writer) = kube::runtime::reflector::store();
        for name in ["svc-1-v1", "svc-1-v3"] {
            job_writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(job(name, None)));
        }
        let superseded = Superseded::default();
        superseded.sweep_once(&jobs, &taskruns);
        let names: Vec<String> = superseded.of("u").into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["svc-1-v1"]);
        superseded.forget("u", Some("svc-1-v1"));
        // Once a term: what was stopped is not noted again by a later ask.
        superseded.sweep_once(&jobs, &taskruns);
        assert!(superseded.of("u").is_empty());
    }
}
