//! The server-side apply patch of `context add`, decided from the TaskRun as read.
//!
//! With server-side apply, a field manager's apply is its whole intent: an entry the manager
//! applied before and leaves out now is removed. So the patch carries, besides the new files
//! and the raised contextVersion, every file this manager already owns (as the server has it
//! now). Files owned by other managers are left out of the patch and so left alone; we do not
//! become their co-owner, and a GitOps tool that later drops one from git still removes it.
//! One fixed manager name (not one per call) keeps managedFields from growing with each call.
//! The patch carries the resourceVersion it was built from: if the TaskRun changed meanwhile
//! the server answers 409 Conflict and the caller reads again.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::Resource;
use serde_json::{Value, json};
use taskrun::{MarkdownFile, TaskRun, TaskRunSpec, validate_update};

/// The field manager of `context add` (and of the TaskRuns `migrate-helm` creates). Not the
/// binary's name: Flux's kustomize-controller takes over, before each apply, the fields of every
/// manager whose name starts with "kubectl" (to undo hand edits), and would then drop the
/// context added here from the TaskRun on its next sync.
pub const MANAGER: &str = "taskrun-cli";

/// The manager this command applied as before (named after the binary, which Flux takes
/// over). Files it applied are sent as ours, so the next call makes `MANAGER` their owner too.
const FORMER_MANAGER: &str = "kubectl-taskrun";

/// The filenames of the markdownFiles entries that `manager` owns through apply.
pub fn owned_files(managed: &[ManagedFieldsEntry], manager: &str) -> BTreeSet<String> {
    managed
        .iter()
        .filter(|e| {
            e.manager.as_deref() == Some(manager) && e.operation.as_deref() == Some("Apply")
        })
        .filter_map(|e| e.fields_v1.as_ref())
        .filter_map(|f| f.0.pointer("/f:spec/f:markdownFiles")?.as_object())
        .flat_map(|entries| entries.keys())
        // List-map entries are keyed `k:{"filename":"a.md"}`.
        .filter_map(|key| key.strip_prefix("k:"))
        .filter_map(|key| serde_json::from_str::<Value>(key).ok())
        .filter_map(|key| key.get("filename")?.as_str().map(str::to_owned))
        .collect()
}

/// The other managers whose server-side applies set `spec.contextVersion` (a GitOps tool's:
/// `kustomize-controller`, `argocd-controller`). Each apply sends its whole intent, so the
/// next one sends that manager's own, lower contextVersion, which is refused; under Argo CD's
/// server-side diff, or Flux's dry-run of every object before applying any, that refusal stops
/// the sync of everything else in the Application or Kustomization too.
pub fn other_appliers_of_context_version(managed: &[ManagedFieldsEntry]) -> Vec<String> {
    let mut managers: Vec<String> = managed
        .iter()
        .filter(|e| e.operation.as_deref() == Some("Apply"))
        .filter_map(|e| Some((e.manager.as_deref()?, e.fields_v1.as_ref()?)))
        .filter(|(manager, _)| ![MANAGER, FORMER_MANAGER].contains(manager))
        .filter(|(_, fields)| fields.0.pointer("/f:spec/f:contextVersion").is_some())
        .map(|(manager, _)| manager.to_owned())
        .collect();
    managers.sort();
    managers.dedup();
    managers
}

/// What `context add` is to do with a TaskRun as read.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// Apply this patch.
    Apply(Value),
    /// Nothing: the TaskRun already has every one of the files, as they are. A call retried
    /// after its answer was lost (a timeout, a dropped connection) finds its own work done.
    Present,
    /// Nothing: the TaskRun is being deleted, so no new version of it would run. Cluster
    /// state, not bad input: the caller says what to do.
    BeingDeleted,
}

