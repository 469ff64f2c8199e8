//! Reading an AdmissionReview body: only what admission decides on, in one pass.
//!
//! kube's `AdmissionReview<DynamicObject>` reads the whole object into a `serde_json::Value`
//! tree (through serde's flatten, which buffers it once more), plus the user info and options
//! this webhook never looks at. Here the review is read into small types that skip everything
//! else, and the spec goes straight into `TaskRunSpec`. Only when that fails (a spec of the
//! wrong shape, or no review at all) is the body read a second time with the spec kept as raw
//! JSON, so that a bad spec becomes a message for `decide` rather than a failed review. Either
//! way at most `MAX_FILES + 1` markdown files are kept (`TaskRunSpec`'s own reader).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use kube::core::admission::Operation;
use kube::core::{GroupVersionResource, TypeMeta};
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use taskrun::labels::TASKRUN_KEYS;
use taskrun::{FINALIZER, TaskRunSpec};

/// One admission request, as admission reads it.
#[derive(Debug)]
pub struct Request {
    /// The review's apiVersion and kind, echoed in the answer.
    pub types: TypeMeta,
    pub uid: String,
    pub resource: GroupVersionResource,
    pub sub_resource: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub operation: Operation,
    pub dry_run: bool,
    pub object: Option<Object>,
    pub old_object: Option<Object>,
}

/// The TaskRun in a request: its metadata as far as admission needs it, and its spec.
///
/// Of the labels and finalizers only the project's own are kept (None: the object has no such
/// map or list at all). Admission looks at no others, and a body within the size limit could
/// otherwise hold millions of tiny ones, each taking many times its bytes once read.
#[derive(Debug)]
pub struct Object {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub finalizers: Option<Vec<String>>,
    /// The spec, or why it cannot be read as a TaskRun spec.
    pub spec: Result<TaskRunSpec, Unreadable>,
}

/// A spec that cannot be read as a TaskRun spec (say, a field whose shape a CRD newer than
/// this binary changed).
#[derive(Debug)]
pub struct Unreadable {
    pub error: serde_json::Error,
    /// The spec as sent; None when there is none (or it is null).
    raw: Option<Box<RawValue>>,
}

impl Unreadable {
    /// Whether `old` holds this very spec, unreadable too: an update of the metadata only. The
    /// API server writes both objects with one encoder (map keys sorted), so the same spec is
    /// the same text; a spec written differently only counts as changed.
    pub fn is_unchanged_in(&self, old: Option<&Object>) -> bool {
        fn text(raw: &Option<Box<RawValue>>) -> Option<&str> {
            raw.as_deref().map(RawValue::get)
        }
        matches!(old.map(|o| &o.spec), Some(Err(old)) if text(&old.raw) == text(&self.raw))
    }
}

/// Why a body is not an admission request.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("the request body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    NotAReview(String),
    #[error(
        "expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got apiVersion {api_version:?}, kind {kind:?} (set admissionReviewVersions to [v1])"
    )]
    WrongVersion { api_version: String, kind: String },
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";

/// Reads an AdmissionReview body.
pub fn parse(body: &[u8]) -> Result<Request, ParseError> {
    if let Ok(review) = serde_json::from_slice::<Review<TaskRunSpec>>(body) {
        return review.into_request(Ok);
    }
    // The specs are borrowed from the body: only one that cannot be read is copied, to be
    // compared with the other object's.
    let review = serde_json::from_slice::<Review<Option<&RawValue>>>(body)
        .map_err(|e| ParseError::NotAReview(cut_error(&e)))?;
    review.into_request(|raw| {
        let text = raw.map_or("null", RawValue::get);
        serde_json::from_str(text).map_err(|error| Unreadable {
            error,
            raw: raw.map(ToOwned::to_owned),
        })
    })
}

/// The wire shape, generic over how the spec is read: `TaskRunSpec` (the one-pass read) or
/// raw JSON (the fallback). Unknown fields are skipped without being kept.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review<S> {
    api_version: String,
    kind: String,
    request: Option<WireRequest<S>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest<S> {
    uid: String,
    resource: GroupVersionResource,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    operation: Operation,
    #[serde(default)]
    dry_run: bool,
    object: Option<WireObject<S>>,
    old_object: Option<WireObject<S>>,
}

#[derive(Deserialize)]
struct WireObject<S> {
    #[serde(default)]
    metadata: WireMeta,
    spec: S,
}

#[derive(Default, Deserialize)]
struct WireMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: Option<OwnLabels>,
    #[serde(default)]
    finalizers: Option<OwnFinalizer>,
}

