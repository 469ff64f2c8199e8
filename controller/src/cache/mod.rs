//! What the controller keeps in memory of TaskRuns and their children, and how little.
//!
//! Reconciles read children from these caches instead of asking the API server, so a reconcile
//! that finds everything in place makes no API call at all. The caches are only read; nothing
//! trimmed here is ever written back.
//!
//! Here: the children's stores (`Children`), how a child is cached and judged, and the trimming.
//! Beside the stores, what the watches alone would lose: `WrittenStatus` (this controller's
//! status writes the cache does not show yet), `Superseded` (Jobs of older versions that came
//! late) and `Departed` (finished Jobs deleted a moment ago).

use std::borrow::Cow;
use std::sync::Arc;

use futures::{FutureExt, Stream, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;
use serde::Deserialize;
use taskrun::TaskRun;
use tokio::sync::watch;

use crate::{relist, status};

mod departed;
#[cfg(test)]
mod fixtures;
mod superseded;
mod written;

pub use departed::Departed;
pub use superseded::Superseded;
pub use written::WrittenStatus;

/// The Job watch's events, with what the caches beside its store learn of them, and a delete
/// for each cached Job a re-list leaves out (`relist::with_vanished`). `Departed` keeps the
/// finished ones deleted, those a re-list finds gone too. `Superseded` notes Jobs of older
/// versions as they come, and ends its note of a Job deleted here only on a delete the watch
/// itself reports: a re-list at any resourceVersion may come from an API server whose cache
/// lags behind that Job, and the note is what keeps the next version waiting for it (the
/// reconcile asks the API server about a noted Job its cache does not hold, and forgets it only
/// once it is gone: `older_still_running`).
pub fn job_events<E>(
    events: impl Stream<Item = Result<Event<CachedJob>, E>>,
    jobs: Store<CachedJob>,
    taskruns: Store<TaskRun>,
    departed: Arc<Departed>,
    superseded: Arc<Superseded>,
) -> impl Stream<Item = Result<Event<CachedJob>, E>> {
    let reported = {
        let superseded = superseded.clone();
        move |event: &Event<CachedJob>| {
            if let Event::Delete(job) = event {
                superseded.gone(job);
            }
        }
    };
    relist::with_vanished(events.inspect_ok(reported), jobs).inspect_ok(move |event| match event {
        Event::Delete(job) => departed.record(job, &taskruns),
        Event::Apply(job) | Event::InitApply(job) => superseded.record(job, &taskruns),
        _ => {}
    })
}

/// The children this controller has seen, by their watches (Jobs as metadata and status,
/// ConfigMaps as metadata only).
#[derive(Clone)]
pub struct Children {
    jobs: Store<CachedJob>,
    config_maps: Store<PartialObjectMeta<ConfigMap>>,
    departed: Arc<Departed>,
    superseded: Arc<Superseded>,
    ready: watch::Receiver<bool>,
}

impl Children {
    /// The caches of two watches that something else drives (the Controller, through its
    /// owned streams).
    pub fn new(
        jobs: Store<CachedJob>,
        config_maps: Store<PartialObjectMeta<ConfigMap>>,
        departed: Arc<Departed>,
        superseded: Arc<Superseded>,
    ) -> Self {
        // kube-runtime's `Store::wait_until_ready` wakes only the last of several concurrent
        // waiters (one oneshot receiver), so one task waits there and tells everyone else.
        let (tx, ready) = watch::channel(false);
        let (j, c) = (jobs.clone(), config_maps.clone());
        tokio::spawn(async move {
            // An error means the watch is gone with its writer (the controller is stopping).
            let _ = j.wait_until_ready().await;
            let _ = c.wait_until_ready().await;
            let _ = tx.send(true);
        });
        Self {
            jobs,
            config_maps,
            departed,
            superseded,
            ready,
        }
    }

    /// Waits until both watches have listed once (at once, after the first time), so that no
    /// read below takes a child it has not seen yet for a missing one (at start-up: a Job
    /// created again, a superseded Job left running).
    async fn ready(&self) {
        let _ = self.ready.clone().wait_for(|ready| *ready).await;
    }

    /// The Job by that name: cached, or finished and deleted a moment ago (`Departed`).
    pub async fn job(&self, namespace: &str, name: &str) -> Option<Arc<CachedJob>> {
        self.ready().await;
        self.jobs
            .get(&ObjectRef::new(name).within(namespace))
            .or_else(|| self.departed.get(namespace, name))
    }

    /// Called once a status built from the Job by that name is written: a finished Job
    /// deleted a moment ago is no longer needed (`Departed`).
    pub fn written_from_job(&self, namespace: &str, name: &str) {
        self.departed.forget(namespace, name);
    }

    pub async fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<PartialObjectMeta<ConfigMap>>> {
        self.ready().await;
        self.config_maps
            .get(&ObjectRef::new(name).within(namespace))
    }

    /// Unfinished Jobs of an older version of the TaskRun `uid` that the Job watch brought,
    /// or that were cached when the first reconcile of this term asked (`Superseded`), until
    /// `stopped`.
    pub async fn superseded_of(&self, uid: &str, taskruns: &Store<TaskRun>) -> Vec<ChildRef> {
        self.ready().await;
        self.superseded.sweep_once(&self.jobs, taskruns);
        self.superseded.of(uid)
    }

    /// The Job `name` of the TaskRun `uid` was found gone, or a successor's holds the name:
    /// nothing to stop.
    pub fn stopped(&self, uid: &str, name: &str) {
        self.superseded.forget(uid, Some(name));
    }

    /// The Job `job` of the TaskRun `uid` could not be stopped: tried again (`Superseded`).
    pub fn to_stop(&self, uid: &str, job: &ChildRef) {
        self.superseded.to_stop(uid, job);
    }

    /// The Job `name` (uid `job_uid`) of the TaskRun `uid` was deleted here (`Superseded`).
    pub fn deleted(&self, uid: &str, name: &str, job_uid: &str) {
        self.superseded.deleted(uid, name, job_uid);
    }

    /// The Jobs of the TaskRun `uid` deleted here that the Job watch has not shown gone yet:
    /// the cache may not show them at all (`Superseded`).
    pub fn stopping(&self, uid: &str) -> Vec<ChildRef> {
        self.superseded.deleted_of(uid)
    }

    /// The TaskRun `uid` is gone: nothing of it is to be stopped any more.
    pub fn forget_superseded(&self, uid: &str) {
        self.superseded.forget(uid, None);
    }

    /// A cached Job of another version than `current` that the TaskRun `uid` controls and that
    /// may still have a pod (`may_still_run`); one pass over the cache, copying nothing.
    pub async fn older_still_running(&self, uid: &str, current: &str) -> Option<Arc<CachedJob>> {
        self.ready().await;
        self.jobs
            .find(|j| controlled_by(&j.metadata, Some(uid)) && may_still_run(j, current))
    }

    /// The cached Jobs the TaskRun `uid` controls. A child created a moment ago may not be
    /// cached yet; what a deletion misses, the garbage collector removes by owner reference.
    pub async fn jobs_of(&self, uid: &str) -> Vec<Arc<CachedJob>> {
        self.ready().await;
        controlled(&self.jobs, uid)
    }

    /// The cached ConfigMaps the TaskRun `uid` controls (see [`Children::jobs_of`]).
    pub async fn config_maps_of(&self, uid: &str) -> Vec<Arc<PartialObjectMeta<ConfigMap>>> {
        self.ready().await;
        controlled(&self.config_maps, uid)
    }
}

/// The TaskRun that controls a child, as cached (and its uid), if it is the one the child's
/// controller reference names.
fn controller_of<'a>(
    meta: &'a ObjectMeta,
    taskruns: &Store<TaskRun>,
) -> Option<(Arc<TaskRun>, &'a str)> {
    let owner = controller_ref(meta)?;
    let ns = meta.namespace.as_deref()?;
    let tr = taskruns.get(&ObjectRef::new(&owner.name).within(ns))?;
    (tr.metadata.uid.as_deref() == Some(owner.uid.as_str())).then_some((tr, owner.uid.as_str()))
}

