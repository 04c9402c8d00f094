//! The data plane's side of `ConfigSync`: keep one stream open to the
//! control plane, apply each snapshot, answer ACK or NACK.
//!
//! ```text
//! connect (mutual TLS with the certificate from enrollment, see
//!   [`crate::identity`]; or the join token to a plaintext control plane)
//!   ─▶ Hello{id, version, labels, held revision/hash}
//!   loop: Snapshot ─▶ decode + validate (nio-proto) ─▶ compile ─▶ swap ─▶ cache ─▶ Ack
//!                     └─ any failure ─▶ Nack(reason), keep serving the previous runtime
//! stream lost ─▶ jittered exponential backoff ─▶ reconnect (serving meanwhile)
//! ```
//!
//! Applying is the only writer of the runtime slot; the proxy only reads it.

use crate::cache::Cache;
use crate::identity::{self, Identity};
use crate::metrics::Metrics;
use crate::runtime::{compile, Runtime, RuntimeSlot};
use nio_proto::model::{Config, Kind};
use nio_proto::snapshot::{Holding, SnapshotError};
use nio_proto::v1::config_sync_client::ConfigSyncClient;
use nio_proto::v1::{control_plane_message, data_plane_message, DataPlaneMessage};
use nio_proto::v1::{Ack, Goodbye, Heartbeat, Hello, Nack};
use nio_proto::v1::{Delta, ResourceKey, Snapshot};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// `https://` (TLS, client certificate from enrollment) or `http://`
    /// (a control plane started with `--grpc-plaintext`).
    pub control_plane: String,
    /// Needed to enroll (first start, or after the certificate expired) and
    /// on every stream to a plaintext control plane.
    pub join_token: Option<String>,
    /// The CA the control plane's certificate chains to (PEM); `None`: the
    /// system roots.
    pub control_plane_ca: Option<String>,
    /// Where the data plane's certificate and key are kept.
    pub identity_dir: std::path::PathBuf,
    pub id: String,
    /// Announced in `Hello`; the control plane refuses versions it cannot serve.
    pub version: String,
    pub labels: HashMap<String, String>,
    pub heartbeat: Duration,
    /// Backoff between reconnects: from `min` doubling to `max`, each wait
    /// drawn uniformly from [backoff/2, backoff] so a restarted control
    /// plane is not hit by the whole fleet at once.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// What this data plane holds: the encoded resources with their versions
/// and digests (to check deltas, to say what it holds and to write the
/// cache). The decoded configuration is not kept: an update decodes what
/// it needs (see [`Applier::apply_delta`]) and drops it once compiled.
#[derive(Debug)]
struct Held {
    revision: u64,
    /// The set's content hash (verified when it arrived).
    hash: String,
    holding: Holding,
}

/// Why an update was refused, for the NACK.
#[derive(Debug)]
pub struct Refusal {
    pub reason: String,
    /// What we hold no longer matches what the control plane thinks.
    pub resync: bool,
}

impl Refusal {
    fn invalid(e: impl ToString) -> Refusal {
        Refusal {
            reason: e.to_string(),
            resync: false,
        }
    }

    fn diverged(e: impl ToString) -> Refusal {
        Refusal {
            reason: e.to_string(),
            resync: true,
        }
    }
}

fn write_cache(cache: &Cache, held: &Held) {
    if let Err(e) = cache.store(&held.holding, held.revision) {
        // Serving goes on; only a restart without the control plane would
        // miss this revision.
        tracing::warn!(error = %e, "cannot write the snapshot cache");
    }
}

/// Shortest time between two writes of the snapshot cache. A data plane
/// restarted without its control plane may serve a configuration up to this
/// old; with the control plane it catches up by delta anyway.
pub const CACHE_WRITE_INTERVAL: Duration = Duration::from_millis(500);

/// Applies updates: the only writer of the runtime slot.
pub struct Applier {
    pub slot: Arc<RuntimeSlot>,
    pub metrics: Arc<Metrics>,
    cache: Cache,
    /// Set once the control plane has confirmed (by an update or
    /// `UpToDate`) that this data plane serves its current configuration.
    pub synced: AtomicBool,
    held: Mutex<Option<Arc<Held>>>,
    /// The newest held state to write to the cache, off the sync path.
    persist: watch::Sender<Option<Arc<Held>>>,
}

