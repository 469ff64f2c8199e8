//! What a TaskRun's status should say: the Job's status mapped to a phase and reason, and the
//! next TaskRunStatus built from it. Pure but for `now`: the reconciler feeds in what it saw
//! and the time.

use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use taskrun::{Phase, TaskRunStatus};

pub use taskrun::conditions::{READY, STALLED, SUCCEEDED, reason};

/// Where one version of a TaskRun stands, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub phase: Phase,
    /// A CamelCase reason for the conditions and Events.
    pub reason: String,
    pub message: String,
    /// When the version ended, if the source of the outcome says.
    pub finished_at: Option<Time>,
}

impl Outcome {
    pub fn new(phase: Phase, reason: &str, message: impl Into<String>) -> Self {
        Self {
            phase,
            reason: reason.to_owned(),
            message: message.into(),
            finished_at: None,
        }
    }
}

fn is_true(c: &JobCondition, type_: &str) -> bool {
    c.type_ == type_ && c.status == "True"
}

/// Whether the Job has finished: Complete or Failed, which the Job controller writes once
/// none of its pods is left.
pub fn finished(status: Option<&JobStatus>) -> bool {
    let conditions = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    conditions
        .iter()
        .any(|c| is_true(c, "Complete") || is_true(c, "Failed"))
}

/// The outcome of a Job, read from its conditions first (Complete / SuccessCriteriaMet,
/// Failed / FailureTarget, Suspended) and its pod counts after.
///
/// SuccessCriteriaMet and FailureTarget are the Job controller's decision, written before it
/// has stopped the Job's pods (past `activeDeadlineSeconds` it deletes them, and an agent may
/// take its grace period to stop); it adds Complete or Failed once none is left. Until then the
/// version is still Running: a TaskRun reported finished while its agent still writes would
/// let `kubectl wait`, a GitOps tool or a raised contextVersion act too soon.
pub fn job_outcome(job_name: &str, status: Option<&JobStatus>) -> Outcome {
    let empty = JobStatus::default();
    let status = status.unwrap_or(&empty);
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let find = |types: &[&str]| {
        types
            .iter()
            .find_map(|t| conditions.iter().find(|c| is_true(c, t)))
    };
    let final_condition = find(&["Complete", "Failed"]);
    if final_condition.is_none()
        && let Some(c) = find(&["SuccessCriteriaMet", "FailureTarget"])
        && pods_still_stopping(status)
    {
        let how = if c.type_ == "SuccessCriteriaMet" {
            "succeeded".to_owned()
        } else {
            format!(
                "failed ({})",
                c.reason.as_deref().unwrap_or(reason::JOB_FAILED)
            )
        };
        return Outcome::new(
            Phase::Running,
            reason::RUNNING,
            format!("Job {job_name} has {how}; its pods are stopping"),
        );
    }
    if let Some(c) = find(&["Complete", "SuccessCriteriaMet"]) {
        return Outcome {
            finished_at: status
                .completion_time
                .clone()
                .or_else(|| c.last_transition_time.clone()),
            ..Outcome::new(
                Phase::Succeeded,
                reason::COMPLETED,
                format!("Job {job_name} completed"),
            )
        };
    }
    if let Some(c) = find(&["Failed", "FailureTarget"]) {
        let reason = c
            .reason
            .as_deref()
            .filter(|r| reason::JOB_FAILURE.contains(r))
            .unwrap_or(reason::JOB_FAILED);
        let detail = c.message.as_deref().filter(|m| !m.is_empty());
        let message = match detail {
            Some(m) => format!("Job {job_name} failed: {m}"),
            None => format!("Job {job_name} failed ({reason})"),
        };
        return Outcome {
            finished_at: c.last_transition_time.clone(),
            ..Outcome::new(Phase::Failed, reason, message)
        };
    }
    if find(&["Suspended"]).is_some() {
        return Outcome::new(
            Phase::Pending,
            reason::SUSPENDED,
            format!("Job {job_name} is suspended"),
        );
    }
    // `active` counts pods not yet running too (pending: unschedulable, pulling an image);
    // `ready` only those whose containers run (the agent's have no readiness probe).
    if status.ready.unwrap_or(0) > 0 {
        return Outcome::new(
            Phase::Running,
            reason::RUNNING,
            format!("Job {job_name} has a pod running"),
        );
    }
    // The Job controller first notes a pod that ended among the uncounted ones, with `active`
    // already down, and counts it in `succeeded` or `failed` in a later write: read alone,
    // that first write would look like a Job still waiting for its first pod.
    let (ended, ended_failed) = status
        .uncounted_terminated_pods
        .as_ref()
        .map_or((0, 0), |u| {
            (count(u.succeeded.as_deref()), count(u.failed.as_deref()))
        });
    if ended > 0 && ended_failed == 0 {
        return Outcome::new(
            Phase::Running,
            reason::RUNNING,
            format!("Job {job_name}'s pod has ended; the Job is finishing"),
        );
    }
    // With `podReplacementPolicy: Failed` (the Jobs made here), a pod deleted or evicted is
    // neither active nor failed until it has stopped, and nothing replaces it before.
    if status.active.unwrap_or(0) == 0 && pods_still_stopping(status) {
        return Outcome::new(
            Phase::Pending,
            reason::RETRYING,
            format!(
                "Job {job_name}'s pod is stopping; the Job starts another once it has stopped, \
                 unless its backoff limit is reached (a pod on an unreachable node stops once the \
                 node is deleted or tainted node.kubernetes.io/out-of-service)"
            ),
        );
    }
    let failed = i64::from(status.failed.unwrap_or(0)).saturating_add(ended_failed);
    if failed > 0 {
        return Outcome::new(
            Phase::Pending,
            reason::RETRYING,
            format!("Job {job_name} has {failed} failed pod(s) and is starting another"),
        );
    }
    if status.active.unwrap_or(0) > 0 {
        return Outcome::new(
            Phase::Pending,
            reason::POD_PENDING,
            format!(
                "Job {job_name}'s pod is not running yet: being scheduled, pulling its image or \
                 starting (kubectl describe pods -l batch.kubernetes.io/job-name={job_name} says \
                 which)"
            ),
        );
    }
    Outcome::new(
        Phase::Pending,
        reason::JOB_CREATED,
        format!("Job {job_name} created, waiting for its pod"),
    )
}

