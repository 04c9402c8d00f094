//! `nio-control-plane`: flags and logging around [`nio_control_plane::server::run`].

use anyhow::Context;
use clap::{Parser, Subcommand};
use nio_control_plane::pki::PkiOptions;
use nio_control_plane::server::{self, Options};
use nio_control_plane::store::Store;
use nio_control_plane::transfer;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(
    name = "nio-control-plane",
    version,
    about = "Nio control plane: configuration store, admin API and snapshot streaming",
    after_help = "Environment only (otherwise generated once into the data dir, mode 0600):\n  NIO_ADMIN_TOKEN  the admin API bearer token\n  NIO_JOIN_TOKEN   the token data planes join with\n  NIO_FEED_TOKEN   a read-only token for the event feed"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Directory for the store and the generated tokens.
    #[arg(
        long,
        env = "NIO_DATA_DIR",
        default_value = "./nio-data",
        global = true
    )]
    data_dir: PathBuf,
    /// Address of the admin API.
    #[arg(long, env = "NIO_ADMIN_LISTEN", default_value = "127.0.0.1:9000")]
    admin_listen: SocketAddr,
    /// Address of the gRPC service data planes connect to.
    #[arg(long, env = "NIO_GRPC_LISTEN", default_value = "127.0.0.1:9001")]
    grpc_listen: SocketAddr,
    /// Log format: text or json (level from RUST_LOG, default info).
    #[arg(long, env = "NIO_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Serve gRPC without TLS; data planes then present the join token on
    /// every stream and receive configuration (keys included) in clear.
    /// Local development only.
    #[arg(long, env = "NIO_GRPC_PLAINTEXT")]
    grpc_plaintext: bool,
    /// Names data planes reach the gRPC listener by (DNS names or IPs,
    /// comma-separated), put in the certificate the control plane issues
    /// itself at each start. Default: localhost, 127.0.0.1, ::1, the
    /// listen address and the host name.
    #[arg(long, env = "NIO_GRPC_TLS_NAMES", value_delimiter = ',')]
    grpc_tls_names: Vec<String>,
    /// The gRPC listener's certificate (PEM chain) instead of one issued by
    /// the control plane's CA; with --grpc-tls-key.
    #[arg(long, env = "NIO_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    grpc_tls_cert: Option<PathBuf>,
    #[arg(long, env = "NIO_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    grpc_tls_key: Option<PathBuf>,
    /// A CA (certificate and key, PEM) to issue data-plane certificates
    /// with, instead of the one created in <data dir>/pki on first start.
    #[arg(long, env = "NIO_CA_CERT", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    #[arg(long, env = "NIO_CA_KEY", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Lifetime of a data-plane certificate; data planes renew at two
    /// thirds of it.
    #[arg(long, env = "NIO_DATAPLANE_CERT_VALIDITY", default_value = "30d", value_parser = humantime::parse_duration)]
    dataplane_cert_validity: std::time::Duration,
    /// How long the event log keeps events.
    #[arg(long, env = "NIO_EVENT_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    event_retention: std::time::Duration,
    /// Most events the event log keeps (the oldest go first).
    #[arg(long, env = "NIO_EVENT_RETENTION_EVENTS", default_value_t = 1_000_000)]
    event_retention_events: u64,
    /// Events a feed consumer may fall behind before it is cut off (it can
    /// resume from the sequence number it is given).
    #[arg(long, env = "NIO_FEED_MAX_LAG", default_value_t = 100_000)]
    feed_max_lag: u64,
    /// Serve the admin API over TLS with this certificate (PEM chain);
    /// with --admin-tls-key.
    #[arg(long, env = "NIO_ADMIN_TLS_CERT", requires = "admin_tls_key")]
    admin_tls_cert: Option<PathBuf>,
    #[arg(long, env = "NIO_ADMIN_TLS_KEY", requires = "admin_tls_cert")]
    admin_tls_key: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Writes the whole configuration, API-key credentials included (as
    /// salted hashes), to FILE (mode 0600): from the running control plane
    /// through its admin API with --admin-url (an online snapshot at one
    /// revision), or from the store in --data-dir while it is stopped.
    Backup {
        /// Where to write the backup (replaced atomically).
        #[arg(long)]
        to: PathBuf,
        /// Admin API of the running control plane (token: NIO_ADMIN_TOKEN,
        /// or the data dir's admin-token file).
        #[arg(long, env = "NIO_ADMIN_URL")]
        admin_url: Option<String>,
    },
    /// Creates a CA for data-plane certificates (to share its certificate
    /// with data planes before the control plane starts, e.g. as a
    /// Kubernetes Secret); use it with --ca-cert/--ca-key. Does nothing
    /// when both files exist.
    InitCa {
        /// Where to write the CA certificate (PEM, public).
        #[arg(long)]
        cert: PathBuf,
        /// Where to write its private key (PEM, mode 0600).
        #[arg(long)]
        key: PathBuf,
    },
    /// Loads a backup into a fresh data dir (refused if it has a store).
    /// Start the control plane on it afterwards.
    Restore {
        /// A file written by `backup` (or GET /api/v1/export?includeSecrets=true).
        #[arg(long)]
        from: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);
    match &args.command {
        Some(Cmd::Backup { to, admin_url }) => {
            return backup(&args.data_dir, to, admin_url.as_deref());
        }
        Some(Cmd::Restore { from }) => return restore(&args.data_dir, from),
        Some(Cmd::InitCa { cert, key }) => {
            if cert.exists() && key.exists() {
                println!(
                    "init-ca: {} and {} exist; nothing to do",
                    cert.display(),
                    key.display()
                );
                return Ok(());
            }
            let (cert_pem, key_pem) = nio_control_plane::pki::new_ca()?;
            nio_control_plane::pki::write_file(key, key_pem.as_bytes(), true)?;
            nio_control_plane::pki::write_file(cert, cert_pem.as_bytes(), false)?;
            println!(
                "init-ca: wrote {} and {} (mode 0600)",
                cert.display(),
                key.display()
            );
            return Ok(());
        }
        None => {}
    }
    let opts = Options {
        data_dir: args.data_dir,
        admin_listen: args.admin_listen,
        grpc_listen: args.grpc_listen,
        admin_token: std::env::var("NIO_ADMIN_TOKEN").ok(),
        join_token: std::env::var("NIO_JOIN_TOKEN").ok(),
        publish: Default::default(),
        admission: Default::default(),
        grpc_tls: (!args.grpc_plaintext).then(|| PkiOptions {
            ca: args.ca_cert.zip(args.ca_key),
            server: args.grpc_tls_cert.zip(args.grpc_tls_key),
            server_names: if args.grpc_tls_names.is_empty() {
                default_names(args.grpc_listen)
            } else {
                args.grpc_tls_names
            },
            validity: args.dataplane_cert_validity,
        }),
        admin_tls: args.admin_tls_cert.zip(args.admin_tls_key),
        retention: nio_control_plane::events::Retention {
            max_events: args.event_retention_events.max(1),
            max_age: args.event_retention,
        },
        feed_max_lag: args.feed_max_lag.max(1),
        feed_token: std::env::var("NIO_FEED_TOKEN").ok(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        if let Err(e) = server::run(opts, shutdown_signal()).await {
            tracing::error!(error = %e, "control plane stopped");
            return Err(anyhow::anyhow!(e));
        }
        Ok(())
    })
}

