//! `host init NAME --lang rust|python|js|c|cpp`: a new guest project that builds
//! and runs at once (`host flow run NAME`), with a hello flow, a `weir.yaml`
//! and a short README.
//!
//! A Rust project depends on `weir-sdk` by path when this host was built from
//! a source tree that is still there (the SDK is not on crates.io), and takes
//! that tree's `Cargo.lock`, so its dependencies are the versions the host's
//! own guests were built with (and reuse their build). Python, JavaScript
//! C and C++ projects need nothing: their SDK comes with `host` (C and C++
//! need clang for wasm32-wasi from apt).

use super::Exit;
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  host init demo --lang python && host flow run demo
  host init etl --lang rust
  host init demo --lang c && host flow run demo
  host init demo --lang cpp && host flow run demo
  host serve demo --flow hello --interval 10s")]
pub struct InitArgs {
    /// The folder to create (its last part names the project).
    path: PathBuf,
    /// The language of the project.
    #[arg(long, value_enum, default_value = "rust")]
    lang: Lang,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    #[value(alias = "javascript")]
    Js,
    /// C, built with clang for wasm32-wasi.
    C,
    /// C++ with its standard library (libc++, no exceptions), built with clang++ for wasm32-wasi.
    #[value(alias = "c++")]
    Cpp,
}

/// The SDK crate beside the host's sources, when the host was built from them.
const SDK_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk/weir-sdk");
const WORKSPACE_LOCK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock");

pub fn init(args: InitArgs) -> anyhow::Result<()> {
    let name = project_name(&args.path)?;
    if args.path.exists() {
        let empty = std::fs::read_dir(&args.path)
            .map(|mut entries| entries.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(Exit::bad_input(format!(
                "{} exists and is not empty; choose a new folder (nothing was written)",
                args.path.display()
            )));
        }
    }
    let files = project_files(&name, args.lang, sdk_dependency().as_deref());
    for (file, text) in &files {
        let path = args.path.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    if args.lang == Lang::Rust && Path::new(WORKSPACE_LOCK).is_file() {
        // Same versions as the host's own guests: an offline-friendly, warm build.
        let _ = std::fs::copy(WORKSPACE_LOCK, args.path.join("Cargo.lock"));
    }
    let shown = args.path.display();
    println!(
        "Created the {} project '{name}' in {shown}. Next:\n  host flow run {shown}\n  host serve {shown} --flow hello --interval 10s",
        args.lang.label()
    );
    Ok(())
}

impl Lang {
    fn label(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
            Lang::C => "C",
            Lang::Cpp => "C++",
        }
    }
}

/// The folder's last part, if it can name a package in every language.
fn project_name(path: &Path) -> anyhow::Result<String> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 64;
    if valid {
        Ok(name)
    } else {
        Err(Exit::bad_input(format!(
            "'{}' cannot name a project: use a letter, then letters, digits, '-' or '_' (at most 64)",
            path.display()
        )))
    }
}

/// `weir-sdk = { path = ... }` when the SDK's sources are here, else a version.
fn sdk_dependency() -> Option<String> {
    let sdk = Path::new(SDK_SOURCE).canonicalize().ok()?;
    sdk.join("Cargo.toml").is_file().then(|| {
        let path = toml::Value::String(sdk.to_string_lossy().into_owned());
        format!("{{ path = {path} }}")
    })
}

