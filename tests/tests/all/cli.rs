//! The `host` program as a user runs it: the README's command, the examples,
//! bad input with clear messages and exit codes, and resume after SIGKILL.

use crate::common::text;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use weir_host::model::RunState;
use weir_host::store::Store;
use weir_tests::{FIXTURE_WASM, workspace};

const HOST: &str = env!("CARGO_BIN_EXE_host-under-test");

fn host(home: &Path, args: &[&str]) -> Output {
    Command::new(HOST)
        .args(args)
        .env("WEIR_HOME", home)
        .current_dir(workspace())
        .stdin(Stdio::null())
        .output()
        .expect("running the host")
}

/// Starts `slow_sequential(n, ms)` in a host process of its own.
fn spawn_slow_run(home: &Path, n: u32, ms: u32) -> std::process::Child {
    Command::new(HOST)
        .args(["flow", "run", FIXTURE_WASM, "slow_sequential", "--quiet"])
        .args(["--param", &format!("n={n}"), "--param", &format!("ms={ms}")])
        .env("WEIR_HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the host")
}

fn json_out(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&output.stdout), text(&output.stderr)))
}

#[test]
fn the_readme_command_runs_the_etl_example_with_a_retried_task() {
    let home = tempfile::tempdir().unwrap();
    let out = host(
        home.path(),
        &["flow", "run", "examples/etl", "--param", "rows=500"],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let result: Value = serde_json::from_str(&stdout).unwrap();
    let expected: u64 = (0..500u64).map(|i| (i * 7919) % 1000 * 2).sum();
    assert_eq!(
        result,
        serde_json::json!({ "rows": 500, "chunks": 5, "total": expected })
    );
    assert!(
        stderr.contains("warehouse connection reset (simulated)); retrying in 50ms"),
        "{stderr}"
    );
    assert!(stderr.contains("✓ Completed flow 'etl'"), "{stderr}");
    assert!(
        stderr.contains("attempts 8"),
        "7 tasks, one retried once: {stderr}"
    );
}

#[test]
fn every_example_completes() {
    let home = tempfile::tempdir().unwrap();
    let hello = host(
        home.path(),
        &[
            "flow",
            "run",
            "examples/hello",
            "--param",
            "name=Weir",
            "--json",
        ],
    );
    assert!(hello.status.success(), "{}", text(&hello.stderr));
    assert_eq!(json_out(&hello)["result"], "HELLO, WEIR!");

    let sandbox = host(home.path(), &["flow", "run", "examples/sandbox", "--json"]);
    assert!(sandbox.status.success(), "{}", text(&sandbox.stderr));
    let report = &json_out(&sandbox)["result"];
    assert!(
        report["burn_fuel"]
            .as_str()
            .unwrap()
            .starts_with("out of fuel"),
        "{report}"
    );
    assert!(
        report["hog_memory"]
            .as_str()
            .unwrap()
            .starts_with("memory limit"),
        "{report}"
    );
    assert!(
        report["spin_forever"]
            .as_str()
            .unwrap()
            .starts_with("deadline exceeded"),
        "{report}"
    );
    assert!(
        report["read_passwd"]
            .as_str()
            .unwrap()
            .starts_with("failed"),
        "{report}"
    );
}

#[test]
fn bad_input_gets_a_clear_message_and_exit_code_2() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();
    let not_wasm = dir.join("notes.txt");
    std::fs::write(&not_wasm, "hello").unwrap();
    let random = dir.join("random.wasm");
    std::fs::write(
        &random,
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["flow", "run", not_wasm.to_str().unwrap()],
            "not a WebAssembly file",
        ),
        (
            vec!["flow", "run", random.to_str().unwrap()],
            "not a WebAssembly file",
        ),
        (
            vec!["flow", "run", "examples/etl", "--param", "rows=lots"],
            "invalid parameters",
        ),
        (
            vec!["flow", "run", "examples/etl", "--param", "nope=1"],
            "invalid parameters",
        ),
        (
            vec!["flow", "run", "examples/etl", "--params-json", "[1]"],
            "not a JSON object",
        ),
        (
            vec!["flow", "run", "examples/etl", "no_such_flow"],
            "no flow named 'no_such_flow'",
        ),
        (vec!["flow", "run", FIXTURE_WASM], "several flows; name one"),
        (vec!["flow", "run", "does/not/exist"], "does not exist"),
        (vec!["flow", "run", "host/src"], "is not a guest project"),
        (
            vec!["flow", "run", "examples/etl", "--limit", "db"],
            "not of the form TAG=N",
        ),
        (
            vec!["flow-run", "inspect", "ffffffff"],
            "no flow run with id",
        ),
    ];
    for (args, words) in cases {
        let out = host(dir, &args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(words),
            "{args:?} should say '{words}': {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_task_that_loops_fails_the_run_with_exit_code_1() {
    let home = tempfile::tempdir().unwrap();
    let out = host(
        home.path(),
        &[
            "flow",
            "run",
            FIXTURE_WASM,
            "call",
            "--param",
            "task=spin",
            "--params-json",
            r#"{"input": {}}"#,
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("✗ Failed flow 'call'") && stderr.contains("deadline"),
        "{stderr}"
    );
}

#[test]
fn recorded_runs_can_be_listed_inspected_and_read() {
    let home = tempfile::tempdir().unwrap();
    let run = json_out(&host(
        home.path(),
        &[
            "flow",
            "run",
            "examples/etl",
            "--json",
            "--param",
            "rows=50",
        ],
    ));
    let id = run["flow_run_id"].as_str().unwrap();
    assert_eq!(run["state"], "Completed");
    assert_eq!(run["summary"]["attempts"], 4);

    let list = json_out(&host(home.path(), &["flow-run", "ls", "--json"]));
    assert_eq!(list[0]["id"], id);
    let inspect = json_out(&host(
        home.path(),
        &["flow-run", "inspect", &id[..8], "--json"],
    ));
    let tasks = inspect["task_runs"].as_array().unwrap();
    let load = tasks.iter().find(|t| t["task_name"] == "load").unwrap();
    assert_eq!(
        (load["state"].as_str(), load["attempts"].as_u64()),
        (Some("Completed"), Some(2))
    );
    let human = text(&host(home.path(), &["flow-run", "inspect", id]).stdout);
    assert!(
        human.contains("task runs (3)") && human.contains("ATTEMPTS"),
        "{human}"
    );
    let logs = text(&host(home.path(), &["flow-run", "logs", id]).stdout);
    assert!(
        logs.contains("extracting 50 rows") && logs.contains("[load]"),
        "{logs}"
    );
    let version = text(&host(home.path(), &["version"]).stdout);
    assert!(version.starts_with("host 0.1.0"), "{version}");
}

/// Kills the process running a 200-task flow with SIGKILL, resumes the run and
/// checks that each call completed exactly once: the ones finished before the
/// kill are replayed from the record, not run again.
#[test]
fn a_run_killed_with_sigkill_resumes_without_redoing_completed_tasks() {
    let home = tempfile::tempdir().unwrap();
    let mut child = spawn_slow_run(home.path(), 200, 5);

    let store = Store::open(&home.path().join("weir.db")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        assert!(Instant::now() < deadline, "the run never got going");
        let runs = store
            .list_flow_runs(&Default::default())
            .unwrap_or_default();
        if let Some(run) = runs.first() {
            let done = store
                .task_runs(run.id)
                .unwrap()
                .iter()
                .filter(|t| t.state == RunState::Completed)
                .count();
            if done >= 40 {
                break run.id;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before: Vec<_> = store.task_runs(id).unwrap();
    let completed_before = before
        .iter()
        .filter(|t| t.state == RunState::Completed)
        .count();
    assert!(
        completed_before < 200,
        "killed mid-way ({completed_before} done)"
    );
    assert_eq!(
        store.flow_run(id).unwrap().state,
        RunState::Running,
        "the dead run is still marked Running"
    );

    let out = host(
        home.path(),
        &["flow-run", "resume", &id.to_string(), "--json", "--quiet"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let outcome = json_out(&out);
    assert_eq!(outcome["state"], "Completed");
    assert_eq!(outcome["result"], 1000);
    assert_eq!(
        outcome["summary"]["replayed"].as_u64(),
        Some(completed_before as u64)
    );

    let after = store.task_runs(id).unwrap();
    for seq in 0..200u64 {
        let completed: Vec<_> = after
            .iter()
            .filter(|t| t.call_seq == seq && t.state == RunState::Completed)
            .collect();
        assert_eq!(
            completed.len(),
            1,
            "call #{seq} completed {} times",
            completed.len()
        );
        let attempts = store.task_attempts(completed[0].id).unwrap();
        assert_eq!(attempts.len(), 1, "call #{seq} ran once");
    }
    let history: Vec<RunState> = store
        .state_history(id.0)
        .unwrap()
        .into_iter()
        .map(|h| h.1)
        .collect();
    assert_eq!(
        history,
        [
            RunState::Running,
            RunState::Crashed,
            RunState::Pending,
            RunState::Running,
            RunState::Completed
        ]
    );
}

/// Kills a fan-out mid-way with SIGKILL, where submitted calls commit
/// their outcomes in shared, queued commits, then resumes it: every call
/// recorded before the kill is replayed, none completes twice, and the
/// flow's sum is whole.
#[test]
fn a_fan_out_killed_with_sigkill_resumes_without_redoing_recorded_calls() {
    let home = tempfile::tempdir().unwrap();
    let (n, ms) = (600u64, 40u64);
    let mut child = Command::new(HOST)
        .args(["flow", "run", FIXTURE_WASM, "db_fan_out", "--quiet"])
        .args(["--param", &format!("n={n}"), "--param", &format!("ms={ms}")])
        .env("WEIR_HOME", home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the host");
    let store = Store::open(&home.path().join("weir.db")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        assert!(Instant::now() < deadline, "the run never got going");
        let runs = store
            .list_flow_runs(&Default::default())
            .unwrap_or_default();
        if let Some(run) = runs.first() {
            let done = store
                .task_runs(run.id)
                .unwrap()
                .iter()
                .filter(|t| t.state == RunState::Completed)
                .count();
            if done >= 64 {
                break run.id;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let completed_before: Vec<u64> = store
        .task_runs(id)
        .unwrap()
        .iter()
        .filter(|t| t.state == RunState::Completed)
        .map(|t| t.call_seq)
        .collect();
    assert!(
        (completed_before.len() as u64) < n,
        "killed mid-way ({} done)",
        completed_before.len()
    );

    let out = host(
        home.path(),
        &["flow-run", "resume", &id.to_string(), "--json", "--quiet"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let outcome = json_out(&out);
    assert_eq!(outcome["state"], "Completed", "{outcome}");
    assert_eq!(outcome["result"], n * ms);
    assert_eq!(
        outcome["summary"]["replayed"].as_u64(),
        Some(completed_before.len() as u64)
    );
    let after = store.task_runs(id).unwrap();
    for seq in 0..n {
        let completed: Vec<_> = after
            .iter()
            .filter(|t| t.call_seq == seq && t.state == RunState::Completed)
            .collect();
        assert_eq!(
            completed.len(),
            1,
            "call #{seq} completed {} times",
            completed.len()
        );
        if completed_before.contains(&seq) {
            let attempts = store.task_attempts(completed[0].id).unwrap();
            assert_eq!(attempts.len(), 1, "call #{seq} ran again after its record");
        }
    }
}

#[test]
fn cancel_from_another_process_stops_a_running_flow() {
    let home = tempfile::tempdir().unwrap();
    let mut child = spawn_slow_run(home.path(), 1000, 20);
    let store = Store::open(&home.path().join("weir.db")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        assert!(Instant::now() < deadline, "the run never started");
        if let Some(run) = store
            .list_flow_runs(&Default::default())
            .unwrap_or_default()
            .first()
        {
            break run.id;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = host(
        home.path(),
        &["flow-run", "cancel", &id.to_string(), "--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(json_out(&out)["state"], "Cancelled");
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "the runner exits as a run that did not complete"
    );
    assert_eq!(store.flow_run(id).unwrap().state, RunState::Cancelled);
}

#[test]
fn store_durability_is_a_setting_and_a_bad_value_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(HOST)
        .args(["flow-run", "ls"])
        .env("WEIR_HOME", home.path())
        .env("WEIR_DURABILITY", "sometimes")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("store.durability 'sometimes' is not `normal` or `full`"),
        "{}",
        text(&out.stderr)
    );
    let out = host(home.path(), &["config", "set", "store.durability", "full"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = host(
        home.path(),
        &[
            "flow",
            "run",
            FIXTURE_WASM,
            "sequential",
            "--param",
            "n=2",
            "--quiet",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn schedule_preview_prints_dst_correct_times_and_names_a_bad_field() {
    let home = tempfile::tempdir().unwrap();
    let out = host(
        home.path(),
        &[
            "schedule",
            "preview",
            "--cron",
            "30 2 * * *",
            "--timezone",
            "America/New_York",
            "--from",
            "2026-03-07T00:00:00-05:00",
            "-n",
            "3",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "2026-03-07T02:30:00-05:00\n2026-03-08T03:00:00-04:00\n2026-03-09T02:30:00-04:00\n"
    );
    let out = host(
        home.path(),
        &[
            "schedule",
            "preview",
            "--interval",
            "90m",
            "--anchor",
            "2026-01-01T03:00:00+01:00",
            "--from",
            "2026-01-01T00:10:00Z",
            "-n",
            "2",
            "--json",
        ],
    );
    assert_eq!(
        json_out(&out),
        serde_json::json!({"times": ["2026-01-01T00:30:00+00:00", "2026-01-01T02:00:00+00:00"]})
    );
    let out = host(
        home.path(),
        &[
            "schedule",
            "preview",
            "--rrule",
            "FREQ=WEEKLY;BYDAY=MO,WE;COUNT=3",
            "--anchor",
            "2026-03-23T09:00:00+01:00",
            "--tz",
            "Europe/Berlin",
            "--from",
            "2026-01-01T00:00:00Z",
        ],
    );
    assert_eq!(
        text(&out.stdout),
        "2026-03-23T09:00:00+01:00\n2026-03-25T09:00:00+01:00\n2026-03-30T09:00:00+02:00\n",
        "{}",
        text(&out.stderr)
    );
    for (args, words) in [
        (
            vec![
                "--rrule",
                "FREQ=WEEKLY;BYDAY=XX",
                "--anchor",
                "2026-01-01T00:00:00Z",
            ],
            "not a valid weekday",
        ),
        (vec!["--cron", "0 2 * 13 *"], "month field '13'"),
        (vec!["--cron", "0 2 * *"], "has 4 fields; expected 5"),
        (vec!["--cron", "0 0 30 2 *"], "never fires"),
        (
            vec!["--cron", "0 2 * * *", "--tz", "Europe/Berln"],
            "unknown time zone 'Europe/Berln'",
        ),
        (vec!["--interval", "soon"], "--interval 'soon'"),
        (vec!["--cron", "@daily", "--from", "tomorrow"], "--from"),
        (vec!["--cron", "@daily", "-n", "100000"], "1 to 1000"),
    ] {
        let out = host(
            home.path(),
            &[&["schedule", "preview"][..], &args[..]].concat(),
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(words),
            "{args:?} should say '{words}': {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn the_example_deploys_a_time_zone_cron_and_inspect_shows_its_next_times() {
    let home = tempfile::tempdir().unwrap();
    let out = host(home.path(), &["deploy", "-f", "examples/etl/weir.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = host(
        home.path(),
        &["deployment", "inspect", "etl-berlin-morning", "--json"],
    );
    let reply = json_out(&out);
    let schedule = &reply["deployment"]["schedules"][0];
    assert_eq!(schedule["timezone"], "Europe/Berlin");
    let next: Vec<&str> = schedule["next"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(next.len(), 5, "{next:?}");
    for time in &next {
        // 06:30 on a weekday in Berlin, in winter (+01:00) or summer (+02:00).
        assert!(
            time.ends_with("T06:30:00+01:00") || time.ends_with("T06:30:00+02:00"),
            "{next:?}"
        );
    }
    let out = host(
        home.path(),
        &["deployment", "inspect", "etl-berlin-morning"],
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("cron '30 6 * * mon-fri' in Europe/Berlin"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("next: {}", next.join(", "))),
        "{stdout}"
    );
}

/// A server of another version: answers every request with `body` (200,
/// JSON), whatever was asked. Listens on 127.0.0.1:0; returns its URL.
fn server_answering(body: &'static str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            // The request's head; these commands send no body.
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// A server whose replies renamed a field (`name` → `title`, `value` →
/// `val`): every command that reads it fails and says so, instead of
/// printing a blank column or `null` and exiting 0.
#[test]
fn a_reply_with_a_renamed_field_fails_instead_of_printing_blank() {
    let home = tempfile::tempdir().unwrap();
    let deployments = server_answering(
        r#"{"deployments": [{"deployment": {"title": "etl", "component": "ab", "flow": "etl"}, "created_at": 1, "updated_at": 1}]}"#,
    );
    let variable = server_answering(r#"{"name": "rows", "val": 5}"#);
    for (url, args, path) in [
        (&deployments, &["deployment", "ls"][..], "/api/deployments"),
        (
            &deployments,
            &["deployment", "ls", "--json"][..],
            "/api/deployments",
        ),
        (
            &variable,
            &["variable", "get", "rows"][..],
            "/api/variables/rows",
        ),
    ] {
        let out = Command::new(HOST)
            .args(args)
            .env("WEIR_HOME", home.path())
            .env("WEIR_API_URL", url)
            .stdin(Stdio::null())
            .output()
            .expect("running the host");
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} printed: {}",
            text(&out.stdout)
        );
        assert!(
            stderr.contains(&format!("reading the server's reply to {path}"))
                && stderr.contains("another version"),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
    }
}
