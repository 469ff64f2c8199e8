//! The controller's creates and status writes, answered by the API server with the object's
//! metadata only (`as=PartialObjectMetadata`, what kube's `patch_metadata` asks for).
//!
//! Nothing reads more of these answers than the metadata: the full object would be a
//! ConfigMap with all the markdown, a TaskRun with its markdown and managed fields, a Job with
//! every defaulted field, each encoded by the API server and decoded here only to be dropped.

use hyper::header::{ACCEPT, HeaderValue};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::core::Request;
use kube::{Error, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use taskrun::{TaskRun, TaskRunStatus};

use crate::status;

const METADATA_ONLY: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

/// Creates `object` in the scope of `api`; returns the stored object's metadata.
pub async fn create<K>(api: &Api<K>, object: &K) -> Result<ObjectMeta, Error>
where
    K: Resource + Serialize + Clone + DeserializeOwned,
{
    let body = serde_json::to_vec(object).map_err(Error::SerdeError)?;
    let request = Request::new(api.resource_url())
        .create(&PostParams::default(), body)
        .map_err(Error::BuildRequest)?;
    metadata_answer(api, request).await
}

/// Writes `next` as the TaskRun's status: server-side apply on the status subresource,
/// owned by `manager`, taking over fields another manager held.
pub async fn apply_status(
    api: &Api<TaskRun>,
    name: &str,
    manager: &str,
    next: &TaskRunStatus,
) -> Result<ObjectMeta, Error> {
    let request = Request::new(api.resource_url())
        .patch_subresource(
            "status",
            name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(status::apply_body(next)),
        )
        .map_err(Error::BuildRequest)?;
    metadata_answer(api, request).await
}

async fn metadata_answer<K>(
    api: &Api<K>,
    mut request: hyper::Request<Vec<u8>>,
) -> Result<ObjectMeta, Error>
where
    K: Resource + Clone + DeserializeOwned,
{
    request
        .headers_mut()
        .insert(ACCEPT, HeaderValue::from_static(METADATA_ONLY));
    let answer: PartialObjectMeta<K> = api.clone().into_client().request(request).await?;
    Ok(answer.metadata)
}
