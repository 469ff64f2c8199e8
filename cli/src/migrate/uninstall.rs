//! Uninstalling a release without the helm binary, as `helm uninstall` does: delete every
//! resource the release manifest lists (except those annotated
//! `helm.sh/resource-policy: keep`), then every revision Secret. Only what the legacy task
//! chart renders is deleted: a release whose manifest lists anything else (another kind or
//! name, or an object in another namespace) is refused. The release record is a Secret that anyone who
//! can write Secrets in its namespace can forge, and this runs with an admin's rights.
//! Releases with pre- or
//! post-delete hooks are refused: running hooks is Helm's business, so those are left for
//! `helm uninstall`, and so are releases with a revision newer than the one migrated (a failed
//! upgrade): Helm would uninstall from that one. A release whose Job still runs, or that Helm
//! is working on (its newest revision pending), is not uninstalled now: that would kill the
//! run, or delete the records of an operation under way.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use serde_json::Value;
use taskrun::validation::shown;

use super::bounded_yaml;
use super::plan::{self, Revision};
use super::release::Release;
use super::report::NotDone;
use crate::error::status_code;

/// One object of a release manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestObject {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    /// `helm.sh/resource-policy: keep`: Helm leaves it in place on uninstall.
    pub keep: bool,
    /// A ConfigMap's `data` as rendered (empty if it renders none); `None` for other kinds.
    pub data: Option<serde_json::Map<String, Value>>,
}

/// The objects of a release manifest (multi-document YAML), in manifest order.
pub fn manifest_objects(manifest: &str) -> Result<Vec<ManifestObject>, String> {
    let mut objects = Vec::new();
    for value in bounded_yaml::documents(manifest)? {
        if value.is_null() {
            continue;
        }
        let text = |pointer: &str| {
            value
                .pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let (Some(api_version), Some(kind), Some(name)) =
            (text("/apiVersion"), text("/kind"), text("/metadata/name"))
        else {
            return Err(
                "the release manifest has an object without apiVersion, kind or metadata.name"
                    .into(),
            );
        };
        let keep =
            text("/metadata/annotations/helm.sh~1resource-policy").as_deref() == Some("keep");
        let data = (kind == "ConfigMap").then(|| {
            value
                .get("data")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        });
        objects.push(ManifestObject {
            api_version,
            kind,
            name,
            namespace: text("/metadata/namespace"),
            keep,
            data,
        });
    }
    Ok(objects)
}

/// The kinds the legacy task chart renders, the only ones an uninstall deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owned {
    ConfigMap,
    Job,
}

/// What of a release's manifest an uninstall may delete, in manifest order: each object must
/// be what the task chart renders for this release, the Job named after it or its files
/// ConfigMap, in the release's own namespace. Otherwise, why not.
fn owned_objects<'a>(
    objects: &'a [ManifestObject],
    release_name: &str,
    release_namespace: &str,
) -> Result<Vec<(Owned, &'a ManifestObject)>, String> {
    let files = plan::files_config_map(release_name);
    objects
        .iter()
        .map(|o| {
            let kind = match (o.api_version.as_str(), o.kind.as_str(), o.name.as_str()) {
                ("v1", "ConfigMap", name) if name == files => Some(Owned::ConfigMap),
                ("batch/v1", "Job", name) if name == release_name => Some(Owned::Job),
                _ => None,
            };
            let elsewhere = o.namespace.as_deref().filter(|ns| *ns != release_namespace);
            match (kind, elsewhere) {
                (Some(kind), None) => Ok((kind, o)),
                (_, Some(ns)) => Err(format!(
                    "the release manifest lists {} {} in namespace {}, outside the release's namespace; the task chart renders nothing there, so check the release and uninstall it with `helm uninstall`",
                    shown(&o.kind),
                    shown(&o.name),
                    shown(ns)
                )),
                (None, None) => Err(format!(
                    "the release manifest lists {} {} ({}), which the task chart does not render for this release (only Job {} and ConfigMap {}); check the release and uninstall it with `helm uninstall`",
                    shown(&o.kind),
                    shown(&o.name),
                    shown(&o.api_version),
                    shown(release_name),
                    shown(&files)
                )),
            }
        })
        .collect()
}

