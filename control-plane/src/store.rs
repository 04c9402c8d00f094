//! The configuration store: every resource in sled, one monotonic revision
//! counter, and a `watch` channel that publishes each new [`State`].
//!
//! Writes are serialised by one async mutex (admin writes are rare; readers
//! never take it). A write is validated against the whole configuration it
//! would produce, committed in one sled transaction together with the new
//! revision, flushed to disk, and only then published and acknowledged —
//! so an acknowledged write survives a crash, and a data plane never
//! receives a revision that is not durable.
//!
//! Layout: tree `resources` maps `Kind/name` to the resource's canonical
//! JSON; tree `meta` holds `revision` (u64, big endian).
//!
//! Beside sled's files, `acknowledged-revision` holds the last revision
//! acknowledged (written, fsynced and renamed into place after each flush).
//! sled reads a damaged log as a torn write and opens what precedes it —
//! possibly an empty store, which the control plane would then push to
//! the whole fleet. A store older than that mark is refused instead.

use nio_proto::model::{AnyResource, Config, DecodeError, JwtVerifierSpec, Kind, ValidationError};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{watch, Mutex};

/// The configuration at one revision. Immutable; shared by `Arc`.
#[derive(Debug, Default)]
pub struct State {
    pub revision: u64,
    pub config: Config,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("storage transaction aborted; nothing was written, retry the request")]
    Aborted,
    #[error(
        "the store is corrupt: entry \"{key}\" cannot be read ({reason}); restore the data dir from a backup"
    )]
    Corrupt { key: String, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("{kind} \"{name}\" not found")]
    NotFound { kind: Kind, name: String },
    #[error("{kind} \"{name}\" already exists; use PUT or PATCH to change it")]
    AlreadyExists { kind: Kind, name: String },
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A batch write (import) whose resulting configuration is invalid:
    /// every problem, nothing written.
    #[error("{} problem(s), nothing was written: {}", .0.len(), join_errors(.0))]
    Batch(Vec<ValidationError>),
}

