//! Turns a guest project into a component: `host build PATH` and the build
//! step of `host flow run PATH`.
//!
//! The language is told by the project's files: `Cargo.toml` → Rust,
//! `pyproject.toml` or `app.py` → Python, `package.json` → JavaScript,
//! `weir.toml` with `language = "c"` → C, with `language = "cpp"` → C++
//! (see [`c`]).
//!
//! Rust projects are built with `cargo build --target wasm32-wasip2`; the
//! target is added with rustup once if it is missing. Guests share one target
//! directory (`<cargo target dir>/weir-guests`), apart from the host's own
//! builds, so a nested build never waits on the outer one.
//!
//! Python and JavaScript projects are built by pinned toolchains that install
//! themselves on first use (see [`polyglot`]); their components are kept by a
//! hash of their inputs, so an unchanged project is not built again.

mod c;
mod cargo_guest;
pub mod diagnose;
pub mod housekeeping;
mod js;
mod js_deps;
mod polyglot;
mod python;
mod python_deps;

pub use polyglot::BuildDirs;

use crate::config::Paths;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use cargo_guest::WASM_TARGET;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error(
        "{0} is not a guest project: expected a .wasm file or a folder with Cargo.toml (Rust), pyproject.toml or app.py (Python), package.json (JavaScript), or weir.toml saying language = \"c\" (C) or \"cpp\" (C++)"
    )]
    UnknownProject(PathBuf),
    #[error("{project} has no entry module: expected {expected}")]
    NoEntry {
        project: PathBuf,
        expected: &'static str,
    },
    #[error("{0} holds more than 64 MiB of sources; is it the right folder?")]
    TooLarge(PathBuf),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error(
        "could not install {tool} from the {registry} registry, which builds this guest:\n{message}"
    )]
    ToolchainInstall {
        tool: String,
        registry: &'static str,
        message: String,
    },
    #[error("the {language} guest failed to build: {message}")]
    ToolFailed {
        language: &'static str,
        message: String,
    },
    #[error("{path}: {message}")]
    BadManifest { path: PathBuf, message: String },
    #[error("cannot bundle the Python package `{package}`: {reason}")]
    PythonDependency { package: String, reason: String },
    #[error("cannot bundle the npm package `{package}`: {reason}")]
    JsDependency { package: String, reason: String },
    /// The guest's own code is wrong: its error, as its language tells it.
    #[error("the {language} guest failed to build:\n{diagnosis}")]
    Guest {
        language: &'static str,
        diagnosis: diagnose::Diagnosis,
    },
    #[error(
        "C and C++ guests are built by clang for wasm32-wasi with wasi-libc (and libc++ for C++), and {missing} is missing here: install them with `apt-get install {}`",
        c::APT_PACKAGES
    )]
    CToolchainMissing { missing: String },
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

/// The language of a guest project.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Language {
    Rust,
    Python,
    JavaScript,
    C,
    Cpp,
}

impl Language {
    /// What the folder's files say it is written in, if anything.
    pub fn detect(project: &Path) -> Option<Language> {
        let has = |name: &str| project.join(name).is_file();
        if has("Cargo.toml") {
            Some(Language::Rust)
        } else if has("pyproject.toml") || has("app.py") {
            Some(Language::Python)
        } else if has("package.json") {
            Some(Language::JavaScript)
        } else if has("weir.toml") {
            // Its `language` is checked by the C builder, which names a wrong
            // one or a TOML error rather than calling this no project at all.
            Some(c::declared_language(project))
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Language::Rust => "rust",
            Language::Python => "python",
            Language::JavaScript => "javascript",
            Language::C => "c",
            Language::Cpp => "cpp",
        }
    }

    /// The language's name in messages: "C++", not "cpp".
    pub fn label(self) -> &'static str {
        match self {
            Language::Rust => "Rust",
            Language::Python => "Python",
            Language::JavaScript => "JavaScript",
            Language::C => "C",
            Language::Cpp => "C++",
        }
    }
}

impl BuildDirs {
    /// Toolchains under `$WEIR_HOME/toolchains` unless `toolchains` (from
    /// `$WEIR_TOOLCHAINS`) says otherwise; builds under `$WEIR_HOME/builds`.
    pub fn new(paths: &Paths, toolchains: Option<PathBuf>) -> BuildDirs {
        BuildDirs {
            toolchains: toolchains.unwrap_or_else(|| paths.toolchains()),
            builds: paths.builds(),
        }
    }
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    pub wasm: PathBuf,
    /// None when PATH was a `.wasm` file already.
    pub language: Option<Language>,
    /// True when PATH was a project (built now or reused from the build cache).
    pub compiled: bool,
    /// True when an unchanged Python, JavaScript, C or C++ project was not built again.
    pub reused: bool,
}

