//! Starts the admin API and the gRPC sync service over one store and serves
//! until `shutdown` resolves; then closes data-plane streams with
//! `UNAVAILABLE` (they reconnect with backoff) and flushes the store.

use crate::admin::{self, AdminState, Peer};
use crate::events::{EventLog, Retention};
use crate::exporters::Exporters;
use crate::fleet::Fleet;
use crate::pki::{Pki, PkiError, PkiOptions};
use crate::publisher::{PublishOptions, Publisher};
use crate::store::{Store, StoreError};
use crate::sync::{AdmissionOptions, EnrollmentService, SyncService, SyncStats};
use crate::telemetry::{FeedService, TelemetryService};
use crate::tokens::{Token, TokenError};
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use nio_proto::v1::config_sync_server::ConfigSyncServer;
use nio_proto::v1::enrollment_server::EnrollmentServer;
use nio_proto::v1::event_feed_server::EventFeedServer;
use nio_proto::v1::telemetry_server::TelemetryServer;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Identity, ServerTlsConfig};

#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    pub admin_listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    /// From `NIO_ADMIN_TOKEN`; otherwise the `admin-token` file is used.
    pub admin_token: Option<String>,
    /// From `NIO_JOIN_TOKEN`; otherwise the `join-token` file is used.
    pub join_token: Option<String>,
    pub publish: PublishOptions,
    pub admission: AdmissionOptions,
    /// TLS on the gRPC listener with the control plane's CA (data planes
    /// enroll, then use mutual TLS); `None`: plaintext, join token on every
    /// stream (`--grpc-plaintext`, for local development).
    pub grpc_tls: Option<PkiOptions>,
    /// Certificate and key files for the admin API; `None`: plain HTTP.
    pub admin_tls: Option<(PathBuf, PathBuf)>,
    /// How long and how many events the event log keeps.
    pub retention: Retention,
    /// Events a feed consumer may fall behind before it is cut off.
    pub feed_max_lag: u64,
    /// From `NIO_FEED_TOKEN`; otherwise the `feed-token` file is used.
    pub feed_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot open the store in {path}: {source}. If another control plane is running on this data dir, stop it; if the store is damaged, move the data dir aside and restore the last backup into a fresh one (nio-control-plane restore --data-dir <new dir> --from <backup>; see docs/security.md)"
    )]
    Store { path: PathBuf, source: StoreError },
    #[error("flushing the store on shutdown: {0}")]
    Flush(StoreError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("TLS: {0}")]
    Pki(#[from] PkiError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{what} server failed: {reason}")]
    Serve { what: &'static str, reason: String },
}

/// Largest snapshot the control plane will encode or accept on the stream.
pub const MAX_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

pub async fn run(
    opts: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let dir_err = |source| ServerError::DataDir {
        path: opts.data_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&opts.data_dir).map_err(dir_err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&opts.data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(dir_err)?;
    }
    let store_dir = opts.data_dir.join("store");
    let store = Arc::new(
        Store::open(&store_dir).map_err(|source| ServerError::Store {
            path: store_dir.clone(),
            source,
        })?,
    );
    let (admin_token, src) = Token::load_or_create(
        opts.admin_token,
        "NIO_ADMIN_TOKEN",
        &opts.data_dir,
        "admin-token",
    )?;
    tracing::info!(source = %src, "admin token loaded");
    let (join_token, src) = Token::load_or_create(
        opts.join_token,
        "NIO_JOIN_TOKEN",
        &opts.data_dir,
        "join-token",
    )?;
    tracing::info!(source = %src, "data-plane join token loaded");
    tracing::info!(
        revision = store.current().revision,
        resources = store.current().config.len(),
        "store opened"
    );

    let pki = match &opts.grpc_tls {
        Some(pki_opts) => Some(Arc::new(Pki::load_or_create(&opts.data_dir, pki_opts)?)),
        None => {
            tracing::warn!("gRPC without TLS (--grpc-plaintext): join tokens and configuration, keys included, cross the network in clear; for local development only");
            None
        }
    };
    let (feed_token, src) = Token::load_or_create(
        opts.feed_token.clone(),
        "NIO_FEED_TOKEN",
        &opts.data_dir,
        "feed-token",
    )?;
    tracing::info!(source = %src, "event feed token loaded");
    let events =
        EventLog::open(&store, opts.retention.clone()).map_err(|source| ServerError::Store {
            path: store_dir.clone(),
            source,
        })?;
    events.start_retention();
    tokio::spawn(certificate_alerts(store.clone(), events.clone()));
    let exporters = Arc::new(Exporters::default());
    tokio::spawn(crate::exporters::supervise(
        store.clone(),
        events.clone(),
        exporters.clone(),
    ));
    let fleet = Arc::new(Fleet::new(Some(events.clone())));
    let quotas = crate::quotas::Quotas::open(store.clone(), events.clone()).map_err(|source| {
        ServerError::Store {
            path: store_dir.clone(),
            source,
        }
    })?;
    tokio::spawn({
        let quotas = quotas.clone();
        async move {
            let mut daily = tokio::time::interval(Duration::from_secs(86_400));
            loop {
                daily.tick().await;
                let q = quotas.clone();
                let _ = tokio::task::spawn_blocking(move || q.prune()).await;
            }
        }
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let admin_listener = bind(opts.admin_listen).await?;
    let grpc_listener = bind(opts.grpc_listen).await?;
    tracing::info!(addr = %local(&admin_listener), "admin API listening");
    tracing::info!(
        url = %format!(
            "{}://{}/ui/",
            if opts.admin_tls.is_some() { "https" } else { "http" },
            local(&admin_listener)
        ),
        "web console"
    );
    tracing::info!(addr = %local(&grpc_listener), "gRPC sync listening");

    let publisher = Publisher::new(store.clone(), opts.publish);
    let publisher_task = tokio::spawn(publisher.clone().run(stopped()));
    let stats = Arc::new(SyncStats::default());
    let app = admin::router(AdminState {
        store: store.clone(),
        fleet: fleet.clone(),
        stats: stats.clone(),
        admin_token: admin_token.clone(),
        pki: pki.clone(),
        events: events.clone(),
        exporters,
        quotas: quotas.clone(),
        stopping: stopping(stopped.clone()),
    });
    let admin = match &opts.admin_tls {
        None => tokio::spawn(
            axum::serve(
                admin_listener,
                app.into_make_service_with_connect_info::<Peer>(),
            )
            .with_graceful_shutdown(stopped())
            .into_future(),
        ),
        Some((cert, key)) => {
            let config = admin_tls_config(cert, key)?;
            tracing::info!("admin API serves TLS");
            tokio::spawn(
                axum::serve(
                    TlsListener::new(admin_listener, config),
                    app.into_make_service_with_connect_info::<Peer>(),
                )
                .with_graceful_shutdown(stopped())
                .into_future(),
            )
        }
    };

    let enrollment = pki
        .clone()
        .map(|pki| EnrollmentServer::new(EnrollmentService::new(pki, join_token.clone())));
    let telemetry = TelemetryServer::new(TelemetryService {
        log: events.clone(),
        quotas,
        fleet: fleet.clone(),
        pki: pki.clone(),
        join_token: join_token.clone(),
        stopping: stopping(stopped.clone()),
    })
    .max_decoding_message_size(64 * 1024 * 1024);
    let feed = EventFeedServer::new(FeedService {
        log: events.clone(),
        admin_token,
        feed_token,
        max_lag: opts.feed_max_lag,
        stopping: stopping(stopped.clone()),
    });
    let sync = SyncService::new(
        publisher,
        fleet,
        join_token,
        pki.clone(),
        stats,
        opts.admission,
        stopped.clone(),
    );
    let mut grpc_server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(pki) = &pki {
        // Client certificates are optional at the TLS layer (a data plane
        // enrolls before it has one); ConfigSync.Sync requires one.
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                &pki.server_cert_pem,
                &pki.server_key_pem,
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(&pki.ca_pem))
            .client_auth_optional(true);
        grpc_server = grpc_server
            .tls_config(tls)
            .map_err(|e| ServerError::Serve {
                what: "gRPC",
                reason: format!("TLS: {e}"),
            })?;
    }
    let grpc = tokio::spawn(
        grpc_server
            .add_optional_service(enrollment)
            .add_service(telemetry)
            .add_service(feed)
            .add_service(
                // Full snapshots carry their own gzip, compressed once per
                // group; deltas are small. Per-message gzip would cost a
                // compression per data plane and message.
                ConfigSyncServer::new(sync)
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(MAX_MESSAGE_SIZE)
                    .max_encoding_message_size(MAX_MESSAGE_SIZE),
            )
            .serve_with_incoming_shutdown(
                // No Nagle: small pushes and ACKs must not wait for a delayed ACK.
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                stopped(),
            ),
    );

    shutdown.await;
    tracing::info!("shutting down: closing data-plane streams and the admin API");
    let _ = stop_tx.send(true);
    let admin = admin.await;
    let grpc = grpc.await;
    let _ = publisher_task.await;
    store.flush().await.map_err(ServerError::Flush)?;
    tracing::info!("store flushed; bye");
    match admin {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(serve_err("admin", e)),
        Err(e) => return Err(serve_err("admin", e)),
    }
    match grpc {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(serve_err("gRPC", e)),
        Err(e) => Err(serve_err("gRPC", e)),
    }
}

/// A [`crate::telemetry::Stopping`] from the shutdown signal.
fn stopping<F, Fut>(stopped: F) -> crate::telemetry::Stopping
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move || Box::pin(stopped()))
}

