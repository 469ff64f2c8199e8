//! Admission reviews in, admission reviews out: parsing, the TaskRun rules and the answer.
//! Pure apart from the duplicate lookup (an in-memory read), so every branch is unit-tested
//! without a server or a cluster.

use kube::core::Status;
use kube::core::admission::{AdmissionResponse, Operation};
use kube::core::response::{StatusCause, StatusDetails};
use serde_json::Value;
use taskrun::validation::Reason;
use taskrun::{Identity, TaskRunSpec, Violation, validate_create, validate_update};

use crate::index::HeldBy;
pub use crate::index::NotSynced;
use crate::metrics::Outcome;
use crate::mutate::{finalizer_patch, label_patch};

mod reviewed;
mod warnings;
use reviewed::{Request, cut, spec_error};

const GROUP: &str = "orchestrator.io";
const RESOURCE: &str = "taskruns";
const VERSION: &str = "v1";

/// Which webhook was called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Validate,
    Mutate,
}

/// The one thing admission needs from the outside world: who else holds an identity.
pub trait Duplicates {
    /// Who holds `identity` against a create of `name`, if anyone but it: a live TaskRun, or
    /// a create allowed a moment ago; `NotSynced` while the answer cannot be trusted (before
    /// the first list, or re-listing after a watch error). With `claim` (the create is about
    /// to be allowed, and is not a dry run), `name` holds the identity from now on.
    fn holder(
        &self,
        identity: &Identity,
        name: &str,
        claim: bool,
    ) -> Result<Option<HeldBy>, NotSynced>;
}

impl Duplicates for crate::index::Index {
    fn holder(
        &self,
        identity: &Identity,
        name: &str,
        claim: bool,
    ) -> Result<Option<HeldBy>, NotSynced> {
        self.holder_for_create(identity, name, claim)
    }
}

/// The HTTP answer to one admission call, plus what is worth logging and counting.
#[derive(Debug)]
pub struct Answer {
    /// 200 for every AdmissionReview answer (allowed or not); 400 when the body was not one.
    pub http_status: u16,
    pub body: Vec<u8>,
    pub outcome: Outcome,
    pub operation: &'static str,
    pub uid: String,
    /// `namespace/name` of the object, when known.
    pub object: String,
    pub dry_run: bool,
    /// The denial or error message; empty when allowed.
    pub message: String,
}

/// Answers the body of an admission call to `hook`. Never panics on any input.
pub fn admit(hook: Hook, body: &[u8], index: &dyn Duplicates) -> Answer {
    let req = match reviewed::parse(body) {
        Ok(req) => req,
        Err(e) => return bad_request(e.to_string()),
    };
    let mut answer = Answer {
        http_status: 200,
        body: Vec::new(),
        outcome: Outcome::allowed,
        operation: operation_name(&req.operation),
        // For the logs: cut to what the API server sends at most (a uid, a namespace, a
        // name), as a client that is not the API server may send anything.
        uid: cut(&req.uid),
        object: {
            let name: String = req.name.chars().take(253).collect();
            match &req.namespace {
                Some(ns) => format!("{}/{name}", cut(ns)),
                None => name,
            }
        },
        dry_run: req.dry_run,
        message: String::new(),
    };
    let Ok(response) = decide(hook, req, index) else {
        // Only a create asks the index, and without it a duplicate would pass unnoticed: such
        // a request fails (HTTP 503, a plain Status) rather than being answered, and the API
        // server reports it under failurePolicy Fail; the client retries. Updates never wait.
        let message = "the TaskRun index is not synced with the API server yet; retry shortly";
        return Answer {
            http_status: 503,
            body: status_body(&Status::failure(message, "ServiceUnavailable").with_code(503)),
            outcome: Outcome::error,
            message: message.to_owned(),
            ..answer
        };
    };
    if !response.allowed {
        answer.outcome = if response.result.code == 400 {
            Outcome::error
        } else {
            Outcome::denied
        };
        answer.message = response.result.message.clone();
    }
    // Serializing these plain types cannot fail; an empty body would be answered as an error.
    answer.body = serde_json::to_vec(&response.into_review()).unwrap_or_default();
    answer
}

/// The allowing answer to `req`, which the deciding code may turn into a denial or a patch.
fn allow(req: &Request) -> AdmissionResponse {
    // kube's response type is non-exhaustive; `invalid` is its only constructor that needs
    // no kube request, so start there and make it an allowing answer to this request.
    let mut response = AdmissionResponse::invalid("");
    response.types = req.types.clone();
    response.uid = req.uid.clone();
    response.allowed = true;
    response.result = Status::default();
    response
}

