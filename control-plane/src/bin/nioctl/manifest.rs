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
                let checked = value
                    .map_err(|e| e.to_string())
                    .and_then(|v| AnyResource::from_value(v).map_err(|e| e.to_string()))
                    .and_then(|r| r.validate().map(|()| r).map_err(|e| e.to_string()));
                match checked {
                    Ok(resource) => docs.push(Doc { origin, resource }),
                    Err(e) => errors.push(format!("{origin}: {e}")),
                }
            }
        }
    }
    if !errors.is_empty() {
        bail!("nothing was applied:\n  {}", errors.join("\n  "));
    }
    Ok(docs)
}

/// Splits YAML documents (JSON is YAML); skips empty ones.
fn parse_documents(text: &str) -> Vec<Result<serde_json::Value, serde_yaml::Error>> {
    serde_yaml::Deserializer::from_str(text)
        .map(serde_json::Value::deserialize)
        .filter(|v| !matches!(v, Ok(serde_json::Value::Null)))
        .collect()
}
