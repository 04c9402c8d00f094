//! Turns store revisions into what each data-plane group receives.
//!
//! A *group* is every data plane with the same labels: they receive the
//! same selection of resources (routes whose `dataPlaneSelector` matches,
//! and the backends those routes use), so it is computed once per group and
//! revision, not once per data plane. Each resource is JSON-encoded once per
//! change and shared (`Bytes`) by every group and stream that sends it.
//!
//! Bursts of writes are coalesced with a leading-edge throttle: a write that
//! follows a quiet period is published at once (no added latency), and
//! writes that arrive while a publish runs or within
//! [`PublishOptions::min_interval`] of the previous one are folded into a
//! single publish of the newest revision at the end of that interval. So a
//! write waits at most `min_interval` plus one publish, and a burst of any
//! size costs one publish per interval. Each group's update carries the
//! delta from the group's previous update, which is what nearly every
//! connected data plane needs.
//!
//! ```text
//! store watch ─▶ debounce ─▶ encode changed resources ─▶ per group: select,
//!     diff with previous ─▶ watch<GroupUpdate> ─▶ streams (delta or full)
//! ```

use crate::store::{State, Store};
use nio_proto::model::{AnyResource, Config, Kind};
use nio_proto::snapshot::{compress, encode_resource, ResourceSet};
use nio_proto::v1;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy)]
pub struct PublishOptions {
    /// Shortest time between two publishes.
    pub min_interval: Duration,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            min_interval: Duration::from_millis(5),
        }
    }
}

/// What one group should hold at one revision.
#[derive(Debug)]
pub struct GroupUpdate {
    pub revision: u64,
    pub set: Arc<ResourceSet>,
    pub hash: String,
    /// The changes since the group's previous update, if there was one.
    pub delta: Option<Arc<v1::Delta>>,
    full: OnceLock<Arc<v1::Snapshot>>,
}

impl GroupUpdate {
    fn new(revision: u64, set: ResourceSet, delta: Option<v1::Delta>) -> GroupUpdate {
        GroupUpdate {
            revision,
            hash: delta
                .as_ref()
                .map_or_else(|| set.hash(), |d| d.hash.clone()),
            set: Arc::new(set),
            delta: delta.map(Arc::new),
            full: OnceLock::new(),
        }
    }

    /// The full snapshot, built and compressed on first use, then shared
    /// (its compressed bytes are reference-counted) by every stream.
    pub fn full(&self) -> Arc<v1::Snapshot> {
        self.full
            .get_or_init(|| Arc::new(compress(self.set.to_snapshot(self.revision))))
            .clone()
    }
}

pub struct Publisher {
    store: Arc<Store>,
    opts: PublishOptions,
    inner: Mutex<Inner>,
}

/// One group's selection, maintained incrementally.
struct Group {
    set: ResourceSet,
    /// How many selected routes use each backend.
    refs: HashMap<String, usize>,
    tx: watch::Sender<Arc<GroupUpdate>>,
}

struct Inner {
    /// The revision the groups are at.
    state: Arc<State>,
    /// Every resource of `state`, encoded once per change.
    encoded: HashMap<(Kind, String), v1::Resource>,
    groups: HashMap<Labels, Group>,
}

fn selected_backend<'a>(config: &'a Config, route: &str, labels: &Labels) -> Option<&'a str> {
    match config.get(Kind::Route, route) {
        Some(AnyResource::Route(r)) if Config::route_selected(r, labels) => {
            Some(r.spec.backend.as_str())
        }
        _ => None,
    }
}

impl Inner {
    fn encoded(&self, kind: Kind, name: &str) -> Option<v1::Resource> {
        self.encoded.get(&(kind, name.to_string())).cloned()
    }

