//! The in-memory index the duplicate rule reads: task identity -> the TaskRuns holding it.
//! A kube-runtime watcher keeps it current; a lookup is a hash-map read under a read lock, with
//! no API call. Only what the duplicate rule reads is stored (name, uid, creation time, whether
//! it is being deleted and whether it has run; not specs or files): the release binary serves
//! 10,000 TaskRuns in about 25 MiB RSS, all of it included (docs/benchmarks.md).
//!
//! The index lags the API server by a watch event: a create this replica allowed counts as a
//! holder until the watch shows it (`admitted`), so of two creates of one identity at once
//! only the first passes here. Two answered by different replicas can both pass;
//! deterministic Job names make the API server refuse the second Job of a version, and the
//! controller's duplicate rule holds back one of another version (DESIGN 3).
//!
//! It fails closed while it may be stale. [`Index::is_synced`] (which gates creates on /validate
//! with a 503; /readyz follows [`Index::is_ready`]) is false from the start of every list until
//! that list has been indexed in full, and from the moment the watch reports an error (the API
//! server gone, a dropped connection, a 410 Gone). After an error the stream is dropped and, after
//! a jittered exponential delay (`relist_delay`: 100-200 ms, doubling per consecutive failure, at
//! most 2.5-5 s), a fresh watcher lists every TaskRun again (a most-recent read, not the API
//! server's cache); the index is synced again at that list's `InitDone`. kube-runtime's own retry
//! would resume the watch from its last resourceVersion without a list and emit nothing until
//! something changed, so nothing would tell when it had caught up; creates the API server accepted
//! while the watch was away would be unknown to the duplicate rule. Each failure is logged once
//! (warn) and counted in `taskrun_webhook_index_watch_failures_total`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures::{Stream, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::Deserialize;
use taskrun::{Existing, Identity, Phase, TaskRun, find_duplicate};
use tokio::time::Instant;

use crate::admitted::Admitted;
use crate::metrics::Metrics;

#[derive(Default)]
pub struct Index {
    inner: RwLock<Inner>,
    /// Creates allowed here that the watch has not shown yet. Locked before `inner` when both
    /// are (`holder_for_create`); the watch's updates never take it while they hold `inner`.
    admitted: Mutex<Admitted>,
    synced: AtomicBool,
    /// Since when a watch failure has kept the index, synced before, from being so again;
    /// cleared when a list completes. None before the first list.
    lost_at: Mutex<Option<Instant>>,
}

/// How long a webhook whose index lost its watch stays ready while it lists again. Every
/// replica's watch fails together when the API server restarts: unready at once, they would
/// all leave the Service, and updates (which never wait for the index) would fail with no
/// endpoints along with creates. A relist that takes longer, or a watch that keeps failing
/// on one replica, takes that pod out so the others get its creates.
pub const READY_WHILE_RELISTING: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Inner {
    live: Holders,
    /// Built during a (re-)list, swapped in when it completes.
    relist: Option<Holders>,
}

#[derive(Default)]
struct Holders {
    by_identity: HashMap<Identity, Vec<Holder>>,
    len: usize,
}

struct Holder {
    name: Box<str>,
    terminating: bool,
    has_run: bool,
    created: Option<i64>,
    uid: Box<str>,
}

/// The index is not in step with the API server (`Index::is_synced`).
#[derive(Debug)]
pub struct NotSynced;

/// Who holds an identity against a create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeldBy {
    /// A live TaskRun the index holds.
    Stored(String),
    /// A create of that name this replica allowed a moment ago, which the watch has not shown.
    JustAllowed(String),
}

/// What the index needs of one TaskRun: its identity and name, whether it is being deleted,
/// and, to name the one that runs when several hold an identity, whether it has run, when it
/// was created and its uid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub identity: Identity,
    pub name: String,
    pub terminating: bool,
    pub has_run: bool,
    pub created: Option<i64>,
    pub uid: String,
}

impl Holders {
    fn upsert(&mut self, e: Entry) {
        let list = self.by_identity.entry(e.identity).or_default();
        let holder = Holder {
            name: e.name.into(),
            terminating: e.terminating,
            has_run: e.has_run,
            created: e.created,
            uid: e.uid.into(),
        };
        match list.iter_mut().find(|h| h.name == holder.name) {
            Some(h) => *h = holder,
            None => {
                list.push(holder);
                self.len += 1;
            }
        }
    }

