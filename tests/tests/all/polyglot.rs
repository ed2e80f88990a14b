//! Python, JavaScript, C and C++ guests, through the `host` program: the ETL twins
//! give the Rust example's result, a second run neither rebuilds nor
//! recompiles, a task that raises or throws is a clean failure, and the
//! committed Python bindings match what componentize-py generates from the WIT.
//!
//! The Python and JavaScript tests need python3, node and npm and reach PyPI
//! and npm on first use, so they run only with WEIR_POLYGLOT_TESTS=1 (CI sets
//! it). The toolchains are installed once into the cargo target dir and
//! shared by every test. The C and C++ tests need Debian's clang for
//! wasm32-wasi (`c_toolchain_or_skip`, and libc++ for C++:
//! `cpp_toolchain_or_skip`), nothing from the network.

use crate::common::text;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use weir_tests::{ETL_WASM, c_toolchain_or_skip, cpp_toolchain_or_skip, workspace};

const HOST: &str = env!("CARGO_BIN_EXE_host-under-test");

fn enabled(test: &str) -> bool {
    let on = std::env::var("WEIR_POLYGLOT_TESTS").is_ok_and(|v| v == "1");
    if !on {
        // Straight to the terminal, past the test harness's capture: a skip
        // must be seen, never pass for a run.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr().lock(),
            "SKIPPED {test}: set WEIR_POLYGLOT_TESTS=1 to build and run Python and JavaScript guests"
        );
    }
    on
}

/// Shared by all tests (and runs) so componentize-py and jco install once.
fn toolchains() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("weir-toolchains")
}

fn host(home: &Path, args: &[&str]) -> Output {
    Command::new(HOST)
        .args(args)
        .env("WEIR_HOME", home)
        .env("WEIR_TOOLCHAINS", toolchains())
        .current_dir(workspace())
        .stdin(Stdio::null())
        .output()
        .expect("running the host")
}

fn json_out(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&output.stdout), text(&output.stderr)))
}

fn run_json(home: &Path, path: &str, flow: Option<&str>, params: &[&str]) -> (Output, Value) {
    let mut args = vec!["flow", "run", path];
    args.extend(flow);
    for param in params {
        args.extend(["--param", param]);
    }
    args.push("--json");
    let out = host(home, &args);
    let json = json_out(&out);
    (out, json)
}

