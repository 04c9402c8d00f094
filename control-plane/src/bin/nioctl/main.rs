//! `nioctl`: a kubectl-style client of the admin API (and nothing else).
//!
//! Connection, first found wins: `--server` / `NIO_SERVER`, then the
//! current context of the config file (`$NIOCONFIG`, default
//! `~/.config/nio/config.yaml`), then `http://127.0.0.1:9000`. Token:
//! `--token` / `NIO_ADMIN_TOKEN`, or the file named by `--token-file` /
//! `NIO_ADMIN_TOKEN_FILE`, the context's `tokenFile`, or
//! `./nio-data/admin-token` (where a control plane started in the same
//! directory writes it).

mod client;
mod commands;
mod config;
mod manifest;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
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
pub struct Cli {
    /// Admin API URL (default: the current context's, or http://127.0.0.1:9000).
    #[arg(long, global = true, env = "NIO_SERVER")]
    server: Option<String>,
    /// Admin token (prefer --token-file or NIO_ADMIN_TOKEN_FILE: flags show up in `ps`).
    #[arg(long, global = true, env = "NIO_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the admin token (default: the context's, or ./nio-data/admin-token).
    #[arg(long, global = true, env = "NIO_ADMIN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Use this context of the config file instead of the current one.
    #[arg(long, global = true)]
    context: Option<String>,
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
    /// Show what apply would change (exit code 1 when something would).
    Diff {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// List resources of a kind, or show one.
    Get {
        /// route, routes, rt, backend, backends, be, apikey, ak, jwtverifier, jwt, globalconfig, gc
        kind: String,
        name: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_parser = ["table", "wide", "json", "yaml"], default_value = "table")]
        output: String,
        /// Label selector, e.g. team=shop,tier!=edge.
        #[arg(short = 'l', long)]
        selector: Option<String>,
    },
    /// Show a resource and which data planes applied it.
    Describe { kind: String, name: String },
    /// Edit a resource in $EDITOR, then apply it.
    Edit { kind: String, name: String },
    /// Delete a resource by kind and name, or those named in files.
    Delete {
        kind: Option<String>,
        name: Option<String>,
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
    },
    /// Print the whole configuration as one document.
    Export {
        #[arg(short = 'o', long, value_parser = ["yaml", "json"], default_value = "yaml")]
        output: String,
        /// Include API-key credentials (salted hashes), so an import keeps the clients' secrets.
        #[arg(long)]
        include_secrets: bool,
    },
    /// Import an export (all or nothing, one revision), or an Otoroshi export.
    Import {
        /// The export file (YAML or JSON), or - for stdin.
        #[arg(
            short = 'f',
            long = "filename",
            required_unless_present = "from_otoroshi"
        )]
        file: Option<PathBuf>,
        /// The file is an Otoroshi full export (GET /api/otoroshi.json).
        #[arg(long, value_name = "FILE", conflicts_with = "file")]
        from_otoroshi: Option<PathBuf>,
        /// Print the plan; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Point every imported Backend at this URL instead (staging, tests).
        #[arg(long, value_name = "URL")]
        rewrite_targets: Option<String>,
    },
    /// API keys: create one, rotate its secret (the secret is printed once),
    /// show or reset its quotas.
    #[command(subcommand)]
    Apikeys(ApiKeys),
    /// List the data planes, their applied revision, lag and certificate
    /// expiry; or revoke one's certificates.
    Dataplanes {
        #[arg(short = 'o', long, value_parser = ["table", "json", "yaml"], default_value = "table")]
        output: String,
        /// Revoke this data plane's certificates: its stream is closed and
        /// refused until it enrolls again with the join token.
        #[arg(long, value_name = "ID")]
        revoke: Option<String>,
    },
    /// The event log: gateway, audit, alert and fleet events (the latest,
    /// from a sequence number, or followed live with -f).
    Events {
        /// Comma-separated: gateway, audit, alert, fleet.
        #[arg(long, default_value = "")]
        kinds: String,
        #[arg(long, default_value = "")]
        route: String,
        #[arg(long, default_value = "")]
        data_plane: String,
        /// Start at this sequence number.
        #[arg(long)]
        from: Option<u64>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Keep printing events as they happen.
        #[arg(short, long)]
        follow: bool,
        #[arg(short = 'o', long, value_parser = ["table", "json"], default_value = "table")]
        output: String,
    },
    /// Contexts: which control plane nioctl talks to.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion { shell: clap_complete::Shell },
    /// Print the client version and the server's current revision.
    Version,
}

