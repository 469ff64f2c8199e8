//! `kubectl taskrun migrate-helm`: Helm releases of the legacy chart -> TaskRuns.
//!
//! Each release goes on its own: a release that cannot be migrated is reported with the
//! reason and the others continue. Only a verified release (its TaskRun exists, has the
//! release's spec and was admitted) is ever uninstalled, and only with --delete-releases.
//! Nothing is migrated or uninstalled while something is under way: a release whose legacy
//! Job has not finished, or whose newest revision Helm is still working on (pending-*), is
//! postponed, and the run ends with exit code 3 so that it is run again.

pub mod bounded_yaml;
mod plan;
pub mod release;
mod report;
mod uninstall;

use std::collections::BTreeMap;
use std::io::Write;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use taskrun::validation::shown;
use taskrun::{TaskRun, labels};

use crate::args::MigrateArgs;
use crate::context_add::MANAGER;
use crate::error::{Error, describe, retry_later, status_code};
use plan::{LEGACY_CHART, NotPicked, Revision, Verdict};
use release::Release;
use report::NotDone;
pub use report::{Helm, Outcome, Row, exit_code, nothing_found, render};

pub async fn run(
    client: kube::Client,
    namespace: &str,
    args: &MigrateArgs,
) -> Result<Vec<Row>, Error> {
    let secrets: Api<Secret> = if args.all_namespaces {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), namespace)
    };
    let params = ListParams::default()
        .labels("owner=helm")
        .fields(plan::RELEASE_RECORDS);
    // Metadata only: the labels say which revision to read; only that one is fetched whole.
    let listed = secrets
        .list_metadata(&params)
        .await
        .map_err(|e| Error::api("listing Helm release Secrets", e))?;

    let mut releases: BTreeMap<(String, String), Vec<Revision>> = BTreeMap::new();
    for secret in listed.items {
        let meta = secret.metadata;
        let label = |key: &str| meta.labels.as_ref().and_then(|l| l.get(key)).cloned();
        let (Some(ns), Some(secret_name), Some(name)) =
            (meta.namespace.clone(), meta.name.clone(), label("name"))
        else {
            continue;
        };
        let Some(version) = label("version").and_then(|v| v.parse().ok()) else {
            tracing::warn!(namespace = %ns, secret = %secret_name, "Helm release Secret without a numeric version label; ignored");
            continue;
        };
        releases.entry((ns, name)).or_default().push(Revision {
            secret: secret_name,
            version,
            status: label("status").unwrap_or_default(),
        });
    }

    let mut rows = Vec::new();
    for ((ns, name), revisions) in releases {
        let row = match plan::pick_deployed(&revisions) {
            Ok(revision) => migrate_one(&client, &ns, &name, revision, args).await,
            Err(NotPicked::InProgress(newest)) => {
                let why = plan::in_progress_reason(&ns, &name, newest);
                not_picked(&client, &ns, &name, newest, Outcome::Postponed(why)).await
            }
            Err(NotPicked::Uninstalled(newest)) => {
                let why = format!("no deployed revision (the newest is {})", newest.status);
                not_picked(&client, &ns, &name, newest, Outcome::Skipped(why)).await
            }
            // Not done, and a run later will not do it either: it needs a person.
            Err(NotPicked::NotDeployed(newest)) => {
                let why = plan::not_deployed_reason(&ns, &name, newest);
                not_picked(&client, &ns, &name, newest, Outcome::Failed(why)).await
            }
            Err(NotPicked::NoRevisions) => None,
        };
        if let Some(row) = row {
            if let Helm::Uninstalled(what) = &row.helm {
                // At once, on stderr: a run cut short (Ctrl-C, a closed terminal) prints no
                // table, and a rerun no longer finds the releases it deleted.
                let _ = writeln!(
                    std::io::stderr(),
                    "uninstalled release {}/{}: {what}",
                    row.namespace,
                    row.release
                );
            }
            tracing::info!(namespace = %row.namespace, release = %row.release, outcome = ?row.outcome, helm = ?row.helm, "release done");
            rows.push(row);
        }
    }
    Ok(rows)
}

