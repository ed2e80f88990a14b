//! Python and JavaScript guests: the toolchains that build them, installed on
//! first use, and a build cache keyed by what went into a component.
//!
//! Each toolchain is pinned by version and by hash and lives in its own
//! folder under the toolchain dir (`$WEIR_HOME/toolchains`, or
//! `$WEIR_TOOLCHAINS`), named after its version and its pin file. componentize-py
//! is installed with `pip --require-hashes` from a requirements file listing
//! the sha256 of every wheel PyPI serves for it; jco and all its dependencies
//! with `npm ci` from a committed `package-lock.json` (sha512 `integrity` of
//! each package). A download that does not match is refused. Both pin files
//! live in `toolchains/` beside this file. A toolchain is installed into a
//! temporary folder and renamed into place when complete, so a failed or
//! concurrent install never leaves a half-installed toolchain behind.
//!
//! A build's inputs (project sources, SDK, WIT, toolchain version) are hashed;
//! the component is kept under `$WEIR_HOME/builds/<hash>/`, so an unchanged
//! project is not rebuilt and keeps the same sha256 (and compiled artifact).

use super::BuildError;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The contract, as every SDK generates from it.
pub const WIT: &str = include_str!("../../../wit/flow.wit");
/// The Python SDK, written next to each Python build.
pub const PYTHON_SDK: &str = include_str!("../../../guest-sdk/python/weir_sdk/__init__.py");
/// The JavaScript SDK, written next to each JavaScript build.
pub const JS_SDK: &str = include_str!("../../../guest-sdk/js/weir-sdk.js");

pub const COMPONENTIZE_PY: &str = "0.25.1";
pub const JCO: &str = "1.35.0";
/// jco reads a WIT folder through this package; later versions break that.
pub const PREVIEW2_SHIM: &str = "0.25.0";

/// componentize-py's version and the sha256 of each of its wheels.
const COMPONENTIZE_PY_REQUIREMENTS: &str =
    include_str!("toolchains/componentize-py-requirements.txt");
/// The jco toolchain's `package.json` and the lock that pins its whole tree.
/// Regenerate both with `npm install --package-lock-only` in a folder holding
/// the `package.json` after changing [`JCO`] or [`PREVIEW2_SHIM`].
const JCO_PACKAGE: &str = include_str!("toolchains/jco-package.json");
const JCO_PACKAGE_LOCK: &str = include_str!("toolchains/jco-package-lock.json");

/// Folders never part of a guest's sources.
const SKIPPED_DIRS: &[&str] = &[
    "target",
    "node_modules",
    "__pycache__",
    "venv",
    "dist",
    "build",
];
/// Refuse to hash (or copy) folders larger than this: probably not a guest project.
const MAX_SOURCE_BYTES: u64 = 64 << 20;

/// Where toolchains are installed and builds are kept.
#[derive(Clone, Debug)]
pub struct BuildDirs {
    pub toolchains: PathBuf,
    pub builds: PathBuf,
}

