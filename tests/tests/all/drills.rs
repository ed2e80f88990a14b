//! Drills, short versions: the server killed mid-run, flooded with triggers,
//! fed garbage on every endpoint, and its disk filled; the parsers of
//! manifests, parameters and `weir.yaml` fed random input. The full versions
//! run with `cargo run --release -p bench -- drills`; the logic is shared in
//! `weir_tests::drills`. Each prints what it checked.

use proptest::prelude::*;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use weir_tests::drills;

const HOST: &str = env!("CARGO_BIN_EXE_host-under-test");

#[test]
fn kill_9_mid_flows_loses_nothing_and_reruns_no_recorded_call() {
    drills::kill_mid_flows(Path::new(HOST), 20, 10, 5).print();
}

/// The same with calls that take no time: each is a fast task, committed as
/// its row alone, hundreds of them between the drill's looks at the disk.
#[test]
fn kill_9_mid_fast_flows_loses_nothing_and_reruns_no_recorded_call() {
    drills::kill_mid_flows(Path::new(HOST), 4, 2000, 0).print();
}

#[test]
fn concurrent_triggers_are_neither_lost_nor_doubled() {
    drills::concurrent_triggers(Path::new(HOST), 200, 8).print();
}

#[test]
fn fuzzed_requests_never_get_a_5xx_or_a_hang() {
    drills::fuzz_api(Path::new(HOST), 3, 0x5eed).print();
}

#[test]
fn a_full_disk_is_survived_and_service_returns_with_space() {
    match drills::disk_full(Path::new(HOST)) {
        Ok(report) => report.print(),
        Err(why) => println!("drill disk full: SKIPPED: {why}"),
    }
}

/// A valid manifest in the SDK's format, for mutation.
fn manifest_text() -> String {
    json!({
        "flows": [{ "name": "etl", "description": "d",
            "params_schema": { "type": "object", "properties": { "rows": { "type": "integer" } } },
            "policy": { "retries": 2, "retry_delay_ms": [10], "timeout_ms": 1000 } }],
        "tasks": [{ "name": "add", "policy": { "fuel": 1000, "memory_bytes": 65536, "cache_ttl_ms": 5, "tags": ["db"] } }]
    })
    .to_string()
}

fn mutated(text: String) -> impl Strategy<Value = String> {
    let len = text.len();
    prop::collection::vec((0..len, any::<u8>(), 0..3u8), 1..8).prop_map(move |edits| {
        let mut bytes = text.clone().into_bytes();
        for (at, byte, how) in edits {
            let at = at.min(bytes.len().saturating_sub(1));
            if bytes.is_empty() {
                break;
            }
            match how {
                0 => bytes[at] = byte,
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, byte),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The manifest a guest's describe() returns is guest-controlled: any
    /// text parses or is refused, never panics.
    #[test]
    fn manifest_parsing_never_panics(text in prop_oneof![mutated(manifest_text()), ".{0,200}"]) {
        let _ = serde_json::from_str::<weir_host::model::Manifest>(&text);
    }

    /// `--param k=v` and `--params-json` with any text, checked against a schema.
    #[test]
    fn params_never_panic(
        json_text in prop::option::of(prop_oneof![mutated(r#"{"rows": 10, "name": "x"}"#.into()), ".{0,80}"]),
        assignments in prop::collection::vec(".{0,40}", 0..4),
    ) {
        let schema = json!({ "type": "object",
            "properties": { "rows": { "type": "integer", "minimum": 0 }, "name": { "type": "string" } },
            "required": ["rows"] });
        if let Ok(params) = weir_host::protocol::build_params(json_text.as_deref(), &assignments, Some(&schema)) {
            let _ = weir_host::protocol::validate_params(&schema, &params);
        }
    }
}

/// `host deploy -f weir.yaml` with mutated files: it deploys or says what
/// is wrong (exit 0, 1 or 2), never panics (101) and never hangs.
#[test]
fn mutated_weir_yaml_is_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("fixture.wasm");
    std::fs::copy(weir_tests::FIXTURE_WASM, &wasm).unwrap();
    let valid = "deployments:\n  - name: nightly\n    component: fixture.wasm\n    flow: call\n    params:\n      task: add\n      input: {a: 1, b: 2}\n    schedules:\n      - cron: \"0 2 * * *\"\n        timezone: Europe/Berlin\n    tags: [etl]\n";
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    let outcomes = std::cell::RefCell::new(std::collections::BTreeMap::new());
    runner
        .run(&mutated(valid.to_string()), |text| {
            let file = dir.path().join("weir.yaml");
            std::fs::write(&file, &text).unwrap();
            let output = Command::new(HOST)
                .args(["deploy", "-f"])
                .arg(&file)
                .env("WEIR_HOME", dir.path().join("home"))
                .env_remove("WEIR_API_URL")
                .env_remove("WEIR_API_KEY")
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let code = output.status.code();
            *outcomes.borrow_mut().entry(code).or_insert(0) += 1;
            prop_assert!(
                matches!(code, Some(0..=2)),
                "exit {code:?} for:\n{text}\nstderr: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            Ok(())
        })
        .unwrap();
    let outcomes = outcomes.into_inner();
    println!("weir.yaml mutations: exit codes {outcomes:?}");
    let refused = outcomes
        .iter()
        .filter(|(c, _)| **c != Some(0))
        .map(|(_, n)| n)
        .sum::<i32>();
    assert!(
        refused > 0,
        "no mutation was refused: the drill tests nothing"
    );
}
