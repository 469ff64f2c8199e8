//! One reconcile of one TaskRun: finalizer, children of the current version, status. What
//! to build and what the status says are pure functions elsewhere (`job`, `status`); the
//! parts of a reconcile with a job of their own are the submodules: who holds a child's name
//! (`claim`), older versions (`superseded`), deletion (`finalizer`) and Events (`events`).

mod claim;
mod events;
mod finalizer;
mod superseded;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, GetParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use taskrun::{Existing, FINALIZER, Phase, TaskRun, TaskRunStatus, find_duplicate};

use self::claim::{Claim, claim, judge};
use self::events::record;
use self::finalizer::{Written, cleanup, set_finalizer};
use self::superseded::{NotStopped, drop_superseded_config_map, stop_superseded};
use crate::controller::Ctx;
use crate::status::{self, Observed, Outcome, now};
use crate::{cache, job, writes};

pub const FIELD_MANAGER: &str = "taskrun-controller";
/// How another TaskRun holds what this one needs, in a Duplicate message.
const OWNS_CONFIG_MAP: &str = "it owns the ConfigMap of this version";
const OWNS_JOB: &str = "it owns the Job of this version";
const HOLDS_FIRST: &str = "it has run a version, or was created first";
/// How soon to look again when what was read changed under the reconcile (a name held by a
/// TaskRun that is going away waits longer and longer: `status::wait_again`).
const LOOK_AGAIN: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("TaskRun has no {0}")]
    MissingField(&'static str),
}

impl Error {
    /// True when the API server gave no answer at all (connection refused or reset, a
    /// timeout): it may be away, and the reconcile is retried once it answers (outage.rs).
    pub fn unreachable(&self) -> bool {
        matches!(
            self,
            Error::Kube(kube::Error::HyperError(_) | kube::Error::Service(_))
        )
    }
}

pub async fn reconcile(tr: Arc<TaskRun>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_taskrun(&tr, &ctx).await;
    ctx.base
        .shared
        .metrics
        .observe(started.elapsed(), result.is_err());
    if result.is_ok()
        && let Ok(mut failures) = ctx.failures.lock()
    {
        failures.remove(&ObjectRef::from_obj(&*tr));
    }
    result
}

/// Per-object exponential backoff: the count of consecutive failures is kept per object and
/// cleared by the next success (in `reconcile`), each delay shortened by up to a tenth at
/// random (never past `--backoff-max-seconds`), so that TaskRuns that failed together (a
/// throttled burst) are not retried together. A failure for want of an answer from the API server is noted as such, so that
/// the object is retried as soon as it answers (outage.rs).
pub fn error_policy(tr: Arc<TaskRun>, error: &Error, ctx: Arc<Ctx>) -> Action {
    let failures = match ctx.failures.lock() {
        Ok(mut map) => {
            let f = map.entry(ObjectRef::from_obj(&*tr)).or_default();
            f.count = f.count.saturating_add(1);
            f.unreachable = error.unreachable();
            f.count
        }
        Err(_) => 1,
    };
    let delay = taskrun::client::retry_delay(failures, ctx.base.backoff_base, ctx.base.backoff_max)
        .mul_f64(1.0 - 0.1 * fastrand::f64());
    tracing::warn!(
        taskrun = %tr.name_any(),
        namespace = tr.namespace().unwrap_or_default(),
        %error,
        failures,
        retry_in_ms = delay.as_millis() as u64,
        "reconcile failed"
    );
    Action::requeue(delay)
}

