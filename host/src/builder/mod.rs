//! Turns a guest project into a component: `host build PATH` and the build
//! step of `host flow run PATH`.
//!
//! Rust projects (a `Cargo.toml`) are built with `cargo build --target
//! wasm32-wasip2`; the target is added with rustup once if it is missing.
//! Guests share one target directory (`<cargo target dir>/weir-guests`), apart
//! from the host's own builds, so a nested build never waits on the outer one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const WASM_TARGET: &str = "wasm32-wasip2";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error(
        "{0} is not a guest project: expected a .wasm file or a folder with Cargo.toml (Rust); Python (pyproject.toml/app.py) and JavaScript (package.json) guests are not supported by this host yet"
    )]
    UnknownProject(PathBuf),
    #[error("could not run `{command}`: {message}")]
    Spawn { command: String, message: String },
    #[error(
        "the {WASM_TARGET} Rust target is not installed and `rustup target add {WASM_TARGET}` failed:\n{0}\nInstall it by hand with: rustup target add {WASM_TARGET}"
    )]
    TargetMissing(String),
    #[error("the guest project failed to build (cargo's messages are above)")]
    CompileFailed,
    #[error(
        "cargo built {0} but produced no .wasm component; is its [lib] crate-type = [\"cdylib\"]?"
    )]
    NoArtifact(PathBuf),
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    pub wasm: PathBuf,
    /// False when PATH was a `.wasm` file already.
    pub compiled: bool,
}

/// Builds `path` (or takes it as is when it is a `.wasm` file).
///
/// Cargo's own progress goes to stderr when `show_progress` is set.
pub fn build(path: &Path, show_progress: bool) -> Result<Built, BuildError> {
    if !path.exists() {
        return Err(BuildError::Missing(path.to_path_buf()));
    }
    if path.is_file() {
        return Ok(Built {
            wasm: path.to_path_buf(),
            compiled: false,
        });
    }
    let manifest = path.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(BuildError::UnknownProject(path.to_path_buf()));
    }
    ensure_target()?;
    let wasm = cargo_build(&manifest, show_progress)?;
    Ok(Built {
        wasm,
        compiled: true,
    })
}

/// Adds the wasm target with rustup if rustc does not have it.
fn ensure_target() -> Result<(), BuildError> {
    let sysroot = output_of(Command::new(rustc()).args(["--print", "sysroot"]))?;
    let installed = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(WASM_TARGET)
        .is_dir();
    if installed {
        return Ok(());
    }
    eprintln!("Adding the {WASM_TARGET} target with rustup (once) ...");
    let out = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .output()
        .map_err(|e| BuildError::TargetMissing(format!("rustup could not be started: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BuildError::TargetMissing(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn rustc() -> String {
    std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into())
}

fn output_of(command: &mut Command) -> Result<String, BuildError> {
    let shown = format!("{command:?}");
    let out = command.output().map_err(|e| BuildError::Spawn {
        command: shown.clone(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(BuildError::Spawn {
            command: shown,
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The target directory cargo uses for this project (honours CARGO_TARGET_DIR).
fn target_dir(manifest: &Path) -> Result<PathBuf, BuildError> {
    let text = output_of(
        Command::new(cargo())
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--manifest-path",
            ])
            .arg(manifest)
            .stderr(Stdio::piped()),
    )?;
    let metadata: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| BuildError::Spawn {
            command: "cargo metadata".into(),
            message: e.to_string(),
        })?;
    let dir = metadata["target_directory"].as_str().unwrap_or("target");
    Ok(PathBuf::from(dir))
}

fn cargo_build(manifest: &Path, show_progress: bool) -> Result<PathBuf, BuildError> {
    let manifest = manifest
        .canonicalize()
        .map_err(|_| BuildError::Missing(manifest.to_path_buf()))?;
    let target_dir = target_dir(&manifest)?.join("weir-guests");
    let mut command = Command::new(cargo());
    command
        .args([
            "build",
            "--release",
            "--target",
            WASM_TARGET,
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        // Flags meant for the host's own build must not leak into the guest's.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        // Debug info would make components ten times larger and slower to compile.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .stdout(Stdio::piped())
        .stderr(if show_progress {
            Stdio::inherit()
        } else {
            Stdio::piped()
        });
    let shown = format!(
        "cargo build --target {WASM_TARGET} --manifest-path {}",
        manifest.display()
    );
    let out = command.output().map_err(|e| BuildError::Spawn {
        command: shown,
        message: e.to_string(),
    })?;
    if !out.status.success() {
        if !show_progress {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
        return Err(BuildError::CompileFailed);
    }
    find_artifact(&String::from_utf8_lossy(&out.stdout), &manifest)
        .ok_or_else(|| BuildError::NoArtifact(manifest.parent().unwrap_or(&manifest).to_path_buf()))
}

/// The `.wasm` that cargo reported for the package at `manifest`.
fn find_artifact(messages: &str, manifest: &Path) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| m["manifest_path"].as_str().map(Path::new) == Some(manifest))
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| f.as_str().map(PathBuf::from))
                .collect::<Vec<_>>()
        })
        .find(|f| f.extension().is_some_and(|e| e == "wasm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_wasm_of_the_named_package_only() {
        let messages = r#"{"reason":"compiler-artifact","manifest_path":"/w/dep/Cargo.toml","filenames":["/t/dep.wasm"]}
{"reason":"compiler-artifact","manifest_path":"/w/etl/Cargo.toml","filenames":["/t/etl.d","/t/etl.wasm"]}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            find_artifact(messages, Path::new("/w/etl/Cargo.toml")),
            Some(PathBuf::from("/t/etl.wasm"))
        );
        assert_eq!(find_artifact(messages, Path::new("/w/x/Cargo.toml")), None);
    }

    #[test]
    fn a_folder_without_a_project_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = build(dir.path(), false).unwrap_err();
        assert!(err.to_string().contains("is not a guest project"), "{err}");
        let err = build(&dir.path().join("nope"), false).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