/// The project's files, relative path → bytes, sorted; dot-folders and
/// [`SKIPPED_DIRS`] left out.
pub fn source_files(root: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, BuildError> {
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    let io = |path: &Path, e: std::io::Error| BuildError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let entry = entry.map_err(|e| io(&dir, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = entry.file_type().map_err(|e| io(&path, e))?;
            if kind.is_dir() {
                if !name.starts_with('.') && !SKIPPED_DIRS.contains(&name.as_str()) {
                    stack.push(path);
                }
            } else if kind.is_file() && !name.ends_with(".wasm") && !name.ends_with(".pyc") {
                let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
                total += bytes.len() as u64;
                if total > MAX_SOURCE_BYTES {
                    return Err(BuildError::TooLarge(root.to_path_buf()));
                }
                let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                files.push((relative, bytes));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// sha256 over labelled parts and the project's files: the build cache key.
pub fn build_key(parts: &[&str], files: &[(PathBuf, Vec<u8>)]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    for (path, bytes) in files {
        let path = path.to_string_lossy();
        hasher.update((path.len() as u64).to_le_bytes());
        hasher.update(path.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    hex::encode(hasher.finalize())
}

/// Writes `text` to `path`, creating its folder.
pub fn write(path: &Path, text: impl AsRef<[u8]>) -> Result<(), BuildError> {
    let io = |e: std::io::Error| BuildError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, text).map_err(io)
}

/// A fresh, empty folder next to `final_dir` for building it.
fn scratch_dir(final_dir: &Path) -> Result<PathBuf, BuildError> {
    let name = final_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let scratch = final_dir.with_file_name(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&scratch).map_err(|e| BuildError::Io {
        path: scratch.clone(),
        message: e.to_string(),
    })?;
    Ok(scratch)
}

/// Makes `final_dir` in a scratch folder beside it: `fill` writes into the
/// scratch; when it succeeds the folder is moved into place, when it fails
/// the folder is removed and `fill`'s error is returned (inner `Err`). The
/// outer error is the file system's.
pub fn in_scratch<E>(
    final_dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<Result<(), E>, BuildError> {
    let scratch = scratch_dir(final_dir)?;
    if let Err(e) = fill(&scratch) {
        let _ = std::fs::remove_dir_all(&scratch);
        return Ok(Err(e));
    }
    publish(&scratch, final_dir)?;
    Ok(Ok(()))
}

/// Moves a completed `scratch` folder to `final_dir`. If another process got
/// there first its copy is kept (both are complete) and ours is removed.
fn publish(scratch: &Path, final_dir: &Path) -> Result<(), BuildError> {
    match std::fs::rename(scratch, final_dir) {
        Ok(()) => Ok(()),
        Err(_) if final_dir.is_dir() => {
            let _ = std::fs::remove_dir_all(scratch);
            Ok(())
        }
        Err(e) => Err(BuildError::Io {
            path: final_dir.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

/// `name-version-<hash of its pin files>`: a changed pin installs afresh.
fn toolchain_dir(dirs: &BuildDirs, name: &str, version: &str, pins: &[&str]) -> PathBuf {
    let mut hasher = Sha256::new();
    for pin in pins {
        hasher.update(pin.as_bytes());
    }
    let hash = hex::encode(hasher.finalize());
    dirs.toolchains
        .join(format!("{name}-{version}-{}", &hash[..12]))
}

/// Adds what a hash mismatch means to an installer's failure.
fn explain_pin_failure(message: String) -> String {
    let mismatch = message.contains("DO NOT MATCH THE HASHES") || message.contains("EINTEGRITY");
    if mismatch {
        format!(
            "{message}\nA download did not match the hash Weir pins for it: the registry (or \
             something between it and you) served other bytes than the ones this host was \
             released with. Nothing was installed; do not install it by hand."
        )
    } else {
        message
    }
}

/// A toolchain folder without its `.complete` marker was not installed by
/// this code (or was damaged); it is replaced.
fn remove_incomplete(dir: &Path) {
    if dir.exists() && !dir.join(".complete").is_file() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Runs a build tool; its output is shown live with `show`, else kept and
/// returned in the error.
pub(super) fn run_tool(command: &mut Command, shown: &str, show: bool) -> Result<(), String> {
    command.stdin(Stdio::null());
    if show {
        // The tools' chatter goes to stderr so stdout stays the result.
        command.stdout(std::io::stderr()).stderr(Stdio::inherit());
        let status = command
            .status()
            .map_err(|e| format!("could not run `{shown}`: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "`{shown}` failed ({status}); its messages are above"
            ))
        }
    } else {
        let out = command
            .output()
            .map_err(|e| format!("could not run `{shown}`: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Err(format!(
                "`{shown}` failed ({}):\n{}",
                out.status,
                text.trim()
            ))
        }
    }
}

/// Runs a build step with its output kept, shown only when it fails, and
/// then by the builder, which picks the guest's error out of it
/// ([`super::diagnose`]). Returns that output (stdout, then stderr).
pub(super) fn run_captured(command: &mut Command, shown: &str) -> Result<(), String> {
    command.stdin(Stdio::null());
    let out = command
        .output()
        .map_err(|e| format!("could not run `{shown}`: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Err(text)
}

/// The Python toolchain: a venv with componentize-py, installed from PyPI once.
pub fn python_toolchain(dirs: &BuildDirs, show: bool) -> Result<PathBuf, BuildError> {
    let dir = toolchain_dir(
        dirs,
        "componentize-py",
        COMPONENTIZE_PY,
        &[COMPONENTIZE_PY_REQUIREMENTS],
    );
    let python = dir.join("bin/python3");
    if dir.join(".complete").is_file() {
        return Ok(python);
    }
    eprintln!(
        "Installing componentize-py {COMPONENTIZE_PY} from PyPI into {} (once) ...",
        dir.display()
    );
    remove_incomplete(&dir);
    // A venv's interpreter finds its packages relative to itself, so it moves.
    let install = in_scratch(&dir, |scratch| -> Result<(), String> {
        run_tool(
            Command::new("python3").arg("-m").arg("venv").arg(scratch),
            "python3 -m venv",
            show,
        )
        .map_err(|e| format!("{e}\nIs Python 3.9 or later installed as `python3`?"))?;
        write(
            &scratch.join("requirements.txt"),
            COMPONENTIZE_PY_REQUIREMENTS,
        )
        .map_err(|e| e.to_string())?;
        run_tool(
            Command::new(scratch.join("bin/python3"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-input",
                    "--quiet",
                    // Wheels only: building componentize-py from source needs Rust and
                    // runs its build scripts here; the pinned wheels cover the usual hosts.
                    "--only-binary=:all:",
                    "--require-hashes",
                    "--requirement",
                    "requirements.txt",
                ])
                .current_dir(scratch),
            &format!("pip install --require-hashes componentize-py=={COMPONENTIZE_PY}"),
            show,
        )
        .map_err(explain_pin_failure)?;
        write(&scratch.join(".complete"), COMPONENTIZE_PY).map_err(|e| e.to_string())
    })?;
    install.map_err(|message| BuildError::ToolchainInstall {
        tool: format!("componentize-py {COMPONENTIZE_PY}"),
        registry: "PyPI",
        message,
    })?;
    Ok(python)
}

/// The JavaScript toolchain: jco (QuickJS backend) in a folder of its own,
/// installed from npm once. Returns jco's command-line entry point.
pub fn js_toolchain(dirs: &BuildDirs, show: bool) -> Result<PathBuf, BuildError> {
    let dir = toolchain_dir(dirs, "jco", JCO, &[JCO_PACKAGE, JCO_PACKAGE_LOCK]);
    let entry = |dir: &Path| -> Option<PathBuf> {
        let package = dir.join("node_modules/@bytecodealliance/jco/package.json");
        let text = std::fs::read_to_string(package).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        let bin = match &json["bin"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(map) => map.get("jco")?.as_str()?.to_string(),
            _ => return None,
        };
        let path = dir.join("node_modules/@bytecodealliance/jco").join(bin);
        path.is_file().then_some(path)
    };
    if dir.join(".complete").is_file()
        && let Some(path) = entry(&dir)
    {
        return Ok(path);
    }
    eprintln!(
        "Installing jco {JCO} from npm into {} (once) ...",
        dir.display()
    );
    remove_incomplete(&dir);
    let failed = |message: String| BuildError::ToolchainInstall {
        tool: format!("jco {JCO}"),
        registry: "npm",
        message,
    };
    in_scratch(&dir, |scratch| {
        write(&scratch.join("package.json"), JCO_PACKAGE)?;
        write(&scratch.join("package-lock.json"), JCO_PACKAGE_LOCK)?;
        run_tool(
            Command::new("npm")
                // `ci` installs exactly the lock (integrity checked) or fails; it never re-resolves.
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(scratch),
            &format!("npm ci (@bytecodealliance/jco@{JCO}, from the lock)"),
            show,
        )
        .map_err(|e| {
            if e.contains("EINTEGRITY") {
                explain_pin_failure(e)
            } else {
                format!("{e}\nIs Node.js 18 or later (with npm) installed?")
            }
        })
        .and_then(|()| write(&scratch.join(".complete"), JCO).map_err(|e| e.to_string()))
        .map_err(failed)
    })??;
    entry(&dir).ok_or_else(|| failed("the package has no `jco` command".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_key_follows_content_not_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.py"), "x = 1").unwrap();
        std::fs::create_dir(dir.path().join("__pycache__")).unwrap();
        std::fs::write(dir.path().join("__pycache__/app.pyc"), "junk").unwrap();
        let files = source_files(dir.path()).unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        let key = build_key(&["python"], &files);
        assert_eq!(
            key,
            build_key(&["python"], &source_files(dir.path()).unwrap())
        );
        assert_ne!(key, build_key(&["js"], &files));
        std::fs::write(dir.path().join("app.py"), "x = 2").unwrap();
        assert_ne!(
            key,
            build_key(&["python"], &source_files(dir.path()).unwrap())
        );
    }

    #[test]
    fn componentize_py_is_pinned_by_version_and_every_wheel_by_sha256() {
        let pins: Vec<&str> = COMPONENTIZE_PY_REQUIREMENTS
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect();
        assert_eq!(pins[0], format!("componentize-py=={COMPONENTIZE_PY} \\"));
        let hashes: Vec<&str> = pins[1..]
            .iter()
            .map(|l| l.trim_end_matches(" \\"))
            .map(|l| l.strip_prefix("--hash=sha256:").expect(l))
            .collect();
        assert!(hashes.len() >= 5, "linux x86_64/aarch64, macOS x2, windows");
        for hash in hashes {
            assert!(
                hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
                "{hash}"
            );
        }
    }

    #[test]
    fn the_jco_lock_pins_every_package_by_integrity_and_matches_the_versions() {
        let package: serde_json::Value = serde_json::from_str(JCO_PACKAGE).unwrap();
        assert_eq!(package["dependencies"]["@bytecodealliance/jco"], JCO);
        assert_eq!(
            package["overrides"]["@bytecodealliance/preview2-shim"],
            PREVIEW2_SHIM
        );
        let lock: serde_json::Value = serde_json::from_str(JCO_PACKAGE_LOCK).unwrap();
        let packages = lock["packages"].as_object().unwrap();
        assert_eq!(packages[""]["dependencies"], package["dependencies"]);
        assert_eq!(
            packages["node_modules/@bytecodealliance/jco"]["version"],
            JCO
        );
        assert_eq!(
            packages["node_modules/@bytecodealliance/preview2-shim"]["version"],
            PREVIEW2_SHIM
        );
        for (path, entry) in packages.iter().filter(|(path, _)| !path.is_empty()) {
            let integrity = entry["integrity"].as_str().unwrap_or_default();
            assert!(
                integrity.starts_with("sha512-"),
                "{path} is not pinned by hash"
            );
        }
    }

    #[test]
    fn a_changed_pin_installs_into_a_new_folder() {
        let dirs = BuildDirs {
            toolchains: "/t".into(),
            builds: "/b".into(),
        };
        let pinned = toolchain_dir(&dirs, "jco", JCO, &[JCO_PACKAGE, JCO_PACKAGE_LOCK]);
        let tampered = JCO_PACKAGE_LOCK.replacen("sha512-", "sha512-AAAA", 1);
        assert_ne!(
            pinned,
            toolchain_dir(&dirs, "jco", JCO, &[JCO_PACKAGE, &tampered])
        );
    }

    #[test]
    fn a_hash_mismatch_says_what_it_means() {
        // What pip printed for a tampered hash (the sha256 of the x86_64 wheel changed).
        let pip = "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE. \
                   If you have updated the package versions, please update the hashes.\n    \
                   componentize-py==0.25.1 from https://files.pythonhosted.org/...whl:\n        \
                   Expected sha256 00000000ab8453cb0cd8bf03f3c7103420d06f2f3d360186a280a70a1ca5e89f\n             \
                   Got        8623cd8cab8453cb0cd8bf03f3c7103420d06f2f3d360186a280a70a1ca5e89f";
        let explained = explain_pin_failure(pip.to_string());
        assert!(explained.starts_with(pip));
        assert!(
            explained.contains("did not match the hash Weir pins"),
            "{explained}"
        );
        let npm = "npm error code EINTEGRITY\nnpm error sha512-... integrity checksum failed";
        assert!(explain_pin_failure(npm.into()).contains("Nothing was installed"));
        assert_eq!(explain_pin_failure("network down".into()), "network down");
    }
}
