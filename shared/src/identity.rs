//! The identity of a task and the duplicate rule over it.

use std::fmt;

use crate::{TaskRun, TaskRunStatus};

/// What makes a task unique: two live TaskRuns with the same identity are duplicates,
/// whatever their names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub namespace: String,
    pub service_name: String,
    pub task_id: i64,
}

impl Identity {
    pub fn new(namespace: &str, service_name: &str, task_id: i64) -> Self {
        Self {
            namespace: namespace.to_owned(),
            service_name: service_name.to_owned(),
            task_id,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "task {} of service {} in namespace {}",
            self.task_id, self.service_name, self.namespace
        )
    }
}

/// Whether a TaskRun has run, from its status: the status names a Job (`job_named`), or counts
/// a version run (`attempts`) without having ended its last version unrun (`ended`: its phase
/// is final). A raised version waiting for its Job names none and still counts; one that ended
/// as a Duplicate, say, does not.
pub fn has_run(job_named: bool, attempts: Option<i64>, ended: bool) -> bool {
    job_named || (attempts.is_some_and(|a| a > 0) && !ended)
}

impl TaskRunStatus {
    /// Whether the TaskRun has run ([`has_run`]).
    pub fn has_run(&self) -> bool {
        has_run(
            self.job_name.is_some(),
            self.attempts,
            self.phase.is_some_and(crate::Phase::is_final),
        )
    }
}

/// An existing TaskRun as the duplicate rule sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Existing<'a> {
    /// Its name (within the identity's namespace).
    pub name: &'a str,
    /// True once it has a deletionTimestamp: it is going away and no longer holds its
    /// identity, so a task can be deleted and created again.
    pub terminating: bool,
    /// True once it has run ([`has_run`]).
    pub has_run: bool,
    /// When it was created (seconds since the epoch), and its uid for a tie within a second.
    pub created: Option<i64>,
    pub uid: &'a str,
}

impl<'a> Existing<'a> {
    /// A TaskRun as the rule sees it.
    pub fn of(tr: &'a TaskRun) -> Self {
        let meta = &tr.metadata;
        Self {
            name: meta.name.as_deref().unwrap_or_default(),
            terminating: meta.deletion_timestamp.is_some(),
            has_run: tr.status.as_ref().is_some_and(TaskRunStatus::has_run),
            created: meta.creation_timestamp.as_ref().map(|t| t.0.as_second()),
            uid: meta.uid.as_deref().unwrap_or_default(),
        }
    }

    /// True when this TaskRun, live and another than `other` (of the same identity), holds
    /// the identity before it: the controller fails `other` as a duplicate.
    pub fn holds_before(&self, other: &Existing<'_>) -> bool {
        !self.terminating && self.name != other.name && self.precedence() < other.precedence()
    }

    /// Of several live TaskRuns of one identity (two creates that raced past the webhook's
    /// index), the one the controller runs sorts first: one that has run, else the first
    /// created (creation times are whole seconds: then the uid).
    fn precedence(&self) -> (bool, Option<i64>, &str, &str) {
        (!self.has_run, self.created, self.uid, self.name)
    }
}