/// Whether, and how, a Job is being deleted, as its metadata says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deletion {
    No,
    /// Its pods go with it (a foreground deletion).
    StoppingPods,
    /// Its pods are left to run on (an orphaning deletion, the API's default for a Job).
    OrphaningPods,
}

/// How the Job with metadata `meta` is being deleted, if it is.
pub fn deletion(meta: &ObjectMeta) -> Deletion {
    if meta.deletion_timestamp.is_none() {
        Deletion::No
    } else if meta.finalizers.iter().flatten().any(|f| f == "orphan") {
        Deletion::OrphaningPods
    } else {
        Deletion::StoppingPods
    }
}

/// `outcome` of a Job with status `status`, being deleted as `deletion` says. A Job with an
/// end keeps it: a final one (a finished Job's TTL deletes it in the foreground), or a decided
/// one (SuccessCriteriaMet, FailureTarget) whose pods still stop, which is its end once it is
/// gone (`as_gone`). Any other Job is going before its end: nothing replaces its pods, and the
/// version ends as `JobLost` once it is gone (read alone, its pods being stopped would look
/// like a retry). The current version's Job is deleted only by others: this controller
/// deletes older versions' Jobs.
pub fn being_deleted(
    outcome: Outcome,
    job_name: &str,
    status: Option<&JobStatus>,
    deletion: Deletion,
) -> Outcome {
    if deletion == Deletion::No {
        return outcome;
    }
    if has_ended(job_name, status) {
        return outcome;
    }
    let pods = match deletion {
        Deletion::OrphaningPods => format!(
            "its pods are left to run on (an orphaning delete): check them (kubectl get pods -l \
             batch.kubernetes.io/job-name={job_name}) before raising contextVersion to run the \
             task again"
        ),
        _ => "raise contextVersion to run the task again".to_owned(),
    };
    Outcome::new(
        outcome.phase,
        reason::JOB_DELETING,
        format!(
            "Job {job_name} is being deleted before its end, not by this controller; this \
             version ends as JobLost once it is gone; {pods}"
        ),
    )
}

/// Pods of the Job still terminating (uncounted ones have ended already). `terminating` is
/// reported since Kubernetes 1.28 with JobPodReplacementPolicy, on by default since 1.29;
/// without it a decided end is taken as the end.
fn pods_still_stopping(status: &JobStatus) -> bool {
    status.terminating.unwrap_or(0) > 0
}

/// How long a decided end waits for the Job's pods to stop before it is reported anyway: a
/// pod on a node gone dark, or held by a finalizer, may never be seen to stop. Four times the
/// default termination grace period.
pub const STOPPING_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// The Job's status as its end is read at `now`: when its end was decided more than
/// `STOPPING_LIMIT` ago, as if its pods had stopped (`as_gone`). Also how long, if at all,
/// until that limit is reached, for the reconcile to look again then.
pub fn stopping_limited(
    status: Option<JobStatus>,
    now: &Time,
) -> (Option<JobStatus>, Option<std::time::Duration>) {
    let Some(status) = status else {
        return (None, None);
    };
    if !pods_still_stopping(&status) {
        return (Some(status), None);
    }
    let decided = status.conditions.iter().flatten().find(|c| {
        (c.type_ == "SuccessCriteriaMet" || c.type_ == "FailureTarget") && c.status == "True"
    });
    let Some(since) = decided.and_then(|c| c.last_transition_time.as_ref()) else {
        return (Some(status), None);
    };
    let waited = now.0.duration_since(since.0).as_secs_f64().max(0.0);
    let waited = std::time::Duration::try_from_secs_f64(waited).unwrap_or(STOPPING_LIMIT);
    match STOPPING_LIMIT.checked_sub(waited) {
        Some(left) if !left.is_zero() => (Some(status), Some(left)),
        _ => (Some(as_gone(status)), None),
    }
}

