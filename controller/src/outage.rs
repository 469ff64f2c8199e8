//! Reconciles that failed because the API server could not be reached are retried as soon as
//! it answers again, instead of after the backoff the outage grew (doubling per failure, up to
//! `--backoff-max-seconds`).
//!
//! While the last reconcile of any TaskRun failed for want of an answer (connection refused or
//! reset, a timeout), the API server is asked for its version once a second. Once it has not
//! answered and then answers, those TaskRuns are reconciled at once. Waiting to see it down
//! first keeps a partial failure (the probe answered while the reconciles' requests still
//! fail) from turning into a retry every second: those keep their backoff.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use kube::Client;
use kube::runtime::reflector::ObjectRef;
use taskrun::TaskRun;

use crate::controller::Ctx;

/// How often the API server is asked whether it answers, while a reconcile waits on it.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// What the probes have seen since the last retry.
#[derive(Debug, Default)]
pub struct Probes {
    saw_down: bool,
}

impl Probes {
    /// Takes one probe's result; true when the waiting reconciles should be retried now: the
    /// API server answered, after a probe it did not answer.
    pub fn answered(&mut self, answered: bool) -> bool {
        if answered {
            std::mem::take(&mut self.saw_down)
        } else {
            self.saw_down = true;
            false
        }
    }
}

/// The TaskRuns to reconcile now because the API server answers again (for
/// `Controller::reconcile_on`). Probes only while some reconcile waits on it.
pub fn retries(client: Client, ctx: Arc<Ctx>) -> impl Stream<Item = ObjectRef<TaskRun>> {
    stream::unfold(Probes::default(), move |mut probes| {
        let (client, ctx) = (client.clone(), ctx.clone());
        async move {
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                if ctx.waiting_for_api_server().is_empty() {
                    probes = Probes::default();
                    continue;
                }
                if probes.answered(client.apiserver_version().await.is_ok()) {
                    let waiting = ctx.waiting_for_api_server();
                    tracing::info!(
                        taskruns = waiting.len(),
                        "the API server answers again: retrying the reconciles that could not reach it"
                    );
                    return Some((stream::iter(waiting), probes));
                }
            }
        }
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_comes_once_the_api_server_answers_after_not_answering() {
        let mut probes = Probes::default();
        // Answering all along (the reconciles' own requests fail otherwise): no retry loop.
        assert!(!probes.answered(true));
        assert!(!probes.answered(true));
        // Down, down, back: one retry.
        assert!(!probes.answered(false));
        assert!(!probes.answered(false));
        assert!(probes.answered(true));
        assert!(!probes.answered(true));
    }
}
