//! The `ConfigSync` gRPC service: one bidirectional stream per data plane.
//!
//! ```text
//! DP ── Hello{id, version, labels, held revision/hash} ──▶ CP  (auth: join token)
//! DP ◀── Snapshot(current) ─────────────────────────────── CP  (unless DP holds it)
//! DP ── Ack(rev, hash) | Nack(rev, reason) | Heartbeat ──▶ CP  (fleet view updated)
//! DP ◀── Snapshot(every later revision, pushed on write) ── CP
//! ```
//!
//! Each stream is served by one spawned task that waits on the store's
//! `watch` channel and on the data plane's messages; it only ever holds the
//! newest revision, so a slow data plane skips intermediate ones rather than
//! making the control plane buffer them. Snapshots are encoded once per
//! revision and shared by all streams.

use crate::fleet::{Fleet, Hello};
use crate::store::{State, Store};
use crate::tokens::{bearer, Token};
use nio_proto::v1::config_sync_server::ConfigSync;
use nio_proto::v1::{self, Snapshot};
use nio_proto::v1::{
    control_plane_message, data_plane_message, ControlPlaneMessage, DataPlaneMessage,
};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// How long a stream may stay silent (data planes heartbeat more often)
/// before the control plane considers the data plane gone.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

type Shutdown = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

pub struct SyncService {
    store: Arc<Store>,
    fleet: Arc<Fleet>,
    join_token: Token,
    encoded: Arc<SnapshotCache>,
    /// Makes a future that resolves when the control plane shuts down.
    shutdown: Arc<dyn Fn() -> Shutdown + Send + Sync>,
}

/// The snapshot of the latest revision, encoded once.
#[derive(Default)]
struct SnapshotCache(Mutex<Option<Arc<Snapshot>>>);

impl SnapshotCache {
    fn get(&self, state: &State) -> Arc<Snapshot> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &*slot {
            Some(s) if s.revision == state.revision => s.clone(),
            _ => {
                let s = Arc::new(nio_proto::snapshot::encode(&state.config, state.revision));
                *slot = Some(s.clone());
                s
            }
        }
    }
}

impl SyncService {
    pub fn new<F, Fut>(
        store: Arc<Store>,
        fleet: Arc<Fleet>,
        join_token: Token,
        shutdown: F,
    ) -> SyncService
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        SyncService {
            store,
            fleet,
            join_token,
            encoded: Arc::default(),
            shutdown: Arc::new(move || Box::pin(shutdown())),
        }
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
        let presented = bearer(
            request
                .metadata()
                .get("authorization")
                .map(|v| v.as_bytes()),
        );
        if !presented.is_some_and(|t| self.join_token.matches(t)) {
            tracing::warn!(peer = ?request.remote_addr(), "data plane refused: missing or wrong join token");
            return Err(Status::unauthenticated(
                "join token missing or wrong; start the data plane with --join-token-file or NIO_JOIN_TOKEN",
            ));
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
        let hello = Hello {
            id: h.id,
            version: h.version,
            labels: h.labels,
            address,
            held_revision: h.held_revision,
            held_hash: h.held_hash,
        };
        let session = self.fleet.connected(&hello);
        tracing::info!(id = %hello.id, version = %hello.version, held_revision = hello.held_revision, "data plane connected");

        let (tx, rx) = mpsc::channel(2);
        let stream = Stream {
            store: self.store.clone(),
            fleet: self.fleet.clone(),
            encoded: self.encoded.clone(),
            hello,
            session,
            tx,
        };
        tokio::spawn(stream.run(inbound, (self.shutdown)()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Stream {
    store: Arc<Store>,
    fleet: Arc<Fleet>,
    encoded: Arc<SnapshotCache>,
    hello: Hello,
    session: u64,
    tx: mpsc::Sender<Result<ControlPlaneMessage, Status>>,
}

impl Stream {
    async fn run(self, mut inbound: Streaming<DataPlaneMessage>, mut shutdown: Shutdown) {
        let id = self.hello.id.clone();
        let mut states = self.store.subscribe();
        let current = states.borrow_and_update().clone();
        let held = self.encoded.get(&current);
        // A data plane that already serves the current revision gets nothing.
        let up_to_date =
            self.hello.held_revision == current.revision && self.hello.held_hash == held.hash;
        let first = if up_to_date {
            control_plane_message::Msg::UpToDate(v1::UpToDate {
                revision: current.revision,
                hash: held.hash.clone(),
            })
        } else {
            control_plane_message::Msg::Snapshot((*held).clone())
        };
        if self
            .tx
            .send(Ok(ControlPlaneMessage { msg: Some(first) }))
            .await
            .is_err()
        {
            return self.fleet.disconnected(&id, self.session);
        }
        let mut sent = current.revision;
        let reason = loop {
            tokio::select! {
                () = &mut shutdown => {
                    let _ = self.tx.try_send(Err(Status::unavailable(
                        "control plane shutting down; reconnect later",
                    )));
                    break "control plane shutting down".to_string();
                }
                changed = states.changed() => {
                    if changed.is_err() {
                        break "control plane shutting down".to_string();
                    }
                    let state = states.borrow_and_update().clone();
                    if state.revision != sent {
                        if self.send(&state).await.is_err() {
                            break "stream closed".to_string();
                        }
                        sent = state.revision;
                    }
                }
                msg = tokio::time::timeout(IDLE_TIMEOUT, inbound.message()) => {
                    match msg {
                        Err(_) => break format!("silent for {IDLE_TIMEOUT:?}"),
                        Ok(Err(status)) => break format!("stream error: {}", status.message()),
                        Ok(Ok(None)) => break "stream ended".to_string(),
                        Ok(Ok(Some(DataPlaneMessage { msg: Some(data_plane_message::Msg::Goodbye(g)) }))) => {
                            tracing::info!(id = %id, reason = %g.reason, "data plane left");
                            return self.fleet.left(&id, self.session);
                        }
                        Ok(Ok(Some(m))) => self.handle(m),
                    }
                }
            }
        };
        tracing::info!(id = %id, %reason, "data plane disconnected");
        self.fleet.disconnected(&id, self.session);
    }

    async fn send(&self, state: &State) -> Result<(), ()> {
        let snapshot = (*self.encoded.get(state)).clone();
        tracing::debug!(id = %self.hello.id, revision = snapshot.revision, "pushing snapshot");
        self.tx
            .send(Ok(ControlPlaneMessage {
                msg: Some(control_plane_message::Msg::Snapshot(snapshot)),
            }))
            .await
            .map_err(|_| ())
    }

    fn handle(&self, msg: DataPlaneMessage) {
        let id = &self.hello.id;
        match msg.msg {
            Some(data_plane_message::Msg::Ack(v1::Ack { revision, hash })) => {
                tracing::debug!(%id, revision, "snapshot acknowledged");
                self.fleet.acked(id, self.session, revision, &hash);
            }
            Some(data_plane_message::Msg::Nack(v1::Nack { revision, reason })) => {
                tracing::warn!(%id, revision, %reason, "snapshot refused by data plane");
                self.fleet.nacked(id, self.session, revision, &reason);
            }
            Some(
                data_plane_message::Msg::Heartbeat(_)
                | data_plane_message::Msg::Hello(_)
                | data_plane_message::Msg::Goodbye(_),
            )
            | None => {
                self.fleet.seen(id, self.session);
            }
        }
    }
}
