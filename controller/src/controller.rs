//! Wiring: the kube-runtime Controller over TaskRuns (owning Jobs and ConfigMaps), run only
//! while this replica leads, stopped gracefully on SIGTERM or when leadership is lost.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::{Config, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use taskrun::{FINALIZER, TaskRun, labels};
use tokio::sync::watch;

use crate::backoff::{self, NoPause};
use crate::cache::{self, CachedJob, Children, Departed, Superseded, WrittenStatus};
use crate::config::Args;
use crate::leader::{LeaderError, Leadership, LeaseConfig};
use crate::metrics::{Metrics, watched};
use crate::reconcile::{self, FIELD_MANAGER};
use crate::starting::Starting;
use crate::template::JobTemplate;
use crate::template_check::{self, TemplateRefused};
use crate::{outage, relist};

/// How long queued reconciles may still run after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long the release of the Lease may take at the end.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a controller runs on after SIGTERM with `args`: its reconciles' grace, the
/// Lease grace when it dropped some, and the Lease's release. The pod's
/// `terminationGracePeriodSeconds` must cover it, or the kubelet kills the leader before it
/// lets the Lease go, and a successor waits the Lease out.
pub fn longest_shutdown(args: &Args) -> Duration {
    SHUTDOWN_GRACE + Duration::from_secs(args.lease_grace_seconds) + RELEASE_TIMEOUT
}

/// How long the last state of a finished Job deleted by the API server is kept for its
/// TaskRun's reconcile (`cache::Departed`): far longer than a reconcile waits in the queue.
const DEPARTED_TTL: Duration = Duration::from_secs(300);

/// State the HTTP server reads.
#[derive(Default)]
pub struct Shared {
    pub ready: AtomicBool,
    pub metrics: Metrics,
    /// The leader's TaskRun cache (for the per-phase gauge).
    pub store: RwLock<Option<Store<TaskRun>>>,
}

/// What every reconcile gets: what lives across terms of leadership, and this term's caches
/// and failure counts (made anew for each term).
pub struct Ctx {
    pub base: Arc<Base>,
    pub failures: Mutex<HashMap<ObjectRef<TaskRun>, Failures>>,
    pub children: Children,
    pub written: Arc<WrittenStatus>,
    /// TaskRuns creating their children whose cached status does not show it yet.
    pub starting: Arc<Starting>,
    /// The TaskRun cache the Controller reconciles from.
    pub taskruns: Store<TaskRun>,
}

/// A TaskRun's reconciles that failed in a row.
#[derive(Debug, Default, Clone, Copy)]
pub struct Failures {
    pub count: u32,
    /// The last one failed for want of an answer from the API server (outage.rs).
    pub unreachable: bool,
    /// A refused delete was told in an Event during these failures: not again until a
    /// reconcile succeeds, however often it is retried.
    pub told_delete_refused: bool,
}

impl Ctx {
    /// The TaskRuns whose last reconcile failed for want of an answer from the API server.
    pub fn waiting_for_api_server(&self) -> Vec<ObjectRef<TaskRun>> {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        waiting(&mut failures, |r| self.taskruns.get(r).is_some())
    }
}

/// The failures whose last reconcile could not reach the API server. Entries of TaskRuns gone
/// from the cache (`cached` false) are dropped: only a successful reconcile clears an entry,
/// and a TaskRun deleted after a failed one (its finalizer removed by hand, say) has none left.
/// Kept, its entry would have the API server probed every second for the rest of the term.
fn waiting(
    failures: &mut HashMap<ObjectRef<TaskRun>, Failures>,
    cached: impl Fn(&ObjectRef<TaskRun>) -> bool,
) -> Vec<ObjectRef<TaskRun>> {
    failures.retain(|r, _| cached(r));
    failures
        .iter()
        .filter(|(_, f)| f.unreachable)
        .map(|(r, _)| r.clone())
        .collect()
}

