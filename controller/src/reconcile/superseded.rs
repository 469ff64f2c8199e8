//! Older versions of a TaskRun: their Jobs still running are stopped, their ConfigMaps
//! removed.

use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PropagationPolicy};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use taskrun::{TaskRun, TaskRunStatus};

use super::Error;
use super::events::record;
use crate::cache::ChildRef;
use crate::controller::Ctx;
use crate::{cache, job, status, writes};

/// An older version's Job that a reconcile failed to stop, and why.
pub(super) struct NotStopped {
    pub job: String,
    pub error: Error,
}

/// Deletes the Jobs of older versions that are still running: those `cache::Superseded`
/// noted, and with `scan` those `superseded` finds in the cache and the status (a pass over the
/// cached Jobs). Deleting rather than suspending leaves nothing for a later version to trip
/// over; the old version's outcome is recorded as an Event. In the foreground: each Job stays
/// until its pods have stopped, and the new version's Job is made only then
/// (`PreviousVersionStopping`); each one deleted is noted (`Children::deleted`), and not
/// deleted again while the cache still shows it as it was. One that could not be stopped is
/// noted to be stopped (`Children::to_stop`): the status may record the new version meanwhile
/// (`DeleteRefused`), after which no reconcile scans for it.
pub(super) async fn stop_superseded(
    tr: &TaskRun,
    ctx: &Ctx,
    jobs: &Api<Job>,
    prev: &TaskRunStatus,
    scan: bool,
) -> Result<(), NotStopped> {
    let current = job::child_names(tr).0;
    let uid = tr.meta().uid.as_deref().unwrap_or_default();
    let mut stop = ctx.children.superseded_of(uid, &ctx.taskruns).await;
    if scan {
        let cached = ctx.children.jobs_of(uid).await;
        let deleted = ctx.children.stopping(uid);
        for child in superseded(&current, &cached, prev) {
            let noted = stop.iter().any(|s| s.name == child.name);
            let deleted_already = deleted
                .iter()
                .any(|d| d.name == child.name && (child.uid.is_none() || child.uid == d.uid));
            if !noted && !deleted_already {
                stop.push(child);
            }
        }
    }
    let ns = tr.namespace().unwrap_or_default();
    let mut first_failure = None;
    for child in stop {
        // Finished since it was noted (its watch event may come before a failed stop noted
        // it again): kept with its pods' logs, nothing to stop.
        if let Some(cached) = ctx.children.job(&ns, &child.name).await
            && cached.metadata.uid == child.uid
            && !cache::runs_another_version(&cached, &current)
        {
            ctx.children.stopped(uid, &child.name);
            continue;
        }
        if let Err(failure) = stop_one(tr, ctx, jobs, uid, child).await {
            first_failure.get_or_insert(failure);
        }
    }
    first_failure.map_or(Ok(()), Err)
}

/// Stops one Job of an older version (`stop_superseded`). A failure notes it to be stopped,
/// with the uid found for it.
async fn stop_one(
    tr: &TaskRun,
    ctx: &Ctx,
    jobs: &Api<Job>,
    uid: &str,
    child: ChildRef,
) -> Result<(), NotStopped> {
    let name = child.name.clone();
    let not_stopped = |job: &ChildRef, error: Error| {
        ctx.children.to_stop(uid, job);
        NotStopped {
            job: job.name.clone(),
            error,
        }
    };
    let job_uid = match child.uid.clone() {
        Some(job_uid) => job_uid,
        // A Job named only by the status, which another writer may have set: deleted only if
        // this TaskRun controls it, and only that Job (by uid).
        None => match jobs.get_metadata_opt(&name).await {
            Err(e) => return Err(not_stopped(&child, e.into())),
            Ok(Some(j)) if cache::controlled_by(&j.metadata, Some(uid)) => {
                j.metadata.uid.unwrap_or_default()
            }
            Ok(found) => {
                if found.is_some() {
                    tracing::warn!(taskrun = %tr.name_any(), namespace = tr.namespace().unwrap_or_default(), job = %name, "the status names a Job this TaskRun does not control; left alone");
                }
                ctx.children.stopped(uid, &name);
                return Ok(());
            }
        },
    };
    let deleted = writes::delete_child(jobs, &name, Some(&job_uid), PropagationPolicy::Foreground)
        .await
        .inspect_err(|e| {
            let waits = format!(
                "contextVersion {} runs once it is gone",
                tr.spec.context_version
            );
            super::delete_refused(ctx, tr, &format!("Job {name}"), e, &waits);
        })
        .map_err(|e| not_stopped(&ChildRef::new(&name, Some(&job_uid)), e.into()))?;
    if !deleted {
        ctx.children.stopped(uid, &name);
        return Ok(());
    }
    ctx.children.deleted(uid, &name, &job_uid);
    tracing::info!(taskrun = %tr.name_any(), namespace = tr.namespace().unwrap_or_default(), job = %name, "stopping the Job of a superseded version");
    let event = Event {
        type_: EventType::Normal,
        reason: "Superseded".into(),
        note: Some(format!(
            "stopping Job {name}: contextVersion {} replaces it",
            tr.spec.context_version
        )),
        action: "StopJob".into(),
        secondary: None,
    };
    record(ctx, tr, event);
    Ok(())
}

