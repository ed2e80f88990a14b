//! Flow-level policies end to end: a flow's retries (replaying the tasks an
//! earlier attempt finished), its timeout per attempt, `retry_on`, and a
//! cancel while a retry waits, in the executor and through a server.

use crate::common;

use common::{TestServer, wait_for_run};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_host::model::capabilities::{Capabilities, DirGrant};
use weir_host::model::{FlowRunId, RunState};
use weir_host::store::TaskRunRow;
use weir_host::worker::{Executor, ExecutorSettings, FlowRunOutcome, FlowRunRequest};
use weir_tests::{FIXTURE_WASM, Harness, json};

/// A request that may write into `dir` (the `mark` task's side effects).
fn marking_request(
    component: &weir_host::engine::Component,
    flow: &str,
    dir: &Path,
    params: Value,
) -> FlowRunRequest {
    let mut request = FlowRunRequest::new(component.clone(), flow, params.to_string());
    request.capabilities = Arc::new(Capabilities {
        dirs: vec![DirGrant {
            path: dir.to_str().unwrap().to_string(),
            writable: true,
        }],
        ..Capabilities::default()
    });
    request
}

/// How many times `mark(dir, i)` ran for run `id` (one line per run).
fn marks(dir: &Path, id: FlowRunId, i: u32) -> usize {
    std::fs::read_to_string(dir.join(format!("{id}-{i}")))
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

fn flow_states(h: &Harness, id: FlowRunId) -> Vec<RunState> {
    h.store
        .state_history(id.0)
        .unwrap()
        .into_iter()
        .map(|(_, state, _)| state)
        .collect()
}

fn tasks(h: &Harness, id: FlowRunId) -> Vec<TaskRunRow> {
    h.store.task_runs(id).unwrap()
}

fn completed_once(tasks: &[TaskRunRow], seq: u64) -> bool {
    tasks
        .iter()
        .filter(|t| t.call_seq == seq && t.state == RunState::Completed)
        .count()
        == 1
}

#[tokio::test]
async fn a_flow_retry_replays_the_tasks_an_earlier_attempt_finished() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let dir = tempfile::tempdir().unwrap();
    let request = marking_request(
        &component,
        "flow_retry_marks",
        dir.path(),
        json!({ "dir": dir.path(), "ok_on": 3 }),
    );
    let outcome = h.executor.run_flow(request).await.unwrap();
    assert_eq!(outcome.state, RunState::Completed, "{:?}", outcome.result);
    // 0 + 1 from the marks, + 3: the attempt that completed.
    assert_eq!(json(&outcome.result.unwrap()), json!(4));
    assert_eq!(h.store.flow_run(outcome.id).unwrap().attempt, 3);
    // The side effects happened once each, in attempt 1; attempts 2 and 3
    // took their results from the records.
    assert_eq!(
        (
            marks(dir.path(), outcome.id, 0),
            marks(dir.path(), outcome.id, 1)
        ),
        (1, 1)
    );
    assert_eq!(
        outcome.summary.replayed, 4,
        "two calls replayed by each of two retries"
    );
    let tasks = tasks(&h, outcome.id);
    assert!(
        completed_once(&tasks, 0) && completed_once(&tasks, 1),
        "{tasks:?}"
    );
    assert!(tasks.iter().all(|t| t.attempts == 1), "{tasks:?}");
    use RunState::*;
    assert_eq!(
        flow_states(&h, outcome.id),
        [Running, Retrying, Running, Retrying, Running, Completed]
    );
}

#[tokio::test]
async fn a_flow_whose_retries_run_out_fails_with_its_last_attempts_reason() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let dir = tempfile::tempdir().unwrap();
    let request = marking_request(
        &component,
        "flow_retry_marks",
        dir.path(),
        json!({ "dir": dir.path(), "ok_on": 99 }),
    );
    let outcome = h.executor.run_flow(request).await.unwrap();
    assert_eq!(outcome.state, RunState::Failed);
    let message = outcome.result.unwrap_err().message;
    assert!(
        message.contains("flow attempt 3 fails on purpose"),
        "{message}"
    );
    let row = h.store.flow_run(outcome.id).unwrap();
    assert_eq!(
        (row.state, row.attempt),
        (RunState::Failed, 3),
        "1 attempt + 2 retries"
    );
    assert_eq!(
        marks(dir.path(), outcome.id, 0),
        1,
        "a failed flow still replays"
    );
    // Each retry's reason is on its Retrying state.
    let history = h.store.state_history(outcome.id.0).unwrap();
    let reasons: Vec<&str> = history
        .iter()
        .filter(|(_, state, _)| *state == RunState::Retrying)
        .map(|(_, _, message)| message.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(reasons.len(), 2, "{history:?}");
    assert!(reasons[0].contains("attempt 1 failed") && reasons[1].contains("attempt 2 failed"));
}