/// What lives across terms of leadership.
pub struct Base {
    pub client: Client,
    pub template: JobTemplate,
    /// Who records Events. A Recorder is made per Event: its dedup cache would otherwise
    /// keep every Event of every TaskRun for minutes (we record only phase changes anyway).
    pub reporter: Reporter,
    pub shared: Arc<Shared>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Leader(#[from] LeaderError),
    #[error("cannot serve HTTP on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen for signals: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Template(#[from] TemplateRefused),
}

/// Runs until SIGTERM/SIGINT: serves probes, competes for the Lease and, while leading,
/// reconciles TaskRuns.
pub async fn run(args: Args, template: JobTemplate, client: Client) -> Result<(), Error> {
    let shared = Arc::new(Shared::default());
    let listener = crate::http::bind(args.http_addr)
        .await
        .map_err(|source| Error::Http {
            addr: args.http_addr,
            source,
        })?;
    tracing::info!(addr = %args.http_addr, "serving /healthz, /readyz and /metrics");
    let http = tokio::spawn(crate::http::serve(listener, shared.clone()));

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::Signal)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });

    // Once per start, standby or not, before competing for the Lease: a template the API
    // server refuses stops the controller here (a rolling update with it stalls, the old
    // replicas acting on), where it would fail every new TaskRun once leading. Bounded: no
    // answer in time leaves the template unchecked. A signal meanwhile ends the start.
    let mut stop = stop_rx.clone();
    tokio::select! {
        checked = template_check::check(
            client.clone(),
            &args.lease_namespace,
            &template,
            template_check::CHECK_TIMEOUT,
        ) => checked?,
        _ = stop.wait_for(|stopped| *stopped) => {
            http.abort();
            return Ok(());
        }
    }

    let identity = args.identity();
    let leadership = if args.leader_elect {
        let elect = Leadership::elect(
            client.clone(),
            LeaseConfig {
                name: args.lease_name.clone(),
                namespace: args.lease_namespace.clone(),
                identity: identity.clone(),
                duration_seconds: args.lease_duration_seconds,
                grace_seconds: args.lease_grace_seconds,
            },
        );
        // The first read of the Lease may be retried for a while: a signal meanwhile ends it.
        let mut stop = stop_rx.clone();
        tokio::select! {
            elected = elect => elected?,
            _ = stop.wait_for(|stopped| *stopped) => {
                http.abort();
                return Ok(());
            }
        }
    } else {
        Leadership::always()
    };
    shared.ready.store(true, Ordering::Relaxed);
    let (backoff_base, backoff_max) = args.backoff();
    let base = Arc::new(Base {
        client: client.clone(),
        template,
        reporter: Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(identity.clone()),
        },
        shared: shared.clone(),
        backoff_base,
        backoff_max,
    });

    let mut leading = leadership.subscribe();
    let mut stop = stop_rx.clone();
    let mut dropped_reconciles = false;
    loop {
        if *stop.borrow() {
            break;
        }
        if !*leading.borrow_and_update() {
            tracing::info!(%identity, "standing by until this replica holds the Lease");
            tokio::select! {
                changed = leading.changed() => if changed.is_err() { break },
                _ = stop.changed() => break,
            }
            continue;
        }
        tracing::info!(%identity, "leading: starting the controller");
        shared.metrics.set_leading(true);
        let dropped = run_controller(&args, &base, leading.clone(), stop_rx.clone()).await;
        shared.metrics.set_leading(false);
        *shared.store.write().unwrap_or_else(|e| e.into_inner()) = None;
        if *stop.borrow() {
            dropped_reconciles = dropped;
            break;
        }
        tracing::warn!(%identity, "lost the Lease: stopped acting");
    }
    // A write of a reconcile dropped at the end of the shutdown grace may still land: while
    // this replica still holds the Lease, it lets go only after the grace a lost Lease gives,
    // so that such a write has that long to land before a successor writes.
    if dropped_reconciles && args.leader_elect && *leading.borrow() {
        let grace = Duration::from_secs(args.lease_grace_seconds);
        tracing::info!(
            grace_seconds = grace.as_secs(),
            "reconciles were dropped: waiting before releasing the Lease"
        );
        tokio::time::sleep(grace).await;
    }
    // The Lease task lets go once every receiver is gone.
    drop(leading);
    if tokio::time::timeout(RELEASE_TIMEOUT, leadership.release())
        .await
        .is_err()
    {
        tracing::warn!("timed out releasing the Lease; it will expire");
    }
    http.abort();
    Ok(())
}

