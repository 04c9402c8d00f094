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
use nio_proto::model::{AnyResource, Kind};
use nio_proto::snapshot::{compress, encode_resource, ResourceSet};
use nio_proto::v1;
use std::collections::{BTreeMap, HashMap};
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

struct Inner {
    /// The revision the groups are at.
    state: Arc<State>,
    /// Encoded resources of `state`, reused while their version is unchanged.
    encoded: HashMap<(Kind, String), v1::Resource>,
    groups: HashMap<Labels, watch::Sender<Arc<GroupUpdate>>>,
}

impl Inner {
    fn select(&self, labels: &Labels) -> ResourceSet {
        ResourceSet::from_resources(
            self.state
                .config
                .select(labels)
                .filter_map(|r| self.encoded.get(&(r.kind(), r.name().to_string())).cloned()),
        )
    }

    fn encode_changes(&mut self, state: &State) {
        let mut encoded = HashMap::with_capacity(state.config.len());
        for r in state.config.iter() {
            let key = (r.kind(), r.name().to_string());
            let rv = version(r);
            let e = match self.encoded.remove(&key) {
                Some(e) if e.resource_version == rv => e,
                _ => encode_resource(r),
            };
            encoded.insert(key, e);
        }
        self.encoded = encoded;
    }
}

fn version(r: &AnyResource) -> u64 {
    match r {
        AnyResource::Route(x) => x.resource_version(),
        AnyResource::Backend(x) => x.resource_version(),
    }
}

impl Publisher {
    pub fn new(store: Arc<Store>, opts: PublishOptions) -> Arc<Publisher> {
        let state = store.current();
        let mut inner = Inner {
            state: Arc::new(State::default()),
            encoded: HashMap::new(),
            groups: HashMap::new(),
        };
        inner.encode_changes(&state);
        inner.state = state;
        Arc::new(Publisher {
            store,
            opts,
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes to the updates of the group with these labels.
    pub fn join(&self, labels: &Labels) -> watch::Receiver<Arc<GroupUpdate>> {
        let mut inner = self.lock();
        if let Some(tx) = inner.groups.get(labels) {
            return tx.subscribe();
        }
        let update = GroupUpdate::new(inner.state.revision, inner.select(labels), None);
        let (tx, rx) = watch::channel(Arc::new(update));
        inner.groups.insert(labels.clone(), tx);
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
        inner.encode_changes(&state);
        inner.state = state;
        inner.groups.retain(|_, tx| tx.receiver_count() > 0);
        let labels: Vec<Labels> = inner.groups.keys().cloned().collect();
        for l in labels {
            let set = inner.select(&l);
            let tx = &inner.groups[&l];
            let previous = tx.borrow().clone();
            let delta = set.delta_from_set(&previous.set, previous.revision, inner.state.revision);
            let update = GroupUpdate::new(inner.state.revision, set, Some(delta));
            tx.send_replace(Arc::new(update));
        }
    }
}
