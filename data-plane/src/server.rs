//! Listeners and lifecycle: the proxy listeners (HTTP, and HTTPS with TLS
//! terminated by [`crate::tls`]), the ops listener
//! (`/healthz`, `/readyz`, `/metrics`), the sync task, and the drain on
//! shutdown (stop accepting, report not ready, let requests in flight
//! finish within the drain deadline).

use crate::access_log::AccessLog;
use crate::body::ClientBody;
use crate::cache::Cache;
use crate::events::{self, ReportOptions};
use crate::forwarded::Peer;
use crate::front;
use crate::metrics::Metrics;
use crate::proxy::{Proxy, ProxyBody, ProxyOptions};
use crate::runtime::RuntimeSlot;
use crate::stall::WriteStall;
use crate::sync::{self, Applier, SyncOptions};
use crate::tls::TlsConn;
use crate::validate::{ConnFacts, HeadVerdict, Limits, Scan};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::LazyConfigAcceptor;

#[derive(Debug, Clone)]
pub struct Options {
    pub http_listen: SocketAddr,
    /// The HTTPS listener (TLS terminated with the snapshot's
    /// Certificates).
    pub https_listen: Option<SocketAddr>,
    pub ops_listen: SocketAddr,
    pub cache_dir: PathBuf,
    pub sync: SyncOptions,
    /// Events and counters reported to the control plane.
    pub report: ReportOptions,
    pub proxy: ProxyOptions,
    /// How long requests in flight may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// How long to keep accepting after reporting not ready, so load
    /// balancers that watch `/readyz` stop sending first.
    pub drain_delay: Duration,
    /// With a cached configuration, how long to wait for the control plane
    /// to confirm it is current before reporting ready anyway.
    pub startup_sync_timeout: Duration,
    /// How long a client may leave response bytes unread before its
    /// connection is closed.
    pub send_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cache dir {path}: {source}")]
    CacheDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Serves until `shutdown` resolves, then drains.
pub async fn run(
    opts: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let cache = Cache::new(&opts.cache_dir).map_err(|source| ServerError::CacheDir {
        path: opts.cache_dir.clone(),
        source,
    })?;
    let slot = Arc::new(RuntimeSlot::empty());
    let metrics = Arc::new(Metrics::default());
    let applier = Applier::new(slot.clone(), metrics.clone(), cache);
    applier.load_cache();
    let started = Instant::now();

    let http = bind(opts.http_listen).await?;
    let https = match opts.https_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let ops = bind(opts.ops_listen).await?;
    tracing::info!(addr = %local(&http), "proxy listening");
    if let Some(https) = &https {
        tracing::info!(addr = %local(https), "https listening");
    }
    tracing::info!(addr = %local(&ops), "ops listening");

    let (leave_tx, leave_rx) = watch::channel(false);
    let report_task = events::start(
        opts.report.clone(),
        opts.sync.clone(),
        metrics.clone(),
        slot.clone(),
        leave_rx.clone(),
    );
    let sync_task = tokio::spawn(sync::run(opts.sync.clone(), applier.clone(), leave_rx));
    let draining = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    // The ops listener outlives the drain: /readyz must say "draining" (and
    // /metrics stay scrapeable) until the process is about to exit.
    let (ops_stop_tx, ops_stop_rx) = watch::channel(false);

    let health = Health {
        applier: applier.clone(),
        draining: draining.clone(),
        started,
        startup_sync_timeout: opts.startup_sync_timeout,
    };
    let ops_task = tokio::spawn(serve_ops(ops, health, metrics.clone(), ops_stop_rx));
    let access_log = Arc::new(
        AccessLog::start(&opts.proxy.access_log, metrics.clone())
            .await
            .map_err(ServerError::AccessLog)?,
    );
    let mut proxy_opts = opts.proxy.clone();
    if proxy_opts.https_port.is_none() {
        proxy_opts.https_port = https
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port());
    }
    let proxy = Arc::new(Proxy::new(
        slot.clone(),
        metrics,
        draining.clone(),
        proxy_opts,
        access_log,
    ));
    let limits = &opts.proxy.limits;
    let admission = Arc::new(Admission::new(limits));
    if limits.memory_limit > 0 {
        tokio::spawn(watch_memory(
            limits.memory_limit,
            admission.memory.clone(),
            stop_rx.clone(),
        ));
    }
    let listeners = std::iter::once((http, None)).chain(https.map(|l| (l, Some(slot.clone()))));
    let proxy_tasks: Vec<_> = listeners
        .map(|(listener, tls)| {
            tokio::spawn(serve_proxy(
                listener,
                tls,
                proxy.clone(),
                limits.clone(),
                admission.clone(),
                stop_rx.clone(),
                opts.drain_timeout,
                opts.send_timeout,
            ))
        })
        .collect();

