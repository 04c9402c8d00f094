//! The event log: every event of the fleet (gateway, audit, alert, fleet)
//! with a sequence number, retained in sled, and the live feed.
//!
//! ```text
//! data-plane reports ─┐                          ┌─▶ EventFeed.Subscribe (gRPC)
//! admin API (audit) ──┼─▶ append: sequence ─▶ sled ─▶ broadcast ─┼─▶ /api/v1/events (JSON, SSE)
//! fleet, alerts ──────┘   (one lock, in order)                   └─▶ webhook exporters
//! ```
//!
//! Appends take one lock so sequence order is storage order is broadcast
//! order. A subscriber reads the log from its `from_sequence`, then follows
//! the broadcast; if it falls behind the broadcast it goes back to reading
//! the log, and only a consumer more than `max_lag` events behind is cut off
//! (RESOURCE_EXHAUSTED, with the sequence to resume from) — a slow consumer
//! never slows appends.
//!
//! Reports from a data plane carry its own event numbers: the log keeps,
//! per data plane, the run and the next number it expects (in the same
//! transaction as the events), so a report sent again after a lost
//! acknowledgement is not stored twice.
//!
//! Retention: the oldest events go beyond `max_events` or `max_age`
//! (checked every 10 s); audit events are never sampled, only aged out like
//! the rest.

use crate::store::{Store, StoreError};
use nio_proto::v1::{event, AlertEvent, AuditEvent, Event, FleetEvent, SubscribeRequest};
use prost::Message;
use serde_json::{json, Value};
use sled::Transactional;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

#[derive(Debug, Clone)]
pub struct Retention {
    pub max_events: u64,
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_events: 1_000_000,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Live events kept for followers that are momentarily behind.
const LIVE: usize = 16_384;

pub struct EventLog {
    events: sled::Tree,
    /// Per data plane: its run and the next event number expected.
    sources: sled::Tree,
    /// (first retained, next) sequence numbers; appends hold it.
    bounds: Mutex<(u64, u64)>,
    live: broadcast::Sender<Arc<Event>>,
    pub retention: Retention,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog").finish_non_exhaustive()
    }
}

pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// An event of the control plane's own.
pub fn local(kind: event::Kind) -> Event {
    Event {
        sequence: 0,
        time_unix_nano: now_nanos(),
        data_plane: String::new(),
        kind: Some(kind),
    }
}

pub fn audit(a: AuditEvent) -> Event {
    local(event::Kind::Audit(a))
}

pub fn alert(alert: &str, severity: &str, subject: &str, message: String) -> Event {
    local(event::Kind::Alert(AlertEvent {
        alert: alert.into(),
        severity: severity.into(),
        subject: subject.into(),
        message,
        labels: Default::default(),
    }))
}

pub fn fleet(
    data_plane: &str,
    change: &str,
    revision: u64,
    version: &str,
    message: String,
) -> Event {
    let mut e = local(event::Kind::Fleet(FleetEvent {
        change: change.into(),
        revision,
        version: version.into(),
        message,
    }));
    e.data_plane = data_plane.into();
    e
}

fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