async fn reconcile_taskrun(tr: &TaskRun, ctx: &Ctx) -> Result<Action, Error> {
    let ns = tr
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<TaskRun> = Api::namespaced(ctx.base.client.clone(), &ns);
    let has_finalizer = tr.finalizers().iter().any(|f| f == FINALIZER);
    // A finalizer write that finds the TaskRun changed since the cache's copy (this
    // controller's own writes, whose echo has not reached the cache yet) is tried again once the
    // cache has caught up, as no failure.
    if tr.meta().deletion_timestamp.is_some() {
        if has_finalizer {
            cleanup(tr, ctx, &ns).await?;
            if set_finalizer(&api, tr, false).await? == Written::Stale {
                return Ok(Action::requeue(LOOK_AGAIN));
            }
        }
        return Ok(Action::await_change());
    }
    if !has_finalizer && set_finalizer(&api, tr, true).await? == Written::Stale {
        return Ok(Action::requeue(LOOK_AGAIN));
    }

    let uid = tr.meta().uid.as_deref();
    let version = tr.spec.context_version;
    let prev = ctx
        .written
        .latest(uid.unwrap_or_default(), tr.status.as_ref());
    let jobs: Api<Job> = Api::namespaced(ctx.base.client.clone(), &ns);
    // Versions that ran before this one; this one counts once its Job exists.
    let ran_before = status::runs_before(&prev, version);
    let mut seen = Observed {
        generation: tr.meta().generation,
        context_version: version,
        job_name: None,
        config_map_name: None,
        attempts: ran_before,
        started_at: None,
    };
    let (job_name, cm_name) = job::child_names(tr);
    // Any Job of an older version still running is stopped, whether or not the status ever
    // named it (a status write lost after a Job was created leaves no trace of that Job
    // there): until the status records this version and no older version's ConfigMap, each
    // one the cache holds; after that, finished or not, each one the Job watch brings late,
    // that was cached when this term began, or whose stop failed (`cache::Superseded`).
    // Version 1 has nothing older.
    if version > 1 {
        let scan = prev.observed_context_version != Some(version)
            || prev
                .config_map_name
                .as_deref()
                .is_some_and(|n| n != cm_name);
        if let Err(NotStopped { job, error }) = stop_superseded(tr, ctx, &jobs, &prev, scan).await {
            // The status keeps naming the older version's ConfigMap: removed (below) once its
            // Job is stopped, which the scan goes on for until then.
            let waiting = Observed {
                config_map_name: prev.config_map_name.clone(),
                ..seen.clone()
            };
            let refused_delete = Refused::DeleteOlder(&job);
            return Err(refused(&api, tr, ctx, &prev, &waiting, refused_delete, error).await);
        }
        if scan {
            drop_superseded_config_map(tr, ctx, &ns, &prev).await;
        }
    }
    // A finished version stays finished: decided from the status alone, before any child is
    // looked at, so a Job removed by its TTL or by hand is never created again.
    if status::is_final_for(Some(&prev), version) {
        if prev.observed_generation != tr.meta().generation {
            let mut next = prev.clone();
            next.observed_generation = tr.meta().generation;
            for c in &mut next.conditions {
                c.observed_generation = tr.meta().generation;
            }
            write_status(&api, tr, ctx, &prev, &next).await?;
        }
        return Ok(Action::await_change());
    }

    let owner = job::owner_reference(tr).ok_or(Error::MissingField("metadata.uid"))?;
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.base.client.clone(), &ns);

    // Children are looked up in the caches first: a reconcile that finds them in place makes
    // no API call (most reconciles are echoes of this controller's own writes).
    let cm_ours = ctx
        .children
        .config_map(&ns, &cm_name)
        .await
        .is_some_and(|cm| cache::controlled_by(&cm.metadata, uid));
    // The deterministic names keep a second TaskRun of one identity from running the same
    // version, but only while the first one's children of that version exist: one created at
    // another version (while the webhook was not there), or after the first one's Job of this
    // version was removed, meets none of its names. So a TaskRun that has never run asks the
    // cache for an older live TaskRun of its identity, preferring one that has run (the one to
    // add context to, as the message says), or has begun to (`Starting`). One pass over the
    // cache when there is none. A TaskRun that has run a version holds its task, also while a
    // raised version waits for its Job (`TaskRunStatus::has_run`).
    if !prev.has_run()
        && let Some(other) = runs_instead(tr, ctx, cm_ours, &job_name).await
    {
        let duplicate = Claim::<Job>::Duplicate(other);
        return settle_unclaimed(&api, tr, ctx, &prev, &seen, duplicate, HOLDS_FIRST).await;
    }

    // A ConfigMap missing once the status names this version's Job (removed by hand) is made
    // again for the Job's next pod; failing that, the Job's outcome is still read and written,
    // and the failure returned after (retried with backoff).
    let job_named = status::names_job_for(&prev, version);
    let mut config_map_failed = None;
    if !cm_ours {
        let Some(source) = fresh_to_run(tr, ctx, &api).await? else {
            return Ok(Action::requeue(LOOK_AGAIN));
        };
        let desired = job::config_map(&source, owner.clone());
        match claim(&config_maps, &api, tr, desired).await {
            Ok(Claim::Created(_) | Claim::Ours(_)) => {}
            Ok(other) => {
                return settle_unclaimed(&api, tr, ctx, &prev, &seen, other, OWNS_CONFIG_MAP).await;
            }
            Err(e) if job_named => config_map_failed = Some(e),
            Err(e) => {
                return Err(
                    refused(&api, tr, ctx, &prev, &seen, Refused::Create("ConfigMap"), e).await,
                );
            }
        }
    }
    seen.config_map_name = Some(cm_name);

    let cached_job = ctx
        .children
        .job(&ns, &job_name)
        .await
        .filter(|j| cache::controlled_by(&j.metadata, uid));
    let (job_status, job_created, job_deletion) = match cached_job {
        Some(job) => (
            job.status.clone(),
            job.metadata.creation_timestamp.clone(),
            status::deletion(&job.metadata),
        ),
        None => {
            let existed = prev.observed_context_version == Some(version)
                && prev.job_name.as_deref() == Some(job_name.as_str());
            let found = if existed {
                // The status names this Job but the cache does not hold it: the cache may lag,
                // or the Job was removed (a TTL) after finishing, by a final status this
                // controller's cache does not show yet (say, the previous leader's). A
                // finished version must not run again: ask the API server, not the cache.
                match jobs.get_opt(&job_name).await? {
                    Some(job) => Some(judge(&api, tr, &job_name, Some(job)).await?),
                    None => {
                        let fresh = api.get(&tr.name_any()).await?;
                        if !still_to_run(tr, &fresh) {
                            return Ok(Action::await_change());
                        }
                        // Gone before its end was seen: deleted by hand, or finished and
                        // removed by a short TTL while no replica was watching. Running it
                        // again could do the task twice; the version ends here instead.
                        seen.job_name = Some(job_name.clone());
                        seen.attempts = ran_before + 1;
                        let o = Outcome::new(
                            Phase::Failed,
                            status::reason::JOB_LOST,
                            format!(
                                "Job {job_name} was removed before its end was seen (deleted, or \
                                 finished and removed by its ttlSecondsAfterFinished); this version \
                                 is not run again: raise contextVersion to run the task again (a \
                                 pod an orphaning delete left may still run: kubectl get pods -l \
                                 batch.kubernetes.io/job-name={job_name})"
                            ),
                        );
                        let next = status::next_status(&prev, &seen, &o, &now());
                        write_status(&api, tr, ctx, &prev, &next).await?;
                        return Ok(Action::await_change());
                    }
                }
            } else {
                None
            };
            let claimed = match found {
                Some(claim) => Ok(claim),
                None => {
                    if let Some(older) = older_still_running(tr, ctx, &jobs, &job_name).await? {
                        return wait_for_older(&api, tr, ctx, &prev, &seen, &older).await;
                    }
                    // The ConfigMap was made by an earlier reconcile (this Job's create refused,
                    // or waiting for an older version's Job or a name's previous owner): the
                    // TaskRun is read afresh here instead, for the cache may lag (a watch
                    // listing again) behind a raise or a deletion since.
                    if cm_ours && fresh_to_run(tr, ctx, &api).await?.is_none() {
                        return Ok(Action::requeue(LOOK_AGAIN));
                    }
                    claim(&jobs, &api, tr, job::job(tr, owner, &ctx.base.template)).await
                }
            };
            match claimed {
                // A Job just created has no status yet.
                Ok(Claim::Created(at)) => (None, at, status::Deletion::No),
                Ok(Claim::Ours(job)) => {
                    let deletion = status::deletion(&job.metadata);
                    (job.status, job.metadata.creation_timestamp, deletion)
                }
                Ok(other) => {
                    return settle_unclaimed(&api, tr, ctx, &prev, &seen, other, OWNS_JOB).await;
                }
                // The API server refused the Job itself: the template does not fit this cluster.
                Err(Error::Kube(kube::Error::Api(s))) if refuses_template(&s) => {
                    let o = Outcome::new(
                        Phase::Failed,
                        status::reason::INVALID_TEMPLATE,
                        format!("the Job for this TaskRun was refused: {}", s.message),
                    );
                    let next = status::next_status(&prev, &seen, &o, &now());
                    write_status(&api, tr, ctx, &prev, &next).await?;
                    return Ok(Action::await_change());
                }
                Err(e) => {
                    return Err(
                        refused(&api, tr, ctx, &prev, &seen, Refused::Create("Job"), e).await,
                    );
                }
            }
        }
    };
    seen.job_name = Some(job_name.clone());
    seen.attempts = ran_before + 1;
    seen.started_at = job_status
        .as_ref()
        .and_then(|s| s.start_time.clone())
        .or(job_created);
    let (job_status, stopping_left) = status::stopping_limited(job_status, &now());
    let outcome = status::job_outcome(&job_name, job_status.as_ref());
    let outcome = status::once_running(outcome, &prev, tr.spec.context_version, &job_name);
    let outcome = status::being_deleted(outcome, &job_name, job_status.as_ref(), job_deletion);
    let next = status::next_status(&prev, &seen, &outcome, &now());
    write_status(&api, tr, ctx, &prev, &next).await?;
    ctx.children.written_from_job(&ns, &job_name);
    if let Some(e) = config_map_failed {
        return Err(e);
    }
    // A decided end whose pods have not stopped yet: reported at the limit if they never do.
    if let Some(left) = stopping_left {
        return Ok(Action::requeue(left));
    }
    // No periodic resync, finished or not: every input of this function is watched (the
    // TaskRun, its Jobs, its ConfigMaps), and a watch that cannot resume lists again: every
    // child listed, and every child gone since (relist.rs), reconciles its TaskRun. A requeue
    // would keep an entry per running TaskRun in kube-runtime's scheduler (about 640 bytes:
    // 6 MiB at 10,000) to find nothing new.
    Ok(Action::await_change())
}