/// Whether `store` has been listed (it is not until its watch's first list is done).
fn listed<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> bool {
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

/// True for a Job still running (not finished, not being deleted) other than `current`, the
/// Job of its TaskRun's version: one of a version that the current one replaces.
pub fn runs_another_version(job: &CachedJob, current: &str) -> bool {
    let name = job.metadata.name.as_deref().unwrap_or_default();
    name != current
        && job.metadata.deletion_timestamp.is_none()
        // A Job whose end is decided has ended for this, its pods stopping or not.
        && !status::has_ended(name, job.status.as_ref())
}

/// True for a Job other than `current`, the Job of its TaskRun's version, that may still have
/// a pod: one not finished (no Complete or Failed condition), being deleted or not. The Job
/// controller (from 1.31) marks a Job finished only once its pods have stopped, and a Job
/// deleted in the foreground stays until they have, so a version whose Job is yet to be made
/// waits for these. (Before 1.31 a Job past its deadline is marked Failed while its pods
/// stop; its pod counts are not kept up to date after that, so they cannot tell.)
pub fn may_still_run(job: &CachedJob, current: &str) -> bool {
    job.metadata.name.as_deref().unwrap_or_default() != current
        && !status::finished(job.status.as_ref())
}

fn controlled<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>, uid: &str) -> Vec<Arc<K>> {
    let mut children = store.state();
    children.retain(|c| controlled_by(c.meta(), Some(uid)));
    children
}

