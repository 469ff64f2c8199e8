//! The errors a command ends with, and the exit code each maps to (documented in `--help`).

use std::process::ExitCode;

/// Everything went as asked.
pub const OK: u8 = 0;
/// The command could not do its job: connection, API or retry failure.
pub const FAILURE: u8 = 1;
/// The command line or its input is wrong; nothing was changed.
pub const INVALID: u8 = 2;
/// migrate-helm: some releases failed or are not done yet (run again), the others went through.
pub const PARTIAL: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input, found before anything was changed. One line per problem.
    #[error("nothing was changed:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),

    /// No usable connection configuration: what is wrong and what to do.
    #[error("{0}")]
    Connection(String),

    #[error("cannot use the kubeconfig ({files}): {source}")]
    Kubeconfig {
        files: String,
        #[source]
        source: kube::config::KubeconfigError,
    },

    #[error(
        "no kubeconfig (KUBECONFIG is not set and {default} does not exist), and no in-cluster service account either: {source}; give --kubeconfig"
    )]
    InCluster {
        default: String,
        #[source]
        source: kube::config::InClusterError,
    },

    #[error("cannot reach the API server through a proxy: {0}")]
    Proxy(#[from] taskrun_apiclient::proxy::ProxyError),

    #[error("cannot make a client from the configuration: {0}")]
    Client(#[source] kube::Error),

    #[error(
        "this cluster does not serve {resource}: install the TaskRun CRD first (docs/install.md)"
    )]
    NotServed { resource: String },

    #[error("TaskRun {name} not found in namespace {namespace}")]
    NotFound { namespace: String, name: String },

    /// The TaskRun is being deleted (its deletionTimestamp set, a finalizer holding it): cluster
    /// state, not bad input. No new version of it would run.
    #[error(
        "TaskRun {name} in namespace {namespace} is being deleted, so no new version of it would run: wait until it is gone (`kubectl wait --for=delete taskrun/{name} -n {namespace}`), then create it again and add the context to the new one. If it stays, a finalizer holds it (`kubectl get taskrun {name} -n {namespace} -o jsonpath='{{.metadata.finalizers}}'`): `orchestrator.io/cleanup` is removed by the taskrun controller once the TaskRun's Jobs and ConfigMaps are gone, so check that the controller runs"
    )]
    BeingDeleted { namespace: String, name: String },

    #[error(
        "gave up after {attempts} attempts: the TaskRun kept changing under us; last answer: {last}"
    )]
    TooManyConflicts { attempts: u32, last: String },

    /// An API call refused or failed: what was being done, and the server's own message (not
    /// a dump of the Status it answered with).
    #[error("{action}: {}", describe(.source))]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },

    /// The apply got no clear answer (no response, or a server error): it may have been
    /// applied all the same.
    #[error(
        "applying to TaskRun {name}: {}; the change may have been applied all the same: running the same command again is safe (it finds the files already added and adds nothing twice)",
        describe(.source)
    )]
    MaybeApplied {
        name: String,
        #[source]
        source: kube::Error,
    },

    /// The output could not be written (other than to a reader that went away).
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
}