#[tokio::test]
async fn flow_retry_delays_follow_the_flow_policy() {
    let h = Harness::new();
    let (executor, timer, _clock) = crate::common::manual_time_executor(&h);
    let component = h.load(FIXTURE_WASM).await;
    let dir = tempfile::tempdir().unwrap();
    let request = marking_request(
        &component,
        "flow_retry_marks",
        dir.path(),
        json!({ "dir": dir.path(), "ok_on": 3 }),
    );
    let outcome = executor.run_flow(request).await.unwrap();
    assert_eq!(outcome.state, RunState::Completed);
    // retry_delay = ["10ms", "20ms"]: one delay per retry, in order.
    let ms = timer.delays_ms();
    assert_eq!(ms, [10, 20]);
}

#[tokio::test]
async fn a_flow_timed_out_mid_task_is_retried_and_replays_only_what_finished() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let dir = tempfile::tempdir().unwrap();
    // Attempt 1 waits 10 minutes in a task; the flow's deadline is 1 s.
    let request = marking_request(
        &component,
        "flow_timeout_then_ok",
        dir.path(),
        json!({ "dir": dir.path(), "ms": 600_000 }),
    );
    let outcome = h.executor.run_flow(request).await.unwrap();
    assert_eq!(outcome.state, RunState::Completed, "{:?}", outcome.result);
    // The mark's 0 + attempt 2: had the deadline not stopped attempt 1, it
    // would have completed with 1 after ten minutes.
    assert_eq!(json(&outcome.result.unwrap()), json!(2));
    assert_eq!(marks(dir.path(), outcome.id, 0), 1);
    let history = h.store.state_history(outcome.id.0).unwrap();
    let retrying = history
        .iter()
        .find(|(_, state, _)| *state == RunState::Retrying)
        .unwrap_or_else(|| panic!("{history:?}"));
    let reason = retrying.2.as_deref().unwrap_or("");
    assert!(
        reason.contains("attempt 1 failed") && reason.contains("deadline"),
        "{reason}"
    );
    // The call cut off by the deadline is recorded as ended, not left Running.
    let tasks = tasks(&h, outcome.id);
    let sleeper = tasks
        .iter()
        .find(|t| t.task_name == "sleeper")
        .unwrap_or_else(|| panic!("{tasks:?}"));
    assert_eq!(sleeper.state, RunState::Cancelled, "{sleeper:?}");
    assert!(tasks.iter().all(|t| t.state.is_terminal()), "{tasks:?}");
}

#[tokio::test]
async fn a_flow_that_times_out_every_attempt_ends_timed_out_after_its_retries() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let outcome = h
        .run(
            &component,
            "flow_always_times_out",
            json!({ "ms": 600_000 }),
        )
        .await;
    assert_eq!(outcome.state, RunState::TimedOut);
    let message = outcome.result.unwrap_err().message;
    assert!(message.contains("deadline"), "{message}");
    let row = h.store.flow_run(outcome.id).unwrap();
    assert_eq!((row.state, row.attempt), (RunState::TimedOut, 3));
}

#[tokio::test]
async fn retry_on_limits_flow_retries_to_the_kinds_it_names() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let outcome = h
        .run(&component, "flow_retries_only_timeouts", json!({}))
        .await;
    assert_eq!(outcome.state, RunState::Failed);
    let row = h.store.flow_run(outcome.id).unwrap();
    assert_eq!(
        row.attempt, 1,
        "an ordinary failure is not a timeout: no retry"
    );
    assert!(!flow_states(&h, outcome.id).contains(&RunState::Retrying));
}

