//! The last good snapshot on disk, so a data plane restarted while the
//! control plane is away serves what it served before.
//!
//! Written only after a snapshot compiled and was swapped in, via a
//! temporary file, fsync and rename: a crash leaves the old or the new file,
//! never a torn one.

use nio_proto::snapshot::Holding;
use nio_proto::v1::Snapshot;
use prost::Message;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

const FILE: &str = "snapshot.pb";

#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: &Path) -> std::io::Result<Cache> {
        std::fs::create_dir_all(dir)?;
        Ok(Cache {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cached snapshot, if there is a readable one.
    pub fn load(&self) -> Result<Option<Snapshot>, String> {
        let path = self.dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Snapshot::decode(bytes.as_slice())
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Stores the snapshot of `holding` at `revision`, written one resource
    /// at a time (see [`Holding::write`]).
    pub fn store(&self, holding: &Holding, revision: u64) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        // Owner only: the snapshot holds certificate keys and verifier
        // secrets.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut out = BufWriter::new(f);
        holding.write(revision, &mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(FILE))?;
        // Make the rename itself durable.
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is stored loads back as the snapshot the control plane would
    /// send for the same configuration: same resources, same hash.
    #[test]
    fn round_trip() {
        use nio_proto::model::{AnyResource, Config};
        use serde_json::json;
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path()).unwrap();
        assert_eq!(cache.load().unwrap(), None);
        let config: Config = [
            json!({"apiVersion": "nio.dev/v1", "kind": "Backend", "metadata": {"name": "b"},
                   "spec": {"targets": [{"url": "http://127.0.0.1:1"}]}}),
            json!({"apiVersion": "nio.dev/v1", "kind": "Route", "metadata": {"name": "r"},
                   "spec": {"frontend": {"hosts": ["a.test"]}, "backend": "b"}}),
        ]
        .into_iter()
        .map(|v| AnyResource::from_value(v).unwrap())
        .collect();
        let sent = nio_proto::snapshot::compress(nio_proto::snapshot::encode(&config, 7));
        let holding = Holding::from_snapshot(&sent).unwrap();
        cache.store(&holding, 7).unwrap();
        let loaded = cache.load().unwrap().unwrap();
        assert_eq!(loaded, nio_proto::snapshot::encode(&config, 7));
        assert_eq!(nio_proto::snapshot::decode(&loaded).unwrap(), config);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(FILE), b"\xff\xff garbage").unwrap();
        assert!(cache.load().is_err());
    }
}