/// Whether the Job's end is decided or final, its pods stopping or not: how it reads once gone.
pub fn has_ended(job_name: &str, status: Option<&JobStatus>) -> bool {
    let gone = status.cloned().map(as_gone);
    job_outcome(job_name, gone.as_ref()).phase.is_final()
}

/// The last state of a Job that is gone, as its end is read: its pods are gone or going with
/// it, so a decided end (SuccessCriteriaMet, FailureTarget) is its end.
pub fn as_gone(mut status: JobStatus) -> JobStatus {
    status.terminating = None;
    status
}

fn count(pods: Option<&[String]>) -> i64 {
    pods.map_or(0, |p| i64::try_from(p.len()).unwrap_or(i64::MAX))
}

/// How soon to look again at what version `version` waits for (`waiting`: the reason it
/// waits, a child name still held by a TaskRun going away, or an older version's Job
/// stopping): 2 s at first, then a quarter of the time this version has waited so far, at
/// most 30 s. Garbage collection after a mass deletion can take minutes, and every look at a
/// name reads the TaskRun with its markdown and tries the name again.
pub fn wait_again(
    prev: &TaskRunStatus,
    version: i64,
    waiting: &str,
    now: &Time,
) -> std::time::Duration {
    let waiting = prev
        .conditions
        .iter()
        .find(|c| c.type_ == SUCCEEDED && c.reason == waiting)
        .filter(|_| prev.observed_context_version == Some(version));
    let waited = waiting.map_or(0, |c| {
        now.0.as_second() - c.last_transition_time.0.as_second()
    });
    let secs = (waited / 4).clamp(2, 30);
    std::time::Duration::from_secs(secs.unsigned_abs())
}

/// The time to build a status with, in whole seconds: the API server stores times at that
/// precision, and a status compared with what was written must not differ by the nanoseconds.
pub fn now() -> Time {
    let secs = Timestamp::now().as_second();
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// What the reconciler knows about the current version, besides its outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub generation: Option<i64>,
    pub context_version: i64,
    pub job_name: Option<String>,
    pub config_map_name: Option<String>,
    pub attempts: i64,
    /// When the version's Job started (its status.startTime, or its creation).
    pub started_at: Option<Time>,
}

