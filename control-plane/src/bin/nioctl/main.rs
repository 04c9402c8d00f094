//! `nioctl`: a kubectl-style client of the admin API (and nothing else).
//!
//! Connection: `--server` / `NIO_SERVER` (default `http://127.0.0.1:9000`),
//! token from `--token` / `NIO_ADMIN_TOKEN`, or the file named by
//! `--token-file` / `NIO_ADMIN_TOKEN_FILE` (default `./nio-data/admin-token`,
//! where a control plane started in the same directory writes it).

mod client;
mod manifest;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use client::{AdminClient, ApiFailure};
use nio_proto::model::Kind;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "nioctl",
    version,
    about = "Manage a Nio gateway through its admin API"
)]
struct Cli {
    /// Admin API URL.
    #[arg(
        long,
        global = true,
        env = "NIO_SERVER",
        default_value = "http://127.0.0.1:9000"
    )]
    server: String,
    /// Admin token (prefer --token-file or NIO_ADMIN_TOKEN_FILE: flags show up in `ps`).
    #[arg(long, global = true, env = "NIO_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the admin token.
    #[arg(
        long,
        global = true,
        env = "NIO_ADMIN_TOKEN_FILE",
        default_value = "./nio-data/admin-token"
    )]
    token_file: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create or update the resources in files (YAML, multi-document, or JSON).
    Apply {
        /// A file, a directory (its .yaml, .yml and .json files), or - for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// List resources of a kind, or show one.
    Get {
        /// route, routes, rt, backend, backends, be
        kind: String,
        name: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_parser = ["table", "json", "yaml"], default_value = "table")]
        output: String,
        /// Label selector, e.g. team=shop,tier!=edge.
        #[arg(short = 'l', long)]
        selector: Option<String>,
    },
    /// Delete a resource by kind and name, or those named in files.
    Delete {
        kind: Option<String>,
        name: Option<String>,
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
    },
    /// List the data planes, their applied revision and lag.
    Dataplanes {
        #[arg(short = 'o', long, value_parser = ["table", "json", "yaml"], default_value = "table")]
        output: String,
    },
    /// Print the client version and the server's current revision.
    Version,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            // API failures carry the server's own message; everything else
            // gets one line, never a backtrace.
            match e.downcast_ref::<ApiFailure>() {
                Some(f) => eprintln!("Error from server ({}): {}", f.status, f.message),
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn kind(s: &str) -> Result<Kind> {
    Kind::parse(s).with_context(|| {
        let known: Vec<_> = Kind::ALL.iter().map(|k| k.plural()).collect();
        format!(
            "unknown resource type \"{s}\"; expected one of {}",
            known.join(", ")
        )
    })
}

fn token(cli: &Cli) -> Result<String> {
    if let Some(t) = &cli.token {
        return Ok(t.trim().to_string());
    }
    std::fs::read_to_string(&cli.token_file)
        .map(|s| s.trim().to_string())
        .with_context(|| {
            format!(
                "no admin token: cannot read {} (pass --token-file, or set NIO_ADMIN_TOKEN_FILE or NIO_ADMIN_TOKEN)",
                cli.token_file.display()
            )
        })
}

async fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::Version = cli.command {
        println!("nioctl {}", nio_proto::VERSION);
    }
    let client = AdminClient::new(&cli.server, &token(&cli)?)?;
    match cli.command {
        Command::Version => {
            let rev = client.get_json("/api/v1/revision").await?;
            println!("server {} revision {}", cli.server, rev["revision"]);
        }
        Command::Apply { files } => {
            let docs = manifest::load_all(&files)?;
            for doc in docs {
                let (kind, name) = (doc.resource.kind(), doc.resource.name().to_string());
                let outcome = client
                    .apply(&doc.resource)
                    .await
                    .with_context(|| doc.origin.clone())?;
                println!("{}/{name} {outcome}", kind.as_str().to_ascii_lowercase());
            }
        }
        Command::Get {
            kind: k,
            name,
            output,
            selector,
        } => {
            let kind = kind(&k)?;
            let mut path = format!("/apis/nio.dev/v1/{}", kind.plural());
            if let Some(n) = &name {
                path = format!("{path}/{n}");
            }
            let mut query = Vec::new();
            if let Some(s) = &selector {
                query.push(("labelSelector", s.as_str()));
            }
            let v = client.get_json_query(&path, &query).await?;
            let items: Vec<Value> = if name.is_some() {
                vec![v.clone()]
            } else {
                v["items"].as_array().cloned().unwrap_or_default()
            };
            match output.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&v)?),
                "yaml" => print!("{}", serde_yaml::to_string(&v)?),
                _ => print_table(kind, &items),
            }
        }
        Command::Delete {
            kind: k,
            name,
            files,
        } => {
            let targets: Vec<(Kind, String)> = match (k, name, files.is_empty()) {
                (Some(k), Some(n), true) => vec![(kind(&k)?, n)],
                (None, None, false) => manifest::load_all(&files)?
                    .into_iter()
                    .map(|d| (d.resource.kind(), d.resource.name().to_string()))
                    .collect(),
                _ => bail!("give either KIND NAME or -f FILE"),
            };
            for (kind, name) in targets {
                client.delete(kind, &name).await?;
                println!("{}/{name} deleted", kind.as_str().to_ascii_lowercase());
            }
        }
        Command::Dataplanes { output } => {
            let v = client.get_json("/api/v1/dataplanes").await?;
            match output.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&v)?),
                "yaml" => print!("{}", serde_yaml::to_string(&v)?),
                _ => print_dataplanes(&v),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn join(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "*".into())
}

