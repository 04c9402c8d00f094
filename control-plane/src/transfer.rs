//! Whole-configuration export and import (`GET /api/v1/export`,
//! `POST /api/v1/import`).
//!
//! An export is one document:
//! `{apiVersion: nio.dev/v1, kind: Export, revision, items: [...]}`.
//! API keys are exported without `spec.credentials`, certificates without
//! `spec.privateKey`, and JWT verifiers without their keys' HMAC `secret`,
//! unless secrets are
//! asked for; then their salted hashes are included (never a secret in
//! clear: the control plane does not have them).
//!
//! An import takes such a document (or any `{items: [...]}` list), decodes
//! every item, and writes them all through [`Store::write_batch`]: every
//! resource is validated on its own and every reference against the
//! resulting configuration, then everything is written in one transaction
//! under one revision — or nothing is. Import adds and replaces; it never
//! deletes what the document does not name.
//!
//! API-key credentials on import, unlike the per-resource admin writes
//! (which always ignore what a body says about credentials):
//! - the document carries `spec.credentials` (an export made with secrets):
//!   they are imported as they are, so existing clients keep working;
//! - it does not, and the key already exists: the stored credentials stay;
//! - it does not, and the key is new: a new secret is issued and returned
//!   once in the answer's `secrets`.

use crate::apikeys::{self, Issued};
use crate::store::{BatchWritten, Outcome, State, Store, WriteError};
use nio_proto::model::{AnyResource, Config, FieldError, Kind, ValidationError};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

/// The `kind` of an export document.
pub const EXPORT_KIND: &str = "Export";