/// One term of leadership: the Controller runs until the Lease is lost or a signal comes,
/// then finishes the reconciles in flight and returns; true when some were still running at
/// the end of the grace and were dropped.
async fn run_controller(
    args: &Args,
    base: &Arc<Base>,
    leading: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
) -> bool {
    let shared = &base.shared;
    let client = base.client.clone();
    let (taskruns, jobs, config_maps): (
        Api<TaskRun>,
        Api<CachedJob>,
        Api<PartialObjectMeta<ConfigMap>>,
    ) = match &args.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client),
        ),
    };
    let (reader, writer) = reflector::store();
    *shared.store.write().unwrap_or_else(|e| e.into_inner()) = Some(reader.clone());
    let written = Arc::new(WrittenStatus::default());
    let starting = Arc::new(Starting::default());
    let superseded = Arc::new(Superseded::default());
    // TaskRuns are listed in small pages, and at the latest resourceVersion: an API server
    // without pagination from its cache (KEP-4988, recent releases) answers a list at any
    // resourceVersion whole from the cache, ignoring the page size, and all the TaskRuns at
    // once may not fit in memory. The children are small: any resourceVersion, from cache.
    let taskrun_watch = watcher::Config::default()
        .page_size(taskrun::client::LIST_PAGE_SIZE)
        .timeout(taskrun::client::WATCH_TIMEOUT_SECS);
    // A list's TaskRuns trigger their reconciles once the whole list is in the cache
    // (relist.rs).
    let taskrun_events = watcher(taskruns, taskrun_watch)
        .backoff(backoff::watch())
        .inspect_err(watch_failed(base, watched::TASKRUNS))
        .modify(cache::trim_taskrun)
        .reflect(writer)
        // Once the cache holds what the event brought.
        .inspect_ok({
            let (written, starting) = (written.clone(), starting.clone());
            let superseded = superseded.clone();
            move |event| {
                written.seen(event);
                starting.seen(event);
                if let watcher::Event::Delete(tr) = event {
                    superseded.forget(tr.metadata.uid.as_deref().unwrap_or_default(), None);
                }
            }
        });
    let stream = relist::when_listed(taskrun_events, reader.clone())
        .applied_objects()
        .predicate_filter(reconcile_trigger, PredicateConfig::default());
    // Children are watched narrowed by the project's label and cached trimmed (ConfigMaps as
    // metadata only); the owner reference (not the label) maps each back to its TaskRun.
    let children = watcher::Config::default()
        .labels(&format!(
            "{}={}",
            labels::MANAGED_BY,
            labels::MANAGED_BY_VALUE
        ))
        .any_semantic()
        .timeout(taskrun::client::WATCH_TIMEOUT_SECS);
    // A child deleted while its watch was down is reported when the watch lists again, so
    // its TaskRun learns of it, and a list's children trigger their TaskRuns once the whole
    // list is in the cache (relist.rs).
    let (job_reader, job_writer) = reflector::store();
    let job_events = watcher(jobs, children.clone())
        .backoff(backoff::watch())
        .inspect_err(watch_failed(base, watched::JOBS))
        .modify(cache::trim_job);
    let departed = Arc::new(Departed::new(DEPARTED_TTL));
    let job_events = cache::job_events(
        job_events,
        job_reader.clone(),
        reader.clone(),
        departed.clone(),
        superseded.clone(),
    )
    .reflect(job_writer);
    let job_stream = relist::when_listed(job_events, job_reader.clone()).touched_objects();
    let (cm_reader, cm_writer) = reflector::store();
    let cm_events = watcher(config_maps, children)
        .backoff(backoff::watch())
        .inspect_err(watch_failed(base, watched::CONFIG_MAPS))
        .modify(cache::trim_config_map);
    let cm_events = relist::with_vanished(cm_events, cm_reader.clone()).reflect(cm_writer);
    let cm_stream = relist::when_listed(cm_events, cm_reader.clone()).touched_objects();
    let ctx = Arc::new(Ctx {
        base: base.clone(),
        failures: Mutex::new(HashMap::new()),
        children: Children::new(job_reader, cm_reader, departed, superseded),
        written,
        starting,
        taskruns: reader.clone(),
    });

    // Graceful shutdown lets the reconciles in flight finish, but the Controller would also
    // work through everything already queued (after a restart: every TaskRun): `term_ends`.
    let (done_tx, done_rx) = futures::channel::oneshot::channel::<()>();
    let halt = term_ends(leading, stop, done_tx, SHUTDOWN_GRACE);

    let controller = Controller::for_stream(stream, reader)
        .owns_stream(job_stream)
        .owns_stream(cm_stream)
        .reconcile_on(outage::retries(base.client.clone(), ctx.clone()))
        .trigger_backoff(NoPause)
        .with_config(Config::default().concurrency(args.concurrency))
        .graceful_shutdown_on(async move {
            let _ = done_rx.await;
        })
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(taskrun = %obj.name, namespace = obj.namespace.as_deref().unwrap_or_default(), "reconciled"),
                Err(error) => tracing::debug!(%error, "controller event"),
            }
        });
    // The end of the term first: once it has come, no reconcile is polled again.
    tokio::select! {
        biased;
        _ = halt => {
            tracing::info!("stopped with reconciles still queued; the next leader picks them up");
            true
        }
        _ = controller => false,
    }
}

