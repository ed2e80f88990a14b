//! Tidy: the layering rules of ARCHITECTURE.md, checked by reading the sources.
//!
//! - one owner per foreign library (rusqlite → store, wasmtime → engine, axum →
//!   api/ui, clap and anyhow → cli and main);
//! - a module never uses one in a higher layer;
//! - the lowest layer does no IO and is not async;
//! - the CLI opens the database in one file only (`cli/local.rs`); every
//!   other command goes through the API;
//! - a public function never answers `Result<_, String>`: errors that cross a
//!   module's boundary are typed;
//! - the CLI reads the API's replies as `api::wire` types, never JSON by a
//!   string key (a renamed field would print blank instead of failing);
//! - the CLI sends request bodies as the types the handlers read, never
//!   `json!` (only free-form output and files are built by hand);
//! - every API route is registered with `routes!`, so the router and the
//!   OpenAPI document come from one list;
//! - every source file says what it owns in a `//!` comment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Layers, lowest first. A module may use the layers below its own, and a
/// module of its own layer only where [`SAME_LAYER`] allows it.
const LAYERS: &[&[&str]] = &[
    &[
        "model",
        "clock",
        "orchestrate",
        "protocol",
        "config",
        "schedule",
    ],
    &["store", "engine", "secrets"],
    &["control", "client", "dispatch"],
    &["worker", "scheduler", "automations", "api", "ui", "builder"],
    &["server"],
    &["cli", "main", "lib"],
];

/// The only uses within one layer: (user, used). Each one is a decision,
/// written down; anything else within a layer is a tangle in the making.
const SAME_LAYER: &[(&str, &str)] = &[
    // The vocabulary every layer-0 module speaks.
    ("clock", "model"),
    ("orchestrate", "model"),
    ("protocol", "model"),
    ("config", "model"),
    // Schedules are model data; when they fire, and time text, is `schedule`'s
    // (which uses no other module, so the two never form a cycle).
    ("model", "schedule"),
    ("clock", "schedule"),
    // The dispatcher decides admission; control makes each state change.
    ("dispatch", "control"),
    // The secrets key lives in `$WEIR_HOME`, whose folders the store makes private.
    ("secrets", "store"),
    // The API router mounts the UI; the UI reads and acts through the API's
    // state and the very functions its JSON handlers call.
    ("api", "ui"),
    ("ui", "api"),
    // The CLI's program is the library's, and `lib` declares every module.
    ("main", "cli"),
    ("lib", "cli"),
];

/// Types only some modules may name: the write side of the store and the
/// service that makes state changes stay below the API and the CLI.
const RESTRICTED: &[(&str, &[&str])] = &[
    (
        "StateChange",
        &["store", "control", "dispatch", "worker", "scheduler"],
    ),
    (
        "Durability",
        &["control", "dispatch", "worker", "scheduler", "automations"],
    ),
];

