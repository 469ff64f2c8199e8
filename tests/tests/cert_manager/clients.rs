//! Two clients that send admission requests without pause and count what failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use taskrun::TaskRun;
use taskrun_tests::wait_for;

use crate::task_run;
use crate::tls::LoopbackTls;

#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) ok: usize,
    pub(crate) failures: Vec<String>,
    /// DER of the certificate served on each successful fresh connection.
    pub(crate) served: Vec<Vec<u8>>,
}

impl Tally {
    pub(crate) fn on_cert(&self, der: &[u8]) -> usize {
        self.served.iter().filter(|s| s.as_slice() == der).count()
    }
}

/// Waits until each client has sent `more` further requests.
pub(crate) async fn both_send_more(sent: &[Arc<AtomicUsize>; 2], more: usize) {
    let targets = sent.clone().map(|s| s.load(Ordering::Relaxed) + more);
    wait_for(
        "both clients to send requests",
        Duration::from_secs(30),
        || {
            let done = sent
                .iter()
                .zip(targets)
                .all(|(s, t)| s.load(Ordering::Relaxed) >= t);
            async move { done.then_some(()) }
        },
    )
    .await;
}

/// Server-side dry-run creates through kube-apiserver, which calls both webhooks; each
/// response must carry the mutating webhook's labels.
pub(crate) async fn admit_through_apiserver(
    api: Api<TaskRun>,
    sent: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut n = 1000;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        sent.fetch_add(1, Ordering::Relaxed);
        let task_run: TaskRun = serde_json::from_value(task_run(&format!("dry-{n}"), n))
            .unwrap_or_else(|e| panic!("{e}"));
        let params = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        match api.create(&params, &task_run).await {
            Ok(created)
                if created
                    .metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.get("orchestrator.io/task-id") == Some(&n.to_string())) =>
            {
                tally.ok += 1
            }
            Ok(created) => tally.failures.push(format!(
                "dry-{n}: not mutated: {:?}",
                created.metadata.labels
            )),
            Err(e) => tally.failures.push(format!("dry-{n}: {e}")),
        }
    }
    tally
}

/// AdmissionReviews posted straight to the webhook, each on a new TLS connection that
/// trusts only the CA from the Secret, recording which certificate each connection saw.
pub(crate) async fn admit_on_fresh_connections(
    tls: Arc<LoopbackTls>,
    namespace: String,
    sent: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut n = 5000;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        sent.fetch_add(1, Ordering::Relaxed);
        let uid = format!("rotation-{n}");
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "orchestrator.io", "version": "v1", "kind": "TaskRun"},
                "resource": {"group": "orchestrator.io", "version": "v1", "resource": "taskruns"},
                "name": format!("direct-{n}"),
                "namespace": namespace,
                "operation": "CREATE",
                "userInfo": {"username": "rotation-test"},
                "object": task_run(&format!("direct-{n}"), n),
                "dryRun": true,
            }
        });
        match tls.post("/validate", &review.to_string()).await {
            Ok((leaf, status, body)) => {
                let response: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                if status == 200
                    && response["response"]["uid"] == uid
                    && response["response"]["allowed"] == true
                {
                    tally.ok += 1;
                    tally.served.push(leaf);
                } else {
                    tally.failures.push(format!("{uid}: {status} {body}"));
                }
            }
            Err(e) => tally.failures.push(format!("{uid}: {e}")),
        }
    }
    tally
}