impl Applier {
    /// Must be called inside a Tokio runtime: it starts the cache writer.
    pub fn new(slot: Arc<RuntimeSlot>, metrics: Arc<Metrics>, cache: Cache) -> Arc<Applier> {
        let (persist, mut pending) = watch::channel::<Option<Arc<Held>>>(None);
        let writer = cache.clone();
        tokio::spawn(async move {
            while pending.changed().await.is_ok() {
                let Some(held) = pending.borrow_and_update().clone() else {
                    continue;
                };
                let writer = writer.clone();
                let _ = tokio::task::spawn_blocking(move || write_cache(&writer, &held)).await;
                // At most one write per interval: a burst of updates costs
                // one write of the newest, not one per update.
                tokio::time::sleep(CACHE_WRITE_INTERVAL).await;
            }
        });
        Arc::new(Applier {
            slot,
            metrics,
            cache,
            synced: AtomicBool::new(false),
            held: Mutex::new(None),
            persist,
        })
    }

    fn held(&self) -> Option<Arc<Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Revision, hash and inventory for the `Hello`.
    pub fn holding(&self) -> (u64, String, Vec<ResourceKey>) {
        match self.held() {
            Some(h) => (h.revision, h.hash.clone(), h.holding.keys()),
            None => (0, String::new(), Vec::new()),
        }
    }

    /// A full snapshot: verify, decode and validate everything, install.
    pub fn apply_snapshot(&self, snapshot: &Snapshot) -> Result<Arc<Runtime>, Refusal> {
        let holding = Holding::from_snapshot(snapshot).map_err(Refusal::invalid)?;
        let config = holding.decode_all().map_err(Refusal::invalid)?;
        let held = Held {
            revision: snapshot.revision,
            hash: snapshot.hash.clone(),
            holding,
        };
        self.install(held, config, None)
    }

    /// A delta: it must start from what we hold and end at its hash. What
    /// it changed is decoded and validated, with what compiling and
    /// checking it needs:
    /// - every resource other than routes (backends, keys, verifiers,
    ///   certificates: what routes refer to);
    /// - the routes it upserts, and those on a backend it changes;
    /// - every route when it removes what routes refer to (to name any
    ///   route that still does) or changes a certificate (backends and
    ///   routes refer to those).
    ///
    /// So a delta of a few routes decodes a few routes, at 10 or 100,000.
    pub fn apply_delta(&self, delta: &Delta) -> Result<Arc<Runtime>, Refusal> {
        let held = self
            .held()
            .ok_or_else(|| Refusal::diverged("a delta arrived but nothing is held"))?;
        if held.revision != delta.from_revision {
            return Err(Refusal::diverged(SnapshotError::WrongBase {
                from: delta.from_revision,
                held: held.revision,
            }));
        }
        let holding = held.holding.apply(delta).map_err(|e| match e {
            SnapshotError::HashMismatch { .. } => Refusal::diverged(e),
            _ => Refusal::invalid(e),
        })?;
        let changed = nio_proto::snapshot::changed_by(delta);
        let previous = self.slot.load_full();
        let all_routes = changed.iter().any(|(kind, _)| *kind == Kind::Certificate)
            || delta.removals.iter().any(|k| {
                matches!(
                    Kind::from_kind_field(&k.kind),
                    Some(Kind::Backend | Kind::JwtVerifier)
                )
            });
        let named = |of: Kind| {
            changed
                .iter()
                .filter(move |(kind, _)| *kind == of)
                .map(|(_, name)| name.as_str())
        };
        let mut routes: HashSet<&str> = named(Kind::Route).collect();
        let backends: HashSet<&str> = named(Kind::Backend).collect();
        if let Some(previous) = previous.as_deref().filter(|_| !backends.is_empty()) {
            routes.extend(
                previous
                    .routes
                    .values()
                    .filter(|r| backends.contains(r.backend.name.as_str()))
                    .map(|r| &*r.name),
            );
        }
        let config = holding
            .decode_some(
                |kind| kind != Kind::Route || all_routes,
                routes.into_iter().map(|name| (Kind::Route, name)),
            )
            .map_err(Refusal::invalid)?;
        nio_proto::snapshot::validate_delta(&config, &changed).map_err(Refusal::invalid)?;
        let held = Held {
            revision: delta.revision,
            hash: delta.hash.clone(),
            holding,
        };
        self.install(held, config, Some(&changed))
    }