/// Builds `path` (or takes it as is when it is a `.wasm` file).
///
/// The tools' own progress goes to stderr when `show_progress` is set.
pub fn build(path: &Path, dirs: &BuildDirs, show_progress: bool) -> Result<Built, BuildError> {
    if !path.exists() {
        return Err(BuildError::Missing(path.to_path_buf()));
    }
    if path.is_file() {
        return Ok(Built {
            wasm: path.to_path_buf(),
            language: None,
            compiled: false,
            reused: false,
        });
    }
    let language =
        Language::detect(path).ok_or_else(|| BuildError::UnknownProject(path.to_path_buf()))?;
    let (wasm, reused) = match language {
        Language::Rust => {
            ensure_target()?;
            (cargo_build(&path.join("Cargo.toml"), show_progress)?, false)
        }
        Language::Python => python::build(path, dirs, show_progress)?,
        Language::JavaScript => js::build(path, dirs, show_progress)?,
        Language::C | Language::Cpp => c::build(path, dirs, show_progress)?,
    };
    Ok(Built {
        wasm,
        language: Some(language),
        compiled: true,
        reused,
    })
}

/// Adds the wasm target with rustup if rustc does not have it.
fn ensure_target() -> Result<(), BuildError> {
    let sysroot = output_of(Command::new(rustc()).args(["--print", "sysroot"]))?;
    if cargo_guest::target_installed(&sysroot) {
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
    let mut command = cargo_guest::build_command(&cargo(), &target_dir);
    command
        .arg("--manifest-path")
        .arg(&manifest)
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
    cargo_guest::find_artifact(&String::from_utf8_lossy(&out.stdout), &manifest)
        .ok_or_else(|| BuildError::NoArtifact(manifest.parent().unwrap_or(&manifest).to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_without_a_project_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = BuildDirs::new(&Paths::at(dir.path()), None);
        let err = build(dir.path(), &dirs, false).unwrap_err();
        assert!(err.to_string().contains("is not a guest project"), "{err}");
        let err = build(&dir.path().join("nope"), &dirs, false).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn the_language_is_told_by_the_project_files() {
        let dir = tempfile::tempdir().unwrap();
        let detect = |files: &[&str]| {
            let project = tempfile::tempdir_in(dir.path()).unwrap();
            for file in files {
                std::fs::write(project.path().join(file), "").unwrap();
            }
            Language::detect(project.path())
        };
        assert_eq!(detect(&[]), None);
        assert_eq!(
            detect(&["Cargo.toml", "package.json"]),
            Some(Language::Rust)
        );
        assert_eq!(detect(&["pyproject.toml"]), Some(Language::Python));
        assert_eq!(detect(&["app.py"]), Some(Language::Python));
        assert_eq!(detect(&["package.json"]), Some(Language::JavaScript));
        let c = tempfile::tempdir_in(dir.path()).unwrap();
        std::fs::write(c.path().join("weir.toml"), "language = \"c\"\n").unwrap();
        assert_eq!(Language::detect(c.path()), Some(Language::C));
        for cpp in ["cpp", "c++"] {
            std::fs::write(
                c.path().join("weir.toml"),
                format!("language = \"{cpp}\"\n"),
            )
            .unwrap();
            assert_eq!(Language::detect(c.path()), Some(Language::Cpp), "{cpp}");
        }
        // A weir.toml naming another language, or broken, is told as such.
        let dirs = BuildDirs::new(&Paths::at(dir.path()), None);
        for (text, expected) in [
            ("language = \"cobol\"\n", "language = \"cobol\" is not one"),
            ("language = \"c\"\nflags = 1\n", "unknown field `flags`"),
            (
                "language = \"c\"\ncflags = -O3\n",
                "line 2: string values must be quoted",
            ),
        ] {
            std::fs::write(c.path().join("weir.toml"), text).unwrap();
            assert_eq!(Language::detect(c.path()), Some(Language::C));
            let err = build(c.path(), &dirs, false).unwrap_err().to_string();
            assert!(err.contains("weir.toml") && err.contains(expected), "{err}");
        }
    }

    #[test]
    fn a_python_project_without_app_py_says_what_it_expects() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("p");
        std::fs::create_dir(&project).unwrap();
        std::fs::write(project.join("pyproject.toml"), "").unwrap();
        let dirs = BuildDirs::new(&Paths::at(dir.path()), None);
        let err = build(&project, &dirs, false).unwrap_err();
        assert!(err.to_string().contains("expected app.py"), "{err}");
    }
}
