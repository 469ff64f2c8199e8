//! The children of one version of a TaskRun: its ConfigMap (the markdown files) and its Job
//! (the agent run). Pure builders: the same TaskRun and template always give the same objects.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, EnvFromSource, EnvVar, EnvVarSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, SeccompProfile, SecretEnvSource,
    SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use taskrun::{TaskRun, labels, names};

use crate::template::JobTemplate;

const CONTEXT_VOLUME: &str = "context";
const CONTAINER: &str = "agent";

/// The owner reference that makes the TaskRun the controller of a child, or None when the
/// TaskRun has no uid yet (it was never stored).
pub fn owner_reference(tr: &TaskRun) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "orchestrator.io/v1".into(),
        kind: "TaskRun".into(),
        name: tr.metadata.name.clone()?,
        uid: tr.metadata.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

fn child_meta(tr: &TaskRun, name: String, owner: OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: tr.metadata.namespace.clone(),
        labels: Some(labels::child_labels(&owner.name, &tr.spec)),
        owner_references: Some(vec![owner]),
        ..Default::default()
    }
}

/// The names of the children of the TaskRun's current version: (Job, ConfigMap).
pub fn child_names(tr: &TaskRun) -> (String, String) {
    let s = &tr.spec;
    (
        names::job_name(&s.service_name, s.task_id, s.context_version),
        names::config_map_name(&s.service_name, s.task_id, s.context_version),
    )
}

/// The ConfigMap with the markdown files of the current version, key = filename. Immutable:
/// a version's context never changes, and the kubelet need not watch it.
pub fn config_map(tr: &TaskRun, owner: OwnerReference) -> ConfigMap {
    let (_, name) = child_names(tr);
    let data: BTreeMap<String, String> = tr
        .spec
        .markdown_files
        .iter()
        .map(|f| (f.filename.clone(), f.content.clone()))
        .collect();
    ConfigMap {
        metadata: child_meta(tr, name, owner),
        data: Some(data),
        immutable: Some(true),
        ..Default::default()
    }
}

fn plain_env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    }
}

