//! Reconciles that failed because the API server could not be reached are retried as soon as
//! it answers again, instead of after the backoff the outage grew (doubling per failure, up to
//! `--backoff-max-seconds`).
//!
//! While the last reconcile of any TaskRun failed for want of an answer (connection refused or
//! reset, a timeout), the API server is asked for its version once a second. Once it has not
//! answered and then answers, those TaskRuns are reconciled at once. Waiting to see it down
//! first keeps a partial failure (the probe answered while the reconciles' requests still
//! fail) from turning into a retry every second: those keep their backoff. So does an API
//! server that answers only now and then (a load balancer still sending some connections to
//! a dead one): each retry that leaves reconciles still waiting on it asks it to have answered
//! twice as many probes in a row before the next (1, 2, 4, ... up to 256).

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use kube::Client;
use kube::runtime::reflector::ObjectRef;
use taskrun::TaskRun;

use crate::controller::Ctx;

/// How often the API server is asked whether it answers, while a reconcile waits on it.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The most probes in a row a retry may ask for (`Probes::retries` doublings of 1).
const MOST_IN_A_ROW: u32 = 256;

/// What the probes have seen since reconciles began to wait on the API server (started anew
/// once none does).
#[derive(Debug, Default)]
pub struct Probes {
    saw_down: bool,
    /// Probes answered in a row since the last one that was not.
    in_a_row: u32,
    /// Retries so far.
    retries: u32,
}

impl Probes {
    /// Takes one probe's result; true when the waiting reconciles should be retried now: the
    /// API server answered, after a probe it did not answer, as many probes in a row as this
    /// many retries ask for.
    pub fn answered(&mut self, answered: bool) -> bool {
        if !answered {
            self.saw_down = true;
            self.in_a_row = 0;
            return false;
        }
        if !self.saw_down {
            return false;
        }
        self.in_a_row += 1;
        let asked = 1u32
            .checked_shl(self.retries)
            .unwrap_or(MOST_IN_A_ROW)
            .min(MOST_IN_A_ROW);
        if self.in_a_row < asked {
            return false;
        }
        self.saw_down = false;
        self.in_a_row = 0;
        self.retries = self.retries.saturating_add(1);
        true
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

    #[test]
    fn an_api_server_answering_now_and_then_gets_fewer_and_fewer_retries() {
        let mut probes = Probes::default();
        // Flapping every second: one retry, then none while it flaps.
        let retries = (0..10)
            .filter(|_| {
                let down = probes.answered(false);
                down | probes.answered(true)
            })
            .count();
        assert_eq!(retries, 1);
        // Then answering two probes in a row: the second retry; the third asks for four.
        assert!(!probes.answered(false));
        assert!(!probes.answered(true));
        assert!(probes.answered(true));
        assert!(!probes.answered(false));
        let answers: Vec<bool> = (0..4).map(|_| probes.answered(true)).collect();
        assert_eq!(answers, [false, false, false, true]);
        // However many retries, never more than 256 probes in a row.
        probes.retries = 40;
        assert!(!probes.answered(false));
        let in_a_row = (1..=300).find(|_| probes.answered(true));
        assert_eq!(in_a_row, Some(MOST_IN_A_ROW));
    }
}
