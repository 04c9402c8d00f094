//! Reading manifests: files, directories or stdin; YAML (multi-document) or
//! JSON. Every document is decoded and validated before anything is sent,
//! so a bad file applies nothing; errors name the file, the document index
//! and the field.

use anyhow::{bail, Context, Result};
use nio_proto::model::AnyResource;
use serde::Deserialize;
use std::io::Read;
use std::path::{Path, PathBuf};

pub struct Doc {
    /// `file.yaml, document 2` — for messages.
    pub origin: String,
    pub resource: AnyResource,
}

fn files_in(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading directory {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            })
            .collect();
        files.sort();
        Ok(files)
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

pub fn load_all(paths: &[PathBuf]) -> Result<Vec<Doc>> {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        for file in files_in(path)? {
            let name = file.display().to_string();
            let text = if name == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {name}"))?
            };
            for (i, value) in parse_documents(&text).into_iter().enumerate() {
                let origin = format!("{name}, document {}", i + 1);
                let value = match value {
                    Ok(v) => v,
                    Err(e) => {
                        errors.push(format!("{origin}: {e}"));
                        continue;
                    }
                };
                for (origin, value) in expand(origin, value) {
                    match check(value) {
                        Ok(resource) => docs.push(Doc { origin, resource }),
                        Err(e) => errors.push(format!("{origin}: {e}")),
                    }
                }
            }
        }
    }
    if !errors.is_empty() {
        bail!("nothing was applied:\n  {}", errors.join("\n  "));
    }
    Ok(docs)
}

/// A resource as `nioctl get -o yaml` prints it is accepted back: `status`
/// is dropped (the control plane writes it).
fn check(mut value: serde_json::Value) -> Result<AnyResource, String> {
    if let Some(o) = value.as_object_mut() {
        o.remove("status");
    }
    let r = AnyResource::from_value(value).map_err(|e| e.to_string())?;
    r.validate().map_err(|e| e.to_string())?;
    Ok(r)
}

/// A list (`kind: RouteList`, what `get -o yaml` prints for a kind) or an
/// export (`kind: Export`) stands for its items.
fn expand(origin: String, value: serde_json::Value) -> Vec<(String, serde_json::Value)> {
    let is_list = value
        .get("kind")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|k| k.ends_with("List") || k == "Export");
    match (
        is_list,
        value.get("items").and_then(serde_json::Value::as_array),
    ) {
        (true, Some(items)) => items
            .iter()
            .enumerate()
            .map(|(j, v)| (format!("{origin}, item {}", j + 1), v.clone()))
            .collect(),
        _ => vec![(origin, value)],
    }
}

/// Splits YAML documents (JSON is YAML); skips empty ones.
fn parse_documents(text: &str) -> Vec<Result<serde_json::Value, serde_yaml::Error>> {
    serde_yaml::Deserializer::from_str(text)
        .map(serde_json::Value::deserialize)
        .filter(|v| !matches!(v, Ok(serde_json::Value::Null)))
        .collect()
}