/// `metadata.labels`, keeping only the keys the webhook writes (`TASKRUN_KEYS`).
struct OwnLabels(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for OwnLabels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Labels;
        impl<'de> Visitor<'de> for Labels {
            type Value = OwnLabels;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of labels")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<OwnLabels, M::Error> {
                let mut own = BTreeMap::new();
                while let Some(key) = map.next_key::<Cow<str>>()? {
                    if TASKRUN_KEYS.contains(&key.as_ref()) {
                        own.insert(key.into_owned(), map.next_value()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(OwnLabels(own))
            }
        }
        d.deserialize_map(Labels)
    }
}

/// `metadata.finalizers`, keeping only the controller's.
struct OwnFinalizer(Vec<String>);

impl<'de> Deserialize<'de> for OwnFinalizer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Finalizers;
        impl<'de> Visitor<'de> for Finalizers {
            type Value = OwnFinalizer;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of finalizers")
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<OwnFinalizer, S::Error> {
                let mut ours = false;
                while let Some(f) = seq.next_element::<Cow<str>>()? {
                    ours |= f == FINALIZER;
                }
                Ok(OwnFinalizer(if ours {
                    vec![FINALIZER.to_owned()]
                } else {
                    Vec::new()
                }))
            }
        }
        d.deserialize_seq(Finalizers)
    }
}

impl<S> Review<S> {
    fn into_request(
        self,
        read_spec: impl Fn(S) -> Result<TaskRunSpec, Unreadable>,
    ) -> Result<Request, ParseError> {
        if self.api_version != REVIEW_API_VERSION || self.kind != "AdmissionReview" {
            return Err(ParseError::WrongVersion {
                api_version: cut(&self.api_version),
                kind: cut(&self.kind),
            });
        }
        let r = self.request.ok_or(ParseError::NoRequest)?;
        let object = |o: WireObject<S>| Object {
            name: o.metadata.name,
            namespace: o.metadata.namespace,
            labels: o.metadata.labels.map(|l| l.0),
            finalizers: o.metadata.finalizers.map(|f| f.0),
            spec: read_spec(o.spec),
        };
        Ok(Request {
            types: TypeMeta {
                api_version: self.api_version,
                kind: self.kind,
            },
            uid: r.uid,
            resource: r.resource,
            sub_resource: r.sub_resource,
            name: r.name,
            namespace: r.namespace,
            operation: r.operation,
            dry_run: r.dry_run,
            object: r.object.map(object),
            old_object: r.old_object.map(object),
        })
    }
}

/// A client-supplied string in a message, cut short.
pub fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A JSON error in a message, cut short: serde quotes the value it did not expect, which can
/// be most of the body (a string of megabytes where a boolean belongs).
pub fn cut_error(e: &serde_json::Error) -> String {
    cut_text(e.to_string())
}

/// What is wrong with a spec, without the parser's line and column (those of the whole
/// AdmissionReview, not of anything the user wrote), cut as [`cut_error`] cuts.
pub fn spec_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    cut_text(text.strip_suffix(&position).unwrap_or(&text).to_owned())
}

