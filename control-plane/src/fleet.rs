//! The fleet view: what the control plane knows of each data plane that has
//! connected since it started (identity, connection, applied revision, last
//! NACK). Written by the sync streams, read by the admin API.
//!
//! Kept in memory: after a control-plane restart the fleet reconnects within
//! its backoff, which rebuilds the view.

use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
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
}

#[derive(Debug, Default)]
struct Inner {
    next_session: u64,
    planes: BTreeMap<String, DataPlaneRecord>,
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Fleet {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A poisoned lock only means a panic elsewhere mid-update of a plain
        // record; the data is still usable.
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Registers a new stream; returns its session number. A newer session
    /// for the same id supersedes an older one.
    pub fn connected(&self, hello: &Hello) -> u64 {
        self.with(|inner| {
            inner.next_session += 1;
            let session = inner.next_session;
            let at = now();
            inner.planes.insert(
                hello.id.clone(),
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
                    session,
                },
            );
            session
        })
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
        self.update(id, session, |r| {
            r.applied_revision = revision;
            r.applied_hash = hash.to_string();
        });
    }

    pub fn nacked(&self, id: &str, session: u64, revision: u64, reason: &str) {
        self.update(id, session, |r| {
            r.last_nack = Some(Nack {
                revision,
                reason: reason.to_string(),
                at: now(),
            });
        });
    }

    pub fn disconnected(&self, id: &str, session: u64) {
        self.update(id, session, |r| {
            if r.status == Status::Connected {
                r.status = Status::Disconnected;
            }
            r.connected = false;
            r.connected_since = None;
            r.disconnected_at = Some(r.last_seen.clone());
        });
    }

    /// A data plane that was turned away (it never gets a session).
    pub fn refused(&self, hello: &Hello, reason: &str) {
        let session = self.connected(hello);
        self.update(&hello.id, session, |r| {
            r.status = Status::Refused;
            r.connected = false;
            r.connected_since = None;
            r.last_error = Some(reason.to_string());
        });
    }

    /// A planned departure (the stream ends right after).
    pub fn left(&self, id: &str, session: u64) {
        self.update(id, session, |r| r.status = Status::Left);
        self.disconnected(id, session);
    }

    pub fn list(&self) -> Vec<DataPlaneRecord> {
        self.with(|inner| inner.planes.values().cloned().collect())
    }
}