/// The Job of an older version of `tr` that may still have a pod, if there is one: one the
/// cache shows unfinished (`cache::may_still_run`), or one deleted here that the cache does not
/// show (not yet, or never: gone while the watch was down), which the API server still has.
/// Version 1 has none, and asks nothing.
async fn older_still_running(
    tr: &TaskRun,
    ctx: &Ctx,
    jobs: &Api<Job>,
    current: &str,
) -> Result<Option<String>, Error> {
    if tr.spec.context_version <= 1 {
        return Ok(None);
    }
    let ns = tr.namespace().unwrap_or_default();
    let uid = tr.meta().uid.as_deref().unwrap_or_default();
    if let Some(older) = ctx.children.older_still_running(uid, current).await {
        return Ok(Some(older.name_any()));
    }
    for deleted in ctx.children.stopping(uid) {
        // Cached: judged as the cache shows it now, which may be since the pass above (the
        // watch brought it meanwhile, during another note's GET, say).
        if let Some(j) = ctx.children.job(&ns, &deleted.name).await {
            if j.metadata.uid == deleted.uid && cache::may_still_run(&j, current) {
                return Ok(Some(deleted.name));
            }
            continue;
        }
        match jobs.get_metadata_opt(&deleted.name).await? {
            Some(j) if j.metadata.uid == deleted.uid => return Ok(Some(deleted.name)),
            // Gone, or another Job under the name.
            _ => ctx.children.stopped(uid, &deleted.name),
        }
    }
    Ok(None)
}

/// The status while the Job `older` of an older version stops: this version's Job is made
/// once it is gone or finished (the Job's events bring the reconcile back; the look again is
/// for a Job this controller's cache never held).
async fn wait_for_older(
    api: &Api<TaskRun>,
    tr: &TaskRun,
    ctx: &Ctx,
    prev: &TaskRunStatus,
    seen: &Observed,
    older: &str,
) -> Result<Action, Error> {
    let waiting = status::reason::PREVIOUS_VERSION_STOPPING;
    let o = Outcome::new(
        Phase::Pending,
        waiting,
        format!(
            "Job {older} of an older version is stopping; this version's Job is made once its \
             pods have stopped, so that two versions do not run side by side (a pod on an unreachable \
             node stops once the node is deleted or tainted node.kubernetes.io/out-of-service: \
             kubectl get pods -l batch.kubernetes.io/job-name={older})"
        ),
    );
    let next = status::next_status(prev, seen, &o, &now());
    write_status(api, tr, ctx, prev, &next).await?;
    let again = status::wait_again(prev, seen.context_version, waiting, &now());
    Ok(Action::requeue(again))
}

