//! The mutation: a JSON patch that adds or corrects the project's own labels on a TaskRun and,
//! when it is created, adds the controller's finalizer; it touches nothing else. Pure, so it is
//! tested without a server.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::Value;
use taskrun::labels::{AGENT_NAME, taskrun_labels};
use taskrun::{FINALIZER, TaskRunSpec};

/// The operations that make `labels` carry the labels `spec` calls for. Empty when they
/// already do, so applying the result and calling this again yields nothing.
///
/// A wanted value that is not a valid label value (a spec the schema will refuse anyway, such
/// as a negative taskId) is left alone, so the user sees the spec error rather than a label
/// error caused by the webhook.
pub fn label_patch(
    labels: Option<&BTreeMap<String, String>>,
    spec: &TaskRunSpec,
) -> Vec<PatchOperation> {
    let wanted: BTreeMap<&str, String> = taskrun_labels(spec)
        .into_iter()
        .filter(|(_, v)| is_label_value(v))
        .collect();
    let Some(labels) = labels else {
        if wanted.is_empty() {
            return Vec::new();
        }
        // No labels map at all: one operation creates it (a pointer below it would fail).
        let map = wanted
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v)))
            .collect();
        return vec![PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "labels"]),
            value: Value::Object(map),
        })];
    };
    let mut ops = Vec::new();
    for (key, value) in wanted {
        let path = label_path(key);
        match labels.get(key) {
            Some(current) if *current == value => {}
            Some(_) => ops.push(PatchOperation::Replace(ReplaceOperation {
                path,
                value: Value::String(value),
            })),
            None => ops.push(PatchOperation::Add(AddOperation {
                path,
                value: Value::String(value),
            })),
        }
    }
    // An agent label left over from an agentName that has since been removed is stale.
    if spec.agent_name.is_none() && labels.contains_key(AGENT_NAME) {
        ops.push(PatchOperation::Remove(RemoveOperation {
            path: label_path(AGENT_NAME),
        }));
    }
    ops
}

/// The operation that adds the controller's finalizer to a TaskRun being created, or None
/// when `finalizers` already holds it.
///
/// Stamped at creation so that the controller does not have to write every new TaskRun once
/// more just to add it (a write costs the API server as much as the status write does,
/// docs/benchmarks.md). Only at creation: a TaskRun whose finalizer was removed while the
/// controller is away (docs/install.md, uninstalling) must not get it back from an update; the
/// controller, while it runs, puts it back itself, as it adds it to a TaskRun admitted without
/// this webhook.
pub fn finalizer_patch(finalizers: Option<&[String]>) -> Option<PatchOperation> {
    match finalizers {
        Some(list) if list.iter().any(|f| f == FINALIZER) => None,
        // Appended, so the finalizers a user set keep their order.
        Some(_) => Some(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "finalizers", "-"]),
            value: Value::String(FINALIZER.to_owned()),
        })),
        None => Some(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "finalizers"]),
            value: Value::Array(vec![Value::String(FINALIZER.to_owned())]),
        })),
    }
}

/// `/metadata/labels/<key>` with `/` in the key escaped as `~1` (RFC 6901).
fn label_path(key: &str) -> PointerBuf {
    PointerBuf::from_tokens(["metadata", "labels", key])
}