/// The names of hooks that `helm uninstall` would run.
pub fn delete_hooks(release: &Release) -> Vec<&str> {
    release.delete_hooks.iter().map(String::as_str).collect()
}

/// The Jobs (`batch/v1`) among a release's manifest objects that exist: the first that has not
/// finished, and the first that completed.
#[derive(Debug, Default)]
pub struct LegacyJobs {
    pub unfinished: Option<String>,
    pub completed: Option<String>,
}

pub async fn legacy_jobs(
    client: &kube::Client,
    objects: &[ManifestObject],
    release_namespace: &str,
) -> Result<LegacyJobs, NotDone> {
    let mut found = LegacyJobs::default();
    let jobs = objects
        .iter()
        .filter(|o| o.kind == "Job" && o.api_version == "batch/v1");
    for object in jobs {
        let ns = object.namespace.as_deref().unwrap_or(release_namespace);
        let api: Api<Job> = Api::namespaced(client.clone(), ns);
        match api.get_opt(&object.name).await {
            Ok(Some(job)) if plan::unfinished(&job) => {
                found.unfinished = Some(object.name.clone());
                return Ok(found);
            }
            Ok(Some(job)) if plan::completed(&job) && found.completed.is_none() => {
                found.completed = Some(object.name.clone());
            }
            Ok(_) => {}
            Err(e) => {
                let action = format!("reading the release's Job {}", shown(&object.name));
                return Err(NotDone::unanswered(&action, &e));
            }
        }
    }
    Ok(found)
}

/// What an uninstall would do or did: resources deleted and revision Secrets deleted.
#[derive(Debug, Default)]
pub struct Uninstalled {
    pub resources: usize,
    pub revisions: usize,
}

