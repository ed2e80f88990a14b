//! Results kept outside the database (`result_storage = "NAME"` in a task's
//! policy): the output is written to a file named by its sha256 in the
//! directory the host gave that name (`--result-storage NAME=DIR`), and the
//! task's record holds only a reference, `{"$weir_result": {"storage":
//! NAME, "sha256": HEX}}`. A replay or a cache hit reads the file back and
//! checks its sha256; a file gone or damaged makes the call run again.
//!
//! A component names a storage, never a path: only the host decides where
//! its files go, so a manifest cannot make the host write elsewhere.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

const KEY: &str = "$weir_result";

/// Why a result could not be kept in, or read from, its storage.
#[derive(Debug, thiserror::Error)]
pub enum ResultStorageError {
    #[error("result_storage '{0}' is not set on this host; start it with --result-storage {0}=DIR")]
    Unknown(String),
    #[error("result file {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("result file {0} does not hold what was stored (its sha256 differs)")]
    Damaged(PathBuf),
}

/// The directory of storage `name`.
pub(super) fn dir_of<'a>(
    storages: &'a BTreeMap<String, PathBuf>,
    name: &str,
) -> Result<&'a Path, ResultStorageError> {
    storages
        .get(name)
        .map(PathBuf::as_path)
        .ok_or_else(|| ResultStorageError::Unknown(name.to_string()))
}

/// Writes `output` into storage `name` (temp file, fsync, rename) and
/// returns the reference to record in its place.
pub(super) fn keep(
    storages: &BTreeMap<String, PathBuf>,
    name: &str,
    output: &str,
) -> Result<String, ResultStorageError> {
    let dir = dir_of(storages, name)?;
    let sha256 = hex::encode(Sha256::digest(output.as_bytes()));
    let path = dir.join(format!("{sha256}.json"));
    let io = |e: std::io::Error| ResultStorageError::Io {
        path: path.clone(),
        message: e.to_string(),
    };
    let temp = dir.join(format!(".tmp-{sha256}-{}", uuid::Uuid::now_v7()));
    let mut file = std::fs::File::create(&temp).map_err(io)?;
    file.write_all(output.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temp, &path).map_err(io)?;
    Ok(serde_json::json!({ KEY: { "storage": name, "sha256": sha256 } }).to_string())
}

/// The output a recorded reference points at (checked against its
/// sha256), or `None` when `recorded` is not a reference.
pub(super) fn read_back(
    storages: &BTreeMap<String, PathBuf>,
    recorded: &str,
) -> Option<Result<String, ResultStorageError>> {
    let value: serde_json::Value = serde_json::from_str(recorded).ok()?;
    let reference = value.as_object()?.get(KEY)?;
    let (name, sha256) = (
        reference["storage"].as_str()?,
        reference["sha256"].as_str()?,
    );
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(dir_of(storages, name).and_then(|dir| {
        let path = dir.join(format!("{sha256}.json"));
        let bytes = std::fs::read(&path).map_err(|e| ResultStorageError::Io {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if hex::encode(Sha256::digest(&bytes)) != sha256 {
            return Err(ResultStorageError::Damaged(path));
        }
        String::from_utf8(bytes).map_err(|_| ResultStorageError::Damaged(path))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_result_reads_back_and_a_damaged_or_unknown_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let storages = BTreeMap::from([("big".to_string(), dir.path().to_path_buf())]);
        let reference = keep(&storages, "big", "\"hello\"").unwrap();
        assert!(!reference.contains("hello"), "{reference}");
        assert_eq!(
            read_back(&storages, &reference).unwrap().unwrap(),
            "\"hello\""
        );
        assert!(read_back(&storages, "\"plain output\"").is_none());
        assert!(matches!(
            keep(&storages, "elsewhere", "1"),
            Err(ResultStorageError::Unknown(_))
        ));
        // A reference cannot point outside the storage's directory.
        let sneaky = r#"{"$weir_result": {"storage": "big", "sha256": "../../etc/passwd"}}"#;
        assert!(read_back(&storages, sneaky).is_none());
        let file = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::write(&file, "\"changed\"").unwrap();
        assert!(matches!(
            read_back(&storages, &reference),
            Some(Err(ResultStorageError::Damaged(_)))
        ));
    }
}
