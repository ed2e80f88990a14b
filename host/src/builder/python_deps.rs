//! A Python guest's dependencies from PyPI: resolved and installed once per
//! dependency set, by the pinned toolchain's pip, into a folder of the build
//! cache that componentize-py bundles into the component.
//!
//! What to install is, first found: `uv.lock` (every locked registry
//! package, `name==version`), `requirements.txt` (as pip reads it), or
//! `[project] dependencies` of `pyproject.toml`. pip is asked for wheels that
//! run on any platform (`--platform any --implementation py --abi none`) for
//! the CPython inside componentize-py ([`GUEST_PYTHON`]), with their own
//! dependencies: a component cannot load native extension modules, so a
//! package that ships only native wheels fails the build with one line that
//! names it. The installed set (`name==version`, sorted) is kept beside the
//! packages and is part of the component's build key, so a build is reused
//! only with the very packages it was made with; a ranged requirement is
//! resolved once per requirement text (`host build --prune` forgets it).

use super::BuildError;
use super::polyglot::{BuildDirs, COMPONENTIZE_PY, in_scratch, write};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The CPython version componentize-py embeds: wheels are chosen for it.
pub const GUEST_PYTHON: &str = "3.14";

/// Installed dependencies, ready to bundle.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The folder to put on componentize-py's Python path.
    pub site_packages: PathBuf,
    /// `name==version` lines, sorted: part of the build key.
    pub resolved: String,
}

/// Where the requirements came from, and their text (one requirement a line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    pub source: &'static str,
    pub lines: Vec<String>,
}

/// The project's requirements, if it has any.
pub fn requirements(project: &Path) -> Result<Option<Requirements>, BuildError> {
    let read = |name: &str| -> Result<Option<String>, BuildError> {
        let path = project.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BuildError::Io {
                path,
                message: e.to_string(),
            }),
        }
    };
    let bad = |file: &str, message: String| BuildError::BadManifest {
        path: project.join(file),
        message,
    };
    let found = if let Some(text) = read("uv.lock")? {
        let lock: toml::Table = text.parse().map_err(|e| bad("uv.lock", format!("{e}")))?;
        let lines = lock
            .get("package")
            .and_then(|p| p.as_array())
            .into_iter()
            .flatten()
            // The project itself (and path packages) are not on PyPI.
            .filter(|p| p.get("source").and_then(|s| s.get("registry")).is_some())
            .filter_map(|p| {
                Some(format!(
                    "{}=={}",
                    p.get("name")?.as_str()?,
                    p.get("version")?.as_str()?
                ))
            })
            .collect();
        Requirements {
            source: "uv.lock",
            lines,
        }
    } else if let Some(text) = read("requirements.txt")? {
        // A requirement may go on over several lines (`\` at the end), e.g. with `--hash`.
        let joined = text.replace("\\\r\n", " ").replace("\\\n", " ");
        let lines = joined
            .lines()
            .map(|l| l.split(" #").next().unwrap_or(l).trim())
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        Requirements {
            source: "requirements.txt",
            lines,
        }
    } else if let Some(text) = read("pyproject.toml")? {
        let manifest: toml::Table = text
            .parse()
            .map_err(|e| bad("pyproject.toml", format!("{e}")))?;
        let dependencies = manifest.get("project").and_then(|p| p.get("dependencies"));
        let lines = match dependencies {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str().map(|s| s.trim().to_string()).ok_or_else(|| {
                        bad(
                            "pyproject.toml",
                            "[project] dependencies must be a list of strings such as \"humanize>=4\"".into(),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(bad(
                    "pyproject.toml",
                    "[project] dependencies must be a list of strings such as \"humanize>=4\"".into(),
                ));
            }
        };
        Requirements {
            source: "pyproject.toml",
            lines,
        }
    } else {
        return Ok(None);
    };
    for line in &found.lines {
        // pip would read these as its own options: another index, a local path, ...
        if line.starts_with('-') {
            return Err(bad(
                found.source,
                format!("'{line}': options are not taken, only requirements (name and version)"),
            ));
        }
    }
    Ok((!found.lines.is_empty()).then_some(found))
}

/// Installs `requirements` (once per requirement text) with the toolchain's
/// `python` and returns where they are.
pub fn install(
    requirements: &Requirements,
    python: &Path,
    dirs: &BuildDirs,
    show: bool,
) -> Result<Installed, BuildError> {
    let text = requirements.lines.join("\n") + "\n";
    let mut hasher = Sha256::new();
    for part in [COMPONENTIZE_PY, GUEST_PYTHON, text.as_str()] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let key = hex::encode(hasher.finalize());
    let dir = dirs.builds.join(format!("python-deps-{}", &key[..32]));
    let installed = |dir: &Path| -> Option<Installed> {
        let resolved = std::fs::read_to_string(dir.join("resolved.txt")).ok()?;
        Some(Installed {
            site_packages: dir.join("site-packages"),
            resolved,
        })
    };
    if let Some(found) = installed(&dir) {
        super::housekeeping::touch(&dir);
        return Ok(found);
    }
    if show {
        eprintln!(
            "Installing {} Python requirements from {} (PyPI, pure-Python wheels) ...",
            requirements.lines.len(),
            requirements.source
        );
    }
    in_scratch(&dir, |scratch| -> Result<(), BuildError> {
        write(&scratch.join("requirements.txt"), &text)?;
        let out = Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--quiet",
                "--no-compile",
                "--target",
                "site-packages",
                "--only-binary=:all:",
                "--platform",
                "any",
                "--implementation",
                "py",
                "--abi",
                "none",
                "--python-version",
                GUEST_PYTHON,
                "--requirement",
                "requirements.txt",
            ])
            .current_dir(scratch)
            .env_remove("PIP_INDEX_URL")
            .env_remove("PYTHONPATH")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| BuildError::Spawn {
                command: "pip install".into(),
                message: e.to_string(),
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            return Err(explain_failure(&stderr, python, requirements.source));
        }
        let resolved = resolved_set(&scratch.join("site-packages"))?;
        write(&scratch.join("resolved.txt"), resolved)
    })??;
    installed(&dir).ok_or_else(|| BuildError::Io {
        path: dir.join("resolved.txt"),
        message: "missing after install".into(),
    })
}

