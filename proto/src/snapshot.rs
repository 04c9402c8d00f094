//! Conversion between a [`Config`] and what travels on the wire, and the
//! content hash both planes compute the same way.
//!
//! [`ResourceSet`] is the wire-level view of a configuration: encoded
//! resources keyed by (kind, name). The control plane builds one per
//! data-plane group; full snapshots, deltas between two sets, and the hash
//! all work on it. A data plane keeps a [`Holding`]: the same resources,
//! encoded, in less memory, and decodes from it only what an update needs.
//!
//! The hash covers every resource's kind, name and canonical JSON in
//! (kind, name) order, so two planes holding the same resources agree on it
//! whatever order they arrived in.

use crate::model::{AnyResource, Config, Kind};
use crate::v1;
use bytes::Bytes;
use prost::Message;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::io::{Read, Write};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("resource {index} ({kind}/{name}): {reason}")]
    BadResource {
        index: usize,
        kind: String,
        name: String,
        reason: String,
    },
    #[error("content hash mismatch: expected {expected}, contents hash to {actual}")]
    HashMismatch { expected: String, actual: String },
    #[error("delta from revision {from} does not apply to revision {held}")]
    WrongBase { from: u64, held: u64 },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("compressed resources cannot be read: {0}")]
    Compression(String),
}

/// Largest decompressed snapshot accepted (a guard against gzip bombs).
pub const MAX_EXPANDED_SIZE: u64 = 1 << 30;

/// Moves a snapshot's resources into one gzip blob (done once per group and
/// revision on the control plane).
pub fn compress(mut snapshot: v1::Snapshot) -> v1::Snapshot {
    let list = v1::ResourceList {
        resources: std::mem::take(&mut snapshot.resources),
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = gz.write_all(&list.encode_to_vec());
    snapshot.resources_gzip = Bytes::from(gz.finish().unwrap_or_default());
    snapshot
}

/// The snapshot with its resources inline (decompressed if needed).
pub fn expand(snapshot: &v1::Snapshot) -> Result<Cow<'_, v1::Snapshot>, SnapshotError> {
    if snapshot.resources_gzip.is_empty() {
        return Ok(Cow::Borrowed(snapshot));
    }
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&snapshot.resources_gzip[..])
        .take(MAX_EXPANDED_SIZE + 1)
        .read_to_end(&mut raw)
        .map_err(|e| SnapshotError::Compression(e.to_string()))?;
    if raw.len() as u64 > MAX_EXPANDED_SIZE {
        return Err(SnapshotError::Compression(format!(
            "more than {MAX_EXPANDED_SIZE} bytes once expanded"
        )));
    }
    let list = v1::ResourceList::decode(raw.as_slice())
        .map_err(|e| SnapshotError::Compression(e.to_string()))?;
    Ok(Cow::Owned(v1::Snapshot {
        revision: snapshot.revision,
        hash: snapshot.hash.clone(),
        resources: list.resources,
        resources_gzip: Bytes::new(),
    }))
}

/// SHA-256 of one resource: kind, name and JSON body.
fn digest(r: &v1::Resource) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(r.kind.as_bytes());
    h.update([0]);
    h.update(r.name.as_bytes());
    h.update([0]);
    h.update((r.json.len() as u64).to_be_bytes());
    h.update(&r.json);
    h.finalize().into()
}

fn check_hash(actual: String, expected: &str) -> Result<(), SnapshotError> {
    if actual == expected {
        Ok(())
    } else {
        Err(SnapshotError::HashMismatch {
            expected: expected.to_string(),
            actual,
        })
    }
}

/// Hex SHA-256 over the per-resource digests, in (kind, name) order.
fn combine<'a>(digests: impl Iterator<Item = &'a [u8; 32]>) -> String {
    let mut h = Sha256::new();
    for d in digests {
        h.update(d);
    }
    hex::encode(h.finalize())
}

/// The content hash of resources in any order: SHA-256 over the SHA-256 of
/// each resource (kind, name, JSON), in (kind, name) order. Per-resource
/// digests are kept by [`ResourceSet`], so a delta only re-hashes what it
/// changed plus 32 bytes per resource.
pub fn content_hash(resources: &[v1::Resource]) -> String {
    let mut sorted: Vec<&v1::Resource> = resources.iter().collect();
    sorted.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
    let digests: Vec<[u8; 32]> = sorted.into_iter().map(digest).collect();
    combine(digests.iter())
}