/// A row saying why no revision of a release of the legacy chart was taken (`outcome`);
/// `None` when its newest revision is of another chart.
async fn not_picked(
    client: &kube::Client,
    ns: &str,
    name: &str,
    newest: &Revision,
    outcome: Outcome,
) -> Option<Row> {
    let release = read_release(client, ns, &newest.secret).await;
    if !of_legacy_chart(name, &release) {
        return None;
    }
    Some(Row {
        namespace: ns.to_owned(),
        release: name.to_owned(),
        revision: Some(newest.version),
        taskrun: "-".into(),
        outcome,
        helm: Helm::Kept,
        notes: Vec::new(),
    })
}

/// Migrates one release; `None` when it turns out not to be of the legacy chart.
async fn migrate_one(
    client: &kube::Client,
    ns: &str,
    name: &str,
    revision: &Revision,
    args: &MigrateArgs,
) -> Option<Row> {
    let mut row = Row {
        namespace: ns.to_owned(),
        release: name.to_owned(),
        revision: Some(revision.version),
        taskrun: name.to_owned(),
        outcome: Outcome::WouldCreate,
        helm: Helm::Kept,
        notes: Vec::new(),
    };
    let release = match read_release(client, ns, &revision.secret).await {
        Ok(release) if release.chart.metadata.name != LEGACY_CHART => {
            tracing::debug!(namespace = ns, release = name, chart = %release.chart.metadata.name, "not the legacy chart");
            return None;
        }
        Ok(release) if release.name != name => {
            // The uninstall selects revisions by the label; never act on a mismatch.
            row.outcome = Outcome::Failed(format!(
                "release Secret {} is labelled name={name} but holds release {:?}",
                revision.secret,
                release.name.chars().take(64).collect::<String>()
            ));
            return Some(row);
        }
        Ok(mut release) => {
            release.namespace = ns.to_owned();
            release
        }
        Err(unread) if plan::legacy_identity(name).is_some() => {
            row.outcome = unread;
            return Some(row);
        }
        Err(why) => {
            tracing::warn!(
                namespace = ns,
                release = name,
                ?why,
                "cannot read a release not named for a task; left alone"
            );
            return None;
        }
    };
    let uninstalling = args.delete_releases && !args.dry_run;
    let mut completed = None;
    row.outcome =
        migrate_release(client, &release, args.dry_run, uninstalling, &mut completed).await;
    // Made now: what the person running this should know of it.
    if matches!(row.outcome, Outcome::Created | Outcome::WouldCreate) {
        if let Some(job) = completed {
            row.notes.push(format!(
                "its Job {job} had completed: the TaskRun runs the task again"
            ));
        }
        row.notes.extend(release.not_carried());
    }
    let eligible = row.verified() || (args.dry_run && row.outcome == Outcome::WouldCreate);
    if args.delete_releases && eligible {
        row.helm = match uninstall::uninstall(client, &release, args.dry_run).await {
            Ok(done) if args.dry_run => Helm::WouldUninstall(format!(
                "would delete {} resource(s) and {} revision(s)",
                done.resources, done.revisions
            )),
            Ok(done) => Helm::Uninstalled(format!(
                "deleted {} resource(s) and {} revision(s)",
                done.resources, done.revisions
            )),
            // Not now (its Job still runs, Helm is working on it, the API server did not
            // answer) or failed: kept, whatever the outcome.
            Err(not_done) => not_done.into(),
        };
    }
    Some(row)
}

/// Whether a release whose newest revision was read as `release` belongs in the report: it is
/// of the legacy chart, or could not be read and is named for a task (a release of another
/// chart need not be readable here).
fn of_legacy_chart(name: &str, release: &Result<Release, Outcome>) -> bool {
    match release {
        Ok(r) => r.chart.metadata.name == LEGACY_CHART,
        Err(_) => plan::legacy_identity(name).is_some(),
    }
}

/// The release a revision Secret holds; what to report for the release when it cannot be read.
async fn read_release(client: &kube::Client, ns: &str, secret: &str) -> Result<Release, Outcome> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret_obj = api
        .get(secret)
        .await
        .map_err(|e| unread(&format!("reading release Secret {secret}"), &e))?;
    let data = secret_obj
        .data
        .as_ref()
        .and_then(|d| d.get("release"))
        .ok_or_else(|| Outcome::Failed(format!("release Secret {secret} has no data.release")))?;
    release::decode(&data.0).map_err(|e| Outcome::Failed(format!("release Secret {secret}: {e}")))
}

/// A read that failed: not yet when asking again may succeed, else failed.
fn unread(action: &str, e: &kube::Error) -> Outcome {
    NotDone::unanswered(action, e).into()
}