/// A Kubernetes label value: at most 63 characters, alphanumerics with '-', '_' or '.'
/// inside, starting and ending with an alphanumeric (or empty).
fn is_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    v.is_empty()
        || (b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use taskrun::MarkdownFile;
    use taskrun::labels::{CONTEXT_VERSION, SERVICE_NAME, TASK_ID};

    fn spec(agent: Option<&str>) -> TaskRunSpec {
        TaskRunSpec {
            task_id: 42,
            service_name: "billing".into(),
            agent_name: agent.map(Into::into),
            context_version: 3,
            markdown_files: vec![MarkdownFile {
                filename: "task.md".into(),
                content: "do it".into(),
                file_type: None,
            }],
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Applies the patch to an object with these labels (None: no labels key) and returns the
    /// labels afterwards, checking that a second pass is empty.
    fn apply(before: Option<BTreeMap<String, String>>, spec: &TaskRunSpec) -> Value {
        let ops = label_patch(before.as_ref(), spec);
        let mut obj = json!({"metadata": {"name": "t", "namespace": "ns"}});
        if let Some(before) = &before {
            obj["metadata"]["labels"] = json!(before);
        }
        json_patch::patch(&mut obj, &ops).expect("patch applies");
        let after: BTreeMap<String, String> =
            serde_json::from_value(obj["metadata"]["labels"].clone()).expect("labels map");
        assert_eq!(label_patch(Some(&after), spec), vec![], "not idempotent");
        obj["metadata"]["labels"].take()
    }

    #[test]
    fn missing_labels_map_is_created_in_one_operation() {
        let ops = label_patch(None, &spec(Some("claude")));
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].path().as_str(), "/metadata/labels");
        assert_eq!(
            apply(None, &spec(Some("claude"))),
            json!({
                TASK_ID: "42", SERVICE_NAME: "billing", CONTEXT_VERSION: "3", AGENT_NAME: "claude"
            })
        );
    }

    #[test]
    fn keys_are_escaped_in_pointers() {
        let ops = label_patch(Some(&labels(&[])), &spec(None));
        let paths: Vec<&str> = ops.iter().map(|o| o.path().as_str()).collect();
        assert_eq!(
            paths,
            [
                "/metadata/labels/orchestrator.io~1context-version",
                "/metadata/labels/orchestrator.io~1service-name",
                "/metadata/labels/orchestrator.io~1task-id",
            ]
        );
        let json = serde_json::to_value(&ops).expect("serializes");
        assert_eq!(json[0]["op"], "add");
        assert_eq!(
            json[0]["path"],
            "/metadata/labels/orchestrator.io~1context-version"
        );
    }

    #[test]
    fn wrong_values_are_corrected_and_other_labels_kept() {
        let before = labels(&[
            (TASK_ID, "1"),
            (CONTEXT_VERSION, "3"),
            ("app.kubernetes.io/instance", "argo-app"),
            ("team", "payments"),
        ]);
        let ops = label_patch(Some(&before), &spec(None));
        assert!(matches!(ops[0], PatchOperation::Add(_)), "{ops:?}"); // service-name missing
        assert!(matches!(ops[1], PatchOperation::Replace(_)), "{ops:?}"); // task-id wrong
        assert_eq!(ops.len(), 2);
        assert_eq!(
            apply(Some(before), &spec(None)),
            json!({
                TASK_ID: "42", SERVICE_NAME: "billing", CONTEXT_VERSION: "3",
                "app.kubernetes.io/instance": "argo-app", "team": "payments"
            })
        );
    }

    #[test]
    fn a_stale_agent_label_is_removed() {
        let before = labels(&[
            (TASK_ID, "42"),
            (SERVICE_NAME, "billing"),
            (CONTEXT_VERSION, "3"),
            (AGENT_NAME, "old-agent"),
        ]);
        let ops = label_patch(Some(&before), &spec(None));
        assert!(matches!(&ops[..], [PatchOperation::Remove(_)]), "{ops:?}");
        let after = apply(Some(before), &spec(None));
        assert!(after.get(AGENT_NAME).is_none(), "{after}");
    }

    #[test]
    fn correct_labels_need_no_patch() {
        let before = labels(&[
            (TASK_ID, "42"),
            (SERVICE_NAME, "billing"),
            (CONTEXT_VERSION, "3"),
            (AGENT_NAME, "claude"),
            ("app.kubernetes.io/instance", "x"),
        ]);
        assert_eq!(label_patch(Some(&before), &spec(Some("claude"))), vec![]);
    }

    #[test]
    fn invalid_label_values_are_not_written() {
        let mut s = spec(Some("Not A Label"));
        s.task_id = -1;
        let after = apply(Some(labels(&[(TASK_ID, "7")])), &s);
        // The schema refuses this spec; the webhook leaves those labels as they were.
        assert_eq!(
            after,
            json!({TASK_ID: "7", SERVICE_NAME: "billing", CONTEXT_VERSION: "3"})
        );
    }

    /// Applies the finalizer patch to an object with these finalizers (None: no finalizers
    /// key) and returns them afterwards, checking that a second pass is empty.
    fn finalize(before: Option<Value>) -> Value {
        let mut obj = json!({"metadata": {"name": "t"}});
        if let Some(before) = before {
            obj["metadata"]["finalizers"] = before;
        }
        let list: Option<Vec<String>> =
            serde_json::from_value(obj["metadata"]["finalizers"].clone()).expect("finalizers");
        let ops: Vec<_> = finalizer_patch(list.as_deref()).into_iter().collect();
        json_patch::patch(&mut obj, &ops).expect("patch applies");
        let after: Vec<String> =
            serde_json::from_value(obj["metadata"]["finalizers"].clone()).expect("finalizers");
        assert_eq!(finalizer_patch(Some(&after)), None, "not idempotent");
        obj["metadata"]["finalizers"].take()
    }

    #[test]
    fn the_finalizer_is_added_once_after_any_a_user_set() {
        assert_eq!(finalize(None), json!([FINALIZER]));
        assert_eq!(finalize(Some(json!([]))), json!([FINALIZER]));
        assert_eq!(
            finalize(Some(json!(["example.com/hold"]))),
            json!(["example.com/hold", FINALIZER])
        );
        assert_eq!(
            finalize(Some(json!([FINALIZER, "example.com/hold"]))),
            json!([FINALIZER, "example.com/hold"])
        );
    }

    #[test]
    fn label_values_follow_the_kubernetes_rule() {
        for ok in ["", "a", "42", "a.b_c-d", &"x".repeat(63)] {
            assert!(is_label_value(ok), "{ok:?}");
        }
        for bad in ["-1", "a-", "a b", "é", &"x".repeat(64)] {
            assert!(!is_label_value(bad), "{bad:?}");
        }
    }
}