/// Encodes a resource for the wire.
pub fn encode_resource(r: &AnyResource) -> v1::Resource {
    let resource_version = r.metadata().version();
    v1::Resource {
        kind: r.kind().as_str().to_string(),
        name: r.name().to_string(),
        resource_version,
        json: Bytes::from(r.to_json_vec()),
    }
}

/// Decodes one wire resource, checking that its body matches its envelope.
pub fn decode_resource(index: usize, r: &v1::Resource) -> Result<AnyResource, SnapshotError> {
    decode_body(index, &r.kind, &r.name, &r.json)
}

/// Decodes a resource's JSON, checking that it is the `kind`/`name` its
/// envelope says.
fn decode_body(
    index: usize,
    kind: &str,
    name: &str,
    json: &[u8],
) -> Result<AnyResource, SnapshotError> {
    let bad = |reason: String| SnapshotError::BadResource {
        index,
        kind: kind.to_string(),
        name: name.to_string(),
        reason,
    };
    let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let resource = AnyResource::from_value(value).map_err(|e| bad(e.to_string()))?;
    if resource.kind().as_str() != kind || resource.name() != name {
        return Err(bad(format!(
            "envelope says {kind}/{name}, body says {}/{}",
            resource.kind(),
            resource.name()
        )));
    }
    Ok(resource)
}

fn invalid(errs: Vec<crate::model::ValidationError>) -> SnapshotError {
    SnapshotError::Invalid(
        errs.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    )
}

fn validated(config: Config) -> Result<Config, SnapshotError> {
    config.validate().map_err(invalid)?;
    Ok(config)
}

/// The snapshot of all of `config` at `revision`.
pub fn encode(config: &Config, revision: u64) -> v1::Snapshot {
    ResourceSet::from_resources(config.iter().map(encode_resource)).to_snapshot(revision)
}

/// Decodes a full snapshot, verifies its hash, and validates the whole
/// configuration: the same checks the control plane ran on each write.
pub fn decode(snapshot: &v1::Snapshot) -> Result<Config, SnapshotError> {
    Holding::from_snapshot(snapshot)?.decode_all()
}

pub type Key = (String, String);

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    resource: v1::Resource,
    digest: [u8; 32],
}

impl Entry {
    fn new(resource: v1::Resource) -> Entry {
        Entry {
            digest: digest(&resource),
            resource,
        }
    }
}

/// Encoded resources keyed by (kind, name), each with its digest. A
/// persistent map: cloning and applying a small delta are cheap at any size.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceSet {
    resources: imbl::OrdMap<Key, Entry>,
}

impl ResourceSet {
    pub fn from_resources(resources: impl IntoIterator<Item = v1::Resource>) -> ResourceSet {
        ResourceSet {
            resources: resources
                .into_iter()
                .map(|r| ((r.kind.clone(), r.name.clone()), Entry::new(r)))
                .collect(),
        }
    }

