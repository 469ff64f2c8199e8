//! The identity of a task and the duplicate rule over it.

use std::fmt;

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

/// An existing TaskRun as the duplicate rule sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Existing<'a> {
    /// Its name (within the identity's namespace).
    pub name: &'a str,
    /// True once it has a deletionTimestamp: it is going away and no longer holds its
    /// identity, so a task can be deleted and created again.
    pub terminating: bool,
    /// True once its status names a Job: it has run.
    pub has_run: bool,
    /// When it was created (seconds since the epoch), and its uid for a tie within a second.
    pub created: Option<i64>,
    pub uid: &'a str,
}

impl Existing<'_> {
    /// Of several live TaskRuns of one identity (two creates that raced past the webhook's
    /// index), the one the controller runs sorts first: one that has run, else the first
    /// created. The controller fails the others as duplicates (its `holds_before`).
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
