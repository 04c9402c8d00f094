//! The last good snapshot on disk, so a data plane restarted while the
//! control plane is away serves what it served before.
//!
//! Written only after a snapshot compiled and was swapped in, via a
//! temporary file, fsync and rename: a crash leaves the old or the new file,
//! never a torn one.

use nio_proto::model::Config;
use nio_proto::v1::Snapshot;
use prost::Message;
use std::fs::File;
use std::io::{BufWriter, Write};
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

    pub fn store(&self, snapshot: &Snapshot) -> std::io::Result<()> {
        self.write(|out| out.write_all(&snapshot.encode_to_vec()))
    }

    /// Stores the snapshot of `config` at `revision`, encoded one resource
    /// at a time (see [`nio_proto::snapshot::write_encoded`]).
    pub fn store_config(&self, config: &Config, revision: u64) -> std::io::Result<()> {
        self.write(|out| nio_proto::snapshot::write_encoded(config, revision, out))
    }

    fn write(
        &self,
        contents: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
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
        contents(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(FILE))?;
        // Make the rename itself durable.
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path()).unwrap();
        assert_eq!(cache.load().unwrap(), None);
        let s = Snapshot {
            revision: 7,
            hash: "h".into(),
            resources: vec![],
            resources_gzip: Default::default(),
        };
        cache.store(&s).unwrap();
        assert_eq!(cache.load().unwrap(), Some(s));
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
