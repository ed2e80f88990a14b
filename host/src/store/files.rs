//! Component files, content-addressed by sha256 under `$WEIR_HOME/components`.
//! Written to a temporary name and renamed; read back only if the hash matches.

use crate::model::ComponentDigest;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub struct ComponentFiles {
    dir: PathBuf,
}

impl ComponentFiles {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path_of(&self, digest: &ComponentDigest) -> PathBuf {
        self.dir.join(format!("{digest}.wasm"))
    }

    /// Stores `bytes` (idempotent) and returns their digest.
    pub fn put(&self, bytes: &[u8]) -> std::io::Result<ComponentDigest> {
        let digest = ComponentDigest::from_sha256(Sha256::digest(bytes).into());
        let path = self.path_of(&digest);
        if path.exists() {
            return Ok(digest);
        }
        super::create_private_dir(&self.dir)?;
        let tmp = self.dir.join(format!(".tmp-{}", uuid::Uuid::now_v7()));
        std::fs::write(&tmp, bytes)?;
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(digest)
    }

    /// The bytes of a stored component, checked against its digest.
    pub fn get(&self, digest: &ComponentDigest) -> std::io::Result<Vec<u8>> {
        let bytes = std::fs::read(self.path_of(digest))?;
        if ComponentDigest::from_sha256(Sha256::digest(&bytes).into()) != *digest {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "stored component {} does not match its sha256; upload it again",
                    digest.short()
                ),
            ));
        }
        Ok(bytes)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
