//! At start, the API server itself judges the Job template: a server-side dry-run create of a
//! Job built exactly as a reconcile builds one (`job::job`), for a sample TaskRun, in the
//! controller's own namespace.
//!
//! `JobTemplate::validate` checks only part of what the API server refuses in a Job (not the
//! syntax of quantities, requests above limits, the imagePullPolicy, DNS names...). A Job the
//! API server refuses as invalid fails its TaskRun as `InvalidTemplate`, final for the
//! version, so a template typo would fail every new TaskRun until fixed. Refused here, it stops
//! the controller at start instead (a rolling update with it stalls, the old replicas going on
//! with the old template). Any other failure (no answer in time, RBAC, a missing namespace, an
//! admission webhook or policy that may lift) only leaves the template unchecked.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::Client;
use kube::api::{Api, PostParams};
use taskrun::{TaskRun, TaskRunSpec};

use crate::job;
use crate::reconcile::refuses_template;
use crate::template::JobTemplate;

/// How long start-up waits for the API server's answer before it goes on unchecked.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The sample TaskRun's name and serviceName (its Job: `template-check-1-v1`).
const SAMPLE: &str = "template-check";
/// The sample's uid, for the owner reference every Job carries. A dry run stores nothing, so
/// no garbage collector ever looks for this owner.
const SAMPLE_UID: &str = "00000000-0000-0000-0000-000000000000";

/// The API server refuses the Jobs the template makes.
#[derive(Debug, thiserror::Error)]
#[error(
    "the API server refuses the Job this template makes (a dry-run create of {job} in \
     namespace {namespace}): {message}. Fix the template (the flag, or the field of the \
     --job-template file, that sets the Job field the message names) and start again; as \
     it is, every TaskRun would fail with InvalidTemplate"
)]
pub struct TemplateRefused {
    pub namespace: String,
    pub job: String,
    /// The API server's own message.
    pub message: String,
}

/// What the API server's answer to the dry run says of the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It would create the Job.
    Accepted,
    /// It refuses the Job as invalid, as a reconcile would mark `InvalidTemplate`; its message.
    Refused(String),
    /// It could not judge the Job, or refused it for a reason that may pass; why.
    Unchecked(String),
}

/// Judges the API server's answer to the dry-run create. Refused exactly when a reconcile
/// would fail the TaskRun as `InvalidTemplate` (`reconcile::refuses_template`: 400 or 422,
/// not from an admission webhook or policy); 409 AlreadyExists is accepted, since the API server
/// validates the object (and runs admission) before it finds the name taken, and a webhook's
/// own 409 says nothing of the template.
pub fn verdict(answer: Result<(), &kube::Error>) -> Verdict {
    match answer {
        Ok(()) => Verdict::Accepted,
        // Not when a webhook cannot take a dry run (sideEffects Unknown or Some, from v1beta1
        // days): the API server answers 400 to any dry run it matches, no word on the
        // template, and a real create would reach the webhook.
        Err(kube::Error::Api(s))
            if refuses_template(s) && !s.message.contains("does not support dry run") =>
        {
            Verdict::Refused(s.message.clone())
        }
        Err(kube::Error::Api(s)) if crate::writes::name_taken(s) => Verdict::Accepted,
        Err(kube::Error::Api(s)) => {
            Verdict::Unchecked(format!("{} {}: {}", s.code, s.reason, s.message))
        }
        Err(e) => Verdict::Unchecked(e.to_string()),
    }
}

/// The Job a reconcile would create for a sample TaskRun in `namespace`.
pub fn sample_job(template: &JobTemplate, namespace: &str) -> Option<Job> {
    let mut tr = TaskRun::new(
        SAMPLE,
        TaskRunSpec {
            task_id: 1,
            service_name: SAMPLE.into(),
            agent_name: None,
            context_version: 1,
            markdown_files: Vec::new(),
        },
    );
    tr.metadata.namespace = Some(namespace.to_owned());
    tr.metadata.uid = Some(SAMPLE_UID.to_owned());
    let owner = job::owner_reference(&tr)?;
    Some(job::job(&tr, owner, template))
}