/// Every file of a new project, relative path → text.
fn project_files(name: &str, lang: Lang, sdk: Option<&str>) -> Vec<(&'static str, String)> {
    let readme = format!(
        "# {name}\n\nA Weir flow in {}: `host flow run .` runs `hello` once, `host serve . --flow hello --interval 10s` on a schedule.\nDeploy it to a server with `host deploy -f weir.yaml`.\n",
        lang.label()
    );
    let deployment = format!(
        "# `host deploy -f weir.yaml` uploads this project and creates the deployment;\n\
         # `host serve . --flow hello --interval 10s` runs it in the foreground instead.\n\
         deployments:\n  - name: {name}-hello\n    component: .\n    flow: hello\n    params: {{name: world}}\n    schedules:\n      - interval: 1h\n"
    );
    let mut files = vec![("README.md", readme), ("weir.yaml", deployment)];
    match lang {
        Lang::Rust => {
            let sdk = sdk
                .map(str::to_string)
                .unwrap_or_else(|| format!("\"{}\"", env!("CARGO_PKG_VERSION")));
            files.push((
                "Cargo.toml",
                format!(
                    "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
                     [lib]\ncrate-type = [\"cdylib\"]\n\n\
                     [dependencies]\nweir-sdk = {sdk}\n\n\
                     # A workspace of its own: never taken for a member of an enclosing one.\n[workspace]\n"
                ),
            ));
            files.push(("src/lib.rs", RUST_HELLO.to_string()));
            files.push((".gitignore", "/target\n".to_string()));
        }
        Lang::Python => {
            files.push((
                "pyproject.toml",
                format!(
                    "[project]\nname = \"{name}\"\nversion = \"0.1.0\"\nrequires-python = \">=3.11\"\n\
                     # Pure-Python packages from PyPI, bundled into the component by `host build`.\n\
                     dependencies = []\n"
                ),
            ));
            files.push(("app.py", PYTHON_HELLO.to_string()));
        }
        Lang::Js => {
            let package = serde_json::json!({
                "name": name,
                "version": "0.1.0",
                "private": true,
                "type": "module",
                "main": "app.js",
                "dependencies": {},
            });
            files.push((
                "package.json",
                format!(
                    "{}\n",
                    serde_json::to_string_pretty(&package).unwrap_or_default()
                ),
            ));
            files.push(("app.js", JS_HELLO.to_string()));
            files.push((".gitignore", "node_modules/\n".to_string()));
        }
        Lang::C => {
            files.push((
                "weir.toml",
                "# `host build` compiles every .c file here with clang for wasm32-wasi,\n\
                 # with the Weir C SDK (weir.h), into a component.\n\
                 language = \"c\"\n\
                 # Extra compiler flags, e.g. [\"-Iinclude\", \"-DNDEBUG\"].\n\
                 cflags = []\n"
                    .to_string(),
            ));
            files.push(("app.c", C_HELLO.to_string()));
        }
        Lang::Cpp => {
            files.push((
                "weir.toml",
                "# `host build` compiles every .cpp (and .c) file here with clang++ for\n\
                 # wasm32-wasi against libc++, exceptions off, with the Weir C SDK (weir.h).\n\
                 language = \"cpp\"\n\
                 # Extra flags for every file and the link, e.g. [\"-Iinclude\", \"-DNDEBUG\"];\n\
                 # cxxflags for the C++ files only (C++20 unless it says otherwise).\n\
                 cflags = []\n\
                 cxxflags = []\n"
                    .to_string(),
            ));
            files.push(("app.cpp", CPP_HELLO.to_string()));
        }
    }
    files
}

const RUST_HELLO: &str = r#"//! A flow with one task: run it with `host flow run .`.

use weir_sdk::{Result, flow, info, task};

/// Makes a greeting (a task: it runs in a sandbox of its own, with retries).
#[task(retries = 2, retry_delay = "100ms")]
fn greet(name: String) -> String {
    format!("Hello, {name}!")
}

/// Greets someone, the world by default.
#[flow]
fn hello(name: Option<String>) -> Result<String> {
    let name = name.unwrap_or_else(|| "world".into());
    info!("greeting {name}");
    Ok(greet(name)?)
}

weir_sdk::export!(flows: [hello], tasks: [greet]);
"#;

const PYTHON_HELLO: &str = r#""""A flow with one task: run it with `host flow run .`."""

from weir_sdk import flow, info, task


@task(retries=2, retry_delay="100ms")
def greet(name: str) -> str:
    """Makes a greeting (a task: it runs in a sandbox of its own, with retries)."""
    return f"Hello, {name}!"


@flow
def hello(name: str = "world") -> str:
    """Greets someone, the world by default."""
    info(f"greeting {name}")
    return greet(name)
"#;

const JS_HELLO: &str = r#"// A flow with one task: run it with `host flow run .`.

import { flow, info, task } from "weir-sdk";

export const greet = task(
  { retries: 2, retryDelay: "100ms", description: "Makes a greeting (a task: it runs in a sandbox of its own, with retries)." },
  function greet(name) {
    return `Hello, ${name}!`;
  },
);

export const hello = flow(
  { description: "Greets someone, the world by default." },
  function hello(name = "world") {
    info(`greeting ${name}`);
    return greet(name);
  },
);
"#;

const C_HELLO: &str = r#"/* A flow with one task: run it with `host flow run .`. */
#include "weir.h"

/* Makes a greeting (a task: it runs in a sandbox of its own, with retries). */
static char *greet(weir_json input) {
    char *name = weir_json_string(weir_json_get(input, "name"));
    if (!name) return weir_invalid_input("name must be a string");
    char *greeting = weir_json_printf("Hello, %s!", name);
    char *result = weir_json_quote(greeting); /* a JSON string */
    free(greeting);
    free(name);
    return result;
}
WEIR_TASK(greet, .retries = 2, .retry_delay_ms = 100,
          .description = "Makes a greeting (a task: it runs in a sandbox of its own, with retries).",
          .params = "{\"name\": {\"type\": \"string\"}}");

/* Greets someone, the world by default. */
static char *hello(weir_json params) {
    char *name = weir_json_string(weir_json_get(params, "name"));
    weir_info("greeting %s", name ? name : "world");
    char *quoted = weir_json_quote(name ? name : "world");
    char *input = weir_json_printf("{\"name\": %s}", quoted);
    char *result = weir_call_task("greet", input); /* NULL on failure: the flow fails with it */
    free(input);
    free(quoted);
    free(name);
    return result;
}
WEIR_FLOW(hello, .description = "Greets someone, the world by default.",
          .params = "{\"name\": {\"type\": \"string\", \"default\": \"world\"}}");
"#;

const CPP_HELLO: &str = r#"// A flow with one task: run it with `host flow run .`.
#include "weir.h"

#include <string>

// A JSON string's text, or `fallback` when it is not a string.
static std::string text_of(weir_json value, const std::string &fallback) {
    char *text = weir_json_string(value);
    std::string out = text != nullptr ? text : fallback;
    free(text);
    return out;
}

// Makes a greeting (a task: it runs in a sandbox of its own, with retries).
static char *greet(weir_json input) {
    char *name = weir_json_string(weir_json_get(input, "name"));
    if (name == nullptr) return weir_invalid_input("name must be a string");
    std::string greeting = std::string("Hello, ") + name + "!";
    free(name);
    return weir_json_quote(greeting.c_str()); // a JSON string, from malloc: the SDK frees it
}
// Options in the order weir_options declares them (C++ designated initializers).
WEIR_TASK(greet, .description = "Makes a greeting (a task: it runs in a sandbox of its own, with retries).",
          .params = "{\"name\": {\"type\": \"string\"}}", .retries = 2, .retry_delay_ms = 100);

// Greets someone, the world by default.
static char *hello(weir_json params) {
    std::string name = text_of(weir_json_get(params, "name"), "world");
    weir_info("greeting %s", name.c_str());
    char *quoted = weir_json_quote(name.c_str());
    std::string input = std::string("{\"name\": ") + quoted + "}";
    free(quoted);
    return weir_call_task("greet", input.c_str()); // NULL on failure: the flow fails with it
}
WEIR_FLOW(hello, .description = "Greets someone, the world by default.",
          .params = "{\"name\": {\"type\": \"string\", \"default\": \"world\"}}");
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_name_must_suit_every_package_manager() {
        assert_eq!(project_name(Path::new("a/demo-1")).unwrap(), "demo-1");
        for bad in ["1demo", "de mo", "dé", "..", "/", ""] {
            assert!(project_name(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_rust_manifest_is_its_own_workspace_and_names_the_sdk() {
        let files = project_files("demo", Lang::Rust, Some("{ path = \"/sdk\" }"));
        let manifest = &files.iter().find(|(f, _)| *f == "Cargo.toml").unwrap().1;
        let parsed: toml::Table = manifest.parse().unwrap();
        assert!(parsed.contains_key("workspace"), "{manifest}");
        assert_eq!(
            parsed["dependencies"]["weir-sdk"]["path"].as_str(),
            Some("/sdk")
        );
        assert_eq!(parsed["lib"]["crate-type"][0].as_str(), Some("cdylib"));
    }
}
