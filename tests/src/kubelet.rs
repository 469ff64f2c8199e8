//! What a kubelet would do, for a control plane that has none: move a Job's pod to its end
//! through the pods/status subresource, so the real Job controller takes it from there.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::wait_for;

/// How a pod ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodEnd {
    Succeeded,
    Failed,
}

/// Waits for a live pod of Job `job` in `ns` and moves it to `end`, with a terminated
/// container status (exit code 0 or 1) as the kubelet reports it.
pub async fn finish_pod(client: &Client, ns: &str, job: &str, end: PodEnd) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("batch.kubernetes.io/job-name={job}");
    let pod = wait_for(
        &format!("a live pod of Job {ns}/{job}"),
        Duration::from_secs(60),
        || async {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?;
            list.items.into_iter().find(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                !matches!(phase, Some("Succeeded" | "Failed"))
            })
        },
    )
    .await;
    let (phase, exit_code, reason) = match end {
        PodEnd::Succeeded => ("Succeeded", 0, "Completed"),
        PodEnd::Failed => ("Failed", 1, "Error"),
    };
    let (container, image) = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
        .unwrap_or_default();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({"status": {
        "phase": phase,
        "containerStatuses": [{
            "name": container, "image": image, "imageID": "",
            "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "reason": reason,
                                     "startedAt": now, "finishedAt": now}},
        }],
    }});
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap_or_else(|e| panic!("set pod {ns}/{} to {phase}: {e}", pod.name_any()));
}