    /// Compiles `config` and swaps it in; `changed`: what a delta changed
    /// (None for a full snapshot). The decoded configuration and whatever
    /// the swap freed are given back to the system before this returns (a
    /// one-route delta at 10,000 routes took 0.7–0.8 ms with or without).
    fn install(
        &self,
        held: Held,
        config: Config,
        changed: Option<&[(Kind, String)]>,
    ) -> Result<Arc<Runtime>, Refusal> {
        let installed = self.swap_in(held, &config, changed);
        drop(config);
        crate::memory::release_freed();
        installed
    }

    fn swap_in(
        &self,
        held: Held,
        config: &Config,
        changed: Option<&[(Kind, String)]>,
    ) -> Result<Arc<Runtime>, Refusal> {
        let previous = self.slot.load_full();
        let runtime = compile(
            config,
            held.revision,
            &held.hash,
            previous.as_deref(),
            changed,
        )
        .map_err(Refusal::invalid)?;
        let runtime = Arc::new(runtime);
        self.slot.store(Some(runtime.clone()));
        self.metrics
            .revision
            .store(held.revision, Ordering::Relaxed);
        self.metrics
            .snapshots_applied
            .fetch_add(1, Ordering::Relaxed);
        let held = Arc::new(held);
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(held);
        Ok(runtime)
    }

    /// Queues the held state for the cache (written in the background).
    pub fn persist(&self) {
        self.persist.send_replace(self.held());
    }

    /// Writes the held state to the cache now (on a clean shutdown).
    pub fn write_cache(&self) {
        if let Some(held) = self.held() {
            write_cache(&self.cache, &held);
        }
    }

    /// Boots from the cached snapshot, if any. Returns its revision.
    pub fn load_cache(&self) -> Option<u64> {
        let loaded = self.cache.load().and_then(|s| match s {
            None => Ok(None),
            Some(s) => self.apply_snapshot(&s).map(Some).map_err(|r| r.reason),
        });
        match loaded {
            Ok(None) => None,
            Ok(Some(rt)) => {
                tracing::info!(
                    revision = rt.revision,
                    routes = rt.route_count,
                    "serving the cached configuration"
                );
                Some(rt.revision)
            }
            Err(e) => {
                tracing::warn!(error = %e, "ignoring the snapshot cache");
                None
            }
        }
    }
}

/// Connects, syncs and reconnects until `leave` turns true; then says
/// goodbye on the open stream (if any) and returns.
pub async fn run(opts: SyncOptions, applier: Arc<Applier>, mut leave: watch::Receiver<bool>) {
    let mut backoff = opts.backoff_min;
    loop {
        let mut connected = false;
        match session(&opts, &applier, &mut connected, &mut leave).await {
            Ok(Ended::Left) => return,
            Ok(Ended::ByControlPlane) => {
                tracing::info!("control plane closed the stream; reconnecting")
            }
            Ok(Ended::Renewed) => {
                applier.metrics.sync_connected.store(0, Ordering::Relaxed);
                backoff = opts.backoff_min;
                continue;
            }
            Err(SessionError::Refused(msg)) => {
                tracing::error!(reason = %msg, "control plane refused this data plane")
            }
            Err(SessionError::Lost(msg)) => {
                tracing::warn!(reason = %msg, "lost the control plane; serving the last configuration")
            }
        }
        applier.metrics.sync_connected.store(0, Ordering::Relaxed);
        if connected {
            backoff = opts.backoff_min;
        }
        let wait = jitter(backoff);
        tracing::debug!(?wait, "reconnecting after backoff");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = leaving(&mut leave) => return,
        }
        backoff = (backoff * 2).min(opts.backoff_max);
    }
}

fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + half.mul_f64(rand::random::<f64>())
}

pub(crate) async fn leaving(leave: &mut watch::Receiver<bool>) {
    let _ = leave.wait_for(|l| *l).await;
}

