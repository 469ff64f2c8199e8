//! Finished Jobs deleted a moment ago, kept for the reconcile that reads how they ended.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kube::runtime::reflector::Store;
use taskrun::TaskRun;
use tokio::time::Instant;

use super::{CachedJob, controller_of, listed};
use crate::status;

/// Finished Jobs whose deletion the watch brought, kept a little while by namespace and name:
/// with a short `ttlSecondsAfterFinished` the Job controller's end and the TTL controller's
/// delete can both arrive before the reconcile they queued runs, and the Job's last state is
/// then the only record of how its version ended (without it the version would be reported
/// `JobLost`). The reconcile of the owning TaskRun forgets the entry once the status it built
/// from it is written; one it never reads (that reconcile had already seen the end) expires.
pub struct Departed {
    ttl: Duration,
    entries: Mutex<DepartedEntries>,
}

#[derive(Default)]
struct DepartedEntries {
    /// Each Job with when it was recorded.
    jobs: HashMap<(String, String), (Instant, Arc<CachedJob>)>,
    /// Keys in the order they came, for expiry. A key recorded again (a TaskRun deleted and
    /// made again with the same identity) is here twice; the older entry expires nothing.
    order: VecDeque<(Instant, (String, String))>,
}

impl Departed {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
        }
    }

    /// Called for every Job the watch reports deleted; keeps it only if it had finished and
    /// the TaskRun controlling it is in `taskruns` and not being deleted. A deleted TaskRun's
    /// Jobs (thousands at once in a mass deletion) have no reconcile left to read them.
    /// Before the TaskRuns are first listed in a term (paged, that takes seconds at thousands,
    /// while the Job watch runs), the owner cannot be told, and every finished Job is kept:
    /// dropped, a Job that ended and was removed by its TTL in that window would leave its
    /// TaskRun to be reported `JobLost`.
    pub fn record(&self, job: &CachedJob, taskruns: &Store<TaskRun>) {
        let (Some(ns), Some(name)) = (job.metadata.namespace.clone(), job.metadata.name.clone())
        else {
            return;
        };
        let owner_lives = match controller_of(&job.metadata, taskruns) {
            Some((tr, _)) => tr.metadata.deletion_timestamp.is_none(),
            None => !listed(taskruns),
        };
        // Gone, its pods go with it: an end decided while they were stopping is its end.
        let gone = CachedJob {
            metadata: job.metadata.clone(),
            status: job.status.clone().map(status::as_gone),
        };
        let finished = status::job_outcome(&name, gone.status.as_ref())
            .phase
            .is_final();
        if !(owner_lives && finished) {
            return;
        }
        let now = Instant::now();
        let mut e = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((at, key)) = e.order.front() {
            if now.duration_since(*at) < self.ttl {
                break;
            }
            let (at, key) = (*at, key.clone());
            if e.jobs
                .get(&key)
                .is_some_and(|(recorded, _)| *recorded == at)
            {
                e.jobs.remove(&key);
            }
            e.order.pop_front();
        }
        let key = (ns, name);
        e.order.push_back((now, key.clone()));
        e.jobs.insert(key, (now, Arc::new(gone)));
    }

    /// The last state of a finished Job deleted a moment ago. It is kept until the status
    /// built from it is written (`forget`), or expires: a reconcile whose status write fails
    /// must find it again, or the retry would take the Job for lost.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<CachedJob>> {
        let e = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        e.jobs
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|(_, job)| job.clone())
    }

    pub fn forget(&self, namespace: &str, name: &str) {
        let mut e = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        e.jobs.remove(&(namespace.to_owned(), name.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fixtures::{job, owners};

    #[test]
    fn a_deleted_taskruns_jobs_are_not_kept() {
        let departed = Departed::new(Duration::from_secs(300));
        departed.record(&job("done", Some("Complete")), &owners(true));
        assert!(departed.get("ns", "done").is_none());
        let (nobody, mut writer) = kube::runtime::reflector::store::<TaskRun>();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Init);
        writer.apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
        departed.record(&job("done", Some("Complete")), &nobody);
        assert!(departed.get("ns", "done").is_none());
    }

    /// At the start of a term the Job watch runs while the TaskRuns are still being listed:
    /// a finished Job deleted then is kept, its owner unknown yet.
    #[test]
    fn a_finished_job_deleted_before_the_taskruns_are_listed_is_kept() {
        let departed = Departed::new(Duration::from_secs(300));
        let (unlisted, _writer) = kube::runtime::reflector::store::<TaskRun>();
        departed.record(&job("done", Some("Complete")), &unlisted);
        assert!(departed.get("ns", "done").is_some());
        departed.record(&job("running", None), &unlisted);
        assert!(
            departed.get("ns", "running").is_none(),
            "only finished ones"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_job_deleted_a_moment_ago_is_found_until_forgotten_or_expired() {
        let departed = Departed::new(Duration::from_secs(300));
        let owners = owners(false);
        departed.record(&job("running", None), &owners);
        departed.record(&job("done", Some("Complete")), &owners);
        departed.record(&job("failed", Some("Failed")), &owners);
        assert!(
            departed.get("ns", "running").is_none(),
            "only finished Jobs are kept"
        );
        let done = departed.get("ns", "done").expect("the finished Job");
        assert_eq!(done.metadata.name.as_deref(), Some("done"));
        assert!(
            departed.get("ns", "done").is_some(),
            "still there for a retry whose status write failed"
        );
        departed.forget("ns", "done");
        assert!(departed.get("ns", "done").is_none(), "forgotten");
        tokio::time::advance(Duration::from_secs(301)).await;
        // The next record expires what is older than the ttl.
        departed.record(&job("later", Some("Complete")), &owners);
        assert!(departed.get("ns", "failed").is_none(), "expired");
        assert!(departed.get("ns", "later").is_some());
    }

    /// A Job deleted after the Job controller decided its end but before its pods had
    /// stopped (no final condition yet) is kept, and read as ended.
    #[test]
    fn a_job_deleted_while_its_pods_stopped_is_kept_as_ended() {
        let departed = Departed::new(Duration::from_secs(300));
        let mut stopping = job("deadline", Some("FailureTarget"));
        if let Some(s) = stopping.status.as_mut() {
            s.terminating = Some(1);
        }
        assert!(
            !status::job_outcome("deadline", stopping.status.as_ref())
                .phase
                .is_final(),
            "live, it still runs"
        );
        departed.record(&stopping, &owners(false));
        let kept = departed.get("ns", "deadline").expect("kept");
        let phase = status::job_outcome("deadline", kept.status.as_ref()).phase;
        assert_eq!(phase, taskrun::Phase::Failed);
    }

    /// The same Job name recorded twice (its TaskRun deleted and made again with the same
    /// identity and version) keeps the later record for its own ttl: the first record's
    /// expiry must not take it.
    #[tokio::test(start_paused = true)]
    async fn a_job_recorded_again_expires_from_its_latest_record() {
        let departed = Departed::new(Duration::from_secs(300));
        let owners = owners(false);
        departed.record(&job("done", Some("Complete")), &owners);
        tokio::time::advance(Duration::from_secs(200)).await;
        departed.record(&job("done", Some("Complete")), &owners);
        tokio::time::advance(Duration::from_secs(150)).await;
        departed.record(&job("other", Some("Complete")), &owners);
        assert!(
            departed.get("ns", "done").is_some(),
            "recorded 150 s ago, within the ttl"
        );
        tokio::time::advance(Duration::from_secs(200)).await;
        departed.record(&job("other", Some("Complete")), &owners);
        assert!(departed.get("ns", "done").is_none(), "expired in turn");
    }
}