/// Migrates one release: creates its TaskRun, or verifies the one there. `uninstalling`: the
/// release is to be uninstalled once its TaskRun is verified. `completed` is set to the name of
/// the release's Job when it completed, and a TaskRun is (to be) made: it runs the task again.
async fn migrate_release(
    client: &kube::Client,
    release: &Release,
    dry_run: bool,
    uninstalling: bool,
    completed: &mut Option<String>,
) -> Outcome {
    let ns = release.namespace.as_str();
    let name = release.name.as_str();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let files_name = plan::files_config_map(name);
    let files = match config_maps.get_opt(&files_name).await {
        Ok(files) => files,
        Err(e) => return unread("reading the files ConfigMap", &e),
    };
    let taskruns: Api<TaskRun> = Api::namespaced(client.clone(), ns);
    // What the revision rendered into the files ConfigMap, and its Jobs: without them neither
    // the files nor whether the legacy Job still runs can be told.
    let objects = match uninstall::manifest_objects(&release.manifest) {
        Ok(objects) => objects,
        Err(e) => return Outcome::Failed(format!("cannot read the release manifest: {e}")),
    };
    let rendered = objects
        .iter()
        .find(|o| {
            o.kind == "ConfigMap"
                && o.name == files_name
                && o.namespace.as_deref().is_none_or(|n| n == ns)
        })
        .and_then(|o| o.data.as_ref());
    let spec = match plan::desired_spec(release, files.as_ref(), rendered) {
        Ok(spec) => spec,
        Err(problems) => {
            // The files ConfigMap gone, and a TaskRun this tool made from the release there:
            // an earlier --delete-releases stopped partway (its resources deleted, a revision
            // Secret not). That TaskRun was verified before the uninstall began.
            if files.is_none() {
                match taskruns.get_opt(name).await {
                    Ok(Some(live)) if plan::made_from(&live, release) => {
                        return judge_made_earlier(&live);
                    }
                    Ok(_) => {}
                    // Not "files not found": the files may be in that TaskRun.
                    Err(e) => return unread(&format!("reading TaskRun {name}"), &e),
                }
            }
            return Outcome::Failed(problems.join("; "));
        }
    };
    match taskruns.get_opt(name).await {
        Ok(Some(live)) => return existing(&taskruns, &spec, &live, release, uninstalling).await,
        Ok(None) => {}
        Err(e) => return unread(&format!("reading TaskRun {name}"), &e),
    }
    // The controller runs every new TaskRun's Job: beside a legacy Job still running, that
    // would be the same task run twice at once.
    match uninstall::legacy_jobs(client, &objects, ns).await {
        Ok(jobs) => {
            if let Some(job) = jobs.unfinished {
                return Outcome::Postponed(format!(
                    "its Job {job} has not finished, and the TaskRun would run the task again beside it; run this again once the Job has finished (or delete the Job to stop that run)"
                ));
            }
            *completed = jobs.completed;
        }
        Err(not_done) => return not_done.into(),
    }

    let mut taskrun = TaskRun::new(name, spec.clone());
    taskrun.metadata.namespace = Some(ns.to_owned());
    taskrun.metadata.annotations = Some(BTreeMap::from([(
        plan::MIGRATED_FROM.to_owned(),
        plan::migrated_from(release),
    )]));
    // A dry run first, in both modes: a TaskRun the webhook does not see (not registered, or
    // its namespace excluded) would run with no duplicate check, so it is not created at all.
    let mut params = PostParams {
        dry_run: true,
        field_manager: Some(MANAGER.to_owned()),
    };
    match taskruns.create(&params, &taskrun).await {
        Ok(would_be) if plan::admitted(&would_be) => {}
        Ok(_) => return Outcome::Failed(format!("not created: {}", not_admitted())),
        Err(e) => return refused(&taskruns, release, &spec, e, dry_run, uninstalling).await,
    }
    if dry_run {
        return Outcome::WouldCreate;
    }
    params.dry_run = false;
    if let Err(e) = taskruns.create(&params, &taskrun).await {
        return refused(&taskruns, release, &spec, e, dry_run, uninstalling).await;
    }
    // Verify from a fresh read, not the create response.
    match taskruns.get_opt(name).await {
        Ok(Some(live)) => judge(&spec, &live, Outcome::Created),
        Ok(None) => Outcome::Failed("created, but gone when read back".into()),
        Err(e) => unread("created, but reading it back", &e),
    }
}