enum Ended {
    ByControlPlane,
    Left,
    /// A renewed certificate: reconnect at once to present it.
    Renewed,
}

pub(crate) enum SessionError {
    Refused(String),
    Lost(String),
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Refused(m) | SessionError::Lost(m) => f.write_str(m),
        }
    }
}

impl From<tonic::Status> for SessionError {
    fn from(s: tonic::Status) -> Self {
        match s.code() {
            tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied
            | tonic::Code::FailedPrecondition
            | tonic::Code::InvalidArgument => SessionError::Refused(s.message().to_string()),
            _ => SessionError::Lost(format!("{}: {}", s.code(), s.message())),
        }
    }
}

/// A channel to the control plane: mutual TLS with the stored certificate
/// (enrolling first with the join token when there is none usable and
/// `enroll` allows it), or plaintext for an `http://` URL.
pub(crate) async fn connect(
    opts: &SyncOptions,
    enroll: bool,
) -> Result<(Channel, Option<Identity>), SessionError> {
    let endpoint = Endpoint::from_shared(opts.control_plane.clone())
        .map_err(|e| SessionError::Refused(format!("bad control plane URL: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let open = |endpoint: Endpoint| async move {
        endpoint.connect().await.map_err(|e| {
            SessionError::Lost(format!(
                "connect {}: {}",
                opts.control_plane,
                crate::proxy::error_chain(&e)
            ))
        })
    };
    let tls = opts.control_plane.starts_with("https://");
    let (channel, identity) = if tls {
        let server_tls = match &opts.control_plane_ca {
            Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        let with_tls = |t: ClientTlsConfig| {
            endpoint
                .clone()
                .tls_config(t)
                .map_err(|e| SessionError::Refused(format!("TLS to the control plane: {e}")))
        };
        let identity = match Identity::load(&opts.identity_dir)
            .filter(|i| i.usable_for(&opts.id, opts.control_plane_ca.as_deref()))
        {
            Some(identity) => identity,
            None => {
                let token = opts.join_token.as_deref().filter(|_| enroll);
                let Some(token) = token else {
                    return Err(SessionError::Refused(format!(
                        "no usable certificate in {} (none, expired, or for another id) and no join token to enroll with; start with --join-token-file or NIO_JOIN_TOKEN",
                        opts.identity_dir.display()
                    )));
                };
                let channel = open(with_tls(server_tls.clone())?).await?;
                identity::enroll(channel, &opts.id, Some(token), &opts.identity_dir).await?
            }
        };
        let mutual = server_tls.identity(tonic::transport::Identity::from_pem(
            &identity.cert_pem,
            &identity.key_pem,
        ));
        (open(with_tls(mutual)?).await?, Some(identity))
    } else {
        (open(endpoint).await?, None)
    };
    Ok((channel, identity))
}

async fn session(
    opts: &SyncOptions,
    applier: &Applier,
    connected: &mut bool,
    leave: &mut watch::Receiver<bool>,
) -> Result<Ended, SessionError> {
    let (channel, identity) = connect(opts, true).await?;
    let mut client = ConfigSyncClient::new(channel.clone())
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(usize::MAX);

    let (tx, rx) = mpsc::channel::<DataPlaneMessage>(16);
    let (held_revision, held_hash, held_resources) = applier.holding();
    let hello = Hello {
        id: opts.id.clone(),
        version: opts.version.clone(),
        labels: opts.labels.clone(),
        held_revision,
        held_hash,
        held_resources,
    };
    let send = |m: data_plane_message::Msg| DataPlaneMessage { msg: Some(m) };
    // The channel was just created with room to spare.
    let _ = tx.try_send(send(data_plane_message::Msg::Hello(hello)));

    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    // Without TLS the join token authenticates every stream; with TLS the
    // certificate does, and the token never goes on the wire again.
    if identity.is_none() {
        let token = opts.join_token.as_deref().ok_or_else(|| {
            SessionError::Refused(
                "no join token: start with --join-token-file or NIO_JOIN_TOKEN".into(),
            )
        })?;
        let auth = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            SessionError::Refused("the join token contains invalid characters".into())
        })?;
        request.metadata_mut().insert("authorization", auth);
    }
    let mut inbound = client.sync(request).await?.into_inner();
    tracing::info!(control_plane = %opts.control_plane, id = %opts.id, "connected to the control plane");
    applier.metrics.sync_connected.store(1, Ordering::Relaxed);
    *connected = true;

    let heartbeat = {
        let tx = tx.clone();
        let every = opts.heartbeat;
        let metrics = applier.metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let applied_revision = metrics.revision.load(Ordering::Relaxed);
                let msg = send(data_plane_message::Msg::Heartbeat(Heartbeat {
                    applied_revision,
                }));
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
        })
    };
    // Renewal: at two thirds of the certificate's life, over this mutual-TLS
    // channel; then a new stream presents the new certificate. A failed
    // renewal is tried again a minute later.
    let mut renew_at = identity.as_ref().map_or(Duration::MAX, Identity::renew_in);
    let result = async {
        loop {
            let msg = tokio::select! {
                msg = inbound.message() => msg?,
                () = tokio::time::sleep(renew_at) => {
                    match identity::enroll(channel.clone(), &opts.id, None, &opts.identity_dir).await {
                        Ok(_) => return Ok(Ended::Renewed),
                        Err(e) => {
                            tracing::warn!(error = %e.message(), "could not renew the data-plane certificate; trying again in a minute");
                            renew_at = Duration::from_secs(60);
                            continue;
                        }
                    }
                }
                () = leaving(leave) => {
                    let bye = send(data_plane_message::Msg::Goodbye(Goodbye {
                        reason: "shutting down".into(),
                    }));
                    if tx.send(bye).await.is_ok() {
                        // Give the control plane a moment to read it.
                        let _ = tokio::time::timeout(Duration::from_secs(2), inbound.message()).await;
                    }
                    return Ok(Ended::Left);
                }
            };
            let Some(msg) = msg else {
                return Ok(Ended::ByControlPlane);
            };
            let update = match msg.msg {
                Some(control_plane_message::Msg::UpToDate(u)) => {
                    applier.synced.store(true, Ordering::Relaxed);
                    tracing::info!(revision = u.revision, "already serving the current configuration");
                    let ack = send(data_plane_message::Msg::Ack(Ack { revision: u.revision, hash: u.hash }));
                    if tx.send(ack).await.is_err() {
                        return Err(SessionError::Lost("stream closed".into()));
                    }
                    continue;
                }
                Some(update) => update,
                None => continue,
            };
            // Compiling a large configuration is CPU work: keep it off the
            // threads that serve requests.
            let m = &applier.metrics;
            let started = std::time::Instant::now();
            let (revision, applied) = tokio::task::block_in_place(|| match &update {
                control_plane_message::Msg::Snapshot(s) => {
                    m.full_updates.fetch_add(1, Ordering::Relaxed);
                    (s.revision, applier.apply_snapshot(s))
                }
                control_plane_message::Msg::Delta(d) => {
                    m.delta_updates.fetch_add(1, Ordering::Relaxed);
                    (d.revision, applier.apply_delta(d))
                }
                control_plane_message::Msg::UpToDate(u) => (u.revision, Err(Refusal::invalid("unexpected"))),
            });
            let reply = match applied {
                Ok(rt) => {
                    applier.synced.store(true, Ordering::Relaxed);
                    let apply_us = started.elapsed().as_micros() as u64;
                    tracing::info!(revision, routes = rt.route_count, apply_us, "configuration applied");
                    data_plane_message::Msg::Ack(Ack { revision, hash: rt.hash.clone() })
                }
                Err(r) => {
                    applier.metrics.snapshots_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(revision, reason = %r.reason, resync = r.resync, "configuration refused; keeping the previous one");
                    data_plane_message::Msg::Nack(Nack { revision, reason: r.reason, resync: r.resync })
                }
            };
            let acked = matches!(reply, data_plane_message::Msg::Ack(_));
            if tx.send(send(reply)).await.is_err() {
                return Err(SessionError::Lost("stream closed".into()));
            }
            if acked {
                applier.persist();
            }
        }
    }
    .await;
    heartbeat.abort();
    result
}
