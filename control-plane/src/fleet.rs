//! The fleet view: what the control plane knows of each data plane that has
//! connected since it started (identity, connection, applied revision, last
//! NACK). Written by the sync streams, read by the admin API.
//!
//! Kept in memory: after a control-plane restart the fleet reconnects within
//! its backoff, which rebuilds the view.

use crate::events::{self, EventLog};
use nio_proto::v1::{DataPlaneMetrics, Event};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Where a data plane stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Status {
    /// Its sync stream is open.
    Connected,
    /// Its stream broke without a goodbye: crashed, killed or cut off.
    Disconnected,
    /// It drained and said goodbye: a planned exit, not a failure.
    Left,
    /// The control plane would not serve it (see `lastError`), e.g. an
    /// incompatible version.
    Refused,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataPlaneRecord {
    pub id: String,
    pub status: Status,
    pub version: String,
    pub labels: BTreeMap<String, String>,
    pub address: String,
    pub connected: bool,
    pub connected_since: Option<String>,
    pub disconnected_at: Option<String>,
    pub last_seen: String,
    pub applied_revision: u64,
    pub applied_hash: String,
    pub last_nack: Option<Nack>,
    pub last_error: Option<String>,
    /// When the client certificate of its stream expires (with TLS).
    pub certificate_expires: Option<String>,
    /// Events it dropped because its buffer was full (running total, as
    /// last reported).
    pub events_dropped: u64,
    #[serde(skip)]
    session: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Nack {
    pub revision: u64,
    pub reason: String,
    pub at: String,
}

/// Who connected (from the stream's `Hello`).
#[derive(Debug, Clone)]
pub struct Hello {
    pub id: String,
    pub version: String,
    pub labels: HashMap<String, String>,
    pub address: String,
    pub held_revision: u64,
    pub held_hash: String,
    pub certificate_expires: Option<String>,
}

#[derive(Debug, Default)]
pub struct Fleet {
    inner: Mutex<Inner>,
    /// Where fleet events and alerts go.
    events: Option<Arc<EventLog>>,
}

#[derive(Debug, Default)]
struct Inner {
    next_session: u64,
    planes: BTreeMap<String, DataPlaneRecord>,
    /// The last report of each data plane: its counters and dropped events.
    reports: BTreeMap<String, (DataPlaneMetrics, u64)>,
}

/// A connected data plane's record, from its `Hello`.
fn record(hello: &Hello, session: u64) -> DataPlaneRecord {
    let at = now();
    DataPlaneRecord {
        id: hello.id.clone(),
        status: Status::Connected,
        version: hello.version.clone(),
        labels: hello
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        address: hello.address.clone(),
        connected: true,
        connected_since: Some(at.clone()),
        disconnected_at: None,
        last_seen: at,
        applied_revision: hello.held_revision,
        applied_hash: hello.held_hash.clone(),
        last_nack: None,
        last_error: None,
        certificate_expires: hello.certificate_expires.clone(),
        events_dropped: 0,
        session,
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Fleet {
    pub fn new(events: Option<Arc<EventLog>>) -> Fleet {
        Fleet {
            inner: Mutex::default(),
            events,
        }
    }

    fn emit(&self, events: Vec<Event>) {
        if let Some(log) = &self.events {
            log.append(events);
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A poisoned lock only means a panic elsewhere mid-update of a plain
        // record; the data is still usable.
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Registers a new stream; returns its session number. A newer session
    /// for the same id supersedes an older one.
    pub fn connected(&self, hello: &Hello) -> u64 {
        let session = self.with(|inner| {
            inner.next_session += 1;
            let session = inner.next_session;
            let mut record = record(hello, session);
            record.events_dropped = inner.reports.get(&hello.id).map_or(0, |(_, d)| *d);
            inner.planes.insert(hello.id.clone(), record);
            session
        });
        self.emit(vec![events::fleet(
            &hello.id,
            "joined",
            hello.held_revision,
            &hello.version,
            format!("connected from {}", hello.address),
        )]);
        session
    }

    fn update(&self, id: &str, session: u64, f: impl FnOnce(&mut DataPlaneRecord)) {
        self.with(|inner| {
            if let Some(r) = inner.planes.get_mut(id) {
                if r.session == session {
                    r.last_seen = now();
                    f(r);
                }
            }
        });
    }

    pub fn seen(&self, id: &str, session: u64) {
        self.update(id, session, |_| {});
    }

    pub fn acked(&self, id: &str, session: u64, revision: u64, hash: &str) {
        let mut applied = false;
        self.update(id, session, |r| {
            applied = r.applied_revision != revision;
            r.applied_revision = revision;
            r.applied_hash = hash.to_string();
        });
        if applied {
            self.emit(vec![events::fleet(
                id,
                "applied",
                revision,
                "",
                String::new(),
            )]);
        }
    }

    pub fn nacked(&self, id: &str, session: u64, revision: u64, reason: &str) {
        self.update(id, session, |r| {
            r.last_nack = Some(Nack {
                revision,
                reason: reason.to_string(),
                at: now(),
            });
        });
        let mut alert = events::alert(
            "snapshot-nacked",
            "warning",
            id,
            format!("data plane {id} refused revision {revision}: {reason}"),
        );
        alert.data_plane = id.to_string();
        self.emit(vec![alert]);
    }

    pub fn disconnected(&self, id: &str, session: u64) {
        let mut failed = None;
        self.update(id, session, |r| {
            if r.status == Status::Connected {
                r.status = Status::Disconnected;
                failed = Some(r.applied_revision);
            }
            r.connected = false;
            r.connected_since = None;
            r.disconnected_at = Some(r.last_seen.clone());
        });
        // A planned departure (left) or a refusal is not an alert.
        if let Some(revision) = failed {
            let mut alert = events::alert(
                "dataplane-disconnected",
                "critical",
                id,
                format!("the stream of data plane {id} broke without a goodbye"),
            );
            alert.data_plane = id.to_string();
            self.emit(vec![
                events::fleet(id, "disconnected", revision, "", String::new()),
                alert,
            ]);
        }
    }

    /// A data plane's report: keeps its counters, and returns how many
    /// events it dropped since its previous report.
    pub fn reported(&self, id: &str, metrics: DataPlaneMetrics, dropped: u64) -> u64 {
        let before = self.with(|inner| {
            if let Some(r) = inner.planes.get_mut(id) {
                r.events_dropped = dropped;
            }
            inner
                .reports
                .insert(id.to_string(), (metrics, dropped))
                .map_or(0, |(_, d)| d)
        });
        // A new run of the data plane counts from 0 again.
        if dropped >= before {
            dropped - before
        } else {
            dropped
        }
    }

    /// The last counters of every data plane.
    pub fn reports(&self) -> Vec<(String, DataPlaneMetrics)> {
        self.with(|inner| {
            inner
                .reports
                .iter()
                .map(|(id, (m, _))| (id.clone(), m.clone()))
                .collect()
        })
    }

    /// A data plane that was turned away (it never gets a session).
    pub fn refused(&self, hello: &Hello, reason: &str) {
        let session = self.with(|inner| {
            inner.next_session += 1;
            let session = inner.next_session;
            inner
                .planes
                .insert(hello.id.clone(), record(hello, session));
            session
        });
        self.emit(vec![events::fleet(
            &hello.id,
            "refused",
            hello.held_revision,
            &hello.version,
            reason.to_string(),
        )]);
        self.update(&hello.id, session, |r| {
            r.status = Status::Refused;
            r.connected = false;
            r.connected_since = None;
            r.last_error = Some(reason.to_string());
        });
    }

    /// A planned departure (the stream ends right after).
    pub fn left(&self, id: &str, session: u64) {
        let mut revision = 0;
        self.update(id, session, |r| {
            r.status = Status::Left;
            revision = r.applied_revision;
        });
        self.disconnected(id, session);
        self.emit(vec![events::fleet(id, "left", revision, "", String::new())]);
    }

    pub fn list(&self) -> Vec<DataPlaneRecord> {
        self.with(|inner| inner.planes.values().cloned().collect())
    }
}