fn print_table(kind: Kind, items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|r| {
            let name = r["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let rv = r["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match kind {
                Kind::Route => vec![
                    name,
                    join(&r["spec"]["frontend"]["hosts"]),
                    join(&r["spec"]["frontend"]["paths"]),
                    r["spec"]["backend"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    rv,
                ],
                Kind::Backend => vec![
                    name,
                    r["spec"]["targets"]
                        .as_array()
                        .map(|t| {
                            t.iter()
                                .map(|t| {
                                    format!("{}*{}", t["url"].as_str().unwrap_or(""), t["weight"])
                                })
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default(),
                    rv,
                ],
                Kind::ApiKey => vec![
                    name,
                    (r["spec"]["enabled"] != false).to_string(),
                    r["spec"]["expiresAt"].as_str().unwrap_or("-").to_string(),
                    join(&r["spec"]["routes"]),
                    rv,
                ],
                Kind::JwtVerifier => vec![
                    name,
                    join(&r["spec"]["algorithms"]),
                    r["spec"]["jwksUrl"].as_str().unwrap_or("-").to_string(),
                    rv,
                ],
                Kind::GlobalConfig => vec![
                    name,
                    r["spec"]["plugins"]
                        .as_array()
                        .map(|p| {
                            p.iter()
                                .filter_map(|p| p["kind"].as_str())
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default(),
                    rv,
                ],
            }
        })
        .collect();
    let header: &[&str] = match kind {
        Kind::Route => &["NAME", "HOSTS", "PATHS", "BACKEND", "REVISION"],
        Kind::Backend => &["NAME", "TARGETS", "REVISION"],
        Kind::ApiKey => &["NAME", "ENABLED", "EXPIRES", "ROUTES", "REVISION"],
        Kind::JwtVerifier => &["NAME", "ALGORITHMS", "JWKS", "REVISION"],
        Kind::GlobalConfig => &["NAME", "PLUGINS", "REVISION"],
    };
    print_rows(header, &rows);
}

fn print_dataplanes(v: &Value) {
    let latest = v["revision"].as_u64().unwrap_or(0);
    let rows: Vec<Vec<String>> = v["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    let applied = d["appliedRevision"].as_u64().unwrap_or(0);
                    vec![
                        d["id"].as_str().unwrap_or_default().to_string(),
                        if d["connected"] == true {
                            "connected"
                        } else {
                            "disconnected"
                        }
                        .to_string(),
                        applied.to_string(),
                        latest.saturating_sub(applied).to_string(),
                        d["version"].as_str().unwrap_or_default().to_string(),
                        d["lastSeen"].as_str().unwrap_or_default().to_string(),
                        d["lastNack"]["reason"].as_str().unwrap_or("-").to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print_rows(
        &[
            "ID",
            "STATUS",
            "REVISION",
            "LAG",
            "VERSION",
            "LAST SEEN",
            "LAST NACK",
        ],
        &rows,
    );
}

fn print_rows(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", parts.join("   ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