impl EventLog {
    pub fn open(store: &Store, retention: Retention) -> Result<Arc<EventLog>, StoreError> {
        let events = store.open_tree("events")?;
        let sources = store.open_tree("event-sources")?;
        let first = events
            .first()?
            .and_then(|(k, _)| k.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(1);
        let next = events
            .last()?
            .and_then(|(k, _)| k.as_ref().try_into().ok().map(u64::from_be_bytes))
            .map_or(first, |last| last + 1);
        Ok(Arc::new(EventLog {
            events,
            sources,
            bounds: Mutex::new((first, next)),
            live: broadcast::channel(LIVE).0,
            retention,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, u64)> {
        self.bounds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (first retained, next) sequence numbers.
    pub fn bounds(&self) -> (u64, u64) {
        *self.lock()
    }

    /// Stores events of the control plane's own and publishes them.
    pub fn append(&self, events: Vec<Event>) {
        if let Err(e) = self.append_from(None, events) {
            tracing::warn!(error = %e, "event log: append failed");
        }
    }

    /// Stores a data plane's report (`source`: its id, run and the number
    /// of the first event) — the events it did not send before — and
    /// returns the next number it should send.
    pub fn append_report(
        &self,
        data_plane: &str,
        run: &str,
        first: u64,
        events: Vec<Event>,
    ) -> Result<u64, StoreError> {
        self.append_from(Some((data_plane, run, first)), events)
    }

    fn append_from(
        &self,
        source: Option<(&str, &str, u64)>,
        mut events: Vec<Event>,
    ) -> Result<u64, StoreError> {
        let mut bounds = self.lock();
        let mut expected = 0;
        if let Some((dp, run, first)) = source {
            expected = match self.sources.get(dp)? {
                Some(v) if v.len() > 8 && &v[8..] == run.as_bytes() => {
                    u64::from_be_bytes(v[..8].try_into().unwrap_or_default())
                }
                _ => first,
            };
            // Already stored: the start of a report sent again.
            let skip = expected.saturating_sub(first).min(events.len() as u64) as usize;
            events.drain(..skip);
            expected = expected.max(first) + events.len() as u64;
            for e in &mut events {
                e.data_plane = dp.to_string();
            }
        }
        let start = bounds.1;
        for (i, e) in events.iter_mut().enumerate() {
            e.sequence = start + i as u64;
        }
        let encoded: Vec<([u8; 8], Vec<u8>)> = events
            .iter()
            .map(|e| (seq_key(e.sequence), e.encode_to_vec()))
            .collect();
        (&self.events, &self.sources)
            .transaction(|(tx_events, tx_sources)| {
                for (k, v) in &encoded {
                    tx_events.insert(k, v.as_slice())?;
                }
                if let Some((dp, run, _)) = source {
                    let mut v = expected.to_be_bytes().to_vec();
                    v.extend_from_slice(run.as_bytes());
                    tx_sources.insert(dp.as_bytes(), v)?;
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
                sled::transaction::TransactionError::Abort(()) => StoreError::Aborted,
            })?;
        bounds.1 = start + events.len() as u64;
        for e in events {
            let _ = self.live.send(Arc::new(e));
        }
        Ok(expected)
    }

    /// Waits until what was appended is on disk.
    pub fn flush(&self) {
        if let Err(e) = self.events.flush() {
            tracing::warn!(error = %e, "event log: flush failed");
        }
    }

    /// Up to `limit` stored events from `from` on.
    pub fn read(&self, from: u64, limit: usize) -> Vec<Event> {
        self.events
            .range(seq_key(from)..)
            .values()
            .filter_map(Result::ok)
            .filter_map(|v| Event::decode(v.as_ref()).ok())
            .take(limit)
            .collect()
    }

    /// Up to `limit` matching events from `from` on (looking at no more
    /// than 100,000).
    pub fn read_matching(&self, from: u64, filter: &Filter, limit: usize) -> Vec<Event> {
        self.events
            .range(seq_key(from)..)
            .values()
            .take(100_000)
            .filter_map(Result::ok)
            .filter_map(|v| Event::decode(v.as_ref()).ok())
            .filter(|e| filter.matches(e))
            .take(limit)
            .collect()
    }

    /// The latest `limit` matching events, oldest first (looking at no
    /// more than the latest 100,000).
    pub fn read_latest(&self, filter: &Filter, limit: usize) -> Vec<Event> {
        let mut found: Vec<Event> = self
            .events
            .iter()
            .values()
            .rev()
            .take(100_000)
            .filter_map(Result::ok)
            .filter_map(|v| Event::decode(v.as_ref()).ok())
            .filter(|e| filter.matches(e))
            .take(limit)
            .collect();
        found.reverse();
        found
    }

    pub fn follow(&self) -> broadcast::Receiver<Arc<Event>> {
        self.live.subscribe()
    }

    /// Drops what retention no longer keeps.
    pub fn trim(&self) {
        let cutoff =
            now_nanos() - i64::try_from(self.retention.max_age.as_nanos()).unwrap_or(i64::MAX);
        let (first, next) = self.bounds();
        let mut new_first = first.max(next.saturating_sub(self.retention.max_events));
        // By age: walk from the oldest while they are too old.
        for e in self.read(new_first, 10_000) {
            if e.time_unix_nano >= cutoff {
                break;
            }
            new_first = e.sequence + 1;
        }
        if new_first <= first {
            return;
        }
        let mut batch = sled::Batch::default();
        for k in self
            .events
            .range(seq_key(first)..seq_key(new_first))
            .keys()
            .flatten()
        {
            batch.remove(k);
        }
        if self.events.apply_batch(batch).is_ok() {
            let mut bounds = self.lock();
            bounds.0 = new_first.max(bounds.0);
        }
    }

    /// Trims every 10 s until the runtime ends.
    pub fn start_retention(self: &Arc<Self>) {
        let log = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                let Some(log) = log.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || log.trim()).await;
            }
        });
    }
}

/// The kind of an event as the feed names it.
pub fn kind_name(e: &Event) -> &'static str {
    match e.kind {
        Some(event::Kind::Gateway(_)) => "gateway",
        Some(event::Kind::Audit(_)) => "audit",
        Some(event::Kind::Alert(_)) => "alert",
        Some(event::Kind::Fleet(_)) => "fleet",
        None => "unknown",
    }
}

fn time_text(nanos: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// An event as JSON (the admin API's form, and what field filters see).
pub fn to_json(e: &Event) -> Value {
    let body = match &e.kind {
        Some(event::Kind::Gateway(g)) => json!({
            "route": g.route, "backend": g.backend, "target": g.target, "method": g.method,
            "host": g.host, "path": g.path, "status": g.status, "durationMs": g.duration_ms,
            "upstreamMs": g.upstream_ms, "bytesIn": g.bytes_in, "bytesOut": g.bytes_out,
            "clientIp": g.client_ip, "consumer": g.consumer, "requestId": g.request_id,
            "error": g.error, "traceId": g.trace_id,
        }),
        Some(event::Kind::Audit(a)) => audit_json(a),
        Some(event::Kind::Alert(a)) => json!({
            "alert": a.alert, "severity": a.severity, "subject": a.subject,
            "message": a.message, "labels": a.labels,
        }),
        Some(event::Kind::Fleet(f)) => json!({
            "change": f.change, "revision": f.revision, "version": f.version, "message": f.message,
        }),
        None => Value::Null,
    };
    let kind = kind_name(e);
    json!({
        "sequence": e.sequence,
        "time": time_text(e.time_unix_nano),
        "dataPlane": e.data_plane,
        "kind": kind,
        kind: body,
    })
}

fn audit_json(a: &AuditEvent) -> Value {
    json!({
        "actor": a.actor, "action": a.action, "kind": a.kind, "name": a.name,
        "oldVersion": a.old_version, "newVersion": a.new_version, "sourceIp": a.source_ip,
        "status": a.status, "method": a.method, "path": a.path, "message": a.message,
    })
}

/// What a subscriber asked for.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub kinds: Vec<String>,
    pub route: String,
    pub data_plane: String,
    /// Dotted JSON path → value.
    pub fields: BTreeMap<String, String>,
}

impl From<&SubscribeRequest> for Filter {
    fn from(r: &SubscribeRequest) -> Filter {
        Filter {
            kinds: r.kinds.clone(),
            route: r.route.clone(),
            data_plane: r.data_plane.clone(),
            fields: r.fields.clone().into_iter().collect(),
        }
    }
}

impl Filter {
    pub fn check(&self) -> Result<(), String> {
        for k in &self.kinds {
            if !["gateway", "audit", "alert", "fleet"].contains(&k.as_str()) {
                return Err(format!(
                    "unknown event kind \"{k}\"; use gateway, audit, alert or fleet"
                ));
            }
        }
        Ok(())
    }