/// The Job that runs the current version. Its pods meet Pod Security "restricted".
pub fn job(tr: &TaskRun, owner: OwnerReference, t: &JobTemplate) -> Job {
    let (job_name, cm_name) = child_names(tr);
    let s = &tr.spec;
    let mut env = vec![
        plain_env("TASK_ID", s.task_id.to_string()),
        plain_env("SERVICE_NAME", s.service_name.clone()),
        plain_env("AGENT_NAME", s.agent_name.clone().unwrap_or_default()),
        plain_env("CONTEXT_VERSION", s.context_version.to_string()),
        plain_env("CONTEXT_DIR", t.context_dir.clone()),
    ];
    env.extend(t.env.iter().map(|e| EnvVar {
        name: e.name.clone(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: e.secret_key_ref.name.clone(),
                key: e.secret_key_ref.key.clone(),
                optional: e.secret_key_ref.optional,
            }),
            ..Default::default()
        }),
    }));
    let env_from: Vec<EnvFromSource> = t
        .env_from
        .iter()
        .map(|e| EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: e.secret_ref.name.clone(),
                optional: e.secret_ref.optional,
            }),
            ..Default::default()
        })
        .collect();
    let runtime_default = || SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    };
    let container = Container {
        name: CONTAINER.into(),
        image: Some(t.image.clone()),
        image_pull_policy: t.image_pull_policy.clone(),
        command: (!t.command.is_empty()).then(|| t.command.clone()),
        args: (!t.args.is_empty()).then(|| t.args.clone()),
        env: Some(env),
        env_from: (!env_from.is_empty()).then_some(env_from),
        resources: t.resources.clone(),
        volume_mounts: Some(vec![VolumeMount {
            name: CONTEXT_VOLUME.into(),
            mount_path: t.context_dir.clone(),
            read_only: Some(true),
            ..Default::default()
        }]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            run_as_non_root: Some(true),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let meta = child_meta(tr, job_name, owner);
    let pod_labels = meta.labels.clone();
    Job {
        metadata: meta,
        spec: Some(JobSpec {
            backoff_limit: t.backoff_limit,
            active_deadline_seconds: t.active_deadline_seconds,
            ttl_seconds_after_finished: t.ttl_seconds_after_finished,
            // A pod deleted or evicted is replaced only once it has stopped: two agents of one
            // version never run side by side (the default starts the next as the first stops).
            pod_replacement_policy: Some("Failed".into()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: pod_labels,
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    service_account_name: t.service_account_name.clone(),
                    // The agent talks to the API only if it was given an account for that.
                    automount_service_account_token: Some(t.service_account_name.is_some()),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(t.run_as_user),
                        run_as_group: Some(t.run_as_user),
                        fs_group: Some(t.run_as_user),
                        seccomp_profile: Some(runtime_default()),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: CONTEXT_VOLUME.into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: cm_name,
                            default_mode: Some(0o444),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::parse_secret_env;
    use taskrun::{MarkdownFile, TaskRunSpec};

    fn taskrun(agent: Option<&str>) -> TaskRun {
        let mut tr = TaskRun::new(
            "fix-login",
            TaskRunSpec {
                task_id: 42,
                service_name: "billing".into(),
                agent_name: agent.map(Into::into),
                context_version: 2,
                markdown_files: vec![
                    MarkdownFile {
                        filename: "task.md".into(),
                        content: "# Fix login".into(),
                        file_type: None,
                    },
                    MarkdownFile {
                        filename: "notes.md".into(),
                        content: "more".into(),
                        file_type: None,
                    },
                ],
            },
        );
        tr.metadata.namespace = Some("team-a".into());
        tr.metadata.uid = Some("uid-1".into());
        tr
    }

    fn template() -> JobTemplate {
        JobTemplate {
            image: "agent:1".into(),
            command: vec!["/agent".into()],
            args: vec!["run".into()],
            service_account_name: Some("agent".into()),
            env: vec![parse_secret_env("API_KEY=agent-secrets:api-key").expect("parses")],
            env_from: vec![crate::template::EnvFromSecret {
                secret_ref: crate::template::SecretName {
                    name: "agent-env".into(),
                    optional: None,
                },
            }],
            backoff_limit: Some(2),
            active_deadline_seconds: Some(600),
            ttl_seconds_after_finished: Some(3600),
            ..Default::default()
        }
    }

    fn build(tr: &TaskRun) -> Job {
        let owner = owner_reference(tr).expect("stored TaskRun has an owner ref");
        job(tr, owner, &template())
    }

    fn pod_spec(job: &Job) -> &PodSpec {
        job.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec")
    }

    fn env_of(job: &Job) -> BTreeMap<String, EnvVar> {
        pod_spec(job).containers[0]
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect()
    }

    #[test]
    fn names_and_labels_come_from_identity_and_version() {
        let tr = taskrun(None);
        let job = build(&tr);
        assert_eq!(job.metadata.name.as_deref(), Some("billing-42-v2"));
        assert_eq!(job.metadata.namespace.as_deref(), Some("team-a"));
        let labels = job.metadata.labels.clone().expect("labels");
        assert_eq!(labels[labels::TASKRUN], "fix-login");
        assert_eq!(labels[labels::CONTEXT_VERSION], "2");
        assert_eq!(labels[labels::MANAGED_BY], "taskrun-controller");
        let pod_labels = job
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone());
        assert_eq!(pod_labels, Some(labels));
    }

    #[test]
    fn the_taskrun_is_the_controlling_owner() {
        let job = build(&taskrun(None));
        let owners = job.metadata.owner_references.expect("owners");
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "TaskRun");
        assert_eq!(owners[0].uid, "uid-1");
        assert_eq!(owners[0].controller, Some(true));
    }

    #[test]
    fn an_unsaved_taskrun_has_no_owner_reference() {
        let mut tr = taskrun(None);
        tr.metadata.uid = None;
        assert!(owner_reference(&tr).is_none());
    }

    #[test]
    fn the_template_is_applied() {
        let job = build(&taskrun(None));
        let spec = job.spec.as_ref().expect("spec");
        assert_eq!(spec.backoff_limit, Some(2));
        assert_eq!(spec.active_deadline_seconds, Some(600));
        assert_eq!(spec.ttl_seconds_after_finished, Some(3600));
        assert_eq!(spec.pod_replacement_policy.as_deref(), Some("Failed"));
        let pod = pod_spec(&job);
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.service_account_name.as_deref(), Some("agent"));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("agent:1"));
        assert_eq!(c.command, Some(vec!["/agent".to_owned()]));
        assert_eq!(c.args, Some(vec!["run".to_owned()]));
    }

    #[test]
    fn the_agent_gets_its_identity_in_the_environment() {
        let env = env_of(&build(&taskrun(Some("claude"))));
        let value = |k: &str| env[k].value.clone();
        assert_eq!(value("TASK_ID").as_deref(), Some("42"));
        assert_eq!(value("SERVICE_NAME").as_deref(), Some("billing"));
        assert_eq!(value("AGENT_NAME").as_deref(), Some("claude"));
        assert_eq!(value("CONTEXT_VERSION").as_deref(), Some("2"));
        assert_eq!(value("CONTEXT_DIR").as_deref(), Some("/context"));
    }

    #[test]
    fn secrets_are_referenced_never_copied() {
        let job = build(&taskrun(None));
        let env = env_of(&job);
        let api_key = &env["API_KEY"];
        assert_eq!(api_key.value, None);
        let r = api_key
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("secretKeyRef");
        assert_eq!(
            (r.name.as_str(), r.key.as_str()),
            ("agent-secrets", "api-key")
        );
        let from = pod_spec(&job).containers[0]
            .env_from
            .clone()
            .expect("envFrom");
        assert_eq!(
            from[0].secret_ref.as_ref().map(|s| s.name.as_str()),
            Some("agent-env")
        );
    }

    #[test]
    fn files_are_mounted_read_only_from_the_versions_config_map() {
        let job = build(&taskrun(None));
        let pod = pod_spec(&job);
        let mount = &pod.containers[0].volume_mounts.clone().expect("mounts")[0];
        assert_eq!(mount.mount_path, "/context");
        assert_eq!(mount.read_only, Some(true));
        let volume = &pod.volumes.clone().expect("volumes")[0];
        assert_eq!(volume.name, mount.name);
        let source = volume.config_map.as_ref().expect("configMap volume");
        assert_eq!(source.name, "billing-42-v2-files");
    }

    #[test]
    fn pods_meet_pod_security_restricted() {
        let job = build(&taskrun(None));
        let pod = pod_spec(&job);
        let psc = pod.security_context.as_ref().expect("pod securityContext");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert!(psc.run_as_user.is_some_and(|u| u != 0));
        assert_eq!(
            psc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault")
        );
        for c in &pod.containers {
            let sc = c
                .security_context
                .as_ref()
                .expect("container securityContext");
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(sc.run_as_non_root, Some(true));
            assert_eq!(
                sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
                Some(vec!["ALL".to_owned()])
            );
            assert!(sc.capabilities.as_ref().is_some_and(|c| c.add.is_none()));
            assert_eq!(sc.privileged, None);
        }
        assert!(pod.volumes.iter().flatten().all(|v| v.host_path.is_none()));
        assert_eq!(pod.host_network, None);
    }

    #[test]
    fn no_service_account_no_token() {
        let tr = taskrun(None);
        let owner = owner_reference(&tr).expect("owner");
        let t = JobTemplate {
            image: "agent:1".into(),
            ..Default::default()
        };
        let job = job(&tr, owner, &t);
        assert_eq!(pod_spec(&job).automount_service_account_token, Some(false));
        assert_eq!(job.spec.as_ref().and_then(|s| s.backoff_limit), None);
    }

    #[test]
    fn the_config_map_holds_every_file_by_name() {
        let tr = taskrun(None);
        let cm = config_map(&tr, owner_reference(&tr).expect("owner"));
        assert_eq!(cm.metadata.name.as_deref(), Some("billing-42-v2-files"));
        assert_eq!(cm.immutable, Some(true));
        let data = cm.data.expect("data");
        assert_eq!(data.len(), 2);
        assert_eq!(data["task.md"], "# Fix login");
        assert_eq!(data["notes.md"], "more");
        assert_eq!(
            cm.metadata.owner_references.map(|o| o[0].uid.clone()),
            Some("uid-1".into())
        );
    }

    #[test]
    fn metadata_and_status_the_builders_do_not_use_never_reach_the_children() {
        let plain = taskrun(Some("a"));
        // The same TaskRun as read back from the API: another resourceVersion, generation and
        // timestamps, managers' fields, annotations and labels of other tools (one of the
        // project's labels stale), finalizers, and a status.
        let mut read = serde_json::to_value(&plain).expect("serializes");
        let meta = &mut read["metadata"];
        meta["resourceVersion"] = "4711".into();
        meta["generation"] = 3.into();
        meta["creationTimestamp"] = "2024-05-01T10:00:00Z".into();
        meta["generateName"] = "fix-".into();
        meta["finalizers"] = serde_json::json!(["example.com/keep"]);
        meta["managedFields"] = serde_json::json!([{
            "manager": "kubectl", "operation": "Apply", "apiVersion": "orchestrator.io/v1",
            "time": "2024-05-01T10:00:00Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:taskId": {}}}
        }]);
        meta["annotations"] = serde_json::json!({
            "kubectl.kubernetes.io/last-applied-configuration": "{\"spec\":{}}",
            "team": "payments"
        });
        meta["labels"] = serde_json::json!({
            "app.kubernetes.io/instance": "argo-app",
            (labels::AGENT_NAME): "stale",
            (labels::CONTEXT_VERSION): "1"
        });
        read["status"] = serde_json::json!({
            "phase": "Running", "jobName": "billing-42-v1", "configMapName": "billing-42-v1-files",
            "message": "running", "attempts": 1, "observedGeneration": 2,
            "observedContextVersion": 1, "startTime": "2024-05-01T10:00:05Z"
        });
        let read: TaskRun = serde_json::from_value(read).expect("a TaskRun");
        assert!(read.status.as_ref().is_some_and(|s| s.attempts == Some(1)));
        assert_eq!(read.metadata.managed_fields.as_ref().map(Vec::len), Some(1));

        assert_eq!(build(&read), build(&plain));
        let owner = |tr: &TaskRun| owner_reference(tr).expect("owner");
        assert_eq!(
            config_map(&read, owner(&read)),
            config_map(&plain, owner(&plain))
        );
    }
}
