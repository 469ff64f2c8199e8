//! Leader election on a `coordination.k8s.io` Lease, the way client-go's leaderelection does
//! it: of several replicas only the holder of the Lease acts.
//!
//! A replica takes the Lease over only once it has seen the Lease unchanged for the holder's
//! whole `leaseDurationSeconds`, timed by its own clock from when it first saw it so (clocks of
//! different nodes are never compared). The holder renews every [`Timing::retry`] and acts
//! only for [`Timing::term`] after sending a renewal that succeeded: a holder cut off from the
//! API server stops acting `grace` seconds before any other replica may take over. Every
//! write carries the resourceVersion it was decided on, so of two replicas taking a Lease at
//! once one gets a conflict.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::reconcile::FIELD_MANAGER;

pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration_seconds: u64,
    pub grace_seconds: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "lease duration ({duration}s) must be greater than its grace ({grace}s), both > 0, \
         and at most 2147483647s"
    )]
    BadTiming { duration: u64, grace: u64 },
    #[error("cannot read the Lease {namespace}/{name}: {source}")]
    Lease {
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

/// How long a Lease lasts, and what the holder makes of that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Timing {
    duration: Duration,
    grace: Duration,
}

impl Timing {
    pub(crate) fn new(duration_seconds: u64, grace_seconds: u64) -> Result<Self, LeaderError> {
        if duration_seconds == 0
            || grace_seconds == 0
            || grace_seconds >= duration_seconds
            || i32::try_from(duration_seconds).is_err()
        {
            return Err(LeaderError::BadTiming {
                duration: duration_seconds,
                grace: grace_seconds,
            });
        }
        Ok(Self {
            duration: Duration::from_secs(duration_seconds),
            grace: Duration::from_secs(grace_seconds),
        })
    }

    /// How long the holder acts after sending a renewal that succeeded: `grace` short of
    /// the soonest another replica may take over.
    pub(crate) fn term(self) -> Duration {
        self.duration - self.grace
    }

    /// How often the holder renews (four tries in a term) and a standby looks at the Lease.
    pub(crate) fn retry(self) -> Duration {
        self.term() / 4
    }

    fn duration_seconds(self) -> i32 {
        // `new` checked that it fits.
        i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX)
    }
}

/// What a replica does about the Lease as it just read it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// There is no Lease: create it, holding it.
    Create,
    /// Free, ours, or not renewed for its whole duration: write ourselves in as the holder
    /// (for the holder, a renewal).
    Take,
    /// Another replica holds it: it is theirs until `until` unless they renew.
    Wait { holder: String, until: Instant },
}

/// Decides on the Lease as read at `now`, unchanged since `seen_since` (by this replica's clock).
pub(crate) fn decide(lease: Option<&Lease>, me: &str, seen_since: Instant, now: Instant) -> Step {
    let Some(lease) = lease else {
        return Step::Create;
    };
    let spec = lease.spec.as_ref();
    match spec
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
    {
        None => Step::Take,
        Some(holder) if holder == me => Step::Take,
        Some(holder) => {
            let seconds = spec
                .and_then(|s| s.lease_duration_seconds)
                .map_or(0, |s| u64::try_from(s).unwrap_or(0));
            let until = seen_since + Duration::from_secs(seconds);
            if until > now {
                Step::Wait {
                    holder: holder.to_owned(),
                    until,
                }
            } else {
                Step::Take
            }
        }
    }
}

/// The Lease's election record (its spec) as last read, and since when this replica has seen
/// it so. Only the record counts, as in client-go: a label or annotation some tool writes on
/// the Lease is no renewal, and must not keep a standby from taking over from a dead holder.
#[derive(Debug)]
pub(crate) struct Seen {
    record: Option<Option<LeaseSpec>>,
    since: Instant,
}

impl Seen {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            record: None,
            since: now,
        }
    }

    /// Notes the Lease read at `now`; returns since when its record has been as it is.
    pub(crate) fn note(&mut self, lease: Option<&Lease>, now: Instant) -> Instant {
        let record = lease.map(|l| l.spec.as_ref());
        if self.record.as_ref().map(Option::as_ref) != record {
            self.record = record.map(Option::<&LeaseSpec>::cloned);
            self.since = now;
        }
        self.since
    }
}