/// `name==version` of every distribution pip installed, sorted.
fn resolved_set(site_packages: &Path) -> Result<String, BuildError> {
    let mut found: Vec<String> = std::fs::read_dir(site_packages)
        .map_err(|e| BuildError::Io {
            path: site_packages.to_path_buf(),
            message: e.to_string(),
        })?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".dist-info")?;
            let (package, version) = stem.rsplit_once('-')?;
            Some(format!(
                "{}=={version}",
                package.to_lowercase().replace('_', "-")
            ))
        })
        .collect();
    found.sort();
    Ok(found.join("\n") + "\n")
}

/// pip's failure in one line: which package, and why it cannot be bundled.
fn explain_failure(stderr: &str, python: &Path, source: &'static str) -> BuildError {
    let Some(requirement) = stderr
        .lines()
        .find_map(|l| l.split("No matching distribution found for ").nth(1))
        .map(str::trim)
    else {
        return BuildError::ToolFailed {
            language: "Python",
            message: format!(
                "pip could not install the requirements from {source}:\n{}",
                stderr.trim()
            ),
        };
    };
    let package = requirement
        .split(|c: char| "<>=!~;[ (".contains(c))
        .next()
        .unwrap_or(requirement)
        .to_string();
    // Is there a wheel for this very machine? Then it is native-only.
    let probe =
        std::env::temp_dir().join(format!("weir-pip-probe-{}", uuid::Uuid::now_v7().simple()));
    let native = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
        ])
        .arg(&probe)
        .arg(requirement)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _ = std::fs::remove_dir_all(&probe);
    let reason = if native {
        "it ships only native wheels (compiled extension modules for CPython on Linux, macOS or Windows), none pure-Python or for WASI, so it cannot run inside the sandbox; use a pure-Python package instead".to_string()
    } else {
        format!(
            "no version matching '{requirement}' was found on PyPI; check the name and version in {source}"
        )
    };
    BuildError::PythonDependency { package, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn requirements_come_from_the_lock_then_requirements_txt_then_pyproject() {
        let pyproject = "[project]\nname = \"p\"\ndependencies = [\"humanize>=4\", \"json5\"]\n";
        let requirements_txt =
            "# pinned\nhumanize==4.12.3  # formats\n\njson5==0.12.0 \\\n    --hash=sha256:ab\n";
        let lock = r#"version = 1
[[package]]
name = "humanize"
version = "4.12.3"
source = { registry = "https://pypi.org/simple" }
[[package]]
name = "p"
version = "0.1.0"
source = { virtual = "." }
"#;
        let dir = project(&[("pyproject.toml", pyproject)]);
        let found = requirements(dir.path()).unwrap().unwrap();
        assert_eq!(found.source, "pyproject.toml");
        assert_eq!(found.lines, ["humanize>=4", "json5"]);
        let dir = project(&[
            ("pyproject.toml", pyproject),
            ("requirements.txt", requirements_txt),
        ]);
        let found = requirements(dir.path()).unwrap().unwrap();
        assert_eq!(
            found.lines,
            ["humanize==4.12.3", "json5==0.12.0      --hash=sha256:ab"]
        );
        let dir = project(&[
            ("pyproject.toml", pyproject),
            ("requirements.txt", requirements_txt),
            ("uv.lock", lock),
        ]);
        let found = requirements(dir.path()).unwrap().unwrap();
        assert_eq!(found.source, "uv.lock");
        assert_eq!(
            found.lines,
            ["humanize==4.12.3"],
            "the project itself is not installed"
        );
    }

    #[test]
    fn no_dependencies_means_nothing_to_install_and_bad_ones_are_refused() {
        let dir = project(&[(
            "pyproject.toml",
            "[project]\nname = \"p\"\ndependencies = []\n",
        )]);
        assert_eq!(requirements(dir.path()).unwrap(), None);
        let dir = project(&[("app.py", "")]);
        assert_eq!(requirements(dir.path()).unwrap(), None);
        let dir = project(&[("pyproject.toml", "[project]\ndependencies = \"humanize\"\n")]);
        assert!(
            requirements(dir.path())
                .unwrap_err()
                .to_string()
                .contains("list of strings")
        );
        // pip options would reach another index or the local disk.
        let dir = project(&[("requirements.txt", "--index-url http://evil/\nhumanize\n")]);
        let err = requirements(dir.path()).unwrap_err().to_string();
        assert!(err.contains("options are not taken"), "{err}");
    }

    #[test]
    fn the_resolved_set_is_read_from_what_pip_installed() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "json5-0.12.0.dist-info",
            "Humanize-4.12.3.dist-info",
            "humanize",
            "json5",
        ] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        assert_eq!(
            resolved_set(dir.path()).unwrap(),
            "humanize==4.12.3\njson5==0.12.0\n"
        );
    }
}