/// The apply patch that adds `new_files` to `current` and raises its contextVersion by one
/// (nothing when it has them already or is being deleted), or every reason it would be
/// refused (a filename already present with other content or type, a rule the resulting
/// TaskRun would break).
pub fn build(current: &TaskRun, new_files: &[MarkdownFile]) -> Result<Plan, Vec<String>> {
    let name = current.meta().name.as_deref().unwrap_or_default();
    if current.meta().deletion_timestamp.is_some() {
        return Ok(Plan::BeingDeleted);
    }
    if new_files
        .iter()
        .all(|f| current.spec.markdown_files.contains(f))
    {
        return Ok(Plan::Present);
    }
    let mut problems: Vec<String> = new_files
        .iter()
        .filter(|f| current.spec.markdown_files.iter().any(|o| o.filename == f.filename))
        .map(|f| {
            format!(
                "{:?}: TaskRun {name} already has a file with this name; context add only adds files, so give it another name",
                f.filename
            )
        })
        .collect();
    if !problems.is_empty() {
        return Err(problems);
    }

    let next = TaskRunSpec {
        context_version: current.spec.context_version.saturating_add(1),
        markdown_files: [&current.spec.markdown_files[..], new_files].concat(),
        ..current.spec.clone()
    };
    problems.extend(
        validate_update(&current.spec, &next)
            .iter()
            .map(|v| format!("the TaskRun would be refused: {v}")),
    );
    if !problems.is_empty() {
        return Err(problems);
    }

    let managed = current.meta().managed_fields.as_deref().unwrap_or_default();
    let mut ours = owned_files(managed, MANAGER);
    ours.extend(owned_files(managed, FORMER_MANAGER));
    let files: Vec<&MarkdownFile> = current
        .spec
        .markdown_files
        .iter()
        .filter(|f| ours.contains(&f.filename))
        .chain(new_files)
        .collect();
    Ok(Plan::Apply(json!({
        "apiVersion": "orchestrator.io/v1",
        "kind": "TaskRun",
        "metadata": {
            "name": name,
            "namespace": current.meta().namespace,
            "resourceVersion": current.meta().resource_version,
        },
        "spec": {
            "contextVersion": next.context_version,
            "markdownFiles": files,
        },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, Time};
    use kube::api::ObjectMeta;
    use taskrun::FileType;

    fn file(name: &str) -> MarkdownFile {
        MarkdownFile {
            filename: name.into(),
            content: format!("# {name}"),
            file_type: None,
        }
    }

    fn entry(manager: &str, operation: &str, files: &[&str]) -> ManagedFieldsEntry {
        let keys: serde_json::Map<String, Value> = files
            .iter()
            .map(|f| {
                (
                    format!("k:{{\"filename\":\"{f}\"}}"),
                    json!({".": {}, "f:content": {}}),
                )
            })
            .collect();
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            fields_v1: Some(FieldsV1(json!({
                "f:spec": {"f:contextVersion": {}, "f:markdownFiles": keys}
            }))),
            ..ManagedFieldsEntry::default()
        }
    }

    fn applied(plan: Result<Plan, Vec<String>>) -> Value {
        match plan {
            Ok(Plan::Apply(patch)) => patch,
            other => panic!("no patch: {other:?}"),
        }
    }

    fn taskrun(files: &[&str], managed: Vec<ManagedFieldsEntry>) -> TaskRun {
        let mut tr = TaskRun::new(
            "t1",
            TaskRunSpec {
                task_id: 1,
                service_name: "billing".into(),
                agent_name: None,
                context_version: 3,
                markdown_files: files.iter().map(|f| file(f)).collect(),
            },
        );
        tr.metadata = ObjectMeta {
            name: Some("t1".into()),
            namespace: Some("ns".into()),
            resource_version: Some("42".into()),
            managed_fields: Some(managed),
            ..ObjectMeta::default()
        };
        tr
    }

    fn filenames(patch: &Value) -> Vec<&str> {
        patch["spec"]["markdownFiles"]
            .as_array()
            .expect("files")
            .iter()
            .filter_map(|f| f["filename"].as_str())
            .collect()
    }

    /// Only other managers' server-side applies that set contextVersion: this command's own,
    /// an update (client-side apply keeps a field the manifest did not change) and an apply
    /// of files alone do not send a lower value back.
    #[test]
    fn other_appliers_of_context_version_are_gitops_applies() {
        let mut files_only = entry("flux-files", "Apply", &["a.md"]);
        files_only.fields_v1 = Some(FieldsV1(json!({"f:spec": {"f:markdownFiles": {}}})));
        let managed = vec![
            entry(MANAGER, "Apply", &["ctx-1.md"]),
            entry(FORMER_MANAGER, "Apply", &["ctx-0.md"]),
            entry("kustomize-controller", "Apply", &["task.md"]),
            entry("argocd-controller", "Apply", &["task.md"]),
            entry("kubectl-client-side-apply", "Update", &["task.md"]),
            entry("kustomize-controller", "Apply", &["notes.md"]),
            files_only,
        ];
        assert_eq!(
            other_appliers_of_context_version(&managed),
            ["argocd-controller", "kustomize-controller"]
        );
        assert!(other_appliers_of_context_version(&[]).is_empty());
    }

    #[test]
    fn owned_files_reads_only_this_managers_apply_entries() {
        let managed = vec![
            entry(MANAGER, "Apply", &["ctx-1.md", "ctx-2.md"]),
            entry("argocd-controller", "Apply", &["task.md"]),
            entry(MANAGER, "Update", &["odd.md"]),
        ];
        let owned = owned_files(&managed, MANAGER);
        assert_eq!(
            owned,
            BTreeSet::from(["ctx-1.md".into(), "ctx-2.md".into()])
        );
    }

    #[test]
    fn owned_files_ignores_malformed_entries() {
        let mut odd = entry(MANAGER, "Apply", &[]);
        odd.fields_v1 = Some(FieldsV1(json!({"f:spec": {"f:markdownFiles": {
            "k:not json": {}, "k:{\"name\":\"x\"}": {}, "v:\"a\"": {}
        }}})));
        assert!(owned_files(&[odd], MANAGER).is_empty());
        let bare = ManagedFieldsEntry {
            manager: Some(MANAGER.into()),
            operation: Some("Apply".into()),
            ..ManagedFieldsEntry::default()
        };
        assert!(owned_files(&[bare], MANAGER).is_empty());
    }

    #[test]
    fn first_add_sends_only_the_new_files_and_the_next_version() {
        let tr = taskrun(&["task.md"], vec![entry("kubectl", "Apply", &["task.md"])]);
        let mut new = file("ctx.md");
        new.file_type = Some(FileType::Context);
        let patch = applied(build(&tr, &[new]));
        assert_eq!(patch["spec"]["contextVersion"], 4);
        assert_eq!(filenames(&patch), ["ctx.md"]);
        assert_eq!(patch["spec"]["markdownFiles"][0]["fileType"], "context");
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(patch["metadata"]["name"], "t1");
        assert!(
            patch["spec"].get("taskId").is_none(),
            "owned by someone else"
        );
    }

    #[test]
    fn later_adds_resend_the_files_this_manager_owns() {
        let tr = taskrun(
            &["task.md", "ctx-1.md", "ctx-2.md"],
            vec![
                entry("kubectl", "Apply", &["task.md"]),
                entry(MANAGER, "Apply", &["ctx-1.md", "ctx-2.md"]),
            ],
        );
        let patch = applied(build(&tr, &[file("ctx-3.md")]));
        assert_eq!(filenames(&patch), ["ctx-1.md", "ctx-2.md", "ctx-3.md"]);
        assert_eq!(patch["spec"]["markdownFiles"][0]["content"], "# ctx-1.md");
    }

    #[test]
    fn files_applied_under_the_former_manager_are_sent_as_ours() {
        let tr = taskrun(
            &["task.md", "old-ctx.md"],
            vec![
                entry("gitops", "Apply", &["task.md"]),
                entry(FORMER_MANAGER, "Apply", &["old-ctx.md"]),
            ],
        );
        let patch = applied(build(&tr, &[file("new-ctx.md")]));
        assert_eq!(filenames(&patch), ["old-ctx.md", "new-ctx.md"]);
    }

    #[test]
    fn an_existing_filename_is_refused() {
        let tr = taskrun(&["task.md"], vec![]);
        let other = MarkdownFile {
            content: "# other".into(),
            ..file("task.md")
        };
        let problems = build(&tr, &[other]).expect_err("refused");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("already has a file"), "{problems:?}");
    }

    #[test]
    fn files_already_there_as_given_are_not_sent_again() {
        // A retry of a call that went through: nothing to do, no second version.
        let tr = taskrun(&["task.md", "ctx.md"], vec![]);
        assert_eq!(build(&tr, &[file("ctx.md")]), Ok(Plan::Present));
        assert_eq!(
            build(&tr, &[file("task.md"), file("ctx.md")]),
            Ok(Plan::Present)
        );
        // One of them new: the present one is a clash, as any existing name is.
        let problems = build(&tr, &[file("ctx.md"), file("new.md")]).expect_err("refused");
        assert!(problems[0].contains("\"ctx.md\": TaskRun"), "{problems:?}");
        // The same name and content, another type: a change, refused.
        let typed = MarkdownFile {
            file_type: Some(FileType::Prompt),
            ..file("ctx.md")
        };
        assert!(build(&tr, &[typed]).is_err());
    }

    #[test]
    fn a_taskrun_being_deleted_gets_no_new_version() {
        let mut tr = taskrun(&["task.md"], vec![]);
        tr.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert_eq!(build(&tr, &[file("ctx.md")]), Ok(Plan::BeingDeleted));
        // Even with files it already has: no claim that it has them, as given.
        assert_eq!(build(&tr, &[file("task.md")]), Ok(Plan::BeingDeleted));
    }

    #[test]
    fn a_result_the_api_would_refuse_is_refused_here() {
        let names: Vec<String> = (0..64).map(|i| format!("f{i}.md")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let tr = taskrun(&refs, vec![]);
        let problems = build(&tr, &[file("one-more.md")]).expect_err("too many");
        assert!(problems[0].contains("would be refused"), "{problems:?}");
    }
}
