//! Label keys the project owns, and the labels it wants on TaskRuns and their children.
//! Nothing here touches a label the project does not own (`app.kubernetes.io/instance` is
//! Argo CD's tracking label, for one).

use std::collections::BTreeMap;

use crate::TaskRunSpec;

pub const TASK_ID: &str = "orchestrator.io/task-id";
pub const SERVICE_NAME: &str = "orchestrator.io/service-name";
pub const CONTEXT_VERSION: &str = "orchestrator.io/context-version";
pub const AGENT_NAME: &str = "orchestrator.io/agent-name";
/// On children: the name of the TaskRun that owns them.
pub const TASKRUN: &str = "orchestrator.io/taskrun";
/// On children: who manages them.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "taskrun-controller";

/// Every label key the webhook may write on a TaskRun.
pub const TASKRUN_KEYS: [&str; 4] = [TASK_ID, SERVICE_NAME, CONTEXT_VERSION, AGENT_NAME];

/// The project's labels a TaskRun with this spec should carry. `agent-name` is present only
/// when the spec names an agent; when it does not, the label should be absent.
pub fn taskrun_labels(spec: &TaskRunSpec) -> BTreeMap<&'static str, String> {
    let mut labels = BTreeMap::new();
    labels.insert(TASK_ID, spec.task_id.to_string());
    labels.insert(SERVICE_NAME, spec.service_name.clone());
    labels.insert(CONTEXT_VERSION, spec.context_version.to_string());
    if let Some(agent) = &spec.agent_name {
        labels.insert(AGENT_NAME, agent.clone());
    }
    labels
}

/// The labels of a TaskRun's ConfigMap and Job: the TaskRun's own plus the owner's name and
/// `app.kubernetes.io/managed-by`.
pub fn child_labels(taskrun_name: &str, spec: &TaskRunSpec) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = taskrun_labels(spec)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    labels.insert(TASKRUN.to_owned(), owner_label_value(taskrun_name));
    labels.insert(MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned());
    labels
}

/// The value of the `orchestrator.io/taskrun` label for an owner named `name`. A label value
/// is at most 63 characters; object names can be 253. Longer names are cut, so the label only
/// narrows a search: the owner reference, not this label, is what ties a child to its TaskRun.
pub fn owner_label_value(name: &str) -> String {
    let cut: String = name.chars().take(63).collect();
    cut.trim_end_matches(['-', '.', '_']).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MarkdownFile;

    fn spec(agent: Option<&str>) -> TaskRunSpec {
        TaskRunSpec {
            task_id: 7,
            service_name: "billing".into(),
            agent_name: agent.map(Into::into),
            context_version: 2,
            markdown_files: vec![MarkdownFile {
                filename: "task.md".into(),
                content: "do it".into(),
                file_type: None,
            }],
        }
    }

    #[test]
    fn taskrun_labels_carry_the_identity_and_version() {
        let labels = taskrun_labels(&spec(Some("claude")));
        assert_eq!(labels[TASK_ID], "7");
        assert_eq!(labels[SERVICE_NAME], "billing");
        assert_eq!(labels[CONTEXT_VERSION], "2");
        assert_eq!(labels[AGENT_NAME], "claude");
    }

    #[test]
    fn no_agent_no_agent_label() {
        assert!(!taskrun_labels(&spec(None)).contains_key(AGENT_NAME));
    }

    #[test]
    fn children_also_name_their_owner_and_manager() {
        let labels = child_labels("my-task", &spec(None));
        assert_eq!(labels[TASKRUN], "my-task");
        assert_eq!(labels[MANAGED_BY], "taskrun-controller");
        assert_eq!(labels[TASK_ID], "7");
    }

    #[test]
    fn long_owner_names_are_cut_to_a_valid_label_value() {
        let name = format!("{}-{}", "a".repeat(62), "b".repeat(100));
        let labels = child_labels(&name, &spec(None));
        assert_eq!(labels[TASKRUN], "a".repeat(62));
    }
}