impl Error {
    pub fn api(action: impl Into<String>, source: kube::Error) -> Self {
        Self::Api {
            action: action.into(),
            source,
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        // Only bad input is INVALID; cluster state (a TaskRun being deleted) is a FAILURE. The
        // API server's 422 (its schema or the webhook refusing the TaskRun the input makes) is
        // bad input that the plugin's own checks did not catch: a webhook newer than the plugin.
        ExitCode::from(match self {
            Error::Invalid(_) => INVALID,
            Error::Api {
                source: kube::Error::Api(status),
                ..
            } if status.code == 422 => INVALID,
            _ => FAILURE,
        })
    }
}

/// False only when the API server answered that it refused the request: a 4xx status, or an
/// admission webhook it could not call (a 500 "failed calling webhook": admission comes before
/// anything is stored). After no answer, an answer that could not be read, or another server
/// error (a timeout, etcd), the request may have taken effect.
pub fn may_have_taken_effect(err: &kube::Error) -> bool {
    !matches!(err, kube::Error::Api(status)
        if (400..500).contains(&status.code) || status.message.contains("failed calling webhook"))
}

/// The API server's HTTP status code for a failed call, if it answered.
pub fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// What an admission webhook call fails with when the webhook is only not ready or not there
/// yet (as the API server words it), as opposed to one that is misconfigured or broken (a bad
/// CA bundle, a crash on this input), which asking again will not mend.
const WEBHOOK_NOT_READY: [&str; 5] = [
    // The webhook's own answers when it cannot judge now: its index not synced, or too many
    // large reviews being read at once.
    "retry shortly",
    "connection refused",
    "no endpoints available",
    "context deadline exceeded",
    "i/o timeout",
];

/// True when a refusal says nothing about the request itself, only that it could not be judged
/// now: no answer at all, the API server overloaded or timing out (429, 503, 504), or an
/// admission webhook not ready or not reachable yet (its index not synced after a start, its
/// pods not up). Asking again later may well succeed.
pub fn retry_later(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => {
            matches!(status.code, 429 | 503 | 504)
                || (status.code == 500
                    && status.message.contains("failed calling webhook")
                    && WEBHOOK_NOT_READY.iter().any(|m| status.message.contains(m)))
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// A one-line account of an API error: the server's own message when it gave one (that is
/// where the webhook's reason is), else the client error with its causes. The client's own
/// message alone ("client error (Connect)") is the same for a refused connection, an unknown
/// certificate authority and a name that does not resolve; the cause tells them apart.
pub fn describe(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) if !status.message.is_empty() => {
            format!("{} ({})", status.message, status.code)
        }
        other => taskrun::client::error_chain(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure(message, "Reason").with_code(code)))
    }

    /// An error with a cause, as hyper's client wraps a failed connect.
    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Wrapped(#[source] std::io::Error);

    #[test]
    fn a_client_error_names_its_cause() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused here");
        let err = kube::Error::Service(Box::new(Wrapped(refused)));
        assert_eq!(
            describe(&err),
            "ServiceError: client error (Connect): refused here"
        );
    }

    #[test]
    fn only_a_refusal_says_the_request_took_no_effect() {
        assert!(!may_have_taken_effect(&api(422, "invalid")));
        assert!(!may_have_taken_effect(&api(403, "forbidden")));
        assert!(!may_have_taken_effect(&api(404, "not found")));
        assert!(may_have_taken_effect(&api(500, "etcd")));
        assert!(may_have_taken_effect(&api(504, "timeout")));
        // The webhook was not reached: admission failed before anything was stored.
        assert!(!may_have_taken_effect(&api(
            500,
            "Internal error occurred: failed calling webhook \"validate.taskruns.orchestrator.io\": \
             failed to call webhook: Post \"https://taskrun-webhook.taskrun-system.svc:443/validate\": \
             dial tcp 10.0.0.1:443: connect: connection refused"
        )));
        let unreadable = serde_json::from_str::<u8>("x").expect_err("not JSON");
        assert!(may_have_taken_effect(&kube::Error::SerdeError(unreadable)));
    }

    #[test]
    fn a_maybe_applied_error_says_a_rerun_is_safe() {
        let e = Error::MaybeApplied {
            name: "t1".into(),
            source: api(504, "the request timed out"),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("applying to TaskRun t1: the request timed out")
                && text.contains("may have been applied")
                && text.contains("running the same command again is safe"),
            "{text}"
        );
        assert_eq!(e.exit_code(), ExitCode::from(FAILURE));
    }