/// Names the gRPC listener is reached by on this machine.
fn default_names(listen: SocketAddr) -> Vec<String> {
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    if !listen.ip().is_unspecified() && !listen.ip().is_loopback() {
        names.push(listen.ip().to_string());
    }
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() && !names.iter().any(|n| n == host) {
            names.push(host.to_string());
        }
    }
    names
}

fn backup(data_dir: &Path, to: &Path, admin_url: Option<&str>) -> anyhow::Result<()> {
    let doc = match admin_url {
        Some(url) => {
            let token = match std::env::var("NIO_ADMIN_TOKEN") {
                Ok(t) => t,
                Err(_) => std::fs::read_to_string(data_dir.join("admin-token"))
                    .with_context(|| {
                        format!(
                            "no admin token: set NIO_ADMIN_TOKEN or pass the --data-dir holding admin-token (looked in {})",
                            data_dir.display()
                        )
                    })?,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let url = format!(
                "{}/api/v1/export?includeSecrets=true",
                url.trim_end_matches('/')
            );
            runtime.block_on(async {
                let r = reqwest::Client::new()
                    .get(&url)
                    .bearer_auth(token.trim())
                    .send()
                    .await
                    .with_context(|| format!("GET {url}"))?;
                let status = r.status();
                let body = r.text().await?;
                if !status.is_success() {
                    anyhow::bail!("GET {url}: {status}: {body}");
                }
                Ok::<_, anyhow::Error>(serde_json::from_str::<serde_json::Value>(&body)?)
            })?
        }
        None => {
            let store = open_store(data_dir).map_err(|e| {
                anyhow::anyhow!(
                    "{e}\nIf a control plane is running on this data dir, take an online backup through it: add --admin-url http://<admin address>"
                )
            })?;
            transfer::export(&store.current(), true)
        }
    };
    let count = doc["items"].as_array().map_or(0, Vec::len);
    let revision = doc["revision"].as_u64().unwrap_or(0);
    let tmp = to.with_extension("tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(serde_json::to_string_pretty(&doc)?.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, to).with_context(|| format!("writing {}", to.display()))?;
    println!(
        "backup: {count} resources at revision {revision} written to {}",
        to.display()
    );
    Ok(())
}

fn restore(data_dir: &Path, from: &Path) -> anyhow::Result<()> {
    let store_dir = data_dir.join("store");
    if store_dir.exists() {
        anyhow::bail!(
            "{} already has a store: restore into a fresh data dir (move the old one aside first)",
            data_dir.display()
        );
    }
    let text =
        std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    let doc: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a backup (JSON expected)", from.display()))?;
    if doc["secretsIncluded"] == false {
        anyhow::bail!(
            "{} was exported without secrets: API keys would lose their credentials; take the backup with `nio-control-plane backup` (or includeSecrets=true)",
            from.display()
        );
    }
    let items =
        transfer::decode_items(doc).map_err(|e| anyhow::anyhow!("{}: {e}", from.display()))?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let store = open_store(data_dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let imported = runtime
        .block_on(transfer::import(&store, items, &Default::default()))
        .map_err(|e| anyhow::anyhow!("{}: {e}", from.display()))?;
    println!(
        "restore: {} resources written to {} (revision {}); start the control plane with --data-dir {}",
        imported.items.len(),
        store_dir.display(),
        imported.revision,
        data_dir.display()
    );
    Ok(())
}

fn open_store(data_dir: &Path) -> anyhow::Result<Store> {
    let dir = data_dir.join("store");
    Store::open(&dir)
        .map_err(|e| anyhow::anyhow!("cannot open the store in {}: {e}", dir.display()))
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
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