/// Builds twice, then runs the ETL with 100 and 500 rows and compares with Rust.
fn runs_like_the_rust_etl(example: &str, language: &str) {
    let home = tempfile::tempdir().unwrap();
    let first = host(home.path(), &["build", example, "--json"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let first = json_out(&first);
    assert_eq!(first["language"], language);
    assert_eq!(first["load"], "compiled", "{first}");

    let second = host(home.path(), &["build", example, "--json"]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    let second = json_out(&second);
    assert_eq!(
        second["reused_build"], true,
        "the build was not reused: {second}"
    );
    assert_eq!(
        second["load"], "cached",
        "the component was compiled again: {second}"
    );
    assert_eq!(second["digest"], first["digest"]);
    eprintln!(
        "{example}: {} bytes, first load (compile) {} ms, second build (cache hit) {} ms, second load (cached) {} ms",
        first["size_bytes"], first["load_ms"], second["build_ms"], second["load_ms"]
    );

    for rows in ["rows=100", "rows=500"] {
        let (out, run) = run_json(home.path(), example, None, &[rows]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let (_, rust) = run_json(home.path(), ETL_WASM, None, &[rows]);
        assert_eq!(run["state"], "Completed", "{run}");
        assert_eq!(run["result"], rust["result"], "{example} {rows}");
        assert_eq!(
            run["summary"]["attempts"], rust["summary"]["attempts"],
            "the same tasks and the same one retry of load: {run}"
        );
        // The total in the log was written by a package from the registry
        // (humanize from PyPI, or one from npm), bundled and run in the sandbox.
        let total = rust["result"]["total"].as_u64().unwrap();
        let id = run["flow_run_id"].as_str().unwrap();
        let logs = host(home.path(), &["flow-run", "logs", id]);
        let logs = text(&logs.stdout);
        let expected = format!("loaded: total {}", with_thousands_separators(total));
        assert!(logs.contains(&expected), "{expected:?} not in:\n{logs}");
    }
}

fn with_thousands_separators(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[test]
fn the_python_etl_gives_the_rust_result_and_is_not_rebuilt_or_recompiled() {
    if enabled("the_python_etl_gives_the_rust_result") {
        runs_like_the_rust_etl("examples/etl-python", "python");
    }
}

#[test]
fn the_js_etl_gives_the_rust_result_and_is_not_rebuilt_or_recompiled() {
    if enabled("the_js_etl_gives_the_rust_result") {
        runs_like_the_rust_etl("examples/etl-js", "javascript");
    }
}

#[test]
fn the_c_etl_gives_the_rust_result_and_is_not_rebuilt_or_recompiled() {
    if c_toolchain_or_skip("the_c_etl_gives_the_rust_result") {
        runs_like_the_rust_etl("examples/etl-c", "c");
    }
}

#[test]
fn the_cpp_etl_gives_the_rust_result_and_is_not_rebuilt_or_recompiled() {
    if cpp_toolchain_or_skip("the_cpp_etl_gives_the_rust_result") {
        runs_like_the_rust_etl("examples/etl-cpp", "cpp");
    }
}

/// C++ without exceptions, where the standard library would throw: an
/// allocation past the task's memory limit is a memory-limit failure (not a
/// null pointer the task writes through and goes on with), `.at()` out of
/// range is a trap, and a table a static constructor built is there at the
/// first call. The flow survives them all.
#[test]
fn a_cpp_task_that_runs_out_of_memory_or_range_is_a_clean_failure() {
    if !cpp_toolchain_or_skip("a_cpp_task_that_runs_out_of_memory_or_range_is_a_clean_failure") {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let (out, run) = run_json(
        home.path(),
        "tests/fixtures/cpp-failing",
        Some("survive"),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(run["state"], "Completed", "{run}");
    let result = &run["result"];
    assert_eq!(result["greedy"]["kind"], "memory-limit", "{run}");
    assert!(
        result["greedy"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("exceeded its memory limit of 32.0 MiB"),
        "{run}"
    );
    assert_eq!(result["past_the_end"]["kind"], "trap", "{run}");
    assert_eq!(result["in_range"], 3, "{run}");
    assert_eq!(
        result["ranked"],
        serde_json::json!(["alpha", "gamma", "beta"]),
        "{run}"
    );
    // Its manifest names C++, a C project's C.
    for (fixture, language) in [
        ("tests/fixtures/cpp-failing", "cpp"),
        ("tests/fixtures/c-failing", "c"),
    ] {
        let out = host(home.path(), &["flow", "inspect", fixture, "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(json_out(&out)["manifest"]["sdk"]["language"], language);
    }
}

#[test]
fn a_python_task_that_raises_is_a_clean_failure() {
    if !enabled("a_python_task_that_raises_is_a_clean_failure") {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let fixture = "tests/fixtures/python-failing";
    let (out, run) = run_json(home.path(), fixture, Some("survive"), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let caught = &run["result"]["caught"];
    assert_eq!(caught["kind"], "failed", "{run}");
    let message = caught["message"].as_str().unwrap();
    assert!(
        message.starts_with("ValueError: boom 1\nTraceback"),
        "{message}"
    );
    assert!(message.contains("in boom"), "{message}");
    assert_eq!(
        run["result"]["after"], 2,
        "the flow went on after the failure"
    );

    let (out, run) = run_json(home.path(), fixture, Some("crash"), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(run["state"], "Failed", "{run}");
    assert_eq!(run["error"]["kind"], "failed", "not a trap: {run}");
    let message = run["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("TaskError: failed: ValueError: boom 2"),
        "{message}"
    );
}

#[test]
fn a_js_task_that_throws_anything_is_a_clean_failure() {
    if !enabled("a_js_task_that_throws_anything_is_a_clean_failure") {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let fixture = "tests/fixtures/js-failing";
    let (out, run) = run_json(home.path(), fixture, Some("survive"), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let result = &run["result"];
    assert_eq!(result["error"]["kind"], "failed", "{run}");
    let message = result["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("RangeError: boom 1"), "{message}");
    assert_eq!(result["bare"]["kind"], "failed", "{run}");
    assert_eq!(result["bare"]["message"], "thrown: not an Error");
    assert_eq!(result["after"], 2, "the flow went on after the failures");

    let (out, run) = run_json(home.path(), fixture, Some("crash"), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(run["state"], "Failed", "{run}");
    assert_eq!(run["error"]["kind"], "failed", "not a trap: {run}");
    let message = run["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("TaskError: failed: RangeError: boom 2"),
        "{message}"
    );
}

/// Every way a C task can fail is a typed failure the flow can read (its
/// message, a trap from abort(), output that is not JSON, a NULL with no
/// reason, invalid input, an unknown task), and a flow that returns NULL
/// after a failed call fails with that call's error, not a trap.
#[test]
fn a_c_task_that_fails_any_way_is_a_clean_failure() {
    if !c_toolchain_or_skip("a_c_task_that_fails_any_way_is_a_clean_failure") {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let fixture = "tests/fixtures/c-failing";
    let (out, run) = run_json(home.path(), fixture, Some("survive"), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let result = &run["result"];
    let kind_and_message = |key: &str| {
        (
            result[key]["kind"].as_str().unwrap_or_default().to_string(),
            result[key]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    assert_eq!(
        kind_and_message("failed"),
        ("failed".into(), "boom 1".into())
    );
    assert_eq!(kind_and_message("trapped").0, "trap", "{run}");
    assert_eq!(kind_and_message("invalid").0, "invalid-output", "{run}");
    assert_eq!(
        kind_and_message("silent"),
        (
            "failed".into(),
            "task silent returned NULL without weir_fail()".into()
        )
    );
    assert_eq!(
        kind_and_message("picky"),
        ("invalid-input".into(), "n is required".into())
    );
    let (kind, message) = kind_and_message("missing");
    assert_eq!(kind, "invalid-input");
    assert!(
        message.contains("no task named 'no_such_task'"),
        "{message}"
    );
    assert_eq!(result["after"], 2, "the flow went on after the failures");

    let (out, run) = run_json(home.path(), fixture, Some("crash"), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(run["state"], "Failed", "{run}");
    assert_eq!(run["error"]["kind"], "failed", "not a trap: {run}");
    assert_eq!(run["error"]["message"], "failed: boom 2");
}

/// Contract 0.1.1 from Python or JavaScript, without a server: the flow reads a
/// variable, leaves an artifact and pauses; the variable changes; a resume
/// with input the schema refuses exits 2 and one that matches completes the
/// run, which saw the old value first, the new one after, and left its
/// artifact once.
fn reads_variables_pauses_and_leaves_artifacts(fixture: &str, key: &str) {
    let home = tempfile::tempdir().unwrap();
    assert!(
        host(home.path(), &["variable", "set", "level", "4"])
            .status
            .success()
    );
    let (out, run) = run_json(home.path(), fixture, Some("gate"), &["name=level"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(run["state"], "Paused", "{run}");
    let id = run["flow_run_id"].as_str().unwrap().to_string();
    assert!(
        host(home.path(), &["variable", "set", "level", "5"])
            .status
            .success()
    );

    let refused = host(
        home.path(),
        &["flow-run", "resume", &id, "--input", r#"{"ok": 1}"#],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    let done = host(
        home.path(),
        &[
            "flow-run",
            "resume",
            &id,
            "--input",
            r#"{"ok": true}"#,
            "--json",
        ],
    );
    assert!(done.status.success(), "{}", text(&done.stderr));
    let run = json_out(&done);
    assert_eq!(run["state"], "Completed", "{run}");
    let result = &run["result"];
    assert_eq!(
        (&result["seen"], &result["twice"], &result["after"]),
        (
            &serde_json::json!(4),
            &serde_json::json!(8),
            &serde_json::json!(5)
        ),
        "{run}"
    );
    assert_eq!(result["answer"], serde_json::json!({"ok": true}));
    let listed = host(home.path(), &["artifact", "ls", "--key", key, "--json"]);
    let artifacts = json_out(&listed);
    assert_eq!(artifacts.as_array().unwrap().len(), 1, "{artifacts}");
    assert_eq!(artifacts[0]["id"], result["artifact"]);
    assert_eq!(
        artifacts[0]["data"],
        serde_json::json!([{"seen": 4, "twice": 8}])
    );
}

#[test]
fn a_js_flow_reads_variables_pauses_and_leaves_artifacts() {
    if enabled("a_js_flow_reads_variables_pauses_and_leaves_artifacts") {
        reads_variables_pauses_and_leaves_artifacts("tests/fixtures/js-contract", "js-report");
    }
}

#[test]
fn a_python_flow_reads_variables_pauses_and_leaves_artifacts() {
    if enabled("a_python_flow_reads_variables_pauses_and_leaves_artifacts") {
        reads_variables_pauses_and_leaves_artifacts("tests/fixtures/python-contract", "py-report");
    }
}

/// Contract 0.1.2 from Python or JavaScript, without a server: a flow takes
/// a slot of a limit made in its home and gives it back; a name with no
/// limit is an error the flow can catch, naming what to do.
fn takes_slots_of_limits(fixture: &str) {
    let home = tempfile::tempdir().unwrap();
    let made = host(home.path(), &["concurrency-limit", "create", "db", "1"]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let (out, run) = run_json(home.path(), fixture, Some("limited"), &["name=db"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(run["state"], "Completed", "{run}");
    assert_eq!(run["result"]["inside"], "held", "{run}");
    let refused = run["result"]["refused"].as_str().unwrap_or_default();
    assert!(
        refused.contains("no concurrency limit named 'nope'"),
        "{run}"
    );
    let inspected = json_out(&host(
        home.path(),
        &["concurrency-limit", "inspect", "db", "--json"],
    ));
    assert_eq!(inspected["in_use"], 0, "{inspected}");
}

#[test]
fn a_js_flow_takes_slots_of_limits() {
    if enabled("a_js_flow_takes_slots_of_limits") {
        takes_slots_of_limits("tests/fixtures/js-contract");
    }
}

#[test]
fn a_python_flow_takes_slots_of_limits() {
    if enabled("a_python_flow_takes_slots_of_limits") {
        takes_slots_of_limits("tests/fixtures/python-contract");
    }
}

/// Files under `dir` (relative path → bytes), caches left out.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("__pycache__") {
                    stack.push(path);
                }
            } else {
                let bytes = std::fs::read(&path).unwrap();
                files.push((path.strip_prefix(dir).unwrap().to_path_buf(), bytes));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn the_committed_python_bindings_match_the_wit_and_the_sdk_tests_pass() {
    if !enabled("the_committed_python_bindings_match_the_wit") {
        return;
    }
    // Any Python build installs componentize-py into the shared toolchain dir.
    let home = tempfile::tempdir().unwrap();
    let built = host(
        home.path(),
        &["build", "tests/fixtures/python-failing", "--json"],
    );
    assert!(built.status.success(), "{}", text(&built.stderr));
    let python = std::fs::read_dir(toolchains())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("componentize-py-")
        })
        .expect("componentize-py installed")
        .join("bin/python3");

    // componentize-py generates the bindings itself at build time; the
    // committed copy (for editors and the SDK's unit tests) must not drift.
    let fresh = tempfile::tempdir().unwrap();
    let out = Command::new(&python)
        .args([
            "-c",
            "import sys; from componentize_py import script; sys.argv[0] = 'componentize-py'; sys.exit(script())",
            "--wit-path",
            "wit",
            "--world",
            "flow",
            "bindings",
        ])
        .arg(fresh.path())
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let committed = workspace().join("guest-sdk/python/bindings");
    let (fresh, committed) = (tree(fresh.path()), tree(&committed));
    let names =
        |files: &[(PathBuf, Vec<u8>)]| files.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&committed), names(&fresh), "files differ");
    for ((path, want), (_, have)) in fresh.iter().zip(&committed) {
        assert!(
            want == have,
            "guest-sdk/python/bindings/{} is out of date with wit/flow.wit; regenerate it with: componentize-py -d wit -w flow bindings guest-sdk/python/bindings",
            path.display()
        );
    }

    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "guest-sdk/python/tests"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// State hooks from the Python SDK: `@flow(on_failure=[...])` runs each hook
/// as a recorded task after the run ends; one that raises is logged and the
/// run stays Failed.
#[test]
fn python_state_hooks_run_as_recorded_tasks_and_never_change_the_state() {
    if !enabled("python_state_hooks_run_as_recorded_tasks") {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let fixture = "tests/fixtures/python-hooks";
    let hooks_of = |id: &str| -> Vec<(String, String, Value)> {
        let out = host(home.path(), &["flow-run", "inspect", id, "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        json_out(&out)["task_runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let output = t["output"]
                    .as_str()
                    .map(|o| serde_json::from_str(o).unwrap());
                (
                    t["task_name"].as_str().unwrap().to_string(),
                    t["state"].as_str().unwrap().to_string(),
                    output.unwrap_or(Value::Null),
                )
            })
            .collect()
    };

    let (out, run) = run_json(home.path(), fixture, Some("fails"), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(run["state"], "Failed", "{run}");
    let id = run["flow_run_id"].as_str().unwrap();
    let hooks = hooks_of(id);
    assert_eq!(hooks.len(), 2, "{hooks:?}");
    assert_eq!(
        (hooks[0].0.as_str(), hooks[0].1.as_str()),
        ("hook_raises", "Failed")
    );
    assert_eq!(
        (hooks[1].0.as_str(), hooks[1].1.as_str()),
        ("note_end", "Completed")
    );
    let note = hooks[1].2.as_str().unwrap();
    assert!(
        note.starts_with("Failed:") && note.contains("hooked python flow fails"),
        "{note}"
    );
    let logs = text(&host(home.path(), &["flow-run", "logs", id]).stdout);
    assert!(
        logs.contains("on_failure hook 'hook_raises' failed"),
        "{logs}"
    );

    let (out, run) = run_json(home.path(), fixture, Some("completes"), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hooks = hooks_of(run["flow_run_id"].as_str().unwrap());
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0].2, Value::String("Completed:".into()));
}

/// The C SDK takes and gives back slots of a limit, as the Rust SDK does: a
/// second take of the only slot times out, a release frees it at once, a
/// name with no limit is refused (and takes nothing of the others), and
/// nothing stays held after the run. It also leaves a keyed artifact.
#[test]
fn a_c_flow_takes_and_gives_back_slots_and_leaves_an_artifact() {
    if !c_toolchain_or_skip("a_c_flow_takes_and_gives_back_slots_and_leaves_an_artifact") {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let made = host(home.path(), &["concurrency-limit", "create", "db", "1"]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let (out, run) = run_json(home.path(), "tests/fixtures/c-limits", Some("limits"), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let held = &run["result"]["held"];
    assert_eq!(held["n"], 1, "{run}");
    assert_eq!(held["doubled"], false, "the only slot, taken twice: {run}");
    let refused = held["refused"]["message"].as_str().unwrap_or_default();
    assert!(refused.contains("db"), "{run}");
    assert_eq!(held["retaken"], true, "released, so free again: {run}");
    let missing = &run["result"]["missing"];
    assert!(
        missing["message"]
            .as_str()
            .is_some_and(|m| m.contains("no-such-limit")),
        "{run}"
    );
    let inspected = host(
        home.path(),
        &["concurrency-limit", "inspect", "db", "--json"],
    );
    assert!(inspected.status.success(), "{}", text(&inspected.stderr));
    assert_eq!(
        json_out(&inspected)["in_use"],
        0,
        "nothing held after the run"
    );

    let listed = host(home.path(), &["artifact", "ls", "--json"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let listed = text(&listed.stdout);
    assert!(
        listed.contains("limits-report")
            && listed.contains(run["result"]["artifact"].as_str().unwrap()),
        "{listed}"
    );
}
