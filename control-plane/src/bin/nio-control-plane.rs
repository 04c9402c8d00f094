//! `nio-control-plane`: flags and logging around [`nio_control_plane::server::run`].

use clap::Parser;
use nio_control_plane::server::{self, Options};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "nio-control-plane",
    version,
    about = "Nio control plane: configuration store, admin API and snapshot streaming",
    after_help = "Environment only (otherwise generated once into the data dir, mode 0600):\n  NIO_ADMIN_TOKEN  the admin API bearer token\n  NIO_JOIN_TOKEN   the token data planes join with"
)]
struct Args {
    /// Directory for the store and the generated tokens.
    #[arg(long, env = "NIO_DATA_DIR", default_value = "./nio-data")]
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
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);
    let opts = Options {
        data_dir: args.data_dir,
        admin_listen: args.admin_listen,
        grpc_listen: args.grpc_listen,
        admin_token: std::env::var("NIO_ADMIN_TOKEN").ok(),
        join_token: std::env::var("NIO_JOIN_TOKEN").ok(),
        publish: Default::default(),
        admission: Default::default(),
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
