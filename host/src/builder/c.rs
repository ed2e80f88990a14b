//! C (and C++) guests: a folder with a `weir.toml` saying `language = "c"`
//! and its `.c` (`.cc`, `.cpp`) files → a component.
//!
//! Debian's `clang` compiles for `wasm32-wasi` (preview 1: Debian's
//! wasi-libc has no preview-2 target) against the wasi-libc sysroot and
//! links with `wasm-ld` (package `lld`) into a reactor core module. The
//! bindings come from the WIT this host carries, by wit-bindgen's C
//! generator (a library here), written into the build folder on every build
//! with the SDK (`guest-sdk/c/`): nothing to regenerate by
//! hand when the contract grows, and a project needs nothing but the apt
//! packages. `wit-component` then turns the core module into a component
//! with wasmtime's own preview-1 adapter (the reactor flavour, of the same
//! release as the engine, so every WASI import it makes is one the engine
//! links).
//!
//! Builds are kept by a hash of their inputs (sources, `weir.toml`, SDK,
//! WIT, clang's version, generator and adapter versions) like Python and
//! JavaScript builds: an unchanged project is not built again.

use super::polyglot::{BuildDirs, WIT, build_key, in_scratch, run_captured, source_files, write};
use super::{BuildError, diagnose};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The C SDK, written next to each C build.
const C_SDK_HEADER: &str = include_str!("../../../guest-sdk/c/weir.h");
const C_SDK_SOURCE: &str = include_str!("../../../guest-sdk/c/weir.c");
const C_SDK_JSON: &str = include_str!("../../../guest-sdk/c/weir_json.c");

/// The clang target: Debian's wasi-libc is built for preview 1 only.
const TARGET: &str = "wasm32-wasi";
/// Pinned in the workspace's Cargo.toml; part of the build key.
const WIT_BINDGEN_C: &str = "0.61.1";
const ADAPTER: &str = "wasmtime 48.0.8 reactor";
/// What to install when the toolchain is not there (Debian and Ubuntu names).
pub const APT_PACKAGES: &str = "clang lld wasi-libc libclang-rt-dev-wasm32";

/// What `weir.toml` may say.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WeirToml {
    language: String,
    /// Extra flags for every compile (e.g. `["-DNDEBUG", "-Iinclude"]`).
    #[serde(default)]
    cflags: Vec<String>,
}

fn is_c_language(language: &str) -> bool {
    matches!(language, "c" | "c++" | "cpp")
}

fn read_manifest(project: &Path) -> Result<WeirToml, BuildError> {
    let path = project.join("weir.toml");
    let bad = |message: String| BuildError::BadManifest {
        path: path.clone(),
        message,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
    let manifest: WeirToml = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|span| {
            text.get(..span.start)
                .unwrap_or(&text)
                .matches('\n')
                .count()
                + 1
        });
        match line {
            Some(line) => bad(format!("line {line}: {}", e.message())),
            None => bad(e.message().to_string()),
        }
    })?;
    if !is_c_language(&manifest.language) {
        return Err(bad(format!(
            "language = \"{}\" is not one this host builds from weir.toml; use \"c\" (C and C++)",
            manifest.language
        )));
    }
    Ok(manifest)
}

/// Source files clang compiles, relative to the project.
fn compiled_sources(files: &[(PathBuf, Vec<u8>)]) -> Vec<&Path> {
    files
        .iter()
        .map(|(path, _)| path.as_path())
        .filter(|path| {
            path.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "c" | "cc" | "cpp" | "cxx"))
        })
        .collect()
}

/// The wit-bindgen C bindings of the `flow` world: `flow.h`, `flow.c` and
/// `flow_component_type.o` (the world's type, which `wit-component` reads).
pub fn bindings(wit: &str) -> Result<Vec<(String, Vec<u8>)>, BuildError> {
    use wit_bindgen_core::wit_parser::Resolve;
    let failed = |e: &dyn std::fmt::Display| BuildError::ToolFailed {
        language: "C",
        message: format!("generating the C bindings from wit/flow.wit: {e:#}"),
    };
    let mut resolve = Resolve::default();
    let package = resolve.push_str("flow.wit", wit).map_err(|e| failed(&e))?;
    let world = resolve
        .select_world(&[package], Some("flow"))
        .map_err(|e| failed(&e))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .map_err(|e| failed(&e))?;
    Ok(files
        .iter()
        .map(|(name, bytes)| (name.to_string(), bytes.to_vec()))
        .collect())
}