fn cut_text(text: String) -> String {
    const MAX: usize = 300;
    if text.chars().count() <= MAX {
        return text;
    }
    let mut cut: String = text.chars().take(MAX).collect();
    cut.push_str("...");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use taskrun::labels::TASK_ID;

    fn review(spec: Option<Value>) -> Vec<u8> {
        let mut object = json!({
            "apiVersion": "orchestrator.io/v1", "kind": "TaskRun",
            "metadata": {
                "name": "t", "namespace": "ns", "labels": {"a": "b"},
                "finalizers": ["example.com/hold"],
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
            },
        });
        if let Some(spec) = spec {
            object["spec"] = spec;
        }
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u-1", "operation": "CREATE", "name": "t", "namespace": "ns",
                "kind": {"group": "orchestrator.io", "version": "v1", "kind": "TaskRun"},
                "resource": {"group": "orchestrator.io", "version": "v1", "resource": "taskruns"},
                "userInfo": {"username": "alice", "groups": ["dev"]},
                "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
                "object": object,
            },
        }))
        .expect("json")
    }

    fn object(body: &[u8]) -> Object {
        let req = parse(body).expect("a request");
        assert_eq!(req.uid, "u-1");
        assert_eq!(req.operation, Operation::Create);
        assert_eq!(req.types.api_version, "admission.k8s.io/v1");
        req.object.expect("an object")
    }

    #[test]
    fn a_readable_spec_is_read_with_the_metadata_admission_needs() {
        let o = object(&review(Some(json!({
            "taskId": 7, "serviceName": "svc", "contextVersion": 1,
            "markdownFiles": [{"filename": "a.md", "content": "x"}],
        }))));
        assert_eq!(o.name.as_deref(), Some("t"));
        assert_eq!(o.namespace.as_deref(), Some("ns"));
        // Only the project's own labels and finalizer are kept.
        assert_eq!(o.labels, Some(BTreeMap::new()));
        assert_eq!(o.finalizers, Some(Vec::new()));
        let spec = o.spec.expect("spec");
        assert_eq!((spec.task_id, spec.service_name.as_str()), (7, "svc"));
    }

    #[test]
    fn a_spec_of_the_wrong_shape_or_none_is_an_error_of_its_own() {
        let o = object(&review(Some(json!({"taskId": "seven"}))));
        assert_eq!(o.labels, Some(BTreeMap::new()));
        let e = o.spec.expect_err("unreadable").error;
        assert!(
            e.to_string().contains("invalid type: string \"seven\""),
            "{e}"
        );

        let e = object(&review(None)).spec.expect_err("missing").error;
        assert!(e.to_string().contains("null"), "{e}");
    }

    /// Of a list of files far beyond the limit, one more than allowed is kept, whether the
    /// review is read in one pass or (another spec being unreadable) in two.
    #[test]
    fn at_most_one_file_more_than_allowed_is_kept() {
        use taskrun::limits::MAX_FILES;
        let files: Vec<Value> = (0..10_000)
            .map(|_| json!({"filename": "a.md", "content": "x"}))
            .collect();
        let spec = json!({"taskId": 1, "serviceName": "s", "markdownFiles": files});
        let kept = |o: Object| o.spec.expect("spec").markdown_files.len();
        assert_eq!(kept(object(&review(Some(spec.clone())))), MAX_FILES + 1);

        let mut body: Value = serde_json::from_slice(&review(Some(spec))).expect("json");
        body["request"]["oldObject"] = json!({"spec": {"taskId": "one"}});
        let req = parse(&serde_json::to_vec(&body).expect("json")).expect("a request");
        assert!(req.old_object.expect("old").spec.is_err());
        assert_eq!(kept(req.object.expect("object")), MAX_FILES + 1);
    }

    /// An unreadable spec is unchanged when the old object holds the same text.
    #[test]
    fn an_unreadable_spec_is_compared_as_sent() {
        let with_old = |new: Value, old: Option<Value>| {
            let mut body: Value = serde_json::from_slice(&review(Some(new))).expect("json");
            body["request"]["oldObject"] = old.map_or(Value::Null, |spec| json!({"spec": spec}));
            let req = parse(&serde_json::to_vec(&body).expect("json")).expect("a request");
            let object = req.object.as_ref().expect("object");
            let e = object.spec.as_ref().expect_err("unreadable");
            e.is_unchanged_in(req.old_object.as_ref())
        };
        let bad = json!({"taskId": 1, "serviceName": "s",
                         "markdownFiles": [{"filename": "a.md", "content": {"inline": "x"}}]});
        assert!(with_old(bad.clone(), Some(bad.clone())));
        assert!(!with_old(bad.clone(), None));
        assert!(!with_old(bad.clone(), Some(json!({"taskId": 2}))));
        let readable = json!({"taskId": 1, "serviceName": "s", "markdownFiles": []});
        assert!(!with_old(bad, Some(readable)));
    }

    /// Many labels and finalizers of others are read past, not kept; the project's own, and
    /// whether there is a map or list at all, are what the patch is decided on.
    #[test]
    fn only_the_projects_labels_and_finalizer_are_kept() {
        let mut body: Value =
            serde_json::from_slice(&review(Some(json!({"taskId": 1})))).expect("json");
        let meta = &mut body["request"]["object"]["metadata"];
        let mut labels: serde_json::Map<String, Value> = (0..10_000)
            .map(|i| (format!("example.com/l{i}"), json!("v")))
            .collect();
        labels.insert(TASK_ID.into(), json!("1"));
        meta["labels"] = Value::Object(labels);
        let mut finalizers: Vec<Value> = (0..10_000).map(|i| json!(format!("f{i}"))).collect();
        finalizers.insert(5_000, json!(FINALIZER));
        meta["finalizers"] = Value::Array(finalizers);
        let o = object(&serde_json::to_vec(&body).expect("json"));
        assert_eq!(
            o.labels,
            Some(BTreeMap::from([(TASK_ID.to_owned(), "1".to_owned())]))
        );
        assert_eq!(o.finalizers, Some(vec![FINALIZER.to_owned()]));

        let meta = &mut body["request"]["object"]["metadata"];
        meta["labels"] = Value::Null;
        meta.as_object_mut().expect("metadata").remove("finalizers");
        let o = object(&serde_json::to_vec(&body).expect("json"));
        assert_eq!((o.labels, o.finalizers), (None, None));
    }

    #[test]
    fn a_json_error_quoting_a_huge_value_is_cut() {
        let mut body: Value = serde_json::from_slice(&review(None)).expect("json");
        body["request"]["dryRun"] = json!("x".repeat(1_000_000));
        let e = parse(&serde_json::to_vec(&body).expect("json")).expect_err("not a review");
        let text = e.to_string();
        assert!(
            text.len() < 500 && text.contains("invalid type"),
            "{}",
            text.len()
        );
    }
}