    // Drain: not ready at once; keep serving (with Connection: close) for
    // the drain delay; stop accepting; let requests in flight finish within
    // the drain timeout; say goodbye to the control plane; exit.
    shutdown.await;
    tracing::info!(drain_delay = ?opts.drain_delay, drain_timeout = ?opts.drain_timeout, "shutting down: draining");
    draining.store(true, Ordering::Relaxed);
    tokio::time::sleep(opts.drain_delay).await;
    let _ = stop_tx.send(true);
    for task in proxy_tasks {
        let _ = task.await;
    }
    let _ = leave_tx.send(true);
    let _ = tokio::task::spawn_blocking(move || applier.write_cache()).await;
    if tokio::time::timeout(Duration::from_secs(3), sync_task)
        .await
        .is_err()
    {
        tracing::warn!("could not say goodbye to the control plane in time");
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), report_task).await;
    let _ = ops_stop_tx.send(true);
    let _ = ops_task.await;
    tracing::info!("drained; bye");
    Ok(())
}

/// What `/readyz` looks at.
struct Health {
    applier: Arc<Applier>,
    draining: Arc<AtomicBool>,
    started: Instant,
    startup_sync_timeout: Duration,
}

impl Health {
    /// Ready when not draining and serving a configuration that the control
    /// plane confirmed current — or, if it cannot be reached, a cached one
    /// once the startup wait is over.
    fn readiness(&self) -> Result<u64, &'static str> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining");
        }
        let Some(rt) = self.applier.slot.load_full() else {
            return Err("no configuration yet");
        };
        let synced = self.applier.synced.load(Ordering::Relaxed);
        if !synced && self.started.elapsed() < self.startup_sync_timeout {
            return Err("waiting for the control plane to confirm the cached configuration");
        }
        Ok(rt.revision)
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

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// hyper's connection settings. HTTP/1: header count (431 above), a read
/// buffer of twice the head limit (the scanner answers 431 exactly at the
/// limit; hyper only checks its buffer between reads), and an idle/head deadline a second after the scanner's own 408
/// (see [`crate::validate`]). HTTP/2: concurrent streams, header list size,
/// and a cap on streams a client opens and resets at once (the "rapid
/// reset" attack, CVE-2023-44487).
fn conn_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .max_headers(limits.max_headers)
        .max_buf_size((2 * limits.max_header_bytes).max(8192))
        .header_read_timeout(limits.header_read_timeout + Duration::from_secs(1));
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024);
    b
}

/// Connection and request limits shared by the HTTP and HTTPS listeners,
/// and the memory level that sheds load.
struct Admission {
    connections: Arc<Semaphore>,
    requests: Arc<Semaphore>,
    max_connections: usize,
    max_requests: usize,
    /// 0: fine, 1: above 80 % of --memory-limit-mb, 2: above it.
    memory: Arc<AtomicU8>,
}

impl Admission {
    fn new(limits: &Limits) -> Admission {
        let (max_connections, max_requests) =
            (limits.max_connections.max(1), limits.max_requests.max(1));
        Admission {
            connections: Arc::new(Semaphore::new(max_connections)),
            requests: Arc::new(Semaphore::new(max_requests)),
            max_connections,
            max_requests,
            memory: Arc::new(AtomicU8::new(0)),
        }
    }
}

/// Serves connections of one listener: plain, or TLS when `tls` holds the
/// slot its certificates come from.
struct Connections {
    proxy: Arc<Proxy>,
    limits: Limits,
    builder: auto::Builder<TokioExecutor>,
    front: front::Settings,
    admission: Arc<Admission>,
    send_timeout: Duration,
}