    /// A new group's selection, from scratch.
    fn select(&self, labels: &Labels) -> (ResourceSet, HashMap<String, usize>) {
        let set = ResourceSet::from_resources(
            self.state
                .config
                .select(labels)
                .filter_map(|r| self.encoded(r.kind(), r.name())),
        );
        let mut refs = HashMap::new();
        for r in self.state.config.routes() {
            if Config::route_selected(r, labels) {
                *refs.entry(r.spec.backend.clone()).or_insert(0) += 1;
            }
        }
        (set, refs)
    }

    /// Re-encodes what changed.
    fn encode_changed(&mut self, changed: &[(Kind, String)]) {
        for key in changed {
            match self.state.config.get(key.0, &key.1) {
                Some(r) => {
                    self.encoded.insert(key.clone(), encode_resource(r));
                }
                None => {
                    self.encoded.remove(key);
                }
            }
        }
    }

    /// Updates a group's selection for the changed resources: O(changes),
    /// whatever the size of the configuration.
    fn apply(&self, labels: &Labels, group: &mut Group, old: &Config, changed: &[(Kind, String)]) {
        let new = &self.state.config;
        let mut backends: BTreeSet<String> = BTreeSet::new();
        for (kind, name) in changed {
            match kind {
                Kind::Backend => {
                    backends.insert(name.clone());
                }
                Kind::Route => {
                    if let Some(b) = selected_backend(old, name, labels) {
                        if let Some(n) = group.refs.get_mut(b) {
                            *n = n.saturating_sub(1);
                        }
                        backends.insert(b.to_string());
                    }
                    match selected_backend(new, name, labels) {
                        Some(b) => {
                            *group.refs.entry(b.to_string()).or_insert(0) += 1;
                            backends.insert(b.to_string());
                            if let Some(e) = self.encoded(Kind::Route, name) {
                                group.set.insert(e);
                            }
                        }
                        None => {
                            group.set.remove(Kind::Route.as_str(), name);
                        }
                    }
                }
                // The control plane's own, like `Config::select` says.
                Kind::EventExporter => {}
                // Sent to every group, like `Config::select` says.
                Kind::ApiKey | Kind::JwtVerifier | Kind::GlobalConfig | Kind::Certificate => {
                    match self.encoded(*kind, name) {
                        Some(e) => group.set.insert(e),
                        None => {
                            group.set.remove(kind.as_str(), name);
                        }
                    }
                }
            }
        }
        for b in backends {
            let used = group.refs.get(&b).is_some_and(|n| *n > 0);
            match self.encoded(Kind::Backend, &b).filter(|_| used) {
                Some(e) => group.set.insert(e),
                None => {
                    if !used {
                        group.refs.remove(&b);
                    }
                    group.set.remove(Kind::Backend.as_str(), &b);
                }
            }
        }
    }
}

