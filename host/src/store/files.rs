//! Component files, content-addressed by sha256 under `$WEIR_HOME/components`,
//! and the one way Weir writes a file that must survive a crash.
//!
//! A file is written to a temporary name, fsynced, renamed to its digest and
//! its folder fsynced ([`write_durably`]): after that it survives a power loss,
//! and before it nothing is under the digest's name, so a crash mid-write
//! leaves at most a stray temporary file, never a short file with a good name.
//! Reads check the bytes against the name; a `put` of bytes whose file is
//! missing or damaged writes it again, so uploading a component repairs it.

use crate::model::ComponentDigest;
use sha2::{Digest, Sha256};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Temporary files start with this; nothing ever reads them.
pub(super) const TEMP_PREFIX: &str = ".tmp-";

/// A temporary component file older than this was left by a crash: no
/// upload takes an hour to write. Younger ones may be another process's
/// upload in progress, so they are left alone.
const STALE_TEMP_AFTER: Duration = Duration::from_secs(3600);

/// What can go wrong with a stored component file.
#[derive(Debug, thiserror::Error)]
pub enum ComponentFileError {
    #[error("no stored component {digest}; upload it first (host flow upload FILE.wasm)")]
    Missing { digest: ComponentDigest },
    #[error(
        "stored component {digest} is damaged (its bytes no longer match its sha256); \
         upload the same .wasm again (host flow upload FILE.wasm) to repair it"
    )]
    Damaged { digest: ComponentDigest },
    #[error("component file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

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

    /// Stores `bytes` and returns their digest. Idempotent; a stored file
    /// that is missing or does not hash to its name is written again.
    pub fn put(&self, bytes: &[u8]) -> Result<ComponentDigest, ComponentFileError> {
        let digest = ComponentDigest::from_sha256(Sha256::digest(bytes).into());
        let path = self.path_of(&digest);
        if holds(&path, bytes.len(), |stored| {
            ComponentDigest::from_sha256(Sha256::digest(stored).into()) == digest
        }) {
            return Ok(digest);
        }
        let io = |source| ComponentFileError::Io {
            path: path.clone(),
            source,
        };
        super::create_private_dir(&self.dir).map_err(io)?;
        remove_stale_temp_files(&self.dir, STALE_TEMP_AFTER).map_err(io)?;
        write_durably(&self.dir, &path, bytes).map_err(io)?;
        Ok(digest)
    }

    /// The bytes of a stored component, checked against its digest.
    pub fn get(&self, digest: &ComponentDigest) -> Result<Vec<u8>, ComponentFileError> {
        let path = self.path_of(digest);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ComponentFileError::Missing {
                    digest: digest.clone(),
                });
            }
            Err(source) => return Err(ComponentFileError::Io { path, source }),
        };
        if ComponentDigest::from_sha256(Sha256::digest(&bytes).into()) != *digest {
            return Err(ComponentFileError::Damaged {
                digest: digest.clone(),
            });
        }
        Ok(bytes)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Whether `path` holds `len` bytes that pass `check` (read only when the size fits).
pub(super) fn holds(path: &Path, len: usize, check: impl FnOnce(&[u8]) -> bool) -> bool {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() == len as u64 => {
            std::fs::read(path).is_ok_and(|stored| check(&stored))
        }
        _ => false,
    }
}

/// Writes `bytes` to `path` (inside `dir`) so that it survives a power loss
/// once this returns: a temporary file, fsynced, renamed over `path`, then
/// the folder fsynced so the rename itself is on disk.
pub(super) fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
    }
    let tmp = dir.join(format!("{TEMP_PREFIX}{}", uuid::Uuid::now_v7()));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Windows cannot open a folder as a file; its renames are journaled by NTFS.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Removes temporary files in `dir` last modified more than `older_than`
/// ago (left by a crash mid-write); returns how many went.
pub(super) fn remove_stale_temp_files(dir: &Path, older_than: Duration) -> std::io::Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|at| now.duration_since(at).unwrap_or_default() >= older_than);
        if stale && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BYTES: &[u8] = b"\0asm not really, but content-addressed all the same";

    #[test]
    fn a_damaged_file_is_reported_as_damaged_and_a_fresh_put_repairs_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = ComponentFiles::new(dir.path().join("components"));
        let digest = files.put(BYTES).unwrap();
        // Same length, one byte flipped: a size check alone would not see it.
        let mut damaged = BYTES.to_vec();
        damaged[10] ^= 1;
        std::fs::write(files.path_of(&digest), &damaged).unwrap();
        let err = files.get(&digest).unwrap_err();
        assert!(matches!(err, ComponentFileError::Damaged { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("damaged") && message.contains("upload the same .wasm again"),
            "{message}"
        );
        assert_eq!(files.put(BYTES).unwrap(), digest);
        assert_eq!(files.get(&digest).unwrap(), BYTES);
        // A truncated file is repaired the same way.
        std::fs::write(files.path_of(&digest), &BYTES[..5]).unwrap();
        files.put(BYTES).unwrap();
        assert_eq!(files.get(&digest).unwrap(), BYTES);
    }

    #[test]
    fn a_missing_file_is_reported_as_missing_and_a_fresh_put_restores_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = ComponentFiles::new(dir.path());
        let digest = files.put(BYTES).unwrap();
        std::fs::remove_file(files.path_of(&digest)).unwrap();
        let err = files.get(&digest).unwrap_err();
        assert!(matches!(err, ComponentFileError::Missing { .. }), "{err:?}");
        files.put(BYTES).unwrap();
        assert_eq!(files.get(&digest).unwrap(), BYTES);
    }

    #[test]
    fn a_temp_file_left_by_a_crash_is_never_served_and_is_cleaned_once_stale() {
        let dir = tempfile::tempdir().unwrap();
        let files = ComponentFiles::new(dir.path());
        let digest = ComponentDigest::from_sha256(Sha256::digest(BYTES).into());
        // What a crash between write and rename leaves: a short temp file.
        let stray = dir.path().join(format!("{TEMP_PREFIX}crashed"));
        std::fs::write(&stray, &BYTES[..7]).unwrap();
        assert!(matches!(
            files.get(&digest),
            Err(ComponentFileError::Missing { .. })
        ));
        // A young temp file may be another process's upload: kept.
        files.put(b"another component").unwrap();
        assert!(stray.exists());
        let long_ago = SystemTime::now() - STALE_TEMP_AFTER - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&stray)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        assert_eq!(files.put(BYTES).unwrap(), digest);
        assert!(
            !stray.exists(),
            "a stale temp file is removed by the next put"
        );
        assert_eq!(files.get(&digest).unwrap(), BYTES);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(TEMP_PREFIX))
            .collect();
        assert!(left.is_empty(), "no temp files left by puts: {left:?}");
    }
}
