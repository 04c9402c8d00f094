//! Conversion between a [`Config`] and the wire [`v1::Snapshot`], and the
//! content hash both planes compute the same way.
//!
//! The hash covers every resource's kind, name and canonical JSON in
//! (kind, name) order, so two planes holding the same configuration agree on
//! it whatever order the resources arrived in.

use crate::model::{AnyResource, Config, Kind};
use crate::v1;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("resource {index} ({kind}/{name}): {reason}")]
    BadResource {
        index: usize,
        kind: String,
        name: String,
        reason: String,
    },
    #[error("content hash mismatch: snapshot says {expected}, contents hash to {actual}")]
    HashMismatch { expected: String, actual: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Hex SHA-256 over resources in (kind, name) order.
pub fn content_hash(resources: &[v1::Resource]) -> String {
    let mut sorted: Vec<&v1::Resource> = resources.iter().collect();
    sorted.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
    let mut h = Sha256::new();
    for r in sorted {
        h.update(r.kind.as_bytes());
        h.update([0]);
        h.update(r.name.as_bytes());
        h.update([0]);
        h.update((r.json.len() as u64).to_be_bytes());
        h.update(&r.json);
    }
    hex::encode(h.finalize())
}

/// Encodes a resource for the wire.
pub fn encode_resource(r: &AnyResource) -> v1::Resource {
    let json = r.to_json_vec();
    let resource_version = match r {
        AnyResource::Route(x) => x.resource_version(),
        AnyResource::Backend(x) => x.resource_version(),
    };
    v1::Resource {
        kind: r.kind().as_str().to_string(),
        name: r.name().to_string(),
        resource_version,
        json,
    }
}

/// The snapshot of `config` at `revision`.
pub fn encode(config: &Config, revision: u64) -> v1::Snapshot {
    let resources: Vec<v1::Resource> = config.iter().map(encode_resource).collect();
    v1::Snapshot {
        revision,
        hash: content_hash(&resources),
        resources,
    }
}

/// Decodes, verifies the hash, and validates the whole configuration: the
/// same checks the control plane ran before accepting each write.
pub fn decode(snapshot: &v1::Snapshot) -> Result<Config, SnapshotError> {
    let actual = content_hash(&snapshot.resources);
    if actual != snapshot.hash {
        return Err(SnapshotError::HashMismatch {
            expected: snapshot.hash.clone(),
            actual,
        });
    }
    let mut config = Config::default();
    for (index, r) in snapshot.resources.iter().enumerate() {
        let bad = |reason: String| SnapshotError::BadResource {
            index,
            kind: r.kind.clone(),
            name: r.name.clone(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&r.json).map_err(|e| bad(e.to_string()))?;
        let resource = AnyResource::from_value(value).map_err(|e| bad(e.to_string()))?;
        if resource.kind().as_str() != r.kind || resource.name() != r.name {
            return Err(bad(format!(
                "envelope says {}/{}, body says {}/{}",
                r.kind,
                r.name,
                resource.kind(),
                resource.name()
            )));
        }
        if Kind::from_kind_field(&r.kind).is_none() {
            return Err(bad("unknown kind".into()));
        }
        config.insert(resource);
    }
    config.validate().map_err(|errs| {
        SnapshotError::Invalid(
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Config {
        [
            json!({"apiVersion": "nio.dev/v1", "kind": "Backend", "metadata": {"name": "b", "resourceVersion": "3"},
                   "spec": {"targets": [{"url": "http://127.0.0.1:1"}]}}),
            json!({"apiVersion": "nio.dev/v1", "kind": "Route", "metadata": {"name": "r", "resourceVersion": "4"},
                   "spec": {"frontend": {"hosts": ["a.test"]}, "backend": "b"}}),
        ]
        .into_iter()
        .map(|v| AnyResource::from_value(v).unwrap())
        .collect()
    }

    #[test]
    fn round_trip_and_hash_is_order_independent() {
        let config = sample();
        let mut snap = encode(&config, 4);
        assert_eq!(decode(&snap).unwrap(), config);
        snap.resources.reverse();
        assert_eq!(content_hash(&snap.resources), snap.hash);
        assert_eq!(decode(&snap).unwrap(), config);
    }

    #[test]
    fn tampered_or_invalid_snapshots_are_refused() {
        let mut snap = encode(&sample(), 4);
        snap.resources[0].json = b"{}".to_vec();
        assert!(matches!(
            decode(&snap),
            Err(SnapshotError::HashMismatch { .. })
        ));

        // A route whose backend is missing, with a correct hash.
        let mut snap = encode(&sample(), 4);
        snap.resources.retain(|r| r.kind == "Route");
        snap.hash = content_hash(&snap.resources);
        let err = decode(&snap).unwrap_err().to_string();
        assert!(err.contains("backend \"b\" does not exist"), "{err}");
    }
}
