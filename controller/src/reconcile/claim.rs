//! Who holds a child's deterministic name: this TaskRun, another live one (a duplicate), one
//! going away (wait), or nothing of this project (a name conflict).

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use taskrun::TaskRun;

use super::Error;
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
        Err(kube::Error::Api(s)) if s.code == 409 => match api.get_opt(&name).await? {
            Some(existing) => judge(taskruns, tr, existing).await,
            None => Ok(Claim::Wait(format!(
                "{} {name} was just deleted",
                K::kind(&())
            ))),
        },
        Err(e) => Err(e.into()),
    }
}

/// Who controls an existing child with the name of one of this TaskRun's.
pub(super) async fn judge<K>(
    taskruns: &Api<TaskRun>,
    tr: &TaskRun,
    existing: K,
) -> Result<Claim<K>, Error>
where
    K: Resource<DynamicType = ()>,
{
    let name = existing.name_any();
    let kind = K::kind(&());
    let controller = existing
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .cloned();
    match controller {
        Some(o) if Some(&o.uid) == tr.meta().uid.as_ref() => Ok(Claim::Ours(existing)),
        Some(o) if o.kind == "TaskRun" && o.api_version.starts_with("orchestrator.io/") => {
            match taskruns.get_opt(&o.name).await? {
                Some(other) if other.meta().uid.as_deref() == Some(o.uid.as_str()) => {
                    if other.meta().deletion_timestamp.is_some() {
                        Ok(Claim::Wait(format!(
                            "{kind} {name} still belongs to TaskRun {} which is being deleted",
                            o.name
                        )))
                    } else {
                        Ok(Claim::Duplicate(o.name))
                    }
                }
                _ => Ok(Claim::Wait(format!(
                    "{kind} {name} belonged to a deleted TaskRun {} and is being garbage-collected",
                    o.name
                ))),
            }
        }
        _ if existing.meta().deletion_timestamp.is_some() => {
            Ok(Claim::Wait(format!("{kind} {name} is being deleted")))
        }
        _ => Ok(Claim::Taken(format!(
            "{kind} {name} already exists and no TaskRun controls it; this version will not run: \
             remove it and recreate this TaskRun, or raise contextVersion (its children get new names)"
        ))),
    }
}