/// The outcome of a create refused with `e`. Someone (another run) may have created the
/// TaskRun meanwhile: then what is there is judged (not in a dry run, which creates nothing).
async fn refused(
    taskruns: &Api<TaskRun>,
    release: &Release,
    spec: &taskrun::TaskRunSpec,
    e: kube::Error,
    dry_run: bool,
    uninstalling: bool,
) -> Outcome {
    let name = release.name.as_str();
    if !dry_run && let Ok(Some(live)) = taskruns.get_opt(name).await {
        return existing(taskruns, spec, &live, release, uninstalling).await;
    }
    if retry_later(&e) {
        return not_judged(&e);
    }
    if duplicate(&e) {
        // The webhook names the holder the controller runs; the labels are asked only when
        // its answer does not say (an older webhook, a message reworded).
        let holder = match named_holder(&e, &release.namespace) {
            Some(named) => Some(named),
            None => holder(taskruns, name, spec).await,
        };
        return Outcome::Failed(served_elsewhere(
            &release.namespace,
            name,
            spec,
            holder.as_deref(),
        ));
    }
    let refused = if dry_run {
        "would be refused"
    } else {
        "refused"
    };
    Outcome::Failed(format!("{refused}: {}", describe(&e)))
}

/// True when the webhook refused a create because another TaskRun already holds its task: 409
/// Conflict (DESIGN section 4), where a name already taken is 409 AlreadyExists.
fn duplicate(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409 && status.reason == "Conflict")
}

/// The TaskRun the webhook's duplicate refusal names ("TaskRun NS/NAME already holds ..."):
/// of several holders, the one the controller runs (DESIGN section 4). Read from the cause the
/// webhook marks (`FieldValueDuplicate` on `spec.taskId`), else from the message, which the
/// API server prefixes with the webhook's name.
fn named_holder(e: &kube::Error, ns: &str) -> Option<String> {
    let kube::Error::Api(status) = e else {
        return None;
    };
    let causes = status
        .details
        .iter()
        .flat_map(|d| &d.causes)
        .filter(|c| c.reason == "FieldValueDuplicate" && c.field == "spec.taskId")
        .map(|c| c.message.as_str());
    causes
        .chain(std::iter::once(status.message.as_str()))
        .find_map(|message| holder_in(message, ns))
        .map(str::to_owned)
}

/// NAME in "... TaskRun NS/NAME already holds ...", when it is a plausible object name.
fn holder_in<'m>(message: &'m str, ns: &str) -> Option<&'m str> {
    let marker = format!("TaskRun {ns}/");
    let (_, rest) = message.split_once(&marker)?;
    let (name, _) = rest.split_once(" already holds ")?;
    let plausible = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    plausible.then_some(name)
}

/// The live TaskRun other than `name` that holds the task of `spec`, found by the labels the
/// mutating webhook stamps (the first by name, which may not be the one the controller runs);
/// `None` when it cannot be told.
async fn holder(
    taskruns: &Api<TaskRun>,
    name: &str,
    spec: &taskrun::TaskRunSpec,
) -> Option<String> {
    let selector = task_selector(spec);
    let list = match taskruns
        .list_metadata(&ListParams::default().labels(&selector))
        .await
    {
        Ok(list) => list,
        Err(e) => {
            tracing::debug!(error = %describe(&e), "cannot list the TaskRuns of the task");
            return None;
        }
    };
    let mut names: Vec<String> = list
        .items
        .into_iter()
        .filter(|t| t.metadata.deletion_timestamp.is_none())
        .filter_map(|t| t.metadata.name)
        .filter(|n| n != name)
        .collect();
    names.sort();
    names.into_iter().next()
}

/// Why a release whose task another TaskRun already serves is not migrated, and what to do:
/// this command makes and uninstalls only the TaskRun named after the release, so the release
/// is for its owner to check and remove.
fn served_elsewhere(
    ns: &str,
    name: &str,
    spec: &taskrun::TaskRunSpec,
    holder: Option<&str>,
) -> String {
    let task = format!(
        "task {} of service {}",
        spec.task_id,
        shown(&spec.service_name)
    );
    let uninstall = format!("`helm uninstall {name} -n {ns}`");
    match holder {
        Some(holder) => format!(
            "{task} is already served by TaskRun {holder}, which was not made from this release; check that {holder} is the task you want, then remove the release with {uninstall}"
        ),
        None => format!(
            "another TaskRun already serves {task} (`kubectl get taskruns -n {ns} -l {}`); check it, then remove the release with {uninstall}",
            task_selector(spec)
        ),
    }
}