/// Whether `fresh`, the TaskRun read from the API server just now, is still the `tr` this
/// reconcile works for, with its version yet to end. Not when the TaskRun is being deleted (a
/// foreground deletion has the garbage collector delete the children before this controller's
/// cache shows the deletionTimestamp), is another object of the same name (deleted and created
/// again), is at another version, or when that version is final already (the cache lags behind
/// a status written since). Then nothing is made or ended here: a deletion, a new object or a
/// new version brings its own event, and an ended version needs nothing more. This decides
/// whether a Job the status names and the API server no longer has ends the version as
/// `JobLost`, and whether children are made at all (`fresh_to_run`).
fn still_to_run(tr: &TaskRun, fresh: &TaskRun) -> bool {
    let version = tr.spec.context_version;
    fresh.meta().deletion_timestamp.is_none()
        && fresh.meta().uid == tr.meta().uid
        && fresh.spec.context_version == version
        && !status::is_final_for(fresh.status.as_ref(), version)
}

/// The TaskRun with its markdown files, read from the API server (the cache drops them,
/// `cache::trim_taskrun`), if children may be made for `tr` ([`still_to_run`]); `None` for a
/// TaskRun being deleted, another object, another version or a version that has ended, which
/// is looked at again once the cache has caught up with what was read. Every child is made
/// after such a read in the same reconcile: the cached `tr` may lag behind a raise or a
/// deletion.
///
/// Read at the cached resourceVersion ("not older than"): the API server answers from its
/// watch cache once that has caught up with what this controller's watch has shown (at once
/// when both come from the same API server), instead of a quorum read from etcd
/// (docs/benchmarks.md).
async fn fresh_to_run(
    tr: &TaskRun,
    ctx: &Ctx,
    api: &Api<TaskRun>,
) -> Result<Option<TaskRun>, Error> {
    let params = match tr.meta().resource_version.as_deref() {
        Some(rv) => GetParams::at(rv),
        None => GetParams::default(),
    };
    let fresh = api.get_with(&tr.name_any(), &params).await?;
    if still_to_run(tr, &fresh) {
        return Ok(Some(fresh));
    }
    if fresh.meta().uid == tr.meta().uid
        && status::is_final_for(fresh.status.as_ref(), tr.spec.context_version)
    {
        // Another writer (a former leader's late write) ended this version: what was last
        // written here is not the truth any more, and the cache will show that.
        let uid = tr.meta().uid.as_deref().unwrap_or_default();
        ctx.written.forget(uid);
        ctx.starting.settled(uid);
    }
    Ok(None)
}

/// The status when a child's name is held by someone else, or (Duplicate) the task by an
/// older TaskRun; `why` says how the other one holds it.
async fn settle_unclaimed<K>(
    api: &Api<TaskRun>,
    tr: &TaskRun,
    ctx: &Ctx,
    prev: &TaskRunStatus,
    seen: &Observed,
    claim: Claim<K>,
    why: &str,
) -> Result<Action, Error> {
    let identity = tr.identity();
    let (outcome, action) = match claim {
        Claim::Created(_) | Claim::Ours(_) => {
            return Ok(Action::requeue(LOOK_AGAIN));
        }
        Claim::Duplicate(other) => (
            Outcome::new(
                Phase::Failed,
                status::reason::DUPLICATE,
                format!(
                    "TaskRun {other} already runs {identity} ({why}); \
                     delete this TaskRun, or add context to {other} with a higher contextVersion"
                ),
            ),
            Action::await_change(),
        ),
        Claim::Wait(message) => (
            Outcome::new(
                Phase::Pending,
                status::reason::WAITING_FOR_PREVIOUS_OWNER,
                message,
            ),
            Action::requeue(status::wait_again(
                prev,
                seen.context_version,
                status::reason::WAITING_FOR_PREVIOUS_OWNER,
                &now(),
            )),
        ),
        Claim::Taken(message) => (
            Outcome::new(Phase::Failed, status::reason::NAME_CONFLICT, message),
            Action::await_change(),
        ),
    };
    let next = status::next_status(prev, seen, &outcome, &now());
    write_status(api, tr, ctx, prev, &next).await?;
    Ok(action)
}

/// True when the API server refused a Job as invalid by its own validation (400 or 422, not
/// from admission): the template does not fit, and the version fails as `InvalidTemplate`. The
/// start-up check (`template_check`) refuses to start on the same answer to its dry run.
pub(crate) fn refuses_template(s: &kube::core::Status) -> bool {
    (s.code == 422 || s.code == 400) && !denied_by_admission(&s.message)
}

/// True when a refusal came from an admission webhook or a ValidatingAdmissionPolicy, which
/// may lift (a freeze window, another team's rule), rather than from the object's own
/// validation. Either may answer 400 or 422, the codes of an invalid object too; the messages
/// are the API server's own.
fn denied_by_admission(message: &str) -> bool {
    (message.contains("admission webhook \"") && message.contains("denied the request"))
        || (message.contains("ValidatingAdmissionPolicy '") && message.contains("denied request"))
}

/// The API server's message when it refused a request for a reason that may pass (403: a
/// ResourceQuota used up, an admission policy, a namespace being deleted, missing RBAC; or an
/// admission webhook or policy answering 400 or 422); `None` for any other failure.
fn refusal_that_may_pass(e: &kube::Error) -> Option<&str> {
    match e {
        kube::Error::Api(s) if s.code == 403 || denied_by_admission(&s.message) => {
            Some(s.message.as_str())
        }
        _ => None,
    }
}