    /// The resources of a full snapshot, after checking its hash.
    pub fn from_snapshot(snapshot: &v1::Snapshot) -> Result<ResourceSet, SnapshotError> {
        // An expanded snapshot is ours to take apart: no second copy of
        // every name while the set is built.
        let set = match expand(snapshot)? {
            Cow::Owned(expanded) => ResourceSet::from_resources(expanded.resources),
            Cow::Borrowed(s) => ResourceSet::from_resources(s.resources.iter().cloned()),
        };
        set.check_hash(&snapshot.hash)?;
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &v1::Resource> {
        self.resources.values().map(|e| &e.resource)
    }

    pub fn get(&self, kind: &str, name: &str) -> Option<&v1::Resource> {
        self.resources
            .get(&(kind.to_string(), name.to_string()))
            .map(|e| &e.resource)
    }

    /// Adds or replaces one resource.
    pub fn insert(&mut self, resource: v1::Resource) {
        self.resources.insert(
            (resource.kind.clone(), resource.name.clone()),
            Entry::new(resource),
        );
    }

    pub fn remove(&mut self, kind: &str, name: &str) -> Option<v1::Resource> {
        self.resources
            .remove(&(kind.to_string(), name.to_string()))
            .map(|e| e.resource)
    }

    pub fn hash(&self) -> String {
        combine(self.resources.values().map(|e| &e.digest))
    }

    fn check_hash(&self, expected: &str) -> Result<(), SnapshotError> {
        check_hash(self.hash(), expected)
    }

    /// What a data plane announces it holds.
    pub fn keys(&self) -> Vec<v1::ResourceKey> {
        self.iter()
            .map(|r| v1::ResourceKey {
                kind: r.kind.clone(),
                name: r.name.clone(),
                resource_version: r.resource_version,
            })
            .collect()
    }

    pub fn to_snapshot(&self, revision: u64) -> v1::Snapshot {
        v1::Snapshot {
            revision,
            hash: self.hash(),
            resources: self.iter().cloned().collect(),
            resources_gzip: Bytes::new(),
        }
    }

    /// The changes that turn a holder of `held` (given by key and version)
    /// into a holder of `self`.
    pub fn delta_from(
        &self,
        held: impl IntoIterator<Item = (Key, u64)>,
        from_revision: u64,
        revision: u64,
    ) -> v1::Delta {
        let held: std::collections::HashMap<Key, u64> = held.into_iter().collect();
        let upserts = self
            .resources
            .iter()
            .filter(|(k, e)| held.get(*k) != Some(&e.resource.resource_version))
            .map(|(_, e)| e.resource.clone())
            .collect();
        let mut removals: Vec<v1::ResourceKey> = held
            .iter()
            .filter(|(k, _)| !self.resources.contains_key(*k))
            .map(|((kind, name), rv)| v1::ResourceKey {
                kind: kind.clone(),
                name: name.clone(),
                resource_version: *rv,
            })
            .collect();
        removals.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
        v1::Delta {
            from_revision,
            revision,
            hash: self.hash(),
            upserts,
            removals,
        }
    }

    /// The delta from another set (what a data plane holding `old` needs).
    /// Cheap when `self` was derived from `old`: shared parts are skipped.
    pub fn delta_from_set(
        &self,
        old: &ResourceSet,
        from_revision: u64,
        revision: u64,
    ) -> v1::Delta {
        let mut delta = v1::Delta {
            from_revision,
            revision,
            hash: self.hash(),
            upserts: Vec::new(),
            removals: Vec::new(),
        };
        for item in old.resources.diff(&self.resources) {
            match item {
                imbl::ordmap::DiffItem::Add(_, e)
                | imbl::ordmap::DiffItem::Update { new: (_, e), .. } => {
                    delta.upserts.push(e.resource.clone())
                }
                imbl::ordmap::DiffItem::Remove((kind, name), e) => {
                    delta.removals.push(v1::ResourceKey {
                        kind: kind.clone(),
                        name: name.clone(),
                        resource_version: e.resource.resource_version,
                    })
                }
            }
        }
        delta
    }

    /// Applies a delta and checks the result against its hash. On error
    /// `self` is unchanged. The result's hash is `delta.hash`.
    pub fn apply(&self, delta: &v1::Delta) -> Result<ResourceSet, SnapshotError> {
        let mut next = self.clone();
        for k in &delta.removals {
            next.resources.remove(&(k.kind.clone(), k.name.clone()));
        }
        for r in &delta.upserts {
            next.insert(r.clone());
        }
        next.check_hash(&delta.hash)?;
        Ok(next)
    }
}

/// What a data plane keeps of the configuration it serves: each resource's
/// version, digest and encoded body, keyed by (kind, name).
///
/// The decoded [`Config`] lives only while an update is applied: a route
/// decoded takes about three times its JSON, and a data plane needs a
/// decoded resource only when an update touches it. From this a data plane
/// checks deltas against their hash, says what it holds, decodes what a
/// delta needs ([`Holding::decode_some`]) and writes its cache
/// ([`Holding::write`]). Only kinds this build knows are held: a snapshot
/// or delta with another kind could not be decoded anyway.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Holding {
    entries: imbl::OrdMap<(ByName, Box<str>), Held>,
}

/// A kind ordered by its name, as the hash orders resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ByName(Kind);

impl Ord for ByName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.as_str().cmp(other.0.as_str())
    }
}

impl PartialOrd for ByName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Held {
    version: u64,
    digest: [u8; 32],
    json: Box<[u8]>,
}

fn held_kind(index: usize, kind: &str, name: &str) -> Result<ByName, SnapshotError> {
    Kind::from_kind_field(kind)
        .map(ByName)
        .ok_or_else(|| SnapshotError::BadResource {
            index,
            kind: kind.to_string(),
            name: name.to_string(),
            reason: "unknown kind".into(),
        })
}

