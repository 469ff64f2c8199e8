//! The table migrate-helm prints: one row per release, release -> TaskRun -> result.

use std::fmt::Write;

use super::plan::LEGACY_CHART;
use crate::error::{describe, retry_later};

/// What happened to one release's TaskRun.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Created, admitted and verified.
    Created,
    /// Already there and verified (matching, or since given more context).
    AlreadyMigrated,
    /// --dry-run: the API server and webhook would admit it.
    WouldCreate,
    /// Not migrated, with the reason.
    Failed(String),
    /// Not migrated yet: something is still under way (its legacy Job runs, a Helm operation is
    /// in progress). The reason says when to run the command again.
    Postponed(String),
    /// Not a candidate, and running again changes nothing (its newest revision uninstalled or
    /// being uninstalled), with the reason. A release that was never deployed (its newest
    /// revision failed) is `Failed`, not this: it is not done.
    Skipped(String),
}

/// What happened to the Helm release itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Helm {
    Kept,
    /// Uninstalled: what was deleted.
    Uninstalled(String),
    /// --dry-run: what would be deleted.
    WouldUninstall(String),
    /// Kept for now (its legacy Job still runs, a Helm operation is in progress): the reason,
    /// and when to run again.
    Postponed(String),
    Failed(String),
}

/// Why a step (creating the TaskRun, uninstalling the release) was not done: not now, or
/// failed. Becomes that step's `Postponed` or `Failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotDone {
    /// Something is under way, or the API server could not answer now: the reason, and when
    /// to run again.
    Postponed(String),
    Failed(String),
}

impl NotDone {
    /// An API request that was not carried out: not now when asking again may succeed (the API
    /// server overloaded or not answering), else failed.
    pub fn unanswered(action: &str, e: &kube::Error) -> Self {
        if retry_later(e) {
            Self::Postponed(format!(
                "{action}: {}; run this again in a moment",
                describe(e)
            ))
        } else {
            Self::Failed(format!("{action}: {}", describe(e)))
        }
    }
}

impl From<String> for NotDone {
    fn from(why: String) -> Self {
        Self::Failed(why)
    }
}

impl From<NotDone> for Outcome {
    fn from(not_done: NotDone) -> Self {
        match not_done {
            NotDone::Postponed(why) => Self::Postponed(why),
            NotDone::Failed(why) => Self::Failed(why),
        }
    }
}

impl From<NotDone> for Helm {
    fn from(not_done: NotDone) -> Self {
        match not_done {
            NotDone::Postponed(why) => Self::Postponed(why),
            NotDone::Failed(why) => Self::Failed(why),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub namespace: String,
    pub release: String,
    pub revision: Option<i64>,
    pub taskrun: String,
    pub outcome: Outcome,
    pub helm: Helm,
    /// What to know of a TaskRun made (or to be made) from the release: that it runs a task
    /// the release had done, that values were left behind. Shown in DETAIL.
    pub notes: Vec<String>,
}

impl Row {
    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Failed(_)) || matches!(self.helm, Helm::Failed(_))
    }

    /// True when part of what was asked is left for a later run.
    pub fn postponed(&self) -> bool {
        matches!(self.outcome, Outcome::Postponed(_)) || matches!(self.helm, Helm::Postponed(_))
    }

    /// True when the TaskRun is verified, so the release may be uninstalled.
    pub fn verified(&self) -> bool {
        matches!(self.outcome, Outcome::Created | Outcome::AlreadyMigrated)
    }
}

/// The exit code of a run: `PARTIAL` when a release failed or was postponed (it was not
/// migrated, or not uninstalled as asked: the table says why and what to do), `OK` otherwise,
/// final skips included.
pub fn exit_code(rows: &[Row]) -> u8 {
    if rows.iter().any(|r| r.failed() || r.postponed()) {
        crate::error::PARTIAL
    } else {
        crate::error::OK
    }
}

/// What a run that found no release says: where it looked, and how to look elsewhere.
pub fn nothing_found(namespace: &str, all_namespaces: bool) -> String {
    let found = if all_namespaces {
        format!("No Helm releases of the legacy {LEGACY_CHART} chart found in any namespace")
    } else {
        format!(
            "No Helm releases of the legacy {LEGACY_CHART} chart found in namespace {namespace}; \
             look in another with -n NAMESPACE, or in all with -A"
        )
    };
    format!("{found}. {STORAGE}\n")
}

