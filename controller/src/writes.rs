//! The controller's writes. Creates and status writes are answered by the API server with the
//! object's metadata only (`as=PartialObjectMetadata`, what kube's `patch_metadata` asks for):
//! nothing reads more of these answers than the metadata, and the full object would be a
//! ConfigMap with all the markdown, a TaskRun with its markdown and managed fields, a Job with
//! every defaulted field, each encoded by the API server and decoded here only to be dropped.
//! Deletes of children name the uid they were seen with (`delete_child`).

use hyper::header::{ACCEPT, HeaderValue};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, DeleteParams, PartialObjectMeta, Patch, PatchParams, PostParams, Preconditions,
    PropagationPolicy,
};
use kube::core::Request;
use kube::{Error, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use taskrun::{TaskRun, TaskRunStatus};

/// The `Accept` header of these writes.
pub const METADATA_ONLY: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

type HttpRequest = hyper::Request<Vec<u8>>;

/// Creates `object` in the scope of `api`; returns the stored object's metadata.
pub async fn create<K>(api: &Api<K>, object: &K) -> Result<ObjectMeta, Error>
where
    K: Resource + Serialize + Clone + DeserializeOwned,
{
    send(api, create_request(api.resource_url(), object)?).await
}

/// Writes `next` as the TaskRun's status: server-side apply on the status subresource,
/// owned by `manager`, taking over fields another manager held.
pub async fn apply_status(
    api: &Api<TaskRun>,
    name: &str,
    manager: &str,
    next: &TaskRunStatus,
) -> Result<ObjectMeta, Error> {
    send(
        api,
        apply_status_request(api.resource_url(), name, manager, next)?,
    )
    .await
}

/// Deletes the child `name` if it is still the object with `uid`, with `propagation`: a Job's
/// pods go too either way, but in the foreground the Job stays, marked as being deleted, until
/// they have stopped (its pods are the garbage collector's to delete, and a pod bound to a node
/// is gone once its kubelet says it has stopped), so that a Job's name or a newer version waits
/// for them. Returns whether this call deleted it: the child already gone (404), or
/// its name now held by another object (the uid precondition fails, 409), is not an error.
/// Children are named by the task and version, so a successor TaskRun of the same task may
/// have made its own child under the name while the cache still shows the old one; without
/// the uid a stale cache would delete it. No uid (a child never seen), or an empty one, deletes
/// by name alone.
pub async fn delete_child<K>(
    api: &Api<K>,
    name: &str,
    uid: Option<&str>,
    propagation: PropagationPolicy,
) -> Result<bool, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let uid = uid.filter(|u| !u.is_empty());
    let mut params = DeleteParams {
        propagation_policy: Some(propagation),
        ..DeleteParams::default()
    };
    params.preconditions = uid.map(|uid| Preconditions {
        uid: Some(uid.to_owned()),
        resource_version: None,
    });
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(Error::Api(s)) if s.code == 404 || uid.is_some_and(|uid| replaced(&s, uid)) => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// The API server's answer to a delete whose precondition `uid` is not the object's: a 409
/// naming that uid ("the UID in the precondition (…) does not match the UID in record (…)").
/// An admission webhook may deny a delete with 409 too, and that is an error to retry.
fn replaced(s: &kube::core::Status, uid: &str) -> bool {
    s.code == 409 && !uid.is_empty() && s.message.contains(uid)
}

/// Whether a write was refused because it named a resourceVersion the object has moved on
/// from (409, "the object has been modified"): what it was computed from is stale. An
/// admission webhook may deny a write with 409 too: that is an error to retry.
pub fn stale(s: &kube::core::Status) -> bool {
    s.code == 409 && s.reason == "Conflict" && s.message.contains("the object has been modified")
}

/// Whether a create was refused because an object holds the name (409 AlreadyExists). An
/// admission webhook may deny a create with 409 too: that is a refusal, which says nothing of
/// the name (a reconcile reports it as `CreateRefused`, with its message).
pub fn name_taken(s: &kube::core::Status) -> bool {
    s.code == 409 && s.reason == "AlreadyExists"
}

fn create_request<K: Serialize>(url: &str, object: &K) -> Result<HttpRequest, Error> {
    let body = serde_json::to_vec(object).map_err(Error::SerdeError)?;
    let request = Request::new(url)
        .create(&PostParams::default(), body)
        .map_err(Error::BuildRequest)?;
    Ok(metadata_only(request, "create"))
}

fn apply_status_request(
    url: &str,
    name: &str,
    manager: &str,
    next: &TaskRunStatus,
) -> Result<HttpRequest, Error> {
    let request = Request::new(url)
        .patch_subresource(
            "status",
            name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(apply_body(next)),
        )
        .map_err(Error::BuildRequest)?;
    Ok(metadata_only(request, "patch_status"))
}

/// The server-side apply body that sets the status through the status subresource.
fn apply_body(status: &TaskRunStatus) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "orchestrator.io/v1",
        "kind": "TaskRun",
        "status": status,
    })
}

