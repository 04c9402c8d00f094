//! Events and telemetry toward the control plane (`Telemetry.Report`).
//!
//! ```text
//! request path ── emit(Event) ──▶ channel (try_send, never waits)
//!                                    │ collector task
//!                                    ▼
//!                         ring of numbered events (--event-buffer; when full
//!                         the oldest goes, counted in dropped_events)
//!                                    │ reporter task, every --report-interval
//!                                    ▼
//!        DataPlaneReport{events from the first unacknowledged, dropped total,
//!                        per-route counters} ──▶ control plane stores, then
//!        ◀── ReportAck{next_event}: events below it leave the ring
//! ```
//!
//! Events are numbered per data-plane run (`run` is random per start): after
//! a reconnect the reporter sends again everything not acknowledged, and the
//! control plane drops what it already stored, so nothing is lost or
//! counted twice across control-plane outages as long as the ring holds it.
//! Reporting has its own stream: it never delays a configuration ACK, and a
//! request never waits for it.

use crate::metrics::Metrics;
use crate::runtime::RuntimeSlot;
use crate::sync::{connect, leaving, SyncOptions};
use nio_proto::v1::telemetry_client::TelemetryClient;
use nio_proto::v1::{
    event, AlertEvent, ApiKeyMetrics, DataPlaneMetrics, DataPlaneReport, Event, TargetMetrics,
};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

/// Events queued between the request path and the collector.
const CHANNEL: usize = 16_384;
/// Most events in one report.
const BATCH: usize = 2_000;

struct Emitter {
    tx: mpsc::Sender<Event>,
    /// Events the channel refused (the collector fell behind).
    refused: AtomicU64,
}

static EMITTER: OnceLock<Emitter> = OnceLock::new();

pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Hands an event to the reporter; never waits. A no-op until
/// [`start`] ran (tests, benches).
pub fn emit(kind: event::Kind) {
    let Some(e) = EMITTER.get() else {
        return;
    };
    let event = Event {
        sequence: 0,
        time_unix_nano: now_nanos(),
        data_plane: String::new(),
        kind: Some(kind),
    };
    if e.tx.try_send(event).is_err() {
        e.refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// An alert from this data plane.
pub fn alert(alert: &str, severity: &str, subject: String, message: String) {
    emit(event::Kind::Alert(AlertEvent {
        alert: alert.to_string(),
        severity: severity.to_string(),
        subject,
        message,
        labels: Default::default(),
    }));
}

#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Most events kept while the control plane is away.
    pub buffer: usize,
    pub interval: Duration,
}

/// Numbered events not yet acknowledged.
struct Ring {
    events: VecDeque<(u64, Event)>,
    /// The number the next event gets.
    next: u64,
    /// Events dropped because the ring was full.
    dropped: u64,
    cap: usize,
}

impl Ring {
    fn push(&mut self, event: Event) {
        if self.events.len() >= self.cap {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back((self.next, event));
        self.next += 1;
    }

    fn acknowledge(&mut self, next: u64) {
        while self.events.front().is_some_and(|(n, _)| *n < next) {
            self.events.pop_front();
        }
    }

    /// Up to `BATCH` events from number `from`: (first number, events).
    fn batch(&self, from: u64) -> (u64, Vec<Event>) {
        let start = self.events.partition_point(|(n, _)| *n < from);
        let events: Vec<Event> = self
            .events
            .range(start..)
            .take(BATCH)
            .map(|(_, e)| e.clone())
            .collect();
        let first = self.events.get(start).map_or(self.next, |(n, _)| *n);
        (first, events)
    }
}

/// Starts the collector and the reporter; they run until `leave` turns
/// true (after a last report).
pub fn start(
    opts: ReportOptions,
    sync: SyncOptions,
    metrics: Arc<Metrics>,
    slot: Arc<RuntimeSlot>,
    leave: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = mpsc::channel(CHANNEL);
    let _ = EMITTER.set(Emitter {
        tx,
        refused: AtomicU64::new(0),
    });
    let ring = Arc::new(Mutex::new(Ring {
        events: VecDeque::new(),
        next: 1,
        dropped: 0,
        cap: opts.buffer.max(1),
    }));
    let collector_ring = ring.clone();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut ring = collector_ring.lock().unwrap_or_else(|p| p.into_inner());
            ring.push(first);
            while let Ok(more) = rx.try_recv() {
                ring.push(more);
            }
        }
    });
    let counters = Counters { metrics, slot };
    tokio::spawn(report_loop(opts, sync, counters, ring, leave))
}

fn run_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// What a report's counters are read from.
struct Counters {
    metrics: Arc<Metrics>,
    slot: Arc<RuntimeSlot>,
}