/// Asks the API server, with a dry-run create in `namespace`, whether it accepts the Jobs
/// `template` makes; waits at most `timeout`. An error only when it refuses them as invalid;
/// anything else is logged and start-up goes on.
pub async fn check(
    client: Client,
    namespace: &str,
    template: &JobTemplate,
    timeout: Duration,
) -> Result<(), TemplateRefused> {
    let Some(job) = sample_job(template, namespace) else {
        tracing::warn!("could not build the sample Job: the Job template is not checked");
        return Ok(());
    };
    let name = job.metadata.name.clone().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(client, namespace);
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let verdict = match tokio::time::timeout(timeout, jobs.create(&params, &job)).await {
        Ok(answer) => verdict(answer.as_ref().map(|_| ())),
        Err(_) => Verdict::Unchecked(format!("no answer within {} s", timeout.as_secs())),
    };
    match verdict {
        Verdict::Accepted => {
            tracing::info!(
                namespace,
                job = %name,
                "the API server accepts the Job template (dry-run create)"
            );
            Ok(())
        }
        Verdict::Unchecked(reason) => {
            tracing::warn!(
                namespace,
                job = %name,
                %reason,
                "could not check the Job template with the API server (dry-run create); \
                 starting anyway: a Job it refuses as invalid fails its TaskRun as InvalidTemplate"
            );
            Ok(())
        }
        Verdict::Refused(message) => Err(TemplateRefused {
            namespace: namespace.to_owned(),
            job: name,
            message,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;
    use taskrun::names;

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Status::failure(message, reason).with_code(code).boxed())
    }

    #[test]
    fn only_the_api_servers_own_validation_refuses_the_template() {
        let invalid = "Job.batch \"template-check-1-v1\" is invalid: \
                       spec.template.spec.containers[0].resources.requests: Invalid value: \
                       \"512Mi\": must be less than or equal to memory limit of 256Mi";
        let undecodable = "Job in version \"v1\" cannot be handled as a Job: quantities must \
                           match the regular expression";
        for (code, reason, message) in [(422, "Invalid", invalid), (400, "BadRequest", undecodable)]
        {
            assert_eq!(
                verdict(Err(&api(code, reason, message))),
                Verdict::Refused(message.to_owned()),
                "{code}"
            );
        }
        assert_eq!(verdict(Ok(())), Verdict::Accepted);
        // Validated before the name was found taken.
        let taken = api(
            409,
            "AlreadyExists",
            "jobs.batch \"template-check-1-v1\" already exists",
        );
        assert_eq!(verdict(Err(&taken)), Verdict::Accepted);
        // What may pass, or says nothing of the template: start anyway.
        let may_pass = [
            api(
                403,
                "Forbidden",
                "jobs.batch is forbidden: User cannot create",
            ),
            api(404, "NotFound", "namespaces \"taskrun-system\" not found"),
            api(429, "TooManyRequests", "too many requests"),
            api(500, "InternalError", "etcdserver: request timed out"),
            api(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            api(
                422,
                "Invalid",
                "admission webhook \"validate.kyverno.svc\" denied the request: images must be pinned",
            ),
            api(
                400,
                "BadRequest",
                "jobs.batch \"x\" is forbidden: ValidatingAdmissionPolicy 'freeze' with binding \
                 'freeze' denied request: jobs are frozen",
            ),
            api(
                400,
                "BadRequest",
                "admission webhook \"legacy.example.com\" does not support dry run",
            ),
            api(
                409,
                "Conflict",
                "admission webhook \"x.example.com\" denied the request: frozen",
            ),
            kube::Error::Service(Box::new(std::io::Error::other("connection refused"))),
        ];
        for e in &may_pass {
            assert!(
                matches!(verdict(Err(e)), Verdict::Unchecked(_)),
                "{e}: {:?}",
                verdict(Err(e))
            );
        }
        let Verdict::Unchecked(why) = verdict(Err(&may_pass[1])) else {
            panic!("a 404 is not a refusal");
        };
        assert_eq!(why, "404 NotFound: namespaces \"taskrun-system\" not found");
    }

    /// Start-up is not held up by an API server that takes the request and never answers
    /// (kube's own read timeout is minutes long).
    #[tokio::test]
    async fn no_answer_in_time_leaves_the_template_unchecked() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", silent.local_addr().expect("an address"))
            .parse()
            .expect("a URL");
        let client = Client::try_from(kube::Config::new(url)).expect("a client");
        let template = JobTemplate {
            image: "agent:1".into(),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let checked = check(client, "ns", &template, Duration::from_millis(300)).await;
        assert!(checked.is_ok(), "{checked:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn the_sample_job_is_the_one_a_reconcile_builds() {
        let template = JobTemplate {
            image: "agent:1".into(),
            ..Default::default()
        };
        let job = sample_job(&template, "taskrun-system").expect("a Job");
        assert_eq!(
            job.metadata.name.as_deref(),
            Some(names::job_name(SAMPLE, 1, 1).as_str())
        );
        assert_eq!(job.metadata.namespace.as_deref(), Some("taskrun-system"));
        let owners = job.metadata.owner_references.unwrap_or_default();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, SAMPLE_UID);
        let image = job
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|p| p.containers.into_iter().next())
            .and_then(|c| c.image);
        assert_eq!(image.as_deref(), Some("agent:1"));
    }

    #[test]
    fn the_refusal_names_the_api_servers_message_and_the_way_out() {
        let e = TemplateRefused {
            namespace: "taskrun-system".into(),
            job: "template-check-1-v1".into(),
            message: "spec.template.spec.containers[0].image: Required value".into(),
        }
        .to_string();
        for needle in [
            "containers[0].image: Required value",
            "Fix the template",
            "--job-template",
            "taskrun-system",
        ] {
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}