fn join_errors(errors: &[ValidationError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a batch write did (or, for a dry run, would do) to one resource.
#[derive(Debug, Clone)]
pub struct BatchItem {
    pub kind: Kind,
    pub name: String,
    pub outcome: Outcome,
}

/// The result of [`Store::write_batch`].
#[derive(Debug)]
pub struct BatchWritten<T> {
    /// Per resource, in the order given.
    pub items: Vec<BatchItem>,
    /// The revision after the write (unchanged when nothing changed or on
    /// a dry run).
    pub revision: u64,
    /// What `prepare` returned.
    pub prepared: T,
}

/// What a successful write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
    Deleted,
}

#[derive(Debug)]
pub struct Written {
    pub outcome: Outcome,
    pub revision: u64,
    /// The resource as stored (for a delete: as it was).
    pub resource: AnyResource,
}

pub struct Store {
    db: sled::Db,
    resources: sled::Tree,
    meta: sled::Tree,
    write_lock: Mutex<()>,
    state: watch::Sender<Arc<State>>,
    /// Where the last acknowledged revision is kept.
    mark: std::path::PathBuf,
}

const REVISION_KEY: &[u8] = b"revision";
/// In the store directory: the last acknowledged revision, as text.
const MARK_FILE: &str = "acknowledged-revision";

fn write_mark(path: &Path, revision: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(format!("{revision}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn key(kind: Kind, name: &str) -> String {
    format!("{kind}/{name}")
}

impl Store {
    /// Opens (or creates) the store in `dir` and loads every resource.
    /// Refuses to open a store whose entries cannot be read, rather than
    /// serve a partial configuration to the fleet.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(64 * 1024 * 1024)
            .open()?;
        let resources = db.open_tree("resources")?;
        let meta = db.open_tree("meta")?;
        let revision = match meta.get(REVISION_KEY)? {
            None => 0,
            Some(v) => {
                u64::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    key: "meta/revision".into(),
                    reason: format!("{} bytes, expected 8", v.len()),
                })?)
            }
        };
        let mark = dir.join(MARK_FILE);
        match std::fs::read_to_string(&mark) {
            Ok(text) => {
                let acknowledged: u64 = text.trim().parse().map_err(|_| StoreError::Corrupt {
                    key: MARK_FILE.into(),
                    reason: format!("{text:?} is not a revision"),
                })?;
                if revision < acknowledged {
                    return Err(StoreError::Corrupt {
                        key: "meta/revision".into(),
                        reason: format!(
                            "the store opens at revision {revision} but revision {acknowledged} was acknowledged: acknowledged writes are missing"
                        ),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::Corrupt {
                    key: MARK_FILE.into(),
                    reason: e.to_string(),
                })
            }
        }
        let mut config = Config::default();
        for entry in resources.iter() {
            let (k, v) = entry?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let corrupt = |reason: String| StoreError::Corrupt {
                key: key.clone(),
                reason,
            };
            let value: serde_json::Value =
                serde_json::from_slice(&v).map_err(|e| corrupt(e.to_string()))?;
            let resource = AnyResource::from_value(value).map_err(|e| corrupt(e.to_string()))?;
            config.insert(resource);
        }
        if let Err(errors) = config.validate() {
            // Rules may have been tightened by an upgrade: keep serving what
            // was accepted, but say so loudly.
            for e in errors {
                tracing::warn!(error = %e, "stored resource no longer passes validation");
            }
        }
        let (state, _) = watch::channel(Arc::new(State { revision, config }));
        Ok(Store {
            db,
            resources,
            meta,
            write_lock: Mutex::new(()),
            state,
            mark,
        })
    }

    /// The current state (cheap: an `Arc` clone).
    pub fn current(&self) -> Arc<State> {
        self.state.borrow().clone()
    }

    /// A receiver that sees every new revision (at least the latest).
    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.state.subscribe()
    }

    /// Creates a resource; fails if it exists.
    pub async fn create(&self, resource: AnyResource) -> Result<Written, WriteError> {
        let _guard = self.write_lock.lock().await;
        let state = self.current();
        if state.config.get(resource.kind(), resource.name()).is_some() {
            return Err(WriteError::AlreadyExists {
                kind: resource.kind(),
                name: resource.name().to_string(),
            });
        }
        if let Some(rv) = &resource.metadata().resource_version {
            return Err(WriteError::Conflict(format!(
                "{} \"{}\" does not exist, but the request expects resourceVersion {rv}; omit resourceVersion to create it",
                resource.kind(),
                resource.name()
            )));
        }
        self.put(&state, resource, Outcome::Created).await
    }

    /// Replaces a resource. `expected` (from `If-Match` or
    /// `metadata.resourceVersion`) must match the stored version if given.
    pub async fn replace(
        &self,
        resource: AnyResource,
        if_match: Option<u64>,
    ) -> Result<Written, WriteError> {
        let _guard = self.write_lock.lock().await;
        let state = self.current();
        let existing = existing(&state, resource.kind(), resource.name())?;
        check_version(existing, &resource, if_match)?;
        let mut resource = resource;
        keep_secrets(existing, &mut resource);
        self.put(&state, resource, Outcome::Configured).await
    }

    /// Read, change and write one resource under the write lock: `change`
    /// sees the stored resource and returns what to report alongside.
    pub async fn update<T>(
        &self,
        kind: Kind,
        name: &str,
        change: impl FnOnce(&mut AnyResource) -> T,
    ) -> Result<(Written, T), WriteError> {
        let _guard = self.write_lock.lock().await;
        let state = self.current();
        let mut resource = existing(&state, kind, name)?.clone();
        let out = change(&mut resource);
        let written = self.put(&state, resource, Outcome::Configured).await?;
        Ok((written, out))
    }

    /// Applies a JSON merge patch (RFC 7396) to a stored resource.
    pub async fn patch(
        &self,
        kind: Kind,
        name: &str,
        patch: &serde_json::Value,
        if_match: Option<u64>,
    ) -> Result<Written, WriteError> {
        let _guard = self.write_lock.lock().await;
        let state = self.current();
        let existing = existing(&state, kind, name)?;
        let mut doc = existing.to_value();
        json_patch::merge(&mut doc, patch);
        let patched = AnyResource::from_value(doc)?;
        if patched.kind() != kind || patched.name() != name {
            return Err(WriteError::Conflict(
                "a patch cannot change kind or metadata.name; create a new resource instead".into(),
            ));
        }
        // The patch may carry its own resourceVersion precondition; the
        // stored one was merged in otherwise and always matches.
        check_version(existing, &patched, if_match)?;
        let mut patched = patched;
        keep_secrets(existing, &mut patched);
        self.put(&state, patched, Outcome::Configured).await
    }

    pub async fn delete(
        &self,
        kind: Kind,
        name: &str,
        if_match: Option<u64>,
    ) -> Result<Written, WriteError> {
        let _guard = self.write_lock.lock().await;
        let state = self.current();
        let existing = existing(&state, kind, name)?.clone();
        if let Some(expected) = if_match {
            let actual = existing.metadata().version();
            if expected != actual {
                return Err(stale(kind, name, expected, actual));
            }
        }
        let users = state.config.users_of(kind, name);
        if !users.is_empty() {
            return Err(WriteError::Conflict(format!(
                "{kind} \"{name}\" is used by {}; change or delete those first",
                users.join(", ")
            )));
        }
        let revision = state.revision + 1;
        let mut config = state.config.clone();
        config.remove(kind, name);
        self.commit(key(kind, name), None, revision, config).await?;
        Ok(Written {
            outcome: Outcome::Deleted,
            revision,
            resource: existing,
        })
    }

    /// Creates or replaces many resources at once (import): under the write
    /// lock, `prepare` sees the current configuration and may adjust the
    /// resources (API-key credentials); then each resource is validated on
    /// its own and the resulting configuration as a whole (every problem is
    /// reported, nothing is written if there is one); then everything that
    /// changed is written in one sled transaction under one new revision,
    /// flushed, and published. Resources identical to the stored ones are
    /// `Unchanged`; incoming `resourceVersion`s are ignored. With `dry_run`
    /// the plan is computed and nothing is written.
    pub async fn write_batch<T>(
        &self,
        mut resources: Vec<AnyResource>,
        dry_run: bool,
        prepare: impl FnOnce(&Config, &mut [AnyResource]) -> T,
    ) -> Result<BatchWritten<T>, WriteError> {
        let _guard = self.write_lock.lock().await;
        let state = self.current();
        let mut seen = std::collections::HashSet::new();
        for r in &resources {
            if !seen.insert((r.kind(), r.name().to_string())) {
                return Err(WriteError::Conflict(format!(
                    "{} \"{}\" appears twice; keep one of them",
                    r.kind(),
                    r.name()
                )));
            }
        }
        let prepared = prepare(&state.config, &mut resources);
        let errors: Vec<ValidationError> = resources
            .iter()
            .filter_map(|r| r.validate().err())
            .collect();
        if !errors.is_empty() {
            return Err(WriteError::Batch(errors));
        }
        let revision = state.revision + 1;
        let mut config = state.config.clone();
        let mut items = Vec::with_capacity(resources.len());
        let mut changed = Vec::new();
        for mut resource in resources {
            let (kind, name) = (resource.kind(), resource.name().to_string());
            let outcome = match state.config.get(kind, &name) {
                None => Outcome::Created,
                Some(existing) => {
                    resource.metadata_mut().resource_version =
                        existing.metadata().resource_version.clone();
                    if &resource == existing {
                        Outcome::Unchanged
                    } else {
                        Outcome::Configured
                    }
                }
            };
            if outcome != Outcome::Unchanged {
                resource.metadata_mut().resource_version = Some(revision.to_string());
                changed.push((kind, name.clone()));
                config.insert(resource);
            }
            items.push(BatchItem {
                kind,
                name,
                outcome,
            });
        }
        config
            .validate_changed(&changed)
            .map_err(WriteError::Batch)?;
        if dry_run || changed.is_empty() {
            return Ok(BatchWritten {
                items,
                revision: state.revision,
                prepared,
            });
        }
        let writes: Vec<(String, Vec<u8>)> = changed
            .iter()
            .filter_map(|(k, n)| config.get(*k, n).map(|r| (key(*k, n), r.to_json_vec())))
            .collect();
        let result: Result<(), TransactionError<()>> =
            (&self.resources, &self.meta).transaction(|(tx_resources, meta)| {
                for (k, v) in &writes {
                    tx_resources.insert(k.as_bytes(), v.as_slice())?;
                }
                meta.insert(REVISION_KEY, &revision.to_be_bytes())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        match result {
            Ok(()) => {}
            Err(TransactionError::Storage(e)) => return Err(StoreError::from(e).into()),
            Err(TransactionError::Abort(())) => return Err(StoreError::Aborted.into()),
        }
        self.flush().await?;
        self.acknowledge(revision).await?;
        self.state
            .send_replace(Arc::new(State { revision, config }));
        Ok(BatchWritten {
            items,
            revision,
            prepared,
        })
    }

    /// Validates `resource` in the configuration it would produce, then
    /// commits it under a new revision (unless nothing changed).
    async fn put(
        &self,
        state: &State,
        mut resource: AnyResource,
        outcome: Outcome,
    ) -> Result<Written, WriteError> {
        resource.validate()?;
        state.config.check_references(&resource)?;
        if let Some(existing) = state.config.get(resource.kind(), resource.name()) {
            let mut same = resource.clone();
            same.metadata_mut().resource_version = existing.metadata().resource_version.clone();
            if &same == existing {
                return Ok(Written {
                    outcome: Outcome::Unchanged,
                    revision: state.revision,
                    resource: same,
                });
            }
        }
        let revision = state.revision + 1;
        resource.metadata_mut().resource_version = Some(revision.to_string());
        let mut config = state.config.clone();
        config.insert(resource.clone());
        self.commit(
            key(resource.kind(), resource.name()),
            Some(resource.to_json_vec()),
            revision,
            config,
        )
        .await?;
        Ok(Written {
            outcome,
            revision,
            resource,
        })
    }

    /// One sled transaction (resource + revision), a flush, then publish.
    async fn commit(
        &self,
        key: String,
        value: Option<Vec<u8>>,
        revision: u64,
        config: Config,
    ) -> Result<(), StoreError> {
        let result: Result<(), TransactionError<()>> =
            (&self.resources, &self.meta).transaction(|(resources, meta)| {
                match &value {
                    Some(v) => resources.insert(key.as_bytes(), v.as_slice())?,
                    None => resources.remove(key.as_bytes())?,
                };
                meta.insert(REVISION_KEY, &revision.to_be_bytes())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        match result {
            Ok(()) => {}
            Err(TransactionError::Storage(e)) => return Err(e.into()),
            Err(TransactionError::Abort(())) => return Err(StoreError::Aborted),
        }
        self.flush().await?;
        self.acknowledge(revision).await?;
        self.state
            .send_replace(Arc::new(State { revision, config }));
        Ok(())
    }

    /// Records `revision` (flushed) as the one to be found on the next open.
    async fn acknowledge(&self, revision: u64) -> Result<(), StoreError> {
        let mark = self.mark.clone();
        tokio::task::spawn_blocking(move || write_mark(&mark, revision))
            .await
            .map_err(|e| std::io::Error::other(format!("revision mark task failed: {e}")))
            .and_then(|r| r)
            .map_err(|e| StoreError::Sled(sled::Error::Io(e)))
    }

    /// Another tree in the same database (the event log keeps its own).
    pub fn open_tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// Bytes the database takes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Blocks (off the async threads) until everything written is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| {
                StoreError::Sled(sled::Error::Io(std::io::Error::other(format!(
                    "flush task failed: {e}"
                ))))
            })??;
        Ok(())
    }
}

/// Secrets the admin API never returns survive writes that cannot carry
/// them: an ApiKey's credentials belong to the control plane (rotation goes
/// through [`Store::update`]), a Certificate written without its
/// `privateKey` keeps the stored one, and an EventExporter header sent back
/// as `<hidden>` keeps its stored value.
fn keep_secrets(existing: &AnyResource, incoming: &mut AnyResource) {
    match (existing, incoming) {
        (AnyResource::ApiKey(old), AnyResource::ApiKey(new)) => {
            new.spec.credentials = old.spec.credentials.clone();
        }
        (AnyResource::Certificate(old), AnyResource::Certificate(new))
            if new.spec.private_key.is_none() =>
        {
            new.spec.private_key = old.spec.private_key.clone();
        }
        (AnyResource::JwtVerifier(old), AnyResource::JwtVerifier(new)) => {
            keep_jwt_secrets(&old.spec, &mut new.spec);
        }
        (AnyResource::EventExporter(old), AnyResource::EventExporter(new)) => {
            for (name, value) in &mut new.spec.headers {
                if value == nio_proto::model::HIDDEN {
                    if let Some(stored) = old.spec.headers.get(name) {
                        value.clone_from(stored);
                    }
                }
            }
        }
        _ => {}
    }
}

/// A verifier key sent without its secret (as the admin API shows it)
/// keeps the stored secret of the key with the same `kid` (or position).
pub fn keep_jwt_secrets(old: &JwtVerifierSpec, new: &mut JwtVerifierSpec) {
    for (i, key) in new.keys.iter_mut().enumerate() {
        if key.secret.is_some() || key.public_key_pem.is_some() {
            continue;
        }
        let stored = old
            .keys
            .iter()
            .find(|k| k.kid.is_some() && k.kid == key.kid)
            .or_else(|| old.keys.get(i).filter(|k| k.kid == key.kid));
        if let Some(stored) = stored {
            key.secret = stored.secret.clone();
        }
    }
}

fn existing<'a>(state: &'a State, kind: Kind, name: &str) -> Result<&'a AnyResource, WriteError> {
    state
        .config
        .get(kind, name)
        .ok_or_else(|| WriteError::NotFound {
            kind,
            name: name.to_string(),
        })
}

