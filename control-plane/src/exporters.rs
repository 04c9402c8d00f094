//! Event exporters: one task per `EventExporter` resource, following the
//! event log and POSTing batches (a JSON array of events as the admin API
//! renders them) to a webhook.
//!
//! Each exporter keeps its position in the log (persisted in sled after
//! every delivered batch), so a control-plane restart neither loses nor
//! repeats a batch that was acknowledged. A failed POST is retried with
//! exponential backoff (100 ms doubling to 30 s, with jitter) — the batch
//! is not lost. While the endpoint is down, events wait in the log; when
//! more than `maxBuffer` are waiting, the oldest are skipped and counted
//! (`nio_exporter_dropped_total`).
//!
//! Adding another exporter (Kafka, Elasticsearch, OTLP): a field next to
//! `url` in [`nio_proto::model::EventExporterSpec`] and a `deliver` for it;
//! the following, batching, cursor and retry loop stay as they are.

use crate::events::{self, EventLog, Filter};
use crate::store::Store;
use nio_proto::model::{AnyResource, EventExporterSpec, Kind};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Per exporter: events delivered, POSTs failed, events skipped.
#[derive(Debug, Default)]
pub struct ExporterStats {
    pub delivered: AtomicU64,
    pub failures: AtomicU64,
    pub dropped: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Exporters {
    stats: Mutex<BTreeMap<String, Arc<ExporterStats>>>,
}

impl Exporters {
    pub fn render(&self, out: &mut String) {
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        for (metric, help, read) in [
            (
                "nio_exporter_delivered_total",
                "Events delivered by each exporter.",
                (|s: &ExporterStats| s.delivered.load(Ordering::Relaxed))
                    as fn(&ExporterStats) -> u64,
            ),
            (
                "nio_exporter_failures_total",
                "Failed deliveries (retried) by each exporter.",
                |s| s.failures.load(Ordering::Relaxed),
            ),
            (
                "nio_exporter_dropped_total",
                "Events an exporter skipped because more than maxBuffer were waiting.",
                |s| s.dropped.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for (name, s) in stats.iter() {
                let _ = writeln!(out, "{metric}{{exporter=\"{name}\"}} {}", read(s));
            }
        }
    }
}

/// Keeps one running task per EventExporter resource, restarted when its
/// spec changes.
pub async fn supervise(store: Arc<Store>, log: Arc<EventLog>, exporters: Arc<Exporters>) {
    let cursors = match store.open_tree("exporter-cursors") {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "exporters: cannot open their cursors; not exporting");
            return;
        }
    };
    let mut running: HashMap<String, (EventExporterSpec, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    let mut changes = store.subscribe();
    loop {
        let wanted: HashMap<String, EventExporterSpec> = store
            .current()
            .config
            .of_kind(Kind::EventExporter)
            .filter_map(|r| match r {
                AnyResource::EventExporter(e) => Some((e.metadata.name.clone(), e.spec.clone())),
                _ => None,
            })
            .collect();
        running.retain(|name, (spec, task)| {
            let keep = wanted.get(name) == Some(spec);
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, spec) in wanted {
            if running.contains_key(&name) {
                continue;
            }
            let stats = exporters
                .stats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(name.clone())
                .or_default()
                .clone();
            let task = tokio::spawn(run(
                name.clone(),
                spec.clone(),
                log.clone(),
                cursors.clone(),
                stats,
            ));
            running.insert(name, (spec, task));
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

async fn run(
    name: String,
    spec: EventExporterSpec,
    log: Arc<EventLog>,
    cursors: sled::Tree,
    stats: Arc<ExporterStats>,
) {
    let client = match reqwest::Client::builder().timeout(spec.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(exporter = %name, error = %e, "exporter: cannot build its HTTP client");
            return;
        }
    };
    let filter = Filter {
        kinds: spec.kinds.clone(),
        ..Default::default()
    };
    // Where it stopped; a new exporter starts with what happens next.
    let mut next = cursors
        .get(name.as_bytes())
        .ok()
        .flatten()
        .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or_else(|| log.bounds().1);
    let mut live = log.follow();
    loop {
        let (first, end) = log.bounds();
        if end.saturating_sub(next) > spec.max_buffer {
            let skip_to = end - spec.max_buffer;
            stats.dropped.fetch_add(skip_to - next, Ordering::Relaxed);
            tracing::warn!(exporter = %name, skipped = skip_to - next, "exporter behind by more than maxBuffer; skipping the oldest");
            next = skip_to;
        }
        next = next.max(first);
        let batch: Vec<_> = log
            .read(next, spec.batch_size as usize)
            .into_iter()
            .collect();
        if batch.is_empty() {
            // Wait for something new (or the flush interval).
            let _ = tokio::time::timeout(spec.flush_interval, live.recv()).await;
            live = live.resubscribe();
            continue;
        }
        if batch.len() < spec.batch_size as usize {
            // A partial batch waits for more up to the flush interval.
            let oldest = batch[0].time_unix_nano;
            let age =
                Duration::from_nanos(u64::try_from(events::now_nanos() - oldest).unwrap_or(0));
            if age < spec.flush_interval {
                tokio::time::sleep(spec.flush_interval - age).await;
                continue;
            }
        }
        let last = batch.last().map_or(next, |e| e.sequence);
        let body: Vec<_> = batch
            .iter()
            .filter(|e| filter.matches(e))
            .map(events::to_json)
            .collect();
        if !body.is_empty() {
            deliver(&name, &spec, &client, &body, &stats).await;
        }
        next = last + 1;
        let _ = cursors.insert(name.as_bytes(), &next.to_be_bytes());
    }
}

/// POSTs one batch until it is accepted (2xx), backing off between tries.
async fn deliver(
    name: &str,
    spec: &EventExporterSpec,
    client: &reqwest::Client,
    body: &[serde_json::Value],
    stats: &ExporterStats,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut req = client.post(&spec.url).json(body);
        for (k, v) in &spec.headers {
            req = req.header(k, v);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => {
                stats
                    .delivered
                    .fetch_add(body.len() as u64, Ordering::Relaxed);
                return;
            }
            Ok(r) => {
                tracing::warn!(exporter = name, status = %r.status(), "exporter: the endpoint refused a batch; retrying")
            }
            Err(e) => {
                tracing::warn!(exporter = name, error = %e, "exporter: delivery failed; retrying")
            }
        }
        stats.failures.fetch_add(1, Ordering::Relaxed);
        let jitter = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        tokio::time::sleep(jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
