//! How a Rust guest is built with cargo: the command, its profile, and the
//! `.wasm` read back from cargo's JSON messages.
//!
//! Two builds use this file: `host build` (the builder) and the test crate's
//! build script, which includes it with `#[path]` rather than depending on the
//! host crate (that would compile the whole host before the build script
//! runs). So it uses only std and serde_json, and names nothing of the host.
//! Sharing it keeps both builds' profile identical, so the tests' guests and
//! `host build`'s are one build in one target directory, not two.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const WASM_TARGET: &str = "wasm32-wasip2";

/// `cargo build --release` for the wasm target into `target_dir`, with
/// cargo's JSON messages on stdout (read them with [`find_artifact`]).
/// The caller adds what to build (`--manifest-path`, `-p`) and stderr.
pub fn build_command(cargo: &str, target_dir: &Path) -> Command {
    let mut command = Command::new(cargo);
    command
        .args([
            "build",
            "--release",
            "--target",
            WASM_TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        // Flags meant for the host's own build must not leak into the guest's.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        // Debug info would make components ten times larger and slower to compile.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .stdout(Stdio::piped());
    command
}

/// Whether the toolchain whose `rustc --print sysroot` printed `sysroot`
/// has the wasm target's standard library.
pub fn target_installed(sysroot: &str) -> bool {
    Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(WASM_TARGET)
        .is_dir()
}

/// The `.wasm` that cargo reported for the package at `manifest`.
pub fn find_artifact(messages: &str, manifest: &Path) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| m["manifest_path"].as_str().map(Path::new) == Some(manifest))
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "wasm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_wasm_of_the_named_package_only() {
        let messages = r#"{"reason":"compiler-artifact","manifest_path":"/w/dep/Cargo.toml","filenames":["/t/dep.wasm"]}
not json: a line cargo printed that is not a message
{"reason":"compiler-artifact","manifest_path":"/w/etl/Cargo.toml","filenames":["/t/etl.d","/t/etl.wasm"]}
{"reason":"compiler-artifact","manifest_path":"/w/bad/Cargo.toml","filenames":"/t/bad.wasm"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            find_artifact(messages, Path::new("/w/etl/Cargo.toml")),
            Some(PathBuf::from("/t/etl.wasm"))
        );
        assert_eq!(find_artifact(messages, Path::new("/w/x/Cargo.toml")), None);
        assert_eq!(
            find_artifact(messages, Path::new("/w/bad/Cargo.toml")),
            None
        );
    }
}