    fn remove(&mut self, e: &Entry) {
        if let Some(list) = self.by_identity.get_mut(&e.identity) {
            let before = list.len();
            list.retain(|h| *h.name != *e.name);
            self.len -= before - list.len();
            if list.is_empty() {
                self.by_identity.remove(&e.identity);
            }
        }
    }
}

impl Index {
    /// The name of a live TaskRun other than `name` that holds `identity`, if any.
    pub fn duplicate_of(&self, identity: &Identity, name: &str) -> Option<String> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let holders = inner.live.by_identity.get(identity)?;
        find_duplicate(
            name,
            holders.iter().map(|h| Existing {
                name: &h.name,
                terminating: h.terminating,
                has_run: h.has_run,
                created: h.created,
                uid: &h.uid,
            }),
        )
        .map(str::to_owned)
    }

    /// Who holds `identity` against a create of `name`: a live TaskRun other than it, or a
    /// create of another name allowed here a moment ago that the watch has not shown yet. With
    /// `claim` (the create is about to be allowed, and is not a dry run) and neither, `name` is
    /// noted as allowed. The note's lock is held across both looks, and the watch ends a note
    /// only once it has indexed the TaskRun, so a create looked at meanwhile finds the other
    /// in one of the two. `NotSynced` while the index cannot be trusted.
    pub fn holder_for_create(
        &self,
        identity: &Identity,
        name: &str,
        claim: bool,
    ) -> Result<Option<HeldBy>, NotSynced> {
        let now = std::time::Instant::now();
        let mut admitted = self.admitted.lock().unwrap_or_else(PoisonError::into_inner);
        // Asked under the note's lock: a re-list that has begun ends the notes of TaskRuns its
        // list brought before they are indexed.
        if !self.is_synced() {
            return Err(NotSynced);
        }
        if let Some(stored) = self.duplicate_of(identity, name) {
            return Ok(Some(HeldBy::Stored(stored)));
        }
        Ok(admitted
            .held_by_another(identity, name, claim, now)
            .map(HeldBy::JustAllowed))
    }

    /// True once a full list has been indexed and no watch error came after it: only then
    /// can a missing identity be trusted to be free.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// For /readyz: synced, or synced before and listing again for less than
    /// [`READY_WHILE_RELISTING`]. Creates still wait for [`is_synced`](Self::is_synced).
    pub fn is_ready(&self) -> bool {
        if self.is_synced() {
            return true;
        }
        let lost_at = *self.lost_at.lock().unwrap_or_else(PoisonError::into_inner);
        lost_at.is_some_and(|t| t.elapsed() < READY_WHILE_RELISTING)
    }

    /// TaskRuns indexed.
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .live
            .len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn apply(&self, e: Entry) {
        let noted = self.noted(&e);
        self.write_lock().live.upsert(e);
        self.seen(noted);
    }

    /// A delete ends no note: a create noted under the name of a TaskRun just deleted (deleted
    /// and made again, as `kubectl replace --force` and GitOps replaces do) is the new one, which
    /// the watch shows only after the old one's delete.
    pub fn delete(&self, e: &Entry) {
        self.write_lock().live.remove(e);
    }

    /// A (re-)list begins: not synced until its [`init_done`](Self::init_done).
    pub fn init(&self) {
        self.synced.store(false, Ordering::Release);
        self.write_lock().relist = Some(Holders::default());
    }

    pub fn init_apply(&self, e: Entry) {
        let noted = self.noted(&e);
        if let Some(relist) = self.write_lock().relist.as_mut() {
            relist.upsert(e);
        }
        self.seen(noted);
    }

    /// The identity and name of `e` when a create of it is noted as allowed (`holder_for_create`).
    fn noted(&self, e: &Entry) -> Option<(Identity, String)> {
        let admitted = self.admitted.lock().unwrap_or_else(PoisonError::into_inner);
        admitted
            .is_noted(&e.identity, &e.name)
            .then(|| (e.identity.clone(), e.name.clone()))
    }

    /// The watch has indexed a TaskRun whose create was noted: the index holds it now.
    fn seen(&self, noted: Option<(Identity, String)>) {
        if let Some((identity, name)) = noted {
            self.admitted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .seen(&identity, &name);
        }
    }

    pub fn init_done(&self) {
        let mut inner = self.write_lock();
        let replaced = inner
            .relist
            .take()
            .map(|relist| std::mem::replace(&mut inner.live, relist));
        drop(inner);
        // Freed after the lock is released: up to 100,000 entries, while lookups wait.
        drop(replaced);
        *self.lost_at.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.synced.store(true, Ordering::Release);
    }

    /// The watch failed: creates may now go unseen, so the index is not synced until a new
    /// list completes. A half-built list is dropped; the live contents stay (unread by
    /// /validate until then) and are replaced at the next `InitDone`.
    pub fn watch_failed(&self) {
        // Only a loss of sync starts the clock: not a failure before the first list, nor a
        // second one before the next list completes.
        if self.synced.load(Ordering::Acquire) {
            *self.lost_at.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        }
        self.synced.store(false, Ordering::Release);
        self.write_lock().relist = None;
    }

    fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// First delay before listing again after a watch failure; doubles per consecutive failure.