/// The merge patch that makes `me` the holder of `lease` (renewing when it already is),
/// conditional on the resourceVersion it was read at. `None` when the Lease has none.
pub(crate) fn taking(lease: &Lease, me: &str, timing: Timing, now: Timestamp) -> Option<Value> {
    let version = lease.metadata.resource_version.as_deref()?;
    let spec = lease.spec.clone().unwrap_or_default();
    let renewing = spec.holder_identity.as_deref() == Some(me);
    let (acquired, transitions) = if renewing {
        (spec.acquire_time, spec.lease_transitions.unwrap_or(0))
    } else {
        (
            Some(MicroTime(now)),
            spec.lease_transitions.unwrap_or(0).saturating_add(1),
        )
    };
    Some(json!({
        "metadata": {"resourceVersion": version},
        "spec": {
            "holderIdentity": me,
            "leaseDurationSeconds": timing.duration_seconds(),
            "acquireTime": acquired,
            "renewTime": MicroTime(now),
            "leaseTransitions": transitions,
        },
    }))
}

/// The merge patch that gives `lease` up, if `me` holds it.
pub(crate) fn letting_go(lease: &Lease, me: &str) -> Option<Value> {
    let version = lease.metadata.resource_version.as_deref()?;
    let holder = lease.spec.as_ref()?.holder_identity.as_deref();
    (holder == Some(me)).then(|| {
        json!({
            "metadata": {"resourceVersion": version},
            "spec": {
                "holderIdentity": null,
                "acquireTime": null,
                "renewTime": null,
                "leaseDurationSeconds": null,
            },
        })
    })
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

fn new_lease(name: &str, me: &str, timing: Timing, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(me.to_owned()),
            lease_duration_seconds: Some(timing.duration_seconds()),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

/// Whether this replica leads, as it changes.
pub struct Leadership {
    rx: watch::Receiver<bool>,
    // Without election: keeps the channel open (always leader).
    _always: Option<watch::Sender<bool>>,
    task: Option<JoinHandle<()>>,
}

impl Leadership {
    /// Always the leader (a single replica, `--leader-elect=false`).
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        Self {
            rx,
            _always: Some(tx),
            task: None,
        }
    }

    /// Reads the Lease first (so that missing RBAC fails the start), then competes for it in
    /// the background. The first read is retried: a controller started while the API server
    /// restarts or is upgraded would otherwise exit, and wait out the kubelet's growing
    /// restart delay after the API server is back ([`patience`]).
    pub async fn elect(client: Client, c: LeaseConfig) -> Result<Self, LeaderError> {
        let timing = Timing::new(c.duration_seconds, c.grace_seconds)?;
        let api: Api<Lease> = Api::namespaced(client, &c.namespace);
        patiently(patience, || api.get_opt(&c.name))
            .await
            .map_err(|source| LeaderError::Lease {
                namespace: c.namespace.clone(),
                name: c.name.clone(),
                source,
            })?;
        let (tx, rx) = watch::channel(false);
        let campaign = Campaign {
            term: Term { tx, ends: None },
            api,
            name: c.name,
            me: c.identity,
            timing,
        };
        Ok(Self {
            rx,
            _always: None,
            task: Some(tokio::spawn(campaign.run())),
        })
    }

    /// A receiver that tells whether this replica leads now.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }

    /// Gives the Lease up (so a successor need not wait for it to expire). Every other
    /// receiver must be gone first.
    pub async fn release(self) {
        let Self { rx, task, .. } = self;
        drop(rx);
        if let Some(task) = task
            && let Err(error) = task.await
        {
            tracing::warn!(%error, "the Lease task ended abnormally");
        }
    }
}

/// How long the first read of the Lease is retried after `error`. A refusal (a 4xx such as
/// missing RBAC) for a minute, in case it comes from an API server still starting (its
/// authorizer not yet synced); no answer, an overloaded server (408, 429) or a server error for
/// ten minutes, to ride out an upgrade of the control plane, after which the start fails and
/// the kubelet's restarts take over.
fn patience(error: &kube::Error) -> Duration {
    match error {
        kube::Error::Api(status)
            if (400..500).contains(&status.code) && !matches!(status.code, 408 | 429) =>
        {
            REFUSED_PATIENCE
        }
        _ => ABSENT_PATIENCE,
    }
}

/// How long a refused first read of the Lease is retried (see [`patience`]).
pub const REFUSED_PATIENCE: Duration = Duration::from_secs(60);

/// How long a first read of the Lease that got no answer is retried (see [`patience`]).
pub const ABSENT_PATIENCE: Duration = Duration::from_secs(600);

/// Calls `read` until it succeeds, waiting 200 ms after a failure and twice as long after each
/// next one, at most 5 s; the last error once the next wait would pass the patience that
/// `patience_for` gives that error, counted from the first error in a row given the same
/// patience: a refusal that follows a long absence (an API server back from an upgrade, its
/// authorizer still syncing) still gets its own minute.
async fn patiently<T, E, F>(
    patience_for: impl Fn(&E) -> Duration,
    mut read: impl FnMut() -> F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: Future<Output = Result<T, E>>,
{
    let mut since: Option<(Duration, Instant)> = None;
    let mut wait = Duration::from_millis(200);
    loop {
        match read().await {
            Ok(value) => return Ok(value),
            Err(error) => {
                let patience = patience_for(&error);
                let started = match since {
                    Some((p, started)) if p == patience => started,
                    _ => {
                        let now = Instant::now();
                        since = Some((patience, now));
                        now
                    }
                };
                if started.elapsed() + wait > patience {
                    return Err(error);
                }
                tracing::warn!(%error, retry_in = ?wait, "cannot read the Lease yet; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The background loop of one replica competing for the Lease.
struct Campaign {
    api: Api<Lease>,
    name: String,
    me: String,
    timing: Timing,
    term: Term,
}

/// This replica's term of leadership, told to the receivers.
struct Term {
    tx: watch::Sender<bool>,
    /// While leading: when this term ends unless a renewal succeeds first.
    ends: Option<Instant>,
}

impl Campaign {
    async fn run(mut self) {
        let mut seen = Seen::new(Instant::now());
        loop {
            let read = bounded(self.timing, self.api.get_opt(&self.name));
            let Some(read) = self.term.guarded(read).await else {
                break;
            };
            let now = Instant::now();
            let wait = match read {
                Err(error) => {
                    tracing::warn!(%error, lease = %self.name, "cannot read the Lease");
                    self.timing.retry()
                }
                Ok(lease) => {
                    let since = seen.note(lease.as_ref(), now);
                    match decide(lease.as_ref(), &self.me, since, now) {
                        Step::Wait { holder, until } => {
                            if self.term.ends.take().is_some() {
                                tracing::warn!(%holder, "another replica holds the Lease: stopped acting");
                                self.term.lead(false);
                            }
                            self.timing
                                .retry()
                                .min(until.saturating_duration_since(now))
                        }
                        step => {
                            let Some(()) = self.take(step, lease.as_ref()).await else {
                                break;
                            };
                            self.timing.retry()
                        }
                    }
                }
            };
            if self.term.guarded(tokio::time::sleep(wait)).await.is_none() {
                break;
            }
        }
        self.let_go().await;
    }

    /// Creates or takes the Lease (renews it when ours). `None` once every receiver is gone.
    async fn take(&mut self, step: Step, lease: Option<&Lease>) -> Option<()> {
        let now = Timestamp::now();
        let sent = Instant::now();
        let written = match (step, lease) {
            (Step::Create, _) => {
                let lease = new_lease(&self.name, &self.me, self.timing, now);
                let params = PostParams::default();
                let create = self.api.create(&params, &lease);
                self.term.guarded(bounded(self.timing, create)).await?
            }
            (_, Some(lease)) => {
                let Some(patch) = taking(lease, &self.me, self.timing, now) else {
                    tracing::warn!(lease = %self.name, "the Lease has no resourceVersion");
                    return Some(());
                };
                let (params, patch) = (patch_params(), Patch::Merge(patch));
                let patch = self.api.patch(&self.name, &params, &patch);
                self.term.guarded(bounded(self.timing, patch)).await?
            }
            (_, None) => return Some(()),
        };
        match written {
            Ok(_) => {
                let ends = sent + self.timing.term();
                if ends > Instant::now() {
                    if self.term.ends.replace(ends).is_none() {
                        tracing::info!(identity = %self.me, lease = %self.name, "holding the Lease");
                        self.term.lead(true);
                    }
                } else {
                    tracing::warn!(lease = %self.name, "the Lease was written too late to act on");
                }
            }
            // Another replica wrote the Lease first; the next read says who holds it.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::debug!(lease = %self.name, "another replica wrote the Lease first");
            }
            Err(error) => tracing::warn!(%error, lease = %self.name, "cannot write the Lease"),
        }
        Some(())
    }

    /// On shutdown: gives the Lease up if this replica holds it.
    async fn let_go(&self) {
        if self.term.ends.is_none() {
            return;
        }
        let released = async {
            let read = bounded(self.timing, self.api.get_opt(&self.name));
            let Some(lease) = read.await? else {
                return Ok(false);
            };
            let Some(patch) = letting_go(&lease, &self.me) else {
                return Ok(false);
            };
            let (params, patch) = (patch_params(), Patch::Merge(patch));
            let patch = self.api.patch(&self.name, &params, &patch);
            bounded(self.timing, patch).await.map(|_| true)
        };
        match released.await {
            Ok(true) => tracing::info!(lease = %self.name, "released the leader Lease"),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "could not release the leader Lease"),
        }
    }
}

/// A Lease request, given up once a term has passed without an answer, as a failure like any
/// other. The holder could not act on a later answer, and a connection gone silently dead must
/// not keep the loop from trying again for the client's whole read timeout (client-go bounds
/// each try by its renew deadline the same way).
async fn bounded<T>(
    timing: Timing,
    request: impl Future<Output = kube::Result<T>>,
) -> kube::Result<T> {
    tokio::time::timeout(timing.term(), request)
        .await
        .unwrap_or_else(|elapsed| Err(kube::Error::Service(Box::new(elapsed))))
}

impl Term {
    /// Awaits `work`, meanwhile stopping acting when the term ends. `None` once every
    /// receiver is gone (shutting down).
    async fn guarded<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        let mut work = std::pin::pin!(work);
        loop {
            let ends = self.ends;
            tokio::select! {
                biased;
                () = self.tx.closed() => return None,
                () = tokio::time::sleep_until(ends.unwrap_or_else(Instant::now)), if ends.is_some() => {
                    self.ends = None;
                    tracing::warn!("could not renew the Lease in time: stopped acting");
                    self.lead(false);
                }
                out = &mut work => return Some(out),
            }
        }
    }

    fn lead(&self, leading: bool) {
        self.tx
            .send_if_modified(|now| std::mem::replace(now, leading) != leading);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, duration: Option<i32>, version: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("l".into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: duration,
                acquire_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
                lease_transitions: Some(3),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn timing_must_leave_a_term_and_fit_the_lease() {
        assert!(Timing::new(15, 5).is_ok());
        for (d, g) in [(0, 0), (15, 0), (5, 5), (5, 6), (u64::MAX, 1)] {
            assert!(
                matches!(Timing::new(d, g), Err(LeaderError::BadTiming { .. })),
                "{d}/{g}"
            );
        }
        let t = Timing::new(15, 5).expect("timing");
        assert_eq!(t.term(), Duration::from_secs(10));
        assert_eq!(t.retry(), Duration::from_millis(2500));
    }

    #[test]
    fn a_missing_free_or_own_lease_is_taken() {
        let now = Instant::now();
        assert_eq!(decide(None, "me", now, now), Step::Create);
        for holder in [None, Some(""), Some("me")] {
            let l = lease(holder, Some(15), "1");
            assert_eq!(decide(Some(&l), "me", now, now), Step::Take, "{holder:?}");
        }
    }

    #[test]
    fn anothers_lease_is_waited_out_for_its_duration_from_when_it_was_seen() {
        let seen = Instant::now();
        let l = lease(Some("other"), Some(15), "1");
        let until = seen + Duration::from_secs(15);
        for now in [seen, seen + Duration::from_secs(14)] {
            assert_eq!(
                decide(Some(&l), "me", seen, now),
                Step::Wait {
                    holder: "other".into(),
                    until
                }
            );
        }
        assert_eq!(decide(Some(&l), "me", seen, until), Step::Take);
        // No duration: nothing to wait out.
        let l = lease(Some("other"), None, "1");
        assert_eq!(decide(Some(&l), "me", seen, seen), Step::Take);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_read_waits_out_an_absent_api_server_longer_than_a_refusal() {
        let patience_for = |e: &&str| {
            if *e == "forbidden" {
                REFUSED_PATIENCE
            } else {
                ABSENT_PATIENCE
            }
        };
        let calls = std::cell::Cell::new(0);
        let flaky = || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n < 4 { Err("no answer") } else { Ok(n) } }
        };
        let started = Instant::now();
        assert_eq!(patiently(patience_for, flaky).await, Ok(4));
        // 200 + 400 + 800 ms of waiting.
        assert_eq!(started.elapsed(), Duration::from_millis(1400));

        // An API server away for five minutes is waited for; one away for good, not forever.
        calls.set(0);
        let five_minutes = || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n <= 64 { Err("no answer") } else { Ok(n) } }
        };
        let started = Instant::now();
        assert_eq!(patiently(patience_for, five_minutes).await, Ok(65));
        assert!(
            started.elapsed() > Duration::from_secs(300),
            "{:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let away = || async { Err::<(), _>("no answer") };
        assert_eq!(patiently(patience_for, away).await, Err("no answer"));
        let waited = started.elapsed();
        assert!(
            waited <= ABSENT_PATIENCE && waited > ABSENT_PATIENCE - Duration::from_secs(5),
            "{waited:?}"
        );

        // A refusal, for a minute.
        let started = Instant::now();
        let never = || async { Err::<(), _>("forbidden") };
        assert_eq!(patiently(patience_for, never).await, Err("forbidden"));
        let waited = started.elapsed();
        assert!(
            waited <= REFUSED_PATIENCE && waited > REFUSED_PATIENCE - Duration::from_secs(5),
            "{waited:?}"
        );

        // Refusals after five minutes of no answer (an API server back, its authorizer still
        // syncing) still get their own minute, counted from the first of them.
        calls.set(0);
        let back_refusing = || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                match n {
                    ..=64 => Err("no answer"),
                    65..=70 => Err("forbidden"),
                    _ => Ok(n),
                }
            }
        };
        assert_eq!(patiently(patience_for, back_refusing).await, Ok(71));
    }

    #[test]
    fn a_refusal_of_the_lease_read_is_given_less_patience() {
        let api = |code: u16| {
            kube::Error::Api(Box::new(
                kube::core::Status::failure("x", "X").with_code(code),
            ))
        };
        for code in [401, 403, 422] {
            assert_eq!(patience(&api(code)), REFUSED_PATIENCE, "{code}");
        }
        for code in [408, 429, 500, 503] {
            assert_eq!(patience(&api(code)), ABSENT_PATIENCE, "{code}");
        }
        let no_answer = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            patience(&kube::Error::Service(Box::new(no_answer))),
            ABSENT_PATIENCE
        );
    }

    /// An API server that takes connections and never answers (a connection gone silently
    /// dead looks the same to the client): the Lease is asked for again within a term and a
    /// retry, not after the client's read timeout.
    #[tokio::test]
    async fn a_lease_request_left_unanswered_is_tried_again() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (accepted, mut connections) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                // Held open, never answered.
                let _ = accepted.send(socket);
            }
        });
        let mut config = kube::Config::new(url.parse().expect("url"));
        config.read_timeout = Some(Duration::from_secs(60));
        let client = Client::try_from(config).expect("client");
        let timing = Timing::new(2, 1).expect("timing");
        let (tx, _rx) = watch::channel(false);
        let campaign = Campaign {
            api: Api::namespaced(client, "default"),
            name: "lease".into(),
            me: "me".into(),
            timing,
            term: Term { tx, ends: None },
        };
        let task = tokio::spawn(campaign.run());
        let started = Instant::now();
        let _first = connections.recv().await.expect("a first request");
        let second = tokio::time::timeout(Duration::from_secs(20), connections.recv()).await;
        task.abort();
        assert!(
            matches!(second, Ok(Some(_))),
            "no second request after {:?}",
            started.elapsed()
        );
        // A term (1 s) for the first, a retry (250 ms) before the second.
        assert!(
            started.elapsed() >= timing.term(),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_holders_term_ends_before_a_standby_may_take_over() {
        let timing = Timing::new(6, 2).expect("timing");
        // The holder sent its last renewal at `sent`; a standby can only have seen it later.
        let sent = Instant::now();
        let l = lease(Some("holder"), Some(timing.duration_seconds()), "7");
        let holder_stops = sent + timing.term();
        assert!(matches!(
            decide(Some(&l), "standby", sent, holder_stops),
            Step::Wait { .. }
        ));
        // The standby takes over only once the whole duration has passed since it saw the
        // renewal, which is `grace` after the holder stopped acting.
        let takes = sent + timing.duration;
        assert!(matches!(
            decide(Some(&l), "standby", sent, takes - Duration::from_millis(1)),
            Step::Wait { .. }
        ));
        assert_eq!(decide(Some(&l), "standby", sent, takes), Step::Take);
        assert_eq!(takes - holder_stops, timing.grace);
    }

    #[test]
    fn seen_since_moves_only_when_the_lease_changes() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let t2 = t0 + Duration::from_secs(2);
        let mut seen = Seen::new(t0);
        let a = lease(Some("other"), Some(15), "1");
        assert_eq!(seen.note(Some(&a), t1), t1);
        assert_eq!(seen.note(Some(&a), t2), t1);
        // Another tool's label: a new resourceVersion, the same record.
        let mut labelled = lease(Some("other"), Some(15), "2");
        labelled.metadata.labels = Some([("team".to_owned(), "a".to_owned())].into());
        assert_eq!(seen.note(Some(&labelled), t2), t1);
        // A renewal.
        let mut renewed = lease(Some("other"), Some(15), "3");
        if let Some(spec) = renewed.spec.as_mut() {
            spec.renew_time = Some(MicroTime(Timestamp::from_second(5).expect("time")));
        }
        assert_eq!(seen.note(Some(&renewed), t2), t2);
        // Gone.
        let t3 = t2 + Duration::from_secs(1);
        assert_eq!(seen.note(None, t3), t3);
    }

    #[test]
    fn taking_renews_our_own_and_counts_a_transition_for_anothers() {
        let timing = Timing::new(15, 5).expect("timing");
        let now = Timestamp::from_second(1_000).expect("time");
        let renewal = taking(&lease(Some("me"), Some(15), "9"), "me", timing, now).expect("patch");
        assert_eq!(renewal["metadata"]["resourceVersion"], "9");
        assert_eq!(renewal["spec"]["holderIdentity"], "me");
        assert_eq!(renewal["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(renewal["spec"]["leaseTransitions"], 3);
        assert_eq!(
            renewal["spec"]["acquireTime"],
            json!(MicroTime(Timestamp::UNIX_EPOCH))
        );
        assert_eq!(renewal["spec"]["renewTime"], json!(MicroTime(now)));

        let takeover =
            taking(&lease(Some("other"), Some(15), "9"), "me", timing, now).expect("patch");
        assert_eq!(takeover["spec"]["leaseTransitions"], 4);
        assert_eq!(takeover["spec"]["acquireTime"], json!(MicroTime(now)));

        let mut unversioned = lease(None, None, "9");
        unversioned.metadata.resource_version = None;
        assert_eq!(taking(&unversioned, "me", timing, now), None);
    }

    #[test]
    fn only_the_holder_lets_go() {
        let ours = letting_go(&lease(Some("me"), Some(15), "4"), "me").expect("patch");
        assert_eq!(ours["metadata"]["resourceVersion"], "4");
        assert_eq!(ours["spec"]["holderIdentity"], Value::Null);
        assert_eq!(letting_go(&lease(Some("other"), Some(15), "4"), "me"), None);
        assert_eq!(letting_go(&lease(None, Some(15), "4"), "me"), None);
    }
}