/// The duplicate rule: returns the name of a live TaskRun other than `name` that already holds
/// the identity, if there is one; of several, the one that runs. `holders` are the TaskRuns
/// known to hold the identity being checked (an index keyed by identity hands them over). An
/// object is never a duplicate of itself, so re-applying or updating a TaskRun is never
/// refused by this rule.
pub fn find_duplicate<'a>(
    name: &str,
    holders: impl IntoIterator<Item = Existing<'a>>,
) -> Option<&'a str> {
    holders
        .into_iter()
        .filter(|e| !e.terminating && e.name != name)
        .min_by(|a, b| a.precedence().cmp(&b.precedence()))
        .map(|e| e.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn live(name: &str) -> Existing<'_> {
        Existing {
            name,
            ..Existing::default()
        }
    }

    #[test]
    fn another_live_holder_is_a_duplicate() {
        assert_eq!(find_duplicate("b", [live("a")]), Some("a"));
    }

    #[test]
    fn an_object_is_never_a_duplicate_of_itself() {
        assert_eq!(find_duplicate("a", [live("a")]), None);
    }

    #[test]
    fn a_terminating_holder_does_not_block_recreation() {
        let gone = Existing {
            name: "a",
            terminating: true,
            ..Existing::default()
        };
        assert_eq!(find_duplicate("b", [gone]), None);
        assert_eq!(find_duplicate("a", [gone]), None);
    }

    #[test]
    fn the_answer_is_deterministic_when_several_hold_it() {
        assert_eq!(
            find_duplicate("z", [live("c"), live("a"), live("b")]),
            Some("a")
        );
        assert_eq!(
            find_duplicate("a", [live("c"), live("a"), live("b")]),
            Some("b")
        );
    }

    #[test]
    fn of_several_holders_the_one_that_runs_is_named() {
        let created = |name, at, uid| Existing {
            name,
            created: Some(at),
            uid,
            ..Existing::default()
        };
        // Two creates that raced past the index: the first created runs, whatever its name.
        let (zeta, alpha) = (created("zeta", 100, "u2"), created("alpha", 101, "u1"));
        assert_eq!(find_duplicate("new", [alpha, zeta]), Some("zeta"));
        // Within one second, the uid decides, as in the controller.
        let (b, a) = (created("b", 100, "u1"), created("a", 100, "u2"));
        assert_eq!(find_duplicate("new", [a, b]), Some("b"));
        // One that has run goes on running.
        let ran = Existing {
            has_run: true,
            ..created("late", 200, "u9")
        };
        assert_eq!(find_duplicate("new", [zeta, ran]), Some("late"));
    }

    fn taskrun(uid: &str, created: i64, service: &str, task_id: i64) -> TaskRun {
        let mut tr: TaskRun = serde_json::from_value(serde_json::json!({
            "apiVersion": "orchestrator.io/v1", "kind": "TaskRun",
            "metadata": {"name": uid, "namespace": "ns", "uid": uid},
            "spec": {"taskId": task_id, "serviceName": service, "contextVersion": 2,
                     "markdownFiles": []},
        }))
        .expect("a TaskRun");
        tr.metadata.creation_timestamp =
            Some(Time(Timestamp::from_second(created).expect("a time")));
        tr
    }

    fn ran(mut tr: TaskRun) -> TaskRun {
        tr.status = Some(TaskRunStatus {
            job_name: Some("svc-7-v1".into()),
            ..TaskRunStatus::default()
        });
        tr
    }

    /// What the controller asks of each cached TaskRun `o` about a TaskRun `t` that has not run.
    fn holds_before(o: &TaskRun, t: &TaskRun) -> bool {
        o.same_task(t) && Existing::of(o).holds_before(&Existing::of(t))
    }

    #[test]
    fn exactly_one_of_two_live_taskruns_of_an_identity_holds_it_first() {
        let (older, younger) = (taskrun("a", 100, "svc", 7), taskrun("b", 200, "svc", 7));
        assert!(holds_before(&older, &younger));
        assert!(!holds_before(&younger, &older));
        assert!(!holds_before(&older, &older), "not itself");
        // Created in the same second: the uid decides, one way only.
        let (x, y) = (taskrun("x", 100, "svc", 7), taskrun("y", 100, "svc", 7));
        assert!(holds_before(&x, &y) != holds_before(&y, &x));
        // Another task, service or namespace is no duplicate.
        assert!(!holds_before(&taskrun("c", 1, "svc", 8), &younger));
        assert!(!holds_before(&taskrun("d", 1, "other", 7), &younger));
        let mut elsewhere = taskrun("e", 1, "svc", 7);
        elsewhere.metadata.namespace = Some("team-b".into());
        assert!(!holds_before(&elsewhere, &younger));
        // One that has run holds before one that never did, whatever their ages.
        assert!(holds_before(&ran(taskrun("g", 300, "svc", 7)), &older));
        // One being deleted holds nothing any more.
        let mut going = taskrun("f", 1, "svc", 7);
        going.metadata.deletion_timestamp = going.metadata.creation_timestamp.clone();
        assert!(!holds_before(&going, &younger));
    }

    #[test]
    fn a_taskrun_has_run_once_a_version_ran_unless_its_last_one_ended_unrun() {
        use crate::Phase;
        let status = |job: Option<&str>, attempts: Option<i64>, phase: Phase| TaskRunStatus {
            job_name: job.map(Into::into),
            attempts,
            phase: Some(phase),
            ..TaskRunStatus::default()
        };
        assert!(!TaskRunStatus::default().has_run());
        assert!(status(Some("svc-7-v1"), Some(1), Phase::Running).has_run());
        assert!(status(Some("svc-7-v1"), Some(1), Phase::Failed).has_run());
        // A raised version waiting for its Job (or refused for now): no Job named.
        assert!(status(None, Some(1), Phase::Pending).has_run());
        assert!(!status(None, Some(0), Phase::Pending).has_run());
        // Failed as a Duplicate at its raised version: that version ended unrun.
        assert!(!status(None, Some(1), Phase::Failed).has_run());
    }

    #[test]
    fn no_holders_no_duplicate() {
        assert_eq!(find_duplicate("a", []), None);
    }

    #[test]
    fn identity_display_names_every_part() {
        let id = Identity::new("team-a", "billing", 42);
        assert_eq!(
            id.to_string(),
            "task 42 of service billing in namespace team-a"
        );
    }
}