/// What is done when a watch of `resource` fails (it is retried after `backoff::watch`'s delay,
/// where it was, or with a fresh list after a 410 Gone): a warning and a count. kube-runtime's
/// watcher logs most of its failures at debug, and a watch that keeps failing leaves the
/// controller acting on a cache that no longer follows the cluster.
fn watch_failed(base: &Arc<Base>, resource: &'static str) -> impl Fn(&watcher::Error) + use<> {
    let base = base.clone();
    move |error| {
        base.shared.metrics.watch_failed(resource);
        tracing::warn!(%error, resource, "a watch failed; it is retried after a short backoff");
    }
}

/// Ends a term of leadership. `winding_down` fires when the Controller must take no more
/// work: on SIGTERM, or when the Lease is lost. The future ends when the reconciles still
/// running must be dropped: at once when the Lease is lost, since another replica may already
/// act; `grace` after SIGTERM, or sooner if the Lease is lost meanwhile (this replica still
/// renews it, but an API server it cannot reach ends the term). An interrupted reconcile is
/// safe: each one starts from scratch.
async fn term_ends(
    mut leading: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    winding_down: futures::channel::oneshot::Sender<()>,
    grace: Duration,
) {
    // Err: the sender is gone, shutting down.
    let signalled = tokio::select! {
        _ = leading.wait_for(|leads| !*leads) => false,
        _ = stop.wait_for(|stopped| *stopped) => true,
    };
    let _ = winding_down.send(());
    if signalled {
        tokio::select! {
            _ = tokio::time::sleep(grace) => {}
            _ = leading.wait_for(|leads| !*leads) => {}
        }
    }
}