/// A delete of a child refused for a reason that may pass: a Warning Event on the TaskRun,
/// which otherwise shows nothing while the reconcile is retried with backoff and `meanwhile`
/// says what waits (the raised version; the TaskRun, held by its finalizer). Once per run of
/// failed reconciles, not at every retry.
fn delete_refused(ctx: &Ctx, tr: &TaskRun, child: &str, e: &kube::Error, meanwhile: &str) {
    let Some(message) = refusal_that_may_pass(e) else {
        return;
    };
    let told_already = ctx.failures.lock().is_ok_and(|mut failures| {
        let f = failures.entry(ObjectRef::from_obj(tr)).or_default();
        std::mem::replace(&mut f.told_delete_refused, true)
    });
    if told_already {
        return;
    }
    let event = Event {
        type_: EventType::Warning,
        reason: "DeleteRefused".into(),
        note: Some(format!(
            "the API server refused deleting {child}: {message}; {meanwhile}"
        )),
        action: "DeleteChild".into(),
        secondary: None,
    };
    record(ctx, tr, event);
}

/// A request of a reconcile that the API server refused, as the status tells it.
#[derive(Clone, Copy)]
enum Refused<'a> {
    /// The create of this version's ConfigMap or Job (`CreateRefused`).
    Create(&'a str),
    /// The delete of an older version's Job, by name, which this version waits for
    /// (`DeleteRefused`).
    DeleteOlder(&'a str),
}

/// A request failed with `e`, which the reconcile returns (to be retried with backoff). When
/// the API server refused it for a reason that may pass (403: a ResourceQuota used up, an
/// admission policy, a namespace being deleted, missing RBAC; or an admission webhook or
/// policy answering 400 or 422), the status says so meanwhile: the TaskRun would otherwise show
/// nothing at all, and the reason only the controller's log (and, for a delete, an Event). Not
/// once the status names this version's Job (an older Job the watch brought late): that status
/// keeps the Job, so that it is never made again.
async fn refused(
    api: &Api<TaskRun>,
    tr: &TaskRun,
    ctx: &Ctx,
    prev: &TaskRunStatus,
    seen: &Observed,
    what: Refused<'_>,
    e: Error,
) -> Error {
    let Some(message) = (match &e {
        Error::Kube(k) => refusal_that_may_pass(k),
        _ => None,
    }) else {
        return e;
    };
    if status::names_job_for(prev, seen.context_version) {
        return e;
    }
    let o = match what {
        Refused::Create(kind) => Outcome::new(
            Phase::Pending,
            status::reason::CREATE_REFUSED,
            format!("the API server refused this version's {kind}: {message}; retrying"),
        ),
        Refused::DeleteOlder(job) => Outcome::new(
            Phase::Pending,
            status::reason::DELETE_REFUSED,
            format!(
                "the API server refused deleting Job {job} of an older version: {message}; \
                 this version's Job is made once that Job is gone or finished; retrying"
            ),
        ),
    };
    let next = status::next_status(prev, seen, &o, &now());
    match write_status(api, tr, ctx, prev, &next).await {
        Ok(()) => e,
        Err(write) => write,
    }
}

/// Writes the status through the status subresource (server-side apply, own field
/// manager) when it changed, and records an Event when the phase or version changed.
async fn write_status(
    api: &Api<TaskRun>,
    tr: &TaskRun,
    ctx: &Ctx,
    prev: &TaskRunStatus,
    next: &TaskRunStatus,
) -> Result<(), Error> {
    if !status::differs(prev, next) {
        return Ok(());
    }
    let name = tr.name_any();
    writes::apply_status(api, &name, FIELD_MANAGER, next).await?;
    if let Some(uid) = tr.meta().uid.as_deref() {
        ctx.written.record(uid, next.clone());
        // It runs (the status names its Job), or its version ended: from now what was written,
        // then the cache, tell the others (`Starting`).
        if next.job_name.is_some() || status::is_final_for(Some(next), tr.spec.context_version) {
            ctx.starting.settled(uid);
        }
    }
    let moved =
        prev.phase != next.phase || prev.observed_context_version != next.observed_context_version;
    if moved && let Some(phase) = next.phase {
        let reason = next
            .conditions
            .iter()
            .find(|c| c.type_ == status::SUCCEEDED)
            .map(|c| c.reason.clone())
            .unwrap_or_else(|| phase.to_string());
        tracing::info!(
            taskrun = %name,
            namespace = tr.namespace().unwrap_or_default(),
            version = next.observed_context_version,
            %phase,
            %reason,
            "phase changed"
        );
        let event = Event {
            type_: if phase == Phase::Failed {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason,
            note: next.message.clone(),
            action: "Reconcile".into(),
            secondary: None,
        };
        record(ctx, tr, event);
    }
    Ok(())
}

/// The older live TaskRun of `tr`'s identity that runs instead of `tr`, which has not run (its
/// status names no Job), if there is one; when there is none, `tr` is noted as starting
/// (`Starting`), in one step with the asking. One pass over the cache, copying nothing, when
/// there is none (the common case); the cache is copied only when two TaskRuns of one task got
/// past the webhook. `cm_ours`: the cache shows `tr`'s ConfigMap of this version.
async fn runs_instead(tr: &TaskRun, ctx: &Ctx, cm_ours: bool, job_name: &str) -> Option<String> {
    let ns = tr.namespace().unwrap_or_default();
    let uid = tr.meta().uid.as_deref();
    let holds_a_child = cm_ours
        || ctx
            .children
            .job(&ns, job_name)
            .await
            .is_some_and(|j| cache::controlled_by(&j.metadata, uid));
    ctx.starting
        .unless_another_runs(uid.unwrap_or_default(), |noted| {
            let known = Known {
                started: &|u| noted(u) || ctx.written.has_run(u),
                ended_unrun: &|u, version| ctx.written.ended_unrun(u, version),
            };
            ctx.taskruns
                .find(|o| holds_instead(o, tr, holds_a_child, known))?;
            runs_instead_of(
                tr,
                holds_a_child,
                known,
                ctx.taskruns.state().iter().map(AsRef::as_ref),
            )
        })
}

/// What this controller knows of the other TaskRuns that its cache may not show yet.
#[derive(Clone, Copy)]
struct Known<'a> {
    /// Whether the TaskRun of a uid has begun to run: noted as starting (`Starting`), or a
    /// status saying it has run was written.
    started: &'a dyn Fn(&str) -> bool,
    /// Whether a status written for the TaskRun of a uid ended that version without running
    /// it.
    ended_unrun: &'a dyn Fn(&str, i64) -> bool,
}

/// Of `cached`, the TaskRun that runs instead of `tr`: of those of its identity that hold it
/// before `tr` (`holds_instead`), the one the webhook names too (`taskrun::find_duplicate`).
/// `holds_a_child`: `tr` controls a child of its current version (the cache shows it);
/// `known`: what the cache may not show yet of the others.
fn runs_instead_of<'a>(
    tr: &TaskRun,
    holds_a_child: bool,
    known: Known<'_>,
    cached: impl IntoIterator<Item = &'a TaskRun>,
) -> Option<String> {
    let before: Vec<Existing<'_>> = cached
        .into_iter()
        .filter(|o| holds_instead(o, tr, holds_a_child, known))
        .map(|o| counting_started(o, known))
        .collect();
    find_duplicate(not_run(tr).name, before).map(str::to_owned)
}