/// Asks for the metadata-only answer; `verb` names the request in kube's trace spans, as
/// `Api`'s own methods do.
fn metadata_only(mut request: HttpRequest, verb: &'static str) -> HttpRequest {
    request
        .headers_mut()
        .insert(ACCEPT, HeaderValue::from_static(METADATA_ONLY));
    request.extensions_mut().insert(verb);
    request
}

async fn send<K>(api: &Api<K>, request: HttpRequest) -> Result<ObjectMeta, Error>
where
    K: Resource + Clone + DeserializeOwned,
{
    let answer: PartialObjectMeta<K> = api.clone().into_client().request(request).await?;
    Ok(answer.metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use taskrun::Phase;

    const URL: &str = "/apis/orchestrator.io/v1/namespaces/ns/taskruns";

    /// An admission webhook's denial with 409, which says nothing of the object's state.
    fn denied_by_a_webhook() -> kube::core::Status {
        kube::core::Status::failure(
            "admission webhook \"x\" denied the request: frozen",
            "Conflict",
        )
        .with_code(409)
    }

    #[test]
    fn only_a_failed_uid_precondition_counts_as_replaced() {
        use kube::core::Status;
        // As kube-apiserver 1.37 words it (the e2e test deletes through it).
        let precondition = Status::failure(
            "Operation cannot be fulfilled on ConfigMap \"c\": the UID in the precondition (uid-a) \
             does not match the UID in record (uid-b). The object might have been deleted and then recreated",
            "Conflict",
        )
        .with_code(409);
        assert!(replaced(&precondition, "uid-a"));
        let denied = denied_by_a_webhook();
        assert!(!replaced(&denied, "uid-a"), "a denial is an error to retry");
        assert!(
            !replaced(&precondition, ""),
            "no uid, no precondition to have failed"
        );
    }

    #[test]
    fn only_a_moved_resource_version_counts_as_stale() {
        use kube::core::Status;
        // As kube-apiserver 1.37 words it (seen in the e2e tests' controller logs).
        let moved = Status::failure(
            "Operation cannot be fulfilled on taskruns.orchestrator.io \"t\": the object has been \
             modified; please apply your changes to the latest version and try again",
            "Conflict",
        )
        .with_code(409);
        assert!(stale(&moved));
        let denied = denied_by_a_webhook();
        assert!(!stale(&denied), "a denial is an error to retry");
    }

    #[test]
    fn only_an_object_holding_the_name_makes_a_create_a_claim() {
        use kube::core::Status;
        // As kube-apiserver words it.
        let exists =
            Status::failure("configmaps \"c\" already exists", "AlreadyExists").with_code(409);
        assert!(name_taken(&exists));
        let denied = denied_by_a_webhook();
        assert!(!name_taken(&denied), "a denial is reported, not waited for");
    }

    fn accept(r: &HttpRequest) -> &str {
        r.headers()
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[test]
    fn a_create_posts_the_object_and_asks_for_metadata_back() {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some("c".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let r = create_request("/api/v1/namespaces/ns/configmaps", &cm).expect("request");
        assert_eq!(r.method(), "POST");
        assert!(r.uri().path().ends_with("/namespaces/ns/configmaps"));
        assert_eq!(accept(&r), METADATA_ONLY);
        let sent: ConfigMap = serde_json::from_slice(r.body()).expect("the ConfigMap");
        assert_eq!(sent, cm);
    }

    #[test]
    fn a_status_write_is_a_forced_apply_on_the_subresource_answered_with_metadata() {
        let next = TaskRunStatus {
            phase: Some(Phase::Pending),
            job_name: Some("j".into()),
            ..Default::default()
        };
        let r = apply_status_request(URL, "t", "mgr", &next).expect("request");
        assert_eq!(r.method(), "PATCH");
        assert_eq!(r.uri().path(), format!("{URL}/t/status"));
        let query = r.uri().query().unwrap_or_default();
        assert!(query.contains("fieldManager=mgr") && query.contains("force=true"));
        assert_eq!(
            r.headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/apply-patch+yaml")
        );
        assert_eq!(accept(&r), METADATA_ONLY);
        let body: serde_json::Value = serde_json::from_slice(r.body()).expect("json");
        assert_eq!(body["kind"], "TaskRun");
        assert_eq!(body["apiVersion"], "orchestrator.io/v1");
        assert_eq!(body["status"]["jobName"], "j");
        assert_eq!(body["status"]["phase"], "Pending");
    }
}
