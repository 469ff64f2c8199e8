//! What to migrate and into what: pure decisions over release records, ConfigMaps and
//! TaskRuns already read from the API.
//!
//! Field mapping from the legacy `claude-code` chart (release `{service}-task-{id}`):
//! - `serviceName`, `taskId` come from the release name; the chart values `serviceName` and
//!   `taskId` (a string or a number), and the ConfigMap labels `service` and `task-id`, must
//!   agree with it when present, else the release is reported rather than guessed at.
//! - `agentName` is the value `agentName` when it is a non-empty string.
//! - `markdownFiles` are the keys of the ConfigMap `{service}-task-{id}-files`, in key order,
//!   without a fileType (the legacy layout has none). Where the chart renders that ConfigMap,
//!   it must still hold what the migrated revision rendered.
//! - `contextVersion` is 1: the TaskRun starts its own history with everything it was given.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{Map, Value};
use taskrun::{MarkdownFile, TaskRun, TaskRunSpec, labels, validate_create};

use super::release::Release;

/// The legacy task chart.
pub const LEGACY_CHART: &str = "claude-code";

/// The field selector of Helm's release records (the type Helm 3 gives their Secrets): with
/// the `owner=helm` labels, how discovery and uninstall tell them from other Secrets.
pub const RELEASE_RECORDS: &str = "type=helm.sh/release.v1";

/// The (service, task id) a legacy release name `{service}-task-{id}` stands for.
pub fn legacy_identity(release_name: &str) -> Option<(&str, i64)> {
    let (service, id) = release_name.rsplit_once("-task-")?;
    let valid_id = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) && !id.starts_with('0');
    let task_id = id.parse().ok().filter(|_| valid_id)?;
    (!service.is_empty()).then_some((service, task_id))
}

/// Where a migrated TaskRun came from (this annotation, set on create), for people reading it
/// later and for a later run that finds the release's files already uninstalled.
pub const MIGRATED_FROM: &str = "orchestrator.io/migrated-from";

/// The `MIGRATED_FROM` value for a TaskRun made from `release`.
pub fn migrated_from(release: &Release) -> String {
    format!(
        "helm release {}/{} revision {}",
        release.namespace, release.name, release.version
    )
}

/// True when `live` was made by this tool from `release` (any revision of it) and is the task
/// the release's name stands for.
pub fn made_from(live: &TaskRun, release: &Release) -> bool {
    let prefix = format!(
        "helm release {}/{} revision ",
        release.namespace, release.name
    );
    let annotated = live
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(MIGRATED_FROM))
        .is_some_and(|from| from.starts_with(&prefix));
    let same_task = legacy_identity(&release.name).is_some_and(|(service, task_id)| {
        live.spec.service_name == service && live.spec.task_id == task_id
    });
    annotated && same_task
}

/// The ConfigMap that holds a legacy release's markdown files.
pub fn files_config_map(release_name: &str) -> String {
    format!("{release_name}-files")
}

/// One revision Secret of a release, as its labels describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    pub secret: String,
    pub version: i64,
    pub status: String,
}

/// True for the statuses Helm gives a revision while an install, upgrade or rollback is under
/// way. Helm treats them as a lock ("another operation is in progress"): the operation may
/// still be running, or was killed partway and needs a person.
pub fn pending(status: &str) -> bool {
    matches!(
        status,
        "pending-install" | "pending-upgrade" | "pending-rollback"
    )
}

/// The newest revision when it is pending: Helm is working on the release (or was killed
/// partway), so nothing may be migrated from it or deleted under it yet.
pub fn newest_pending(revisions: &[Revision]) -> Option<&Revision> {
    revisions
        .iter()
        .max_by_key(|r| r.version)
        .filter(|r| pending(&r.status))
}

/// The newest revision above `migrated` (a failed upgrade over the deployed revision, say).
/// `helm uninstall` acts on the newest revision, whatever its status: its manifest lists
/// what to delete and its hooks run. Uninstalling from the migrated revision instead could
/// leave what only the newer one made, or skip its delete hooks.
pub fn newer_than(revisions: &[Revision], migrated: i64) -> Option<&Revision> {
    revisions
        .iter()
        .filter(|r| r.version > migrated)
        .max_by_key(|r| r.version)
}

