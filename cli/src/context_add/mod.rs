//! `kubectl taskrun context add`: read, build the apply patch, apply; on 409 Conflict (someone
//! else changed the TaskRun since we read it) wait a jittered, growing while and start over.
//! A TaskRun that already has every file as given is left alone, so a call retried after its
//! answer was lost succeeds without raising contextVersion a second time.

mod files;
mod patch;

use std::time::Duration;

use kube::Api;
use kube::api::{Patch, PatchParams};
use taskrun::{MarkdownFile, TaskRun};

use crate::error::{Error, describe, may_have_taken_effect, status_code};

pub use files::load;
pub use patch::MANAGER;
use patch::Plan;

/// Conflicts only last while other writers are mid-flight; this many rounds outlasts dozens
/// of concurrent callers (each round lets at least one of them through).
const MAX_ATTEMPTS: u32 = 60;

/// What a successful `context add` did.
#[derive(Debug)]
pub struct Added {
    pub context_version: i64,
    pub files: Vec<String>,
    pub attempts: u32,
    /// False when the TaskRun already had every file as given, and nothing was sent.
    pub changed: bool,
    /// The message of the TaskRun's failure as a duplicate, when it lost that race: no version
    /// of it runs while the TaskRun that holds its task lives.
    pub lost_as_duplicate: Option<String>,
    /// Other managers that set contextVersion by server-side apply (a GitOps tool), and whose
    /// next apply of their lower value is therefore refused.
    pub also_applied_by: Vec<String>,
}

impl Added {
    /// The line `context add` prints for TaskRun `name`.
    pub fn summary(&self, name: &str) -> String {
        let files = self.files.join(", ");
        let what = match (self.changed, self.attempts) {
            (true, _) => format!("added {files}"),
            (false, 1) => format!("already has, as given (nothing sent) {files}"),
            // An apply of this call was answered 409 Conflict: not applied then, but the client
            // itself resends an apply answered 503/504, and one that went through all the same
            // is answered 409 the second time. This call or another added them meanwhile.
            (false, _) => format!(
                "has, as given, {files} (added while this call retried, by it or by another call)"
            ),
        };
        format!(
            "taskrun/{name} context version {}: {what}",
            self.context_version
        )
    }
}

/// Adds `new_files` (already read and checked with `load`) to TaskRun `name`.
pub async fn run(
    client: kube::Client,
    namespace: &str,
    name: &str,
    new_files: Vec<MarkdownFile>,
) -> Result<Added, Error> {
    let api: Api<TaskRun> = Api::namespaced(client, namespace);
    let params = PatchParams::apply(MANAGER).force();
    let mut last = String::new();
    for attempt in 1..=MAX_ATTEMPTS {
        let current = api
            .get_opt(name)
            .await
            .map_err(|e| Error::api(format!("reading TaskRun {name}"), e))?
            .ok_or_else(|| Error::NotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })?;
        let files = || new_files.iter().map(|f| f.filename.clone()).collect();
        let body = match patch::build(&current, &new_files).map_err(Error::Invalid)? {
            Plan::Apply(body) => body,
            // Cluster state, not bad input: exit code 1, saying what to do.
            Plan::BeingDeleted => {
                return Err(Error::BeingDeleted {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                });
            }
            Plan::Present => {
                return Ok(Added {
                    context_version: current.spec.context_version,
                    files: files(),
                    attempts: attempt,
                    changed: false,
                    lost_as_duplicate: current.lost_as_duplicate().map(str::to_owned),
                    also_applied_by: Vec::new(),
                });
            }
        };
        // Read before the apply: forced, it takes contextVersion from them.
        let also_applied_by = patch::other_appliers_of_context_version(
            current
                .metadata
                .managed_fields
                .as_deref()
                .unwrap_or_default(),
        );
        // force: take contextVersion over from whoever set it last (kubectl, a GitOps tool);
        // raising it is the point of the command. Files are new or already ours, so force
        // never takes a file from another manager.
        match api.patch(name, &params, &Patch::Apply(&body)).await {
            Ok(applied) => {
                return Ok(Added {
                    context_version: applied.spec.context_version,
                    files: files(),
                    attempts: attempt,
                    changed: true,
                    lost_as_duplicate: applied.lost_as_duplicate().map(str::to_owned),
                    also_applied_by,
                });
            }
            Err(e) if status_code(&e) == Some(409) => {
                last = describe(&e);
                let wait = backoff(attempt, fastrand::f64());
                tracing::debug!(
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    "conflict, retrying"
                );
                tokio::time::sleep(wait).await;
            }
            Err(e) if may_have_taken_effect(&e) => {
                return Err(Error::MaybeApplied {
                    name: name.to_owned(),
                    source: e,
                });
            }
            // Deleted since it was read: the apply was taken for a create of the partial
            // TaskRun it sends, and refused as invalid (no serviceName, no taskId). Say so, not
            // what that create was refused for.
            Err(_) if matches!(api.get_opt(name).await, Ok(None)) => {
                return Err(Error::NotFound {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                });
            }
            Err(e) => return Err(Error::api(format!("applying to TaskRun {name}"), e)),
        }
    }
    Err(Error::TooManyConflicts {
        attempts: MAX_ATTEMPTS,
        last,
    })
}

/// "Full jitter" exponential backoff: a uniform wait in [0, min(cap, base * 2^attempt)), so
/// callers that collided spread out instead of colliding again in lockstep. `unit` is a
/// uniform random number in [0, 1).
pub fn backoff(attempt: u32, unit: f64) -> Duration {
    const BASE_MS: f64 = 20.0;
    const CAP_MS: f64 = 1000.0;
    let ceiling = (BASE_MS * 2f64.powi(attempt.min(16) as i32)).min(CAP_MS);
    Duration::from_secs_f64(ceiling * unit.clamp(0.0, 1.0) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn added(changed: bool, attempts: u32) -> Added {
        Added {
            context_version: 4,
            files: vec!["a.md".into(), "b.md".into()],
            attempts,
            changed,
            lost_as_duplicate: None,
            also_applied_by: Vec::new(),
        }
    }

    #[test]
    fn the_summary_claims_nothing_sent_only_when_nothing_was() {
        assert_eq!(
            added(true, 3).summary("t1"),
            "taskrun/t1 context version 4: added a.md, b.md"
        );
        assert_eq!(
            added(false, 1).summary("t1"),
            "taskrun/t1 context version 4: already has, as given (nothing sent) a.md, b.md"
        );
        let retried = added(false, 2).summary("t1");
        assert!(
            retried.contains("has, as given") && !retried.contains("nothing sent"),
            "{retried}"
        );
    }

    #[test]
    fn backoff_grows_then_caps() {
        assert_eq!(backoff(1, 1.0), Duration::from_millis(40));
        assert_eq!(backoff(3, 1.0), Duration::from_millis(160));
        assert_eq!(backoff(10, 1.0), Duration::from_millis(1000));
        assert_eq!(backoff(u32::MAX, 1.0), Duration::from_millis(1000));
    }

    #[test]
    fn backoff_is_jittered_down_to_zero() {
        assert_eq!(backoff(5, 0.0), Duration::ZERO);
        assert_eq!(backoff(5, 0.5), Duration::from_millis(320));
        assert_eq!(backoff(5, -3.0), Duration::ZERO);
    }
}
