//! The `ConfigSync` gRPC service: one bidirectional stream per data plane.
//!
//! ```text
//! DP ── Hello{id, version, labels, held revision/hash/resources} ──▶ CP  (join token, version check, admission)
//! DP ◀── UpToDate | Delta(held → current) | Snapshot(full) ────────── CP
//! DP ── Ack(rev, hash) | Nack(rev, reason, resync?) | Heartbeat ───▶ CP  (fleet view)
//! DP ◀── Delta(previous → next) for every later revision ──────────── CP  (pushed, coalesced)
//! DP ── Goodbye ──────────────────────────────────────────────────▶ CP  (planned exit: "left")
//! ```
//!
//! Each stream is served by one task that follows its group's updates from
//! the [`Publisher`] (a `watch`: only the newest is kept, so a slow data
//! plane skips revisions instead of making the control plane buffer them).
//! A stream sends the group's shared delta when the data plane holds the
//! group's previous revision, its own delta when it lags further, and a full
//! snapshot when it holds nothing usable or asked to resync. A refused
//! revision is never sent again; the next one goes out as a full snapshot.

use crate::fleet::{Fleet, Hello};
use crate::pki::{Identity, Pki};
use crate::publisher::{GroupUpdate, Labels, Publisher};
use crate::tokens::{bearer, Token};
use nio_proto::snapshot::ResourceSet;
use nio_proto::v1::config_sync_server::ConfigSync;
use nio_proto::v1::enrollment_server::Enrollment;
use nio_proto::v1::{self, control_plane_message, data_plane_message};
use nio_proto::v1::{ControlPlaneMessage, DataPlaneMessage};
use nio_proto::v1::{EnrollRequest, EnrollResponse};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// How long a stream may stay silent (data planes heartbeat more often)
/// before the control plane considers the data plane gone.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct AdmissionOptions {
    /// New streams accepted per second (token bucket refill rate)…
    pub streams_per_second: f64,
    /// …and burst size.
    pub burst: f64,
    /// Full snapshots being sent at once; more wait their turn.
    pub max_full_pushes: usize,
}

impl Default for AdmissionOptions {
    fn default() -> Self {
        AdmissionOptions {
            streams_per_second: 500.0,
            burst: 200.0,
            max_full_pushes: 32,
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct SyncStats {
    pub full_pushes: AtomicU64,
    pub delta_pushes: AtomicU64,
    pub up_to_date: AtomicU64,
    pub refused_streams: AtomicU64,
    /// Size of the last full snapshot sent (protobuf bytes).
    pub snapshot_bytes: AtomicU64,
    /// The latest revision pushed and when it was first pushed.
    pushed: Mutex<Option<(u64, Instant)>>,
    /// Push-to-ACK latency of the latest revision, per bucket of
    /// [`ACK_BUCKETS`] (not cumulative; the last is +Inf), and the sum in
    /// microseconds.
    pub ack_latency: [AtomicU64; ACK_BUCKETS.len() + 1],
    pub ack_latency_us: AtomicU64,
}

/// Upper bounds (seconds) of the push-to-ACK latency histogram.
pub const ACK_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

impl SyncStats {
    fn pushing(&self, revision: u64) {
        let mut pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
        if pushed.is_none_or(|(r, _)| r < revision) {
            *pushed = Some((revision, Instant::now()));
        }
    }

    fn acked(&self, revision: u64) {
        let pushed = *self.pushed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, at)) = pushed.filter(|(r, _)| *r == revision) {
            let secs = at.elapsed().as_secs_f64();
            let bucket = ACK_BUCKETS.partition_point(|b| *b < secs);
            self.ack_latency[bucket].fetch_add(1, Ordering::Relaxed);
            self.ack_latency_us
                .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
        }
    }
}

pub(crate) type Shutdown = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

pub struct SyncService {
    publisher: Arc<Publisher>,
    fleet: Arc<Fleet>,
    join_token: Token,
    /// With TLS: streams authenticate with client certificates from this
    /// CA. `None` (`--grpc-plaintext`): with the join token.
    pki: Option<Arc<Pki>>,
    stats: Arc<SyncStats>,
    admission: Mutex<TokenBucket>,
    full_pushes: Arc<Semaphore>,
    /// Makes a future that resolves when the control plane shuts down.
    shutdown: Arc<dyn Fn() -> Shutdown + Send + Sync>,
}

struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Whether a data plane of `theirs` can be served by a control plane of
/// `ours`: same major version, and for 0.x the same minor.
pub fn compatible(ours: &str, theirs: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split(['.', '-', '+']);
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parse(ours), parse(theirs)) {
        (Some((0, a)), Some((0, b))) => a == b,
        (Some((a, _)), Some((b, _))) => a == b,
        _ => false,
    }
}

