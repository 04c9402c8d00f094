//! `nio-data-plane`: flags and logging around [`nio_data_plane::server::run`].

use anyhow::Context;
use clap::Parser;
use nio_data_plane::access_log::Sink;
use nio_data_plane::events::ReportOptions;
use nio_data_plane::forwarded::TrustedProxies;
use nio_data_plane::identity::Identity;
use nio_data_plane::proxy::ProxyOptions;
use nio_data_plane::server::{self, Options};
use nio_data_plane::sync::SyncOptions;
use nio_data_plane::validate::{Limits, Underscores};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Most per-request allocations are small and short-lived; mimalloc's
/// thread-local free lists serve them with a fraction of glibc malloc's
/// instructions (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "nio-data-plane",
    version,
    about = "Nio data plane: HTTP proxy configured by the control plane",
    after_help = "Environment only:\n  NIO_JOIN_TOKEN  the join token itself (instead of --join-token-file)"
)]
struct Args {
    /// Stable identity in the fleet. Default: kept in the cache dir, created
    /// from the host name and a random suffix on first start.
    #[arg(long, env = "NIO_DP_ID")]
    id: Option<String>,
    /// Control plane gRPC URL: https:// (mutual TLS with a certificate
    /// from the control plane's CA) or http:// (a control plane started
    /// with --grpc-plaintext).
    #[arg(
        long,
        env = "NIO_CONTROL_PLANE",
        default_value = "https://127.0.0.1:9001"
    )]
    control_plane: String,
    /// The CA of the control plane's gRPC certificate (PEM): the control
    /// plane writes it to <data dir>/pki/ca.pem. Default: the system roots.
    #[arg(long, env = "NIO_CONTROL_PLANE_CA")]
    control_plane_ca: Option<PathBuf>,
    /// File holding the join token (or set NIO_JOIN_TOKEN). Needed to
    /// enroll; a data plane with a certificate in its cache dir
    /// reconnects without it.
    #[arg(long, env = "NIO_JOIN_TOKEN_FILE")]
    join_token_file: Option<PathBuf>,
    /// Proxy listener.
    #[arg(long, env = "NIO_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    http_listen: SocketAddr,
    /// HTTPS listener: TLS terminated with the Certificates of the
    /// configuration, chosen by SNI. Off unless given (e.g. 0.0.0.0:8443).
    #[arg(long, env = "NIO_HTTPS_LISTEN")]
    https_listen: Option<SocketAddr>,
    /// The port put in redirects to HTTPS (routes with tls.redirectHttp)
    /// when clients reach the HTTPS listener on another port than its own
    /// (behind NAT or a Kubernetes Service). Default: the listener's port.
    #[arg(long, env = "NIO_HTTPS_REDIRECT_PORT")]
    https_redirect_port: Option<u16>,
    /// Ops listener: /healthz, /readyz, /metrics.
    #[arg(long, env = "NIO_OPS_LISTEN", default_value = "127.0.0.1:9100")]
    ops_listen: SocketAddr,
    /// Where the last good snapshot and the generated id are kept.
    #[arg(long, env = "NIO_CACHE_DIR", default_value = "./nio-cache")]
    cache_dir: PathBuf,
    /// Labels, `k=v,k2=v2`.
    #[arg(long, env = "NIO_LABELS", default_value = "")]
    labels: String,
    /// Seconds requests in flight may take to finish on SIGTERM.
    #[arg(long, env = "NIO_DRAIN_TIMEOUT", default_value_t = 30)]
    drain_timeout: u64,
    /// Seconds to keep accepting after reporting not ready on SIGTERM (for
    /// load balancers that watch /readyz; Kubernetes uses a preStop hook).
    #[arg(long, env = "NIO_DRAIN_DELAY", default_value_t = 0)]
    drain_delay: u64,
    /// Seconds a data plane started from its cache waits for the control
    /// plane to confirm the configuration before reporting ready anyway.
    #[arg(long, env = "NIO_STARTUP_SYNC_TIMEOUT", default_value_t = 5)]
    startup_sync_timeout: u64,
    /// Peers (CIDRs, comma-separated) whose X-Forwarded-For/-Proto/-Host and
    /// Forwarded headers are believed, e.g. the load balancer in front.
    /// From anyone else those headers are replaced.
    #[arg(long, env = "NIO_TRUSTED_PROXIES", default_value = "")]
    trusted_proxies: TrustedProxies,
    /// Access log: stdout, off, or a file to append to (one JSON line per
    /// request; routes can opt out with accessLog: false).
    #[arg(long, env = "NIO_ACCESS_LOG", default_value = "stdout")]
    access_log: Sink,
    /// Seconds a client may leave response bytes unread before its
    /// connection is closed (so a stalled reader cannot hold a backend).
    #[arg(long, env = "NIO_SEND_TIMEOUT", default_value_t = 60)]
    send_timeout: u64,
    /// Largest request head (request line plus headers) in bytes; larger
    /// ones are answered 431. Also the HTTP/2 max header list size. At
    /// least 8192.
    #[arg(long, env = "NIO_MAX_HEADER_BYTES", default_value_t = 60 * 1024)]
    max_header_bytes: usize,
    /// Most header fields in one request; more are answered 431.
    #[arg(long, env = "NIO_MAX_HEADERS", default_value_t = 100)]
    max_headers: usize,
    /// Longest request target (path and query) in bytes; longer ones are
    /// answered 414.
    #[arg(long, env = "NIO_MAX_URI_LENGTH", default_value_t = 8 * 1024)]
    max_uri_length: usize,
    /// Request headers whose name contains an underscore: drop (removed
    /// before forwarding) or reject (400).
    #[arg(long, env = "NIO_HEADER_UNDERSCORES", default_value = "drop")]
    header_underscores: Underscores,
    /// Seconds a client has to send a whole request head once it started
    /// one (then 408 and the connection is closed); idle keep-alive
    /// connections are closed a second later.
    #[arg(long, env = "NIO_HEADER_READ_TIMEOUT", default_value_t = 10)]
    header_read_timeout: u64,
    /// Most open client connections on the proxy listener; more are closed
    /// at accept.
    #[arg(long, env = "NIO_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Most requests handled at once; more are answered 503 with
    /// Retry-After: 1 (counted in nio_overloaded_requests_total).
    #[arg(long, env = "NIO_MAX_REQUESTS", default_value_t = 10_000)]
    max_requests: usize,
    /// Resident memory in MiB above which requests are shed with 503 (and
    /// above 80 % of it keep-alive is turned off); 0: no watermark.
    #[arg(long, env = "NIO_MEMORY_LIMIT_MB", default_value_t = 0)]
    memory_limit_mb: u64,
    /// Most concurrent streams on one HTTP/2 connection.
    #[arg(long, env = "NIO_H2_MAX_CONCURRENT_STREAMS", default_value_t = 100)]
    h2_max_concurrent_streams: u32,
    /// Events kept while the control plane is away (the oldest are
    /// dropped, and counted, beyond).
    #[arg(long, env = "NIO_EVENT_BUFFER", default_value_t = 50_000)]
    event_buffer: usize,
    /// Milliseconds between reports (events, counters, quota usage) to the control
    /// plane.
    #[arg(long, env = "NIO_REPORT_INTERVAL_MS", default_value_t = 1000)]
    report_interval_ms: u64,
    /// Threads that serve requests; 0: one per CPU the process may use.
    #[arg(long, env = "NIO_WORKER_THREADS", default_value_t = 0)]
    worker_threads: usize,
    /// Log format: text or json (level from RUST_LOG, default info).
    #[arg(long, env = "NIO_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);
    let join_token = match (&args.join_token_file, std::env::var("NIO_JOIN_TOKEN")) {
        (Some(f), _) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the join token file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, Ok(t)) => Some(t.trim().to_string()),
        (None, Err(_)) => None,
    };
    std::fs::create_dir_all(&args.cache_dir)
        .with_context(|| format!("creating the cache dir {}", args.cache_dir.display()))?;
    let id = match args.id {
        Some(id) => id,
        None => stable_id(&args.cache_dir)?,
    };
    let control_plane_ca = match &args.control_plane_ca {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the control plane CA {}", f.display()))?,
        ),
        None => None,
    };
    let tls = args.control_plane.starts_with("https://");
    let enrolled = Identity::load(&args.cache_dir)
        .is_some_and(|i| i.usable_for(&id, control_plane_ca.as_deref()));
    if join_token.is_none() && !(tls && enrolled) {
        anyhow::bail!(
            "no join token: pass --join-token-file (the control plane writes one to its data dir as join-token) or set NIO_JOIN_TOKEN{}",
            if tls { " (a data plane that enrolled before reconnects with the certificate in its cache dir, but there is none usable)" } else { "" }
        );
    }
    let opts = Options {
        http_listen: args.http_listen,
        https_listen: args.https_listen,
        ops_listen: args.ops_listen,
        cache_dir: args.cache_dir.clone(),
        sync: SyncOptions {
            control_plane: args.control_plane,
            join_token,
            control_plane_ca,
            identity_dir: args.cache_dir.clone(),
            id,
            version: nio_proto::VERSION.to_string(),
            labels: parse_labels(&args.labels)?,
            heartbeat: Duration::from_secs(5),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
        },
        report: ReportOptions {
            buffer: args.event_buffer.max(1),
            interval: Duration::from_millis(args.report_interval_ms.max(10)),
        },
        proxy: ProxyOptions {
            trusted_proxies: args.trusted_proxies,
            access_log: args.access_log,
            https_port: args.https_redirect_port,
            limits: Limits {
                max_header_bytes: args.max_header_bytes.max(8192),
                max_headers: args.max_headers.max(1),
                max_uri_length: args.max_uri_length.max(1),
                underscores: args.header_underscores,
                header_read_timeout: Duration::from_secs(args.header_read_timeout.max(1)),
                max_connections: args.max_connections.max(1),
                max_requests: args.max_requests.max(1),
                h2_max_concurrent_streams: args.h2_max_concurrent_streams.max(1),
                memory_limit: args.memory_limit_mb.saturating_mul(1024 * 1024),
            },
        },
        drain_timeout: Duration::from_secs(args.drain_timeout),
        drain_delay: Duration::from_secs(args.drain_delay),
        startup_sync_timeout: Duration::from_secs(args.startup_sync_timeout),
        send_timeout: Duration::from_secs(args.send_timeout.max(1)),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.worker_threads > 0 {
        runtime.worker_threads(args.worker_threads);
    }
    // A snapshot is decoded and compiled on a thread that leaves the worker
    // pool for it (`block_in_place`) and then idles in the blocking pool
    // with its stack; it gives back what the update freed at once (see
    // `memory`), and leaves after one idle second instead of Tokio's ten.
    runtime.thread_keep_alive(Duration::from_secs(1));
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(async {
        server::run(opts, shutdown_signal()).await?;
        Ok(())
    })
}

fn parse_labels(s: &str) -> anyhow::Result<HashMap<String, String>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("label \"{p}\" is not k=v"))
        })
        .collect()
}

/// The id kept in `cache_dir/id`, created on first start.
fn stable_id(cache_dir: &Path) -> anyhow::Result<String> {
    let path = cache_dir.join("id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_string();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let id = format!(
        "{}-{:06x}",
        if host.is_empty() { "dp" } else { &host },
        rand::random::<u32>() & 0xff_ffff
    );
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