    pub fn matches(&self, e: &Event) -> bool {
        if !self.kinds.is_empty() && !self.kinds.iter().any(|k| k == kind_name(e)) {
            return false;
        }
        if !self.data_plane.is_empty() && e.data_plane != self.data_plane {
            return false;
        }
        if !self.route.is_empty() {
            match &e.kind {
                Some(event::Kind::Gateway(g)) if g.route == self.route => {}
                _ => return false,
            }
        }
        if self.fields.is_empty() {
            return true;
        }
        let json = to_json(e);
        self.fields.iter().all(|(path, want)| {
            let got = path.split('.').try_fold(&json, |v, part| v.get(part));
            match got {
                Some(Value::String(s)) => s == want,
                Some(v) => v.to_string().as_str() == want.as_str(),
                None => false,
            }
        })
    }
}

/// Why a follower stopped.
#[derive(Debug)]
pub enum Stop {
    /// The receiver went away.
    Gone,
    /// More than the allowed lag behind: resume from this sequence.
    TooSlow { resume: u64, behind: u64 },
}

/// Sends the matching events from `from` (0: from now) to `send`, then the
/// live ones, until `send` fails or the consumer falls more than `max_lag`
/// behind.
pub async fn follow<F, Fut>(
    log: &EventLog,
    filter: &Filter,
    from: u64,
    max_lag: u64,
    mut send: F,
) -> Stop
where
    F: FnMut(Event) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut live = log.follow();
    let (first, next_now) = log.bounds();
    let mut next = if from == 0 { next_now } else { from.max(first) };
    loop {
        // From the log until caught up.
        loop {
            let (_, end) = log.bounds();
            if end.saturating_sub(next) > max_lag {
                return Stop::TooSlow {
                    resume: next,
                    behind: end - next,
                };
            }
            let chunk = log.read(next, 1_000);
            if chunk.is_empty() {
                break;
            }
            for e in chunk {
                next = e.sequence + 1;
                if filter.matches(&e) && !send(e).await {
                    return Stop::Gone;
                }
            }
        }
        // Then live, until the broadcast leaves us behind.
        loop {
            match live.recv().await {
                Ok(e) => {
                    if e.sequence < next {
                        continue;
                    }
                    if e.sequence > next {
                        break; // missed some: read them from the log
                    }
                    next = e.sequence + 1;
                    if filter.matches(&e) && !send((*e).clone()).await {
                        return Stop::Gone;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    live = live.resubscribe();
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => return Stop::Gone,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(route: &str, status: u32) -> Event {
        local(event::Kind::Gateway(nio_proto::v1::GatewayEvent {
            route: route.into(),
            status,
            ..Default::default()
        }))
    }

    #[test]
    fn sequences_dedup_filters_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let log = EventLog::open(
            &store,
            Retention {
                max_events: 3,
                max_age: Duration::from_secs(3600),
            },
        )
        .unwrap();
        // A report of events 1..=3, then the same again plus one more.
        let batch = vec![gateway("a", 200), gateway("b", 503), gateway("a", 200)];
        assert_eq!(
            log.append_report("dp", "run1", 1, batch.clone()).unwrap(),
            4
        );
        let mut again = batch;
        again.push(gateway("a", 404));
        assert_eq!(log.append_report("dp", "run1", 1, again).unwrap(), 5);
        assert_eq!(log.bounds(), (1, 5));
        let all = log.read(1, 10);
        assert_eq!(
            all.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert!(all.iter().all(|e| e.data_plane == "dp"));
        // A new run of the same data plane starts its numbers again.
        assert_eq!(
            log.append_report("dp", "run2", 1, vec![gateway("c", 200)])
                .unwrap(),
            2
        );

        let filter = Filter {
            fields: [("gateway.status".to_string(), "503".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(
            log.read(1, 10).iter().filter(|e| filter.matches(e)).count(),
            1
        );
        let filter = Filter {
            route: "a".into(),
            ..Default::default()
        };
        assert_eq!(
            log.read(1, 10).iter().filter(|e| filter.matches(e)).count(),
            3
        );

        log.trim();
        assert_eq!(log.bounds(), (3, 6));
        assert_eq!(log.read(0, 10).first().map(|e| e.sequence), Some(3));
        // Reopened: the same bounds.
        drop(log);
        let log = EventLog::open(&store, Retention::default()).unwrap();
        assert_eq!(log.bounds(), (3, 6));
    }
}
