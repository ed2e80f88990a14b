//! Tidy: the layering rules of ARCHITECTURE.md, checked by reading the sources.
//!
//! - one owner per foreign library (rusqlite → store, wasmtime → engine, axum →
//!   api/ui, clap and anyhow → cli and main);
//! - a module never uses one in a higher layer;
//! - the lowest layer does no IO and is not async;
//! - every source file says what it owns in a `//!` comment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Layers, lowest first. A module may use its own layer and those below.
const LAYERS: &[&[&str]] = &[
    &["model", "clock", "orchestrate", "protocol", "config"],
    &["store", "engine", "secrets"],
    &["control", "client"],
    &["worker", "scheduler", "api", "ui", "builder"],
    &["cli", "telemetry", "main", "lib"],
];

/// Foreign crates and the only modules that may name them.
const OWNERS: &[(&str, &[&str])] = &[
    ("rusqlite", &["store"]),
    ("wasmtime", &["engine"]),
    ("wasmtime_wasi", &["engine"]),
    ("axum", &["api", "ui"]),
    ("utoipa", &["api"]),
    ("chacha20poly1305", &["secrets"]),
    ("ureq", &["client"]),
    ("clap", &["cli"]),
    ("anyhow", &["cli"]),
];

fn host_sources() -> BTreeMap<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/src");
    let mut files = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                files.insert(path.strip_prefix(&root).unwrap().to_path_buf(), text);
            }
        }
    }
    assert!(
        files.len() > 10,
        "found too few sources under {}",
        root.display()
    );
    files
}

/// The top-level module a file belongs to: `store/mod.rs` → `store`.
fn module_of(path: &Path) -> String {
    let first = path
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` is in no layer; add it to LAYERS in tests/tests/tidy.rs and ARCHITECTURE.md"))
}

/// Code lines, without comments (so prose may name anything).
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l))
}

fn names_crate(line: &str, krate: &str) -> bool {
    let bytes = line.as_bytes();
    line.match_indices(krate).any(|(at, _)| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = &line.as_bytes()[at + krate.len()..];
        let starts_word = before.is_none_or(|b| !(b.is_ascii_alphanumeric() || b == b'_'));
        starts_word && after.starts_with(b"::")
    })
}

#[test]
fn foreign_libraries_have_one_owner() {
    let mut offences = Vec::new();
    for (path, text) in host_sources() {
        let module = module_of(&path);
        for (krate, owners) in OWNERS {
            if owners.contains(&module.as_str())
                || (module == "main" && (*krate == "clap" || *krate == "anyhow"))
            {
                continue;
            }
            for (n, line) in code_lines(&text) {
                if names_crate(line, krate) {
                    offences.push(format!(
                        "{}:{n}: `{krate}` belongs to {owners:?} only: {}",
                        path.display(),
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(offences.is_empty(), "\n{}", offences.join("\n"));
}

#[test]
fn modules_only_use_their_own_layer_or_lower() {
    let mut offences = Vec::new();
    for (path, text) in host_sources() {
        let module = module_of(&path);
        let own = layer_of(&module);
        for (n, line) in code_lines(&text) {
            for (at, _) in line.match_indices("crate::") {
                let rest = &line[at + "crate::".len()..];
                let used: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if used.is_empty() || used == module {
                    continue;
                }
                if layer_of(&used) > own {
                    offences.push(format!(
                        "{}:{n}: `{module}` (layer {own}) uses `{used}` (layer {}): {}",
                        path.display(),
                        layer_of(&used),
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(offences.is_empty(), "\n{}", offences.join("\n"));
}

#[test]
fn the_lowest_layer_does_no_io_and_is_not_async() {
    let forbidden = [
        "async fn",
        "tokio::",
        "std::fs",
        "std::net",
        "std::process",
        "std::env",
    ];
    let mut offences = Vec::new();
    for (path, text) in host_sources() {
        let module = module_of(&path);
        if layer_of(&module) != 0 {
            continue;
        }
        for (n, line) in code_lines(&text) {
            for word in forbidden {
                if line.contains(word) {
                    offences.push(format!(
                        "{}:{n}: `{word}` in a no-IO module: {}",
                        path.display(),
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(offences.is_empty(), "\n{}", offences.join("\n"));
}

#[test]
fn every_source_file_says_what_it_owns() {
    let missing: Vec<String> = host_sources()
        .into_iter()
        .filter(|(_, text)| !text.trim_start().starts_with("//!"))
        .map(|(path, _)| path.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a `//!` header: {missing:?}"
    );
}

#[test]
fn the_checker_itself_catches_offences() {
    assert!(names_crate("use rusqlite::Connection;", "rusqlite"));
    assert!(!names_crate("my_rusqlite::x", "rusqlite"));
    assert!(!names_crate("wasmtime_wasi::p2", "wasmtime"));
    assert_eq!(module_of(Path::new("store/mod.rs")), "store");
    assert_eq!(module_of(Path::new("model.rs")), "model");
}
