//! What a kubelet would do, for a control plane that has none: start a Job's pod or move it to
//! its end through the pods/status subresource, so the real Job controller takes it from there.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
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
    let pod = live_pod(&pods, ns, job).await;
    let (phase, exit_code, reason) = match end {
        PodEnd::Succeeded => ("Succeeded", 0, "Completed"),
        PodEnd::Failed => ("Failed", 1, "Error"),
    };
    let (container, image) = container_of(&pod);
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
    patch_status(&pods, &pod, &status, phase).await;
}

/// Waits for a live pod of Job `job` in `ns` and reports it running and ready, as the kubelet
/// does once its container has started (the Job controller then counts it in `ready`).
pub async fn start_pod(client: &Client, ns: &str, job: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = live_pod(&pods, ns, job).await;
    let (container, image) = container_of(&pod);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({"status": {
        "phase": "Running",
        "startTime": now,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
        ],
        "containerStatuses": [{
            "name": container, "image": image, "imageID": "",
            "ready": true, "started": true, "restartCount": 0,
            "state": {"running": {"startedAt": now}},
        }],
    }});
    patch_status(&pods, &pod, &status, "Running").await;
}

/// A pod of Job `job` that has not ended, once there is one.
async fn live_pod(pods: &Api<Pod>, ns: &str, job: &str) -> Pod {
    let selector = format!("batch.kubernetes.io/job-name={job}");
    wait_for(
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
    .await
}

/// Waits for a live pod of Job `job` in `ns` and binds it to a node (none runs here), and
/// returns its name. Bound, a pod deleted gracefully stays, being deleted, until its kubelet
/// would confirm the end: a test ends it with a delete of grace period 0.
pub async fn bind_pod(client: &Client, ns: &str, job: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = live_pod(&pods, ns, job).await.name_any();
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod},
                         "target": {"apiVersion": "v1", "kind": "Node", "name": "node-a"}});
    pods.create_subresource::<_, serde_json::Value>(
        "binding",
        &pod,
        &PostParams::default(),
        &binding,
    )
    .await
    .unwrap_or_else(|e| panic!("bind pod {pod}: {e}"));
    pod
}

/// What a kubelet does once pod `pod` of Job `job`, being deleted, has stopped: reports it
/// Failed (its container killed), then removes it.
pub async fn confirm_stopped(client: &Client, ns: &str, job: &str, pod: &str) {
    finish_pod(client, ns, job, PodEnd::Failed).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    pods.delete(pod, &now)
        .await
        .unwrap_or_else(|e| panic!("remove pod {pod}: {e}"));
}

/// The pod's (first) container's name and image.
fn container_of(pod: &Pod) -> (String, String) {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
        .unwrap_or_default()
}

async fn patch_status(pods: &Api<Pod>, pod: &Pod, status: &serde_json::Value, phase: &str) {
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(status),
    )
    .await
    .unwrap_or_else(|e| panic!("set pod {} to {phase}: {e}", pod.name_any()));
}