/// True when the cached TaskRun `o` holds `tr`'s task before `tr`, which has not run: of its
/// identity, live, and first by the duplicate rule (`Existing::holds_before`), except
///
/// - one whose current version ended without running (Failed as a Duplicate, say): it never
///   runs that version, and counting it could fail every TaskRun of the task (two that raced
///   past the webhook each failed for the other);
/// - when `tr` already controls a child of its current version (`holds_a_child`), one that has
///   not run, at the same version: the names of that version are `tr`'s, so the other one
///   cannot get them (its reconcile finds them taken and fails it as a Duplicate of `tr`).
///
/// Of the others, one that has begun to run (`Known::started`) comes first as if it had run.
/// The exceptions above go by what it has done, as its status says (cached, or just written:
/// `Known::ended_unrun`), not by its having begun: a noted one that has not run, at `tr`'s
/// version, still cannot take the names `tr` holds.
fn holds_instead(o: &TaskRun, tr: &TaskRun, holds_a_child: bool, known: Known<'_>) -> bool {
    if !o.same_task(tr) {
        return false;
    }
    if !Existing::of(o).has_run {
        let version = o.spec.context_version;
        let uid = o.meta().uid.as_deref().unwrap_or_default();
        if status::is_final_for(o.status.as_ref(), version) || (known.ended_unrun)(uid, version) {
            return false;
        }
        if holds_a_child && o.spec.context_version == tr.spec.context_version {
            return false;
        }
    }
    counting_started(o, known).holds_before(&not_run(tr))
}

/// `o` for the duplicate rule, as having run once it has begun to (`Known::started`).
fn counting_started<'a>(o: &'a TaskRun, known: Known<'_>) -> Existing<'a> {
    let mut e = Existing::of(o);
    e.has_run = e.has_run || (known.started)(e.uid);
    e
}

/// `tr` for the duplicate rule, as one that has not run: its status may be a lagging cache's,
/// and the reconcile asks only while the latest status it knows names no Job.
fn not_run(tr: &TaskRun) -> Existing<'_> {
    Existing {
        has_run: false,
        ..Existing::of(tr)
    }
}

#[cfg(test)]
mod tests {
    use super::{Known, denied_by_admission, refusal_that_may_pass, runs_instead_of, still_to_run};
    use taskrun::{Phase, TaskRun, TaskRunStatus};