#[tokio::test]
async fn a_cancel_while_a_flow_waits_to_retry_ends_it_without_another_attempt() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let request = FlowRunRequest::new(component, "flow_long_retry_wait", "{}");
    let cancel = request.cancel.clone();
    let executor = h.executor.clone();
    let running = tokio::spawn(async move { executor.run_flow(request).await.unwrap() });
    let store = h.store.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let runs = store.list_flow_runs(&Default::default()).unwrap();
        if let Some(run) = runs.iter().find(|r| r.state == RunState::Retrying) {
            break run.id;
        }
        assert!(Instant::now() < deadline, "never got to Retrying: {runs:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    cancel.cancel();
    let outcome: FlowRunOutcome = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("the hour-long retry wait was not cut short")
        .unwrap();
    assert_eq!((outcome.id, outcome.state), (id, RunState::Cancelled));
    assert_eq!(
        h.store.flow_run(id).unwrap().attempt,
        1,
        "no second attempt"
    );
}

/// Through a server: a deployment's run retries, replays, and the API and
/// the CLI show the attempts and each retry's reason.
#[test]
fn a_deployment_run_retries_through_the_server_and_shows_its_attempts() {
    let marks_dir = tempfile::tempdir().unwrap();
    let dir = marks_dir.path().to_str().unwrap().to_string();
    let allow = format!("{dir}:rw");
    let server = TestServer::start_with(&["--allow-dir", &allow], None);
    let digest = server.upload(FIXTURE_WASM);
    server.deploy(
        "retried",
        json!({
            "component": digest, "flow": "flow_retry_marks",
            "params": { "dir": dir, "ok_on": 2 },
            "capabilities": { "dirs": [{ "path": dir, "writable": true }] },
        }),
    );
    let (status, started) = server.send("POST", "/api/deployments/retried/runs", json!({}));
    assert_eq!(status, 202, "{started}");
    let id = started["flow_run_id"].as_str().unwrap().to_string();
    let run = wait_for_run(&server, &id, Duration::from_secs(60), |r| {
        r["state"] == "Completed" || r["state"] == "Failed" || r["state"] == "Crashed"
    });
    assert_eq!(run["state"], "Completed", "{run}");
    let (_, detail) = server.get(&format!("/api/flow-runs/{id}"));
    assert_eq!(detail["flow_run"]["attempt"], 2, "{detail}");
    let states: Vec<&str> = detail["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert!(states.contains(&"Retrying"), "{states:?}");
    for i in 0..2 {
        let text = std::fs::read_to_string(marks_dir.path().join(format!("{id}-{i}"))).unwrap();
        assert_eq!(text, "x\n", "mark {i} ran once across both attempts");
    }
    let inspect = server.cli(&["flow-run", "inspect", &id]);
    let stdout = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success(), "{stdout}");
    assert!(stdout.contains("attempt 1 failed"), "{stdout}");
}

// ---- cache policies beyond a TTL ----

/// Runs `cache_policies` and returns what each cached task said.
async fn cache_run(
    executor: &Arc<Executor>,
    component: &weir_host::engine::Component,
    label: &str,
) -> Value {
    let request = FlowRunRequest::new(
        component.clone(),
        "cache_policies",
        json!({ "n": 1, "label": label }).to_string(),
    );
    let outcome = executor.run_flow(request).await.unwrap();
    assert_eq!(outcome.state, RunState::Completed, "{:?}", outcome.result);
    json(&outcome.result.unwrap())
}

