//! C and C++ guests: a folder with a `weir.toml` saying `language = "c"` (or
//! `"cpp"`, alias `"c++"`) and its `.c` (and `.cc`, `.cpp`, `.cxx`) files →
//! a component.
//!
//! Debian's `clang` compiles for `wasm32-wasi` (preview 1: Debian's
//! wasi-libc has no preview-2 target) against the wasi-libc sysroot, C++
//! files with `clang++` against libc++ (package `libc++-dev-wasm32`) with
//! exceptions off: clang 14 has no exception handling for WASI, so `throw`
//! and `try` are compile errors and a failed allocation in the standard
//! library aborts (a trap). Each file is its own compile (in parallel), so C
//! and C++ files take their own flags; `wasm-ld` (package `lld`) links them
//! into a reactor core module, with libc++ and libc++abi for C++. The
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
use super::{BuildError, Language, diagnose};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The C SDK, written next to each C build.
const C_SDK_HEADER: &str = include_str!("../../../guest-sdk/c/weir.h");
const C_SDK_SOURCE: &str = include_str!("../../../guest-sdk/c/weir.c");
const C_SDK_JSON: &str = include_str!("../../../guest-sdk/c/weir_json.c");
/// Compiled into C++ guests only: `operator new` that traps when out of memory.
const C_SDK_NEW: &str = include_str!("../../../guest-sdk/c/weir_new.cpp");

/// The clang target: Debian's wasi-libc is built for preview 1 only.
const TARGET: &str = "wasm32-wasi";
/// Pinned in the workspace's Cargo.toml; part of the build key.
const WIT_BINDGEN_C: &str = "0.61.1";
const ADAPTER: &str = "wasmtime 48.0.8 reactor";
/// What to install when the toolchain is not there (Debian and Ubuntu
/// names); `libc++-dev-wasm32` brings libc++abi with it.
pub const APT_PACKAGES: &str = "clang lld wasi-libc libclang-rt-dev-wasm32 libc++-dev-wasm32";
/// The C++ standard before the project's own `cxxflags`: C++20 for the
/// designated initializers `WEIR_TASK(f, .retries = 2)` is written with.
const CXX_STANDARD: &str = "-std=c++20";

/// What `weir.toml` may say.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WeirToml {
    language: String,
    /// Extra flags for every compile and the link (e.g. `["-DNDEBUG", "-Iinclude"]`).
    #[serde(default)]
    cflags: Vec<String>,
    /// Extra flags for C++ files only (e.g. `["-std=c++17"]`).
    #[serde(default)]
    cxxflags: Vec<String>,
}

/// C or C++: what `language` names in `weir.toml`.
fn dialect(language: &str) -> Option<Language> {
    match language {
        "c" => Some(Language::C),
        "cpp" | "c++" => Some(Language::Cpp),
        _ => None,
    }
}

/// The language a `weir.toml` names, for [`Language::detect`]: C++ when it
/// says so, else C (whose builder names a broken file or another language).
pub fn declared_language(project: &Path) -> Language {
    std::fs::read_to_string(project.join("weir.toml"))
        .ok()
        .and_then(|text| toml::from_str::<WeirToml>(&text).ok())
        .and_then(|manifest| dialect(&manifest.language))
        .unwrap_or(Language::C)
}

fn read_manifest(project: &Path) -> Result<(WeirToml, Language), BuildError> {
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
    let Some(language) = dialect(&manifest.language) else {
        return Err(bad(format!(
            "language = \"{}\" is not one this host builds from weir.toml; use \"c\" or \"cpp\" (alias \"c++\")",
            manifest.language
        )));
    };
    Ok((manifest, language))
}

/// A file clang compiles, relative to the project, and whether it is C++.
struct Source<'a> {
    path: &'a Path,
    cpp: bool,
}