/// Why no revision of a release was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotPicked<'a> {
    /// Its newest revision is pending: not now, run again once Helm is done.
    InProgress(&'a Revision),
    /// Its newest revision is `uninstalled` or `uninstalling`: nothing to migrate, for good.
    Uninstalled(&'a Revision),
    /// No revision is deployed, and the newest (this one) is neither pending nor uninstalled:
    /// most often `failed` (an install whose `--wait` timed out while its Job runs on, say).
    /// Not migrated, and not done either: someone has to settle the release.
    NotDeployed(&'a Revision),
    /// No revisions at all.
    NoRevisions,
}

/// The revision to migrate: the newest one Helm marks `deployed`, unless the newest revision
/// is pending (an operation in progress), or uninstalled or being uninstalled (`helm
/// uninstall --keep-history` marks only the newest revision: after a failed upgrade, an older
/// one still reads `deployed`). Otherwise why nothing was taken.
pub fn pick_deployed(revisions: &[Revision]) -> Result<&Revision, NotPicked<'_>> {
    let Some(newest) = revisions.iter().max_by_key(|r| r.version) else {
        return Err(NotPicked::NoRevisions);
    };
    if pending(&newest.status) {
        return Err(NotPicked::InProgress(newest));
    }
    if matches!(newest.status.as_str(), "uninstalled" | "uninstalling") {
        return Err(NotPicked::Uninstalled(newest));
    }
    revisions
        .iter()
        .filter(|r| r.status == "deployed")
        .max_by_key(|r| r.version)
        .ok_or(NotPicked::NotDeployed(newest))
}

/// Why a release with no deployed revision, whose newest is neither pending nor uninstalled,
/// is not migrated, and what to do.
pub fn not_deployed_reason(namespace: &str, release: &str, newest: &Revision) -> String {
    let status = if newest.status.is_empty() {
        "without a status"
    } else {
        newest.status.as_str()
    };
    let how = if newest.status == "failed" {
        " (an install or upgrade that failed, or whose --wait timed out while its Job may still run)"
    } else {
        ""
    };
    format!(
        "no deployed revision: the newest, revision {}, is {status}{how}, so there is nothing to migrate from yet. Give the release a deployed revision (`helm upgrade {release} CHART -n {namespace}` with its values, or `helm rollback {release} REVISION -n {namespace}` to one that worked; `helm history {release} -n {namespace}` lists them), then run this again; if the task is not wanted, `helm uninstall {release} -n {namespace}`",
        newest.version
    )
}

/// Why a release with a pending newest revision is left alone, and what to do.
pub fn in_progress_reason(namespace: &str, release: &str, newest: &Revision) -> String {
    let unstick = if newest.status == "pending-install" {
        format!("`helm uninstall {release} -n {namespace}` removes the interrupted install")
    } else {
        format!("`helm rollback {release} -n {namespace}` returns it to its last deployed revision")
    };
    format!(
        "a Helm operation is in progress (revision {} is {}); run this again once it has finished. If no helm command is running any more, it was interrupted: {unstick}",
        newest.version, newest.status
    )
}

/// How a verdict that a TaskRun lacks one of the release's files begins.
pub const LACKS_FILE: &str = "it lacks the file";

/// The TaskRun spec equivalent to a legacy release and its files ConfigMap, or every reason
/// it cannot be built (each a sentence naming the release or the ConfigMap). `rendered` is
/// the `data` the release's revision rendered into that ConfigMap, when its chart renders it:
/// the ConfigMap must still hold exactly that.
pub fn desired_spec(
    release: &Release,
    files: Option<&ConfigMap>,
    rendered: Option<&Map<String, Value>>,
) -> Result<TaskRunSpec, Vec<String>> {
    let Some((service, task_id)) = legacy_identity(&release.name) else {
        return Err(vec![format!(
            "release name {:?} is not of the form {{service}}-task-{{id}}",
            release.name
        )]);
    };
    let mut problems = Vec::new();
    let values = release.values();
    if let Some(value) = values
        .service_name
        .filter(|v| !v.is_empty() && *v != service)
    {
        problems.push(format!(
            "the release's value serviceName={} disagrees with its name (service {service:?})",
            taskrun::validation::shown(&value)
        ));
    }
    if let Some(value) = values
        .task_id
        .filter(|v| !v.is_empty() && *v != task_id.to_string())
    {
        problems.push(format!(
            "the release's value taskId={} disagrees with its name (task {task_id})",
            taskrun::validation::shown(&value)
        ));
    }
    let agent_name = values.agent_name.filter(|a| !a.is_empty());

    let cm_name = files_config_map(&release.name);
    let markdown_files = match files {
        None => {
            problems.push(format!(
                "ConfigMap {cm_name} with the task's files not found"
            ));
            Vec::new()
        }
        Some(cm) => {
            problems.extend(config_map_problems(cm, &cm_name, service, task_id));
            let changed = rendered.map(|r| changed_files(r, cm)).unwrap_or_default();
            if !changed.is_empty() {
                problems.push(changed_since_rendered(release, &cm_name, &changed));
            }
            cm.data
                .iter()
                .flatten()
                .map(|(filename, content)| MarkdownFile {
                    filename: filename.clone(),
                    content: content.clone(),
                    file_type: None,
                })
                .collect()
        }
    };
    let spec = TaskRunSpec {
        task_id,
        service_name: service.to_owned(),
        agent_name,
        context_version: 1,
        markdown_files,
    };
    // Each problem is put down to where it comes from, and what can be done there.
    let (release_name, ns) = (&release.name, &release.namespace);
    for v in validate_create(&spec) {
        if v.field.starts_with("spec.markdownFiles") {
            // With no ConfigMap, its absence is the problem already said.
            if files.is_some() {
                problems.push(format!("{v} (ConfigMap {cm_name})"));
            }
        } else if v.field == "spec.agentName" {
            problems.push(format!(
                "{v} (the release's value agentName: `helm upgrade {release_name} CHART -n {ns} --reuse-values --set agentName=NAME` gives it one a TaskRun can hold, or `--set agentName=` none; then run this again)"
            ));
        } else {
            problems.push(format!(
                "{v} (from the release's name {release_name}: no TaskRun can hold that, so this release cannot be migrated as it is; apply a TaskRun for the task by hand, then `helm uninstall {release_name} -n {ns}`)"
            ));
        }
    }
    if problems.is_empty() {
        Ok(spec)
    } else {
        Err(problems)
    }
}

/// The names of the files (sorted) that `cm` holds otherwise than `rendered`: changed, added
/// or gone.
fn changed_files(rendered: &Map<String, Value>, cm: &ConfigMap) -> Vec<String> {
    let empty = BTreeMap::new();
    let live = cm.data.as_ref().unwrap_or(&empty);
    let mut names: Vec<String> = rendered
        .keys()
        .filter(|name| !live.contains_key(*name))
        .chain(
            live.iter()
                .filter(|(name, content)| {
                    rendered.get(*name).and_then(Value::as_str) != Some(content.as_str())
                })
                .map(|(name, _)| name),
        )
        .cloned()
        .collect();
    names.sort();
    names
}

/// Why a ConfigMap that no longer holds what the migrated revision rendered is not migrated.
fn changed_since_rendered(release: &Release, cm_name: &str, changed: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut named: Vec<String> = changed
        .iter()
        .take(SHOWN)
        .map(|f| taskrun::validation::shown(f))
        .collect();
    if changed.len() > SHOWN {
        named.push(format!("{} more", changed.len() - SHOWN));
    }
    let (name, ns, version) = (&release.name, &release.namespace, release.version);
    format!(
        "ConfigMap {cm_name} no longer holds the files revision {version} rendered ({} differ): something changed them since (a failed `helm upgrade`, or an edit). Make the release render the files to migrate, then run this again: `helm rollback {name} {version} -n {ns}` puts back what a failed upgrade changed; after an edit, a `helm upgrade` with the files wanted",
        named.join(", ")
    )
}

fn config_map_problems(cm: &ConfigMap, name: &str, service: &str, task_id: i64) -> Vec<String> {
    let mut problems = Vec::new();
    let empty = BTreeMap::new();
    let labels = cm.metadata.labels.as_ref().unwrap_or(&empty);
    // The chart copies the values into these labels: a release installed without them has
    // them empty, which disagrees no more than the empty values do.
    if let Some(label) = labels
        .get("service")
        .filter(|l| !l.is_empty() && *l != service)
    {
        problems.push(format!(
            "ConfigMap {name} is labelled service={label:?}, not {service:?}"
        ));
    }
    if let Some(label) = labels
        .get("task-id")
        .filter(|l| !l.is_empty() && **l != task_id.to_string())
    {
        problems.push(format!(
            "ConfigMap {name} is labelled task-id={label:?}, not {task_id}"
        ));
    }
    if let Some(binary) = cm.binary_data.as_ref().filter(|b| !b.is_empty()) {
        let keys: Vec<&str> = binary.keys().map(String::as_str).collect();
        problems.push(format!(
            "ConfigMap {name} holds binary files ({}); TaskRun files are text",
            keys.join(", ")
        ));
    }
    problems
}

/// How an existing TaskRun compares to the one a release would become.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Its spec is the desired one: the same files in any order, some perhaps given a
    /// fileType since (the release's files have none).
    Same,
    /// It is the same task with every migrated file intact, and has since been given more
    /// context (`context add`): migrated, and moved on.
    MovedOn,
    /// Something else: the reason.
    Differs(String),
}