/// What of a TaskRun, when it changes, calls for a reconcile: its spec (the generation), its
/// deletion, its being a new object under the same name, or its losing or regaining this
/// controller's finalizer. Not its status or other metadata: this controller writes the status
/// itself, and reconciling each echo of its own writes (from a cache that may not show them
/// yet) is wasted work. A finalizer removed by hand or by a GitOps tool is put back by the
/// reconcile it triggers, whose echo triggers one more that finds nothing to do; nothing else
/// would bring a finished TaskRun whose Job is gone back to the controller. Its Jobs and
/// ConfigMaps trigger on their own, and every reconcile reads the whole TaskRun from the cache.
fn reconcile_trigger(tr: &TaskRun) -> Option<u64> {
    let mut hasher = std::hash::DefaultHasher::new();
    let meta = &tr.metadata;
    (
        &meta.uid,
        meta.generation,
        meta.deletion_timestamp.is_some(),
        tr.finalizers().iter().any(|f| f == FINALIZER),
    )
        .hash(&mut hasher);
    Some(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use taskrun::{TaskRunSpec, TaskRunStatus};

    #[test]
    fn failures_of_taskruns_gone_from_the_cache_are_dropped() {
        let failure = |unreachable| Failures {
            count: 1,
            unreachable,
            ..Failures::default()
        };
        let (gone, here, refused) = (
            ObjectRef::new("gone").within("ns"),
            ObjectRef::new("here").within("ns"),
            ObjectRef::new("refused").within("ns"),
        );
        let mut failures = HashMap::from([
            (gone.clone(), failure(true)),
            (here.clone(), failure(true)),
            (refused.clone(), failure(false)),
        ]);
        let waiting = waiting(&mut failures, |r| r != &gone);
        assert_eq!(waiting, [here]);
        assert_eq!(failures.len(), 2);
        assert!(failures.contains_key(&refused) && !failures.contains_key(&gone));
    }

    /// How long `term_ends` took, and whether the Controller was told to wind down at once.
    async fn term(signal: bool, lose_lease_after: Option<Duration>) -> (Duration, bool) {
        let (lead_tx, leading) = watch::channel(true);
        let (stop_tx, stop) = watch::channel(false);
        let (done_tx, mut done) = futures::channel::oneshot::channel();
        let started = tokio::time::Instant::now();
        let ends = tokio::spawn(term_ends(leading, stop, done_tx, SHUTDOWN_GRACE));
        if signal {
            let _ = stop_tx.send(true);
        }
        if let Some(after) = lose_lease_after {
            tokio::time::sleep(after).await;
            let _ = lead_tx.send(false);
        }
        tokio::task::yield_now().await;
        let wound_down = matches!(done.try_recv(), Ok(Some(())));
        ends.await.expect("term_ends");
        (started.elapsed(), wound_down)
    }

    #[tokio::test(start_paused = true)]
    async fn a_term_halts_at_once_when_the_lease_is_lost_even_during_the_shutdown_grace() {
        assert_eq!(term(true, None).await, (SHUTDOWN_GRACE, true));
        assert_eq!(
            term(false, Some(Duration::ZERO)).await,
            (Duration::ZERO, true)
        );
        let lost = Duration::from_secs(1);
        assert!(lost < SHUTDOWN_GRACE);
        assert_eq!(term(true, Some(lost)).await, (lost, true));
    }

    #[test]
    fn only_spec_changes_deletion_a_new_object_and_the_finalizer_trigger_a_reconcile() {
        let spec = TaskRunSpec {
            task_id: 1,
            service_name: "svc".into(),
            agent_name: None,
            context_version: 1,
            markdown_files: Vec::new(),
        };
        let mut tr = TaskRun::new("t", spec);
        tr.metadata.uid = Some("u1".into());
        tr.metadata.generation = Some(1);
        tr.metadata.finalizers = Some(vec![FINALIZER.into()]);
        let base = reconcile_trigger(&tr);

        // Echoes of status writes, and metadata this controller does not own.
        let mut echo = tr.clone();
        echo.status = Some(TaskRunStatus::default());
        echo.metadata.resource_version = Some("2".into());
        echo.metadata.finalizers = Some(vec!["example.com/hold".into(), FINALIZER.into()]);
        echo.metadata.labels = Some([("team".to_owned(), "a".to_owned())].into());
        assert_eq!(reconcile_trigger(&echo), base);

        let mut spec = tr.clone();
        spec.metadata.generation = Some(2);
        let mut deleted = tr.clone();
        deleted.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        let mut recreated = tr.clone();
        recreated.metadata.uid = Some("u2".into());
        let mut dropped = tr.clone();
        dropped.metadata.finalizers = Some(vec!["example.com/hold".into()]);
        let mut none = tr.clone();
        none.metadata.finalizers = None;
        assert_eq!(reconcile_trigger(&none), reconcile_trigger(&dropped));
        for changed in [spec, deleted, recreated, dropped] {
            assert_ne!(reconcile_trigger(&changed), base);
        }
        // Put back, it is the TaskRun as before: the echo of the controller's own patch
        // triggers once, then nothing more.
        let mut restored = none.clone();
        restored.metadata.finalizers = Some(vec![FINALIZER.into()]);
        restored.metadata.resource_version = Some("3".into());
        assert_eq!(reconcile_trigger(&restored), base);
    }
}