/// What one client connection's requests share.
struct Conn {
    connections: Arc<Connections>,
    facts: Arc<ConnFacts>,
    peer: Arc<Peer>,
    tls: Option<Arc<TlsConn>>,
}

impl Connections {
    /// Serves one accepted (and, for HTTPS, handshaken) connection: with
    /// our own HTTP/1.1 server ([`front`]) until a request it does not
    /// take, then with hyper. `alive` is held until the connection ends
    /// (the drain waits for all of them).
    fn serve<S>(
        self: &Arc<Self>,
        stream: S,
        client: SocketAddr,
        permit: OwnedSemaphorePermit,
        tls: Option<Arc<TlsConn>>,
        mut stop: watch::Receiver<bool>,
        alive: mpsc::Sender<()>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let facts = Arc::new(ConnFacts::default());
        let conn = Arc::new(Conn {
            connections: self.clone(),
            facts: facts.clone(),
            peer: Arc::new(Peer::new(
                client,
                if tls.is_some() { "https" } else { "http" },
            )),
            tls,
        });
        let timeout_proxy = self.proxy.clone();
        let stream = WriteStall::new(stream, self.send_timeout);
        let stream = Scan::new(stream, &self.limits, facts)
            .on_timeout(move || timeout_proxy.header_timed_out());
        let settings = self.front;
        tokio::spawn(async move {
            let ended = front::serve(stream, settings, |req| conn.respond(req), &mut stop).await;
            if let front::Ended::HandOff(stream) = ended {
                let service_conn = conn.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let resp = service_conn.respond(req.map(Some));
                    async move { Ok::<_, Infallible>(resp.await) }
                });
                let served = conn
                    .connections
                    .builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service);
                tokio::pin!(served);
                let result = tokio::select! {
                    result = served.as_mut() => result,
                    _ = stop.changed() => {
                        served.as_mut().graceful_shutdown();
                        served.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, %client, "connection ended with an error");
                }
            }
            drop((permit, alive));
        });
    }
}

impl Conn {
    /// Answers one request, from either server.
    fn respond(
        self: &Arc<Self>,
        mut req: Request<ClientBody>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static {
        let this = self.connections.clone();
        if req.version() <= http::Version::HTTP_11 {
            // Borrowed in the common origin-form case (no copy per request).
            let target: std::borrow::Cow<'_, str> = match req.uri().path_and_query() {
                Some(pq) if req.uri().authority().is_none() => pq.as_str().into(),
                _ => req.uri().to_string().into(),
            };
            // Only a refusal goes in the extensions (a first insert
            // allocates them).
            let verdict = self.facts.next_verdict(req.method().as_str(), &target);
            if let Some(v @ HeadVerdict(Some(_))) = verdict {
                req.extensions_mut().insert::<HeadVerdict>(v);
            }
        }
        if let Some(tls) = &self.tls {
            req.extensions_mut().insert(tls.clone());
        }
        let memory = this.admission.memory.load(Ordering::Relaxed);
        let peer = self.peer.clone();
        async move {
            let a = &this.admission;
            // Over --max-requests in flight, or over the memory
            // watermark: 503 with Retry-After.
            let permit = a.requests.try_acquire();
            let (Ok(_permit), false) = (permit, memory >= 2) else {
                return this.proxy.overloaded(&req);
            };
            // Above 80 % of either limit, HTTP/1.1 connections are not
            // kept alive: clients spread over other data planes (or
            // reconnect later) before requests have to be refused.
            let pressure = a.requests.available_permits() < a.max_requests / 5
                || a.connections.available_permits() < a.max_connections / 5
                || memory >= 1;
            let http1 = req.version() <= http::Version::HTTP_11;
            let mut resp = this.proxy.serve(req, peer).await;
            if http1 && (pressure || this.proxy.closes_for_drain(&resp)) {
                if pressure {
                    this.proxy.keepalive_shed();
                }
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            resp
        }
    }
}

/// The TLS handshake of an HTTPS connection: the ClientHello is read
/// first, so the configuration (certificates, client authentication) is
/// the one current now for its SNI.
async fn handshake(
    slot: &RuntimeSlot,
    tcp: TcpStream,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, TlsConn), String> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
        .await
        .map_err(|e| format!("reading the ClientHello: {e}"))?;
    let sni = start.client_hello().server_name().map(str::to_string);
    let tls = slot
        .load_full()
        .and_then(|rt| rt.tls.clone())
        .ok_or("no certificate is configured (create a Certificate with a privateKey)")?;
    let stream = start
        .into_stream(tls.config_for(sni.as_deref()))
        .await
        .map_err(|e| format!("handshake for {sni:?}: {e}"))?;
    let conn = tls.connection(sni.as_deref(), stream.get_ref().1.peer_certificates());
    Ok((stream, conn))
}