    #[test]
    fn an_api_error_shows_the_servers_message_not_a_status_dump() {
        let forbidden = Status::failure(
            "taskruns.orchestrator.io \"t1\" is forbidden: User \"dev\" cannot patch resource \"taskruns\"",
            "Forbidden",
        )
        .with_code(403);
        let e = Error::api(
            "applying to TaskRun t1",
            kube::Error::Api(Box::new(forbidden)),
        );
        assert_eq!(
            e.to_string(),
            "applying to TaskRun t1: taskruns.orchestrator.io \"t1\" is forbidden: User \"dev\" cannot patch resource \"taskruns\" (403)"
        );
        let invalid = Status::failure(
            "admission webhook \"validate.taskruns.orchestrator.io\" denied the request: spec.markdownFiles: empty",
            "Invalid",
        )
        .with_code(422)
        .with_details(kube::core::response::StatusDetails {
            name: "t1".into(),
            group: "orchestrator.io".into(),
            kind: "TaskRun".into(),
            uid: String::new(),
            causes: vec![kube::core::response::StatusCause {
                reason: "FieldValueInvalid".into(),
                message: "empty".into(),
                field: "spec.markdownFiles".into(),
            }],
            retry_after_seconds: 0,
        });
        let e = Error::api(
            "applying to TaskRun t1",
            kube::Error::Api(Box::new(invalid)),
        );
        let text = e.to_string();
        assert_eq!(
            text,
            "applying to TaskRun t1: admission webhook \"validate.taskruns.orchestrator.io\" denied the request: spec.markdownFiles: empty (422)"
        );
        for dump in ["Status {", "ErrorResponse {", "StatusDetails", "causes"] {
            assert!(!text.contains(dump), "{text}");
        }
        // The TaskRun the input makes was refused: bad input, as when the plugin finds it.
        assert_eq!(e.exit_code(), ExitCode::from(INVALID));
        let forbidden = Error::api("applying to TaskRun t1", api(403, "forbidden"));
        assert_eq!(forbidden.exit_code(), ExitCode::from(FAILURE));
    }

    #[test]
    fn a_taskrun_being_deleted_is_a_failure_not_bad_input() {
        let e = Error::BeingDeleted {
            namespace: "team-a".into(),
            name: "t1".into(),
        };
        assert_eq!(e.exit_code(), ExitCode::from(FAILURE));
        let text = e.to_string();
        assert!(
            text.starts_with("TaskRun t1 in namespace team-a is being deleted")
                && text.contains("kubectl wait --for=delete taskrun/t1 -n team-a")
                && text.contains("create it again")
                && text.contains("jsonpath='{.metadata.finalizers}'")
                && !text.contains("nothing was changed"),
            "{text}"
        );
    }

    #[test]
    fn only_refusals_that_judge_nothing_are_worth_retrying() {
        // The webhook's index not synced yet, as the API server reports it (failurePolicy Fail).
        let not_synced = api(
            500,
            "Internal error occurred: failed calling webhook \"validate.taskruns.orchestrator.io\": \
             failed to call webhook: the TaskRun index is not synced with the API server yet; \
             retry shortly",
        );
        assert!(retry_later(&not_synced));
        // The webhook busy reading other large reviews.
        assert!(retry_later(&api(
            500,
            "Internal error occurred: failed calling webhook \"validate.taskruns.orchestrator.io\": \
             failed to call webhook: too many large request bodies are being read at once; \
             retry shortly",
        )));
        assert!(retry_later(&api(429, "Too many requests")));
        assert!(retry_later(&api(503, "Service unavailable")));
        // A judgement on the TaskRun itself.
        assert!(!retry_later(&api(
            409,
            "TaskRun ns/a already holds task 1 of service x"
        )));
        assert!(!retry_later(&api(422, "spec.markdownFiles: empty")));
        assert!(!retry_later(&api(500, "Internal error occurred: etcd")));
        // A webhook that is there but broken: asking again will not help.
        assert!(!retry_later(&api(
            500,
            "Internal error occurred: failed calling webhook \"validate.taskruns.orchestrator.io\": \
             failed to call webhook: Post \"https://taskrun-webhook.taskrun-system.svc:443/validate\": \
             tls: failed to verify certificate: x509: certificate signed by unknown authority",
        )));
        assert!(retry_later(&api(
            500,
            "Internal error occurred: failed calling webhook \"validate.taskruns.orchestrator.io\": \
             failed to call webhook: Post \"https://taskrun-webhook.taskrun-system.svc:443/validate\": \
             no endpoints available for service \"taskrun-webhook\"",
        )));
    }
}
