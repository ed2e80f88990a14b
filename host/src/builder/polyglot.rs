//! Python and JavaScript guests: the toolchains that build them, installed on
//! first use, and a build cache keyed by what went into a component.
//!
//! Each toolchain is pinned and lives in its own folder under the toolchain
//! dir (`$WEIR_HOME/toolchains`, or `$WEIR_TOOLCHAINS`). It is installed into a
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

/// A toolchain folder without its `.complete` marker was not installed by
/// this code (or was damaged); it is replaced.
fn remove_incomplete(dir: &Path) {
    if dir.exists() && !dir.join(".complete").is_file() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Runs a build tool; its output is shown live with `show`, else kept and
/// returned in the error.
pub fn run_tool(command: &mut Command, shown: &str, show: bool) -> Result<(), String> {
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

/// The Python toolchain: a venv with componentize-py, installed from PyPI once.
pub fn python_toolchain(dirs: &BuildDirs, show: bool) -> Result<PathBuf, BuildError> {
    let dir = dirs
        .toolchains
        .join(format!("componentize-py-{COMPONENTIZE_PY}"));
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
        run_tool(
            Command::new(scratch.join("bin/python3")).args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--quiet",
                &format!("componentize-py=={COMPONENTIZE_PY}"),
            ]),
            &format!("pip install componentize-py=={COMPONENTIZE_PY}"),
            show,
        )?;
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
    let dir = dirs.toolchains.join(format!("jco-{JCO}"));
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
    let package = serde_json::json!({
        "name": "weir-js-toolchain",
        "private": true,
        "description": "Builds Weir JavaScript guests; installed by `host build`.",
        "dependencies": { "@bytecodealliance/jco": JCO },
        "overrides": { "@bytecodealliance/preview2-shim": PREVIEW2_SHIM },
    });
    remove_incomplete(&dir);
    let failed = |message: String| BuildError::ToolchainInstall {
        tool: format!("jco {JCO}"),
        registry: "npm",
        message,
    };
    in_scratch(&dir, |scratch| {
        write(
            &scratch.join("package.json"),
            serde_json::to_string_pretty(&package).unwrap_or_default(),
        )?;
        run_tool(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(scratch),
            &format!("npm install @bytecodealliance/jco@{JCO}"),
            show,
        )
        .map_err(|e| format!("{e}\nIs Node.js 18 or later (with npm) installed?"))
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
}