#[derive(Subcommand, Debug)]
enum ApiKeys {
    /// Create an API key; prints its secret once.
    Create {
        name: String,
        /// A route the key may call (repeat for more); none: every route taking API keys.
        #[arg(long = "route")]
        routes: Vec<String>,
    },
    /// Issue a new secret; prints it once. The old ones stop now, or after --grace.
    Rotate {
        name: String,
        /// How long the old secrets keep working, like 1h.
        #[arg(long)]
        grace: Option<String>,
    },
    /// Show the key's quotas: limit, the fleet's use and what is left.
    Quotas {
        name: String,
        /// Start the current daily and monthly windows from zero.
        #[arg(long)]
        reset: bool,
        /// With --reset: only this window.
        #[arg(long, value_parser = ["daily", "monthly"], requires = "reset")]
        window: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Switch the current context.
    UseContext { name: String },
    /// Create or change a context from --server and --token-file.
    SetContext { name: String },
    /// List the contexts (* marks the current one).
    GetContexts,
    /// Print the current context.
    CurrentContext,
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

pub fn kind(s: &str) -> Result<Kind> {
    Kind::parse(s).with_context(|| {
        let known: Vec<_> = Kind::ALL.iter().map(|k| k.plural()).collect();
        format!(
            "unknown resource type \"{s}\"; expected one of {}",
            known.join(", ")
        )
    })
}

/// Server URL and token: flags and environment, then the context, then
/// the defaults.
fn connection(cli: &Cli) -> Result<(String, String)> {
    let file = config::ConfigFile::load()?;
    let ctx = file.context(cli.context.as_deref())?;
    let server = cli
        .server
        .clone()
        .or_else(|| ctx.and_then(|c| c.server.clone()))
        .unwrap_or_else(|| "http://127.0.0.1:9000".into());
    if let Some(t) = &cli.token {
        return Ok((server, t.trim().to_string()));
    }
    let token_file = cli
        .token_file
        .clone()
        .or_else(|| ctx.and_then(|c| c.token_file.clone()))
        .unwrap_or_else(|| PathBuf::from("./nio-data/admin-token"));
    let token = std::fs::read_to_string(&token_file)
        .map(|s| s.trim().to_string())
        .with_context(|| {
            format!(
                "no admin token: cannot read {} (pass --token-file, set NIO_ADMIN_TOKEN_FILE or NIO_ADMIN_TOKEN, or set a context with `nioctl config set-context`)",
                token_file.display()
            )
        })?;
    Ok((server, token))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Version => println!("nioctl {}", nio_proto::VERSION),
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "nioctl", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Config(c) => {
            config::run(c, cli.server.as_deref(), cli.token_file.as_deref())?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let (server, token) = connection(&cli)?;
    let client = AdminClient::new(&server, &token)?;
    match cli.command {
        Command::Version => {
            let rev = client.get_json("/api/v1/revision").await?;
            println!("server {server} revision {}", rev["revision"]);
        }
        Command::Completion { .. } | Command::Config(_) => {}
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
        Command::Diff { files } => return commands::diff(&client, &files).await,
        Command::Describe { kind: k, name } => {
            commands::describe(&client, kind(&k)?, &name).await?
        }
        Command::Edit { kind: k, name } => commands::edit(&client, kind(&k)?, &name).await?,
        Command::Export {
            output,
            include_secrets,
        } => {
            let mut query = Vec::new();
            if include_secrets {
                query.push(("includeSecrets", "true"));
            }
            let v = client.get_json_query("/api/v1/export", &query).await?;
            print_value(&v, &output)?;
        }
        Command::Import {
            file,
            from_otoroshi,
            dry_run,
            rewrite_targets,
        } => {
            commands::import(
                &client,
                file.as_deref(),
                from_otoroshi.as_deref(),
                dry_run,
                rewrite_targets.as_deref(),
            )
            .await?
        }
        Command::Apikeys(ApiKeys::Create { name, routes }) => {
            commands::apikey_create(&client, &name, &routes).await?
        }
        Command::Apikeys(ApiKeys::Rotate { name, grace }) => {
            commands::apikey_rotate(&client, &name, grace.as_deref()).await?
        }
        Command::Apikeys(ApiKeys::Quotas {
            name,
            reset,
            window,
        }) => commands::apikey_quotas(&client, &name, reset, window.as_deref()).await?,
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
                "json" | "yaml" => print_value(&v, &output)?,
                "wide" => print_table(kind, &items, true),
                _ => print_table(kind, &items, false),
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
        Command::Events {
            kinds,
            route,
            data_plane,
            from,
            limit,
            follow,
            output,
        } => {
            let from = from.map(|f| f.to_string());
            let limit = limit.to_string();
            let mut query = vec![
                ("kinds", kinds.as_str()),
                ("route", route.as_str()),
                ("dataPlane", data_plane.as_str()),
                ("limit", limit.as_str()),
            ];
            if let Some(f) = &from {
                query.push(("fromSequence", f.as_str()));
            }
            let print = |e: &Value| {
                if output == "json" {
                    println!("{e}");
                } else {
                    println!("{}", event_line(e));
                }
            };
            if follow {
                query.push(("follow", "true"));
                let mut resp = client.stream("/api/v1/events", &query).await?;
                let mut pending = String::new();
                while let Some(chunk) = resp.chunk().await? {
                    pending.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = pending.find("\n\n") {
                        let message: String = pending.drain(..end + 2).collect();
                        for data in message.lines().filter_map(|l| l.strip_prefix("data:")) {
                            if let Ok(e) = serde_json::from_str::<Value>(data.trim()) {
                                print(&e);
                            }
                        }
                    }
                }
            } else {
                let page = client.get_json_query("/api/v1/events", &query).await?;
                for e in page["items"].as_array().into_iter().flatten() {
                    print(e);
                }
            }
        }
        Command::Dataplanes {
            revoke: Some(id), ..
        } => {
            let path = format!("/api/v1/dataplanes/{id}/revoke");
            let v = client.send(reqwest::Method::POST, &path, &[], None).await?;
            println!(
                "dataplane/{id} revoked at {}",
                v["revokedAt"].as_str().unwrap_or_default()
            );
        }
        Command::Dataplanes { output, .. } => {
            let v = client.get_json("/api/v1/dataplanes").await?;
            match output.as_str() {
                "json" | "yaml" => print_value(&v, &output)?,
                _ => print_dataplanes(&v),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_value(v: &Value, format: &str) -> Result<()> {
    match format {
        "json" => println!("{}", serde_json::to_string_pretty(v)?),
        _ => print!("{}", serde_yaml::to_string(v)?),
    }
    Ok(())
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

fn print_table(kind: Kind, items: &[Value], wide: bool) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|r| {
            let mut row = table_row(kind, r);
            if wide {
                row.push(labels(&r["metadata"]["labels"]));
                row.push(
                    r["spec"]["plugins"]
                        .as_array()
                        .map(|p| {
                            p.iter()
                                .filter_map(|p| p["kind"].as_str())
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "-".into()),
                );
            }
            row
        })
        .collect();
    let header: &[&str] = match kind {
        Kind::Route => &["NAME", "HOSTS", "PATHS", "BACKEND", "REVISION"],
        Kind::Backend => &["NAME", "TARGETS", "REVISION"],
        Kind::ApiKey => &["NAME", "ENABLED", "EXPIRES", "ROUTES", "REVISION"],
        Kind::JwtVerifier => &["NAME", "ALGORITHMS", "JWKS", "REVISION"],
        Kind::GlobalConfig => &["NAME", "PLUGINS", "REVISION"],
        Kind::Certificate => &["NAME", "SANS", "NOT AFTER", "KEY", "REVISION"],
        Kind::EventExporter => &["NAME", "URL", "KINDS", "REVISION"],
    };
    let mut header = header.to_vec();
    if wide {
        header.extend(["LABELS", "PLUGINS"]);
    }
    print_rows(&header, &rows);
}

fn labels(v: &Value) -> String {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into())
}

fn table_row(kind: Kind, r: &Value) -> Vec<String> {
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
                        .map(|t| format!("{}*{}", t["url"].as_str().unwrap_or(""), t["weight"]))
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
        Kind::Certificate => vec![
            name,
            join(&r["status"]["sans"]),
            r["status"]["notAfter"].as_str().unwrap_or("-").to_string(),
            if r["status"]["hasPrivateKey"] == true {
                "yes"
            } else {
                "no"
            }
            .to_string(),
            rv,
        ],
        Kind::EventExporter => vec![
            name,
            r["spec"]["url"].as_str().unwrap_or_default().to_string(),
            join(&r["spec"]["kinds"]),
            rv,
        ],
    }
}

/// One event on one line: sequence, time, kind, data plane, what.
fn event_line(e: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let kind = s(&e["kind"]);
    let body = &e[kind.as_str()];
    let what = match kind.as_str() {
        "gateway" => format!(
            "{} {}{} -> {} route={} {}ms{}",
            s(&body["method"]),
            s(&body["host"]),
            s(&body["path"]),
            body["status"],
            s(&body["route"]),
            body["durationMs"],
            match s(&body["error"]) {
                e if e.is_empty() => String::new(),
                e => format!(" error={e}"),
            }
        ),
        "audit" => format!(
            "{} {} {}/{} -> {}",
            s(&body["actor"]),
            s(&body["action"]),
            s(&body["kind"]),
            s(&body["name"]),
            body["status"]
        ),
        "alert" => format!(
            "{} {}: {}",
            s(&body["severity"]),
            s(&body["alert"]),
            s(&body["message"])
        ),
        "fleet" => format!("{} revision {}", s(&body["change"]), body["revision"]),
        _ => String::new(),
    };
    let dp = match s(&e["dataPlane"]) {
        d if d.is_empty() => "-".to_string(),
        d => d,
    };
    format!(
        "{:>8}  {}  {kind:<7}  {dp}  {what}",
        e["sequence"],
        s(&e["time"])
    )
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
                        d["certificateExpires"].as_str().unwrap_or("-").to_string(),
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
            "CERT EXPIRES",
            "LAST NACK",
        ],
        &rows,
    );
}

pub fn print_rows(header: &[&str], rows: &[Vec<String>]) {
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