const RELIST_DELAY_MIN: Duration = Duration::from_millis(200);
/// The most the delay grows to (before jitter).
const RELIST_DELAY_MAX: Duration = Duration::from_secs(5);
/// A watch that stayed up this long after its list resets the count of consecutive failures,
/// so a one-off failure is retried quickly but a watch that keeps breaking is not re-listed
/// in a tight loop.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Keeps `index` in step with the TaskRuns of every namespace, forever: after each watch
/// failure a fresh watcher lists them all again (see the module documentation).
pub async fn run(client: Client, index: &Index, metrics: &Metrics) {
    let api: Api<SlimTaskRun> = Api::all(client);
    let config = watcher::Config::default()
        .page_size(taskrun::client::LIST_PAGE_SIZE)
        .timeout(taskrun::client::WATCH_TIMEOUT_SECS);
    follow(index, metrics, || watcher(api.clone(), config.clone())).await
}

/// [`run`] with the watcher as a parameter: `connect` starts a fresh one, from a full list.
async fn follow<S>(index: &Index, metrics: &Metrics, mut connect: impl FnMut() -> S)
where
    S: Stream<Item = watcher::Result<watcher::Event<SlimTaskRun>>>,
{
    let mut failures = 0u32;
    let mut lost_at: Option<Instant> = None;
    loop {
        // The stream (and its connection) is dropped on return, before the delay.
        let (error, synced_at) = index_until_failure(index, metrics, connect(), &mut lost_at).await;
        index.watch_failed();
        metrics.index_watch_failures.inc();
        lost_at.get_or_insert_with(Instant::now);
        let stable = synced_at.is_some_and(|t| t.elapsed() >= STABLE_AFTER);
        failures = if stable {
            1
        } else {
            failures.saturating_add(1)
        };
        let delay = relist_delay(failures, jitter());
        tracing::warn!(
            %error, attempt = failures, retry_in = ?delay,
            "TaskRun watch failed; refusing validation until the index is listed again"
        );
        tokio::time::sleep(delay).await;
    }
}

/// Applies one watcher's events until it fails; returns the error and when its list was
/// indexed, if it got that far.
async fn index_until_failure<S>(
    index: &Index,
    metrics: &Metrics,
    stream: S,
    lost_at: &mut Option<Instant>,
) -> (String, Option<Instant>)
where
    S: Stream<Item = watcher::Result<watcher::Event<SlimTaskRun>>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut synced_at = None;
    loop {
        match stream.try_next().await {
            Ok(Some(event)) => {
                let done = matches!(event, watcher::Event::InitDone);
                apply_event(index, event);
                metrics.index_size.set(index.len() as i64);
                if done {
                    synced_at = Some(Instant::now());
                    match lost_at.take() {
                        None => tracing::info!(taskruns = index.len(), "TaskRun index synced"),
                        Some(t) => tracing::info!(
                            taskruns = index.len(), unsynced_for = ?t.elapsed(),
                            "TaskRun index synced again; validating"
                        ),
                    }
                }
            }
            // A watcher never ends; should one, it is treated like a failure.
            Ok(None) => return ("the watch stream ended".to_owned(), synced_at),
            Err(e) => return (e.to_string(), synced_at),
        }
    }
}

