//! Realistic TaskRuns and the AdmissionReviews the API server would send for them: what a
//! GitOps sync or `kubectl apply` of a task looks like, with two markdown files of a few KB.

use bytes::Bytes;
use serde_json::{Value, json};
use taskrun::Identity;
use taskrun_webhook::index::{Entry, Index};

/// Services the generated tasks belong to.
const SERVICES: u64 = 20;

/// The identity of generated task `i`: (service name, task id). Task ids start at 1.
pub fn identity(i: u64) -> (String, i64) {
    (format!("svc-{}", i % SERVICES), i as i64 + 1)
}

/// The name `kubectl apply` would use for task `i`.
pub fn name(i: u64) -> String {
    let (service, id) = identity(i);
    format!("{service}-task-{id}")
}

fn markdown(i: u64) -> (String, String) {
    let task = format!(
        "# Task {i}\n\nFix the flaky retry in the payment client.\n\n## Acceptance\n\n{}",
        "- the retry budget is honoured and the test suite passes without sleeps\n".repeat(12)
    );
    let context = format!(
        "# Context\n\nService owners: team-{}.\n\n{}",
        i % 7,
        "Logs show timeouts against the upstream after 30 s under load; see the runbook.\n"
            .repeat(20)
    );
    (task, context)
}

/// The webhook's index entry for generated task `i` in `namespace`, as its watch would make it.
pub fn index_entry(namespace: &str, i: u64) -> Entry {
    let (service, id) = identity(i);
    Entry {
        identity: Identity::new(namespace, &service, id),
        name: name(i),
        terminating: false,
        has_run: true,
        created: Some(1_764_000_000 + i as i64),
        uid: format!(
            "{:08x}-7a1c-4e2b-9f3d-{:012x}",
            i,
            i.wrapping_mul(2_654_435_761)
        ),
    }
}

/// A synced index holding tasks `0..count` of `namespace`, as the webhook's watch fills it.
pub fn index(namespace: &str, count: u64) -> Index {
    let index = Index::default();
    index.init();
    for i in 0..count {
        index.init_apply(index_entry(namespace, i));
    }
    index.init_done();
    index
}

/// A valid TaskRun for task `i` in `namespace`.
pub fn taskrun(namespace: &str, i: u64) -> Value {
    let (service, id) = identity(i);
    let (task, context) = markdown(i);
    json!({
        "apiVersion": "orchestrator.io/v1",
        "kind": "TaskRun",
        "metadata": {"name": name(i), "namespace": namespace},
        "spec": {
            "taskId": id,
            "serviceName": service,
            "contextVersion": 1,
            "markdownFiles": [
                {"filename": "task.md", "content": task},
                {"filename": "context.md", "content": context},
            ],
        },
    })
}

/// One AdmissionReview body per request kind, in a fixed mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A new task: allowed after full validation and an index miss.
    Valid,
    /// Broken spec (bad task id, service name or filename): denied with violations.
    Invalid,
    /// The identity of an indexed TaskRun under another name: denied by the index.
    Duplicate,
}

/// The kind of request `n` of a run: 60 % valid, 20 % invalid, 20 % duplicate.
pub fn kind_of(n: u64) -> Kind {
    match n % 10 {
        0 | 5 => Kind::Invalid,
        3 | 8 => Kind::Duplicate,
        _ => Kind::Valid,
    }
}

fn review(uid: u64, object: Value) -> Value {
    let gvk = json!({"group": "orchestrator.io", "version": "v1", "kind": "TaskRun"});
    let gvr = json!({"group": "orchestrator.io", "version": "v1", "resource": "taskruns"});
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("00000000-0000-4000-8000-{uid:012x}"),
            "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "name": object["metadata"]["name"],
            "namespace": object["metadata"]["namespace"],
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:argocd:argocd-application-controller",
                         "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    })
}

/// `count` review bodies for `namespace`, whose index holds tasks `0..indexed`: valid ones
/// are new tasks (ids beyond the index), duplicates reuse an indexed identity under a new
/// name, invalid ones break one rule each.
pub fn bodies(namespace: &str, indexed: u64, count: u64) -> Vec<Bytes> {
    (0..count)
        .map(|n| {
            let object = match kind_of(n) {
                Kind::Valid => taskrun(namespace, indexed + 1_000_000 + n),
                Kind::Duplicate => {
                    let held = (n * 7919) % indexed.max(1);
                    let mut tr = taskrun(namespace, held);
                    tr["metadata"]["name"] = json!(format!("{}-again-{n}", name(held)));
                    tr
                }
                Kind::Invalid => {
                    let mut tr = taskrun(namespace, indexed + 2_000_000 + n);
                    match n % 3 {
                        0 => tr["spec"]["taskId"] = json!(0),
                        1 => tr["spec"]["serviceName"] = json!("Payments_API!"),
                        _ => tr["spec"]["markdownFiles"][0]["filename"] = json!("../escape.md"),
                    }
                    tr
                }
            };
            Bytes::from(review(n, object).to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_taskruns_are_valid_and_broken_ones_are_not() {
        let parse = |v: &Value| -> taskrun::TaskRun { serde_json::from_value(v.clone()).unwrap() };
        let valid = parse(&taskrun("ns", 41));
        assert!(taskrun::validate_create(&valid.spec).is_empty());
        for (n, body) in bodies("ns", 100, 30).iter().enumerate() {
            let review: Value = serde_json::from_slice(body).unwrap();
            let tr = parse(&review["request"]["object"]);
            let violations = taskrun::validate_create(&tr.spec);
            assert_eq!(
                violations.is_empty(),
                kind_of(n as u64) != Kind::Invalid,
                "{n}: {violations:?}"
            );
            if kind_of(n as u64) == Kind::Duplicate {
                assert!(tr.spec.task_id <= 100, "a duplicate reuses an indexed id");
            }
        }
    }
}