#[tokio::test]
async fn cache_keys_from_input_params_or_run_id_and_a_cache_that_never_expires() {
    let h = Harness::new();
    let (executor, _timer, clock) = crate::common::manual_time_executor(&h);
    let component = h.load(FIXTURE_WASM).await;

    let a = cache_run(&executor, &component, "a").await;
    // Keyed by the run: the second call, with another input, reused the first.
    assert_eq!(a["run"][0], a["run"][1], "{a}");
    let again = cache_run(&executor, &component, "a").await;
    assert_eq!(again["forever"], a["forever"], "same input: a hit");
    assert_eq!(again["params"], a["params"], "same input and params: a hit");
    assert_ne!(again["run"][0], a["run"][0], "another run: a miss");

    let other = cache_run(&executor, &component, "b").await;
    assert_eq!(other["forever"], a["forever"], "params are not in its key");
    assert_ne!(other["params"], a["params"], "other params: a miss");

    // A hundred years on, the one-hour caches have expired; "forever" has not.
    clock.advance(Duration::from_secs(100 * 365 * 24 * 3600));
    let later = cache_run(&executor, &component, "a").await;
    assert_eq!(later["forever"], a["forever"], "no expiry");
    assert_ne!(later["params"], a["params"], "expired after its hour");

    // Hits are recorded as Cached task runs of the run that reused them.
    let runs = h.store.list_flow_runs(&Default::default()).unwrap();
    let newest = runs.iter().max_by_key(|r| r.created_at).unwrap();
    let tasks = h.store.task_runs(newest.id).unwrap();
    let forever = tasks
        .iter()
        .find(|t| t.task_name == "cache_forever")
        .unwrap();
    assert_eq!(forever.state, RunState::Cached, "{tasks:?}");
}

// ---- results kept out of the database ----

/// Every file under `dir` (the database, its WAL, result files) whose bytes
/// contain `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
            {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test]
async fn persist_result_false_leaves_no_trace_of_the_value_in_the_database_or_result_files() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let needle = b"UNKEPT-7fa9c2e1";
    for bytes in [0, 200_000] {
        let params = json!({ "seed": "1e2c9af7", "bytes": bytes, "n": 0, "ms": 0 });
        let outcome = h.run(&component, "unkept_flow", params).await;
        assert_eq!(outcome.state, RunState::Completed, "{:?}", outcome.result);
        // The caller gets the value...
        let value = json(&outcome.result.unwrap());
        assert!(value.as_str().unwrap().starts_with("UNKEPT-7fa9c2e1"));
        // ...and no record has it: not the task's output, not the flow's result.
        let row = h.store.flow_run(outcome.id).unwrap();
        assert_eq!((row.state, row.result), (RunState::Completed, None));
        let tasks = h.store.task_runs(outcome.id).unwrap();
        let unkept = tasks.iter().find(|t| t.task_name == "unkept").unwrap();
        assert_eq!(
            (unkept.state, unkept.output.clone()),
            (RunState::Completed, None)
        );
        let hook = tasks.iter().find(|t| t.task_name == "note_end").unwrap();
        assert!(
            json(&hook.input)["run"]["result"].is_null(),
            "nor the hook's input"
        );
    }
    // Every byte the store wrote, once its WAL has all it will get.
    let found = files_holding(h.home.path(), needle);
    assert!(found.is_empty(), "the value is in {found:?}");
    // The check can see a value: the seed, which is a param, is there.
    assert!(!files_holding(h.home.path(), b"1e2c9af7").is_empty());
}

#[tokio::test]
async fn a_resumed_run_runs_an_unpersisted_task_again_and_replays_the_rest() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let params = json!({ "seed": "abc", "bytes": 0, "n": 6, "ms": 30 }).to_string();
    let request = FlowRunRequest::new(component.clone(), "unkept_flow", params.clone());
    let cancel = request.cancel.clone();
    let executor = h.executor.clone();
    let running = tokio::spawn(async move { executor.run_flow(request).await.unwrap() });
    let store = h.store.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let runs = store.list_flow_runs(&Default::default()).unwrap();
        if let Some(run) = runs.first() {
            let tasks = store.task_runs(run.id).unwrap();
            let slept = tasks
                .iter()
                .filter(|t| t.task_name == "sleeper" && t.state == RunState::Completed)
                .count();
            if slept >= 2 {
                break run.id;
            }
        }
        assert!(Instant::now() < deadline, "the run never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    cancel.cancel();
    assert_eq!(running.await.unwrap().state, RunState::Cancelled);

    let mut retry = FlowRunRequest::new(component, "unkept_flow", params);
    retry.existing = Some(weir_host::worker::ExistingRun {
        id,
        state: RunState::Cancelled,
        attempt: 1,
    });
    let outcome = h.executor.run_flow(retry).await.unwrap();
    assert_eq!(outcome.state, RunState::Completed);
    assert_eq!(json(&outcome.result.unwrap()), json!("UNKEPT-cba"));
    let tasks = h.store.task_runs(id).unwrap();
    let unkept = tasks.iter().filter(|t| t.task_name == "unkept").count();
    assert_eq!(
        unkept, 2,
        "nothing recorded to replay, so it ran again: {tasks:?}"
    );
    assert!(
        outcome.summary.replayed >= 2,
        "the sleepers replayed: {:?}",
        outcome.summary
    );
}