impl Publisher {
    pub fn new(store: Arc<Store>, opts: PublishOptions) -> Arc<Publisher> {
        let state = store.current();
        let encoded = state
            .config
            .iter()
            .map(|r| ((r.kind(), r.name().to_string()), encode_resource(r)))
            .collect();
        Arc::new(Publisher {
            store,
            opts,
            inner: Mutex::new(Inner {
                state,
                encoded,
                groups: HashMap::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes to the updates of the group with these labels.
    pub fn join(&self, labels: &Labels) -> watch::Receiver<Arc<GroupUpdate>> {
        // Catch up first, so a new stream starts from the current revision
        // rather than one the throttle has not published yet.
        self.publish(self.store.current());
        let mut inner = self.lock();
        if let Some(g) = inner.groups.get(labels) {
            return g.tx.subscribe();
        }
        let (set, refs) = inner.select(labels);
        let update = GroupUpdate::new(inner.state.revision, set.clone(), None);
        let (tx, rx) = watch::channel(Arc::new(update));
        inner.groups.insert(labels.clone(), Group { set, refs, tx });
        rx
    }

    /// Number of groups with at least one data plane.
    pub fn group_count(&self) -> usize {
        self.lock().groups.len()
    }

    /// Publishes revisions until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let mut states = self.store.subscribe();
        let mut last = Instant::now() - self.opts.min_interval;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                changed = states.changed() => if changed.is_err() { return },
            }
            // Throttle: changes arriving until the interval is over join
            // this publish (the watch keeps only the newest).
            tokio::time::sleep_until(last + self.opts.min_interval).await;
            let state = states.borrow_and_update().clone();
            last = Instant::now();
            let this = self.clone();
            // Selecting and diffing 10,000s of resources is CPU work.
            let _ = tokio::task::spawn_blocking(move || this.publish(state)).await;
        }
    }

    /// Computes and sends every group's update for `state`.
    pub fn publish(&self, state: Arc<State>) {
        let mut inner = self.lock();
        if state.revision <= inner.state.revision {
            return;
        }
        let changed = state.config.changed_since(&inner.state.config);
        let old = std::mem::replace(&mut inner.state, state);
        inner.encode_changed(&changed);
        let mut groups = std::mem::take(&mut inner.groups);
        groups.retain(|_, g| g.tx.receiver_count() > 0);
        for (labels, group) in groups.iter_mut() {
            let before = group.set.clone();
            inner.apply(labels, group, &old.config, &changed);
            let delta = group
                .set
                .delta_from_set(&before, old.revision, inner.state.revision);
            let update = GroupUpdate::new(inner.state.revision, group.set.clone(), Some(delta));
            group.tx.send_replace(Arc::new(update));
        }
        inner.groups = groups;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nio_proto::model::AnyResource;
    use serde_json::json;

    fn res(v: serde_json::Value) -> AnyResource {
        AnyResource::from_value(v).unwrap()
    }

    /// The incremental selection always equals a selection from scratch.
    #[tokio::test]
    async fn incremental_groups_match_a_fresh_selection() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let publisher = Publisher::new(store.clone(), PublishOptions::default());
        let eu: Labels = [("zone".to_string(), "eu".to_string())]
            .into_iter()
            .collect();
        let us: Labels = [("zone".to_string(), "us".to_string())]
            .into_iter()
            .collect();
        let rx_eu = publisher.join(&eu);
        let rx_us = publisher.join(&us);
        let backend = |n: &str| {
            res(
                json!({"apiVersion": "nio.dev/v1", "kind": "Backend", "metadata": {"name": n},
            "spec": {"targets": [{"url": "http://127.0.0.1:1"}]}}),
            )
        };
        let route = |n: &str, b: &str, zone: Option<&str>| {
            let mut v = json!({"apiVersion": "nio.dev/v1", "kind": "Route", "metadata": {"name": n},
                "spec": {"frontend": {"paths": [format!("/{n}")]}, "backend": b}});
            if let Some(z) = zone {
                v["spec"]["dataPlaneSelector"] = json!({"matchLabels": {"zone": z}});
            }
            res(v)
        };
        store.create(backend("a")).await.unwrap();
        store.create(backend("b")).await.unwrap();
        store.create(route("r1", "a", Some("eu"))).await.unwrap();
        store.create(route("r2", "b", None)).await.unwrap();
        publisher.publish(store.current());
        store
            .replace(route("r1", "b", Some("us")), None)
            .await
            .unwrap();
        publisher.publish(store.current());
        store.delete(Kind::Route, "r2", None).await.unwrap();
        store.create(route("r3", "a", Some("eu"))).await.unwrap();
        publisher.publish(store.current());
        for (labels, rx) in [(&eu, &rx_eu), (&us, &rx_us)] {
            let update = rx.borrow().clone();
            let fresh = ResourceSet::from_resources(
                store.current().config.select(labels).map(encode_resource),
            );
            assert_eq!(*update.set, fresh, "{labels:?}");
            assert_eq!(update.hash, fresh.hash());
        }
        let names = |rx: &watch::Receiver<Arc<GroupUpdate>>| {
            rx.borrow()
                .set
                .iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&rx_eu), ["a", "r3"]);
        assert_eq!(names(&rx_us), ["b", "r1"]);
    }
}
