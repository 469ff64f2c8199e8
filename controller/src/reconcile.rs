//! One reconcile of one TaskRun: finalizer, children of the current version, status.
//! The decisions are pure functions elsewhere (`job`, `status`); this file does the I/O.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, GetParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use taskrun::{Existing, FINALIZER, Phase, TaskRun, TaskRunStatus, find_duplicate};

use crate::controller::Ctx;
use crate::status::{self, Observed, Outcome, now};
use crate::{backoff, cache, job, writes};

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
/// cleared by the next success (in `reconcile`). A failure for want of an answer from the API
/// server is noted as such, so that the object is retried as soon as it answers (outage.rs).
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
    let delay = backoff::delay(failures, ctx.base.backoff_base, ctx.base.backoff_max);
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
    if tr.meta().deletion_timestamp.is_some() {
        if has_finalizer {
            cleanup(tr, ctx, &ns).await?;
            set_finalizer(&api, tr, false).await?;
        }
        return Ok(Action::await_change());
    }
    if !has_finalizer {
        set_finalizer(&api, tr, true).await?;
    }

    let uid = tr.meta().uid.as_deref();
    let prev = ctx
        .written
        .latest(uid.unwrap_or_default(), tr.status.as_ref());
    let version = tr.spec.context_version;
    let jobs: Api<Job> = Api::namespaced(ctx.base.client.clone(), &ns);
    // Any Job of an older version still running is stopped, whether or not the status ever
    // named it (a status write lost after a Job was created leaves no trace of that Job
    // there): until the status records this version, each one the cache holds; after that,
    // finished or not, each one the Job watch brings late or that was cached when this term
    // began (`cache::Superseded`). Version 1 has nothing older.
    if version > 1 {
        let scan = prev.observed_context_version != Some(version);
        stop_superseded(tr, ctx, &jobs, &prev, scan).await?;
        if scan {
            drop_superseded_config_maps(tr, ctx, &ns).await?;
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

    // Versions that ran before this one; this one counts once its Job exists.
    let counted_here = prev.observed_context_version == Some(version) && prev.job_name.is_some();
    // Another writer of the status may have set any number: read as a count, it cannot
    // overflow below.
    let ran_before = prev
        .attempts
        .unwrap_or(0)
        .clamp(0, i64::from(u32::MAX))
        .saturating_sub(i64::from(counted_here))
        .max(0);
    let mut seen = Observed {
        generation: tr.meta().generation,
        context_version: version,
        job_name: None,
        config_map_name: None,
        attempts: ran_before,
        started_at: None,
    };
    // The deterministic names keep a second TaskRun of one identity from running the same
    // version, but only while the first one's children of that version exist: one created at
    // another version (while the webhook was not there), or after the first one's Job of this
    // version was removed, meets none of its names. So a TaskRun that has never run asks the
    // cache for an older live TaskRun of its identity, preferring one that has run (the one to
    // add context to, as the message says). One pass over the cache when there is none.
    if prev.job_name.is_none()
        && let Some(other) = runs_instead(tr, &ctx.taskruns)
    {
        let duplicate = Claim::<Job>::Duplicate(other);
        return settle_unclaimed(&api, tr, ctx, &prev, &seen, duplicate, HOLDS_FIRST).await;
    }

    let (job_name, cm_name) = job::child_names(tr);
    // Children are looked up in the caches first: a reconcile that finds them in place makes
    // no API call (most reconciles are echoes of this controller's own writes).
    let cached_cm = ctx.children.config_map(&ns, &cm_name).await;
    if !cached_cm.is_some_and(|cm| cache::controlled_by(&cm.metadata, uid)) {
        let Some(source) = with_files(tr, &api).await? else {
            // The TaskRun moved on while it was read: its own event reconciles it again.
            return Ok(Action::requeue(LOOK_AGAIN));
        };
        let desired = job::config_map(&source, owner.clone());
        let claimed = match claim(&config_maps, &api, tr, desired).await {
            Ok(claimed) => claimed,
            Err(e) => return Err(refused(&api, tr, ctx, &prev, &seen, "ConfigMap", e).await),
        };
        match claimed {
            Claim::Created(_) | Claim::Ours(_) => {}
            other => {
                return settle_unclaimed(&api, tr, ctx, &prev, &seen, other, OWNS_CONFIG_MAP).await;
            }
        }
    }
    seen.config_map_name = Some(cm_name);

    let cached_job = ctx
        .children
        .job(&ns, &job_name)
        .await
        .filter(|j| cache::controlled_by(&j.metadata, uid));
    let (job_status, job_created) = match cached_job {
        Some(job) => (job.status.clone(), job.metadata.creation_timestamp.clone()),
        None => {
            let existed = prev.observed_context_version == Some(version)
                && prev.job_name.as_deref() == Some(job_name.as_str());
            let found = if existed {
                // The status names this Job but the cache does not hold it: the cache may lag,
                // or the Job was removed (a TTL) after finishing, by a final status this
                // controller's cache does not show yet (say, the previous leader's). A
                // finished version must not run again: ask the API server, not the cache.
                match jobs.get_opt(&job_name).await? {
                    Some(job) => Some(judge(&api, tr, job).await?),
                    None => {
                        let fresh = api.get(&tr.name_any()).await?;
                        if status::is_final_for(fresh.status.as_ref(), version) {
                            return Ok(Action::await_change());
                        }
                        // Gone before its end was seen: deleted by hand, or finished and
                        // removed by a short TTL while no replica was watching. Running it
                        // again could do the task twice; the version ends here instead.
                        seen.job_name = Some(job_name.clone());
                        seen.attempts = ran_before + 1;
                        let o = Outcome::new(
                            Phase::Failed,
                            "JobLost",
                            format!(
                                "Job {job_name} was removed before its end was seen (deleted, or \
                                 finished and removed by its ttlSecondsAfterFinished); this version \
                                 is not run again: raise contextVersion to run the task again"
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
                None => claim(&jobs, &api, tr, job::job(tr, owner, &ctx.base.template)).await,
            };
            match claimed {
                // A Job just created has no status yet.
                Ok(Claim::Created(at)) => (None, at),
                Ok(Claim::Ours(job)) => (job.status, job.metadata.creation_timestamp),
                Ok(other) => {
                    return settle_unclaimed(&api, tr, ctx, &prev, &seen, other, OWNS_JOB).await;
                }
                // The API server refused the Job itself: the template does not fit this cluster.
                Err(Error::Kube(kube::Error::Api(s)))
                    if (s.code == 422 || s.code == 400) && !denied_by_admission(&s.message) =>
                {
                    let o = Outcome::new(
                        Phase::Failed,
                        "InvalidTemplate",
                        format!("the Job for this TaskRun was refused: {}", s.message),
                    );
                    let next = status::next_status(&prev, &seen, &o, &now());
                    write_status(&api, tr, ctx, &prev, &next).await?;
                    return Ok(Action::await_change());
                }
                Err(e) => return Err(refused(&api, tr, ctx, &prev, &seen, "Job", e).await),
            }
        }
    };
    seen.job_name = Some(job_name.clone());
    seen.attempts = ran_before + 1;
    seen.started_at = job_status
        .as_ref()
        .and_then(|s| s.start_time.clone())
        .or(job_created);
    let outcome = status::job_outcome(&job_name, job_status.as_ref());
    let next = status::next_status(&prev, &seen, &outcome, &now());
    write_status(&api, tr, ctx, &prev, &next).await?;
    ctx.children.written_from_job(&ns, &job_name);
    // No periodic resync, finished or not: every input of this function is watched (the
    // TaskRun, its Jobs, its ConfigMaps), and a watch that cannot resume lists again: every
    // child listed, and every child gone since (relist.rs), reconciles its TaskRun. A requeue
    // would keep an entry per running TaskRun in kube-runtime's scheduler (about 640 bytes:
    // 6 MiB at 10,000) to find nothing new.
    Ok(Action::await_change())
}

/// Who holds a child's deterministic name.
enum Claim<K> {
    /// This TaskRun, which has just created it (at the time given, as the API server's
    /// metadata-only answer says).
    Created(Option<Time>),
    /// This TaskRun, which created it before.
    Ours(K),
    /// Another live TaskRun: this one is a duplicate that raced past the webhook.
    Duplicate(String),
    /// A TaskRun that is being deleted, or one that is gone and whose children the garbage
    /// collector has yet to remove: wait, then create.
    Wait(String),
    /// Something that no TaskRun controls.
    Taken(String),
}

/// Creates the child (the caches did not show it as this TaskRun's); when its name is taken,
/// reads it and says who controls it.
async fn claim<K>(
    api: &Api<K>,
    taskruns: &Api<TaskRun>,
    tr: &TaskRun,
    desired: K,
) -> Result<Claim<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
{
    let name = desired.name_any();
    match writes::create(api, &desired).await {
        Ok(meta) => Ok(Claim::Created(meta.creation_timestamp)),
        Err(kube::Error::Api(s)) if s.code == 409 => match api.get_opt(&name).await? {
            Some(existing) => judge(taskruns, tr, existing).await,
            None => Ok(Claim::Wait(format!(
                "{} {name} was just deleted",
                K::kind(&())
            ))),
        },
        Err(e) => Err(e.into()),
    }
}

/// Who controls an existing child with the name of one of this TaskRun's.
async fn judge<K>(taskruns: &Api<TaskRun>, tr: &TaskRun, existing: K) -> Result<Claim<K>, Error>
where
    K: Resource<DynamicType = ()>,
{
    let name = existing.name_any();
    let kind = K::kind(&());
    let controller = existing
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .cloned();
    match controller {
        Some(o) if Some(&o.uid) == tr.meta().uid.as_ref() => Ok(Claim::Ours(existing)),
        Some(o) if o.kind == "TaskRun" && o.api_version.starts_with("orchestrator.io/") => {
            match taskruns.get_opt(&o.name).await? {
                Some(other) if other.meta().uid.as_deref() == Some(o.uid.as_str()) => {
                    if other.meta().deletion_timestamp.is_some() {
                        Ok(Claim::Wait(format!(
                            "{kind} {name} still belongs to TaskRun {} which is being deleted",
                            o.name
                        )))
                    } else {
                        Ok(Claim::Duplicate(o.name))
                    }
                }
                _ => Ok(Claim::Wait(format!(
                    "{kind} {name} belonged to a deleted TaskRun {} and is being garbage-collected",
                    o.name
                ))),
            }
        }
        _ if existing.meta().deletion_timestamp.is_some() => {
            Ok(Claim::Wait(format!("{kind} {name} is being deleted")))
        }
        _ => Ok(Claim::Taken(format!(
            "{kind} {name} already exists and no TaskRun controls it; this version will not run: \
             remove it and recreate this TaskRun, or raise contextVersion (its children get new names)"
        ))),
    }
}

/// The TaskRun with its markdown files, read from the API server (the cache drops them,
/// `cache::trim_taskrun`). None when what is read is another object or another version.
///
/// Read at the cached resourceVersion ("not older than"): the API server answers from its
/// watch cache once that has caught up with what this controller's watch has shown (at once
/// when both come from the same API server), instead of a quorum read from etcd
/// (docs/benchmarks.md).
async fn with_files(tr: &TaskRun, api: &Api<TaskRun>) -> Result<Option<TaskRun>, Error> {
    let params = match tr.meta().resource_version.as_deref() {
        Some(rv) => GetParams::at(rv),
        None => GetParams::default(),
    };
    let fresh = api.get_with(&tr.name_any(), &params).await?;
    Ok(
        (fresh.spec.context_version == tr.spec.context_version
            && fresh.meta().uid == tr.meta().uid)
            .then_some(fresh),
    )
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
                "Duplicate",
                format!(
                    "TaskRun {other} already runs {identity} ({why}); \
                     delete this TaskRun, or add context to {other} with a higher contextVersion"
                ),
            ),
            Action::await_change(),
        ),
        Claim::Wait(message) => (
            Outcome::new(Phase::Pending, status::WAITING_FOR_PREVIOUS_OWNER, message),
            Action::requeue(status::wait_again(prev, seen.context_version, &now())),
        ),
        Claim::Taken(message) => (
            Outcome::new(Phase::Failed, "NameConflict", message),
            Action::await_change(),
        ),
    };
    let next = status::next_status(prev, seen, &outcome, &now());
    write_status(api, tr, ctx, prev, &next).await?;
    Ok(action)
}

/// True when a refusal came from an admission webhook or a ValidatingAdmissionPolicy, which
/// may lift (a freeze window, another team's rule), rather than from the object's own
/// validation. Either may answer 400 or 422, the codes of an invalid object too; the messages
/// are the API server's own.
fn denied_by_admission(message: &str) -> bool {
    (message.contains("admission webhook \"") && message.contains("denied the request"))
        || (message.contains("ValidatingAdmissionPolicy '") && message.contains("denied request"))
}

/// A child's create failed with `e`, which the reconcile returns (to be retried with
/// backoff). When the API server refused it for a reason that may pass (403: a ResourceQuota
/// used up, an admission policy, a namespace being deleted, missing RBAC; or an admission
/// webhook or policy answering 400 or 422), the status says so
/// meanwhile: the TaskRun would otherwise show nothing at all, and the reason only the
/// controller's log. Not once the status names this version's Job (a ConfigMap removed by
/// hand, then refused): that status keeps the Job, so that it is never made again.
async fn refused(
    api: &Api<TaskRun>,
    tr: &TaskRun,
    ctx: &Ctx,
    prev: &TaskRunStatus,
    seen: &Observed,
    kind: &str,
    e: Error,
) -> Error {
    let Error::Kube(kube::Error::Api(s)) = &e else {
        return e;
    };
    let job_named =
        prev.observed_context_version == Some(seen.context_version) && prev.job_name.is_some();
    let may_pass = s.code == 403 || denied_by_admission(&s.message);
    if !may_pass || job_named {
        return e;
    }
    let o = Outcome::new(
        Phase::Pending,
        status::CREATE_REFUSED,
        format!(
            "the API server refused this version's {kind}: {}; retrying",
            s.message
        ),
    );
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

/// Deletes the Jobs of older versions that are still running (background propagation: their
/// pods go too): those `cache::Superseded` noted, and with `scan` those `superseded` finds in
/// the cache and the status (a pass over the cached Jobs). Deleting rather than suspending
/// frees the pods at once and leaves nothing for a later version to trip over; the old
/// version's outcome is recorded as an Event.
async fn stop_superseded(
    tr: &TaskRun,
    ctx: &Ctx,
    jobs: &Api<Job>,
    prev: &TaskRunStatus,
    scan: bool,
) -> Result<(), Error> {
    let current = job::child_names(tr).0;
    let uid = tr.meta().uid.as_deref().unwrap_or_default();
    let mut names = ctx.children.superseded_of(uid, &ctx.taskruns).await;
    // A Job named only by the status, which another writer may have set.
    let mut named_only = None;
    if scan {
        let cached = ctx.children.jobs_of(uid).await;
        for name in superseded(&current, &cached, prev) {
            if !names.contains(&name) {
                if !cached.iter().any(|c| c.name_any() == name) {
                    named_only = Some(name.clone());
                }
                names.push(name);
            }
        }
    }
    for name in names {
        let mut params = DeleteParams::background();
        if named_only.as_ref() == Some(&name) {
            // Deleted only if this TaskRun controls it, and only that Job (by uid).
            match jobs.get_metadata_opt(&name).await? {
                Some(j) if cache::controlled_by(&j.metadata, Some(uid)) => {
                    params.preconditions = Some(Preconditions {
                        uid: j.metadata.uid,
                        resource_version: None,
                    });
                }
                found => {
                    if found.is_some() {
                        tracing::warn!(taskrun = %tr.name_any(), job = %name, "the status names a Job this TaskRun does not control; left alone");
                    }
                    continue;
                }
            }
        }
        match jobs.delete(&name, &params).await {
            Ok(_) => ctx.children.stopped(uid, &name),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                ctx.children.stopped(uid, &name);
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(taskrun = %tr.name_any(), job = %name, "stopped the Job of a superseded version");
        let event = Event {
            type_: EventType::Normal,
            reason: "Superseded".into(),
            note: Some(format!(
                "stopped Job {name}: contextVersion {} replaces it",
                tr.spec.context_version
            )),
            action: "StopJob".into(),
            secondary: None,
        };
        record(ctx, tr, event);
    }
    Ok(())
}

/// Deletes the ConfigMaps of older versions: no Job will mount them again (a version never
/// runs twice, and its Job is stopped or finished), and each holds all the context so far, up
/// to a megabyte, which would otherwise stay in etcd until the TaskRun is deleted. Done while
/// the status does not record this version yet, from the cache (one pass over it per raise);
/// one the cache does not hold yet goes when the TaskRun does (`cleanup`).
async fn drop_superseded_config_maps(tr: &TaskRun, ctx: &Ctx, ns: &str) -> Result<(), Error> {
    let current = job::child_names(tr).1;
    let uid = tr.meta().uid.as_deref().unwrap_or_default();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.base.client.clone(), ns);
    for cm in ctx.children.config_maps_of(uid).await {
        let name = cm.name_any();
        if name != current && cm.metadata.deletion_timestamp.is_none() {
            delete_ignoring_missing(&config_maps, &name).await?;
            tracing::info!(taskrun = %tr.name_any(), config_map = %name, "removed the ConfigMap of a superseded version");
        }
    }
    Ok(())
}

/// The older live TaskRun of `tr`'s identity that runs instead of `tr`, which has not run (its
/// status names no Job), if there is one: the one the webhook names too
/// (`taskrun::find_duplicate`). One pass over the cache when there is none.
fn runs_instead(tr: &TaskRun, taskruns: &Store<TaskRun>) -> Option<String> {
    let me = Existing {
        has_run: false,
        ..Existing::of(tr)
    };
    let any = taskruns.find(|o| o.same_task(tr) && Existing::of(o).holds_before(&me))?;
    // Rare (two TaskRuns of one task got past the webhook): of several, name the one that runs.
    let holders = taskruns.state();
    let named = find_duplicate(
        &tr.name_any(),
        holders
            .iter()
            .filter(|o| o.same_task(tr))
            .map(|o| Existing::of(o)),
    );
    Some(named.map_or_else(|| any.name_any(), str::to_owned))
}

/// The Jobs to stop for a TaskRun whose current version's Job is `current`: the cached ones
/// of other versions still running, and the one the status names for an older version that
/// had not finished, even when the cache does not hold it yet. Two quick raises of
/// contextVersion can reconcile the second before the Job watch brings the first one's Job,
/// and once the status records the newest version nothing looks for older Jobs again.
fn superseded(
    current: &str,
    cached: &[Arc<cache::CachedJob>],
    prev: &TaskRunStatus,
) -> Vec<String> {
    let mut names: Vec<String> = cached
        .iter()
        .filter(|old| cache::runs_another_version(old, current))
        .map(|old| old.name_any())
        .collect();
    let unfinished_before = prev
        .observed_context_version
        .is_some_and(|v| !status::is_final_for(Some(prev), v));
    if let Some(named) = prev.job_name.as_deref().filter(|_| unfinished_before) {
        let cached_already = cached.iter().any(|c| c.name_any() == named);
        if named != current && !cached_already {
            names.push(named.to_owned());
        }
    }
    names
}

/// On delete: the TaskRun's Jobs (with their pods) and ConfigMaps go, then the finalizer.
/// They are found in the caches: a list per deletion (even narrowed by label, the API server
/// reads the whole namespace from etcd for it) made deleting thousands of TaskRuns quadratic.
async fn cleanup(tr: &TaskRun, ctx: &Ctx, ns: &str) -> Result<(), Error> {
    let jobs: Api<Job> = Api::namespaced(ctx.base.client.clone(), ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.base.client.clone(), ns);
    let uid = tr.meta().uid.as_deref().unwrap_or_default();
    for j in ctx.children.jobs_of(uid).await {
        delete_ignoring_missing(&jobs, &j.name_any()).await?;
    }
    for cm in ctx.children.config_maps_of(uid).await {
        delete_ignoring_missing(&config_maps, &cm.name_any()).await?;
    }
    ctx.written.forget(uid);
    ctx.children.forget_superseded(uid);
    tracing::info!(taskrun = %tr.name_any(), namespace = ns, "removed the children of a deleted TaskRun");
    Ok(())
}

async fn delete_ignoring_missing<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Adds or removes the finalizer. The patch carries the resourceVersion it was computed
/// from, so a concurrent change to the list makes it fail (and retry) instead of losing it.
async fn set_finalizer(api: &Api<TaskRun>, tr: &TaskRun, present: bool) -> Result<(), Error> {
    let mut finalizers: Vec<String> = tr
        .finalizers()
        .iter()
        .filter(|f| f.as_str() != FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(FINALIZER.to_owned());
    }
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": tr.resource_version(),
        }
    });
    match api
        .patch_metadata(
            &tr.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Already gone: nothing left to finalize.
        Err(kube::Error::Api(s)) if s.code == 404 && !present => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Records an Event on the TaskRun in the background: an Event is for people, and the
/// TaskRun's progress must not wait for it. A new Recorder each time, so it only ever creates
/// (a shared one patches repeats into a series); the RBAC grants `create` alone.
fn record(ctx: &Ctx, tr: &TaskRun, mut event: Event) {
    event.note = event.note.map(fit_note);
    let recorder = Recorder::new(ctx.base.client.clone(), ctx.base.reporter.clone());
    let (reference, name) = (tr.object_ref(&()), tr.name_any());
    tokio::spawn(async move {
        if let Err(error) = recorder.publish(&event, &reference).await {
            tracing::warn!(taskrun = %name, %error, "could not record an Event");
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
    use super::{denied_by_admission, fit_note, superseded};
    use crate::cache::CachedJob;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::sync::Arc;
    use taskrun::{Phase, TaskRunStatus};

    fn cached(name: &str, finished: bool) -> Arc<CachedJob> {
        let conditions = finished.then(|| {
            vec![JobCondition {
                type_: "Complete".into(),
                status: "True".into(),
                ..JobCondition::default()
            }]
        });
        Arc::new(CachedJob {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            status: Some(JobStatus {
                conditions,
                ..JobStatus::default()
            }),
        })
    }

    fn status(version: i64, job: &str, phase: Phase) -> TaskRunStatus {
        TaskRunStatus {
            observed_context_version: Some(version),
            job_name: Some(job.into()),
            phase: Some(phase),
            ..TaskRunStatus::default()
        }
    }

    #[test]
    fn the_job_the_status_names_is_stopped_even_before_the_cache_holds_it() {
        // Version 2's Job was created and recorded; version 3 reconciles before the watch
        // brought that Job.
        let prev = status(2, "svc-7-v2", Phase::Pending);
        assert_eq!(superseded("svc-7-v3", &[], &prev), ["svc-7-v2"]);
        // Once cached it is named once.
        let running = [cached("svc-7-v2", false)];
        assert_eq!(superseded("svc-7-v3", &running, &prev), ["svc-7-v2"]);
    }

    #[test]
    fn finished_and_current_jobs_are_left_alone() {
        let done = status(2, "svc-7-v2", Phase::Succeeded);
        assert!(superseded("svc-7-v3", &[], &done).is_empty());
        let cached_done = [cached("svc-7-v2", true), cached("svc-7-v3", false)];
        let prev = status(2, "svc-7-v2", Phase::Running);
        assert!(superseded("svc-7-v3", &cached_done, &prev).is_empty());
        // A cached Job of a version the status never recorded still running.
        let lost = [cached("svc-7-v1", false)];
        assert_eq!(
            superseded("svc-7-v3", &lost, &prev),
            ["svc-7-v1", "svc-7-v2"]
        );
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
