//! Large payloads (inputs, outputs, params, results) live in content-addressed
//! files under `$WEIR_HOME/results/`, not in SQLite rows.
//!
//! A column then holds a reference: a NUL byte (which no JSON text starts
//! with), `ref:` and the sha256. Files are written durably (temp file,
//! fsync, rename, fsync of the folder: [`super::files::write_durably`]) before
//! the row that points at them is committed, and are read back only if their
//! hash matches. A payload whose file is missing or damaged is written again
//! the next time a row stores it.
//!
//! Files are written only inside a write transaction (the writer begins
//! `IMMEDIATE`), and `Store::prune` removes them only while it holds the
//! write lock itself; so no file is removed between being written (or found
//! already there) and the commit of the row that points at it.

use super::StoreError;
use super::files::{holds, write_durably};
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
        let path = self.path_of(&digest);
        let intact = holds(&path, payload.len(), |stored| {
            hex::encode(Sha256::digest(stored)) == digest
        });
        if !intact {
            super::create_private_dir(&self.dir).map_err(|e| {
                StoreError::Corrupt(format!("creating {}: {e}", self.dir.display()))
            })?;
            write_durably(&self.dir, &path, payload.as_bytes()).map_err(|e| {
                let what = format!("writing result file {}: {e}", path.display());
                if e.kind() == std::io::ErrorKind::StorageFull {
                    StoreError::Full(what)
                } else {
                    StoreError::Corrupt(what)
                }
            })?;
        }
        Ok(Cow::Owned(format!("{REF_PREFIX}{digest}")))
    }

    /// Replaces a reference read from a row with the payload it points at.
    pub fn inflate(&self, text: &mut String) -> Result<(), StoreError> {
        let Some(digest) = text.strip_prefix(REF_PREFIX) else {
            return Ok(());
        };
        let path = self.path_of(digest);
        let payload = std::fs::read(&path).map_err(|e| {
            StoreError::Corrupt(format!("result file {} is missing: {e}", path.display()))
        })?;
        if hex::encode(Sha256::digest(&payload)) != digest {
            return Err(StoreError::Corrupt(format!(
                "result file {} is damaged (it no longer matches its sha256)",
                path.display()
            )));
        }
        let payload = String::from_utf8(payload).map_err(|_| {
            StoreError::Corrupt(format!("result file {} is not UTF-8", path.display()))
        })?;
        *text = payload;
        Ok(())
    }

    fn path_of(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.json"))
    }

    /// Digests referenced by `text`, if it is a reference.
    pub fn referenced(text: &str) -> Option<&str> {
        text.strip_prefix(REF_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::files::TEMP_PREFIX;

    fn big_payload() -> String {
        format!("\"{}\"", "x".repeat(100))
    }

    #[test]
    fn a_damaged_result_file_is_refused_on_read_and_rewritten_by_the_next_store() {
        let dir = tempfile::tempdir().unwrap();
        let files = ResultFiles::new(dir.path().join("results"), 16);
        let payload = big_payload();
        let reference = files.deflate(&payload).unwrap().into_owned();
        let digest = ResultFiles::referenced(&reference).unwrap();
        let path = files.path_of(digest);
        let mut damaged = payload.clone().into_bytes();
        damaged[5] = b'y';
        std::fs::write(&path, &damaged).unwrap();
        let mut text = reference.clone();
        let err = files.inflate(&mut text).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
        assert_eq!(text, reference, "nothing damaged is handed out");
        // The same payload stored again (a retry, a cache hit) repairs the file.
        assert_eq!(files.deflate(&payload).unwrap(), reference);
        files.inflate(&mut text).unwrap();
        assert_eq!(text, payload);
    }

    #[test]
    fn a_temp_file_left_by_a_crash_is_never_read_as_a_result() {
        let dir = tempfile::tempdir().unwrap();
        let files = ResultFiles::new(dir.path(), 16);
        let payload = big_payload();
        let digest = hex::encode(Sha256::digest(payload.as_bytes()));
        // A crash between write and rename leaves a short temp file only.
        std::fs::write(dir.path().join(format!("{TEMP_PREFIX}x")), &payload[..9]).unwrap();
        let mut text = format!("{REF_PREFIX}{digest}");
        assert!(
            files.inflate(&mut text).is_err(),
            "the temp file is not the result"
        );
        files.deflate(&payload).unwrap();
        files.inflate(&mut text).unwrap();
        assert_eq!(text, payload);
    }
}
