//! What the controller keeps in memory of TaskRuns and their children, and how little.
//!
//! Reconciles read children from these caches instead of asking the API server, so a reconcile
//! that finds everything in place makes no API call at all. The caches are only read; nothing
//! trimmed here is ever written back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use taskrun::{TaskRun, TaskRunStatus};

use crate::status;

/// The children this controller has seen, by their watches (Jobs without their pod template,
/// ConfigMaps as metadata only).
#[derive(Clone)]
pub struct Children {
    pub jobs: Store<Job>,
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
}

impl Children {
    /// Waits until both watches have listed once (at once, after the first time), so a
    /// reconcile at start-up does not take a child it has not seen yet for a missing one.
    pub async fn wait_until_ready(&self) {
        // An error means the watch is gone with its writer (the controller is stopping).
        let _ = self.jobs.wait_until_ready().await;
        let _ = self.config_maps.wait_until_ready().await;
    }

    pub fn job(&self, namespace: &str, name: &str) -> Option<Arc<Job>> {
        self.jobs.get(&ObjectRef::new(name).within(namespace))
    }

    pub fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<PartialObjectMeta<ConfigMap>>> {
        self.config_maps
            .get(&ObjectRef::new(name).within(namespace))
    }
}

/// True when `child` is controlled by the TaskRun with `uid`.
pub fn controlled_by(child: &ObjectMeta, uid: Option<&str>) -> bool {
    child
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

/// The statuses this controller wrote that its TaskRun cache may not show yet, per TaskRun
/// uid. This controller (the leader) is the only writer of the status, so what it wrote last
/// is the truth; reconciling from an older cached status would write it again, record its
/// Event twice, or (a Job removed after finishing) start a finished version over.
/// An entry goes once the cache shows what was written, so it holds only writes in flight.
#[derive(Default)]
pub struct WrittenStatus(Mutex<HashMap<String, TaskRunStatus>>);

impl WrittenStatus {
    /// The status to reconcile from: the one last written here while the cache lags behind
    /// it, the cached one otherwise.
    pub fn latest(&self, uid: &str, cached: Option<&TaskRunStatus>) -> TaskRunStatus {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match (map.get(uid), cached) {
            (Some(written), Some(c)) if !status::differs(c, written) => {
                map.remove(uid);
                c.clone()
            }
            (Some(written), _) => written.clone(),
            (None, c) => c.cloned().unwrap_or_default(),
        }
    }

    pub fn record(&self, uid: &str, written: TaskRunStatus) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(uid.to_owned(), written);
    }

    pub fn forget(&self, uid: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(uid);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// Drops what the reconciler never reads from a cached TaskRun: managedFields and annotations
/// (the last-applied annotation repeats the whole spec), and the markdown contents once the
/// ConfigMap of the current version is recorded in the status (they are needed only to create
/// it; if it must be made again, the reconciler reads the TaskRun from the API server).
pub fn trim_taskrun(tr: &mut TaskRun) {
    let meta = &mut tr.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.labels = None;
    meta.owner_references = None;
    let recorded = tr.status.as_ref().is_some_and(|s| {
        s.observed_context_version == Some(tr.spec.context_version) && s.config_map_name.is_some()
    });
    if recorded {
        tr.spec.markdown_files = Vec::new();
    }
}

/// True when the markdown files were trimmed from this cached TaskRun (an admitted TaskRun
/// always has at least one).
pub fn files_trimmed(tr: &TaskRun) -> bool {
    tr.spec.markdown_files.is_empty()
}

/// A Job as the reconciler reads it: who controls it, whether it is going away, and its status.
pub fn trim_job(job: &mut Job) {
    trim_meta(&mut job.metadata);
    job.spec = None;
}

pub fn trim_config_map(cm: &mut PartialObjectMeta<ConfigMap>) {
    trim_meta(&mut cm.metadata);
}

fn trim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.annotations = None;
    meta.labels = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use taskrun::{MarkdownFile, TaskRunSpec};

    fn taskrun(version: i64, status: Option<TaskRunStatus>) -> TaskRun {
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

    fn recorded(version: i64) -> TaskRunStatus {
        TaskRunStatus {
            observed_context_version: Some(version),
            config_map_name: Some("cm".into()),
            ..Default::default()
        }
    }

    #[test]
    fn files_are_dropped_only_once_the_current_versions_config_map_is_recorded() {
        for (tr, dropped) in [
            (taskrun(1, None), false),
            (taskrun(2, Some(recorded(1))), false),
            (taskrun(1, Some(recorded(1))), true),
        ] {
            let mut tr = tr;
            trim_taskrun(&mut tr);
            assert_eq!(files_trimmed(&tr), dropped, "{:?}", tr.status);
        }
    }

    #[test]
    fn a_written_status_wins_over_the_cache_until_the_cache_shows_it() {
        let written = WrittenStatus::default();
        let running = TaskRunStatus {
            phase: Some(taskrun::Phase::Running),
            ..recorded(1)
        };
        assert_eq!(written.latest("u", None), TaskRunStatus::default());
        written.record("u", running.clone());
        // The cache has nothing yet, or an older status: what was written counts.
        assert_eq!(written.latest("u", None), running);
        assert_eq!(written.latest("u", Some(&recorded(1))), running);
        assert_eq!(written.len(), 1);
        // The cache caught up (lastUpdated aside): the entry goes.
        let shown = TaskRunStatus {
            last_updated: Some(Time(Timestamp::UNIX_EPOCH)),
            ..running.clone()
        };
        assert_eq!(written.latest("u", Some(&shown)), shown);
        assert_eq!(written.len(), 0);
        written.record("u", running);
        written.forget("u");
        assert_eq!(written.len(), 0);
    }
}
