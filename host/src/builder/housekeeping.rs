//! Keeps `$WEIR_HOME/builds` and the compiled cache (`$WEIR_HOME/cache`)
//! bounded: the newest entries are kept, up to a count and a total size, and
//! the rest removed. `host build --prune` does it on demand, every project
//! build after building (settings `builds.keep`, `builds.max_size`,
//! `cache.keep`, `cache.max_size`).
//!
//! "Newest" is by modification time; a reused build is touched when it is
//! used, so the builds in use stay. The newest entry is always kept, even
//! when it alone is over the size: it is the one just made. Scratch folders
//! and temporary files of a build or compile in progress are left alone
//! unless they are older than [`STALE_SCRATCH`] (a crashed build's).
//! Symbolic links (which no build makes) are removed, never followed.
//!
//! Removing a build or an artifact is always safe: a missing build is built
//! again, a missing artifact compiled again (a loaded one stays mapped).

use super::BuildError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A scratch folder or temporary file this old belongs to no build in progress.
pub const STALE_SCRATCH: Duration = Duration::from_secs(3600);

/// How much of a folder to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    /// At most this many entries.
    pub keep: usize,
    /// At most this many bytes in all (the newest entry is kept regardless).
    pub max_bytes: u64,
}

impl Bound {
    /// Python and JS builds and their dependency sets.
    pub const BUILDS: Bound = Bound {
        keep: 20,
        max_bytes: 2 << 30,
    };
    /// Compiled artifacts (one per component and engine).
    pub const CACHE: Bound = Bound {
        keep: 100,
        max_bytes: 4 << 30,
    };
}

/// What a prune did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub kept: usize,
    pub removed: usize,
    pub freed_bytes: u64,
}

/// Which kind of folder: how its entries group.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// One folder per build or dependency set.
    Builds,
    /// `<name>.cwasm` with its `<name>.crc32`.
    CompiledCache,
}

/// One kept thing: its paths, when it was last written, its size.
struct Entry {
    paths: Vec<PathBuf>,
    modified: SystemTime,
    bytes: u64,
}

/// Prunes `dir` to `bound`. A missing folder has nothing to prune.
pub fn prune(dir: &Path, kind: Kind, bound: Bound) -> Result<Pruned, BuildError> {
    let io = |path: &Path, e: std::io::Error| BuildError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Pruned::default()),
        Err(e) => return Err(io(dir, e)),
    };
    let now = SystemTime::now();
    let mut pruned = Pruned::default();
    let mut groups: BTreeMap<String, Entry> = BTreeMap::new();
    for item in listing {
        let item = item.map_err(|e| io(dir, e))?;
        let path = item.path();
        let name = item.file_name().to_string_lossy().into_owned();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue; // gone meanwhile
        };
        let modified = meta.modified().unwrap_or(now);
        let bytes = size_of(&path, &meta);
        if meta.file_type().is_symlink() {
            // Never made by a build: removed (the link, not what it points to).
            if remove(&path, &meta) {
                pruned.removed += 1;
            }
            continue;
        }
        if name.starts_with('.') {
            // A scratch folder or temporary file: another process may be filling it.
            let age = now.duration_since(modified).unwrap_or_default();
            if age > STALE_SCRATCH && remove(&path, &meta) {
                pruned.removed += 1;
                pruned.freed_bytes += bytes;
            }
            continue;
        }
        let group = match kind {
            Kind::Builds => name,
            Kind::CompiledCache => match name.rsplit_once('.') {
                Some((stem, "cwasm" | "crc32")) => stem.to_string(),
                _ => name,
            },
        };
        let entry = groups.entry(group).or_insert(Entry {
            paths: Vec::new(),
            modified,
            bytes: 0,
        });
        entry.paths.push(path);
        entry.modified = entry.modified.max(modified);
        entry.bytes += bytes;
    }
    let mut entries: Vec<Entry> = groups.into_values().collect();
    entries.sort_by_key(|entry| std::cmp::Reverse(entry.modified));
    let mut kept_bytes = 0u64;
    for entry in entries {
        let fits = pruned.kept < bound.keep
            && (pruned.kept == 0 || kept_bytes.saturating_add(entry.bytes) <= bound.max_bytes);
        if fits {
            pruned.kept += 1;
            kept_bytes += entry.bytes;
            continue;
        }
        let mut gone = true;
        for path in &entry.paths {
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                gone &= remove(path, &meta);
            }
        }
        if gone {
            pruned.removed += 1;
            pruned.freed_bytes += entry.bytes;
        }
    }
    Ok(pruned)
}

