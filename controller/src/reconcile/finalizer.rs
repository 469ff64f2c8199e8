//! The finalizer `orchestrator.io/cleanup`: put on a TaskRun, and on its deletion its
//! children removed before it is taken off.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PropagationPolicy};
use kube::{Resource, ResourceExt};
use taskrun::{FINALIZER, TaskRun};

use super::Error;
use crate::cache;
use crate::controller::Ctx;
use crate::status::{self, Deletion};
use crate::writes;

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
    let cached = ctx.children.jobs_of(uid).await;
    // The TaskRun deleted right after its Job was made, or while the Job watch is down or
    // re-listing: the garbage collector would delete that Job in the background, freeing its
    // name at once, and the task created again would run beside the old pod.
    let named = ctx.written.latest(uid, tr.status.as_ref()).job_name;
    let uncached = match named.filter(|n| !cached.iter().any(|j| j.name_any() == *n)) {
        Some(name) => jobs
            .get_metadata_opt(&name)
            .await?
            .filter(|j| cache::controlled_by(&j.metadata, Some(uid))),
        None => None,
    };
    // One being deleted with its pods already (by an earlier pass whose finalizer write was
    // stale, say) is left to go; one whose pods an orphaning delete left running is deleted
    // again, in the foreground, which stops them.
    let found = cached.iter().map(|j| &j.metadata);
    for meta in found.chain(uncached.as_ref().map(|j| &j.metadata)) {
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
    for cm in ctx.children.config_maps_of(uid).await {
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