/// Where releases are looked for: a release kept elsewhere is not found, and nothing else says
/// why.
const STORAGE: &str = "Releases are read from Helm's default storage, Secrets; those kept with \
                       HELM_DRIVER=configmap or sql are not looked for.";

/// The table and a summary line.
pub fn render(rows: &[Row]) -> String {
    let header = [
        "RELEASE",
        "REVISION",
        "TASKRUN",
        "RESULT",
        "HELM RELEASE",
        "DETAIL",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|row| {
            let (result, why) = match &row.outcome {
                Outcome::Created => ("created", ""),
                Outcome::AlreadyMigrated => ("exists, matches", ""),
                Outcome::WouldCreate => ("would create", ""),
                Outcome::Failed(why) => ("FAILED", why.as_str()),
                Outcome::Postponed(why) => ("not yet", why.as_str()),
                Outcome::Skipped(why) => ("skipped", why.as_str()),
            };
            let (helm, helm_why) = match &row.helm {
                Helm::Kept => ("kept", ""),
                Helm::Uninstalled(what) => ("uninstalled", what.as_str()),
                Helm::WouldUninstall(what) => ("would uninstall", what.as_str()),
                Helm::Postponed(why) => ("kept", why.as_str()),
                Helm::Failed(why) => ("UNINSTALL FAILED", why.as_str()),
            };
            let detail = [why, helm_why]
                .into_iter()
                .chain(row.notes.iter().map(String::as_str))
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            [
                format!("{}/{}", row.namespace, row.release),
                row.revision
                    .map_or_else(|| "-".to_owned(), |r| r.to_string()),
                row.taskrun.clone(),
                result.to_owned(),
                helm.to_owned(),
                detail,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: [&str; 6]| {
        let mut text = String::new();
        for (i, (col, w)) in cols.iter().zip(widths).enumerate() {
            if i + 1 == cols.len() {
                text.push_str(col);
            } else {
                let _ = write!(text, "{col:<w$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header);
    for row in &cells {
        line(row.each_ref().map(String::as_str));
    }
    out.push_str(&summary(rows));
    out
}

fn summary(rows: &[Row]) -> String {
    let count = |f: &dyn Fn(&Row) -> bool| rows.iter().filter(|r| f(r)).count();
    let created = count(&|r| r.outcome == Outcome::Created);
    let existing = count(&|r| r.outcome == Outcome::AlreadyMigrated);
    let would = count(&|r| r.outcome == Outcome::WouldCreate);
    let failed = count(&|r| matches!(r.outcome, Outcome::Failed(_)));
    let postponed = count(&|r| matches!(r.outcome, Outcome::Postponed(_)));
    let skipped = count(&|r| matches!(r.outcome, Outcome::Skipped(_)));
    let uninstalled = count(&|r| matches!(r.helm, Helm::Uninstalled(_)));
    let would_uninstall = count(&|r| matches!(r.helm, Helm::WouldUninstall(_)));
    let uninstall_postponed = count(&|r| matches!(r.helm, Helm::Postponed(_)));
    let uninstall_failed = count(&|r| matches!(r.helm, Helm::Failed(_)));
    // Found in Helm's default storage only: a team that used another would read the summary as
    // the whole migration.
    let mut parts = vec![format!(
        "{} release(s) in Helm's Secrets (HELM_DRIVER=configmap and sql are not looked in)",
        rows.len()
    )];
    for (n, what) in [
        (created, "created"),
        (existing, "already migrated"),
        (would, "would be created"),
        (failed, "failed"),
        (postponed, "not yet migrated (run again later)"),
        (skipped, "skipped"),
        (uninstalled, "uninstalled"),
        (would_uninstall, "would be uninstalled"),
        (uninstall_postponed, "not yet uninstalled (run again later)"),
        (uninstall_failed, "failed to uninstall"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    format!("{}\n", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, outcome: Outcome, helm: Helm) -> Row {
        Row {
            namespace: "team-a".into(),
            release: name.into(),
            revision: Some(1),
            taskrun: name.into(),
            outcome,
            helm,
            notes: Vec::new(),
        }
    }

    #[test]
    fn the_table_lines_up_and_sums_up() {
        let rows = [
            row(
                "billing-task-1",
                Outcome::Created,
                Helm::Uninstalled("deleted 2 resources, 1 revision".into()),
            ),
            row(
                "billing-task-22",
                Outcome::Failed("file x.md is empty".into()),
                Helm::Kept,
            ),
        ];
        let text = render(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("RELEASE"));
        let col = lines[0].find("TASKRUN").expect("header");
        assert!(lines[1][col..].starts_with("billing-task-1 "), "{text}");
        assert!(
            lines[1].ends_with("uninstalled   deleted 2 resources, 1 revision"),
            "{text}"
        );
        assert!(
            lines[2].contains("FAILED") && lines[2].ends_with("file x.md is empty"),
            "{text}"
        );
        assert_eq!(
            lines[3],
            "2 release(s) in Helm's Secrets (HELM_DRIVER=configmap and sql are not looked in), 1 created, 1 failed, 1 uninstalled"
        );
    }

    #[test]
    fn only_postponed_or_failed_releases_make_the_exit_code_partial() {
        use crate::error::{OK, PARTIAL};
        let done = row("a", Outcome::Created, Helm::Uninstalled("x".into()));
        let final_skip = row(
            "b",
            Outcome::Skipped("no deployed revision".into()),
            Helm::Kept,
        );
        assert_eq!(exit_code(&[]), OK);
        assert_eq!(exit_code(&[done.clone(), final_skip.clone()]), OK);
        for unsettled in [
            row("c", Outcome::Postponed("its Job runs".into()), Helm::Kept),
            row(
                "c",
                Outcome::AlreadyMigrated,
                Helm::Postponed("its Job runs".into()),
            ),
            row("c", Outcome::Failed("x".into()), Helm::Kept),
            row("c", Outcome::Created, Helm::Failed("x".into())),
        ] {
            assert_eq!(
                exit_code(&[done.clone(), final_skip.clone(), unsettled.clone()]),
                PARTIAL,
                "{unsettled:?}"
            );
        }
    }

    #[test]
    fn postponed_rows_say_so() {
        let rows = [
            row("a", Outcome::Postponed("its Job a runs".into()), Helm::Kept),
            row(
                "b",
                Outcome::AlreadyMigrated,
                Helm::Postponed("its Job b runs".into()),
            ),
            row(
                "c",
                Outcome::Skipped("no deployed revision".into()),
                Helm::Kept,
            ),
        ];
        let text = render(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].contains("not yet") && lines[1].ends_with("its Job a runs"),
            "{text}"
        );
        assert!(
            lines[2].contains("exists, matches")
                && lines[2].contains(" kept ")
                && lines[2].ends_with("its Job b runs"),
            "{text}"
        );
        assert_eq!(
            lines[4],
            "3 release(s) in Helm's Secrets (HELM_DRIVER=configmap and sql are not looked in), 1 already migrated, 1 not yet migrated (run again later), 1 skipped, 1 not yet uninstalled (run again later)"
        );
    }

    #[test]
    fn nothing_found_says_where_it_looked() {
        assert_eq!(
            nothing_found("team-a", false),
            "No Helm releases of the legacy claude-code chart found in namespace team-a; \
             look in another with -n NAMESPACE, or in all with -A. Releases are read from Helm's \
             default storage, Secrets; those kept with HELM_DRIVER=configmap or sql are not \
             looked for.\n"
        );
        assert!(nothing_found("team-a", true).starts_with(
            "No Helm releases of the legacy claude-code chart found in any namespace. Releases"
        ));
    }

    #[test]
    fn failures_of_either_kind_count() {
        assert!(row("a", Outcome::Failed("x".into()), Helm::Kept).failed());
        assert!(row("a", Outcome::Created, Helm::Failed("x".into())).failed());
        assert!(!row("a", Outcome::Skipped("x".into()), Helm::Kept).failed());
        assert!(row("a", Outcome::AlreadyMigrated, Helm::Kept).verified());
        assert!(!row("a", Outcome::WouldCreate, Helm::Kept).verified());
    }

    fn api_error(code: u16) -> kube::Error {
        let status = kube::core::Status::failure("refused", "Reason").with_code(code);
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn an_uninstall_step_the_api_server_could_not_answer_now_is_postponed() {
        let later = NotDone::unanswered("deleting release record r.v1", &api_error(503));
        let r = row("a", Outcome::Created, later.into());
        assert!(r.postponed() && !r.failed(), "{r:?}");
        assert_eq!(
            r.helm,
            Helm::Postponed(
                "deleting release record r.v1: refused (503); run this again in a moment".into()
            )
        );
        let denied = NotDone::unanswered("deleting release record r.v1", &api_error(403));
        let r = row("a", Outcome::Created, denied.into());
        assert!(r.failed() && !r.postponed(), "{r:?}");
    }
}