pub fn compare(desired: &TaskRunSpec, live: &TaskRunSpec) -> Verdict {
    // The files in any order: filenames are unique, and their order changes no run.
    let by_name = |spec: &TaskRunSpec| {
        let mut spec = spec.clone();
        spec.markdown_files
            .sort_by(|a, b| a.filename.cmp(&b.filename));
        spec
    };
    if by_name(desired) == by_name(live) {
        return Verdict::Same;
    }
    if live.task_id != desired.task_id || live.service_name != desired.service_name {
        return Verdict::Differs(format!(
            "it is task {} of service {:?}, the release is task {} of service {:?}",
            live.task_id, live.service_name, desired.task_id, desired.service_name
        ));
    }
    if live.agent_name != desired.agent_name {
        return Verdict::Differs(format!(
            "its agentName is {:?}, the release's is {:?}",
            live.agent_name, desired.agent_name
        ));
    }
    // By name and content only: a release's files have no type, and a type given to one since
    // (a TaskRun written for GitOps with `fileType: task`) changes nothing the task runs with.
    for file in &desired.markdown_files {
        match live
            .markdown_files
            .iter()
            .find(|f| f.filename == file.filename)
        {
            None => return Verdict::Differs(format!("{LACKS_FILE} {}", file.filename)),
            Some(f) if f.content != file.content => {
                return Verdict::Differs(format!("its file {} has other content", file.filename));
            }
            Some(_) => {}
        }
    }
    if live.context_version > desired.context_version {
        return Verdict::MovedOn;
    }
    let extra =
        taskrun::validation::filenames_not_in(&live.markdown_files, &desired.markdown_files);
    if extra.is_empty() {
        Verdict::Same
    } else {
        Verdict::Differs(format!(
            "it has files the release has not ({}) at contextVersion {}",
            extra.join(", "),
            live.context_version
        ))
    }
}

