//! Large payloads (inputs, outputs, params, results) live in content-addressed
//! files under `$WEIR_HOME/results/`, not in SQLite rows.
//!
//! A column then holds a reference: a NUL byte (which no JSON text starts
//! with), `ref:` and the sha256. Files are written to a temporary name and
//! renamed before the row that points at them is committed, and are read back
//! only if their hash matches.

use super::StoreError;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// Payloads longer than this many bytes go to files.
pub const DEFAULT_RESULT_THRESHOLD: usize = 64 << 10;
const REF_PREFIX: &str = "\0ref:";

pub struct ResultFiles {
    dir: PathBuf,
    threshold: usize,
}

impl ResultFiles {
    pub fn new(dir: impl Into<PathBuf>, threshold: usize) -> Self {
        Self {
            dir: dir.into(),
            threshold,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The text to store in the row: the payload itself, or a reference to its file.
    pub fn deflate<'a>(&self, payload: &'a str) -> Result<Cow<'a, str>, StoreError> {
        if payload.len() <= self.threshold {
            return Ok(Cow::Borrowed(payload));
        }
        let digest = hex::encode(Sha256::digest(payload.as_bytes()));
        let path = self.dir.join(format!("{digest}.json"));
        if !path.exists() {
            let io =
                |e: std::io::Error| StoreError::Corrupt(format!("writing {}: {e}", path.display()));
            super::create_private_dir(&self.dir).map_err(io)?;
            let tmp = self.dir.join(format!(".tmp-{}", uuid::Uuid::now_v7()));
            std::fs::write(&tmp, payload).map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
        }
        Ok(Cow::Owned(format!("{REF_PREFIX}{digest}")))
    }

    /// Replaces a reference read from a row with the payload it points at.
    pub fn inflate(&self, text: &mut String) -> Result<(), StoreError> {
        let Some(digest) = text.strip_prefix(REF_PREFIX) else {
            return Ok(());
        };
        let path = self.dir.join(format!("{digest}.json"));
        let payload = std::fs::read_to_string(&path).map_err(|e| {
            StoreError::Corrupt(format!("result file {} is missing: {e}", path.display()))
        })?;
        if hex::encode(Sha256::digest(payload.as_bytes())) != digest {
            return Err(StoreError::Corrupt(format!(
                "result file {} does not match its sha256",
                path.display()
            )));
        }
        *text = payload;
        Ok(())
    }

    /// Digests referenced by `text`, if it is a reference.
    pub fn referenced(text: &str) -> Option<&str> {
        text.strip_prefix(REF_PREFIX)
    }
}