/// The wait before the list after the `failures`-th consecutive watch failure (from 1):
/// [`RELIST_DELAY_MIN`] doubled per failure up to [`RELIST_DELAY_MAX`], then scaled by
/// `jitter` in [0, 1) to between half and all of that, so that replicas do not list in step.
fn relist_delay(failures: u32, jitter: f64) -> Duration {
    let nominal = taskrun::client::retry_delay(failures, RELIST_DELAY_MIN, RELIST_DELAY_MAX);
    nominal.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A number in [0, 1) from the process's random hasher keys (no RNG dependency for this).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    (RandomState::new().hash_one(0u8) >> 11) as f64 / (1u64 << 53) as f64
}

fn apply_event(index: &Index, event: watcher::Event<SlimTaskRun>) {
    use watcher::Event;
    match event {
        Event::Init => index.init(),
        Event::InitApply(o) => o.entry().into_iter().for_each(|e| index.init_apply(e)),
        Event::InitDone => index.init_done(),
        Event::Apply(o) => o.entry().into_iter().for_each(|e| index.apply(e)),
        Event::Delete(o) => o.entry().iter().for_each(|e| index.delete(e)),
    }
}

/// A TaskRun as the watcher decodes it: only the fields the index needs are kept (serde skips
/// the rest, markdown contents and managed fields included, without allocating them).
#[derive(Clone, Debug, Deserialize)]
pub struct SlimTaskRun {
    #[serde(deserialize_with = "slim_meta")]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<SlimSpec>,
    #[serde(default)]
    status: Option<SlimStatus>,
}

/// Only what says whether the TaskRun has run (`taskrun::has_run`): whether the status names
/// a Job, the versions it counts, and whether its phase is final.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct SlimStatus {
    #[serde(deserialize_with = "present")]
    job_name: bool,
    #[serde(deserialize_with = "lenient")]
    attempts: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    phase: Option<Phase>,
}

impl SlimStatus {
    fn has_run(self) -> bool {
        taskrun::has_run(
            self.job_name,
            self.attempts,
            self.phase.is_some_and(Phase::is_final),
        )
    }
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<serde::de::IgnoredAny>::deserialize(d)?.is_some())
}

/// The value, or None for one of another shape: one odd object must not fail the whole list.
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Read<T> {
        Value(T),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Option::<Read<T>>::deserialize(d)? {
        Some(Read::Value(v)) => Some(v),
        Some(Read::Other(_)) | None => None,
    })
}

// Defaults: one odd object must not fail the whole list (the schema requires both anyway).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct SlimSpec {
    task_id: i64,
    service_name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
}

fn slim_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = SlimMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        creation_timestamp: m.creation_timestamp,
        deletion_timestamp: m.deletion_timestamp,
        ..ObjectMeta::default()
    })
}

impl SlimTaskRun {
    fn entry(&self) -> Option<Entry> {
        let spec = self.spec.as_ref()?;
        Some(Entry {
            identity: Identity::new(
                self.metadata.namespace.as_deref()?,
                &spec.service_name,
                spec.task_id,
            ),
            name: self.metadata.name.clone()?,
            terminating: self.metadata.deletion_timestamp.is_some(),
            has_run: self.status.is_some_and(SlimStatus::has_run),
            created: self
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
            uid: self.metadata.uid.clone().unwrap_or_default(),
        })
    }
}

impl Resource for SlimTaskRun {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        TaskRun::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        TaskRun::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        TaskRun::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        TaskRun::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;

    fn entry(ns: &str, name: &str, task: i64, terminating: bool) -> Entry {
        Entry {
            identity: Identity::new(ns, "billing", task),
            name: name.into(),
            terminating,
            has_run: false,
            created: None,
            uid: String::new(),
        }
    }

    fn id(ns: &str, task: i64) -> Identity {
        Identity::new(ns, "billing", task)
    }

    #[test]
    fn a_second_name_for_an_identity_is_a_duplicate() {
        let index = Index::default();
        index.apply(entry("a", "first", 1, false));
        assert_eq!(
            index.duplicate_of(&id("a", 1), "second").as_deref(),
            Some("first")
        );
        assert_eq!(index.duplicate_of(&id("a", 1), "first"), None);
        assert_eq!(index.duplicate_of(&id("b", 1), "second"), None);
        assert_eq!(index.duplicate_of(&id("a", 2), "second"), None);
    }