/// Deletes the ConfigMap of the version the status records, once a newer one is asked for:
/// no Job mounts it again (a version never runs twice, and its Job is stopped or finished), and
/// it holds all the context so far, up to a megabyte, which would otherwise stay in etcd until
/// the TaskRun goes. Found by the name the status gives, so this costs no pass over the cache;
/// a version whose status was never written keeps its ConfigMap until the TaskRun is deleted
/// (`finalizer::cleanup`). Best effort: a refusal is logged, and the new version runs anyway.
pub(super) async fn drop_superseded_config_map(
    tr: &TaskRun,
    ctx: &Ctx,
    ns: &str,
    prev: &TaskRunStatus,
) {
    let current = job::child_names(tr).1;
    let Some(name) = prev.config_map_name.as_deref().filter(|n| *n != current) else {
        return;
    };
    let uid = tr.meta().uid.as_deref();
    let Some(cm) = ctx
        .children
        .config_map(ns, name)
        .await
        .filter(|cm| cache::controlled_by(&cm.metadata, uid))
    else {
        return;
    };
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.base.client.clone(), ns);
    let cm_uid = cm.metadata.uid.as_deref();
    match writes::delete_child(&config_maps, name, cm_uid, PropagationPolicy::Background).await {
        Ok(_) => {
            tracing::info!(taskrun = %tr.name_any(), namespace = tr.namespace().unwrap_or_default(), config_map = %name, "removed the ConfigMap of a superseded version")
        }
        Err(error) => {
            tracing::warn!(taskrun = %tr.name_any(), namespace = tr.namespace().unwrap_or_default(), config_map = %name, %error, "could not remove the ConfigMap of a superseded version; it goes with the TaskRun")
        }
    }
}

/// The Jobs to stop for a TaskRun whose current version's Job is `current`: the cached ones
/// of other versions still running, and the one the status names for an older version that
/// had not finished, even when the cache does not hold it yet. Two quick raises of
/// contextVersion can reconcile the second before the Job watch brings the first one's Job,
/// and once the status records the newest version nothing looks for older Jobs again (that
/// one comes without a uid: it is not cached).
fn superseded(
    current: &str,
    cached: &[Arc<cache::CachedJob>],
    prev: &TaskRunStatus,
) -> Vec<ChildRef> {
    let mut names: Vec<ChildRef> = cached
        .iter()
        .filter(|old| cache::runs_another_version(old, current))
        .map(|old| ChildRef::of(&old.metadata))
        .collect();
    let unfinished_before = prev
        .observed_context_version
        .is_some_and(|v| !status::is_final_for(Some(prev), v));
    if let Some(named) = prev.job_name.as_deref().filter(|_| unfinished_before) {
        let cached_already = cached.iter().any(|c| c.name_any() == named);
        if named != current && !cached_already {
            names.push(ChildRef::new(named, None));
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::superseded;
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
                uid: Some(format!("uid-{name}")),
                ..ObjectMeta::default()
            },
            status: Some(JobStatus {
                conditions,
                ..JobStatus::default()
            }),
        })
    }

    /// Each Job to stop, with the uid its delete will name (`-` for none).
    fn stop(current: &str, cached: &[Arc<CachedJob>], prev: &TaskRunStatus) -> Vec<String> {
        superseded(current, cached, prev)
            .into_iter()
            .map(|c| format!("{} {}", c.name, c.uid.as_deref().unwrap_or("-")))
            .collect()
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
        assert_eq!(stop("svc-7-v3", &[], &prev), ["svc-7-v2 -"]);
        // Once cached it is named once, with the uid it was cached with.
        let running = [cached("svc-7-v2", false)];
        assert_eq!(stop("svc-7-v3", &running, &prev), ["svc-7-v2 uid-svc-7-v2"]);
    }

    #[test]
    fn finished_and_current_jobs_are_left_alone() {
        let done = status(2, "svc-7-v2", Phase::Succeeded);
        assert!(stop("svc-7-v3", &[], &done).is_empty());
        let cached_done = [cached("svc-7-v2", true), cached("svc-7-v3", false)];
        let prev = status(2, "svc-7-v2", Phase::Running);
        assert!(stop("svc-7-v3", &cached_done, &prev).is_empty());
        // A cached Job of a version the status never recorded still running.
        let lost = [cached("svc-7-v1", false)];
        assert_eq!(
            stop("svc-7-v3", &lost, &prev),
            ["svc-7-v1 uid-svc-7-v1", "svc-7-v2 -"]
        );
    }
}
