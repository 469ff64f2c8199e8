//! Who holds a child's deterministic name: this TaskRun, another live one (a duplicate), one
//! going away (wait), or nothing of this project (a name conflict).

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::Api;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use taskrun::TaskRun;

use super::Error;
use crate::cache::controller_ref;
use crate::writes;

/// Who holds a child's deterministic name.
pub(super) enum Claim<K> {
    /// This TaskRun, which has just created it (at the time given, as the API server's
    /// metadata-only answer says).
    Created(Option<Time>),
    /// This TaskRun, which created it before.
    Ours(K),
    /// Another live TaskRun: this one is a duplicate that raced past the webhook.
    Duplicate(String),
    /// A TaskRun that is being deleted, or one that is gone and whose children the garbage
    /// collector has yet to remove: wait, then create.
    Wait(String),
    /// Something that no TaskRun controls.
    Taken(String),
}

/// Creates the child (the caches did not show it as this TaskRun's); when its name is taken,
/// reads it and says who controls it.
pub(super) async fn claim<K>(
    api: &Api<K>,
    taskruns: &Api<TaskRun>,
    tr: &TaskRun,
    desired: K,
) -> Result<Claim<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
{
    let name = desired.name_any();
    match writes::create(api, &desired).await {
        Ok(meta) => Ok(Claim::Created(meta.creation_timestamp)),
        Err(kube::Error::Api(s)) if writes::name_taken(&s) => {
            let existing = api.get_opt(&name).await?;
            judge(taskruns, tr, &name, existing).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Who controls the child named `name` of this TaskRun's (`existing` as read; None when it
/// was deleted between the create and the read). The one API call: reading the other
/// TaskRun a child's controller reference names.
pub(super) async fn judge<K>(
    taskruns: &Api<TaskRun>,
    tr: &TaskRun,
    name: &str,
    existing: Option<K>,
) -> Result<Claim<K>, Error>
where
    K: Resource<DynamicType = ()>,
{
    let ours = tr.meta().uid.as_deref();
    let other = match existing.as_ref().and_then(|e| foreign_owner(e, ours)) {
        Some(owner) => taskruns.get_opt(&owner.name).await?,
        None => None,
    };
    Ok(decide(
        name,
        existing,
        ours,
        other.as_ref().map(|o| o.meta()),
    ))
}

/// The controller reference of `child` when it names a TaskRun other than the one with uid
/// `ours`.
fn foreign_owner<'a, K: Resource>(child: &'a K, ours: Option<&str>) -> Option<&'a OwnerReference> {
    controller_ref(child.meta()).filter(|o| is_taskrun(o) && Some(o.uid.as_str()) != ours)
}

fn is_taskrun(o: &OwnerReference) -> bool {
    o.kind == "TaskRun" && o.api_version.starts_with("orchestrator.io/")
}

/// Who holds the name `name`: `existing` is the child under it (None: just deleted), `ours`
/// this TaskRun's uid, and `other` the TaskRun of the name `foreign_owner` gives, as read
/// (None: no TaskRun has that name).
fn decide<K>(
    name: &str,
    existing: Option<K>,
    ours: Option<&str>,
    other: Option<&ObjectMeta>,
) -> Claim<K>
where
    K: Resource<DynamicType = ()>,
{
    let kind = K::kind(&());
    let Some(existing) = existing else {
        return Claim::Wait(format!("{kind} {name} was just deleted"));
    };
    match controller_ref(existing.meta()) {
        Some(o) if Some(o.uid.as_str()) == ours => Claim::Ours(existing),
        Some(o) if is_taskrun(o) => {
            let owner = o.name.clone();
            match other.filter(|t| t.uid.as_deref() == Some(o.uid.as_str())) {
                Some(t) if t.deletion_timestamp.is_some() => Claim::Wait(format!(
                    "{kind} {name} still belongs to TaskRun {owner} which is being deleted"
                )),
                Some(_) => Claim::Duplicate(owner),
                None if existing.meta().deletion_timestamp.is_some() => Claim::Wait(format!(
                    "{kind} {name} of the deleted TaskRun {owner} is being deleted{}",
                    pods_hint(&kind, name)
                )),
                None => Claim::Wait(format!(
                    "{kind} {name} belonged to a deleted TaskRun {owner} and is being garbage-collected"
                )),
            }
        }
        _ if existing.meta().deletion_timestamp.is_some() => Claim::Wait(format!(
            "{kind} {name} is being deleted{}",
            pods_hint(&kind, name)
        )),
        _ => Claim::Taken(format!(
            "{kind} {name} already exists and no TaskRun controls it; this version will not run: \
             remove it and recreate this TaskRun, or raise contextVersion (its children get new names)"
        )),
    }
}

/// For a Job being deleted: that it goes once its pods have stopped (deleted in the foreground,
/// as this controller deletes them), and how to find them.
fn pods_hint(kind: &str, name: &str) -> String {
    if kind != "Job" {
        return String::new();
    }
    format!(
        "; it goes once its pods have stopped (kubectl get pods -l batch.kubernetes.io/job-name={name})"
    )
}

#[cfg(test)]
mod tests {
    use super::{Claim, decide, foreign_owner, pods_hint};
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
    use k8s_openapi::jiff::Timestamp;

    const NAME: &str = "svc-7-v1-files";

    fn owner(kind: &str, api_version: &str, uid: &str, controller: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: format!("owner-{uid}"),
            uid: uid.into(),
            controller,
            block_owner_deletion: None,
        }
    }

    fn taskrun_owner(uid: &str) -> OwnerReference {
        owner("TaskRun", "orchestrator.io/v1", uid, Some(true))
    }

    fn child(owners: Vec<OwnerReference>, deleting: bool) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(NAME.into()),
                owner_references: Some(owners),
                deletion_timestamp: deleting.then_some(Time(Timestamp::UNIX_EPOCH)),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    /// The other TaskRun as read: its uid, and whether it is being deleted.
    fn taskrun(uid: &str, deleting: bool) -> ObjectMeta {
        ObjectMeta {
            uid: Some(uid.into()),
            deletion_timestamp: deleting.then_some(Time(Timestamp::UNIX_EPOCH)),
            ..ObjectMeta::default()
        }
    }

    /// The claim as (variant, what it carries: the message, or the other TaskRun's name).
    fn said(claim: Claim<ConfigMap>) -> (&'static str, String) {
        match claim {
            Claim::Created(_) => ("Created", String::new()),
            Claim::Ours(cm) => ("Ours", cm.metadata.name.unwrap_or_default()),
            Claim::Duplicate(other) => ("Duplicate", other),
            Claim::Wait(message) => ("Wait", message),
            Claim::Taken(message) => ("Taken", message),
        }
    }

    fn judged(existing: Option<ConfigMap>, other: Option<&ObjectMeta>) -> (&'static str, String) {
        said(decide(NAME, existing, Some("me"), other))
    }

    #[test]
    fn a_child_this_taskrun_controls_is_its_own() {
        let ours = child(vec![taskrun_owner("me")], false);
        assert_eq!(foreign_owner(&ours, Some("me")), None, "nothing to read");
        assert_eq!(judged(Some(ours), None), ("Ours", NAME.into()));
    }

    #[test]
    fn a_child_of_another_live_taskrun_makes_this_one_a_duplicate() {
        let theirs = child(vec![taskrun_owner("other")], false);
        let read = foreign_owner(&theirs, Some("me")).map(|o| o.name.clone());
        assert_eq!(read.as_deref(), Some("owner-other"));
        let live = taskrun("other", false);
        assert_eq!(
            judged(Some(theirs), Some(&live)),
            ("Duplicate", "owner-other".into())
        );
    }

    #[test]
    fn a_child_of_a_taskrun_going_away_is_waited_for() {
        let theirs = || Some(child(vec![taskrun_owner("other")], false));
        // Being deleted.
        let deleting = taskrun("other", true);
        let (claim, message) = judged(theirs(), Some(&deleting));
        assert_eq!(claim, "Wait");
        assert!(message.contains("which is being deleted"), "{message}");
        // Gone, and its name free or taken by a new TaskRun: the garbage collector removes
        // the child.
        let recreated = taskrun("new", false);
        for other in [None, Some(&recreated)] {
            let (claim, message) = judged(theirs(), other);
            assert_eq!(claim, "Wait");
            assert!(message.contains("is being garbage-collected"), "{message}");
        }
        // Gone, and the child being deleted already (its pods stopping, for a Job).
        let going = Some(child(vec![taskrun_owner("other")], true));
        let (claim, message) = judged(going, None);
        assert_eq!(claim, "Wait");
        assert_eq!(
            message,
            format!("ConfigMap {NAME} of the deleted TaskRun owner-other is being deleted")
        );
        assert!(pods_hint("Job", "svc-7-v1").ends_with("job-name=svc-7-v1)"));
    }

    #[test]
    fn a_child_no_taskrun_controls_is_a_name_conflict() {
        let unowned = [
            vec![],
            vec![owner("Deployment", "apps/v1", "d", Some(true))],
            vec![owner("TaskRun", "example.com/v1", "other", Some(true))],
            // This TaskRun's, but not as its controller.
            vec![owner("TaskRun", "orchestrator.io/v1", "me", None)],
        ];
        for owners in unowned {
            let found = child(owners.clone(), false);
            assert_eq!(foreign_owner(&found, Some("me")), None, "{owners:?}");
            let (claim, message) = judged(Some(found), None);
            assert_eq!(claim, "Taken", "{owners:?}");
            assert!(
                message.starts_with(&format!("ConfigMap {NAME} already exists")),
                "{message}"
            );
        }
        // The same, being deleted: it goes, then the name is free.
        let (claim, message) = judged(Some(child(vec![], true)), None);
        assert_eq!(
            (claim, message),
            ("Wait", format!("ConfigMap {NAME} is being deleted"))
        );
    }

    #[test]
    fn a_child_deleted_between_the_create_and_the_read_is_waited_for() {
        assert_eq!(
            judged(None, None),
            ("Wait", format!("ConfigMap {NAME} was just deleted"))
        );
    }
}
