//! What the cache modules' tests build: TaskRuns, statuses, Jobs and a TaskRun cache.

use k8s_openapi::api::batch::v1::JobStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::Store;
use taskrun::{MarkdownFile, TaskRun, TaskRunSpec, TaskRunStatus};

use super::CachedJob;

pub(super) fn taskrun(version: i64, status: Option<TaskRunStatus>) -> TaskRun {
    let mut tr = TaskRun::new(
        "t",
        TaskRunSpec {
            task_id: 1,
            service_name: "svc".into(),
            agent_name: None,
            context_version: version,
            markdown_files: vec![MarkdownFile {
                filename: "a.md".into(),
                content: "# a".into(),
                file_type: None,
            }],
        },
    );
    tr.status = status;
    tr
}

pub(super) fn recorded(version: i64) -> TaskRunStatus {
    TaskRunStatus {
        observed_context_version: Some(version),
        config_map_name: Some("cm".into()),
        ..Default::default()
    }
}

pub(super) fn job(name: &str, condition: Option<&str>) -> CachedJob {
    CachedJob {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("uid-{name}")),
            owner_references: Some(vec![OwnerReference {
                controller: Some(true),
                name: "owner".into(),
                uid: "u".into(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        status: Some(JobStatus {
            conditions: condition.map(|c| {
                vec![k8s_openapi::api::batch::v1::JobCondition {
                    type_: c.into(),
                    status: "True".into(),
                    ..Default::default()
                }]
            }),
            ..JobStatus::default()
        }),
    }
}

/// A TaskRun cache holding the Jobs' owner, live or being deleted.
pub(super) fn owners(deleting: bool) -> Store<TaskRun> {
    owner_at(1, deleting)
}

/// A TaskRun cache holding the Jobs' owner at `version`.
pub(super) fn owner_at(version: i64, deleting: bool) -> Store<TaskRun> {
    let (store, mut writer) = kube::runtime::reflector::store();
    let mut owner = taskrun(version, None);
    owner.metadata.name = Some("owner".into());
    owner.metadata.namespace = Some("ns".into());
    owner.metadata.uid = Some("u".into());
    if deleting {
        owner.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(1).expect("t")));
    }
    writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(owner));
    store
}