impl SyncService {
    pub fn new<F, Fut>(
        publisher: Arc<Publisher>,
        fleet: Arc<Fleet>,
        join_token: Token,
        pki: Option<Arc<Pki>>,
        stats: Arc<SyncStats>,
        admission: AdmissionOptions,
        shutdown: F,
    ) -> SyncService
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        SyncService {
            publisher,
            fleet,
            join_token,
            pki,
            stats,
            admission: Mutex::new(TokenBucket {
                tokens: admission.burst,
                rate: admission.streams_per_second,
                burst: admission.burst,
                last: Instant::now(),
            }),
            full_pushes: Arc::new(Semaphore::new(admission.max_full_pushes.max(1))),
            shutdown: Arc::new(move || Box::pin(shutdown())),
        }
    }

    fn refuse(&self, status: Status) -> Status {
        self.stats.refused_streams.fetch_add(1, Ordering::Relaxed);
        status
    }
}

type OutStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ControlPlaneMessage, Status>> + Send>>;

fn validate_id(id: &str) -> Result<(), Status> {
    let ok = !id.is_empty()
        && id.len() <= 253
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(
            "data plane id must be 1-253 characters of letters, digits, '-', '_' or '.'",
        ))
    }
}

#[tonic::async_trait]
impl ConfigSync for SyncService {
    type SyncStream = OutStream;