/// True while a Job has not finished: neither its `Complete` nor its `Failed` condition is
/// True. A suspended Job has not finished either: resumed, it runs.
pub fn unfinished(job: &Job) -> bool {
    let conditions = job.status.as_ref().and_then(|s| s.conditions.as_deref());
    !conditions
        .unwrap_or_default()
        .iter()
        .any(|c| matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True")
}

/// True for a Job that completed (its `Complete` condition true): its task was done.
pub fn completed(job: &Job) -> bool {
    let conditions = job.status.as_ref().and_then(|s| s.conditions.as_deref());
    conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Complete" && c.status == "True")
}

/// True when the mutating webhook has admitted the TaskRun: it carries the project's labels
/// for its spec.
pub fn admitted(taskrun: &TaskRun) -> bool {
    let live = taskrun.metadata.labels.as_ref();
    labels::taskrun_labels(&taskrun.spec)
        .iter()
        .all(|(key, value)| live.and_then(|l| l.get(*key)) == Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::release::{decode, tests as rel};
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use kube::api::ObjectMeta;
    use serde_json::json;

    fn release(config: Value) -> Release {
        let mut record = rel::record();
        record["config"] = config;
        decode(&rel::encode(&record)).expect("decodes")
    }

    fn config_map(files: &[(&str, &str)], labels: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("billing-task-7-files".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            data: Some(
                files
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ConfigMap::default()
        }
    }

    fn good_cm() -> ConfigMap {
        config_map(
            &[("task.md", "# Task"), ("design.md", "# Design")],
            &[
                ("service", "billing"),
                ("task-id", "7"),
                ("managed-by", "orchestrator"),
            ],
        )
    }

    #[test]
    fn legacy_names_parse() {
        assert_eq!(legacy_identity("billing-task-7"), Some(("billing", 7)));
        assert_eq!(legacy_identity("a-task-b-task-12"), Some(("a-task-b", 12)));
        assert_eq!(legacy_identity("billing-task-"), None);
        assert_eq!(legacy_identity("billing-task-07"), None);
        assert_eq!(legacy_identity("billing-task-x"), None);
        assert_eq!(legacy_identity("-task-3"), None);
        assert_eq!(legacy_identity("nginx"), None);
        assert_eq!(legacy_identity("x-task-99999999999999999999"), None);
    }

    fn rev(version: i64, status: &str) -> Revision {
        Revision {
            secret: format!("sh.helm.release.v1.x.v{version}"),
            version,
            status: status.into(),
        }
    }

    #[test]
    fn the_newest_deployed_revision_is_taken() {
        let revisions = [
            rev(1, "superseded"),
            rev(3, "deployed"),
            rev(2, "superseded"),
        ];
        assert_eq!(pick_deployed(&revisions).map(|r| r.version), Ok(3));
        let failed = [rev(1, "deployed"), rev(2, "failed")];
        assert_eq!(pick_deployed(&failed).map(|r| r.version), Ok(1));
        let none = [rev(1, "superseded"), rev(2, "uninstalling")];
        assert_eq!(pick_deployed(&none), Err(NotPicked::Uninstalled(&none[1])));
        assert_eq!(pick_deployed(&[]), Err(NotPicked::NoRevisions));
        // A failed upgrade, then `helm uninstall --keep-history`: only the newest is marked.
        let uninstalled = [rev(1, "deployed"), rev(2, "failed"), rev(3, "uninstalled")];
        assert_eq!(
            pick_deployed(&uninstalled),
            Err(NotPicked::Uninstalled(&uninstalled[2]))
        );
        let uninstalling = [rev(1, "deployed"), rev(2, "uninstalling")];
        assert_eq!(
            pick_deployed(&uninstalling),
            Err(NotPicked::Uninstalled(&uninstalling[1]))
        );
    }

    #[test]
    fn a_release_never_deployed_is_not_done() {
        // `helm install --wait` timed out (the Job runs on): its only revision is failed.
        let timed_out = [rev(1, "failed")];
        assert_eq!(
            pick_deployed(&timed_out),
            Err(NotPicked::NotDeployed(&timed_out[0]))
        );
        // Then an upgrade that failed too: the newest is the one to report.
        let failed_again = [rev(2, "failed"), rev(1, "failed")];
        assert_eq!(
            pick_deployed(&failed_again),
            Err(NotPicked::NotDeployed(&failed_again[0]))
        );
        let odd = [rev(1, "superseded"), rev(2, "unknown")];
        assert_eq!(pick_deployed(&odd), Err(NotPicked::NotDeployed(&odd[1])));

        let why = not_deployed_reason("team-a", "billing-task-7", &rev(1, "failed"));
        assert!(
            why.starts_with("no deployed revision: the newest, revision 1, is failed (")
                && why.contains("--wait timed out")
                && why.contains("helm upgrade billing-task-7 CHART -n team-a")
                && why.contains("helm rollback billing-task-7 REVISION -n team-a")
                && why.contains("then run this again")
                && why.contains(
                    "if the task is not wanted, `helm uninstall billing-task-7 -n team-a`"
                ),
            "{why}"
        );
        let why = not_deployed_reason("team-a", "billing-task-7", &rev(2, ""));
        assert!(
            why.contains("revision 2, is without a status, so") && !why.contains("timed out"),
            "{why}"
        );
    }

    #[test]
    fn a_revision_above_the_migrated_one_is_found() {
        let failed_upgrade = [rev(1, "deployed"), rev(3, "failed"), rev(2, "failed")];
        assert_eq!(newer_than(&failed_upgrade, 1).map(|r| r.version), Some(3));
        let settled = [rev(1, "superseded"), rev(2, "deployed")];
        assert_eq!(newer_than(&settled, 2), None);
    }

    #[test]
    fn a_pending_newest_revision_holds_the_release() {
        // An upgrade or rollback under way (or killed partway): the deployed revision below it
        // is not taken, as Helm itself refuses to touch the release.
        for status in ["pending-upgrade", "pending-rollback"] {
            let revisions = [rev(1, "superseded"), rev(2, "deployed"), rev(3, status)];
            assert_eq!(
                pick_deployed(&revisions),
                Err(NotPicked::InProgress(&revisions[2])),
                "{status}"
            );
        }
        let installing = [rev(1, "pending-install")];
        assert_eq!(
            pick_deployed(&installing),
            Err(NotPicked::InProgress(&installing[0]))
        );
        // Only the newest counts: an old pending revision under a deployed one is history.
        let settled = [rev(1, "pending-upgrade"), rev(2, "deployed")];
        assert_eq!(pick_deployed(&settled).map(|r| r.version), Ok(2));
        assert_eq!(newest_pending(&settled), None);
        assert!(!pending("deployed") && !pending("failed") && !pending("uninstalling"));
    }

    #[test]
    fn the_in_progress_reason_says_what_to_do() {
        let why = in_progress_reason("team-a", "billing-task-7", &rev(3, "pending-upgrade"));
        assert!(
            why.contains("revision 3 is pending-upgrade")
                && why.contains("run this again once it has finished")
                && why.contains("helm rollback billing-task-7 -n team-a"),
            "{why}"
        );
        let why = in_progress_reason("team-a", "billing-task-7", &rev(1, "pending-install"));
        assert!(
            why.contains("helm uninstall billing-task-7 -n team-a"),
            "{why}"
        );
    }

    #[test]
    fn a_release_and_its_files_become_a_spec() {
        let rel =
            release(json!({"serviceName": "billing", "taskId": "7", "agentName": "claude-1"}));
        let spec = desired_spec(&rel, Some(&good_cm()), None).expect("spec");
        assert_eq!(spec.service_name, "billing");
        assert_eq!(spec.task_id, 7);
        assert_eq!(spec.agent_name.as_deref(), Some("claude-1"));
        assert_eq!(spec.context_version, 1);
        let names: Vec<&str> = spec
            .markdown_files
            .iter()
            .map(|f| f.filename.as_str())
            .collect();
        assert_eq!(names, ["design.md", "task.md"]);
        assert_eq!(spec.markdown_files[1].content, "# Task");
    }

    #[test]
    fn numeric_task_ids_and_missing_values_are_fine() {
        let rel = release(json!({"taskId": 7}));
        let spec = desired_spec(&rel, Some(&good_cm()), None).expect("spec");
        assert_eq!(spec.agent_name, None);
        assert_eq!(spec.service_name, "billing");
        assert_eq!(spec.task_id, 7);
        let rel = release(json!({}));
        let spec = desired_spec(&rel, Some(&good_cm()), None).expect("spec");
        // The name gives the task; the chart default serviceName "" is no disagreement.
        assert_eq!(spec.service_name, "billing");
        assert_eq!(spec.task_id, 7);
        assert_eq!(spec.agent_name, None);
        // The chart's defaults are empty strings: not a disagreement.
        // And the chart copies them into its ConfigMap's labels.
        let rel = release(json!({"serviceName": "", "taskId": "", "agentName": ""}));
        let cm = config_map(&[("task.md", "x")], &[("service", ""), ("task-id", "")]);
        let spec = desired_spec(&rel, Some(&cm), None).expect("spec");
        assert_eq!(
            (spec.service_name.as_str(), spec.task_id, spec.agent_name),
            ("billing", 7, None)
        );
    }

    #[test]
    fn chart_defaults_count_when_the_release_was_installed_without_values() {
        // Helm omits `config` when the install had no --set or -f.
        let mut record = rel::record();
        record.as_object_mut().expect("an object").remove("config");
        record["chart"]["values"]["agentName"] = json!("claude-default");
        let rel = decode(&rel::encode(&record)).expect("decodes");
        let spec = desired_spec(&rel, Some(&good_cm()), None).expect("spec");
        assert_eq!(spec.agent_name.as_deref(), Some("claude-default"));
        // The consistency checks still see the defaults.
        record["chart"]["values"]["serviceName"] = json!("payments");
        let rel = decode(&rel::encode(&record)).expect("decodes");
        let problems = desired_spec(&rel, Some(&good_cm()), None).expect_err("disagrees");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("serviceName=\"payments\"")),
            "{problems:?}"
        );
    }

    #[test]
    fn disagreeing_values_and_labels_are_reported() {
        let rel = release(json!({"serviceName": "payments", "taskId": 8}));
        let cm = config_map(
            &[("task.md", "x")],
            &[("service", "payments"), ("task-id", "8")],
        );
        let problems = desired_spec(&rel, Some(&cm), None).expect_err("disagrees");
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(
            problems
                .iter()
                .all(|p| p.contains("payments") || p.contains('8'))
        );
    }

    /// A forged release's values are cut in what is printed, as `taskId`'s are.
    #[test]
    fn a_huge_disagreeing_value_is_cut_in_the_report() {
        let huge = "x".repeat(1 << 20);
        let rel = release(json!({"serviceName": huge, "taskId": huge}));
        let problems = desired_spec(&rel, Some(&good_cm()), None).expect_err("disagrees");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().all(|p| p.len() < 200), "{problems:?}");
    }

    /// The ConfigMap must hold what the migrated revision rendered: a failed `helm upgrade`
    /// (or an edit) that changed it since is reported, naming the files and the revision.
    #[test]
    fn files_changed_since_the_revision_rendered_them_are_reported() {
        let rel = release(json!({}));
        let rendered = json!({"task.md": "# Task", "design.md": "# Design"});
        let rendered = rendered.as_object();
        desired_spec(&rel, Some(&good_cm()), rendered).expect("as rendered");
        let later = config_map(
            &[("task.md", "# Task, upgraded"), ("more.md", "# More")],
            &[("service", "billing"), ("task-id", "7")],
        );
        let problems = desired_spec(&rel, Some(&later), rendered).expect_err("changed");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains(&format!(
                "no longer holds the files revision {} rendered (\"design.md\", \"more.md\", \"task.md\" differ)",
                rel.version
            )) && problems[0].contains(&format!("`helm rollback billing-task-7 {}", rel.version)),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn a_missing_config_map_is_reported() {
        let problems = desired_spec(&release(json!({})), None, None).expect_err("no files");
        assert_eq!(
            problems,
            ["ConfigMap billing-task-7-files with the task's files not found"]
        );
    }

    #[test]
    fn an_empty_file_is_reported_by_name() {
        let cm = config_map(&[("task.md", "x"), ("notes.md", "  \n")], &[]);
        let problems = desired_spec(&release(json!({})), Some(&cm), None).expect_err("empty");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("notes.md") && problems[0].contains("empty"),
            "{problems:?}"
        );
    }

    #[test]
    fn no_files_and_binary_files_are_reported() {
        let mut cm = config_map(&[], &[]);
        cm.binary_data = Some(BTreeMap::from([(
            "img.png".to_owned(),
            k8s_openapi::ByteString(vec![1, 2]),
        )]));
        let problems = desired_spec(&release(json!({})), Some(&cm), None).expect_err("bad");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("binary") && p.contains("img.png"))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("markdownFiles is empty")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_bad_agent_name_is_reported() {
        let rel = release(json!({"agentName": "Claude Agent"}));
        let problems = desired_spec(&rel, Some(&good_cm()), None).expect_err("bad agent");
        assert_eq!(problems.len(), 1, "{problems:?}");
        // Put down to the value, with how to change it, and not to the files' ConfigMap.
        assert!(
            problems[0].starts_with("spec.agentName: agentName \"Claude Agent\" must be")
                && problems[0].contains("(the release's value agentName: `helm upgrade billing-task-7 CHART -n team-a --reuse-values --set agentName=NAME`")
                && !problems[0].contains("ConfigMap"),
            "{problems:?}"
        );
        // Reported with the files missing too, with that.
        let problems = desired_spec(&rel, None, None).expect_err("bad agent, no files");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[1].starts_with("spec.agentName"), "{problems:?}");
    }

    #[test]
    fn a_service_name_too_long_for_a_taskrun_is_put_down_to_the_release_name() {
        // Helm allows release names of up to 53 characters; a serviceName at most 40.
        let service = "a".repeat(41);
        let mut record = rel::record();
        record["name"] = json!(format!("{service}-task-7"));
        record["config"] = json!({});
        let rel = decode(&rel::encode(&record)).expect("decodes");
        let problems = desired_spec(&rel, Some(&good_cm()), None).expect_err("too long");
        let said = problems
            .iter()
            .find(|p| p.starts_with("spec.serviceName"))
            .expect("the serviceName reported");
        assert!(
            said.starts_with("spec.serviceName: serviceName must be at most 40 characters")
                && said.contains(&format!(
                    "(from the release's name {service}-task-7: no TaskRun can hold that"
                ))
                && said.contains("apply a TaskRun for the task by hand, then `helm uninstall")
                && !said.contains("(ConfigMap"),
            "{problems:?}"
        );
    }

    fn spec() -> TaskRunSpec {
        desired_spec(&release(json!({})), Some(&good_cm()), None).expect("spec")
    }

    #[test]
    fn compare_tells_same_moved_on_and_different_apart() {
        let desired = spec();
        assert_eq!(compare(&desired, &desired), Verdict::Same);

        let mut moved = desired.clone();
        moved.context_version = 2;
        moved.markdown_files.push(MarkdownFile {
            filename: "more.md".into(),
            content: "more".into(),
            file_type: None,
        });
        assert_eq!(compare(&desired, &moved), Verdict::MovedOn);

        let mut other = desired.clone();
        other.markdown_files[0].content = "changed".into();
        assert!(
            matches!(compare(&desired, &other), Verdict::Differs(d) if d.contains("other content"))
        );

        let mut other = desired.clone();
        other.task_id = 8;
        assert!(matches!(compare(&desired, &other), Verdict::Differs(d) if d.contains("task 8")));

        let mut other = desired.clone();
        other.markdown_files.pop();
        assert!(matches!(compare(&desired, &other), Verdict::Differs(d) if d.contains("lacks")));

        // More files at the same version: named.
        let mut other = desired.clone();
        other.markdown_files.push(MarkdownFile {
            filename: "extra.md".into(),
            content: "more".into(),
            file_type: None,
        });
        assert!(matches!(
            compare(&desired, &other),
            Verdict::Differs(d) if d == "it has files the release has not (extra.md) at contextVersion 1"
        ));

        // The same files, given types since: the same task.
        let mut typed = desired.clone();
        for file in &mut typed.markdown_files {
            file.file_type = Some(taskrun::FileType::Task);
        }
        assert_eq!(compare(&desired, &typed), Verdict::Same);

        let mut other = desired.clone();
        other.agent_name = Some("x".into());
        assert!(
            matches!(compare(&desired, &other), Verdict::Differs(d) if d.contains("agentName"))
        );
    }

    #[test]
    fn the_same_files_in_another_order_are_the_same() {
        let desired = spec();
        let mut live = desired.clone();
        live.markdown_files.reverse();
        assert_ne!(live.markdown_files, desired.markdown_files);
        assert_eq!(compare(&desired, &live), Verdict::Same);
    }

    #[test]
    fn made_from_needs_the_annotation_of_this_release_and_its_task() {
        let mut rel = release(json!({}));
        rel.namespace = "team-a".into();
        let mut tr = TaskRun::new("billing-task-7", spec());
        assert!(!made_from(&tr, &rel), "no annotation");
        tr.metadata.annotations = Some(BTreeMap::from([(
            MIGRATED_FROM.to_owned(),
            migrated_from(&rel),
        )]));
        assert!(made_from(&tr, &rel));

        let mut elsewhere = rel.clone();
        elsewhere.namespace = "team-b".into();
        assert!(!made_from(&tr, &elsewhere), "another namespace's release");
        let mut longer = rel.clone();
        longer.name = "billing-task-70".into();
        assert!(!made_from(&tr, &longer), "a release whose name extends it");
        tr.spec.task_id = 8;
        assert!(!made_from(&tr, &rel), "another task");
    }

    #[test]
    fn admitted_means_the_webhooks_labels_are_there() {
        let mut tr = TaskRun::new("billing-task-7", spec());
        assert!(!admitted(&tr));
        tr.metadata.labels = Some(
            labels::taskrun_labels(&tr.spec)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        );
        assert!(admitted(&tr));
        tr.spec.context_version = 2;
        assert!(
            !admitted(&tr),
            "a stale context-version label is not admitted"
        );
    }

    #[test]
    fn a_job_is_unfinished_until_it_completes_or_fails() {
        let job = |conditions: &[(&str, &str)]| Job {
            status: Some(JobStatus {
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(t, s)| JobCondition {
                            type_: (*t).into(),
                            status: (*s).into(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(unfinished(&Job::default()), "no status yet");
        assert!(unfinished(&job(&[])));
        assert!(unfinished(&job(&[("Suspended", "True")])));
        // Kubernetes 1.31+: the success or failure is decided, its pods still terminating.
        assert!(unfinished(&job(&[("SuccessCriteriaMet", "True")])));
        assert!(unfinished(&job(&[("Complete", "False")])));
        assert!(!unfinished(&job(&[
            ("SuccessCriteriaMet", "True"),
            ("Complete", "True")
        ])));
        assert!(!unfinished(&job(&[
            ("FailureTarget", "True"),
            ("Failed", "True")
        ])));
        // Completed: its task was done (a failed one was not).
        assert!(completed(&job(&[
            ("SuccessCriteriaMet", "True"),
            ("Complete", "True")
        ])));
        assert!(!completed(&job(&[("SuccessCriteriaMet", "True")])));
        assert!(!completed(&job(&[("Failed", "True")])));
        assert!(!completed(&Job::default()));
    }
}