    #[test]
    fn of_two_holders_the_one_that_runs_is_named() {
        // Two creates raced past the index; the controller runs the first created ("zz-first")
        // and fails the other as a duplicate. A third is told to add context to the first.
        let index = Index::default();
        let created = |name: &str, at: i64, uid: &str| Entry {
            created: Some(at),
            uid: uid.into(),
            ..entry("a", name, 1, false)
        };
        index.apply(created("aa-second", 101, "u1"));
        index.apply(created("zz-first", 100, "u2"));
        assert_eq!(
            index.duplicate_of(&id("a", 1), "third").as_deref(),
            Some("zz-first")
        );
        // Its status naming a Job (a watch event) settles it whatever the times say.
        index.apply(Entry {
            has_run: true,
            ..created("aa-second", 101, "u1")
        });
        assert_eq!(
            index.duplicate_of(&id("a", 1), "third").as_deref(),
            Some("aa-second")
        );
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn terminating_and_deleted_holders_free_the_identity() {
        let index = Index::default();
        index.apply(entry("a", "first", 1, false));
        index.apply(entry("a", "first", 1, true));
        assert_eq!(index.len(), 1);
        assert_eq!(index.duplicate_of(&id("a", 1), "second"), None);
        index.delete(&entry("a", "first", 1, true));
        assert_eq!(index.len(), 0);
        assert_eq!(index.duplicate_of(&id("a", 1), "second"), None);
    }

    #[test]
    fn a_create_allowed_holds_its_identity_and_a_relist_begun_makes_creates_wait() {
        let index = Index::default();
        index.init();
        index.init_done();
        let held = |name: &str| index.holder_for_create(&id("a", 1), name, true).ok();
        assert_eq!(held("first"), Some(None));
        assert_eq!(
            held("second"),
            Some(Some(HeldBy::JustAllowed("first".into())))
        );
        // A re-list brings "first" (ending its note) before it is indexed: creates wait.
        index.init();
        index.init_apply(entry("a", "first", 1, false));
        assert_eq!(held("second"), None, "answered while the index lacks first");
        index.init_done();
        assert_eq!(held("second"), Some(Some(HeldBy::Stored("first".into()))));
    }

    #[test]
    fn the_delete_of_a_taskrun_made_again_under_its_name_leaves_the_new_create_noted() {
        let index = Index::default();
        index.init();
        index.init_apply(entry("a", "x", 1, false));
        index.init_done();
        let held = |name: &str| index.holder_for_create(&id("a", 1), name, true).ok();
        // x is deleted and created again: the create is allowed before the delete is seen.
        assert_eq!(held("x"), Some(None), "no duplicate of itself");
        index.delete(&entry("a", "x", 1, false));
        assert_eq!(
            held("y"),
            Some(Some(HeldBy::JustAllowed("x".into()))),
            "the new x is not indexed yet, and is still noted"
        );
        index.apply(entry("a", "x", 1, false));
        assert_eq!(held("y"), Some(Some(HeldBy::Stored("x".into()))));
    }

    #[test]
    fn a_relist_replaces_the_contents_when_done() {
        let index = Index::default();
        index.init();
        index.init_apply(entry("a", "first", 1, false));
        assert!(!index.is_synced());
        assert_eq!(index.len(), 0, "not visible before InitDone");
        index.init_done();
        assert!(index.is_synced());
        assert_eq!(index.len(), 1);
        // A later re-list that no longer sees `first` drops it.
        index.init();
        index.init_apply(entry("a", "other", 2, false));
        assert_eq!(
            index.duplicate_of(&id("a", 1), "x").as_deref(),
            Some("first")
        );
        index.init_done();
        assert_eq!(index.duplicate_of(&id("a", 1), "x"), None);
        assert_eq!(index.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn ready_while_listing_again_for_a_while_but_not_before_the_first_list() {
        let index = Index::default();
        index.init();
        assert!(!index.is_ready(), "not before the first list");
        index.watch_failed();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            !index.is_ready(),
            "a failure before any list is not a relist"
        );
        index.init();
        index.init_done();
        assert!(index.is_ready());

        index.watch_failed();
        index.init();
        assert!(!index.is_synced());
        assert!(index.is_ready(), "listing again after a watch failure");
        tokio::time::advance(READY_WHILE_RELISTING - Duration::from_millis(1)).await;
        index.watch_failed(); // a second failure does not restart the clock
        assert!(index.is_ready());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!index.is_ready(), "unsynced for {READY_WHILE_RELISTING:?}");
        index.init();
        index.init_done();
        assert!(index.is_ready());
        index.watch_failed();
        assert!(index.is_ready(), "a new loss starts a new while");
    }

    #[test]
    fn a_watch_failure_unsyncs_the_index_until_a_new_list_is_done() {
        let index = Index::default();
        assert!(!index.is_synced(), "not before the first list");
        index.init();
        index.init_apply(entry("a", "first", 1, false));
        index.init_done();
        assert!(index.is_synced());

        index.watch_failed();
        assert!(!index.is_synced(), "a failed watch may have missed creates");
        // Watch events alone (a resumed watch) do not make it trustworthy again...
        index.apply(entry("a", "second", 2, false));
        assert!(!index.is_synced());
        // ...nor a list still under way, nor one cut short by another failure...
        index.init();
        index.init_apply(entry("a", "lost", 3, false));
        index.watch_failed();
        index.init();
        index.init_apply(entry("a", "first", 1, false));
        index.init_apply(entry("a", "second", 2, false));
        assert!(!index.is_synced());
        // ...only a list indexed in full.
        index.init_done();
        assert!(index.is_synced());
        assert_eq!(index.len(), 2);
        assert_eq!(index.duplicate_of(&id("a", 3), "x"), None);
        assert_eq!(
            index.duplicate_of(&id("a", 2), "x").as_deref(),
            Some("second")
        );
    }

    #[test]
    fn relists_back_off_from_100_200_ms_to_at_most_5_s_with_jitter() {
        let ms = |failures, jitter| relist_delay(failures, jitter).as_millis();
        assert_eq!((ms(1, 0.0), ms(1, 0.999_999)), (100, 199));
        assert_eq!((ms(2, 0.0), ms(3, 0.0), ms(4, 0.0)), (200, 400, 800));
        assert_eq!((ms(6, 0.0), ms(6, 0.999_999)), (2500, 4999));
        assert_eq!((ms(1000, 0.0), ms(u32::MAX, 1.0)), (2500, 5000));
        assert_eq!(ms(0, 0.0), 100, "0 is treated as the first failure");
        let draws: Vec<f64> = (0..64).map(|_| jitter()).collect();
        assert!(draws.iter().all(|j| (0.0..1.0).contains(j)), "{draws:?}");
        assert!(draws.iter().any(|j| *j != draws[0]), "no jitter: {draws:?}");
    }

    fn slim(ns: &str, name: &str, task: i64) -> SlimTaskRun {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"taskId": task, "serviceName": "billing"}
        }))
        .expect("decodes")
    }

    /// The watch loop against scripted watchers: an error drops the watcher, the index is
    /// refused until a fresh one has listed everything, and the retry waits its backoff.
    #[tokio::test(start_paused = true)]
    async fn after_a_watch_error_only_a_fresh_list_syncs_the_index() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicUsize;
        use tokio::sync::mpsc::unbounded_channel;
        use watcher::Event;

        let (index, metrics) = (Arc::new(Index::default()), Arc::new(Metrics::default()));
        let (first_tx, first_rx) = unbounded_channel();
        let (second_tx, second_rx) = unbounded_channel();
        let mut watchers = std::collections::VecDeque::from([first_rx, second_rx]);
        let connects = Arc::new(AtomicUsize::new(0));
        let connect = {
            let connects = connects.clone();
            move || {
                connects.fetch_add(1, Ordering::SeqCst);
                let mut rx = watchers.pop_front().expect("no third watcher");
                futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
            }
        };
        let follower = tokio::spawn({
            let (index, metrics) = (index.clone(), metrics.clone());
            async move { follow(&index, &metrics, connect).await }
        });
        // Lets the follower take what was sent (paused time: no real waiting).
        let settle = || tokio::time::sleep(Duration::from_millis(1));
        let failures = || metrics.index_watch_failures.get();

        for e in [
            Event::Init,
            Event::InitApply(slim("a", "first", 1)),
            Event::InitDone,
        ] {
            first_tx.send(Ok(e)).expect("first watcher");
        }
        settle().await;
        assert!(index.is_synced());
        assert_eq!((index.len(), failures()), (1, 0));

        first_tx
            .send(Err(watcher::Error::NoResourceVersion))
            .expect("first watcher");
        settle().await;
        assert!(!index.is_synced(), "synced right after a watch error");
        assert_eq!(failures(), 1);
        assert!(first_tx.is_closed(), "the failed watcher is dropped");
        assert_eq!(
            connects.load(Ordering::SeqCst),
            1,
            "retried before the backoff"
        );

        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            connects.load(Ordering::SeqCst),
            2,
            "no new watcher after the backoff"
        );
        for e in [
            Event::Init,
            Event::InitApply(slim("a", "first", 1)),
            Event::InitApply(slim("a", "made-meanwhile", 2)),
        ] {
            second_tx.send(Ok(e)).expect("second watcher");
        }
        settle().await;
        assert!(!index.is_synced(), "synced before the list was done");
        second_tx.send(Ok(Event::InitDone)).expect("second watcher");
        settle().await;
        assert!(index.is_synced());
        assert_eq!(index.len(), 2);
        assert_eq!(
            index.duplicate_of(&id("a", 2), "dup").as_deref(),
            Some("made-meanwhile")
        );
        assert!(!follower.is_finished());
        follower.abort();
    }

    #[test]
    fn the_watcher_decodes_only_what_it_needs() {
        let o: SlimTaskRun = serde_json::from_value(serde_json::json!({
            "apiVersion": "orchestrator.io/v1", "kind": "TaskRun",
            "metadata": {"name": "t", "namespace": "ns", "resourceVersion": "5", "uid": "u-1",
                         "creationTimestamp": "2025-12-31T23:59:00Z",
                         "deletionTimestamp": "2026-01-01T00:00:00Z",
                         "annotations": {"big": "x"}, "managedFields": []},
            "spec": {"taskId": 7, "serviceName": "billing",
                     "markdownFiles": [{"filename": "a.md", "content": "text"}]},
            "status": {"phase": "Running", "jobName": "billing-7-v1"}
        }))
        .expect("decodes");
        assert_eq!(o.resource_version().as_deref(), Some("5"));
        assert!(o.metadata.annotations.is_none());
        assert_eq!(
            o.entry(),
            Some(Entry {
                identity: Identity::new("ns", "billing", 7),
                name: "t".into(),
                terminating: true,
                has_run: true,
                created: Some(1_767_225_540),
                uid: "u-1".into(),
            })
        );
        let not_run: SlimTaskRun = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "t", "namespace": "ns"},
            "spec": {"taskId": 7, "serviceName": "billing"},
            "status": {"phase": "Pending"}
        }))
        .expect("decodes");
        assert_eq!(
            not_run.entry().map(|e| (e.has_run, e.created)),
            Some((false, None))
        );
        // A raised version waiting for its Job: no Job named, one version run; not once that
        // version ended unrun.
        let has_run = |status: serde_json::Value| {
            let o: SlimTaskRun = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "t", "namespace": "ns"},
                "spec": {"taskId": 7, "serviceName": "billing"},
                "status": status
            }))
            .expect("decodes");
            o.entry().map(|e| e.has_run)
        };
        assert_eq!(
            has_run(serde_json::json!({"attempts": 1, "phase": "Pending"})),
            Some(true)
        );
        assert_eq!(has_run(serde_json::json!({"attempts": 0})), Some(false));
        assert_eq!(
            has_run(serde_json::json!({"attempts": 1, "phase": "Failed"})),
            Some(false)
        );
        // Odd shapes read as absent.
        assert_eq!(
            has_run(serde_json::json!({"attempts": "1", "phase": 3})),
            Some(false)
        );
        assert_eq!(
            has_run(serde_json::json!({"attempts": 1, "phase": "Odd"})),
            Some(true)
        );
        let no_spec: SlimTaskRun =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "t"}}))
                .expect("decodes");
        assert_eq!(no_spec.entry(), None);
    }
}