fn stale(kind: Kind, name: &str, expected: u64, actual: u64) -> WriteError {
    WriteError::Conflict(format!(
        "{kind} \"{name}\" was changed since you read it: you sent resourceVersion {expected}, the current one is {actual}; GET it again and reapply your change"
    ))
}

/// `If-Match` wins over `metadata.resourceVersion`; neither means "any".
fn check_version(
    existing: &AnyResource,
    incoming: &AnyResource,
    if_match: Option<u64>,
) -> Result<(), WriteError> {
    let expected = if_match.or_else(|| {
        incoming
            .metadata()
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
    });
    let actual = existing.metadata().version();
    match expected {
        Some(expected) if expected != actual => {
            Err(stale(existing.kind(), existing.name(), expected, actual))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn backend(name: &str, url: &str) -> AnyResource {
        AnyResource::from_value(json!({"apiVersion": "nio.dev/v1", "kind": "Backend",
            "metadata": {"name": name}, "spec": {"targets": [{"url": url}]}}))
        .unwrap()
    }

    fn route(name: &str, backend: &str) -> AnyResource {
        AnyResource::from_value(json!({"apiVersion": "nio.dev/v1", "kind": "Route",
            "metadata": {"name": name}, "spec": {"frontend": {"paths": ["/"]}, "backend": backend}}))
        .unwrap()
    }

    #[tokio::test]
    async fn a_store_behind_its_acknowledged_revision_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .create(backend("b", "http://127.0.0.1:1"))
                .await
                .unwrap();
        }
        let mark = dir.path().join(MARK_FILE);
        assert_eq!(std::fs::read_to_string(&mark).unwrap().trim(), "1");
        // As if sled had lost the last write.
        std::fs::write(&mark, "2\n").unwrap();
        let err = Store::open(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("revision 2 was acknowledged") && err.contains("restore"),
            "{err}"
        );
        std::fs::write(&mark, "garbage").unwrap();
        assert!(Store::open(dir.path()).is_err());
        std::fs::write(&mark, "1\n").unwrap();
        assert_eq!(Store::open(dir.path()).unwrap().current().revision, 1);
    }

    #[tokio::test]
    async fn writes_bump_one_revision_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let w = store
                .create(backend("b", "http://127.0.0.1:1"))
                .await
                .unwrap();
            assert_eq!((w.outcome, w.revision), (Outcome::Created, 1));
            let w = store.create(route("r", "b")).await.unwrap();
            assert_eq!(w.revision, 2);
            // Same content again: unchanged, no new revision.
            let w = store.replace(route("r", "b"), None).await.unwrap();
            assert_eq!((w.outcome, w.revision), (Outcome::Unchanged, 2));
            let w = store
                .replace(backend("b", "http://127.0.0.1:2"), Some(1))
                .await
                .unwrap();
            assert_eq!(w.revision, 3);
        }
        let store = Store::open(dir.path()).unwrap();
        let state = store.current();
        assert_eq!(state.revision, 3);
        assert_eq!(state.config.len(), 2);
        assert_eq!(
            state
                .config
                .get(Kind::Backend, "b")
                .unwrap()
                .metadata()
                .resource_version
                .as_deref(),
            Some("3")
        );
    }

    #[tokio::test]
    async fn conflicts_and_references() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let err = store.create(route("r", "missing")).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("backend \"missing\" does not exist"),
            "{err}"
        );
        store
            .create(backend("b", "http://127.0.0.1:1"))
            .await
            .unwrap();
        store.create(route("r", "b")).await.unwrap();
        assert!(matches!(
            store.create(route("r", "b")).await,
            Err(WriteError::AlreadyExists { .. })
        ));
        let err = store
            .replace(backend("b", "http://127.0.0.1:9"), Some(7))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("current one is 1"), "{err}");
        let err = store.delete(Kind::Backend, "b", None).await.unwrap_err();
        assert!(err.to_string().contains("used by route \"r\""), "{err}");
        store.delete(Kind::Route, "r", None).await.unwrap();
        store.delete(Kind::Backend, "b", None).await.unwrap();
        assert_eq!(store.current().revision, 4);
        assert!(store.current().config.is_empty());
    }

    #[tokio::test]
    async fn batch_writes_all_or_nothing_under_one_revision() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .create(backend("b", "http://127.0.0.1:1"))
            .await
            .unwrap();
        // A route to a backend that exists neither before nor in the batch.
        let err = store
            .write_batch(
                vec![backend("c", "http://127.0.0.1:2"), route("r", "ghost")],
                false,
                |_, _| (),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, WriteError::Batch(_)), "{err}");
        assert_eq!(store.current().revision, 1);
        // Dry run: the plan, no write.
        let batch = vec![
            backend("b", "http://127.0.0.1:1"),
            backend("c", "http://127.0.0.1:2"),
            route("r", "c"),
        ];
        let w = store
            .write_batch(batch.clone(), true, |_, _| ())
            .await
            .unwrap();
        let outcomes: Vec<_> = w.items.iter().map(|i| i.outcome).collect();
        assert_eq!(
            outcomes,
            [Outcome::Unchanged, Outcome::Created, Outcome::Created]
        );
        assert_eq!(store.current().revision, 1);
        let w = store
            .write_batch(batch.clone(), false, |_, _| ())
            .await
            .unwrap();
        assert_eq!(w.revision, 2);
        assert_eq!(store.current().config.len(), 3);
        let w = store.write_batch(batch, false, |_, _| ()).await.unwrap();
        assert_eq!(w.revision, 2);
        assert!(w.items.iter().all(|i| i.outcome == Outcome::Unchanged));
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.current().revision, 2);
        assert_eq!(store.current().config.len(), 3);
    }

    #[tokio::test]
    async fn merge_patch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .create(backend("b", "http://127.0.0.1:1"))
            .await
            .unwrap();
        let w = store
            .patch(
                Kind::Backend,
                "b",
                &json!({"metadata": {"labels": {"team": "shop"}}}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(w.resource.metadata().labels["team"], "shop");
        let err = store
            .patch(Kind::Backend, "b", &json!({"spec": {"targets": []}}), None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("at least one target"), "{err}");
    }
}
