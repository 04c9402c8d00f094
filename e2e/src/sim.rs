//! Simulated data planes: real `ConfigSync` streams that speak the protocol
//! like `nio-data-plane` does (Hello with inventory, ACK each update,
//! heartbeats) without proxying anything. Used by the tests (version skew,
//! protocol checks) and by the fleet benchmark, which runs a thousand.
//!
//! A sim either *verifies* (keeps the resources, applies deltas and checks
//! the hash like a real data plane) or *trusts* (keeps only revision and
//! hash, so a thousand of them fit in little memory).

use anyhow::{Context, Result};
use nio_proto::snapshot::ResourceSet;
use nio_proto::v1::config_sync_client::ConfigSyncClient;
use nio_proto::v1::{self, control_plane_message, data_plane_message, DataPlaneMessage};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub id: String,
    pub version: String,
    pub labels: HashMap<String, String>,
    pub join_token: String,
    pub verify: bool,
    /// Refuse every update (NACK without resync), like a data plane that
    /// cannot compile what it is sent.
    pub refuse: bool,
}

impl SimOptions {
    /// A trusting sim of this build's version, without labels.
    pub fn new(id: impl Into<String>, join_token: impl Into<String>) -> SimOptions {
        SimOptions {
            id: id.into(),
            version: nio_proto::VERSION.into(),
            labels: HashMap::new(),
            join_token: join_token.into(),
            verify: false,
            refuse: false,
        }
    }
}

/// What sims report: (sim id, message kind, revision, when).
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub kind: &'static str,
    pub revision: u64,
    pub at: Instant,
}

/// The state a sim holds between sessions.
#[derive(Debug, Default, Clone)]
pub struct Holding {
    pub revision: u64,
    pub hash: String,
    pub set: Option<ResourceSet>,
    /// Inventory announced on reconnect (shared by trusting sims).
    pub inventory: Arc<Vec<v1::ResourceKey>>,
}

pub async fn connect(url: &str) -> Result<Channel> {
    Ok(Channel::from_shared(url.to_string())?.connect().await?)
}

/// Runs one stream until it ends. Returns the error status of the stream
/// if the control plane refused or closed it.
pub async fn run(
    channel: Channel,
    opts: SimOptions,
    holding: Arc<Mutex<Holding>>,
    report: mpsc::UnboundedSender<Received>,
) -> Result<(), tonic::Status> {
    let mut client = ConfigSyncClient::new(channel)
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel(16);
    let h = holding.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let hello = v1::Hello {
        id: opts.id.clone(),
        version: opts.version.clone(),
        labels: opts.labels.clone(),
        held_revision: h.revision,
        held_hash: h.hash.clone(),
        held_resources: match &h.set {
            Some(set) => set.keys(),
            None => h.inventory.as_ref().clone(),
        },
    };
    let msg = |m| DataPlaneMessage { msg: Some(m) };
    let _ = tx.try_send(msg(data_plane_message::Msg::Hello(hello)));
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let auth = format!("Bearer {}", opts.join_token)
        .parse()
        .map_err(|_| tonic::Status::invalid_argument("bad token"))?;
    req.metadata_mut().insert("authorization", auth);
    let mut inbound = client.sync(req).await?.into_inner();
    while let Some(m) = inbound.message().await? {
        let at = Instant::now();
        let Some(m) = m.msg else { continue };
        let (kind, revision, reply) = {
            let mut h = holding.lock().unwrap_or_else(|p| p.into_inner());
            let (kind, revision, result) = match m {
                control_plane_message::Msg::UpToDate(u) => ("up_to_date", u.revision, Ok(u.hash)),
                control_plane_message::Msg::Snapshot(s) => {
                    let r = if opts.verify {
                        ResourceSet::from_snapshot(&s).map(|set| {
                            h.set = Some(set);
                            s.hash.clone()
                        })
                    } else {
                        Ok(s.hash.clone())
                    };
                    ("full", s.revision, r)
                }
                control_plane_message::Msg::Delta(d) => {
                    let r = match (&h.set, opts.verify) {
                        (Some(set), true) => set.apply(&d).map(|next| {
                            h.set = Some(next);
                            d.hash.clone()
                        }),
                        _ => Ok(d.hash.clone()),
                    };
                    ("delta", d.revision, r)
                }
            };
            let reply = match result {
                _ if opts.refuse && kind != "up_to_date" => {
                    data_plane_message::Msg::Nack(v1::Nack {
                        revision,
                        reason: "refused by the test".into(),
                        resync: false,
                    })
                }
                Ok(hash) => {
                    h.revision = revision;
                    h.hash = hash.clone();
                    data_plane_message::Msg::Ack(v1::Ack { revision, hash })
                }
                Err(e) => data_plane_message::Msg::Nack(v1::Nack {
                    revision,
                    reason: e.to_string(),
                    resync: true,
                }),
            };
            (kind, revision, reply)
        };
        let _ = report.send(Received {
            id: opts.id.clone(),
            kind,
            revision,
            at,
        });
        if tx.send(msg(reply)).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Starts a sim in the background and returns its first report.
pub async fn start_one(
    url: &str,
    opts: SimOptions,
) -> Result<(
    Arc<Mutex<Holding>>,
    mpsc::UnboundedReceiver<Received>,
    tokio::task::JoinHandle<Result<(), tonic::Status>>,
)> {
    let channel = connect(url)
        .await
        .context("connecting to the control plane")?;
    let holding = Arc::new(Mutex::new(Holding::default()));
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(channel, opts, holding.clone(), tx));
    Ok((holding, rx, task))
}
