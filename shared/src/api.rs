//! The TaskRun custom resource, `taskruns.orchestrator.io/v1`, as Rust types. The CRD in
//! `manifests/` is generated from these (see `crd.rs`); the doc comments become the field
//! descriptions that `kubectl explain` prints.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A TaskRun asks for one AI agent task to be run as a Kubernetes Job. The task's identity is
/// (namespace, serviceName, taskId): two live TaskRuns with the same identity are duplicates.
/// Raising contextVersion (with added markdown files) starts a new run with the new context.
// Several printcolumn(...) entries repeat keys such as `type_`; clippy mistakes them for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[kube(
    group = "orchestrator.io",
    version = "v1",
    kind = "TaskRun",
    plural = "taskruns",
    singular = "taskrun",
    shortname = "tr",
    namespaced,
    status = "TaskRunStatus",
    doc = "A TaskRun runs one AI agent task as a Kubernetes Job, with its markdown files mounted read-only.",
    printcolumn(name = "Task", type_ = "integer", json_path = ".spec.taskId"),
    printcolumn(name = "Service", type_ = "string", json_path = ".spec.serviceName"),
    printcolumn(
        name = "Version",
        type_ = "integer",
        json_path = ".spec.contextVersion"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Job",
        type_ = "string",
        json_path = ".status.jobName",
        priority = "1"
    )
)]
#[x_kube(validation = Rule::new(
    "self.markdownFiles.map(f, size(bytes(f.content)) + size(f.filename)).sum() <= 1000000"
).message("the markdown files are too large in total: filenames plus contents must stay within 1000000 bytes so they fit in one ConfigMap; move large material elsewhere and reference it").field_path(".markdownFiles").reason(Reason::FieldValueInvalid))]
#[serde(rename_all = "camelCase")]
pub struct TaskRunSpec {
    /// The task's number within its service. At least 1. Immutable: to run another task,
    /// create another TaskRun.
    #[schemars(range(min = crate::limits::MIN_TASK_ID))]
    // The API server checks these rules before calling the webhook, so their messages are
    // the ones `kubectl apply`, Argo CD and Flux show: they name both values and the way out,
    // in the words of the webhook's own check (`validation::validate_update`). `format`, not
    // `+` with `string(...)`: the API server cannot bound the size of `string(int)`, and
    // estimates a concatenation with it far over the CRD's cost budget.
    #[x_kube(validation = Rule::new("self == oldSelf").message(Message::Expression(
        "'taskId is immutable (was %d, now %d): to run another task, create a new TaskRun under another metadata.name instead of changing this one'.format([oldSelf, self])".into()
    )).reason(Reason::FieldValueForbidden))]
    pub task_id: i64,

    /// The service the task belongs to: a DNS-1123 label (lowercase letters, digits and '-',
    /// starting and ending with a letter or digit), 1 to 40 characters. Immutable.
    #[schemars(
        length(min = 1, max = crate::limits::MAX_SERVICE_NAME_LEN),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message(Message::Expression(
        "'serviceName is immutable (was \"%s\", now \"%s\"): to run a task of another service, create a new TaskRun under another metadata.name instead of changing this one'.format([oldSelf, self])".into()
    )).reason(Reason::FieldValueForbidden))]
    pub service_name: String,

    /// The agent that runs the task, if it matters which: a DNS-1123 label when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = crate::limits::MAX_AGENT_NAME_LEN),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub agent_name: Option<String>,

    /// The version of the task's context, 1 for the first run. Raise it (and add markdown
    /// files) to run the task again with more context; it may never go down.
    #[serde(default = "default_context_version")]
    #[schemars(range(min = crate::limits::MIN_CONTEXT_VERSION))]
    #[x_kube(validation = Rule::new("self >= oldSelf").message(Message::Expression(
        "'contextVersion may not decrease (was %d, now %d): set it to %d or more in your manifest (or, applying server-side, leave it out); raise it to run the task with new context'.format([oldSelf, self, oldSelf])".into()
    )).reason(Reason::FieldValueForbidden))]
    pub context_version: i64,

    /// The markdown files the agent reads, 1 to 64, keyed by filename: server-side apply by
    /// several managers merges entries instead of replacing the list.
    #[schemars(length(min = 1, max = crate::limits::MAX_FILES))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["filename".into()]))]
    #[serde(deserialize_with = "first_files")]
    pub markdown_files: Vec<MarkdownFile>,
}