    fn taskrun(name: &str, created: i64, service: &str, task_id: i64) -> TaskRun {
        let mut tr: TaskRun = serde_json::from_value(serde_json::json!({
            "apiVersion": "orchestrator.io/v1", "kind": "TaskRun",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "spec": {"taskId": task_id, "serviceName": service, "contextVersion": 1,
                     "markdownFiles": []},
        }))
        .expect("a TaskRun");
        tr.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(created).expect("time"),
            ));
        tr
    }

    fn ran(mut tr: TaskRun) -> TaskRun {
        tr.status = Some(TaskRunStatus {
            job_name: Some("svc-7-v1".into()),
            ..TaskRunStatus::default()
        });
        tr
    }

    /// Nothing known beyond the cache.
    fn cache_only() -> Known<'static> {
        Known {
            started: &|_| false,
            ended_unrun: &|_, _| false,
        }
    }

    fn instead(tr: &TaskRun, cached: &[TaskRun]) -> Option<String> {
        runs_instead_of(tr, false, cache_only(), cached)
    }

    /// The same, for a TaskRun that controls a child of its current version.
    fn instead_holding(tr: &TaskRun, cached: &[TaskRun]) -> Option<String> {
        runs_instead_of(tr, true, cache_only(), cached)
    }

    /// `tr` with a status that ends its current version as `reason`, naming a Job or not.
    fn ended(mut tr: TaskRun, reason: &str, job: Option<&str>) -> TaskRun {
        let version = tr.spec.context_version;
        tr.status = Some(TaskRunStatus {
            phase: Some(Phase::Failed),
            observed_context_version: Some(version),
            job_name: job.map(Into::into),
            message: Some(reason.into()),
            ..TaskRunStatus::default()
        });
        tr
    }

    fn at_version(mut tr: TaskRun, version: i64) -> TaskRun {
        tr.spec.context_version = version;
        tr
    }

    /// Two TaskRuns of one identity created in the same second, `b` first by its uid.
    fn raced() -> (TaskRun, TaskRun) {
        let (mut a, mut b) = (taskrun("a", 100, "svc", 7), taskrun("b", 100, "svc", 7));
        a.metadata.uid = Some("uid-2".into());
        b.metadata.uid = Some("uid-1".into());
        (a, b)
    }

    /// a created its ConfigMap, its Job was refused (a quota), and b came: b finds the
    /// ConfigMap a's and fails as its Duplicate. Neither may then fail a as a duplicate of b,
    /// or the task never runs.
    #[test]
    fn the_taskrun_holding_the_names_runs_when_both_raced_past_the_webhook() {
        let (a, b) = raced();
        assert_eq!(instead(&a, &[a.clone(), b.clone()]).as_deref(), Some("b"));
        assert_eq!(
            instead(&b, &[a.clone(), b.clone()]),
            None,
            "b goes to claim"
        );
        // a holds its ConfigMap before b's reconcile: b cannot take a's names.
        assert_eq!(instead_holding(&a, &[a.clone(), b.clone()]), None);
        // b failed as a's duplicate: it holds nothing, child or not.
        let b_lost = ended(b.clone(), "Duplicate", None);
        assert_eq!(instead(&a, &[a.clone(), b_lost.clone()]), None);
        assert_eq!(instead_holding(&a, &[a.clone(), b_lost]), None);
    }

    #[test]
    fn holding_a_child_does_not_beat_one_that_has_run_or_another_versions_first() {
        let (a, b) = raced();
        // One that has run goes on holding the task.
        let b_ran = ran(b.clone());
        assert_eq!(
            instead_holding(&a, &[a.clone(), b_ran]).as_deref(),
            Some("b")
        );
        // One first at another version can make its own children: it runs, not both.
        let b_v2 = at_version(b.clone(), 2);
        assert_eq!(
            instead_holding(&a, &[a.clone(), b_v2]).as_deref(),
            Some("b")
        );
        // Nor does it make a later one hold before an earlier one.
        assert_eq!(instead_holding(&b, &[a.clone(), b.clone()]), None);
    }

    /// a was reconciled first and is creating its children; b, first by its uid, is
    /// reconciled before the cache shows a's status. Without `Starting` both ran.
    #[test]
    fn one_that_has_begun_to_create_its_children_counts_as_having_run() {
        let (a, b) = raced();
        let b = at_version(b, 2);
        let cached = [a.clone(), b.clone()];
        assert_eq!(instead(&a, &cached).as_deref(), Some("b"), "b is first");
        assert_eq!(instead(&b, &cached), None);
        let is_a = |u: &str| u == "uid-2";
        let a_started = Known {
            started: &is_a,
            ..cache_only()
        };
        assert_eq!(
            runs_instead_of(&b, false, a_started, &cached).as_deref(),
            Some("a")
        );
        // Started or not, one that has run is first.
        let b_ran = ran(b.clone());
        assert_eq!(
            runs_instead_of(&a, false, a_started, &[a.clone(), b_ran]).as_deref(),
            Some("b")
        );
    }

    /// b, first by its uid, just failed without running (its written status says so; the
    /// cache does not show it yet): a does not yield to it, or neither would run.
    #[test]
    fn one_whose_written_status_ended_without_running_holds_nothing() {
        let (a, b) = raced();
        let cached = [a.clone(), b.clone()];
        assert_eq!(instead(&a, &cached).as_deref(), Some("b"));
        let b_ended = Known {
            ended_unrun: &|u, version| u == "uid-1" && version == 1,
            ..cache_only()
        };
        assert_eq!(runs_instead_of(&a, false, b_ended, &cached), None);
        // Only its current version's end counts.
        let b_v2 = at_version(b.clone(), 2);
        assert_eq!(
            runs_instead_of(&a, false, b_ended, &[a.clone(), b_v2]).as_deref(),
            Some("b")
        );
    }

    /// b, first by its uid, was noted as starting; a already holds the names of their one
    /// version (its ConfigMap made, its Job refused). a must not yield: b's claim finds the
    /// names a's and fails b, and were a to yield too, nothing would run.
    #[test]
    fn one_starting_does_not_take_the_names_another_holds() {
        let (a, b) = raced();
        let is_b = |u: &str| u == "uid-1";
        let b_started = Known {
            started: &is_b,
            ..cache_only()
        };
        let cached = [a.clone(), b.clone()];
        assert_eq!(runs_instead_of(&a, true, b_started, &cached), None);
        // Without the names, a yields to it.
        assert_eq!(
            runs_instead_of(&a, false, b_started, &cached).as_deref(),
            Some("b")
        );
    }

    #[test]
    fn a_version_that_ended_without_running_holds_nothing() {
        let (a, b) = raced();
        for reason in ["Duplicate", "InvalidTemplate", "NameConflict"] {
            let gone = ended(b.clone(), reason, None);
            assert_eq!(instead(&a, &[a.clone(), gone]), None, "{reason}");
        }
        // One that ran, then failed, still holds it (it is the one to add context to).
        let lost = ended(b.clone(), "JobLost", Some("svc-7-v1"));
        assert_eq!(instead(&a, &[a.clone(), lost]).as_deref(), Some("b"));
        // A failure of an older version than the current one ends nothing of this one.
        let raised = at_version(ended(b.clone(), "Duplicate", None), 2);
        assert_eq!(instead(&a, &[a.clone(), raised]).as_deref(), Some("b"));
        // Pending is not an end.
        let mut pending = ended(b.clone(), "CreateRefused", None);
        if let Some(s) = pending.status.as_mut() {
            s.phase = Some(Phase::Pending);
        }
        assert_eq!(instead(&a, &[a.clone(), pending]).as_deref(), Some("b"));
    }

    /// Read fresh, the TaskRun decides whether a Job the status names and the API server
    /// lacks ends the version (`JobLost`), and whether children are made (`fresh_to_run`).
    #[test]
    fn only_the_live_taskrun_at_an_unended_version_is_still_to_run() {
        let tr = taskrun("t", 100, "svc", 7);
        assert!(still_to_run(&tr, &tr.clone()));
        // Deleted in the foreground: the garbage collector removed the Job first.
        let mut deleting = tr.clone();
        deleting.metadata.deletion_timestamp = deleting.metadata.creation_timestamp.clone();
        assert!(!still_to_run(&tr, &deleting));
        // Deleted and created again under the same name.
        let mut other = tr.clone();
        other.metadata.uid = Some("uid-new".into());
        assert!(!still_to_run(&tr, &other));
        // Raised to another version meanwhile, or ended already.
        assert!(!still_to_run(&tr, &at_version(tr.clone(), 2)));
        assert!(!still_to_run(
            &tr,
            &ended(tr.clone(), "JobLost", Some("svc-7-v1"))
        ));
    }

    #[test]
    fn a_taskrun_that_has_not_run_yields_to_the_holder_that_runs() {
        let (older, newer) = (taskrun("b", 100, "svc", 7), taskrun("a", 200, "svc", 7));
        let cached = [older.clone(), newer.clone()];
        assert_eq!(
            instead(&newer, &cached).as_deref(),
            Some("b"),
            "the older one"
        );
        assert_eq!(instead(&older, &cached), None, "the oldest runs");
        // Created in one second: the uid decides, one way only.
        let (x, y) = (taskrun("x", 100, "svc", 7), taskrun("y", 100, "svc", 7));
        let pair = [x.clone(), y.clone()];
        assert!(instead(&x, &pair).is_some() != instead(&y, &pair).is_some());
        // One that has run holds the task whatever its age, and is the one named.
        let late = ran(taskrun("n", 300, "svc", 7));
        let cached = [
            taskrun("m", 100, "svc", 7),
            late.clone(),
            taskrun("l", 200, "svc", 7),
        ];
        assert_eq!(
            instead(&taskrun("z", 400, "svc", 7), &cached).as_deref(),
            Some("n")
        );
        assert_eq!(instead(&cached[0], &cached).as_deref(), Some("n"));
        // A lagging cache's status saying this one ran does not make it hold the task: the
        // reconcile asks only while the status it knows names no Job.
        let lagging = ran(taskrun("c", 500, "svc", 7));
        assert_eq!(
            instead(&lagging, &[older.clone(), lagging.clone()]).as_deref(),
            Some("b")
        );
        // Another task, service or namespace, or one being deleted, holds nothing of it.
        let mut elsewhere = taskrun("e", 1, "svc", 7);
        elsewhere.metadata.namespace = Some("team-b".into());
        let mut going = taskrun("f", 1, "svc", 7);
        going.metadata.deletion_timestamp = going.metadata.creation_timestamp.clone();
        let others = [
            taskrun("c", 1, "svc", 8),
            taskrun("d", 1, "other", 7),
            elsewhere,
            going,
        ];
        assert_eq!(instead(&newer, &others), None);
    }

    #[test]
    fn refusals_by_admission_are_told_from_an_invalid_object() {
        for admission in [
            r#"admission webhook "validate.kyverno.svc" denied the request: images must be pinned"#,
            "jobs.batch \"svc-1-v1\" is forbidden: ValidatingAdmissionPolicy 'freeze' with binding 'freeze' denied request: jobs are frozen",
        ] {
            assert!(denied_by_admission(admission), "{admission}");
        }
        for invalid in [
            "Job.batch \"svc-1-v1\" is invalid: spec.template.spec.containers[0].image: Required value",
            "the object is invalid: an admission webhook was not consulted",
        ] {
            assert!(!denied_by_admission(invalid), "{invalid}");
        }
    }

    #[test]
    fn only_a_refusal_that_may_pass_is_told_to_people() {
        let api = |code: u16, message: &str| {
            let status = kube::core::Status::failure(message, "Reason").with_code(code);
            kube::Error::Api(Box::new(status))
        };
        let policy = "jobs.batch \"svc-1-v1\" is forbidden: ValidatingAdmissionPolicy 'freeze' with binding 'freeze' denied request: jobs are frozen";
        assert_eq!(refusal_that_may_pass(&api(403, policy)), Some(policy));
        let rbac = "jobs.batch \"svc-1-v1\" is forbidden: User cannot delete";
        assert_eq!(refusal_that_may_pass(&api(403, rbac)), Some(rbac));
        assert_eq!(
            refusal_that_may_pass(&api(500, "etcdserver: timeout")),
            None
        );
        assert_eq!(
            refusal_that_may_pass(&api(422, "Job.batch is invalid")),
            None
        );
    }
}