    async fn sync(
        &self,
        request: Request<Streaming<DataPlaneMessage>>,
    ) -> Result<Response<OutStream>, Status> {
        let identity = match &self.pki {
            Some(pki) => {
                let identity = client_identity(pki, &request).map_err(|s| {
                    tracing::warn!(peer = ?request.remote_addr(), reason = %s.message(), "data plane refused");
                    self.refuse(s)
                })?;
                Some(identity)
            }
            None => {
                if !has_join_token(&self.join_token, &request) {
                    tracing::warn!(peer = ?request.remote_addr(), "data plane refused: missing or wrong join token");
                    return Err(self.refuse(Status::unauthenticated(
                        "join token missing or wrong; start the data plane with --join-token-file or NIO_JOIN_TOKEN",
                    )));
                }
                None
            }
        };
        let admitted = self
            .admission
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if !admitted {
            return Err(self.refuse(Status::resource_exhausted(
                "too many data planes connecting at once; retry with backoff",
            )));
        }
        let address = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10 s"))??;
        let Some(DataPlaneMessage {
            msg: Some(data_plane_message::Msg::Hello(h)),
        }) = first
        else {
            return Err(Status::invalid_argument("the first message must be Hello"));
        };
        validate_id(&h.id)?;
        if let Some(identity) = identity.as_ref().filter(|i| i.id != h.id) {
            tracing::warn!(certificate = %identity.id, hello = %h.id, "data plane refused: certificate for another id");
            return Err(self.refuse(Status::permission_denied(format!(
                "this certificate was issued to data plane \"{}\", not \"{}\"",
                identity.id, h.id
            ))));
        }
        let held: Vec<((String, String), u64)> = h
            .held_resources
            .into_iter()
            .map(|k| ((k.kind, k.name), k.resource_version))
            .collect();
        let hello = Hello {
            id: h.id,
            version: h.version,
            labels: h.labels,
            address,
            held_revision: h.held_revision,
            held_hash: h.held_hash,
            certificate_expires: identity.as_ref().map(Identity::expires),
        };
        if !compatible(nio_proto::VERSION, &hello.version) {
            let reason = format!(
                "data plane version {} cannot be served by control plane {}; run data planes of version {}",
                hello.version,
                nio_proto::VERSION,
                nio_proto::VERSION
            );
            tracing::warn!(id = %hello.id, %reason, "data plane refused");
            self.fleet.refused(&hello, &reason);
            return Err(self.refuse(Status::failed_precondition(reason)));
        }
        let session = self.fleet.connected(&hello);
        tracing::info!(id = %hello.id, version = %hello.version, held_revision = hello.held_revision, "data plane connected");

        let labels: Labels = hello
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (tx, rx) = mpsc::channel(2);
        let stream = Stream {
            fleet: self.fleet.clone(),
            stats: self.stats.clone(),
            full_pushes: self.full_pushes.clone(),
            id: hello.id.clone(),
            session,
            tx,
            holds: None,
            revocation: self.pki.clone().zip(identity),
        };
        let updates = self.publisher.join(&labels);
        tokio::spawn(stream.run(inbound, updates, hello, held, (self.shutdown)()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

pub(crate) fn has_join_token<T>(token: &Token, request: &Request<T>) -> bool {
    bearer(
        request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes()),
    )
    .is_some_and(|t| token.matches(t))
}

/// The data plane a request's client certificate names. The TLS layer
/// already checked that it chains to the CA and is current.
pub(crate) fn client_identity<T>(pki: &Pki, request: &Request<T>) -> Result<Identity, Status> {
    let certs = request.peer_certs();
    let leaf = certs.as_ref().and_then(|c| c.first()).ok_or_else(|| {
        Status::unauthenticated(
            "no client certificate: a data plane enrolls with the join token first (Enrollment.Enroll), then connects with the certificate it received",
        )
    })?;
    pki.identify(leaf).map_err(Status::permission_denied)
}

/// `Enrollment`: issues data-plane certificates (see [`crate::pki`]).
pub struct EnrollmentService {
    pki: Arc<Pki>,
    join_token: Token,
}

impl EnrollmentService {
    pub fn new(pki: Arc<Pki>, join_token: Token) -> EnrollmentService {
        EnrollmentService { pki, join_token }
    }
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let peer = request.remote_addr();
        // A renewal presents the current certificate; a first enrollment
        // the join token.
        let renewal = match client_identity(&self.pki, &request) {
            Ok(identity) => Some(identity),
            Err(s) if s.code() == tonic::Code::Unauthenticated => None,
            Err(s) => {
                tracing::warn!(?peer, reason = %s.message(), "enrollment refused");
                return Err(s);
            }
        };
        if renewal.is_none() && !has_join_token(&self.join_token, &request) {
            tracing::warn!(?peer, "enrollment refused: missing or wrong join token");
            return Err(Status::unauthenticated(
                "join token missing or wrong; start the data plane with --join-token-file or NIO_JOIN_TOKEN",
            ));
        }
        let req = request.into_inner();
        validate_id(&req.id)?;
        if let Some(identity) = renewal.as_ref().filter(|i| i.id != req.id) {
            return Err(Status::permission_denied(format!(
                "a certificate for \"{}\" cannot renew \"{}\"",
                identity.id, req.id
            )));
        }
        let (certificate_pem, identity) = self
            .pki
            .issue(&req.id, &req.csr_pem)
            .map_err(Status::invalid_argument)?;
        tracing::info!(id = %req.id, expires = %identity.expires(), renewal = renewal.is_some(), "issued a data-plane certificate");
        Ok(Response::new(EnrollResponse {
            certificate_pem,
            ca_pem: self.pki.ca_pem.clone(),
        }))
    }
}

struct Stream {
    fleet: Arc<Fleet>,
    stats: Arc<SyncStats>,
    full_pushes: Arc<Semaphore>,
    id: String,
    session: u64,
    tx: mpsc::Sender<Result<ControlPlaneMessage, Status>>,
    /// What the data plane holds once it applies what we sent (None: unknown,
    /// send a full snapshot next).
    holds: Option<(u64, Arc<ResourceSet>)>,
    /// The stream's certificate: revoking it ends the stream.
    revocation: Option<(Arc<Pki>, Identity)>,
}

/// Deltas above this share of the full set are sent as full snapshots.
const DELTA_MAX_SHARE: f64 = 0.5;

impl Stream {
    async fn run(
        mut self,
        mut inbound: Streaming<DataPlaneMessage>,
        mut updates: tokio::sync::watch::Receiver<Arc<GroupUpdate>>,
        hello: Hello,
        held: Vec<((String, String), u64)>,
        mut shutdown: Shutdown,
    ) {
        let current = updates.borrow_and_update().clone();
        let first = if hello.held_hash == current.hash {
            self.stats.up_to_date.fetch_add(1, Ordering::Relaxed);
            self.holds = Some((current.revision, current.set.clone()));
            Some(control_plane_message::Msg::UpToDate(v1::UpToDate {
                revision: current.revision,
                hash: current.hash.clone(),
            }))
        } else if hello.held_revision > 0 && !held.is_empty() {
            let delta = current
                .set
                .delta_from(held, hello.held_revision, current.revision);
            Some(self.delta_or_full(delta, &current))
        } else {
            None
        };
        let sent = match first {
            Some(msg) => self.send(msg).await,
            None => self.send_full(&current).await,
        };
        if sent.is_err() {
            return self.fleet.disconnected(&self.id, self.session);
        }
        let revocation = self.revocation.clone();
        let revoked = async {
            match &revocation {
                Some((pki, identity)) => pki.revoked(identity).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(revoked);
        let reason = loop {
            tokio::select! {
                () = &mut revoked => {
                    let _ = self.tx.try_send(Err(Status::permission_denied(
                        "this data plane's certificate was revoked; enroll it again with the join token",
                    )));
                    break "certificate revoked".to_string();
                }
                () = &mut shutdown => {
                    let _ = self.tx.try_send(Err(Status::unavailable(
                        "control plane shutting down; reconnect later",
                    )));
                    break "control plane shutting down".to_string();
                }
                changed = updates.changed() => {
                    if changed.is_err() {
                        break "control plane shutting down".to_string();
                    }
                    let update = updates.borrow_and_update().clone();
                    self.stats.pushing(update.revision);
                    if self.push(&update).await.is_err() {
                        break "stream closed".to_string();
                    }
                }
                msg = tokio::time::timeout(IDLE_TIMEOUT, inbound.message()) => {
                    let msg = match msg {
                        Err(_) => break format!("silent for {IDLE_TIMEOUT:?}"),
                        Ok(Err(status)) => break format!("stream error: {}", status.message()),
                        Ok(Ok(None)) => break "stream ended".to_string(),
                        Ok(Ok(Some(m))) => m.msg,
                    };
                    match msg {
                        Some(data_plane_message::Msg::Goodbye(g)) => {
                            tracing::info!(id = %self.id, reason = %g.reason, "data plane left");
                            return self.fleet.left(&self.id, self.session);
                        }
                        Some(data_plane_message::Msg::Nack(n)) => {
                            tracing::warn!(id = %self.id, revision = n.revision, reason = %n.reason, resync = n.resync, "snapshot refused by data plane");
                            self.fleet.nacked(&self.id, self.session, n.revision, &n.reason);
                            // Never resend a refused revision; what the data
                            // plane holds is now unknown.
                            self.holds = None;
                            if n.resync {
                                let update = updates.borrow().clone();
                                if self.send_full(&update).await.is_err() {
                                    break "stream closed".to_string();
                                }
                            }
                        }
                        Some(data_plane_message::Msg::Ack(a)) => {
                            tracing::debug!(id = %self.id, revision = a.revision, "acknowledged");
                            self.stats.acked(a.revision);
                            self.fleet.acked(&self.id, self.session, a.revision, &a.hash);
                        }
                        _ => self.fleet.seen(&self.id, self.session),
                    }
                }
            }
        };
        tracing::info!(id = %self.id, %reason, "data plane disconnected");
        self.fleet.disconnected(&self.id, self.session);
    }

    fn delta_or_full(
        &mut self,
        delta: v1::Delta,
        update: &GroupUpdate,
    ) -> control_plane_message::Msg {
        let changes = delta.upserts.len() + delta.removals.len();
        if changes as f64 > DELTA_MAX_SHARE * update.set.len().max(1) as f64 {
            control_plane_message::Msg::Snapshot((*update.full()).clone())
        } else {
            control_plane_message::Msg::Delta(delta)
        }
    }

    /// Sends what the data plane needs to reach `update`.
    async fn push(&mut self, update: &GroupUpdate) -> Result<(), ()> {
        let msg = match (&self.holds, &update.delta) {
            (Some((rev, _)), _) if *rev == update.revision => return Ok(()),
            (Some((rev, _)), Some(d)) if *rev == d.from_revision => {
                control_plane_message::Msg::Delta((**d).clone())
            }
            (Some((rev, set)), _) => {
                let delta = update
                    .set
                    .delta_from_set(&set.clone(), *rev, update.revision);
                self.delta_or_full(delta, update)
            }
            (None, _) => return self.send_full(update).await,
        };
        self.holds = Some((update.revision, update.set.clone()));
        self.send(msg).await
    }

    async fn send_full(&mut self, update: &GroupUpdate) -> Result<(), ()> {
        // Bounds the full snapshots in flight during a reconnect storm.
        let _permit = self.full_pushes.acquire().await.map_err(|_| ())?;
        self.holds = Some((update.revision, update.set.clone()));
        let snapshot = (*update.full()).clone();
        self.stats.snapshot_bytes.store(
            prost::Message::encoded_len(&snapshot) as u64,
            Ordering::Relaxed,
        );
        self.send(control_plane_message::Msg::Snapshot(snapshot))
            .await
    }

    async fn send(&self, msg: control_plane_message::Msg) -> Result<(), ()> {
        let counter = match &msg {
            control_plane_message::Msg::Snapshot(_) => &self.stats.full_pushes,
            control_plane_message::Msg::Delta(_) => &self.stats.delta_pushes,
            control_plane_message::Msg::UpToDate(_) => &self.stats.up_to_date,
        };
        if !matches!(msg, control_plane_message::Msg::UpToDate(_)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.tx
            .send(Ok(ControlPlaneMessage { msg: Some(msg) }))
            .await
            .map_err(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::compatible;

    #[test]
    fn admission_bucket_refills_at_its_rate() {
        let mut bucket = super::TokenBucket {
            tokens: 2.0,
            rate: 1000.0,
            burst: 2.0,
            last: std::time::Instant::now(),
        };
        assert!(bucket.take() && bucket.take());
        assert!(!bucket.take(), "burst exhausted");
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(bucket.take(), "refilled");
    }

    #[test]
    fn version_skew() {
        assert!(compatible("0.1.0", "0.1.7"));
        assert!(!compatible("0.1.0", "0.2.0"));
        assert!(compatible("1.2.0", "1.0.3"));
        assert!(!compatible("1.2.0", "2.0.0"));
        assert!(!compatible("0.1.0", "banana"));
    }
}
