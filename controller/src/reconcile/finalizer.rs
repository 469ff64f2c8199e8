//! The finalizer `orchestrator.io/cleanup`: put on a TaskRun, and on its deletion its
//! children removed before it is taken off.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PropagationPolicy};
use kube::{Resource, ResourceExt};
use taskrun::{FINALIZER, TaskRun, labels};

use super::Error;
use crate::cache;
use crate::controller::Ctx;
use crate::status::{self, Deletion};
use crate::{job, writes};

/// On delete: the TaskRun's Jobs (with their pods) and ConfigMaps go, then the finalizer. The
/// Jobs in the foreground: each keeps its name until its pods have stopped, so that the task
/// created again waits for them (`WaitingForPreviousOwner`) instead of running beside them.
/// They are found in the caches: a list per deletion (even narrowed by label, the API server
/// reads the whole namespace from etcd for it) made deleting thousands of TaskRuns quadratic.
/// Only the Job the status names, when the Job watch has not shown it yet, is asked of the API
/// server.
pub(super) async fn cleanup(tr: &TaskRun, ctx: &Ctx, ns: &str) -> Result<(), Error> {
    let jobs: Api<Job> = Api::namespaced(ctx.base.client.clone(), ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.base.client.clone(), ns);
    let uid = tr.meta().uid.as_deref().unwrap_or_default();
    let held = |child: String| {
        move |e: &kube::Error| {
            let meanwhile = format!("the TaskRun stays (finalizer {FINALIZER}) until it is gone");
            super::delete_refused(ctx, tr, &child, e, &meanwhile);
        }
    };
    let latest = ctx.written.latest(uid, tr.status.as_ref());
    let (current_job, current_config_map) = job::child_names(tr);
    // Besides the children it controls, those an orphaning delete of the TaskRun left without
    // an owner (`kubectl delete --cascade=orphan`, Argo CD's `PrunePropagationPolicy=orphan`):
    // the garbage collector takes their owner references off, often before this runs. The
    // latest version's Job would run on with no TaskRun, and its names would hold up the task
    // created again for good (`NameConflict`), so they go all the same, found by their names
    // (of this identity's latest versions, and made by this controller: the caches watch no
    // other), as an orphaning delete of a Job is made a foreground one below.
    let ours = |meta: &ObjectMeta, made_here: bool| {
        cache::controlled_by(meta, Some(uid))
            || (cache::controller_ref(meta).is_none() && made_here)
    };
    let mut job_metas: Vec<ObjectMeta> = ctx
        .children
        .jobs_of(uid)
        .await
        .iter()
        .map(|j| j.metadata.clone())
        .collect();
    let named = latest.job_name.clone();
    for name in names([Some(current_job), latest.job_name]) {
        if job_metas
            .iter()
            .any(|m| m.name.as_deref() == Some(name.as_str()))
        {
            continue;
        }
        let found = match ctx.children.job(ns, &name).await {
            Some(cached) => Some(cached.metadata.clone()).filter(|m| ours(m, true)),
            // The status names a Job the watch has not shown: the TaskRun deleted right after
            // its Job was made, or while the Job watch is down or re-listing. The garbage
            // collector would delete that Job in the background, freeing its name at once, and
            // the task created again would run beside the old pod.
            None if named.as_deref() == Some(name.as_str()) => jobs
                .get_metadata_opt(&name)
                .await?
                .map(|j| j.metadata)
                .filter(|m| {
                    let label = m.labels.as_ref().and_then(|l| l.get(labels::MANAGED_BY));
                    ours(m, label.is_some_and(|v| v == labels::MANAGED_BY_VALUE))
                }),
            None => None,
        };
        job_metas.extend(found);
    }
    // One being deleted with its pods already (by an earlier pass whose finalizer write was
    // stale, say) is left to go; one whose pods an orphaning delete left running is deleted
    // again, in the foreground, which stops them.
    for meta in &job_metas {
        if status::deletion(meta) == Deletion::StoppingPods {
            continue;
        }
        let name = meta.name.as_deref().unwrap_or_default();
        writes::delete_child(
            &jobs,
            name,
            meta.uid.as_deref(),
            PropagationPolicy::Foreground,
        )
        .await
        .inspect_err(held(format!("Job {name}")))?;
    }
    let mut config_maps_left = ctx.children.config_maps_of(uid).await;
    for name in names([Some(current_config_map), latest.config_map_name]) {
        if config_maps_left.iter().any(|cm| cm.name_any() == name) {
            continue;
        }
        if let Some(cm) = ctx.children.config_map(ns, &name).await
            && cache::controller_ref(&cm.metadata).is_none()
        {
            config_maps_left.push(cm);
        }
    }
    for cm in config_maps_left {
        let (name, cm_uid) = (cm.name_any(), cm.metadata.uid.as_deref());
        writes::delete_child(&config_maps, &name, cm_uid, PropagationPolicy::Background)
            .await
            .inspect_err(held(format!("ConfigMap {name}")))?;
    }
    ctx.written.forget(uid);
    ctx.starting.settled(uid);
    ctx.children.forget_superseded(uid);
    tracing::info!(taskrun = %tr.name_any(), namespace = ns, "removed the children of a deleted TaskRun");
    Ok(())
}

/// The names given, each once.
fn names<const N: usize>(names: [Option<String>; N]) -> Vec<String> {
    let mut once: Vec<String> = Vec::with_capacity(N);
    for name in names.into_iter().flatten() {
        if !once.contains(&name) {
            once.push(name);
        }
    }
    once
}

/// How a finalizer write went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Written {
    Done,
    /// The TaskRun had changed since the copy it was computed from (`writes::stale`): nothing
    /// was written.
    Stale,
}

/// Adds or removes the finalizer. The patch carries the resourceVersion it was computed
/// from, so a concurrent change to the list makes it fail (`Written::Stale`, to be tried again
/// on a fresher copy) instead of losing it.
pub(super) async fn set_finalizer(
    api: &Api<TaskRun>,
    tr: &TaskRun,
    present: bool,
) -> Result<Written, Error> {
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
        Ok(_) => Ok(Written::Done),
        // Already gone: nothing left to finalize.
        Err(kube::Error::Api(s)) if s.code == 404 && !present => Ok(Written::Done),
        Err(kube::Error::Api(s)) if writes::stale(&s) => Ok(Written::Stale),
        Err(e) => Err(e.into()),
    }
}