/// The label selector of the TaskRuns of the task of `spec`, as the mutating webhook labels them.
fn task_selector(spec: &taskrun::TaskRunSpec) -> String {
    format!(
        "{}={},{}={}",
        labels::SERVICE_NAME,
        spec.service_name,
        labels::TASK_ID,
        spec.task_id
    )
}

/// A create refused before anyone judged the TaskRun (the webhook's index not synced yet, the
/// API server overloaded or unreachable): not yet, rather than failed.
fn not_judged(e: &kube::Error) -> Outcome {
    Outcome::Postponed(format!(
        "not judged now ({}); run this again in a moment",
        describe(e)
    ))
}

/// Verifies a TaskRun that was there already. One about to stand in for a release being
/// uninstalled is first marked as made from it (`plan::MIGRATED_FROM`), as those this tool
/// creates are: the uninstall deletes the release's files ConfigMap before its records, and a
/// later run that finds the records left and the files gone finishes the uninstall only for a
/// TaskRun so marked.
async fn existing(
    taskruns: &Api<TaskRun>,
    spec: &taskrun::TaskRunSpec,
    live: &TaskRun,
    release: &Release,
    uninstalling: bool,
) -> Outcome {
    let verified = judge(spec, live, Outcome::AlreadyMigrated);
    if !uninstalling || verified != Outcome::AlreadyMigrated || plan::made_from(live, release) {
        return verified;
    }
    let name = live.metadata.name.as_deref().unwrap_or_default();
    // The resourceVersion makes the patch apply only to the TaskRun just verified.
    let mark = serde_json::json!({"metadata": {
        "resourceVersion": live.metadata.resource_version,
        "annotations": {plan::MIGRATED_FROM: plan::migrated_from(release)},
    }});
    let params = PatchParams {
        field_manager: Some(MANAGER.to_owned()),
        ..PatchParams::default()
    };
    match taskruns.patch(name, &params, &Patch::Merge(&mark)).await {
        Ok(_) => verified,
        Err(e) if status_code(&e) == Some(409) => Outcome::Postponed(format!(
            "TaskRun {name} changed while it was verified; run this again"
        )),
        Err(e) => NotDone::unanswered(
            &format!("marking TaskRun {name} as migrated from the release, before uninstalling it"),
            &e,
        )
        .into(),
    }
}

/// Verifies an existing TaskRun against the desired spec: `ok` when it matches and was admitted.
fn judge(desired: &taskrun::TaskRunSpec, live: &TaskRun, ok: Outcome) -> Outcome {
    let name = live.metadata.name.as_deref().unwrap_or_default();
    if live.metadata.deletion_timestamp.is_some() {
        return Outcome::Failed(format!(
            "TaskRun {name} exists but is being deleted; run again once it is gone"
        ));
    }
    match plan::compare(desired, &live.spec) {
        Verdict::Differs(why) => {
            // A file the release got after the TaskRun was made from it (`helm upgrade` by the
            // old system): added with a raised version, the TaskRun counts as moved on.
            let hint = if why.starts_with(plan::LACKS_FILE) {
                format!(
                    "; if the release got it after the TaskRun was made, `kubectl taskrun \
                     context add {name} -f FILE` adds it"
                )
            } else {
                String::new()
            };
            Outcome::Failed(format!(
                "TaskRun {name} already exists and differs from the release: {why}{hint}"
            ))
        }
        Verdict::Same | Verdict::MovedOn if !plan::admitted(live) => {
            Outcome::Failed(not_admitted_yet(live))
        }
        Verdict::Same | Verdict::MovedOn => runs(live, ok),
    }
}

/// `ok`, unless the controller found `live` a duplicate of an older TaskRun of its task (both
/// admitted at once, before the webhook's index saw either): then it never runs, and the
/// release is not served by it.
fn runs(live: &TaskRun, ok: Outcome) -> Outcome {
    match live.lost_as_duplicate() {
        Some(why) => Outcome::Failed(format!(
            "TaskRun {} exists but will never run, so the release is kept (the controller's \
             verdict: {why})",
            live.metadata.name.as_deref().unwrap_or_default()
        )),
        None => ok,
    }
}