impl Holding {
    /// The resources of a full snapshot, after checking its hash.
    pub fn from_snapshot(snapshot: &v1::Snapshot) -> Result<Holding, SnapshotError> {
        let mut resources = match expand(snapshot)? {
            // An expanded snapshot is ours to take apart.
            Cow::Owned(expanded) => expanded.resources,
            Cow::Borrowed(s) => s.resources.clone(),
        };
        // Inserted in a scattered order: a B-tree filled in key order (the
        // snapshot's) leaves each node half empty; scattered, its nodes are
        // fuller (64 bytes less per route at 10,000 routes).
        let n = resources.len();
        let stride = [7919, 7927, 7933, 7937]
            .into_iter()
            .find(|p| n % p != 0)
            .unwrap_or(1);
        let mut holding = Holding::default();
        for i in 0..n {
            let index = i * stride % n;
            holding.insert(index, std::mem::take(&mut resources[index]))?;
        }
        check_hash(holding.hash(), &snapshot.hash)?;
        Ok(holding)
    }

    fn insert(&mut self, index: usize, r: v1::Resource) -> Result<(), SnapshotError> {
        let kind = held_kind(index, &r.kind, &r.name)?;
        let held = Held {
            version: r.resource_version,
            digest: digest(&r),
            json: Vec::from(r.json).into_boxed_slice(),
        };
        self.entries.insert((kind, r.name.into_boxed_str()), held);
        Ok(())
    }

    pub fn hash(&self) -> String {
        combine(self.entries.values().map(|h| &h.digest))
    }

    /// What a data plane announces it holds.
    pub fn keys(&self) -> Vec<v1::ResourceKey> {
        self.entries
            .iter()
            .map(|((kind, name), held)| v1::ResourceKey {
                kind: kind.0.as_str().to_string(),
                name: name.to_string(),
                resource_version: held.version,
            })
            .collect()
    }

    /// Applies a delta and checks the result against its hash, as
    /// [`ResourceSet::apply`] does. On error `self` is unchanged.
    pub fn apply(&self, delta: &v1::Delta) -> Result<Holding, SnapshotError> {
        let mut next = self.clone();
        for k in &delta.removals {
            if let Some(kind) = Kind::from_kind_field(&k.kind) {
                next.entries.remove(&(ByName(kind), k.name.as_str().into()));
            }
        }
        for (index, r) in delta.upserts.iter().enumerate() {
            next.insert(index, r.clone())?;
        }
        check_hash(next.hash(), &delta.hash)?;
        Ok(next)
    }

    /// Decodes every resource and validates the whole configuration (a
    /// full snapshot).
    pub fn decode_all(&self) -> Result<Config, SnapshotError> {
        validated(self.decode_some(|_| true, [])?)
    }

    /// Decodes every resource of the kinds `whole` picks, and the resources
    /// named in `also`, without validating them: each was validated when
    /// it arrived (see [`validate_delta`] for what a delta changed). Costs
    /// what it decodes, not what is held.
    pub fn decode_some<'a>(
        &self,
        whole: impl Fn(Kind) -> bool,
        also: impl IntoIterator<Item = (Kind, &'a str)>,
    ) -> Result<Config, SnapshotError> {
        let mut config = Config::default();
        // Errors number a resource by its place among those decoded: for
        // a whole snapshot, its place in the snapshot the control plane
        // sent (in (kind, name) order).
        let mut decode = |(kind, name): &(ByName, Box<str>), held: &Held| {
            let index = config.len();
            decode_body(index, kind.0.as_str(), name, &held.json).map(|r| config.insert(r))
        };
        let mut kinds = Kind::ALL;
        kinds.sort_by_key(|k| k.as_str());
        for kind in kinds.into_iter().filter(|k| whole(*k)) {
            let of_kind = self.entries.range((ByName(kind), Box::default())..);
            for (key, held) in of_kind.take_while(|((k, _), _)| k.0 == kind) {
                decode(key, held)?;
            }
        }
        for (kind, name) in also {
            let key = (ByName(kind), name.into());
            if let (false, Some(held)) = (whole(kind), self.entries.get(&key)) {
                decode(&key, held)?;
            }
        }
        Ok(config)
    }