/// Marks `path` used now, so a prune keeps it among the newest.
pub fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// Bytes under `path`, symbolic links not followed.
fn size_of(path: &Path, meta: &std::fs::Metadata) -> u64 {
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return meta.len();
    }
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for item in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(meta) = std::fs::symlink_metadata(item.path()) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(item.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// Removes a file, a link (not what it points to) or a folder; true when gone.
fn remove(path: &Path, meta: &std::fs::Metadata) -> bool {
    let result = if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    result.is_ok() || !path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aged(path: &Path, seconds_ago: u64) {
        let when = SystemTime::now() - Duration::from_secs(seconds_ago);
        std::fs::File::open(path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    fn build(dir: &Path, name: &str, bytes: usize, seconds_ago: u64) {
        let path = dir.join(name);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("component.wasm"), vec![0u8; bytes]).unwrap();
        aged(&path.join("component.wasm"), seconds_ago);
        aged(&path, seconds_ago);
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_newest_builds_are_kept_up_to_the_count_and_the_size() {
        let dir = tempfile::tempdir().unwrap();
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            build(dir.path(), name, 600, 100 * (4 - i as u64)); // d is the newest
        }
        let bound = Bound {
            keep: 3,
            max_bytes: u64::MAX,
        };
        let pruned = prune(dir.path(), Kind::Builds, bound).unwrap();
        assert_eq!(
            (pruned.kept, pruned.removed, pruned.freed_bytes),
            (3, 1, 600)
        );
        assert_eq!(names(dir.path()), ["b", "c", "d"]);
        let bound = Bound {
            keep: 10,
            max_bytes: 1300,
        };
        prune(dir.path(), Kind::Builds, bound).unwrap();
        assert_eq!(names(dir.path()), ["c", "d"]);
        // The newest is kept even when it alone is over the size.
        let bound = Bound {
            keep: 10,
            max_bytes: 1,
        };
        prune(dir.path(), Kind::Builds, bound).unwrap();
        assert_eq!(names(dir.path()), ["d"]);
    }

    #[test]
    fn a_touched_build_counts_as_new_and_scratch_in_progress_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), "old-but-used", 10, 500);
        build(dir.path(), "newer", 10, 100);
        build(dir.path(), ".newer.tmp-1-x", 10, 5); // being built now
        build(dir.path(), ".crashed.tmp-2-y", 10, 7200);
        touch(&dir.path().join("old-but-used"));
        let bound = Bound {
            keep: 1,
            max_bytes: u64::MAX,
        };
        let pruned = prune(dir.path(), Kind::Builds, bound).unwrap();
        assert_eq!(names(dir.path()), [".newer.tmp-1-x", "old-but-used"]);
        assert_eq!(pruned.removed, 2);
    }

    #[test]
    fn compiled_artifacts_go_with_their_checksums_and_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), "keep me").unwrap();
        for (name, age) in [("old", 300), ("new", 10)] {
            for ext in ["cwasm", "crc32"] {
                let path = dir.path().join(format!("{name}.{ext}"));
                std::fs::write(&path, "x").unwrap();
                aged(&path, age);
            }
        }
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let bound = Bound {
            keep: 1,
            max_bytes: u64::MAX,
        };
        prune(dir.path(), Kind::CompiledCache, bound).unwrap();
        let left = names(dir.path());
        assert!(
            left == ["new.crc32", "new.cwasm"] || left == ["link"],
            "{left:?}"
        );
        assert!(
            outside.path().join("precious").is_file(),
            "a link's target survives"
        );
        assert_eq!(
            prune(&dir.path().join("missing"), Kind::Builds, bound).unwrap(),
            Pruned::default()
        );
    }
}
