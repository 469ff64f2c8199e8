//! What the controller keeps in memory of TaskRuns and their children, and how little.
//!
//! Reconciles read children from these caches instead of asking the API server, so a reconcile
//! that finds everything in place makes no API call at all. The caches are only read; nothing
//! trimmed here is ever written back.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use serde::Deserialize;
use taskrun::{TaskRun, TaskRunStatus};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{job, status};

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

    /// The Job by that name of the TaskRun `uid` is deleted (or gone).
    pub fn stopped(&self, uid: &str, name: &str) {
        self.superseded.forget(uid, Some(name));
    }

    /// The TaskRun `uid` is gone: nothing of it is to be stopped any more.
    pub fn forget_superseded(&self, uid: &str) {
        self.superseded.forget(uid, None);
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
        && !status::job_outcome(name, job.status.as_ref())
            .phase
            .is_final()
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

    /// Whether the status last written for `uid`, which the cache does not show yet, names a
    /// Job.
    pub fn names_a_job(&self, uid: &str) -> bool {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(uid).is_some_and(|s| s.job_name.is_some())
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

/// Unfinished Jobs of a version older than their TaskRun's, by the TaskRun's uid, as the Job
/// watch brings them. The reconcile stops the older Jobs it finds in the cache until the
/// status records the new version; a Job that reaches the cache only after that (its status
/// write lost, then contextVersion raised and reconciled before the watch brought the Job)
/// would otherwise run on beside the new version. The TaskRun's reconcile stops each one here
/// and forgets it.
pub struct Superseded {
    jobs: Mutex<HashMap<String, BTreeMap<String, Option<String>>>>,
    swept: Once,
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
        if !runs_another_version(job, &job::child_names(&tr).0) {
            return;
        }
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(uid.to_owned())
            .or_default()
            .insert(name.to_owned(), job.metadata.uid.clone());
    }

    /// Notes every cached Job `record` would, once per term (the first time it is called):
    /// the Jobs listed when a term starts may come before the TaskRuns are cached, and are
    /// noted by nobody else.
    fn sweep_once(&self, jobs: &Store<CachedJob>, taskruns: &Store<TaskRun>) {
        self.swept.call_once(|| {
            for job in jobs.state() {
                self.record(&job, taskruns);
            }
        });
    }

    fn of(&self, uid: &str) -> Vec<ChildRef> {
        let map = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(uid)
            .into_iter()
            .flatten()
            .map(|(name, uid)| ChildRef::new(name, uid.as_deref()))
            .collect()
    }

    /// Forgets one Job of the TaskRun `uid`, or all of them.
    fn forget(&self, uid: &str, name: Option<&str>) {
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
    jobs: HashMap<(String, String), Arc<CachedJob>>,
    /// Keys in the order they came, for expiry.
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
        let finished = status::job_outcome(&name, job.status.as_ref())
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
            let key = key.clone();
            e.jobs.remove(&key);
            e.order.pop_front();
        }
        let key = (ns, name);
        e.order.push_back((now, key.clone()));
        e.jobs.insert(key, Arc::new(job.clone()));
    }

    /// The last state of a finished Job deleted a moment ago. It is kept until the status
    /// built from it is written (`forget`), or expires: a reconcile whose status write fails
    /// must find it again, or the retry would take the Job for lost.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<CachedJob>> {
        let e = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        e.jobs
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    pub fn forget(&self, namespace: &str, name: &str) {
        let mut e = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        e.jobs.remove(&(namespace.to_owned(), name.to_owned()));
    }
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use k8s_openapi::jiff::Timestamp;
    use taskrun::{MarkdownFile, TaskRunSpec};

    fn taskrun(version: i64, status: Option<TaskRunStatus>) -> TaskRun {
        let mut tr = TaskRun::new(
            "t",
            TaskRunSpec {
                task_id: 1,
                service_name: "svc".into(),
                agent_name: None,
                context_version: version,
                markdown_files: vec![MarkdownFile {
                    filename: "a.md".into(),
                    content: "# a".into(),
                    file_type: None,
                }],
            },
        );
        tr.status = status;
        tr
    }

    fn recorded(version: i64) -> TaskRunStatus {
        TaskRunStatus {
            observed_context_version: Some(version),
            config_map_name: Some("cm".into()),
            ..Default::default()
        }
    }

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

    fn job(name: &str, condition: Option<&str>) -> CachedJob {
        CachedJob {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{name}")),
                owner_references: Some(vec![OwnerReference {
                    controller: Some(true),
                    name: "owner".into(),
                    uid: "u".into(),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            status: Some(JobStatus {
                conditions: condition.map(|c| {
                    vec![k8s_openapi::api::batch::v1::JobCondition {
                        type_: c.into(),
                        status: "True".into(),
                        ..Default::default()
                    }]
                }),
                ..JobStatus::default()
            }),
        }
    }

    /// A TaskRun cache holding the Jobs' owner, live or being deleted.
    fn owners(deleting: bool) -> Store<TaskRun> {
        owner_at(1, deleting)
    }

    /// A TaskRun cache holding the Jobs' owner at `version`.
    fn owner_at(version: i64, deleting: bool) -> Store<TaskRun> {
        let (store, mut writer) = kube::runtime::reflector::store();
        let mut owner = taskrun(version, None);
        owner.metadata.name = Some("owner".into());
        owner.metadata.namespace = Some("ns".into());
        owner.metadata.uid = Some("u".into());
        if deleting {
            owner.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(1).expect("t")));
        }
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(owner));
        store
    }

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
}