/// The answer to `req`, or `NotSynced` when it needs the index and the index cannot be
/// trusted.
fn decide(
    hook: Hook,
    req: Request,
    index: &dyn Duplicates,
) -> Result<AdmissionResponse, NotSynced> {
    let allow = allow(&req);
    let r = &req.resource;
    if r.group != GROUP || r.resource != RESOURCE || r.version != VERSION {
        return Ok(refuse(
            allow,
            format!(
                "this webhook admits only {RESOURCE}.{GROUP}/{VERSION}, but was sent {}.{}/{}: fix the rules of the webhook configuration",
                cut(&r.resource),
                cut(&r.group),
                cut(&r.version)
            ),
        ));
    }
    // Status writes, deletes and connects are not ours to judge (and not registered).
    if req.sub_resource.as_deref().is_some_and(|s| !s.is_empty())
        || !matches!(req.operation, Operation::Create | Operation::Update)
    {
        return Ok(allow);
    }
    let Some(object) = req.object.as_ref() else {
        return Ok(refuse(allow, "the admission request has no object".into()));
    };
    let name = match object.name.as_deref() {
        Some(n) if !n.is_empty() => n.to_owned(),
        _ => req.name.clone(),
    };
    let namespace = object
        .namespace
        .clone()
        .or_else(|| req.namespace.clone())
        .unwrap_or_default();
    Ok(match hook {
        Hook::Mutate => mutate(allow, &req, object),
        Hook::Validate => match object.spec.as_ref() {
            Ok(spec) if req.operation == Operation::Create => {
                validate_create_request(allow, spec, &namespace, &name, req.dry_run, index)?
            }
            Ok(spec) => validate_update_request(allow, &req, spec, &namespace, &name),
            // A spec this binary cannot read (a CRD newer than it), left as it was: the update
            // is to the metadata (annotations, a finalizer removed) and must not be blocked.
            Err(e)
                if req.operation == Operation::Update
                    && e.is_unchanged_in(req.old_object.as_ref()) =>
            {
                allow
            }
            Err(e) => {
                let v = Violation {
                    field: "spec".into(),
                    reason: Reason::Invalid,
                    // The schema refuses what no TaskRun spec is before the webhook is called,
                    // so what reaches here is most likely a spec of a newer CRD. The error's
                    // line and column are the AdmissionReview's, no help to the user.
                    message: format!(
                        "the spec cannot be read as a TaskRun spec ({}); if the TaskRun CRD \
                         is newer than the taskrun-webhook, upgrade the webhook",
                        spec_error(&e.error)
                    ),
                };
                deny(allow, &namespace, &name, None, &[v])
            }
        },
    })
}

/// The mutating webhook: the labels the spec implies and, on create, the finalizer.
fn mutate(allow: AdmissionResponse, req: &Request, object: &reviewed::Object) -> AdmissionResponse {
    // A spec that cannot be read is the schema's to refuse, with its own message.
    let Ok(spec) = object.spec.as_ref() else {
        return allow;
    };
    let mut ops = label_patch(object.labels.as_ref(), spec);
    let warnings =
        warnings::overridden_labels(&ops, object.labels.as_ref(), req.old_object.as_ref());
    if req.operation == Operation::Create {
        ops.extend(finalizer_patch(object.finalizers.as_deref()));
    }
    if ops.is_empty() {
        return allow;
    }
    match allow.clone().with_patch(json_patch::Patch(ops)) {
        Ok(mut patched) => {
            if !warnings.is_empty() {
                patched.warnings = Some(warnings);
            }
            patched
        }
        Err(e) => refuse(allow, format!("cannot encode the patch: {e}")),
    }
}

/// A new TaskRun: the rules, and no other live TaskRun of its identity (nor another create of
/// it allowed a moment ago). A valid one that is not a dry run holds its identity from here on.
fn validate_create_request(
    allow: AdmissionResponse,
    spec: &TaskRunSpec,
    namespace: &str,
    name: &str,
    dry_run: bool,
    index: &dyn Duplicates,
) -> Result<AdmissionResponse, NotSynced> {
    let violations = validate_create(spec);
    let identity = Identity::new(namespace, &spec.service_name, spec.task_id);
    let claim = violations.is_empty() && !dry_run;
    // An invalid TaskRun is refused for what is wrong with it even while the index cannot say
    // whether it is also a duplicate.
    let holder = match index.holder(&identity, name, claim) {
        Err(NotSynced) if !violations.is_empty() => None,
        found => found?,
    };
    if violations.is_empty() && holder.is_none() {
        return Ok(allow);
    }
    let dup = holder.as_ref().map(|h| (&identity, h));
    Ok(deny(allow, namespace, name, dup, &violations))
}