/// A Job as the reconciler reads it: who controls it, whether it is going away, and its
/// status. Read from the watch as such (the spec is skipped while parsing): a `Job` value is
/// 2.6 KB before any of its strings, even without its spec.
#[derive(Clone, Debug, Deserialize)]
pub struct CachedJob {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: Option<JobStatus>,
}

impl Resource for CachedJob {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Job::kind(&())
    }

    fn group(_: &()) -> Cow<'_, str> {
        Job::group(&())
    }

    fn version(_: &()) -> Cow<'_, str> {
        Job::version(&())
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Job::plural(&())
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A child by name, with the uid it had when the cache saw it (the delete's precondition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildRef {
    pub name: String,
    pub uid: Option<String>,
}

impl ChildRef {
    pub fn new(name: &str, uid: Option<&str>) -> Self {
        Self {
            name: name.to_owned(),
            uid: uid.map(str::to_owned),
        }
    }

    pub fn of(meta: &ObjectMeta) -> Self {
        Self::new(
            meta.name.as_deref().unwrap_or_default(),
            meta.uid.as_deref(),
        )
    }
}

/// The owner reference of `child` marked as its controller (the API server allows one).
pub fn controller_ref(child: &ObjectMeta) -> Option<&OwnerReference> {
    child
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

/// True when `child` is controlled by the TaskRun with `uid`.
pub fn controlled_by(child: &ObjectMeta, uid: Option<&str>) -> bool {
    controller_ref(child).is_some_and(|o| Some(o.uid.as_str()) == uid)
}

/// Drops what the reconciler never reads from a cached TaskRun: managedFields and annotations
/// (the last-applied annotation repeats the whole spec), and the markdown contents, which are
/// most of a TaskRun and needed only to create the ConfigMap of a new version; for that the
/// reconciler reads the TaskRun from the API server (`reconcile::with_files`). Kept, they
/// would make 10,000 TaskRuns cost some 35 MB more.
pub fn trim_taskrun(tr: &mut TaskRun) {
    trim_unread(&mut tr.metadata);
    tr.metadata.owner_references = None;
    tr.spec.markdown_files = Vec::new();
}

pub fn trim_job(job: &mut CachedJob) {
    trim_child(&mut job.metadata);
}

pub fn trim_config_map(cm: &mut PartialObjectMeta<ConfigMap>) {
    trim_child(&mut cm.metadata);
}

/// A child is found by its name and judged by its controller reference and status; its
/// resourceVersion is never read. Its uid stays: a delete names it as a precondition
/// (`writes::delete_child`).
fn trim_child(meta: &mut ObjectMeta) {
    trim_unread(meta);
    meta.resource_version = None;
}

/// What no reconcile reads of any cached object.
fn trim_unread(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.annotations = None;
    meta.labels = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fixtures::{job, owner_at, taskrun};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn the_cache_keeps_no_markdown_and_no_managed_fields() {
        let mut tr = taskrun(1, None);
        tr.metadata.managed_fields = Some(vec![Default::default()]);
        trim_taskrun(&mut tr);
        assert!(tr.spec.markdown_files.is_empty());
        assert!(tr.metadata.managed_fields.is_none());
        assert_eq!(tr.spec.context_version, 1);
    }

    #[test]
    fn a_cached_child_keeps_its_name_uid_controller_and_age_only() {
        let owner = OwnerReference {
            api_version: "orchestrator.io/v1".into(),
            kind: "TaskRun".into(),
            name: "t".into(),
            uid: "owner".into(),
            controller: Some(true),
            ..Default::default()
        };
        let created = Time(Timestamp::UNIX_EPOCH);
        let mut job = CachedJob {
            metadata: ObjectMeta {
                name: Some("j".into()),
                namespace: Some("ns".into()),
                uid: Some("child".into()),
                resource_version: Some("42".into()),
                labels: Some([("a".to_owned(), "b".to_owned())].into()),
                owner_references: Some(vec![owner]),
                creation_timestamp: Some(created.clone()),
                ..Default::default()
            },
            status: None,
        };
        trim_job(&mut job);
        let m = &job.metadata;
        // The uid is the precondition of the child's delete (`writes::delete_child`).
        assert_eq!(
            (m.uid.as_deref(), m.resource_version.as_deref()),
            (Some("child"), None)
        );
        assert!(m.labels.is_none());
        assert_eq!(m.name.as_deref(), Some("j"));
        assert_eq!(m.creation_timestamp, Some(created));
        assert!(controlled_by(m, Some("owner")));
        // kube-runtime maps a child to its TaskRun by this reference: it stays whole.
        let kept = &m.owner_references.as_ref().expect("owner reference")[0];
        assert_eq!((kept.kind.as_str(), kept.name.as_str()), ("TaskRun", "t"));
    }

    #[test]
    fn an_older_versions_job_may_still_run_until_it_has_finished() {
        let may = |j: &CachedJob| may_still_run(j, "svc-1-v2");
        assert!(may(&job("svc-1-v1", None)), "unfinished");
        assert!(
            !may(&job("svc-1-v2", None)),
            "the current version's own Job"
        );
        let mut deleting = job("svc-1-v1", None);
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        assert!(
            may(&deleting),
            "deleted in the foreground, its pods stopping"
        );
        // Past its deadline, its pods stopping: the end is decided, the pods not stopped yet.
        assert!(may(&job("svc-1-v1", Some("FailureTarget"))));
        assert!(may(&job("svc-1-v1", Some("SuccessCriteriaMet"))));
        assert!(!may(&job("svc-1-v1", Some("Complete"))));
        assert!(!may(&job("svc-1-v1", Some("Failed"))));
        deleting.status = job("svc-1-v1", Some("Complete")).status;
        assert!(!may(&deleting), "finished, removed by its TTL");
    }

    /// The Job watch's events through `job_events`: the names of the Jobs deleted they bring,
    /// and the Jobs of the TaskRun "u" deleted here and still waited for after them.
    async fn through_job_events(
        events: Vec<Event<CachedJob>>,
        jobs: &Store<CachedJob>,
        superseded: &Arc<Superseded>,
    ) -> (Vec<String>, Vec<String>) {
        let departed = Arc::new(Departed::new(std::time::Duration::from_secs(300)));
        let events = futures::stream::iter(events.into_iter().map(Ok::<_, ()>));
        let out = job_events(
            events,
            jobs.clone(),
            owner_at(2, false),
            departed,
            superseded.clone(),
        );
        let gone = out
            .try_filter_map(|e| async move {
                Ok(match e {
                    Event::Delete(job) => job.metadata.name,
                    _ => None,
                })
            })
            .try_collect::<Vec<_>>()
            .await
            .unwrap_or_default();
        let waited = superseded
            .deleted_of("u")
            .into_iter()
            .map(|c| c.name)
            .collect();
        (gone, waited)
    }

    #[tokio::test]
    async fn a_job_deleted_here_is_waited_for_until_its_own_watch_reports_it_gone() {
        let (jobs, mut writer) = kube::runtime::reflector::store();
        let old = job("svc-1-v1", None);
        writer.apply_watcher_event(&Event::Apply(old.clone()));
        let superseded = Arc::new(Superseded::default());
        superseded.deleted("u", "svc-1-v1", "uid-svc-1-v1");
        // A re-list that leaves it out (an API server whose cache lags behind it, say): its
        // TaskRun hears of it, and its next version still waits for it.
        let relist = vec![
            Event::Init,
            Event::InitApply(job("svc-1-v2", None)),
            Event::InitDone,
        ];
        let (gone, waited) = through_job_events(relist, &jobs, &superseded).await;
        assert_eq!(gone, ["svc-1-v1"]);
        assert_eq!(waited, ["svc-1-v1"]);
        // Its delete, as the watch reports it: waited for no longer.
        let (gone, waited) = through_job_events(vec![Event::Delete(old)], &jobs, &superseded).await;
        assert_eq!(gone, ["svc-1-v1"]);
        assert!(waited.is_empty());
    }
}