/// The whole configuration as one document.
pub fn export(state: &State, include_secrets: bool) -> Value {
    let mut items: Vec<Value> = Vec::with_capacity(state.config.len());
    // Backends and verifiers first: a reader (or a tool applying the items
    // one by one) meets what routes refer to before the routes.
    for kind in [
        Kind::Certificate,
        Kind::Backend,
        Kind::JwtVerifier,
        Kind::Route,
        Kind::ApiKey,
        Kind::GlobalConfig,
        Kind::EventExporter,
    ] {
        for r in state.config.of_kind(kind) {
            let mut v = r.to_value();
            if !include_secrets {
                if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.remove("credentials");
                    spec.remove("privateKey");
                }
                crate::admin::strip_jwt_secrets(&mut v);
                crate::admin::hide_header_values(&mut v);
            }
            items.push(v);
        }
    }
    json!({
        "apiVersion": nio_proto::API_VERSION,
        "kind": EXPORT_KIND,
        "revision": state.revision,
        "secretsIncluded": include_secrets,
        "items": items,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The document is not an export (or a list of resources).
    #[error("{0}")]
    Document(String),
    /// Items that cannot be read or are invalid; nothing was written.
    #[error("the import is invalid, nothing was written: {}", join(.0))]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Write(#[from] WriteError),
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// How to import.
#[derive(Debug, Default, Clone)]
pub struct ImportOptions {
    /// Compute and return the plan; write nothing.
    pub dry_run: bool,
    /// Replace every Backend's targets with this one URL (to point an
    /// imported configuration at a test or staging backend).
    pub rewrite_targets: Option<String>,
}

/// What an import did (or would do).
#[derive(Debug)]
pub struct Imported {
    pub dry_run: bool,
    pub revision: u64,
    /// `(kind, name, outcome)` in document order.
    pub items: Vec<(Kind, String, Outcome)>,
    /// Secrets issued for new API keys that came without credentials.
    pub secrets: Vec<Issued>,
    /// Names of new keys that would get a secret (dry run).
    pub would_issue: Vec<String>,
}

pub fn outcome_str(o: Outcome) -> &'static str {
    match o {
        Outcome::Created => "created",
        Outcome::Configured => "configured",
        Outcome::Unchanged => "unchanged",
        Outcome::Deleted => "deleted",
    }
}

impl Imported {
    /// The admin API's answer.
    pub fn to_value(&self) -> Value {
        let items: Vec<Value> = self
            .items
            .iter()
            .map(|(k, n, o)| json!({"kind": k.as_str(), "name": n, "outcome": outcome_str(*o)}))
            .collect();
        let mut v = json!({
            "apiVersion": nio_proto::API_VERSION,
            "kind": "ImportResult",
            "dryRun": self.dry_run,
            "revision": self.revision,
            "items": items,
        });
        if !self.secrets.is_empty() {
            v["secrets"] = Value::Array(self.secrets.iter().map(Issued::to_value).collect());
        }
        if !self.would_issue.is_empty() {
            v["newSecretsFor"] = json!(self.would_issue);
        }
        v
    }
}

/// Reads the items of an export (or of any `{items: [...]}` document, or a
/// bare array). Every problem is reported, naming `items[i]` and the field.
pub fn decode_items(doc: Value) -> Result<Vec<AnyResource>, ImportError> {
    let items = match doc {
        Value::Array(a) => a,
        Value::Object(mut o) => {
            if let Some(k) = o.get("kind").and_then(Value::as_str) {
                if k != EXPORT_KIND && !k.ends_with("List") {
                    return Err(ImportError::Document(format!(
                        "a {k} is not an export; send the document GET /api/v1/export returns ({{apiVersion, kind: Export, items: [...]}}), or use apply for single resources"
                    )));
                }
            }
            match o.remove("items") {
                Some(Value::Array(a)) => a,
                _ => {
                    return Err(ImportError::Document(
                        "the document has no \"items\" list; send the document GET /api/v1/export returns".into(),
                    ))
                }
            }
        }
        _ => {
            return Err(ImportError::Document(
                "the body is not an export document (an object with \"items\")".into(),
            ))
        }
    };
    let mut resources = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (i, mut item) in items.into_iter().enumerate() {
        // Written by the control plane; a document read back may carry it.
        if let Some(o) = item.as_object_mut() {
            o.remove("status");
        }
        match AnyResource::from_value(item) {
            Ok(mut r) => {
                // Import means "make it so": no version precondition.
                r.metadata_mut().resource_version = None;
                match r.validate() {
                    Ok(()) => resources.push(r),
                    Err(e) => errors.extend(at_index(i, &e)),
                }
            }
            Err(e) => {
                let f = e.0;
                let field = if f.field.is_empty() {
                    format!("items[{i}]")
                } else {
                    format!("items[{i}].{}", f.field)
                };
                errors.push(FieldError::new(field, f.message));
            }
        }
    }
    if errors.is_empty() {
        Ok(resources)
    } else {
        Err(ImportError::Invalid(errors))
    }
}

fn at_index(i: usize, e: &ValidationError) -> Vec<FieldError> {
    e.errors
        .iter()
        .map(|f| {
            let field = if f.field.is_empty() {
                format!("items[{i}] ({} \"{}\")", e.kind, e.name)
            } else {
                format!("items[{i}] ({} \"{}\").{}", e.kind, e.name, f.field)
            };
            FieldError::new(field, f.message.clone())
        })
        .collect()
}

/// Replaces every Backend's targets with one target at `url`.
pub fn rewrite_targets(resources: &mut [AnyResource], url: &str) {
    for r in resources {
        if let AnyResource::Backend(b) = r {
            b.spec.targets.truncate(1);
            for t in &mut b.spec.targets {
                t.url = url.to_string();
                t.backup = false;
            }
        }
    }
}

/// Writes `resources` in one transaction (see the module docs).
pub async fn import(
    store: &Store,
    mut resources: Vec<AnyResource>,
    options: &ImportOptions,
) -> Result<Imported, ImportError> {
    if let Some(url) = &options.rewrite_targets {
        if let Err(e) = nio_proto::model::parse_target_url(url) {
            return Err(ImportError::Document(format!("rewriteTargets: {e}")));
        }
        rewrite_targets(&mut resources, url);
    }
    let order: Vec<(Kind, String)> = resources
        .iter()
        .map(|r| (r.kind(), r.name().to_string()))
        .collect();
    let dry_run = options.dry_run;
    let result = store
        .write_batch(resources, dry_run, |config: &Config, resources| {
            let mut issued = Vec::new();
            let mut would_issue = Vec::new();
            for r in resources.iter_mut() {
                // A verifier exported without its HMAC secrets keeps the
                // stored ones.
                if let AnyResource::JwtVerifier(v) = r {
                    if let Some(AnyResource::JwtVerifier(old)) =
                        config.get(Kind::JwtVerifier, &v.metadata.name)
                    {
                        crate::store::keep_jwt_secrets(&old.spec, &mut v.spec);
                    }
                }
                // A certificate exported without its key keeps the stored one.
                if let AnyResource::Certificate(cert) = r {
                    if cert.spec.private_key.is_none() {
                        if let Some(AnyResource::Certificate(old)) =
                            config.get(Kind::Certificate, &cert.metadata.name)
                        {
                            cert.spec.private_key = old.spec.private_key.clone();
                        }
                    }
                }
                let AnyResource::ApiKey(key) = r else {
                    continue;
                };
                if !key.spec.credentials.is_empty() {
                    continue;
                }
                match config.get(Kind::ApiKey, &key.metadata.name) {
                    Some(AnyResource::ApiKey(old)) if !old.spec.credentials.is_empty() => {
                        key.spec.credentials = old.spec.credentials.clone();
                    }
                    _ if dry_run => would_issue.push(key.metadata.name.clone()),
                    _ => issued.push(apikeys::issue(key, Duration::ZERO, SystemTime::now())),
                }
            }
            (issued, would_issue)
        })
        .await;
    let BatchWritten {
        items,
        revision,
        prepared: (secrets, would_issue),
    } = match result {
        Ok(w) => w,
        Err(WriteError::Batch(errors)) => {
            // Name each problem by its place in the document.
            let fields = errors
                .iter()
                .flat_map(|e| {
                    let i = order
                        .iter()
                        .position(|(k, n)| k.as_str() == e.kind && n == &e.name);
                    match i {
                        Some(i) => at_index(i, e),
                        None => e
                            .errors
                            .iter()
                            .map(|f| {
                                FieldError::new(
                                    format!("{} \"{}\" {}", e.kind, e.name, f.field),
                                    f.message.clone(),
                                )
                            })
                            .collect(),
                    }
                })
                .collect();
            return Err(ImportError::Invalid(fields));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Imported {
        dry_run,
        revision,
        items: items
            .into_iter()
            .map(|i| (i.kind, i.name, i.outcome))
            .collect(),
        secrets,
        would_issue,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn doc() -> Value {
        json!({"apiVersion": "nio.dev/v1", "kind": "Export", "items": [
            {"apiVersion": "nio.dev/v1", "kind": "Route", "metadata": {"name": "r"},
             "spec": {"frontend": {"paths": ["/"]}, "backend": "b"}},
            {"apiVersion": "nio.dev/v1", "kind": "Backend", "metadata": {"name": "b"},
             "spec": {"targets": [{"url": "http://127.0.0.1:1"}]}},
            {"apiVersion": "nio.dev/v1", "kind": "ApiKey", "metadata": {"name": "app"}, "spec": {}},
        ]})
    }

    #[tokio::test]
    async fn export_import_round_trip_keeps_credentials_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let items = decode_items(doc()).unwrap();
        let done = import(&store, items, &ImportOptions::default())
            .await
            .unwrap();
        assert_eq!(done.revision, 1);
        assert_eq!(done.secrets.len(), 1, "a new key gets a secret");
        // Again: unchanged, the stored credentials stay, no new secret.
        let again = import(
            &store,
            decode_items(doc()).unwrap(),
            &ImportOptions::default(),
        )
        .await
        .unwrap();
        assert!(again.items.iter().all(|i| i.2 == Outcome::Unchanged));
        assert!(again.secrets.is_empty());

        let without = export(&store.current(), false);
        assert!(!without.to_string().contains("credentials"));
        let with = export(&store.current(), true);
        assert!(with.to_string().contains("credentials"));

        let dir2 = tempfile::tempdir().unwrap();
        let other = Store::open(dir2.path()).unwrap();
        let done = import(
            &other,
            decode_items(with).unwrap(),
            &ImportOptions::default(),
        )
        .await
        .unwrap();
        assert!(done.secrets.is_empty(), "credentials were imported");
        assert_eq!(
            other.current().config.get(Kind::ApiKey, "app"),
            store
                .current()
                .config
                .get(Kind::ApiKey, "app")
                .map(|k| {
                    let mut k = k.clone();
                    k.metadata_mut().resource_version = Some("1".into());
                    k
                })
                .as_ref()
        );
    }

    #[tokio::test]
    async fn invalid_items_are_named_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut d = doc();
        d["items"][1]["spec"]["targets"][0]["weight"] = json!("heavy");
        let Err(ImportError::Invalid(e)) = decode_items(d) else {
            panic!("expected an error")
        };
        assert_eq!(e[0].field, "items[1].spec.targets[0].weight");
        let mut d = doc();
        d["items"][0]["spec"]["backend"] = json!("ghost");
        let err = import(&store, decode_items(d).unwrap(), &ImportOptions::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("items[0]"), "{err}");
        assert!(err.to_string().contains("ghost"), "{err}");
        assert_eq!(store.current().revision, 0);
    }
}