/// A changed TaskRun: the rules for the change (immutable fields, contextVersion never
/// lower), and warnings for a change that is allowed but probably not what was meant.
fn validate_update_request(
    mut allow: AdmissionResponse,
    req: &Request,
    spec: &TaskRunSpec,
    namespace: &str,
    name: &str,
) -> AdmissionResponse {
    let old = req.old_object.as_ref().map(|o| o.spec.as_ref());
    let violations = match &old {
        // An unchanged spec is always allowed (re-applies, metadata edits, finalizers), even
        // if a rule was added since it was created.
        Some(Ok(old)) if *old == spec => return allow,
        Some(Ok(old)) => validate_update(old, spec),
        _ => validate_create(spec),
    };
    if !violations.is_empty() {
        return deny(allow, namespace, name, None, &violations);
    }
    if let Some(Ok(old)) = &old {
        let warnings = warnings::update_warnings(old, spec);
        if !warnings.is_empty() {
            allow.warnings = Some(warnings);
        }
    }
    allow
}

/// A denial listing every problem: 409 Conflict when the identity is taken, 422 otherwise.
fn deny(
    response: AdmissionResponse,
    namespace: &str,
    name: &str,
    duplicate: Option<(&Identity, &HeldBy)>,
    violations: &[Violation],
) -> AdmissionResponse {
    let mut parts = Vec::with_capacity(violations.len() + 1);
    let mut causes = Vec::with_capacity(violations.len() + 1);
    if let Some((identity, holder)) = duplicate {
        let message = match holder {
            HeldBy::Stored(existing) => format!(
                "TaskRun {namespace}/{existing} already holds {identity}; add context to it with \
                 \"kubectl taskrun context add {existing} -n {namespace} -f FILE.md\", or delete \
                 it first with \"kubectl delete taskrun {existing} -n {namespace}\" (a duplicate \
                 task, not a field-manager conflict: --force-conflicts does not help; renamed in \
                 git? Flux and Argo CD's PruneLast create the new name before they prune the old, \
                 so delete {existing} first)"
            ),
            HeldBy::JustAllowed(existing) => format!(
                "TaskRun {namespace}/{existing} of {identity} was allowed a moment ago, created \
                 at the same time as this one; keep one TaskRun per task (two manifests of one \
                 task in git?) and add context to {existing} with \"kubectl taskrun context add \
                 {existing} -n {namespace} -f FILE.md\"; if {existing} was not created after \
                 all, try again in a few seconds"
            ),
        };
        causes.push(StatusCause {
            reason: "FieldValueDuplicate".into(),
            message: message.clone(),
            field: "spec.taskId".into(),
        });
        parts.push(message);
    }
    for v in violations {
        parts.push(v.to_string());
        causes.push(StatusCause {
            reason: cause_reason(v.reason).into(),
            message: v.message.clone(),
            field: v.field.clone(),
        });
    }
    let (code, reason) = if duplicate.is_some() {
        (409, "Conflict")
    } else {
        (422, "Invalid")
    };
    let message = parts.join("; ");
    let mut response = response.deny(&message);
    response.result = Status::failure(&message, reason)
        .with_code(code)
        .with_details(StatusDetails {
            name: name.to_owned(),
            group: GROUP.into(),
            kind: "TaskRun".into(),
            uid: String::new(),
            causes,
            retry_after_seconds: 0,
        });
    response
}

/// Refuses a request that is not something this webhook should be asked (400).
fn refuse(response: AdmissionResponse, message: String) -> AdmissionResponse {
    let mut response = response.deny(&message);
    response.result = Status::failure(&message, "BadRequest").with_code(400);
    response
}

/// A `Status` as the API server writes its own errors.
pub(crate) fn status_body(status: &Status) -> Vec<u8> {
    let mut body = serde_json::to_value(status).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut body {
        map.insert("kind".into(), "Status".into());
        map.insert("apiVersion".into(), "v1".into());
    }
    serde_json::to_vec(&body).unwrap_or_default()
}

/// A body that is not an AdmissionReview at all: a plain `Status`, since there is no uid to
/// echo.
fn bad_request(message: String) -> Answer {
    let status = Status::failure(&message, "BadRequest").with_code(400);
    Answer {
        http_status: 400,
        body: status_body(&status),
        outcome: Outcome::error,
        operation: "",
        uid: String::new(),
        object: String::new(),
        dry_run: false,
        message,
    }
}

fn cause_reason(r: Reason) -> &'static str {
    match r {
        Reason::Required => "FieldValueRequired",
        Reason::Invalid => "FieldValueInvalid",
        Reason::TooLong => "FieldValueTooLong",
        Reason::TooMany => "FieldValueTooMany",
        Reason::Duplicate => "FieldValueDuplicate",
        Reason::Forbidden => "FieldValueForbidden",
    }
}

fn operation_name(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

#[cfg(test)]
mod tests;
