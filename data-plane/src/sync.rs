//! The data plane's side of `ConfigSync`: keep one stream open to the
//! control plane, apply each snapshot, answer ACK or NACK.
//!
//! ```text
//! connect (join token) ─▶ Hello{id, version, labels, held revision/hash}
//!   loop: Snapshot ─▶ decode + validate (nio-proto) ─▶ compile ─▶ swap ─▶ cache ─▶ Ack
//!                     └─ any failure ─▶ Nack(reason), keep serving the previous runtime
//! stream lost ─▶ jittered exponential backoff ─▶ reconnect (serving meanwhile)
//! ```
//!
//! Applying is the only writer of the runtime slot; the proxy only reads it.

use crate::cache::Cache;
use crate::metrics::Metrics;
use crate::runtime::{compile, Runtime, RuntimeSlot};
use nio_proto::v1::config_sync_client::ConfigSyncClient;
use nio_proto::v1::{control_plane_message, data_plane_message, DataPlaneMessage, Snapshot};
use nio_proto::v1::{Ack, Goodbye, Heartbeat, Hello, Nack};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataValue;
use tonic::transport::Endpoint;

#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub control_plane: String,
    pub join_token: String,
    pub id: String,
    pub labels: HashMap<String, String>,
    pub heartbeat: Duration,
    /// Backoff between reconnects: from `min` doubling to `max`, each wait
    /// drawn uniformly from [backoff/2, backoff] so a restarted control
    /// plane is not hit by the whole fleet at once.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// Shared by the sync task and the rest of the data plane.
pub struct Applier {
    pub slot: Arc<RuntimeSlot>,
    pub metrics: Arc<Metrics>,
    pub cache: Cache,
    /// Set once the control plane has confirmed (by a snapshot or
    /// `UpToDate`) that this data plane serves its current configuration.
    pub synced: AtomicBool,
}

impl Applier {
    /// Decodes, validates, compiles and swaps in `snapshot`; persists it.
    /// On error nothing changes and the reason is returned for the NACK.
    pub fn apply(&self, snapshot: &Snapshot, persist: bool) -> Result<Arc<Runtime>, String> {
        let config = nio_proto::snapshot::decode(snapshot).map_err(|e| e.to_string())?;
        let previous = self.slot.load_full();
        let runtime = compile(
            &config,
            snapshot.revision,
            &snapshot.hash,
            previous.as_deref(),
            &self.metrics,
        )
        .map_err(|e| e.to_string())?;
        let runtime = Arc::new(runtime);
        self.slot.store(Some(runtime.clone()));
        self.metrics
            .retain_routes(|name| config.get(nio_proto::model::Kind::Route, name).is_some());
        self.metrics
            .revision
            .store(snapshot.revision, Ordering::Relaxed);
        self.metrics
            .snapshots_applied
            .fetch_add(1, Ordering::Relaxed);
        if persist {
            if let Err(e) = self.cache.store(snapshot) {
                // Serving goes on; only a restart without the control plane
                // would miss this revision.
                tracing::warn!(error = %e, dir = %self.cache.dir().display(), "cannot write the snapshot cache");
            }
        }
        Ok(runtime)
    }

    /// Boots from the cached snapshot, if any. Returns its revision.
    pub fn load_cache(&self) -> Option<u64> {
        match self.cache.load() {
            Ok(None) => None,
            Ok(Some(snapshot)) => match self.apply(&snapshot, false) {
                Ok(rt) => {
                    tracing::info!(
                        revision = rt.revision,
                        routes = rt.route_count,
                        "serving the cached configuration"
                    );
                    Some(rt.revision)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring the cached snapshot");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable snapshot cache");
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

async fn leaving(leave: &mut watch::Receiver<bool>) {
    let _ = leave.wait_for(|l| *l).await;
}

enum Ended {
    ByControlPlane,
    Left,
}

enum SessionError {
    Refused(String),
    Lost(String),
}

impl From<tonic::Status> for SessionError {
    fn from(s: tonic::Status) -> Self {
        match s.code() {
            tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied
            | tonic::Code::InvalidArgument => SessionError::Refused(s.message().to_string()),
            _ => SessionError::Lost(format!("{}: {}", s.code(), s.message())),
        }
    }
}

async fn session(
    opts: &SyncOptions,
    applier: &Applier,
    connected: &mut bool,
    leave: &mut watch::Receiver<bool>,
) -> Result<Ended, SessionError> {
    let endpoint = Endpoint::from_shared(opts.control_plane.clone())
        .map_err(|e| SessionError::Refused(format!("bad control plane URL: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| SessionError::Lost(format!("connect {}: {e}", opts.control_plane)))?;
    let mut client = ConfigSyncClient::new(channel)
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(usize::MAX);

    let (tx, rx) = mpsc::channel::<DataPlaneMessage>(16);
    let held = applier.slot.load_full();
    let hello = Hello {
        id: opts.id.clone(),
        version: nio_proto::VERSION.to_string(),
        labels: opts.labels.clone(),
        held_revision: held.as_ref().map_or(0, |r| r.revision),
        held_hash: held.as_ref().map_or_else(String::new, |r| r.hash.clone()),
    };
    let send = |m: data_plane_message::Msg| DataPlaneMessage { msg: Some(m) };
    // The channel was just created with room to spare.
    let _ = tx.try_send(send(data_plane_message::Msg::Hello(hello)));

    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let auth = MetadataValue::try_from(format!("Bearer {}", opts.join_token))
        .map_err(|_| SessionError::Refused("the join token contains invalid characters".into()))?;
    request.metadata_mut().insert("authorization", auth);
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
    let result = async {
        loop {
            let msg = tokio::select! {
                msg = inbound.message() => msg?,
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
            let snapshot = match msg.msg {
                Some(control_plane_message::Msg::Snapshot(s)) => s,
                Some(control_plane_message::Msg::UpToDate(u)) => {
                    applier.synced.store(true, Ordering::Relaxed);
                    tracing::info!(revision = u.revision, "already serving the current configuration");
                    let ack = send(data_plane_message::Msg::Ack(Ack { revision: u.revision, hash: u.hash }));
                    if tx.send(ack).await.is_err() {
                        return Err(SessionError::Lost("stream closed".into()));
                    }
                    continue;
                }
                None => continue,
            };
            let revision = snapshot.revision;
            // Compiling a large configuration is CPU work: keep it off the
            // threads that serve requests.
            let reply = match apply_blocking(applier, snapshot).await {
                Ok(hash) => {
                    applier.synced.store(true, Ordering::Relaxed);
                    tracing::info!(revision, "configuration applied");
                    data_plane_message::Msg::Ack(Ack { revision, hash })
                }
                Err(reason) => {
                    applier.metrics.snapshots_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(revision, %reason, "configuration refused; keeping the previous one");
                    data_plane_message::Msg::Nack(Nack { revision, reason })
                }
            };
            if tx.send(send(reply)).await.is_err() {
                return Err(SessionError::Lost("stream closed".into()));
            }
        }
    }
    .await;
    heartbeat.abort();
    result
}

async fn apply_blocking(applier: &Applier, snapshot: Snapshot) -> Result<String, String> {
    tokio::task::block_in_place(|| applier.apply(&snapshot, true)).map(|rt| rt.hash.clone())
}