/// Builds (or reuses) the component for the C project at `project`.
pub fn build(project: &Path, dirs: &BuildDirs, show: bool) -> Result<(PathBuf, bool), BuildError> {
    let manifest = read_manifest(project)?;
    let files = source_files(project)?;
    let sources = compiled_sources(&files);
    if sources.is_empty() {
        return Err(BuildError::NoEntry {
            project: project.to_path_buf(),
            expected: "one or more .c files (or .cc/.cpp) beside weir.toml",
        });
    }
    let clang = clang_version()?;
    let key = build_key(
        &[
            "c",
            &clang,
            WIT_BINDGEN_C,
            ADAPTER,
            C_SDK_HEADER,
            C_SDK_SOURCE,
            C_SDK_JSON,
            WIT,
            &manifest.cflags.join("\0"),
        ],
        &files,
    );
    let out = dirs.builds.join(format!("c-{}", &key[..32]));
    let wasm = out.join("component.wasm");
    if wasm.is_file() {
        super::housekeeping::touch(&out);
        return Ok((wasm, true));
    }
    if show {
        eprintln!("Building {} with {clang} ...", project.display());
    }
    let bindings = bindings(WIT)?;
    in_scratch(&out, |scratch| {
        let sdk = scratch.join("sdk");
        for (name, bytes) in &bindings {
            write(&sdk.join(name), bytes)?;
        }
        write(&sdk.join("weir.h"), C_SDK_HEADER)?;
        write(&sdk.join("weir.c"), C_SDK_SOURCE)?;
        write(&sdk.join("weir_json.c"), C_SDK_JSON)?;
        let core = scratch.join("core.wasm");
        compile(project, &sources, &sdk, &manifest.cflags, &core)?;
        let component = componentize(&core)?;
        write(&scratch.join("component.wasm"), component)?;
        let _ = std::fs::remove_file(&core);
        Ok::<(), BuildError>(())
    })??;
    Ok((wasm, false))
}

/// `clang --version`'s first line; its absence is the missing toolchain.
fn clang_version() -> Result<String, BuildError> {
    match Command::new("clang").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("clang")
            .trim()
            .to_string()),
        Ok(_) | Err(_) => Err(BuildError::CToolchainMissing {
            missing: "clang".into(),
        }),
    }
}

/// Compiles and links the project with the SDK into a reactor core module.
fn compile(
    project: &Path,
    sources: &[&Path],
    sdk: &Path,
    cflags: &[String],
    core: &Path,
) -> Result<(), BuildError> {
    let mut command = Command::new("clang");
    command
        .arg(format!("--target={TARGET}"))
        // A library the host calls into (no `main`): `_initialize` runs the
        // C constructors once, before the first export.
        .arg("-mexec-model=reactor")
        .args(["-O2", "-fno-color-diagnostics"])
        .arg("-I")
        .arg(sdk)
        .arg("-I")
        .arg(project)
        .args(cflags);
    // The project's files as the user named the folder, so clang's
    // `file:line:` lines point where the user looks.
    for source in sources {
        command.arg(project.join(source));
    }
    command
        .arg(sdk.join("flow.c"))
        .arg(sdk.join("weir.c"))
        .arg(sdk.join("weir_json.c"))
        .arg(sdk.join("flow_component_type.o"))
        .arg("-o")
        .arg(core);
    let shown = format!("clang --target={TARGET}");
    run_captured(&mut command, &shown).map_err(|output| {
        if let Some(missing) = diagnose::c_toolchain_missing(&output, sdk) {
            return BuildError::CToolchainMissing { missing };
        }
        match diagnose::c(&output, sdk) {
            Some(diagnosis) => BuildError::Guest {
                language: "C",
                diagnosis,
            },
            None => BuildError::ToolFailed {
                language: "C",
                message: format!("`{shown}` failed:\n{}", output.trim()),
            },
        }
    })
}

/// The core module as a component, its WASI preview-1 imports served by the adapter.
fn componentize(core: &Path) -> Result<Vec<u8>, BuildError> {
    let module = std::fs::read(core).map_err(|e| BuildError::Io {
        path: core.to_path_buf(),
        message: e.to_string(),
    })?;
    // The libraries' errors are shown as text: the builder does not name anyhow.
    let failed = |e: &dyn std::fmt::Display| BuildError::ToolFailed {
        language: "C",
        message: format!("making the component from the core module: {e:#}"),
    };
    wit_component::ComponentEncoder::default()
        .module(&module)
        .map_err(|e| failed(&e))?
        .validate(true)
        .adapter(
            "wasi_snapshot_preview1",
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )
        .map_err(|e| failed(&e))?
        .encode()
        .map_err(|e| failed(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The versions in the build key are the ones Cargo.toml pins, so a
    /// bump of the generator or the adapter rebuilds every C guest.
    #[test]
    fn the_keyed_versions_are_the_pinned_ones() {
        let workspace = include_str!("../../../Cargo.toml");
        assert!(
            workspace.contains(&format!(
                "wit-bindgen-c = {{ version = \"={WIT_BINDGEN_C}\""
            )),
            "update WIT_BINDGEN_C"
        );
        let adapter = ADAPTER.split(' ').nth(1).unwrap();
        assert!(
            workspace.contains(&format!(
                "wasi-preview1-component-adapter-provider = \"={adapter}\""
            )),
            "update ADAPTER"
        );
    }

    #[test]
    fn the_bindings_are_generated_from_the_wit() {
        let files = bindings(WIT).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["flow.c", "flow.h", "flow_component_type.o"]);
        if let Ok(dir) = std::env::var("WEIR_DUMP_C_BINDINGS") {
            for (name, bytes) in &files {
                std::fs::write(Path::new(&dir).join(name), bytes).unwrap();
            }
        }
    }
}