/// Verifies a TaskRun made from the release by an earlier run, once the release's files are
/// gone (so only its task and state can be checked).
fn judge_made_earlier(live: &TaskRun) -> Outcome {
    let name = live.metadata.name.as_deref().unwrap_or_default();
    if live.metadata.deletion_timestamp.is_some() {
        return Outcome::Failed(format!(
            "TaskRun {name} exists but is being deleted; run again once it is gone"
        ));
    }
    if !plan::admitted(live) {
        return Outcome::Failed(not_admitted_yet(live));
    }
    runs(live, Outcome::AlreadyMigrated)
}

fn not_admitted() -> String {
    "the TaskRun lacks the labels the mutating webhook stamps: is the taskrun webhook registered, \
     with a namespaceSelector that takes in this namespace?"
        .into()
}

/// Why `live`, already there, is not taken as admitted, and what to do when it was made before
/// the webhook was installed: any update of it has the labels stamped.
fn not_admitted_yet(live: &TaskRun) -> String {
    let name = live.metadata.name.as_deref().unwrap_or_default();
    let ns = live.metadata.namespace.as_deref().unwrap_or_default();
    format!(
        "{}; if it is, TaskRun {name} was made before it was, and any update has them stamped: \
         `kubectl annotate taskrun {name} -n {ns} orchestrator.io/relabelled=true`, then run this \
         again",
        not_admitted()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use taskrun::{MarkdownFile, TaskRunSpec, conditions, labels};

    fn spec() -> TaskRunSpec {
        TaskRunSpec {
            task_id: 7,
            service_name: "billing".into(),
            agent_name: None,
            context_version: 1,
            markdown_files: vec![MarkdownFile {
                filename: "task.md".into(),
                content: "# Task".into(),
                file_type: None,
            }],
        }
    }

    fn admitted(spec: TaskRunSpec) -> TaskRun {
        let mut tr = TaskRun::new("billing-task-7", spec);
        tr.metadata.labels = Some(
            labels::taskrun_labels(&tr.spec)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        );
        tr
    }

    fn status(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("refused", reason).with_code(code),
        ))
    }

    #[test]
    fn only_the_webhooks_conflict_is_a_duplicate() {
        assert!(duplicate(&status(409, "Conflict")));
        assert!(!duplicate(&status(409, "AlreadyExists")));
        assert!(!duplicate(&status(422, "Invalid")));
    }

    /// The webhook's 409 as the API server passes it on.
    fn refused_as_duplicate(cause: Option<&str>, message: &str) -> kube::Error {
        let mut status = kube::core::Status::failure(
            &format!("admission webhook \"validate.taskruns.orchestrator.io\" denied the request: {message}"),
            "Conflict",
        )
        .with_code(409);
        if let Some(cause) = cause {
            status = status.with_details(kube::core::response::StatusDetails {
                name: "billing-task-7".into(),
                group: "orchestrator.io".into(),
                kind: "TaskRun".into(),
                uid: String::new(),
                causes: vec![
                    kube::core::response::StatusCause {
                        reason: "FieldValueDuplicate".into(),
                        message: "TaskRun team-a/not-this already holds nothing".into(),
                        field: "spec.markdownFiles[1].filename".into(),
                    },
                    kube::core::response::StatusCause {
                        reason: "FieldValueDuplicate".into(),
                        message: cause.into(),
                        field: "spec.taskId".into(),
                    },
                ],
                retry_after_seconds: 0,
            });
        }
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn a_read_the_api_server_could_not_answer_now_is_not_yet_not_failed() {
        let later = unread("reading TaskRun t", &status(503, "ServiceUnavailable"));
        assert_eq!(
            later,
            Outcome::Postponed(
                "reading TaskRun t: refused (503); run this again in a moment".into()
            )
        );
        let failed = unread("reading TaskRun t", &status(403, "Forbidden"));
        assert_eq!(
            failed,
            Outcome::Failed("reading TaskRun t: refused (403)".into())
        );
    }

    #[test]
    fn the_holder_is_the_one_the_webhook_names() {
        let held = "TaskRun team-a/billing-b.2 already holds task 7 of service billing in namespace team-a; add context to it with \"kubectl taskrun context add billing-b.2 -n team-a -f FILE.md\"";
        // From the cause on spec.taskId, whatever the message says.
        let e = refused_as_duplicate(Some(held), "reworded");
        assert_eq!(named_holder(&e, "team-a").as_deref(), Some("billing-b.2"));
        // From the message when there are no causes.
        let e = refused_as_duplicate(None, held);
        assert_eq!(named_holder(&e, "team-a").as_deref(), Some("billing-b.2"));
        // Not told: another namespace, another wording, a name no object can have.
        assert_eq!(named_holder(&e, "team-b"), None);
        let e = refused_as_duplicate(None, "the task is taken");
        assert_eq!(named_holder(&e, "team-a"), None);
        let e = refused_as_duplicate(None, "TaskRun team-a/Not a name already holds task 7");
        assert_eq!(named_holder(&e, "team-a"), None);
        assert_eq!(named_holder(&status(409, "Conflict"), "team-a"), None);
    }

    #[test]
    fn a_task_served_elsewhere_gets_migration_advice() {
        let why = served_elsewhere("team-a", "billing-task-7", &spec(), Some("billing-manual"));
        assert_eq!(
            why,
            "task 7 of service \"billing\" is already served by TaskRun billing-manual, which was not made from this release; check that billing-manual is the task you want, then remove the release with `helm uninstall billing-task-7 -n team-a`"
        );
        assert!(!why.contains("context add"), "{why}");
        let why = served_elsewhere("team-a", "billing-task-7", &spec(), None);
        assert!(
            why.contains(
                "kubectl get taskruns -n team-a -l orchestrator.io/service-name=billing,orchestrator.io/task-id=7"
            ) && why.contains("helm uninstall billing-task-7 -n team-a"),
            "{why}"
        );
    }

    #[test]
    fn a_matching_admitted_task_run_is_verified() {
        assert_eq!(
            judge(&spec(), &admitted(spec()), Outcome::Created),
            Outcome::Created
        );
    }

    #[test]
    fn an_unlabelled_task_run_is_not_verified() {
        let mut tr = TaskRun::new("billing-task-7", spec());
        tr.metadata.namespace = Some("team-a".into());
        let outcome = judge(&spec(), &tr, Outcome::Created);
        // Made before the webhook was installed, it gets the labels from any update.
        assert!(
            matches!(&outcome, Outcome::Failed(why) if why.contains("is the taskrun webhook registered")
                && why.contains("made before it was, and any update has them stamped: `kubectl annotate taskrun billing-task-7 -n team-a ")),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_different_or_terminating_task_run_is_not_verified() {
        let mut other = spec();
        other.markdown_files[0].content = "else".into();
        let outcome = judge(&spec(), &admitted(other), Outcome::AlreadyMigrated);
        assert!(
            matches!(&outcome, Outcome::Failed(why) if why.contains("differs") && !why.contains("context add")),
            "{outcome:?}"
        );
        // A file the release has and the TaskRun lacks: it may have come since.
        let mut fewer = spec();
        let lacked = fewer.markdown_files.remove(0).filename;
        fewer.markdown_files.push(taskrun::MarkdownFile {
            filename: "other.md".into(),
            content: "x".into(),
            file_type: None,
        });
        let outcome = judge(&spec(), &admitted(fewer), Outcome::AlreadyMigrated);
        assert!(
            matches!(&outcome, Outcome::Failed(why) if why.contains(&format!("it lacks the file {lacked}; if the release got it after the TaskRun was made, `kubectl taskrun context add billing-task-7 -f FILE` adds it"))),
            "{outcome:?}"
        );

        let mut going = admitted(spec());
        going.metadata.deletion_timestamp = Some(Time(Default::default()));
        let outcome = judge(&spec(), &going, Outcome::AlreadyMigrated);
        assert!(matches!(outcome, Outcome::Failed(why) if why.contains("being deleted")));
    }

    #[test]
    fn a_task_run_that_lost_as_a_duplicate_is_not_verified() {
        let mut lost = admitted(spec());
        lost.status = Some(taskrun::TaskRunStatus {
            conditions: vec![Condition {
                type_: conditions::SUCCEEDED.into(),
                status: "False".into(),
                reason: conditions::reason::DUPLICATE.into(),
                message: "TaskRun billing-first holds task 7 of billing".into(),
                last_transition_time: Time(Default::default()),
                observed_generation: None,
            }],
            ..Default::default()
        });
        for outcome in [
            judge(&spec(), &lost, Outcome::Created),
            judge_made_earlier(&lost),
        ] {
            assert!(
                matches!(&outcome, Outcome::Failed(why)
                    if why.contains("never run") && why.contains("billing-first holds")),
                "{outcome:?}"
            );
        }
    }
}
