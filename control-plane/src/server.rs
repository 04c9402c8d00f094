//! Starts the admin API and the gRPC sync service over one store and serves
//! until `shutdown` resolves; then closes data-plane streams with
//! `UNAVAILABLE` (they reconnect with backoff) and flushes the store.

use crate::admin::{self, AdminState};
use crate::fleet::Fleet;
use crate::publisher::{PublishOptions, Publisher};
use crate::store::{Store, StoreError};
use crate::sync::{AdmissionOptions, SyncService, SyncStats};
use crate::tokens::{Token, TokenError};
use nio_proto::v1::config_sync_server::ConfigSyncServer;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::codec::CompressionEncoding;

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

    let fleet = Arc::new(Fleet::default());
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
    tracing::info!(addr = %local(&grpc_listener), "gRPC sync listening");

    let publisher = Publisher::new(store.clone(), opts.publish);
    let publisher_task = tokio::spawn(publisher.clone().run(stopped()));
    let stats = Arc::new(SyncStats::default());
    let app = admin::router(AdminState {
        store: store.clone(),
        fleet: fleet.clone(),
        stats: stats.clone(),
        admin_token,
    });
    let admin = tokio::spawn(
        axum::serve(
            admin_listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stopped())
        .into_future(),
    );

    let sync = SyncService::new(
        publisher,
        fleet,
        join_token,
        stats,
        opts.admission,
        stopped.clone(),
    );
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
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
