//! Builds the guest components the tests run (the fixture guest and every
//! example) for wasm32-wasip2 and exports their paths as constants.
//!
//! The guests are built by a nested cargo into `<target>/weir-guests`, apart
//! from the host build, the same directory `host flow run` uses for them. The
//! command and the reading of cargo's messages are the builder's own
//! (`host/src/builder/cargo_guest.rs`), included as a file: depending on the
//! host crate would compile all of it before this script could run.

#[path = "../host/src/builder/cargo_guest.rs"]
mod cargo_guest;

use cargo_guest::{WASM_TARGET as TARGET, build_command, find_artifact, target_installed};
use std::env;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// (constant, package, folder)
const GUESTS: &[(&str, &str, &str)] = &[
    (
        "FIXTURE_WASM",
        "fixture-guest",
        "tests/fixtures/fixture-guest",
    ),
    ("HELLO_WASM", "example-hello", "examples/hello"),
    ("ETL_WASM", "example-etl", "examples/etl"),
    ("SANDBOX_WASM", "example-sandbox", "examples/sandbox"),
    ("APPROVAL_WASM", "example-approval", "examples/approval"),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    for dir in ["guest-sdk", "examples", "tests/fixtures", "wit"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("weir-guests");
    ensure_wasm_target();

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = build_command(&cargo, &target_dir);
    command.current_dir(&workspace).stderr(Stdio::inherit());
    for (_, package, _) in GUESTS {
        command.args(["-p", package]);
    }
    // What the outer build was told (clippy's wrapper, its make jobserver) is not for the guests.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CLIPPY_ARGS",
        "CARGO_TARGET_DIR",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        command.env_remove(var);
    }
    let output = command
        .output()
        .expect("running cargo to build the guest components");
    if !output.status.success() {
        panic!("building the guest components for {TARGET} failed; cargo's messages are above");
    }
    let messages = String::from_utf8_lossy(&output.stdout);

    let mut constants = String::new();
    for (constant, package, folder) in GUESTS {
        let manifest = workspace.join(folder).join("Cargo.toml");
        let wasm = find_artifact(&messages, &manifest)
            .unwrap_or_else(|| panic!("cargo built no .wasm for {package}; is it a cdylib?"));
        constants.push_str(&format!(
            "/// The component built from `{package}`.\npub const {constant}: &str = {:?};\n",
            wasm.display().to_string()
        ));
    }
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("guests.rs");
    std::fs::write(out, constants).unwrap();
}

fn ensure_wasm_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .expect("running rustc --print sysroot");
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    if target_installed(&sysroot) {
        return;
    }
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status();
    match status {
        Ok(s) if s.success() => {}
        _ => panic!(
            "the {TARGET} target is missing and `rustup target add {TARGET}` failed; run it by hand"
        ),
    }
}