// ---- results kept in a storage the host names ----

/// A harness whose executor keeps storage "big" in a temp directory.
fn with_storage() -> (Harness, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = ExecutorSettings::default();
    settings
        .result_storages
        .insert("big".into(), dir.path().to_path_buf());
    (Harness::with_settings(settings), dir)
}

/// Runs `stored_flow` (its first attempt fails), then retries it by hand.
async fn stored_run(h: &Harness, between: impl FnOnce()) -> (FlowRunId, FlowRunOutcome) {
    let component = h.load(FIXTURE_WASM).await;
    let params = json!({ "seed": "4d3c2b1a", "bytes": 100_000 }).to_string();
    let first = h
        .executor
        .run_flow(FlowRunRequest::new(
            component.clone(),
            "stored_flow",
            params.clone(),
        ))
        .await
        .unwrap();
    assert_eq!(first.state, RunState::Failed, "{:?}", first.result);
    between();
    let mut retry = FlowRunRequest::new(component, "stored_flow", params);
    retry.existing = Some(weir_host::worker::ExistingRun {
        id: first.id,
        state: RunState::Failed,
        attempt: 1,
    });
    let outcome = h.executor.run_flow(retry).await.unwrap();
    assert_eq!(outcome.state, RunState::Completed, "{:?}", outcome.result);
    assert_eq!(
        json(outcome.result.as_deref().unwrap()),
        json!({ "len": 100_000, "stored": true })
    );
    (first.id, outcome)
}

#[tokio::test]
async fn result_storage_keeps_the_value_in_its_directory_and_a_retry_reads_it_back() {
    let (h, dir) = with_storage();
    let (id, outcome) = stored_run(&h, || {}).await;
    assert_eq!(outcome.summary.replayed, 1, "read back from its file");
    let tasks = h.store.task_runs(id).unwrap();
    assert_eq!(tasks.len(), 1, "it ran once: {tasks:?}");
    let recorded = tasks[0].output.clone().unwrap();
    assert!(
        recorded.contains("$weir_result") && recorded.len() < 200,
        "{recorded}"
    );
    let needle = b"STORED-a1b2c3d4";
    assert_eq!(
        files_holding(dir.path(), needle).len(),
        1,
        "one file in the storage"
    );
    let found = files_holding(h.home.path(), needle);
    assert!(found.is_empty(), "the value is in {found:?}");
}

#[tokio::test]
async fn a_stored_result_whose_file_is_gone_or_damaged_is_run_again() {
    for damage in ["remove", "change"] {
        let (h, dir) = with_storage();
        let (id, outcome) = stored_run(&h, || {
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                let path = entry.unwrap().path();
                match damage {
                    "remove" => std::fs::remove_file(&path).unwrap(),
                    _ => std::fs::write(&path, "\"STORED-forged\"").unwrap(),
                }
            }
        })
        .await;
        assert_eq!(outcome.summary.replayed, 0, "{damage}");
        let tasks = h.store.task_runs(id).unwrap();
        let runs = tasks.iter().filter(|t| t.task_name == "stored_big").count();
        assert_eq!(runs, 2, "{damage}: ran again: {tasks:?}");
        let logs: Vec<String> = h
            .store
            .logs(id, 0, 1000)
            .unwrap()
            .into_iter()
            .map(|l| l.message)
            .collect();
        assert!(
            logs.iter().any(|l| l.contains("runs again")),
            "{damage}: {logs:?}"
        );
    }
}

#[tokio::test]
async fn a_result_storage_the_host_does_not_name_fails_the_call_saying_how_to_set_it() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let outcome = h
        .run(
            &component,
            "stored_flow",
            json!({ "seed": "x", "bytes": 10 }),
        )
        .await;
    assert_eq!(outcome.state, RunState::Failed);
    let message = outcome.result.unwrap_err().message;
    assert!(message.contains("--result-storage big=DIR"), "{message}");
}