/// The files clang compiles: `.c` as C; `.cc`, `.cpp`, `.cxx` as C++.
fn compiled_sources(files: &[(PathBuf, Vec<u8>)]) -> Vec<Source<'_>> {
    files
        .iter()
        .filter_map(|(path, _)| {
            let cpp = match path.extension().and_then(|e| e.to_str())? {
                "c" => false,
                "cc" | "cpp" | "cxx" => true,
                _ => return None,
            };
            Some(Source { path, cpp })
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

/// Builds (or reuses) the component for the C or C++ project at `project`.
pub fn build(project: &Path, dirs: &BuildDirs, show: bool) -> Result<(PathBuf, bool), BuildError> {
    let (manifest, language) = read_manifest(project)?;
    let files = source_files(project)?;
    let sources = compiled_sources(&files);
    if sources.is_empty() {
        return Err(BuildError::NoEntry {
            project: project.to_path_buf(),
            expected: "one or more .c files (or .cpp/.cc/.cxx with language = \"cpp\") beside weir.toml",
        });
    }
    if language == Language::C
        && let Some(cpp) = sources.iter().find(|source| source.cpp)
    {
        // clang would compile it as C++ but link no standard library: say
        // what the project is instead of failing at the link.
        return Err(BuildError::BadManifest {
            path: project.join("weir.toml"),
            message: format!(
                "{} is C++ but language = \"c\"; say language = \"cpp\" to build it with clang++ and libc++",
                cpp.path.display()
            ),
        });
    }
    let clang = clang_version()?;
    let key = build_key(
        &[
            language.as_str(),
            &clang,
            WIT_BINDGEN_C,
            ADAPTER,
            C_SDK_HEADER,
            C_SDK_SOURCE,
            C_SDK_JSON,
            C_SDK_NEW,
            WIT,
            &manifest.cflags.join("\0"),
            &manifest.cxxflags.join("\0"),
        ],
        &files,
    );
    let out = dirs
        .builds
        .join(format!("{}-{}", language.as_str(), &key[..32]));
    let wasm = out.join("component.wasm");
    if wasm.is_file() {
        super::housekeeping::touch(&out);
        return Ok((wasm, true));
    }
    if language == Language::Cpp {
        // Only before a compile: its two clang++ runs would double the time
        // of a cache hit.
        libcxx_present()?;
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
        write(&sdk.join("weir_new.cpp"), C_SDK_NEW)?;
        let core = scratch.join("core.wasm");
        let build = Build {
            project,
            sdk: &sdk,
            objects: &scratch.join("obj"),
            manifest: &manifest,
            language,
        };
        let objects = build.compile(&sources)?;
        build.link(&objects, &core)?;
        let component = componentize(&core, language)?;
        write(&scratch.join("component.wasm"), component)?;
        let _ = std::fs::remove_file(&core);
        let _ = std::fs::remove_dir_all(scratch.join("obj"));
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

/// libc++ and libc++abi for wasm32-wasi, asked of clang++ before compiling:
/// without them every `#include <string>` would fail in the user's file, as
/// if the code were wrong.
fn libcxx_present() -> Result<(), BuildError> {
    for library in ["libc++.a", "libc++abi.a"] {
        let out = Command::new("clang++")
            .arg(format!("--target={TARGET}"))
            .arg(format!("-print-file-name={library}"))
            .output()
            .map_err(|_| BuildError::CToolchainMissing {
                missing: "clang++".into(),
            })?;
        // clang echoes the bare name when no library dir holds the file.
        let found = out.status.success()
            && Path::new(String::from_utf8_lossy(&out.stdout).trim()).is_absolute();
        if !found {
            return Err(BuildError::CToolchainMissing {
                missing: format!("{library} (the C++ standard library for {TARGET})"),
            });
        }
    }
    Ok(())
}

/// One build's compiles and link.
struct Build<'a> {
    project: &'a Path,
    sdk: &'a Path,
    /// Where each file's object goes (`N.o`, by its place in the list, so
    /// two files of one name in different folders do not collide).
    objects: &'a Path,
    manifest: &'a WeirToml,
    language: Language,
}

impl Build<'_> {
    /// `clang` or `clang++` for one file, with the flags its language takes.
    fn compiler(&self, cpp: bool) -> Command {
        let mut command = Command::new(if cpp { "clang++" } else { "clang" });
        command
            .arg(format!("--target={TARGET}"))
            .args(["-O2", "-fno-color-diagnostics"])
            .arg("-I")
            .arg(self.sdk)
            .arg("-I")
            .arg(self.project);
        if cpp {
            command.args([CXX_STANDARD, "-fno-exceptions"]);
        }
        if self.language == Language::Cpp {
            // The SDK's manifest names the project's language, as the other SDKs do.
            command.arg("-DWEIR_SDK_LANGUAGE=\"cpp\"");
        }
        command.args(&self.manifest.cflags);
        if cpp {
            command.args(&self.manifest.cxxflags);
        }
        command
    }

    /// Compiles the project's files and the SDK's, a few at a time (one per
    /// core), into objects. On failure, every failed compile's output in the
    /// order of the files, the project's first, read for the guest's error.
    fn compile(&self, sources: &[Source<'_>]) -> Result<Vec<PathBuf>, BuildError> {
        std::fs::create_dir_all(self.objects).map_err(|e| BuildError::Io {
            path: self.objects.to_path_buf(),
            message: e.to_string(),
        })?;
        // The project's files as the user named the folder, so clang's
        // `file:line:` lines point where the user looks.
        let mut units: Vec<(PathBuf, bool)> = sources
            .iter()
            .map(|source| (self.project.join(source.path), source.cpp))
            .collect();
        for sdk_file in ["flow.c", "weir.c", "weir_json.c"] {
            units.push((self.sdk.join(sdk_file), false));
        }
        if self.language == Language::Cpp {
            units.push((self.sdk.join("weir_new.cpp"), true));
        }
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut objects = Vec::new();
        let mut failures = String::new();
        let mut missing = None;
        for batch in units.chunks(parallel) {
            let mut running: Vec<std::io::Result<Child>> = Vec::new();
            for (file, cpp) in batch {
                let object = self.objects.join(format!("{}.o", objects.len()));
                let mut command = self.compiler(*cpp);
                command
                    .arg("-c")
                    .arg(file)
                    .arg("-o")
                    .arg(&object)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                running.push(command.spawn());
                objects.push(object);
            }
            for (child, (_, cpp)) in running.into_iter().zip(batch) {
                match child.and_then(Child::wait_with_output) {
                    Ok(out) if out.status.success() => {}
                    Ok(out) => {
                        failures.push_str(&String::from_utf8_lossy(&out.stdout));
                        failures.push_str(&String::from_utf8_lossy(&out.stderr));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        missing = Some(if *cpp { "clang++" } else { "clang" });
                    }
                    Err(e) => {
                        failures.push_str(&format!("could not run `{}`: {e}\n", self.shown(*cpp)));
                    }
                }
            }
        }
        if let Some(missing) = missing {
            return Err(BuildError::CToolchainMissing {
                missing: missing.into(),
            });
        }
        if failures.is_empty() {
            Ok(objects)
        } else {
            Err(self.failed(&failures, self.language == Language::Cpp))
        }
    }

    /// Links the objects and the world's type into a reactor core module:
    /// with `clang++` (libc++, libc++abi) for C++.
    fn link(&self, objects: &[PathBuf], core: &Path) -> Result<(), BuildError> {
        let cpp = self.language == Language::Cpp;
        let mut command = Command::new(if cpp { "clang++" } else { "clang" });
        command
            .arg(format!("--target={TARGET}"))
            // A library the host calls into (no `main`): `_initialize` runs the
            // C and C++ constructors once, before the first export.
            .arg("-mexec-model=reactor")
            .args(["-O2", "-fno-color-diagnostics", "-Qunused-arguments"])
            // The project's flags may name libraries (`-lm`) or linker options.
            .args(&self.manifest.cflags)
            .args(objects)
            .arg(self.sdk.join("flow_component_type.o"))
            .arg("-o")
            .arg(core);
        run_captured(&mut command, &self.shown(cpp)).map_err(|output| self.failed(&output, cpp))
    }

    fn shown(&self, cpp: bool) -> String {
        format!(
            "{} --target={TARGET}",
            if cpp { "clang++" } else { "clang" }
        )
    }

    /// clang's output as the error a person reads: a missing toolchain part,
    /// the guest's own error, or (neither recognised) the output itself.
    fn failed(&self, output: &str, cpp: bool) -> BuildError {
        if let Some(missing) = diagnose::c_toolchain_missing(output, self.sdk) {
            return BuildError::CToolchainMissing { missing };
        }
        let language = self.language.label();
        match diagnose::c(output, self.sdk) {
            Some(diagnosis) => BuildError::Guest {
                language,
                diagnosis,
            },
            None => BuildError::ToolFailed {
                language,
                message: format!("`{}` failed:\n{}", self.shown(cpp), output.trim()),
            },
        }
    }
}

/// The core module as a component, its WASI preview-1 imports served by the adapter.
fn componentize(core: &Path, language: Language) -> Result<Vec<u8>, BuildError> {
    let module = std::fs::read(core).map_err(|e| BuildError::Io {
        path: core.to_path_buf(),
        message: e.to_string(),
    })?;
    // The libraries' errors are shown as text: the builder does not name anyhow.
    let failed = |e: &dyn std::fmt::Display| BuildError::ToolFailed {
        language: language.label(),
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
