//! The commands that are more than one call: diff, describe, edit, import,
//! API keys.

use crate::client::AdminClient;
use crate::manifest;
use anyhow::{bail, Context, Result};
use nio_proto::model::{AnyResource, Kind};
use reqwest::Method;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn lower(kind: Kind) -> String {
    kind.as_str().to_ascii_lowercase()
}

/// A resource as apply compares it: no `status`, no `resourceVersion`.
fn comparable(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    v
}

/// A line diff (longest common subsequence): `-` old, `+` new, ` ` same.
fn line_diff(old: &str, new: &str) -> Vec<String> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push(format!("  {}", a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("- {}", a[i]));
            i += 1;
        } else {
            out.push(format!("+ {}", b[j]));
            j += 1;
        }
    }
    out
}

/// `nioctl diff -f`: exit 0 when apply would change nothing, 1 otherwise.
pub async fn diff(client: &AdminClient, files: &[PathBuf]) -> Result<ExitCode> {
    let docs = manifest::load_all(files)?;
    let mut changed = false;
    for doc in docs {
        let r = &doc.resource;
        let desired = comparable(r.to_value());
        let id = format!("{}/{}", lower(r.kind()), r.name());
        match client.get_resource(r.kind(), r.name()).await? {
            None => {
                changed = true;
                println!("{id} (new, from {})", doc.origin);
                for line in serde_yaml::to_string(&desired)?.lines() {
                    println!("+ {line}");
                }
            }
            Some(current) => {
                let current = comparable(current);
                if current != desired {
                    changed = true;
                    println!("{id} (changed, from {})", doc.origin);
                    let old = serde_yaml::to_string(&current)?;
                    let new = serde_yaml::to_string(&desired)?;
                    for line in line_diff(&old, &new) {
                        println!("{line}");
                    }
                }
            }
        }
    }
    Ok(if changed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `nioctl describe KIND NAME`: the resource, and which data planes have
/// applied a revision that contains its last change.
pub async fn describe(client: &AdminClient, kind: Kind, name: &str) -> Result<()> {
    let Some(v) = client.get_resource(kind, name).await? else {
        bail!("{kind} \"{name}\" not found");
    };
    let version: u64 = v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    print!("{}", serde_yaml::to_string(&v)?);
    let planes = client.get_json("/api/v1/dataplanes").await?;
    println!("---");
    println!("# data planes (resourceVersion {version}):");
    let rows: Vec<Vec<String>> = planes["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    let applied = d["appliedRevision"].as_u64().unwrap_or(0);
                    vec![
                        d["id"].as_str().unwrap_or_default().to_string(),
                        d["status"].as_str().unwrap_or_default().to_string(),
                        applied.to_string(),
                        if applied >= version {
                            "applied"
                        } else {
                            "pending"
                        }
                        .into(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        println!("# (no data planes)");
    } else {
        crate::print_rows(&["ID", "STATUS", "REVISION", "THIS RESOURCE"], &rows);
    }
    Ok(())
}

/// `nioctl edit KIND NAME`: $EDITOR (or $VISUAL, or vi) on the YAML, then a
/// conditional replace (a change made meanwhile is a conflict).
pub async fn edit(client: &AdminClient, kind: Kind, name: &str) -> Result<()> {
    let Some(mut v) = client.get_resource(kind, name).await? else {
        bail!("{kind} \"{name}\" not found");
    };
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    let before = serde_yaml::to_string(&v)?;
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        "nioctl-edit-{}-{name}-{}.yaml",
        lower(kind),
        std::process::id()
    ));
    std::fs::write(&path, &before).with_context(|| format!("writing {}", path.display()))?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let mut parts = editor.split_whitespace();
    let program = parts.next().unwrap_or("vi");
    let status = std::process::Command::new(program)
        .args(parts)
        .arg(&path)
        .status()
        .with_context(|| format!("starting the editor \"{editor}\" (set EDITOR)"));
    let after = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    let status = status?;
    if !status.success() {
        bail!("the editor exited with {status}; nothing was changed");
    }
    let after = after.context("reading the edited file back")?;
    if after == before {
        println!("edit cancelled, no changes made");
        return Ok(());
    }
    let edited: Value = serde_yaml::from_str(&after)
        .context("the edited file is not valid YAML; nothing was changed")?;
    let resource =
        AnyResource::from_value(edited).map_err(|e| anyhow::anyhow!("{e}; nothing was changed"))?;
    resource
        .validate()
        .map_err(|e| anyhow::anyhow!("{e}; nothing was changed"))?;
    if resource.kind() != kind || resource.name() != name {
        bail!("kind and metadata.name cannot change in an edit; nothing was changed");
    }
    let path = format!("/apis/nio.dev/v1/{}/{name}", kind.plural());
    let v = client
        .send(Method::PUT, &path, &[], Some(&resource.to_value()))
        .await?;
    let same =
        v["metadata"]["resourceVersion"] == resource.to_value()["metadata"]["resourceVersion"];
    println!(
        "{}/{name} {}",
        lower(kind),
        if same { "unchanged" } else { "edited" }
    );
    Ok(())
}

fn read_input(path: &Path) -> Result<Value> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    serde_yaml::from_str(&text)
        .with_context(|| format!("{} is neither JSON nor YAML", path.display()))
}

/// `nioctl import -f FILE | --from-otoroshi FILE`.
pub async fn import(
    client: &AdminClient,
    file: Option<&Path>,
    otoroshi: Option<&Path>,
    dry_run: bool,
    rewrite_targets: Option<&str>,
) -> Result<()> {
    let (path, from) = match (file, otoroshi) {
        (_, Some(p)) => (p, Some("otoroshi")),
        (Some(p), None) => (p, None),
        (None, None) => bail!("give -f FILE or --from-otoroshi FILE"),
    };
    let doc = read_input(path)?;
    let mut query = Vec::new();
    if dry_run {
        query.push(("dryRun", "true"));
    }
    if let Some(f) = from {
        query.push(("from", f));
    }
    if let Some(u) = rewrite_targets {
        query.push(("rewriteTargets", u));
    }
    let v = client
        .send(Method::POST, "/api/v1/import", &query, Some(&doc))
        .await
        .with_context(|| format!("importing {}", path.display()))?;
    let suffix = if dry_run { " (dry run)" } else { "" };
    for item in v["items"].as_array().into_iter().flatten() {
        println!(
            "{}/{} {}{suffix}",
            item["kind"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase(),
            item["name"].as_str().unwrap_or_default(),
            item["outcome"].as_str().unwrap_or_default()
        );
    }
    for name in v["newSecretsFor"].as_array().into_iter().flatten() {
        println!(
            "apikey/{} would get a new secret",
            name.as_str().unwrap_or_default()
        );
    }
    for s in v["secrets"].as_array().into_iter().flatten() {
        println!(
            "apikey/{} secret (shown only now): {}",
            s["clientId"].as_str().unwrap_or_default(),
            s["token"].as_str().unwrap_or_default()
        );
    }
    if let Some(report) = v.get("report") {
        for (key, title) in [
            ("converted", "converted"),
            ("notConverted", "NOT converted"),
        ] {
            let list = report[key].as_array().cloned().unwrap_or_default();
            if !list.is_empty() {
                println!("\n{title} ({}):", list.len());
                for e in list {
                    println!(
                        "  {}: {}",
                        e["source"].as_str().unwrap_or_default(),
                        e["message"].as_str().unwrap_or_default()
                    );
                }
            }
        }
    }
    if !dry_run {
        println!("revision {}", v["revision"]);
    }
    Ok(())
}

fn print_secret(v: &Value) {
    let s = &v["secret"];
    println!(
        "client id:     {}",
        s["clientId"].as_str().unwrap_or_default()
    );
    println!(
        "client secret: {}",
        s["clientSecret"].as_str().unwrap_or_default()
    );
    println!("token:         {}", s["token"].as_str().unwrap_or_default());
    println!("the secret is shown only now; store it safely");
}

pub async fn apikey_create(client: &AdminClient, name: &str, routes: &[String]) -> Result<()> {
    let mut spec = json!({});
    if !routes.is_empty() {
        spec["routes"] = json!(routes);
    }
    let body = json!({"apiVersion": nio_proto::API_VERSION, "kind": "ApiKey", "metadata": {"name": name}, "spec": spec});
    let v = client
        .send(Method::POST, "/apis/nio.dev/v1/apikeys", &[], Some(&body))
        .await?;
    println!("apikey/{name} created");
    print_secret(&v);
    Ok(())
}

pub async fn apikey_rotate(client: &AdminClient, name: &str, grace: Option<&str>) -> Result<()> {
    let body = match grace {
        Some(g) => json!({ "gracePeriod": g }),
        None => json!({}),
    };
    let v = client
        .send(
            Method::POST,
            &format!("/apis/nio.dev/v1/apikeys/{name}/rotate"),
            &[],
            Some(&body),
        )
        .await?;
    println!("apikey/{name} rotated");
    print_secret(&v);
    Ok(())
}

pub async fn apikey_quotas(
    client: &AdminClient,
    name: &str,
    reset: bool,
    window: Option<&str>,
) -> Result<()> {
    let path = format!("/apis/nio.dev/v1/apikeys/{name}/quotas");
    let v = if reset {
        let query: Vec<(&str, &str)> = window.map(|w| ("window", w)).into_iter().collect();
        let v = client
            .send(Method::POST, &format!("{path}/reset"), &query, None)
            .await?;
        println!("apikey/{name} quotas reset");
        v
    } else {
        client.send(Method::GET, &path, &[], None).await?
    };
    let windows = v["windows"].as_array().cloned().unwrap_or_default();
    if windows.is_empty() {
        println!("apikey/{name} has no quotas");
        return Ok(());
    }
    println!(
        "{:<10} {:>12} {:>12} {:>12}  RESETS",
        "WINDOW", "LIMIT", "USED", "REMAINING"
    );
    for w in windows {
        let resets = match (w["resetsAt"].as_str(), w["per"].as_str()) {
            (Some(at), _) => at.to_string(),
            (None, Some(per)) => format!("every {per}"),
            _ => String::new(),
        };
        println!(
            "{:<10} {:>12} {:>12} {:>12}  {resets}",
            w["window"].as_str().unwrap_or_default(),
            w["limit"],
            w["used"],
            w["remaining"],
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::line_diff;

    #[test]
    fn diff_lines() {
        let d = line_diff("a\nb\nc\n", "a\nx\nc\n");
        assert_eq!(d, ["  a", "- b", "+ x", "  c"]);
    }
}