/// The conditions for a phase: Succeeded is Unknown while the version runs and True/False at
/// its end; Ready is True only when the version succeeded; Stalled=True only when it failed.
/// A condition keeps its lastTransitionTime from `prev` while its status stays the same
/// (`next_status` passes none for a new version, whose run starts its own times).
pub fn conditions(
    prev: &[Condition],
    o: &Outcome,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let (succeeded, ready) = match o.phase {
        Phase::Pending | Phase::Running => ("Unknown", "False"),
        Phase::Succeeded => ("True", "True"),
        Phase::Failed => ("False", "False"),
    };
    // Stalled is an "abnormal-true" condition, present only when the version failed: kstatus
    // (Flux's health checks) reads Stalled=True as Failed instead of waiting for a timeout.
    let stalled = (o.phase == Phase::Failed).then_some((STALLED, "True"));
    [(READY, ready), (SUCCEEDED, succeeded)]
        .into_iter()
        .chain(stalled)
        .map(|(type_, status)| {
            let since = prev
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: type_.to_owned(),
                status: status.to_owned(),
                reason: o.reason.clone(),
                message: o.message.clone(),
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// `outcome` for version `version`, given the status before: a pod that has run and is not
/// ready now (its node stopped reporting, say) stays `Running`, saying so, rather than going
/// back to `PodPending`, whose message is about a pod that never started.
pub fn once_running(
    outcome: Outcome,
    prev: &TaskRunStatus,
    version: i64,
    job_name: &str,
) -> Outcome {
    let ran = prev.phase == Some(Phase::Running) && prev.observed_context_version == Some(version);
    if ran && outcome.reason == reason::POD_PENDING {
        return Outcome::new(
            Phase::Running,
            reason::RUNNING,
            format!(
                "Job {job_name}'s pod has run but is not ready now (its node may have stopped reporting)"
            ),
        );
    }
    outcome
}

/// The status to write for this observation. Times already recorded for the same version
/// are kept, so an unchanged world gives an unchanged status (and no write).
pub fn next_status(
    prev: &TaskRunStatus,
    seen: &Observed,
    o: &Outcome,
    now: &Time,
) -> TaskRunStatus {
    let same_version = prev.observed_context_version == Some(seen.context_version);
    let keep = |t: &Option<Time>| if same_version { t.clone() } else { None };
    let start_time = keep(&prev.start_time).or_else(|| seen.started_at.clone());
    let completion_time = if o.phase.is_final() {
        keep(&prev.completion_time)
            .or_else(|| o.finished_at.clone())
            .or_else(|| Some(now.clone()))
    } else {
        None
    };
    TaskRunStatus {
        phase: Some(o.phase),
        job_name: seen.job_name.clone(),
        config_map_name: seen.config_map_name.clone(),
        message: Some(o.message.clone()),
        last_updated: Some(now.clone()),
        observed_generation: seen.generation,
        observed_context_version: Some(seen.context_version),
        attempts: Some(seen.attempts),
        start_time,
        completion_time,
        conditions: conditions(
            if same_version { &prev.conditions } else { &[] },
            o,
            seen.generation,
            now,
        ),
    }
}

/// Whether writing `next` would change anything but lastUpdated.
pub fn differs(prev: &TaskRunStatus, next: &TaskRunStatus) -> bool {
    let strip = |s: &TaskRunStatus| TaskRunStatus {
        last_updated: None,
        ..s.clone()
    };
    strip(prev) != strip(next)
}

/// Whether the status records a final phase for this context version: then nothing about
/// that version is ever looked at or changed again (its Job may be gone by TTL or by hand).
pub fn is_final_for(status: Option<&TaskRunStatus>, context_version: i64) -> bool {
    status.is_some_and(|s| {
        s.observed_context_version == Some(context_version) && s.phase.is_some_and(Phase::is_final)
    })
}

/// Whether the status names the Job of this context version: then that Job is never made
/// again, and counts among the versions run.
pub fn names_job_for(status: &TaskRunStatus, context_version: i64) -> bool {
    status.observed_context_version == Some(context_version) && status.job_name.is_some()
}

/// How many versions ran before `context_version`, from `status.attempts`, which counts this
/// version too once its Job is named. Another writer of the status may have set any number:
/// the count is read between 0 and `u32::MAX`, so adding this version cannot overflow.
pub fn runs_before(status: &TaskRunStatus, context_version: i64) -> i64 {
    let counted_here = names_job_for(status, context_version);
    status
        .attempts
        .unwrap_or(0)
        .clamp(0, i64::from(u32::MAX))
        .saturating_sub(i64::from(counted_here))
        .max(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::UncountedTerminatedPods;

    #[test]
    fn runs_before_counts_the_earlier_versions_whatever_the_status_says() {
        let status = |attempts: Option<i64>, version: Option<i64>, job: bool| TaskRunStatus {
            attempts,
            observed_context_version: version,
            job_name: job.then(|| "svc-1-v2".to_owned()),
            ..TaskRunStatus::default()
        };
        // A first run, and a version whose Job is already counted.
        assert_eq!(runs_before(&status(None, None, false), 1), 0);
        assert_eq!(runs_before(&status(Some(1), Some(1), true), 1), 0);
        // Version 2 of a task whose version 1 ran: before and after its Job is named.
        assert_eq!(runs_before(&status(Some(1), Some(1), true), 2), 1);
        assert_eq!(runs_before(&status(Some(2), Some(2), true), 2), 1);
        // Counted here but with no count (a status written by someone else).
        assert_eq!(runs_before(&status(None, Some(2), true), 2), 0);
        assert_eq!(runs_before(&status(Some(-5), Some(2), false), 2), 0);
        let huge = runs_before(&status(Some(i64::MAX), Some(1), false), 2);
        assert_eq!(huge, i64::from(u32::MAX));
        assert!(huge.checked_add(1).is_some());
    }

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("valid time"))
    }

    #[test]
    fn a_long_wait_for_a_previous_owner_is_looked_at_less_often() {
        let waiting = |since: i64, version: i64| TaskRunStatus {
            observed_context_version: Some(version),
            conditions: vec![Condition {
                type_: SUCCEEDED.into(),
                status: "Unknown".into(),
                reason: reason::WAITING_FOR_PREVIOUS_OWNER.into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: t(since),
            }],
            ..TaskRunStatus::default()
        };
        let secs = |prev: &TaskRunStatus, now: i64| {
            wait_again(prev, 2, reason::WAITING_FOR_PREVIOUS_OWNER, &t(now)).as_secs()
        };
        assert_eq!(secs(&TaskRunStatus::default(), 500), 2, "not waiting yet");
        assert_eq!(secs(&waiting(100, 2), 100), 2);
        assert_eq!(secs(&waiting(100, 2), 200), 25);
        assert_eq!(secs(&waiting(100, 2), 1000), 30);
        assert_eq!(secs(&waiting(100, 1), 1000), 2, "an older version's wait");
        let for_another_reason = wait_again(
            &waiting(100, 2),
            2,
            reason::PREVIOUS_VERSION_STOPPING,
            &t(1000),
        );
        assert_eq!(for_another_reason.as_secs(), 2, "a wait for something else");
        // A raised version that waits: its wait began now, not when the last one began to run.
        let running_v1 = next_status(
            &TaskRunStatus::default(),
            &seen(1),
            &Outcome::new(Phase::Running, reason::RUNNING, "r"),
            &t(100),
        );
        let waiting_v2 = next_status(
            &running_v1,
            &seen(2),
            &Outcome::new(Phase::Pending, reason::WAITING_FOR_PREVIOUS_OWNER, "w"),
            &t(5000),
        );
        assert_eq!(
            cond_of(&waiting_v2, SUCCEEDED).last_transition_time,
            t(5000)
        );
        assert_eq!(secs(&waiting_v2, 5000), 2);
    }

    fn cond(type_: &str, status: &str, reason: Option<&str>) -> JobCondition {
        JobCondition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.map(Into::into),
            message: Some("details".into()),
            last_transition_time: Some(t(200)),
            ..Default::default()
        }
    }

    fn with(conditions: Vec<JobCondition>) -> JobStatus {
        JobStatus {
            conditions: Some(conditions),
            ..Default::default()
        }
    }

    fn outcome(s: &JobStatus) -> Outcome {
        job_outcome("j", Some(s))
    }

    #[test]
    fn no_status_yet_is_pending_job_created() {
        let o = job_outcome("j", None);
        assert_eq!((o.phase, o.reason.as_str()), (Phase::Pending, "JobCreated"));
        let o = outcome(&JobStatus::default());
        assert_eq!((o.phase, o.reason.as_str()), (Phase::Pending, "JobCreated"));
    }

    #[test]
    fn a_pod_that_ran_and_lost_readiness_stays_running() {
        let pending = outcome(&JobStatus {
            active: Some(1),
            ready: Some(0),
            ..Default::default()
        });
        let running = TaskRunStatus {
            phase: Some(Phase::Running),
            observed_context_version: Some(2),
            ..TaskRunStatus::default()
        };
        let o = once_running(pending.clone(), &running, 2, "j");
        assert_eq!((o.phase, o.reason.as_str()), (Phase::Running, "Running"));
        assert!(o.message.contains("not ready now"), "{}", o.message);
        // Not for another version, nor before the pod first ran.
        let o = once_running(pending.clone(), &running, 3, "j");
        assert_eq!(o.reason, "PodPending");
        let o = once_running(pending, &TaskRunStatus::default(), 2, "j");
        assert_eq!(o.reason, "PodPending");
        // Other outcomes pass as they are.
        let done = outcome(&JobStatus {
            succeeded: Some(1),
            ..Default::default()
        });
        assert_eq!(once_running(done.clone(), &running, 2, "j"), done);
    }

    #[test]
    fn ready_pods_are_running_active_ones_are_not_yet() {
        for s in [
            JobStatus {
                active: Some(1),
                ready: Some(1),
                ..Default::default()
            },
            JobStatus {
                active: Some(1),
                ready: Some(1),
                failed: Some(1),
                ..Default::default()
            },
        ] {
            let o = outcome(&s);
            assert_eq!(
                (o.phase, o.reason.as_str()),
                (Phase::Running, "Running"),
                "{s:?}"
            );
        }
        // A pod that is pending (unschedulable, its image not pulled) is not running.
        let o = outcome(&JobStatus {
            active: Some(1),
            ready: Some(0),
            ..Default::default()
        });
        assert_eq!((o.phase, o.reason.as_str()), (Phase::Pending, "PodPending"));
        assert!(o.message.contains("not running yet"), "{}", o.message);
        // After a failure the next pod is a retry until it runs.
        let o = outcome(&JobStatus {
            active: Some(1),
            failed: Some(1),
            ..Default::default()
        });
        assert_eq!((o.phase, o.reason.as_str()), (Phase::Pending, "Retrying"));
    }

    #[test]
    fn failed_pods_without_active_ones_are_a_retry() {
        let o = outcome(&JobStatus {
            failed: Some(1),
            ..Default::default()
        });
        assert_eq!((o.phase, o.reason.as_str()), (Phase::Pending, "Retrying"));
    }

    #[test]
    fn a_stopping_pod_with_no_decided_end_is_a_retry_that_waits() {
        let o = outcome(&JobStatus {
            terminating: Some(1),
            failed: Some(1),
            ..Default::default()
        });
        assert_eq!((o.phase, o.reason.as_str()), (Phase::Pending, "Retrying"));
        assert!(o.message.contains("pod is stopping"), "{}", o.message);
        // Its replacement already counted (a Job made with the default policy): that one's state.
        let o = outcome(&JobStatus {
            terminating: Some(1),
            active: Some(1),
            ..Default::default()
        });
        assert_eq!((o.phase, o.reason.as_str()), (Phase::Pending, "PodPending"));
    }

    #[test]
    fn a_job_being_deleted_before_its_end_says_so_and_keeps_an_end_it_had() {
        let deleted =
            |s: JobStatus| being_deleted(outcome(&s), "j", Some(&s), Deletion::StoppingPods);
        let o = deleted(JobStatus {
            terminating: Some(1),
            ..Default::default()
        });
        assert_eq!(
            (o.phase, o.reason.as_str()),
            (Phase::Pending, "JobDeleting")
        );
        assert!(o.message.contains("ends as JobLost"), "{}", o.message);
        let ran = deleted(JobStatus {
            ready: Some(1),
            ..Default::default()
        });
        assert_eq!(
            (ran.phase, ran.reason.as_str()),
            (Phase::Running, "JobDeleting")
        );
        let o = deleted(with(vec![cond("Complete", "True", None)]));
        assert_eq!(
            (o.phase, o.reason.as_str()),
            (Phase::Succeeded, "Completed")
        );
        // An end decided, its pods still stopping: it keeps that end, gone too.
        let mut past_deadline = with(vec![cond(
            "FailureTarget",
            "True",
            Some("DeadlineExceeded"),
        )]);
        past_deadline.terminating = Some(1);
        let o = deleted(past_deadline);
        assert_eq!((o.phase, o.reason.as_str()), (Phase::Running, "Running"));
        assert!(o.message.contains("its pods are stopping"), "{}", o.message);
    }

    #[test]
    fn how_a_job_is_being_deleted_is_read_from_its_metadata() {
        let mut meta = ObjectMeta::default();
        assert_eq!(deletion(&meta), Deletion::No);
        meta.deletion_timestamp = Some(t(1));
        assert_eq!(deletion(&meta), Deletion::StoppingPods);
        meta.finalizers = Some(vec!["foregroundDeletion".into()]);
        assert_eq!(deletion(&meta), Deletion::StoppingPods);
        meta.finalizers = Some(vec!["orphan".into()]);
        assert_eq!(deletion(&meta), Deletion::OrphaningPods);
        let running = JobStatus {
            ready: Some(1),
            ..Default::default()
        };
        let o = being_deleted(
            outcome(&running),
            "j",
            Some(&running),
            Deletion::OrphaningPods,
        );
        assert!(o.message.contains("left to run on"), "{}", o.message);
        let o = being_deleted(outcome(&running), "j", Some(&running), Deletion::No);
        assert_eq!(o.reason, "Running");
    }

    #[test]
    fn a_pod_that_ended_before_the_job_counted_it_is_no_new_wait() {
        let uncounted = |succeeded: &[&str], failed: &[&str]| JobStatus {
            uncounted_terminated_pods: Some(UncountedTerminatedPods {
                succeeded: Some(succeeded.iter().map(|p| (*p).to_owned()).collect()),
                failed: Some(failed.iter().map(|p| (*p).to_owned()).collect()),
            }),
            ..Default::default()
        };
        let o = outcome(&uncounted(&[], &["uid-1"]));
        assert_eq!((o.phase, o.reason.as_str()), (Phase::Pending, "Retrying"));
        assert!(o.message.contains("1 failed pod"), "{}", o.message);
        let mut s = uncounted(&[], &["uid-2"]);
        s.failed = Some(1);
        assert!(outcome(&s).message.contains("2 failed pod"));
        let o = outcome(&uncounted(&["uid-3"], &[]));
        assert_eq!((o.phase, o.reason.as_str()), (Phase::Running, "Running"));
        assert!(o.message.contains("finishing"), "{}", o.message);
        let o = outcome(&uncounted(&[], &[]));
        assert_eq!((o.phase, o.reason.as_str()), (Phase::Pending, "JobCreated"));
    }

    #[test]
    fn complete_and_success_criteria_met_are_succeeded() {
        for c in ["Complete", "SuccessCriteriaMet"] {
            let mut s = with(vec![cond(c, "True", None)]);
            s.active = Some(1); // a terminating pod does not make it Running again
            let o = outcome(&s);
            assert_eq!(
                (o.phase, o.reason.as_str()),
                (Phase::Succeeded, "Completed"),
                "{c}"
            );
            assert_eq!(o.finished_at, Some(t(200)));
        }
        let mut s = with(vec![cond("Complete", "True", None)]);
        s.completion_time = Some(t(300));
        assert_eq!(outcome(&s).finished_at, Some(t(300)));
    }

    #[test]
    fn failure_reasons_are_passed_through() {
        for why in reason::JOB_FAILURE {
            for c in ["Failed", "FailureTarget"] {
                let o = outcome(&with(vec![cond(c, "True", Some(why))]));
                assert_eq!((o.phase, o.reason.as_str()), (Phase::Failed, why), "{c}");
                assert!(o.message.contains("details"), "{}", o.message);
                assert_eq!(o.finished_at, Some(t(200)));
            }
        }
    }

    /// Past its deadline the Job controller writes FailureTarget and deletes the pod, and adds
    /// Failed once the pod is gone: until then the agent may still be writing.
    #[test]
    fn a_decided_end_waits_for_the_pods_to_stop() {
        let stopping = |c: &str, why: Option<&str>| {
            let mut s = with(vec![cond(c, "True", why)]);
            s.terminating = Some(1);
            s
        };
        let o = outcome(&stopping("FailureTarget", Some("DeadlineExceeded")));
        assert_eq!((o.phase, o.reason.as_str()), (Phase::Running, "Running"));
        assert!(
            o.message
                .contains("failed (DeadlineExceeded); its pods are stopping"),
            "{}",
            o.message
        );
        let o = outcome(&stopping("SuccessCriteriaMet", None));
        assert_eq!(o.phase, Phase::Running);
        assert!(o.message.contains("has succeeded; its pods are stopping"));
        // Pods ended but not yet counted have stopped: the end is read.
        let mut uncounted = with(vec![cond("SuccessCriteriaMet", "True", None)]);
        uncounted.uncounted_terminated_pods = Some(UncountedTerminatedPods {
            succeeded: Some(vec!["uid".into()]),
            failed: None,
        });
        assert_eq!(outcome(&uncounted).phase, Phase::Succeeded);

        // Once the final condition is there, pods or not, the end is read; and the last state
        // of a Job that is gone reads as its end.
        let mut failed = stopping("FailureTarget", Some("DeadlineExceeded"));
        failed.conditions.get_or_insert_default().push(cond(
            "Failed",
            "True",
            Some("DeadlineExceeded"),
        ));
        let o = outcome(&failed);
        assert_eq!(
            (o.phase, o.reason.as_str()),
            (Phase::Failed, "DeadlineExceeded")
        );
        let gone = as_gone(stopping("FailureTarget", Some("DeadlineExceeded")));
        let o = outcome(&gone);
        assert_eq!(
            (o.phase, o.reason.as_str()),
            (Phase::Failed, "DeadlineExceeded")
        );
        assert_eq!(
            outcome(&as_gone(stopping("SuccessCriteriaMet", None))).phase,
            Phase::Succeeded
        );
    }

    /// A pod that never stops (its node gone dark) holds the decided end back only so long.
    #[test]
    fn a_decided_end_is_reported_when_the_pods_take_too_long() {
        let mut s = with(vec![cond(
            "FailureTarget",
            "True",
            Some("DeadlineExceeded"),
        )]);
        s.terminating = Some(1);
        // Decided at 200 (`cond`).
        let (read, left) = stopping_limited(Some(s.clone()), &t(230));
        assert_eq!(
            left,
            Some(STOPPING_LIMIT - std::time::Duration::from_secs(30))
        );
        assert_eq!(outcome(&read.expect("status")).phase, Phase::Running);
        let (read, left) = stopping_limited(Some(s.clone()), &t(200 + 120));
        assert_eq!(left, None);
        let o = outcome(&read.expect("status"));
        assert_eq!(
            (o.phase, o.reason.as_str()),
            (Phase::Failed, "DeadlineExceeded")
        );
        // Not stopping: as it is.
        s.terminating = Some(0);
        assert_eq!(stopping_limited(Some(s.clone()), &t(230)), (Some(s), None));
        assert_eq!(stopping_limited(None, &t(230)), (None, None));
    }

    #[test]
    fn unknown_or_missing_failure_reasons_become_job_failed() {
        for reason in [None, Some("SomethingNew"), Some("")] {
            let o = outcome(&with(vec![cond("Failed", "True", reason)]));
            assert_eq!(
                (o.phase, o.reason.as_str()),
                (Phase::Failed, "JobFailed"),
                "{reason:?}"
            );
        }
    }

    #[test]
    fn false_conditions_are_ignored() {
        for c in [
            "Complete",
            "SuccessCriteriaMet",
            "Failed",
            "FailureTarget",
            "Suspended",
        ] {
            let mut s = with(vec![cond(c, "False", Some("BackoffLimitExceeded"))]);
            s.active = Some(1);
            s.ready = Some(1);
            assert_eq!(outcome(&s).phase, Phase::Running, "{c}");
        }
    }

    #[test]
    fn success_wins_over_a_failure_target_and_suspended_is_pending() {
        let o = outcome(&with(vec![
            cond("FailureTarget", "True", Some("DeadlineExceeded")),
            cond("SuccessCriteriaMet", "True", None),
        ]));
        assert_eq!(o.phase, Phase::Succeeded);
        let o = outcome(&with(vec![cond("Suspended", "True", None)]));
        assert_eq!((o.phase, o.reason.as_str()), (Phase::Pending, "Suspended"));
    }

    fn seen(version: i64) -> Observed {
        Observed {
            generation: Some(3),
            context_version: version,
            job_name: Some(format!("s-1-v{version}")),
            config_map_name: Some(format!("s-1-v{version}-files")),
            attempts: version,
            started_at: Some(t(100)),
        }
    }

    fn cond_of<'a>(s: &'a TaskRunStatus, type_: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition")
    }

    #[test]
    fn conditions_follow_the_phase() {
        let cases = [
            (Phase::Pending, "False", "Unknown"),
            (Phase::Running, "False", "Unknown"),
            (Phase::Succeeded, "True", "True"),
            (Phase::Failed, "False", "False"),
        ];
        for (phase, ready, succeeded) in cases {
            let o = Outcome::new(phase, "Why", "what");
            let s = next_status(&TaskRunStatus::default(), &seen(1), &o, &t(150));
            assert_eq!(cond_of(&s, READY).status, ready, "{phase}");
            assert_eq!(cond_of(&s, SUCCEEDED).status, succeeded, "{phase}");
            assert_eq!(cond_of(&s, SUCCEEDED).reason, "Why");
            assert_eq!(cond_of(&s, SUCCEEDED).observed_generation, Some(3));
            assert_eq!(s.completion_time.is_some(), phase.is_final(), "{phase}");
            let stalled = s.conditions.iter().find(|c| c.type_ == STALLED);
            assert_eq!(
                stalled.map(|c| c.status.as_str()),
                (phase == Phase::Failed).then_some("True"),
                "{phase}"
            );
        }
    }

    #[test]
    fn an_unchanged_world_gives_an_unchanged_status() {
        let o = Outcome::new(Phase::Running, "Running", "r");
        let first = next_status(&TaskRunStatus::default(), &seen(1), &o, &t(150));
        let again = next_status(&first, &seen(1), &o, &t(900));
        assert!(!differs(&first, &again), "{first:?}\n{again:?}");
        assert_eq!(cond_of(&again, READY).last_transition_time, t(150));
    }

    #[test]
    fn a_transition_moves_only_the_conditions_that_changed() {
        let running = next_status(
            &TaskRunStatus::default(),
            &seen(1),
            &Outcome::new(Phase::Running, "Running", "r"),
            &t(150),
        );
        let done = Outcome {
            finished_at: Some(t(190)),
            ..Outcome::new(Phase::Succeeded, "Completed", "c")
        };
        let s = next_status(&running, &seen(1), &done, &t(200));
        assert!(differs(&running, &s));
        assert_eq!(cond_of(&s, SUCCEEDED).last_transition_time, t(200));
        assert_eq!(s.completion_time, Some(t(190)));
        assert_eq!(s.start_time, Some(t(100)));
    }

    #[test]
    fn a_new_version_restarts_times() {
        let done = Outcome::new(Phase::Succeeded, "Completed", "c");
        let v1 = next_status(&TaskRunStatus::default(), &seen(1), &done, &t(150));
        let mut v2seen = seen(2);
        v2seen.started_at = None;
        let v2 = next_status(
            &v1,
            &v2seen,
            &Outcome::new(Phase::Pending, "JobCreated", "p"),
            &t(300),
        );
        assert_eq!(v2.completion_time, None);
        assert_eq!(v2.start_time, None);
        assert_eq!(v2.observed_context_version, Some(2));
        assert_eq!(v2.attempts, Some(2));
        assert_eq!(v2.phase, Some(Phase::Pending));
    }

    #[test]
    fn finality_is_per_version() {
        let done = next_status(
            &TaskRunStatus::default(),
            &seen(1),
            &Outcome::new(Phase::Failed, "Duplicate", "d"),
            &t(1),
        );
        assert!(is_final_for(Some(&done), 1));
        assert!(!is_final_for(Some(&done), 2));
        assert!(!is_final_for(None, 1));
        let running = next_status(
            &TaskRunStatus::default(),
            &seen(1),
            &Outcome::new(Phase::Running, "Running", "r"),
            &t(1),
        );
        assert!(!is_final_for(Some(&running), 1));
    }
}