    /// Writes the snapshot at `revision` to `out`, one resource at a time:
    /// what it holds meanwhile is one resource's envelope, not a second
    /// copy of the configuration (the data plane writes its cache this way).
    pub fn write(&self, revision: u64, out: &mut impl Write) -> std::io::Result<()> {
        use prost::encoding;
        let mut buf = Vec::new();
        encoding::uint64::encode(1, &revision, &mut buf);
        for ((kind, name), held) in &self.entries {
            let r = v1::Resource {
                kind: kind.0.as_str().to_string(),
                name: name.to_string(),
                resource_version: held.version,
                json: Bytes::copy_from_slice(&held.json),
            };
            encoding::message::encode(3, &r, &mut buf);
            if buf.len() >= 64 * 1024 {
                out.write_all(&buf)?;
                buf.clear();
            }
        }
        encoding::string::encode(2, &self.hash(), &mut buf);
        out.write_all(&buf)
    }
}

/// The (kind, name) of everything `delta` upserts or removes (kinds this
/// build does not know are left out).
pub fn changed_by(delta: &v1::Delta) -> Vec<(Kind, String)> {
    delta
        .upserts
        .iter()
        .map(|r| (&r.kind, &r.name))
        .chain(delta.removals.iter().map(|k| (&k.kind, &k.name)))
        .filter_map(|(kind, name)| Some((Kind::from_kind_field(kind)?, name.clone())))
        .collect()
}