fn default_context_version() -> i64 {
    crate::limits::MIN_CONTEXT_VERSION
}

/// Reads `markdownFiles` keeping only its first `MAX_FILES + 1` entries: one more than
/// allowed, so validation still refuses the list for its length. The rest is read past (it
/// must still be JSON) without being kept. The mutating webhook reads a spec before the API
/// server checks the schema, and a request within the API server's size limit can carry tens
/// of thousands of tiny entries, each taking several times its bytes once read.
fn first_files<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<MarkdownFile>, D::Error> {
    use serde::de::{IgnoredAny, SeqAccess, Visitor};
    struct FirstFiles;
    impl<'de> Visitor<'de> for FirstFiles {
        type Value = Vec<MarkdownFile>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of markdown files")
        }
        fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
            let mut kept = Vec::new();
            while kept.len() <= crate::limits::MAX_FILES {
                match seq.next_element()? {
                    Some(file) => kept.push(file),
                    None => return Ok(kept),
                }
            }
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(kept)
        }
    }
    d.deserialize_seq(FirstFiles)
}

/// One markdown file given to the agent, mounted at `$CONTEXT_DIR/<filename>`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("self.content.trim() != ''").message(Message::Expression(
    "'markdown file ' + self.filename + ' is empty or only whitespace; give it content or remove it'".into()
)).field_path(".content").reason(Reason::FieldValueRequired))]
#[serde(rename_all = "camelCase")]
pub struct MarkdownFile {
    /// The file's name: letters, digits, '.', '_' and '-', starting with a letter or digit,
    /// ending in `.md`, at most 128 characters. Unique within the TaskRun.
    #[schemars(
        length(min = 4, max = crate::limits::MAX_FILENAME_LEN),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*\.md$")
    )]
    pub filename: String,

    /// The markdown text. Must contain at least one non-whitespace character.
    // The API server rejects a CRD whose CEL rules are estimated to cost more than 10M per
    // evaluation; 64 files of 1,000,000 characters made both content rules 2.6x too dear.
    #[schemars(length(max = crate::limits::MAX_CONTENT_LEN))]
    pub content: String,

    /// What the file is for, so the agent can weigh it: task, design-spec, prompt, context or
    /// acceptance-criteria.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_type: Option<FileType>,
}

/// What a markdown file is for, by its wire name (`as_str`) both ways.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    /// The task description.
    Task,
    /// A design specification.
    DesignSpec,
    /// A prompt for the agent.
    Prompt,
    /// Added context, typically from a context update.
    Context,
    /// What must be true for the task to be done.
    AcceptanceCriteria,
    /// A type this build does not know, kept as written: a CRD newer than this binary may
    /// allow more (and a rollback leaves TaskRuns that use them). Read as an error, one such
    /// TaskRun would fail every list page it is on, and so stop the controller for every
    /// TaskRun; kept, it is written back unchanged by what re-applies a TaskRun's files. Not
    /// in the schema: the CRD allows only the types above.
    Other(String),
}

impl Serialize for FileType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Read straight from the string (serde's `untagged` would buffer every value first).
impl<'de> Deserialize<'de> for FileType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = FileType;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a file type")
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<FileType, E> {
                let known = FileType::KNOWN.into_iter().find(|t| t.as_str() == name);
                Ok(known.unwrap_or_else(|| FileType::Other(name.to_owned())))
            }
        }
        d.deserialize_str(Name)
    }
}

/// The schema lists the known types only, one `oneOf` entry each as derived for a plain
/// enum (kube's CRD generator turns that into one `enum`, nullable for an `Option`).
impl schemars::JsonSchema for FileType {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "FileType".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let known: Vec<serde_json::Value> = FileType::KNOWN
            .iter()
            .map(|t| serde_json::json!({"type": "string", "enum": [t.as_str()]}))
            .collect();
        schemars::json_schema!({
            "description": "What a markdown file is for.",
            "oneOf": known,
        })
    }
}

impl FileType {
    /// The types this build knows, as the CRD's schema lists them.
    pub const KNOWN: [FileType; 5] = [
        FileType::Task,
        FileType::DesignSpec,
        FileType::Prompt,
        FileType::Context,
        FileType::AcceptanceCriteria,
    ];

    /// The wire name, as written in manifests.
    pub fn as_str(&self) -> &str {
        match self {
            FileType::Task => "task",
            FileType::DesignSpec => "design-spec",
            FileType::Prompt => "prompt",
            FileType::Context => "context",
            FileType::AcceptanceCriteria => "acceptance-criteria",
            FileType::Other(name) => name,
        }
    }
}

