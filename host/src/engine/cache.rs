//! Compiled artifacts on disk, so a component is compiled once per engine.
//!
//! An artifact is named by the component's sha256 and the engine's
//! compatibility hash, and stored with a CRC-32 of its own bytes in a
//! sidecar file. On load both names and the checksum must match, or the
//! artifact is recompiled: a stale, foreign or damaged file is never trusted.
//!
//! The sidecar guards against damage, not against someone who can write to
//! `$WEIR_HOME` (they could rewrite any sidecar), so a fast checksum does the
//! job of a cryptographic hash here. It matters: a Python component's artifact
//! is ~40 MB, which SHA-256 took ~45 ms to check on every start; CRC-32 (SIMD)
//! takes a few.
//! Files are written to a temporary name and renamed, so a crash leaves no
//! half-written artifact behind.

use super::{EngineError, compile};
use crate::model::ComponentDigest;
use std::hash::{Hash, Hasher};
use std::path::Path;
use wasmtime::component::Component;

pub fn load_or_compile(
    engine: &wasmtime::Engine,
    compile_config: &wasmtime::Config,
    dir: &Path,
    digest: &ComponentDigest,
    bytes: &[u8],
) -> Result<(Component, bool), EngineError> {
    let name = format!("{}-{:016x}", digest, compatibility_hash(engine));
    let artifact = dir.join(format!("{name}.cwasm"));
    let checksum = dir.join(format!("{name}.crc32"));

    if let (Ok(code), Ok(expected)) = (std::fs::read(&artifact), std::fs::read_to_string(&checksum))
        && checksum_of(&code) == expected.trim()
    {
        drop(code);
        // Mapping the file (rather than copying the bytes we read) lets wasmtime
        // map the guest's initial memory straight from it: for a Python
        // component that is ~20 MB not copied on every start.
        // SAFETY: the file was produced by `Component::serialize` of an engine
        // with the same compatibility hash (it is in the file name) and is
        // unchanged since (the checksum matches). Artifacts are only ever
        // replaced whole, by rename, never written in place.
        match unsafe { Component::deserialize_file(engine, &artifact) } {
            Ok(component) => return Ok((component, true)),
            Err(e) => {
                tracing::warn!(path = %artifact.display(), "recompiling: cached artifact rejected: {e}")
            }
        }
    }

    // Compiled in an engine of its own, dropped once the artifact is on
    // disk: wasmtime keeps each compiling thread's Cranelift context (its
    // buffers sized by the largest function seen) for the engine's life. A
    // remote host that compiled the test fixture idled at 21 MB anonymous
    // with the contexts kept, 17 MB without (8 MB when it loaded the same
    // component from its cache, compiling nothing). The instance pool is not part of an artifact's compatibility,
    // so the scratch engine has none; if its hash differs all the same, the
    // engine compiles it itself.
    let scratch = wasmtime::Engine::new(compile_config)
        .ok()
        .filter(|scratch| compatibility_hash(scratch) == compatibility_hash(engine));
    let component = compile(scratch.as_ref().unwrap_or(engine), bytes)?;
    let cache_error = |message: String| EngineError::Cache {
        path: artifact.clone(),
        message,
    };
    let code = component
        .serialize()
        .map_err(|e| cache_error(e.to_string()))?;
    if let Err(e) = write_atomically(dir, &artifact, &checksum, &code) {
        // A cache that cannot be written costs time, not correctness.
        tracing::warn!(path = %artifact.display(), "could not cache compiled component: {e}");
        return match scratch {
            // Compiled for another engine: this one compiles it again.
            Some(_) => Ok((compile(engine, bytes)?, false)),
            None => Ok((component, false)),
        };
    }
    // Used from the file just written, as every later load is (and as it
    // must be when another engine compiled it): clean file pages that the
    // page cache shares instead of a copy in anonymous memory. Costs one
    // cached load (~0.3 ms) per compile.
    drop((component, code, scratch));
    // SAFETY: as above; the file was written whole and renamed just now
    // from `serialize` of an engine with this engine's compatibility hash.
    match unsafe { Component::deserialize_file(engine, &artifact) } {
        Ok(component) => Ok((component, false)),
        Err(e) => {
            tracing::warn!(path = %artifact.display(), "recompiling: fresh artifact rejected: {e}");
            Ok((compile(engine, bytes)?, false))
        }
    }
}

fn write_atomically(
    dir: &Path,
    artifact: &Path,
    checksum: &Path,
    code: &[u8],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile_in(dir, code)?;
    tmp.persist(artifact)?;
    let sum = checksum_of(code);
    let tmp = tempfile_in(dir, sum.as_bytes())?;
    tmp.persist(checksum)?;
    Ok(())
}

/// A file in `dir` holding `bytes`, removed unless persisted.
fn tempfile_in(dir: &Path, bytes: &[u8]) -> std::io::Result<TempFile> {
    use std::io::Write;
    let path = dir.join(format!(".tmp-{}", uuid::Uuid::now_v7()));
    let mut file = std::fs::File::create(&path)?;
    let guard = TempFile { path };
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(guard)
}

struct TempFile {
    path: std::path::PathBuf,
}

impl TempFile {
    fn persist(self, to: &Path) -> std::io::Result<()> {
        std::fs::rename(&self.path, to)?;
        std::mem::forget(self);
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn checksum_of(code: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(code))
}

pub(super) fn compatibility_hash(engine: &wasmtime::Engine) -> u64 {
    // `DefaultHasher::new()` uses fixed keys, so the value is stable across runs.
    let mut hasher = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish()
}
