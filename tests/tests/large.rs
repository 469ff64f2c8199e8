//! The largest TaskRuns the API admits (about 1 MB of markdown each), on the real control
//! plane: a webhook and a controller started afresh list them all and stay within the memory
//! limits of their Deployments in `manifests/base`. kube buffers a whole list page, so what
//! bounds this is how many TaskRuns a page holds (`taskrun::client::LIST_PAGE_SIZE`).

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use taskrun::TaskRun;
use taskrun::limits::{MAX_CONTENT_LEN, MAX_TOTAL_BYTES};
use taskrun_tests::controller::Controller;
use taskrun_tests::webhook::Webhook;
use taskrun_tests::{ControlPlane, memory_kib, memory_limit_kib, wait_for};

use std::time::Duration;

const TASKRUNS: i64 = 100;

/// A TaskRun with as much markdown as a TaskRun may hold.
fn largest(i: i64) -> TaskRun {
    let per_file = (MAX_TOTAL_BYTES / 4 - 16).min(MAX_CONTENT_LEN);
    let files: Vec<_> = (0..4)
        .map(|f| json!({"filename": format!("f{f}.md"), "content": "x".repeat(per_file)}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "orchestrator.io/v1", "kind": "TaskRun",
        "metadata": {"name": format!("large-{i}")},
        "spec": {"taskId": i, "serviceName": "large", "markdownFiles": files},
    }))
    .expect("a valid TaskRun")
}

/// The most memory a process has had resident, in KiB.
fn peak_kib(pid: u32) -> u64 {
    memory_kib(pid, "VmHWM").unwrap_or_else(|| panic!("no VmHWM for pid {pid}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_taskruns_are_listed_within_the_deployments_memory_limits() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("large").await;
    let api: Api<TaskRun> = Api::namespaced(client.clone(), &ns);
    let failed: Vec<_> = futures::stream::iter(1..=TASKRUNS)
        .map(|i| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &largest(i)).await.err() }
        })
        .buffer_unordered(4)
        .filter_map(|e| async move { e })
        .collect()
        .await;
    assert!(failed.is_empty(), "creates failed: {failed:?}");

    // Ready means its index has synced: every TaskRun listed.
    let webhook = Webhook::start(cp).await;
    let webhook_peak = peak_kib(webhook.pid());

    let controller = Controller::start(cp, &[&format!("--namespace={ns}")]);
    // A list of these TaskRuns is 100 MB: asked every 200 ms, it took the API server's CPU
    // from the controller being measured. Their Jobs are listed cheaply (metadata) until all
    // exist; the statuses, written right after, are then read once a second.
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    wait_for(
        "a Job for every TaskRun",
        Duration::from_secs(180),
        || async {
            let list = jobs.list_metadata(&ListParams::default()).await.ok()?;
            (list.items.len() as i64 == TASKRUNS).then_some(())
        },
    )
    .await;
    wait_for(
        "every TaskRun to name its Job",
        Duration::from_secs(60),
        || async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let list = api.list(&ListParams::default()).await.ok()?;
            let named = list
                .items
                .iter()
                .filter(|t| {
                    t.status
                        .as_ref()
                        .and_then(|s| s.job_name.as_ref())
                        .is_some()
                })
                .count();
            (named as i64 == TASKRUNS).then_some(())
        },
    )
    .await;
    let controller_peak = peak_kib(controller.pid());

    eprintln!("peak RSS: webhook {webhook_peak} KiB, controller {controller_peak} KiB");
    let (webhook_limit, controller_limit) = (
        memory_limit_kib("webhook.yaml"),
        memory_limit_kib("controller.yaml"),
    );
    assert!(
        webhook_peak < webhook_limit,
        "the webhook peaked at {webhook_peak} KiB listing {TASKRUNS} of the largest TaskRuns; its limit is {webhook_limit} KiB"
    );
    assert!(
        controller_peak < controller_limit,
        "the controller peaked at {controller_peak} KiB reconciling {TASKRUNS} of the largest TaskRuns; its limit is {controller_limit} KiB"
    );
}