/// Where a TaskRun's current version is in its life.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default,
)]
pub enum Phase {
    /// Admitted; the Job for the current version is not running yet.
    #[default]
    Pending,
    /// The Job for the current version has a pod running.
    Running,
    /// The Job for the current version completed. Final for that version.
    Succeeded,
    /// The Job for the current version failed, or the TaskRun cannot run. Final for that version.
    Failed,
}

impl Phase {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    /// Succeeded and Failed are final for the version they were reached in.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the controller last saw of the TaskRun. Written only by the controller, through the
/// status subresource.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskRunStatus {
    /// Pending, Running, Succeeded or Failed, for the version in observedContextVersion.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::phase"
    )]
    pub phase: Option<Phase>,
    /// The Job that runs the current version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// The ConfigMap that holds the current version's markdown files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_name: Option<String>,
    /// A human-readable account of the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the controller last changed this status.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::time"
    )]
    pub last_updated: Option<Time>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The contextVersion this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_context_version: Option<i64>,
    /// How many versions have been run (one Job each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i64>,
    /// When the current version's Job started.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::time"
    )]
    pub start_time: Option<Time>,
    /// When the current version reached Succeeded or Failed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::time"
    )]
    pub completion_time: Option<Time>,
    /// Standard conditions, with reasons: Ready, Succeeded, and Stalled (True only when the
    /// version failed).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "lenient::conditions"
    )]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Reading the times of a status that another writer may have set (an admin's `kubectl patch
/// --subresource=status`, a tool): the API server accepts some date-times this reader does not
/// (more than nine fraction digits, an offset beyond ±25 hours). One such value must not make
/// the whole TaskRun unreadable, and with it every list page it is on, which would stop the
/// controller for every TaskRun. So such a time is read as absent, and such a condition is
/// dropped (the controller writes its conditions again); the rest of the status, which says
/// which versions have run, is kept.
/// A phase this reader does not know (written by a newer controller, before a rollback to
/// this one) is read as absent too: the controller works the phase out again from the Job.
mod lenient {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    use super::Phase;

    pub fn phase<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Phase>, D::Error> {
        let raw = Option::<Value>::deserialize(d)?;
        Ok(raw.and_then(|p| serde_json::from_value(p).ok()))
    }

    pub fn time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Time>, D::Error> {
        let raw = Option::<Value>::deserialize(d)?;
        Ok(raw.and_then(|t| serde_json::from_value(t).ok()))
    }

    pub fn conditions<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Condition>, D::Error> {
        let raw = Option::<Vec<Value>>::deserialize(d)?;
        Ok(raw
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| serde_json::from_value(c).ok())
            .collect())
    }
}

impl TaskRun {
    /// The identity of this TaskRun's task: (namespace, serviceName, taskId).
    pub fn identity(&self) -> crate::Identity {
        crate::Identity::new(
            self.metadata.namespace.as_deref().unwrap_or_default(),
            &self.spec.service_name,
            self.spec.task_id,
        )
    }