impl Counters {
    /// Per route, per API key and per backend target, from the runtime
    /// now serving.
    fn read(&self) -> DataPlaneMetrics {
        let Some(rt) = self.slot.load_full() else {
            return self.metrics.report(std::iter::empty());
        };
        let mut m = self.metrics.report(rt.route_stats());
        let now = crate::upstream::health::now_ms();
        m.api_keys = rt
            .api_keys
            .values()
            .map(|k| ApiKeyMetrics {
                name: k.name.clone(),
                requests: k.requests.load(Ordering::Relaxed),
            })
            .collect();
        m.targets = rt
            .backends
            .values()
            .flat_map(|pool| {
                pool.targets.iter().map(move |t| TargetMetrics {
                    backend: pool.name.clone(),
                    target: t.url.clone(),
                    requests: t.state.requests.load(Ordering::Relaxed),
                    failures: t.state.failures.load(Ordering::Relaxed),
                    condition: t.state.condition(now).as_str().to_string(),
                })
            })
            .collect();
        m
    }
}

async fn report_loop(
    opts: ReportOptions,
    sync: SyncOptions,
    metrics: Counters,
    ring: Arc<Mutex<Ring>>,
    mut leave: watch::Receiver<bool>,
) {
    let run = run_id();
    let mut backoff = sync.backoff_min;
    loop {
        match report_session(&opts, &sync, &metrics, &ring, &run, &mut leave).await {
            Ok(()) => return,
            Err(e) => tracing::debug!(error = %e, "report stream ended; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = leaving(&mut leave) => return,
        }
        backoff = (backoff * 2).min(sync.backoff_max);
    }
}

fn report(
    sync: &SyncOptions,
    metrics: &Counters,
    ring: &Mutex<Ring>,
    run: &str,
    from: u64,
) -> (DataPlaneReport, u64) {
    let (first, events, dropped) = {
        let ring = ring.lock().unwrap_or_else(|p| p.into_inner());
        let (first, events) = ring.batch(from);
        (first, events, ring.dropped)
    };
    let refused = EMITTER
        .get()
        .map_or(0, |e| e.refused.load(Ordering::Relaxed));
    let next = first + events.len() as u64;
    let report = DataPlaneReport {
        data_plane: sync.id.clone(),
        first_event: first,
        run: run.to_string(),
        events,
        dropped_events: dropped + refused,
        metrics: Some(metrics.read()),
        quota_usage: crate::quota::usage_report(),
    };
    (report, next)
}

async fn report_session(
    opts: &ReportOptions,
    sync: &SyncOptions,
    metrics: &Counters,
    ring: &Mutex<Ring>,
    run: &str,
    leave: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    // The sync task enrolls; this one only connects once it has.
    let (channel, _) = connect(sync, false).await.map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel::<DataPlaneReport>(4);
    let mut client = TelemetryClient::new(channel).max_decoding_message_size(1 << 20);
    // Start from the first event not acknowledged.
    let mut sent = ring
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .events
        .front()
        .map_or(0, |(n, _)| *n);
    let (first, next) = report(sync, metrics, ring, run, sent);
    tx.send(first).await.map_err(|e| e.to_string())?;
    sent = next;
    let mut acks = client
        .report(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // Everything pending, in batches (the stream's flow control
                // paces them).
                loop {
                    let (report, next) = report(sync, metrics, ring, run, sent);
                    let full = report.events.len() == BATCH;
                    sent = next;
                    if tx.send(report).await.is_err() {
                        return Err("report stream closed".into());
                    }
                    if !full {
                        break;
                    }
                }
            }
            ack = acks.message() => match ack {
                Ok(Some(a)) => {
                    ring.lock().unwrap_or_else(|p| p.into_inner()).acknowledge(a.next_event);
                    if let Some(q) = &a.quotas {
                        crate::quota::apply(q);
                    }
                }
                Ok(None) => return Err("control plane ended the report stream".into()),
                Err(s) => return Err(s.message().to_string()),
            },
            () = leaving(leave) => {
                // A last report of what is left, then goodbye.
                let (report, _) = report(sync, metrics, ring, run, sent);
                let _ = tx.send(report).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), acks.message()).await;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> Event {
        Event::default()
    }

    #[test]
    fn the_ring_drops_the_oldest_and_counts_exactly() {
        let mut ring = Ring {
            events: VecDeque::new(),
            next: 1,
            dropped: 0,
            cap: 3,
        };
        for _ in 0..5 {
            ring.push(ev());
        }
        assert_eq!(ring.dropped, 2);
        let (first, events) = ring.batch(0);
        assert_eq!((first, events.len()), (3, 3));
        ring.acknowledge(5);
        let (first, events) = ring.batch(0);
        assert_eq!((first, events.len()), (5, 1));
        let (first, events) = ring.batch(6);
        assert_eq!((first, events.len()), (6, 0));
    }
}
