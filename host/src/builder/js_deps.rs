//! A JavaScript guest's dependencies from npm: installed once per
//! `package.json` (and `package-lock.json`, when the project has one) into a
//! folder of the build cache, where jco's bundler (rolldown, pinned with jco)
//! finds them; ES modules and CommonJS packages alike are bundled into the
//! component.
//!
//! With a lock, `npm ci` installs exactly it (integrity checked); without
//! one, `npm install` resolves the ranges once and the lock it writes is
//! kept. Install scripts never run (`--ignore-scripts`): they would run code
//! from the registry on this machine, and a native addon could not load in
//! the sandbox anyway. Only registry dependencies are taken: a `file:`, git
//! or URL dependency would bring in what the build key cannot see. The
//! installed set (`name@version`, sorted) is part of the component's build key.

use super::BuildError;
use super::polyglot::{BuildDirs, JCO, in_scratch, run_captured, write};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Installed dependencies, ready to bundle.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The `node_modules` folder the bundler resolves bare imports from.
    pub node_modules: PathBuf,
    /// `name@version` lines, sorted: part of the build key.
    pub resolved: String,
}

/// The project's manifest and lock, when it has registry dependencies.
pub struct Manifest {
    package_json: String,
    lock: Option<String>,
    count: usize,
}

/// Reads `package.json`'s `dependencies` (None when there are none).
pub fn manifest(project: &Path) -> Result<Option<Manifest>, BuildError> {
    let path = project.join("package.json");
    let bad = |message: String| BuildError::BadManifest {
        path: path.clone(),
        message,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| BuildError::Io {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let dependencies = match &json["dependencies"] {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::Object(map) => map,
        _ => {
            return Err(bad(
                "\"dependencies\" must be an object of name: version".into()
            ));
        }
    };
    if dependencies.is_empty() {
        return Ok(None);
    }
    for (name, spec) in dependencies {
        let spec = spec.as_str().ok_or_else(|| {
            bad(format!(
                "dependency \"{name}\": the version must be a string"
            ))
        })?;
        let outside = [
            "file:", "link:", "git", "http:", "https:", "github:", "portal:",
        ];
        if outside.iter().any(|p| spec.starts_with(p))
            || spec.contains('/') && !spec.starts_with("npm:")
        {
            return Err(bad(format!(
                "dependency \"{name}\": \"{spec}\" is not an npm version or range; only packages from the npm registry are installed"
            )));
        }
    }
    let lock = match std::fs::read_to_string(project.join("package-lock.json")) {
        Ok(lock) => Some(lock),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(BuildError::Io {
                path: project.join("package-lock.json"),
                message: e.to_string(),
            });
        }
    };
    Ok(Some(Manifest {
        package_json: text,
        count: dependencies.len(),
        lock,
    }))
}

/// Installs the dependencies of `manifest` (once per manifest and lock).
pub fn install(manifest: &Manifest, dirs: &BuildDirs, show: bool) -> Result<Installed, BuildError> {
    let mut hasher = Sha256::new();
    for part in [
        JCO,
        &manifest.package_json,
        manifest.lock.as_deref().unwrap_or(""),
    ] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let key = hex::encode(hasher.finalize());
    let dir = dirs.builds.join(format!("js-deps-{}", &key[..32]));
    let installed = |dir: &Path| -> Option<Installed> {
        let resolved = std::fs::read_to_string(dir.join("resolved.txt")).ok()?;
        Some(Installed {
            node_modules: dir.join("node_modules"),
            resolved,
        })
    };
    if let Some(found) = installed(&dir) {
        super::housekeeping::touch(&dir);
        return Ok(found);
    }
    if show {
        eprintln!(
            "Installing {} npm dependencies{} ...",
            manifest.count,
            if manifest.lock.is_some() {
                " from package-lock.json"
            } else {
                ""
            }
        );
    }
    in_scratch(&dir, |scratch| -> Result<(), BuildError> {
        write(&scratch.join("package.json"), &manifest.package_json)?;
        let mut command = Command::new("npm");
        match &manifest.lock {
            Some(lock) => {
                write(&scratch.join("package-lock.json"), lock)?;
                command.arg("ci");
            }
            None => {
                command.arg("install");
            }
        }
        command
            .args([
                "--omit=dev",
                "--ignore-scripts",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ])
            .current_dir(scratch);
        run_captured(&mut command, "npm install").map_err(|output| explain_failure(&output))?;
        let lock = std::fs::read_to_string(scratch.join("package-lock.json")).unwrap_or_default();
        write(&scratch.join("resolved.txt"), resolved_set(&lock))
    })??;
    installed(&dir).ok_or_else(|| BuildError::Io {
        path: dir.join("resolved.txt"),
        message: "missing after install".into(),
    })
}

/// `name@version` of every package in the lock, sorted.
fn resolved_set(lock: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(lock).unwrap_or_default();
    let mut found: Vec<String> = json["packages"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(path, entry)| {
            let name = path
                .rsplit("node_modules/")
                .next()
                .filter(|n| !n.is_empty())?;
            Some(format!("{name}@{}", entry["version"].as_str()?))
        })
        .collect();
    found.sort();
    found.dedup();
    found.join("\n") + "\n"
}

/// npm's failure, said in one line when it is a missing package or version.
fn explain_failure(output: &str) -> BuildError {
    let missing = output
        .lines()
        .find_map(|l| l.split("404 Not Found - GET ").nth(1))
        .and_then(|url| url.split_whitespace().next())
        .and_then(|url| url.rsplit('/').next())
        .map(|name| name.replace("%2f", "/").replace("%2F", "/"));
    if let Some(name) = missing {
        return BuildError::JsDependency {
            package: name,
            reason: "it is not on the npm registry; check its name in package.json".into(),
        };
    }
    if let Some(spec) = output
        .lines()
        .find_map(|l| l.split("No matching version found for ").nth(1))
    {
        let spec = spec.trim().trim_end_matches('.');
        let package = spec
            .rsplit_once('@')
            .map(|(p, _)| p)
            .filter(|p| !p.is_empty())
            .unwrap_or(spec);
        return BuildError::JsDependency {
            package: package.to_string(),
            reason: format!(
                "no version matches '{spec}' on the npm registry; check the range in package.json"
            ),
        };
    }
    BuildError::ToolFailed {
        language: "JavaScript",
        message: format!(
            "npm could not install the dependencies in package.json:\n{}\nIs Node.js 18 or later (with npm) installed?",
            output.trim()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(package: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("package.json"), package).unwrap();
        dir
    }

    #[test]
    fn only_registry_dependencies_are_taken() {
        assert!(
            manifest(project("{\"main\": \"app.js\"}").path())
                .unwrap()
                .is_none()
        );
        assert!(
            manifest(project("{\"dependencies\": {}}").path())
                .unwrap()
                .is_none()
        );
        let found = manifest(
            project(r#"{"dependencies": {"humanize-plus": "^1.8.2", "x": "npm:y@1"}}"#).path(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(found.count, 2);
        for spec in [
            "file:../lib",
            "git+https://h/r.git",
            "https://h/x.tgz",
            "user/repo",
            "github:u/r",
        ] {
            let package = format!(r#"{{"dependencies": {{"x": "{spec}"}}}}"#);
            let err = manifest(project(&package).path())
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.contains("only packages from the npm registry"),
                "{spec}: {err}"
            );
        }
        let err = manifest(project(r#"{"dependencies": ["x"]}"#).path())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("must be an object"), "{err}");
    }

    #[test]
    fn the_resolved_set_is_read_from_the_lock() {
        let lock = r#"{"packages": {"": {"name": "app"},
            "node_modules/b": {"version": "2.0.0"},
            "node_modules/a": {"version": "1.0.0"},
            "node_modules/a/node_modules/@s/c": {"version": "3.0.0"}}}"#;
        assert_eq!(resolved_set(lock), "@s/c@3.0.0\na@1.0.0\nb@2.0.0\n");
    }

    #[test]
    fn npm_failures_name_the_package() {
        let e = explain_failure(
            "npm error code E404\nnpm error 404 Not Found - GET https://registry.npmjs.org/no-such-pkg - Not found\n",
        );
        assert_eq!(
            e.to_string(),
            "cannot bundle the npm package `no-such-pkg`: it is not on the npm registry; check its name in package.json"
        );
        let e = explain_failure(
            "npm error code ETARGET\nnpm error notarget No matching version found for humanize-plus@^99.0.0.\n",
        );
        assert!(
            e.to_string()
                .contains("`humanize-plus`: no version matches 'humanize-plus@^99.0.0'"),
            "{e}"
        );
    }
}