/// Uninstalls `release` (or, with `dry_run`, only checks that it could). Resources go first,
/// then the revision Secrets, the migrated revision's last, so that after a failure a later
/// run still finds the release and finishes. Postponed while a Job of the release has not
/// finished (deleting it would kill the run) or its newest revision is pending (Helm is
/// working on it, and would lose the record it is writing), and while the API server cannot
/// answer.
pub async fn uninstall(
    client: &kube::Client,
    release: &Release,
    dry_run: bool,
) -> Result<Uninstalled, NotDone> {
    let hooks = delete_hooks(release);
    if !hooks.is_empty() {
        return Err(NotDone::Failed(format!(
            "the release has delete hooks ({}); uninstall it with `helm uninstall`",
            hooks
                .iter()
                .map(|h| shown(h))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let objects = manifest_objects(&release.manifest)?;
    let owned = owned_objects(&objects, &release.name, &release.namespace)?;
    if let Some(job) = legacy_jobs(client, &objects, &release.namespace)
        .await?
        .unfinished
    {
        return Err(NotDone::Postponed(format!(
            "its Job {job} has not finished, and uninstalling would delete it mid-run; run this again once the Job has finished"
        )));
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &release.namespace);
    let listed = secrets
        .list_metadata(&records_of(&release.name))
        .await
        .map_err(|e| NotDone::unanswered("listing the release's revisions", &e))?;
    // Only what reads as a revision is the release's: anything else the selector matched
    // (a Secret of that type without a numeric version label) is not deleted or counted.
    let records: Vec<Revision> = listed.items.iter().filter_map(revision).collect();
    if let Some(newest) = plan::newest_pending(&records) {
        return Err(NotDone::Postponed(plan::in_progress_reason(
            &release.namespace,
            &release.name,
            newest,
        )));
    }
    if let Some(newer) = plan::newer_than(&records, release.version) {
        return Err(NotDone::Failed(format!(
            "revision {} ({}) is newer than the migrated revision {}, and uninstalling acts on the newest revision (what it made, its delete hooks): check it, then `helm uninstall {} -n {}`",
            newer.version, newer.status, release.version, release.name, release.namespace
        )));
    }
    // Reverse manifest order: dependants are usually rendered after what they use.
    let doomed: Vec<&(Owned, &ManifestObject)> =
        owned.iter().rev().filter(|(_, o)| !o.keep).collect();
    if dry_run {
        return Ok(Uninstalled {
            resources: doomed.len(),
            revisions: records.len(),
        });
    }
    // Only what this run deleted counts: a run that finishes an uninstall stopped partway
    // finds some of it gone already.
    let mut done = Uninstalled::default();
    for (kind, object) in doomed {
        if delete_object(client, *kind, object, &release.namespace).await? {
            done.resources += 1;
        }
    }
    for secret in deletion_order(&records, release.version) {
        match secrets.delete(secret, &DeleteParams::default()).await {
            Ok(_) => done.revisions += 1,
            Err(e) if status_code(&e) == Some(404) => {}
            Err(e) => {
                let action = format!("deleting release record {secret}");
                return Err(NotDone::unanswered(&action, &e));
            }
        }
    }
    Ok(done)
}

/// The list of a release's revision Secrets, as Helm's own storage selects them: its labels
/// and the type Helm gives release records (as discovery in `migrate::run` does), so that
/// another Secret that happens to carry the labels is never taken for one.
fn records_of(release_name: &str) -> ListParams {
    ListParams::default()
        .labels(&format!("owner=helm,name={release_name}"))
        .fields(super::plan::RELEASE_RECORDS)
}

/// A revision Secret as its labels describe it; `None` without a numeric version label.
fn revision(secret: &kube::api::PartialObjectMeta<Secret>) -> Option<Revision> {
    let meta = &secret.metadata;
    let label = |key: &str| meta.labels.as_ref().and_then(|l| l.get(key)).cloned();
    Some(Revision {
        secret: meta.name.clone()?,
        version: label("version")?.parse().ok()?,
        status: label("status").unwrap_or_default(),
    })
}

/// The names of a release's revision Secrets, the revision migrated from last: while that
/// one is there, a run after a failure finds the release again and finishes the uninstall.
fn deletion_order(records: &[Revision], migrated: i64) -> Vec<&str> {
    let mut records: Vec<&Revision> = records.iter().collect();
    records.sort_by_key(|r| r.version == migrated);
    records.iter().map(|r| r.secret.as_str()).collect()
}

/// Deletes one object of the release: true when it was there to delete, false when it was gone
/// already.
async fn delete_object(
    client: &kube::Client,
    kind: Owned,
    object: &ManifestObject,
    release_namespace: &str,
) -> Result<bool, NotDone> {
    // Background propagation: a Job's pods go with it, as with `helm uninstall`.
    let params = DeleteParams::background();
    let deleted = match kind {
        Owned::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), release_namespace)
            .delete(&object.name, &params)
            .await
            .map(|_| ()),
        Owned::Job => Api::<Job>::namespaced(client.clone(), release_namespace)
            .delete(&object.name, &params)
            .await
            .map(|_| ()),
    };
    match deleted {
        Ok(()) => Ok(true),
        Err(e) if status_code(&e) == Some(404) => Ok(false),
        Err(e) => {
            let action = format!("deleting {} {}", object.kind, shown(&object.name));
            Err(NotDone::unanswered(&action, &e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::release::{decode, tests as rel};
    use kube::api::ObjectMeta;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[test]
    fn manifest_objects_are_read_in_order() {
        let manifest = "---\n# Source: claude-code/templates/configmap.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: billing-task-7-files\ndata:\n  \"task.md\": \"# Task\"\n---\n# Source: claude-code/templates/job.yaml\napiVersion: batch/v1\nkind: Job\nmetadata:\n  name: billing-task-7\n  namespace: team-a\n  annotations:\n    helm.sh/resource-policy: keep\n---\n";
        let objects = manifest_objects(manifest).expect("parses");
        assert_eq!(
            objects,
            vec![
                ManifestObject {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    name: "billing-task-7-files".into(),
                    namespace: None,
                    keep: false,
                    data: json!({"task.md": "# Task"}).as_object().cloned(),
                },
                ManifestObject {
                    api_version: "batch/v1".into(),
                    kind: "Job".into(),
                    name: "billing-task-7".into(),
                    namespace: Some("team-a".into()),
                    keep: true,
                    data: None,
                },
            ]
        );
    }

    #[test]
    fn an_empty_manifest_has_no_objects() {
        assert_eq!(manifest_objects(""), Ok(vec![]));
        assert_eq!(manifest_objects("---\n# only a comment\n"), Ok(vec![]));
    }

    #[test]
    fn bad_manifests_are_reported() {
        assert!(
            manifest_objects("a: [")
                .expect_err("yaml")
                .contains("not valid YAML")
        );
        assert!(
            manifest_objects("kind: Job\n")
                .expect_err("no name")
                .contains("without")
        );
    }

    #[test]
    fn only_the_charts_configmaps_and_jobs_in_the_release_namespace_are_deleted() {
        let object =
            |api_version: &str, kind: &str, name: &str, namespace: Option<&str>| ManifestObject {
                api_version: api_version.into(),
                kind: kind.into(),
                name: name.into(),
                namespace: namespace.map(Into::into),
                keep: false,
                data: None,
            };
        let release = "billing-task-7";
        let chart = [
            object("v1", "ConfigMap", "billing-task-7-files", None),
            object("batch/v1", "Job", release, Some("team-a")),
        ];
        let owned = owned_objects(&chart, release, "team-a").expect("the chart's own");
        let kinds: Vec<Owned> = owned.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [Owned::ConfigMap, Owned::Job]);

        let foreign = [
            (
                object(
                    "apiextensions.k8s.io/v1",
                    "CustomResourceDefinition",
                    release,
                    None,
                ),
                "which the task chart does not render",
            ),
            (object("v1", "Secret", release, None), "does not render"),
            (
                object("batch/v1beta1", "Job", release, None),
                "does not render",
            ),
            // The chart's kinds, named otherwise: another team's ConfigMap, another Job.
            (
                object("v1", "ConfigMap", "prod-settings", None),
                "does not render",
            ),
            (
                object("batch/v1", "Job", "db-migrate", None),
                "does not render",
            ),
            (
                object(
                    "v1",
                    "ConfigMap",
                    "billing-task-7-files",
                    Some("other-team"),
                ),
                "outside the release's namespace",
            ),
        ];
        for (o, why) in foreign {
            let listed = [chart[0].clone(), o];
            let e = owned_objects(&listed, release, "team-a").expect_err("refused");
            assert!(e.contains(why) && e.contains("helm uninstall"), "{e}");
        }
    }

    #[test]
    fn the_migrated_revision_is_deleted_last() {
        let record = |version: i64| Revision {
            secret: format!("sh.helm.release.v1.billing-task-7.v{version}"),
            version,
            status: "superseded".into(),
        };
        let records = [record(1), record(2), record(3)];
        assert_eq!(
            deletion_order(&records, 2),
            [
                "sh.helm.release.v1.billing-task-7.v1",
                "sh.helm.release.v1.billing-task-7.v3",
                "sh.helm.release.v1.billing-task-7.v2",
            ]
        );
    }

    #[test]
    fn only_release_records_are_listed_and_only_revisions_taken() {
        let params = records_of("billing-task-7");
        assert_eq!(
            params.label_selector.as_deref(),
            Some("owner=helm,name=billing-task-7")
        );
        assert_eq!(
            params.field_selector.as_deref(),
            Some("type=helm.sh/release.v1")
        );
        let secret = |name: &str, version: Option<&str>| {
            let mut labels = BTreeMap::from([
                ("owner".to_owned(), "helm".to_owned()),
                ("name".to_owned(), "billing-task-7".to_owned()),
            ]);
            if let Some(v) = version {
                labels.insert("version".into(), v.into());
            }
            kube::api::PartialObjectMeta::<Secret> {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some(labels),
                    ..ObjectMeta::default()
                },
                ..Default::default()
            }
        };
        let listed = [
            secret("sh.helm.release.v1.billing-task-7.v1", Some("1")),
            secret("billing-task-7-notes", None),
            secret("billing-task-7-odd", Some("latest")),
        ];
        let records: Vec<Revision> = listed.iter().filter_map(revision).collect();
        assert_eq!(
            deletion_order(&records, 1),
            ["sh.helm.release.v1.billing-task-7.v1"]
        );
    }

    #[test]
    fn delete_hooks_are_found() {
        let release = decode(&rel::encode(&rel::record())).expect("decodes");
        assert_eq!(delete_hooks(&release), ["cleanup"]);
        let mut record = rel::record();
        record["hooks"] = json!([{"name": "setup", "events": ["pre-install"]}]);
        let release = decode(&rel::encode(&record)).expect("decodes");
        assert!(delete_hooks(&release).is_empty());
    }
}