/// Validates what a delta changed against `config`, the configuration
/// after it (decoded with at least every resource the changed ones refer
/// to, and every resource that could refer to a removed one): each upsert
/// on its own and its references; for each removal, that nothing still
/// refers to it. The rest was validated when it arrived.
pub fn validate_delta(config: &Config, changed: &[(Kind, String)]) -> Result<(), SnapshotError> {
    config.validate_changed(changed).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn backend(name: &str, port: u16, rv: u64) -> AnyResource {
        AnyResource::from_value(json!({"apiVersion": "nio.dev/v1", "kind": "Backend",
            "metadata": {"name": name, "resourceVersion": rv.to_string()},
            "spec": {"targets": [{"url": format!("http://127.0.0.1:{port}")}]}}))
        .unwrap()
    }

    fn sample() -> Config {
        [
            backend("b", 1, 3),
            AnyResource::from_value(json!({"apiVersion": "nio.dev/v1", "kind": "Route", "metadata": {"name": "r", "resourceVersion": "4"},
                   "spec": {"frontend": {"hosts": ["a.test"]}, "backend": "b"}}))
            .unwrap(),
        ]
        .into_iter()
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
        snap.resources[0].json = Bytes::from_static(b"{}");
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

    #[test]
    fn compressed_snapshots_expand_to_the_same_configuration() {
        let snap = encode(&sample(), 4);
        let packed = compress(snap.clone());
        assert!(packed.resources.is_empty() && !packed.resources_gzip.is_empty());
        assert_eq!(expand(&packed).unwrap().as_ref(), &snap);
        assert_eq!(decode(&packed).unwrap(), sample());
        let mut broken = packed.clone();
        broken.resources_gzip = Bytes::from_static(b"not gzip");
        assert!(matches!(
            decode(&broken),
            Err(SnapshotError::Compression(_))
        ));
    }

    fn set_of(config: &Config) -> ResourceSet {
        ResourceSet::from_resources(config.iter().map(encode_resource))
    }

    /// `config` with `added` put in (replacing resources of the same name).
    fn with(config: &Config, added: impl IntoIterator<Item = AnyResource>) -> Config {
        let mut config = config.clone();
        for r in added {
            config.insert(r);
        }
        config
    }

    #[test]
    fn deltas_carry_only_changes_and_reproduce_the_target() {
        let old_config = sample();
        let old = set_of(&old_config);
        let new_config = with(&old_config, [backend("b", 2, 5), backend("c", 3, 6)]);
        let new = set_of(&new_config);
        let delta = new.delta_from_set(&old, 4, 6);
        let names: Vec<_> = delta.upserts.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert!(delta.removals.is_empty());
        assert_eq!(old.apply(&delta).unwrap(), new);
        let held = Holding::from_snapshot(&old.to_snapshot(4)).unwrap();
        assert_eq!(
            held.apply(&delta).unwrap().decode_all().unwrap(),
            new_config
        );

        // Back again: a removal.
        let back = old.delta_from_set(&new, 6, 7);
        assert_eq!(back.removals.len(), 1);
        assert_eq!(new.apply(&back).unwrap(), old);

        // A delta applied to the wrong base fails its hash check.
        let other = set_of(&with(&old_config, [backend("d", 4, 2)]));
        assert!(matches!(
            other.apply(&delta),
            Err(SnapshotError::HashMismatch { .. })
        ));
    }

    /// A holding follows the same deltas to the same hashes, announces the
    /// same keys, refuses what the set refuses, and writes the snapshot the
    /// set makes.
    #[test]
    fn a_holding_follows_the_set() {
        let old_config = sample();
        let old = set_of(&old_config);
        let mut new_config = with(&old_config, [backend("b", 2, 5), backend("c", 3, 6)]);
        new_config.remove(Kind::Route, "r");
        let new = set_of(&new_config);

        let held = Holding::from_snapshot(&compress(old.to_snapshot(4))).unwrap();
        assert_eq!((held.hash(), held.keys()), (old.hash(), old.keys()));
        let delta = new.delta_from_set(&old, 4, 6);
        let next = held.apply(&delta).unwrap();
        assert_eq!((next.hash(), next.keys()), (new.hash(), new.keys()));
        assert_eq!(next.apply(&old.delta_from_set(&new, 6, 7)).unwrap(), held);
        let other = set_of(&with(&old_config, [backend("d", 4, 2)]));
        let other = Holding::from_snapshot(&other.to_snapshot(2)).unwrap();
        assert!(matches!(
            other.apply(&delta),
            Err(SnapshotError::HashMismatch { .. })
        ));

        let mut out = Vec::new();
        next.write(6, &mut out).unwrap();
        assert_eq!(
            v1::Snapshot::decode(out.as_slice()).unwrap(),
            new.to_snapshot(6)
        );
    }

    /// A delta is decoded only in part: the resources picked, checked
    /// against the configuration after it.
    #[test]
    fn a_delta_is_validated_against_what_was_decoded_for_it() {
        let config = with(&sample(), [backend("c", 3, 6)]);
        let old = set_of(&config);
        let held = Holding::from_snapshot(&old.to_snapshot(4)).unwrap();
        let backends = held.decode_some(|kind| kind != Kind::Route, []).unwrap();
        assert_eq!(backends.len(), 2);
        assert!(backends.get(Kind::Route, "r").is_none());
        let route = held.decode_some(|_| false, [(Kind::Route, "r"), (Kind::Route, "gone")]);
        assert_eq!(
            route.unwrap().iter().map(|r| r.name()).collect::<Vec<_>>(),
            ["r"]
        );

        // Removing the unused backend passes; removing the route's does not.
        for (name, used) in [("c", false), ("b", true)] {
            let mut smaller = config.clone();
            smaller.remove(Kind::Backend, name);
            let delta = set_of(&smaller).delta_from_set(&old, 4, 5);
            let changed = changed_by(&delta);
            assert_eq!(changed, [(Kind::Backend, name.to_string())]);
            let after = held.apply(&delta).unwrap().decode_some(|_| true, []);
            let after = after.unwrap();
            let checked = validate_delta(&after, &changed);
            assert_eq!(checked.is_err(), used, "{name}: {checked:?}");
            if let Err(e) = checked {
                assert!(e.to_string().contains("still used by route \"r\""), "{e}");
            }
        }
    }

    /// Decoding and encoding again gives the bytes the control plane sent,
    /// with long decimals and the `Sparse` fields set: a configuration read
    /// back and encoded again keeps its hash.
    #[test]
    fn encoding_again_gives_the_same_bytes() {
        let resources = [
            json!({"apiVersion": "nio.dev/v1", "kind": "Backend", "metadata": {"name": "b", "resourceVersion": "2"},
                   "spec": {"targets": [{"url": "http://127.0.0.1:1"}],
                            "circuitBreaker": {"failureRatio": 0.38566829194149443}}}),
            json!({"apiVersion": "nio.dev/v1", "kind": "Route", "metadata": {"name": "r", "labels": {"team": "a"}},
                   "spec": {"frontend": {"hosts": ["a.test"]}, "backend": "b",
                            "requestHeaders": {"set": {"x-a": "1"}}, "responseHeaders": {"remove": ["server"]},
                            "tls": {"redirectHttp": true},
                            "plugins": [{"kind": "cors", "config": {"maxAge": 0.38566829194149443}}]}}),
        ];
        for value in resources {
            let wire = encode_resource(&AnyResource::from_value(value).unwrap());
            let again = encode_resource(&decode_resource(0, &wire).unwrap());
            assert_eq!(again.json, wire.json);
        }
    }
}