/// Foreign crates and the only modules (or folders of one, `store/sqlite`)
/// that may name them.
const OWNERS: &[(&str, &[&str])] = &[
    ("rusqlite", &["store/sqlite"]),
    ("postgres", &["store/pg"]),
    ("wasmtime", &["engine"]),
    ("wasmtime_wasi", &["engine"]),
    ("wasmtime_wasi_http", &["engine"]),
    ("http_body_util", &["engine"]),
    ("axum", &["api", "ui"]),
    ("flate2", &["ui"]),
    ("utoipa", &["api"]),
    ("utoipa_axum", &["api"]),
    ("chacha20poly1305", &["secrets"]),
    ("ureq", &["client"]),
    ("clap", &["cli"]),
    ("anyhow", &["cli"]),
    ("croner", &["schedule"]),
    ("jiff", &["schedule"]),
    ("rrule", &["schedule"]),
    ("metrics_exporter_prometheus", &["api"]),
    ("metrics", &["worker", "automations", "api"]),
    ("wit_component", &["builder/c.rs"]),
    ("wit_bindgen_c", &["builder/c.rs"]),
    ("wit_bindgen_core", &["builder/c.rs"]),
    (
        "wasi_preview1_component_adapter_provider",
        &["builder/c.rs"],
    ),
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
        .unwrap_or_else(|| panic!("module `{module}` is in no layer; add it to LAYERS in tests/tests/all/tidy.rs and ARCHITECTURE.md"))
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
            if owners
                .iter()
                .any(|owner| module == *owner || path.starts_with(owner))
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

/// Every use of a higher layer, or of one's own layer not in [`SAME_LAYER`].
fn layer_offences(sources: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let mut offences = Vec::new();
    for (path, text) in sources {
        let module = module_of(path);
        let own = layer_of(&module);
        for (n, line) in code_lines(text) {
            for (at, _) in line.match_indices("crate::") {
                let rest = &line[at + "crate::".len()..];
                let used: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if used.is_empty() || used == module {
                    continue;
                }
                let theirs = layer_of(&used);
                let allowed = theirs < own
                    || (theirs == own && SAME_LAYER.contains(&(module.as_str(), used.as_str())));
                if !allowed {
                    offences.push(format!(
                        "{}:{n}: `{module}` (layer {own}) uses `{used}` (layer {theirs}): {}",
                        path.display(),
                        line.trim()
                    ));
                }
            }
        }
    }
    offences
}

/// Every naming of a [`RESTRICTED`] type outside the modules allowed it.
fn restricted_offences(sources: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let mut offences = Vec::new();
    for (path, text) in sources {
        let module = module_of(path);
        for (name, owners) in RESTRICTED {
            if owners.contains(&module.as_str()) {
                continue;
            }
            for (n, line) in code_lines(text) {
                if names_word(line, name) {
                    offences.push(format!(
                        "{}:{n}: `{name}` belongs to {owners:?} only: {}",
                        path.display(),
                        line.trim()
                    ));
                }
            }
        }
    }
    offences
}

/// `word` as a whole identifier in `line`.
fn names_word(line: &str, word: &str) -> bool {
    let bytes = line.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    line.match_indices(word).any(|(at, _)| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(at + word.len()).copied();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

#[test]
fn modules_only_use_lower_layers_and_allowed_neighbours() {
    let offences = layer_offences(&host_sources());
    assert!(offences.is_empty(), "\n{}", offences.join("\n"));
}

#[test]
fn restricted_types_stay_with_their_owners() {
    let offences = restricted_offences(&host_sources());
    assert!(offences.is_empty(), "\n{}", offences.join("\n"));
}

/// The one CLI file that may open the database and change it directly: it
/// runs flows in this process. Every other command goes through `Backend`.
const CLI_STORE_DOOR: &str = "cli/local.rs";

/// What opening or changing the database takes: the store itself, its writes
/// and the service that makes state changes.
const CLI_STORE_WORDS: &[&str] = &["Store", "Control", "StateChange"];

fn cli_store_offences(files: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let mut offences = Vec::new();
    for (path, text) in files {
        if !path.starts_with("cli") || path == Path::new(CLI_STORE_DOOR) {
            continue;
        }
        for (n, line) in code_lines(text) {
            let named = CLI_STORE_WORDS
                .iter()
                .find(|w| names_word(line, w))
                .copied()
                .or_else(|| {
                    (line.contains("Write::") || line.contains("store::Write")).then_some("Write")
                });
            if let Some(word) = named {
                offences.push(format!(
                    "{}:{n}: `{word}` outside {CLI_STORE_DOOR}; go through the API (`Backend`) or move this into {CLI_STORE_DOOR}: {}",
                    path.display(),
                    line.trim()
                ));
            }
        }
    }
    offences
}

#[test]
fn the_cli_opens_the_database_in_one_file() {
    let offences = cli_store_offences(&host_sources());
    assert!(offences.is_empty(), "\n{}", offences.join("\n"));
}

/// Where the CLI may read JSON by key: values free-form by design (a flow's
/// parameter JSON Schema, written by the flow's author), not API replies.
const CLI_FREE_FORM_JSON: &[(&str, &str)] = &[
    ("cli/flow.rs", r#"schema["required"]"#),
    ("cli/flow.rs", r#"schema["properties"]"#),
    ("cli/flow.rs", r#"prop["type"]"#),
    ("cli/flow.rs", r#".get("default")"#),
];

/// How `line` reads JSON by a string key, if it does: `reply["state"]`
/// (indexing after a name, a call or another index; not `&["A", "B"]` or
/// `vec!["a"]`, and not an assignment `out["rows"] = ...`, which writes),
/// or `value.get("state")` on anything but the CLI's settings.
fn json_key_read(line: &str) -> Option<&'static str> {
    let bytes = line.as_bytes();
    for (at, _) in line.match_indices("[\"") {
        let indexes = at
            .checked_sub(1)
            .map(|i| bytes[i])
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b')' || b == b']');
        if !indexes {
            continue;
        }
        let after_key = line[at + 2..]
            .find("\"]")
            .map(|end| line[at + 2 + end + 2..].trim_start());
        let writes = after_key.is_some_and(|rest| rest.starts_with('=') && !rest.starts_with("=="));
        if !writes {
            return Some("indexes JSON by a string key");
        }
    }
    for call in [".get(\"", ".get_mut(\""] {
        for (at, _) in line.match_indices(call) {
            let receiver = line[..at].trim_end();
            if !(receiver.ends_with("settings") || receiver.ends_with("settings()?")) {
                return Some("looks up a JSON key with `.get`");
            }
        }
    }
    None
}

/// String-key reads of JSON in the CLI: a field the server renamed would
/// print blank instead of failing. Replies are read as `api::wire` types.
fn cli_json_key_offences(files: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let mut offences = Vec::new();
    for (path, text) in files {
        if !path.starts_with("cli") {
            continue;
        }
        let lines = code_lines(text).take_while(|(_, l)| !l.contains("#[cfg(test)]"));
        for (n, line) in lines {
            let free_form = CLI_FREE_FORM_JSON
                .iter()
                .any(|(file, needle)| path == Path::new(file) && line.contains(needle));
            if free_form {
                continue;
            }
            if let Some(how) = json_key_read(line) {
                offences.push(format!(
                    "{}:{n}: {how}; read the reply as its type from `api::wire` (`Backend::get_as`, `send_as`, `parse`), or add a free-form value to CLI_FREE_FORM_JSON: {}",
                    path.display(),
                    line.trim()
                ));
            }
        }
    }
    offences
}

#[test]
fn the_cli_reads_replies_as_types() {
    let offences = cli_json_key_offences(&host_sources());
    assert!(offences.is_empty(), "\n{}", offences.join("\n"));
}

/// The JSON the CLI builds by hand, each free-form by nature: `--json`
/// output, a file it writes, a deploy document it reads back itself.
/// Request bodies are never here: they are the types the handlers read.
const CLI_HAND_BUILT_JSON: &[(&str, &str)] = &[
    // `--json` output.
    ("cli/deployment.rs", "Ok(json!({"),
    ("cli/flow.rs", "let json = serde_json::json!({"),
    (
        "cli/flow.rs",
        "|p: housekeeping::Pruned| serde_json::json!({",
    ),
    ("cli/flow.rs", r#"serde_json::json!({"builds""#),
    ("cli/flow.rs", r#"serde_json::json!({"kind""#),
    ("cli/local.rs", "let mut out = serde_json::json!({"),
    ("cli/local.rs", r#"serde_json::json!({"flow_runs""#),
    ("cli/mod.rs", r#"serde_json::json!({"host""#),
    ("cli/output.rs", "json!({"),
    ("cli/pool.rs", "print_json(&json!({"),
    ("cli/profile.rs", r#"json!({ "active""#),
    ("cli/profile.rs", r#"json!({ "value": shown"#),
    ("cli/profile.rs", r#"json!({ "profile""#),
    ("cli/runs.rs", r#"serde_json::json!({"at""#),
    ("cli/runs.rs", r#"serde_json::json!({"flow_run""#),
    ("cli/schedule.rs", r#"json!({ "times""#),
    // Files: a new JS project's package.json, the server's address file.
    ("cli/init.rs", "let package = serde_json::json!({"),
    ("cli/server.rs", r#"serde_json::json!({ "url""#),
    // `host serve`'s deploy document, read back by `host deploy`'s parser.
    ("cli/serve.rs", r#"json!({ "deployments""#),
];

/// `json!(` in the CLI outside [`CLI_HAND_BUILT_JSON`]: a request body
/// built by hand would drift from what the handler reads without failing
/// to compile.
fn cli_hand_built_json_offences(files: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let mut offences = Vec::new();
    for (path, text) in files {
        if !path.starts_with("cli") {
            continue;
        }
        let lines = code_lines(text).take_while(|(_, l)| !l.contains("#[cfg(test)]"));
        for (n, line) in lines {
            if !line.contains("json!(") {
                continue;
            }
            let free_form = CLI_HAND_BUILT_JSON
                .iter()
                .any(|(file, needle)| path == Path::new(file) && line.contains(needle));
            if !free_form {
                offences.push(format!(
                    "{}:{n}: JSON built by hand; send the request type the handler reads (`api::wire`, or the `model` type it takes whole), or, for free-form output, add it to CLI_HAND_BUILT_JSON: {}",
                    path.display(),
                    line.trim()
                ));
            }
        }
    }
    offences
}

#[test]
fn the_cli_sends_requests_as_types() {
    let offences = cli_hand_built_json_offences(&host_sources());
    assert!(offences.is_empty(), "\n{}", offences.join("\n"));
}

/// Routes registered by hand on the API's router: they would be served but
/// missing from the OpenAPI document. `routes!` (utoipa-axum) registers a
/// handler from its `#[utoipa::path]`, so the router and the document come
/// from one list.
fn undocumented_route_offences(files: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let mut offences = Vec::new();
    for (path, text) in files {
        if module_of(path) != "api" {
            continue;
        }
        for (n, line) in code_lines(text) {
            for call in [".route(", ".route_service(", ".nest(", ".nest_service("] {
                if line.contains(call) {
                    offences.push(format!(
                        "{}:{n}: `{call}..)` serves a route the OpenAPI document does not list; give the handler a #[utoipa::path] and register it with `.routes(routes!(..))` in api::documented_routes: {}",
                        path.display(),
                        line.trim()
                    ));
                }
            }
        }
    }
    offences
}

#[test]
fn every_api_route_is_registered_with_its_document() {
    let offences = undocumented_route_offences(&host_sources());
    assert!(offences.is_empty(), "\n{}", offences.join("\n"));
}

/// Test support that may answer plain text: it is not part of the program.
const STRING_ERRORS_ALLOWED: &[&str] = &["store/pg/testing.rs"];

/// Every `pub fn` (not `pub(crate)` or narrower) whose error is a bare
/// `String`: a caller across the module's boundary could only print it.
fn string_error_offences(files: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let mut offences = Vec::new();
    for (path, text) in files {
        if STRING_ERRORS_ALLOWED.iter().any(|a| path.ends_with(a)) {
            continue;
        }
        // A signature may wrap; look at each `pub fn` up to its body.
        let lines: Vec<(usize, &str)> = code_lines(text).collect();
        for (i, (n, line)) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            if !trimmed.starts_with("pub fn ") {
                continue;
            }
            let signature: String = lines[i..]
                .iter()
                .map(|(_, l)| l.trim())
                .take_while(|l| !l.starts_with('{'))
                .take(12)
                .collect::<Vec<_>>()
                .join(" ");
            let signature = signature.split(" {").next().unwrap_or_default();
            let answers = signature.rsplit("->").next().unwrap_or_default();
            let flat: String = answers.chars().filter(|c| !c.is_whitespace()).collect();
            if flat.starts_with("Result<") && flat.ends_with(",String>") {
                offences.push(format!(
                    "{}:{n}: a public function answers `Result<_, String>`; give it a typed error: {}",
                    path.display(),
                    trimmed
                ));
            }
        }
    }
    offences
}

#[test]
fn public_functions_answer_typed_errors() {
    let offences = string_error_offences(&host_sources());
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

/// Planted violations: each rule must catch its own.
#[test]
fn the_rules_catch_planted_violations() {
    let planted = |path: &str, text: &str| {
        BTreeMap::from([(PathBuf::from(path), format!("//! planted\n{text}\n"))])
    };
    // The API reaching into the executor (same layer, not allowed).
    assert_eq!(
        layer_offences(&planted("api/runs.rs", "use crate::worker::Executor;")).len(),
        1
    );
    // The scheduler calling the API (same layer).
    assert_eq!(
        layer_offences(&planted("scheduler.rs", "crate::api::launch();")).len(),
        1
    );
    // The store calling up into the dispatcher (higher layer).
    assert_eq!(
        layer_offences(&planted("store/mod.rs", "use crate::dispatch::Dispatcher;")).len(),
        1
    );
    // Allowed: lower layers, and the written-down neighbour.
    assert!(layer_offences(&planted("api/mod.rs", "use crate::dispatch::Dispatcher;")).is_empty());
    assert!(layer_offences(&planted("dispatch.rs", "use crate::control::Control;")).is_empty());
    // The CLI making a state change by hand.
    assert_eq!(
        restricted_offences(&planted(
            "cli/runs.rs",
            "let c = store::StateChange::new(id);"
        ))
        .len(),
        1
    );
    assert!(
        restricted_offences(&planted("cli/runs.rs", "let c = MyStateChanger::new();")).is_empty()
    );
    // The CLI opening the database or writing to it outside its one door.
    assert_eq!(
        cli_store_offences(&planted("cli/runs.rs", "let s = Store::open(&path)?;")).len(),
        1
    );
    assert_eq!(
        cli_store_offences(&planted(
            "cli/deploy.rs",
            "store.submit(vec![Write::Component { x }]);"
        ))
        .len(),
        1
    );
    assert!(
        cli_store_offences(&planted("cli/local.rs", "let s = Store::open(&path)?;")).is_empty()
    );
    assert!(cli_store_offences(&planted("cli/output.rs", "use std::io::Write as _;")).is_empty());
    assert!(cli_store_offences(&planted("api/runs.rs", "let s = Store::open(&path)?;")).is_empty());
    // The CLI reading a reply by key: indexing, comparing, `.get`.
    for read in [
        r#"let id = reply["flow_run_id"].as_str().unwrap_or_default();"#,
        r#"if reply["created"] == json!(true) {"#,
        r#"let pool = reply["deployment"]["work_pool"].clone();"#,
        r#"let n = page.logs()["id"].as_i64();"#,
        r#"let m = value.get("message").and_then(Value::as_str);"#,
    ] {
        assert_eq!(
            cli_json_key_offences(&planted("cli/deploy.rs", read)).len(),
            1,
            "{read}"
        );
    }
    // Not reads: table headers, arrays, writes, settings, tests, free-form
    // schemas, and other modules.
    for fine in [
        r#"println!("{}", table(&["NAME", "FLOW"], &rows));"#,
        r#"let v = vec!["a".into(), "b".into()];"#,
        r#"for bad in ["1demo", "de mo"] {"#,
        r#"out["rows"] = json!({"logs": 1});"#,
        r#"let url = settings.get("api.url");"#,
        r#"let key = settings()?.get("api.key");"#,
        "#[cfg(test)]\nmod tests { let x = parsed[\"lib\"][\"crate-type\"]; }",
    ] {
        assert!(
            cli_json_key_offences(&planted("cli/deploy.rs", fine)).is_empty(),
            "{fine}"
        );
    }
    assert!(
        cli_json_key_offences(&planted(
            "cli/flow.rs",
            r#"let Some(props) = schema["properties"].as_object() else {"#
        ))
        .is_empty()
    );
    assert_eq!(
        cli_json_key_offences(&planted(
            "cli/deploy.rs",
            r#"let Some(props) = schema["properties"].as_object() else {"#
        ))
        .len(),
        1
    );
    assert!(
        cli_json_key_offences(&planted("api/runs.rs", r#"let x = body["name"].as_str();"#))
            .is_empty()
    );
    // The CLI building a request body by hand, inline or ahead of the call.
    for body in [
        r#"let reply = backend.send("PUT", &path, &json!({ "value": value }))?;"#,
        r#"let body = serde_json::json!({ "to": args.to });"#,
        r#"backend.send("POST", &path, &json!({}))?;"#,
    ] {
        assert_eq!(
            cli_hand_built_json_offences(&planted("cli/variable.rs", body)).len(),
            1,
            "{body}"
        );
    }
    // Free-form output where it is allowed, tests, and other modules.
    for fine in [
        (
            "cli/schedule.rs",
            r#"println!("{}", json!({ "times": times }));"#,
        ),
        (
            "cli/variable.rs",
            "#[cfg(test)]\nmod tests { let x = json!({}); }",
        ),
        ("api/runs.rs", r#"let x = json!({ "value": 1 });"#),
    ] {
        assert!(
            cli_hand_built_json_offences(&planted(fine.0, fine.1)).is_empty(),
            "{fine:?}"
        );
    }
    // An allowance is for its own file only.
    assert_eq!(
        cli_hand_built_json_offences(&planted(
            "cli/variable.rs",
            r#"println!("{}", json!({ "times": times }));"#
        ))
        .len(),
        1
    );
    // A route added to the API by hand, bypassing the document.
    assert_eq!(
        undocumented_route_offences(&planted(
            "api/mod.rs",
            ".routes(routes!(runs::get_flow_run))\n    .route(\"/api/x\", get(x))"
        ))
        .len(),
        1
    );
    assert_eq!(
        undocumented_route_offences(&planted("api/runs.rs", "router.nest(\"/v2\", other)")).len(),
        1
    );
    assert!(
        undocumented_route_offences(&planted(
            "api/mod.rs",
            ".routes(routes!(runs::list_components, runs::upload_component))"
        ))
        .is_empty()
    );
    // The web UI is no part of the API document.
    assert!(
        undocumented_route_offences(&planted("ui/mod.rs", ".route(\"/\", get(home))")).is_empty()
    );
    // A public function with a text error, on one line or wrapped.
    assert_eq!(
        string_error_offences(&planted(
            "config.rs",
            "pub fn parse(t: &str) -> Result<u8, String> {"
        ))
        .len(),
        1
    );
    assert_eq!(
        string_error_offences(&planted(
            "model/x.rs",
            "pub fn parse(\n    t: &str,\n) -> Result<Vec<u8>, String> {"
        ))
        .len(),
        1
    );
    assert!(
        string_error_offences(&planted(
            "config.rs",
            "pub(crate) fn parse(t: &str) -> Result<u8, String> {\npub fn ok() -> Result<u8, ConfigError> {"
        ))
        .is_empty()
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
