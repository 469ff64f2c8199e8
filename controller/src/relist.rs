//! Children that went away while a watch was down.
//!
//! A watch that cannot resume lists again, and kube-runtime's reflector then swaps the new
//! list in: an object deleted during the gap drops out of the cache with no event at all. The
//! TaskRun that owned it (a Job removed by its TTL, a ConfigMap deleted by hand) would never be
//! reconciled for it, and nothing else wakes it: its status would say Running forever. This
//! adapter sits before the reflector and, when a list ends, emits every cached object the list
//! did not bring as a delete, so the owner is reconciled and finds its child gone.

use std::collections::HashSet;
use std::hash::Hash;

use futures::{Stream, StreamExt, stream};
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;

/// `events` with a `Delete` for each object of `store` (the cache the same events feed) that
/// a re-list left out, just before the list's `InitDone`.
pub fn with_vanished<K, E>(
    events: impl Stream<Item = Result<Event<K>, E>>,
    store: Store<K>,
) -> impl Stream<Item = Result<Event<K>, E>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    // The names a list in progress has brought; None when nothing can vanish (no list in
    // progress, or the cache was empty when it began: the first list of all).
    let mut listed: Option<HashSet<ObjectRef<K>>> = None;
    events.flat_map(move |event| {
        let mut out = Vec::with_capacity(1);
        match &event {
            Ok(Event::Init) => {
                listed = (!store.is_empty()).then(HashSet::new);
            }
            Ok(Event::InitApply(obj)) => {
                if let Some(names) = &mut listed {
                    names.insert(ObjectRef::from_obj(obj));
                }
            }
            Ok(Event::InitDone) => {
                if let Some(names) = listed.take() {
                    out.extend(
                        store
                            .state()
                            .into_iter()
                            .filter(|old| !names.contains(&ObjectRef::from_obj(old.as_ref())))
                            .map(|old| Ok(Event::Delete(old.as_ref().clone()))),
                    );
                }
            }
            Ok(Event::Apply(_) | Event::Delete(_)) | Err(_) => {}
        }
        out.push(event);
        stream::iter(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::ResourceExt;
    use kube::api::ObjectMeta;
    use kube::runtime::reflector;

    fn cm(name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    /// What the adapter emits for `events`, each applied to the store as the reflector would.
    async fn run(
        writer: &mut reflector::store::Writer<ConfigMap>,
        store: Store<ConfigMap>,
        events: Vec<Event<ConfigMap>>,
    ) -> Vec<String> {
        let out: Vec<Event<ConfigMap>> = with_vanished(
            stream::iter(events.into_iter().map(Ok::<_, std::convert::Infallible>)),
            store,
        )
        .try_collect()
        .await
        .unwrap_or_else(|e| match e {});
        out.iter()
            .map(|e| {
                writer.apply_watcher_event(e);
                match e {
                    Event::Apply(o) => format!("apply {}", o.name_any()),
                    Event::Delete(o) => format!("delete {}", o.name_any()),
                    Event::Init => "init".into(),
                    Event::InitApply(o) => format!("list {}", o.name_any()),
                    Event::InitDone => "done".into(),
                }
            })
            .collect()
    }

    #[tokio::test]
    async fn a_relist_reports_what_vanished_during_the_gap_as_deleted() {
        let (store, mut writer) = reflector::store();
        let first = vec![
            Event::Init,
            Event::InitApply(cm("a")),
            Event::InitApply(cm("b")),
            Event::InitDone,
            Event::Apply(cm("c")),
        ];
        assert_eq!(
            run(&mut writer, store.clone(), first).await,
            ["init", "list a", "list b", "done", "apply c"]
        );
        // The watch broke; b was deleted meanwhile, d created.
        let relist = vec![
            Event::Init,
            Event::InitApply(cm("a")),
            Event::InitApply(cm("c")),
            Event::InitApply(cm("d")),
            Event::InitDone,
        ];
        assert_eq!(
            run(&mut writer, store.clone(), relist).await,
            ["init", "list a", "list c", "list d", "delete b", "done"]
        );
        let mut cached: Vec<_> = store.state().iter().map(|o| o.name_any()).collect();
        cached.sort();
        assert_eq!(cached, ["a", "c", "d"]);
    }
}