#[allow(clippy::too_many_arguments)]
async fn serve_proxy(
    listener: TcpListener,
    tls: Option<Arc<RuntimeSlot>>,
    proxy: Arc<Proxy>,
    limits: Limits,
    admission: Arc<Admission>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
    send_timeout: Duration,
) {
    // Each connection holds a sender; the drain waits until all are gone.
    let (alive, mut all_gone) = mpsc::channel::<()>(1);
    let connections = Arc::new(Connections {
        builder: conn_builder(&limits),
        front: front::Settings {
            max_headers: limits.max_headers,
            max_head: limits.max_header_bytes,
            idle: limits.header_read_timeout + Duration::from_secs(1),
        },
        proxy: proxy.clone(),
        limits,
        admission: admission.clone(),
        send_timeout,
    });
    loop {
        let (stream, client) = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Over --max-connections: closed at once (dropping the stream).
        let Ok(permit) = admission.connections.clone().try_acquire_owned() else {
            proxy.connection_refused();
            tracing::debug!(%client, "connection limit reached; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (conn_stop, conn_alive) = (stop.clone(), alive.clone());
        let Some(slot) = &tls else {
            connections.serve(stream, client, permit, None, conn_stop, conn_alive);
            continue;
        };
        let (slot, connections) = (slot.clone(), connections.clone());
        tokio::spawn(async move {
            let deadline = connections.limits.header_read_timeout;
            match tokio::time::timeout(deadline, handshake(&slot, stream)).await {
                Ok(Ok((stream, conn))) => {
                    let tls = Some(Arc::new(conn));
                    connections.serve(stream, client, permit, tls, conn_stop, conn_alive);
                }
                Ok(Err(e)) => {
                    connections.proxy.tls_handshake_failed();
                    tracing::debug!(%client, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    connections.proxy.tls_handshake_failed();
                    tracing::debug!(%client, "TLS handshake timed out");
                }
            }
        });
    }
    drop((listener, alive));
    if tokio::time::timeout(drain, all_gone.recv()).await.is_err() {
        tracing::warn!(
            ?drain,
            "drain deadline passed; closing remaining connections"
        );
    }
}

/// Reads the process's resident memory every 200 ms and sets `level`: 2
/// above `limit`, 1 above 80 % of it, 0 below.
async fn watch_memory(limit: u64, level: Arc<AtomicU8>, mut stop: watch::Receiver<bool>) {
    let page = 4096u64;
    loop {
        let rss = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |pages| pages * page);
        let now = if rss > limit {
            2
        } else {
            u8::from(rss > limit / 5 * 4)
        };
        if level.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(rss, limit, level = now, "memory watermark changed");
        }
        tokio::select! {
            () = stopped(&mut stop) => return,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

async fn serve_ops(
    listener: TcpListener,
    health: Health,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let health = Arc::new(health);
    loop {
        let (stream, _) = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let (health, metrics) = (health.clone(), metrics.clone());
        let service = service_fn(move |req: Request<Incoming>| {
            let resp = ops_response(req.uri().path(), &health, &metrics);
            async move { Ok::<_, Infallible>(resp) }
        });
        tokio::spawn(async move {
            let _ = conn_builder(&Limits::default())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn ops_response(path: &str, health: &Health, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" => match health.readiness() {
            Ok(revision) => (
                StatusCode::OK,
                "text/plain",
                format!("ready: revision {revision}\n"),
            ),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => {
            let runtime = health.applier.slot.load_full();
            let mut text = metrics.render(runtime.iter().flat_map(|rt| rt.route_stats()));
            if let Some(rt) = &runtime {
                crate::upstream::render_metrics(&rt.backends, &mut text);
            }
            (StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}