    /// The message of the controller's verdict that this TaskRun lost to an older one of its
    /// task (Succeeded False, `Duplicate`): it never runs, whatever its spec.
    pub fn lost_as_duplicate(&self) -> Option<&str> {
        use crate::conditions::{SUCCEEDED, reason::DUPLICATE};
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == SUCCEEDED && c.status == "False" && c.reason == DUPLICATE)
            .map(|c| c.message.as_str())
    }

    /// True when `other` is of the same identity, compared in place (no `Identity` built).
    pub fn same_task(&self, other: &TaskRun) -> bool {
        self.spec.task_id == other.spec.task_id
            && self.spec.service_name == other.spec.service_name
            && self.metadata.namespace == other.metadata.namespace
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// Of a list of files far beyond the limit, one more than allowed is kept; the entries past
    /// it are not read as files, but must still be JSON.
    #[test]
    fn at_most_one_file_more_than_allowed_is_kept() {
        use crate::limits::MAX_FILES;
        let mut files: Vec<Value> = (0..10_000)
            .map(|_| json!({"filename": "a.md", "content": "x"}))
            .collect();
        files.push(json!({"not": "a file"}));
        let spec = json!({"taskId": 1, "serviceName": "s", "markdownFiles": files});
        let read: TaskRunSpec = serde_json::from_value(spec.clone()).expect("spec");
        assert_eq!(read.markdown_files.len(), MAX_FILES + 1);

        let text = serde_json::to_string(&spec).expect("json");
        let broken = text.replacen(r#"{"not":"a file"}"#, "{", 1);
        assert!(serde_json::from_str::<TaskRunSpec>(&broken).is_err());
        let few = json!({"taskId": 1, "serviceName": "s",
                         "markdownFiles": [{"filename": "a.md", "content": "x"}]});
        let read: TaskRunSpec = serde_json::from_value(few).expect("spec");
        assert_eq!(read.markdown_files.len(), 1);
        let bad = json!({"taskId": 1, "serviceName": "s", "markdownFiles": [{"filename": 1}]});
        assert!(serde_json::from_value::<TaskRunSpec>(bad).is_err());
    }

    /// A status with times the API server accepts and this reader does not: the TaskRun is
    /// still read, with what says which version ran.
    #[test]
    fn a_status_with_unreadable_times_is_read_without_them() {
        let good = "2026-01-01T00:00:00Z";
        let odd = "2026-01-01T00:00:00.1234567890Z";
        let tr: TaskRun = serde_json::from_value(json!({
            "apiVersion": "orchestrator.io/v1", "kind": "TaskRun",
            "metadata": {"name": "t", "namespace": "ns"},
            "spec": {"taskId": 1, "serviceName": "svc", "contextVersion": 2,
                     "markdownFiles": [{"filename": "a.md", "content": "x"}]},
            "status": {
                "phase": "Succeeded", "observedContextVersion": 2, "attempts": 2,
                "lastUpdated": odd, "startTime": good, "completionTime": odd,
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Completed", "message": "",
                     "lastTransitionTime": odd},
                    {"type": "Succeeded", "status": "True", "reason": "Completed", "message": "",
                     "lastTransitionTime": good},
                ],
            },
        }))
        .expect("read despite the odd times");
        let status = tr.status.expect("status");
        assert_eq!(status.phase, Some(Phase::Succeeded));
        assert_eq!(
            (status.observed_context_version, status.attempts),
            (Some(2), Some(2))
        );
        assert_eq!((status.last_updated, status.completion_time), (None, None));
        assert!(status.start_time.is_some());
        let kept: Vec<_> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(kept, ["Succeeded"]);
    }

    /// A phase written by a newer controller must not make the TaskRun unreadable (and with
    /// it every list page it is on) after a rollback: it is read as absent.
    #[test]
    fn a_status_with_an_unknown_phase_is_read_without_it() {
        let tr: TaskRun = serde_json::from_value(json!({
            "apiVersion": "orchestrator.io/v1", "kind": "TaskRun",
            "metadata": {"name": "t", "namespace": "ns"},
            "spec": {"taskId": 1, "serviceName": "svc",
                     "markdownFiles": [{"filename": "a.md", "content": "x"}]},
            "status": {"phase": "Cancelled", "jobName": "svc-1-v1", "attempts": 1},
        }))
        .expect("read despite the unknown phase");
        let status = tr.status.expect("status");
        assert_eq!(status.phase, None);
        assert_eq!(
            (status.job_name.as_deref(), status.attempts),
            (Some("svc-1-v1"), Some(1))
        );
        let known: TaskRunStatus =
            serde_json::from_value(json!({"phase": "Running"})).expect("status");
        assert_eq!(known.phase, Some(Phase::Running));
    }

    /// The known types are read as themselves and listed in the schema; any other name is
    /// kept as written, both ways.
    #[test]
    fn file_types_round_trip_known_or_not() {
        let crd = serde_json::to_value(crate::crd::definition()).expect("crd");
        let file = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/markdownFiles/items/properties/fileType/enum";
        let listed: Vec<&str> = crd
            .pointer(file)
            .and_then(Value::as_array)
            .expect("an enum")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let known: Vec<&str> = FileType::KNOWN.iter().map(FileType::as_str).collect();
        assert_eq!(listed, known);
        for t in FileType::KNOWN {
            let read: FileType = serde_json::from_value(json!(t.as_str())).expect("known");
            assert_eq!(read, t);
        }
        let other: FileType = serde_json::from_value(json!("reference")).expect("kept");
        assert_eq!(other, FileType::Other("reference".into()));
        assert_eq!(
            serde_json::to_value(&other).expect("json"),
            json!("reference")
        );
        assert!(serde_json::from_value::<FileType>(json!(7)).is_err());
    }
}