fn serve_err(what: &'static str, e: impl std::fmt::Display) -> ServerError {
    ServerError::Serve {
        what,
        reason: e.to_string(),
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

fn local(l: &TcpListener) -> String {
    l.local_addr().map(|a| a.to_string()).unwrap_or_default()
}

fn admin_tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &Path, reason: String| ServerError::Serve {
        what: "admin API",
        reason: format!("{}: {reason}", what.display()),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(cert, format!("not a PEM certificate chain: {e}")))?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| bad(key, format!("not a PEM private key: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key_der))
    .map_err(|e| bad(cert, e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The admin listener with TLS: each handshake runs in its own task (a
/// slow client cannot hold up the others, and gets 10 s), and finished
/// connections are handed to axum.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> TlsListener {
        let local = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = tcp.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(Duration::from_secs(10), handshake).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "admin TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener {
            ready,
            local,
            accepting,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Alerts for certificates that expire within 14 days: at start, then
/// every hour, once a day per certificate.
async fn certificate_alerts(store: Arc<Store>, events: Arc<EventLog>) {
    use nio_proto::model::AnyResource;
    let mut told: std::collections::HashMap<String, std::time::Instant> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let now = std::time::SystemTime::now();
        for r in store.current().config.iter() {
            let AnyResource::Certificate(c) = r else {
                continue;
            };
            let Ok(info) = c.spec.info() else { continue };
            let Ok(not_after) = humantime::parse_rfc3339(&info.not_after) else {
                continue;
            };
            let left = not_after.duration_since(now).unwrap_or_default();
            let name = &c.metadata.name;
            if left > Duration::from_secs(14 * 24 * 3600)
                || told
                    .get(name)
                    .is_some_and(|at| at.elapsed() < Duration::from_secs(24 * 3600))
            {
                continue;
            }
            told.insert(name.clone(), std::time::Instant::now());
            let (severity, what) = if left.is_zero() {
                ("critical", "has expired".to_string())
            } else {
                (
                    "warning",
                    format!("expires in {} days", left.as_secs() / 86_400),
                )
            };
            events.append(vec![crate::events::alert(
                "certificate-expiring",
                severity,
                &format!("certificate/{name}"),
                format!(
                    "certificate {name} ({}) {what} ({})",
                    info.subject, info.not_after
                ),
            )]);
        }
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}
