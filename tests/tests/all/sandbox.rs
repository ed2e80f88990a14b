//! The sandbox: every way a guest can misbehave becomes a typed, recorded
//! failure, and the host goes on serving.

use serde_json::json;
use std::time::Duration;
use weir_host::engine::{EngineError, LoadKind};
use weir_host::model::{FailureKind, Policy, RunState};
use weir_host::store::{FlowRunFilter, TaskRunRow};
use weir_host::worker::{ExecutorSettings, FlowRunRequest};
use weir_tests::{FIXTURE_WASM, Harness, json};

/// Runs `call(task, input)` and returns the outcome and the one task run it made.
async fn call(
    h: &Harness,
    task: &str,
    input: serde_json::Value,
) -> (weir_host::worker::FlowRunOutcome, TaskRunRow) {
    let component = h.load(FIXTURE_WASM).await;
    let outcome = h
        .run(&component, "call", json!({ "task": task, "input": input }))
        .await;
    let tasks = h.store.task_runs(outcome.id).unwrap();
    assert_eq!(tasks.len(), 1, "one task run for {task}: {tasks:?}");
    (outcome, tasks.into_iter().next().unwrap())
}

#[tokio::test]
async fn a_task_that_loops_is_stopped_at_its_deadline() {
    let h = Harness::new();
    let (outcome, task) = call(&h, "spin", json!({})).await;
    assert_eq!(task.state, RunState::TimedOut);
    assert_eq!(task.failure_kind, Some(FailureKind::Timeout));
    assert!(
        task.message
            .as_deref()
            .unwrap()
            .contains("deadline of 500ms exceeded"),
        "{task:?}"
    );
    // The flow saw the error and failed with it.
    assert_eq!(outcome.state, RunState::Failed);
    assert!(
        outcome
            .result
            .unwrap_err()
            .message
            .contains("deadline exceeded")
    );
}

#[tokio::test]
async fn a_task_that_burns_fuel_is_stopped_by_its_budget() {
    let h = Harness::new();
    let (_, task) = call(&h, "burn", json!({ "n": 1_000_000_000u64 })).await;
    assert_eq!(task.failure_kind, Some(FailureKind::OutOfFuel));
    assert_eq!(task.state, RunState::Failed);
    assert!(
        task.fuel_used >= 1_000_000,
        "fuel used {} is the whole budget",
        task.fuel_used
    );
    // The same task with little work completes within the budget.
    let (outcome, task) = call(&h, "burn", json!({ "n": 1000 })).await;
    assert_eq!(
        (outcome.state, task.state),
        (RunState::Completed, RunState::Completed)
    );
}

#[tokio::test]
async fn a_task_that_allocates_without_end_hits_its_memory_limit() {
    let h = Harness::new();
    let (_, task) = call(&h, "alloc_bomb", json!({})).await;
    assert_eq!(task.failure_kind, Some(FailureKind::Memory), "{task:?}");
    assert!(
        task.message
            .as_deref()
            .unwrap()
            .contains("memory limit of 8.0 MiB"),
        "{task:?}"
    );
    assert!(
        task.peak_memory <= 8 << 20,
        "peak {} stays under the cap",
        task.peak_memory
    );
}

#[tokio::test]
async fn a_panic_is_a_trap_with_the_panic_message() {
    let h = Harness::new();
    let (_, task) = call(&h, "panics", json!({})).await;
    assert_eq!(task.failure_kind, Some(FailureKind::Trap));
    let message = task.message.unwrap();
    assert!(
        message.contains("guest panicked: fixture panic: boom"),
        "{message}"
    );
}

#[tokio::test]
async fn files_are_not_granted() {
    let h = Harness::new();
    let (_, task) = call(&h, "read_file", json!({ "path": "/etc/passwd" })).await;
    assert_eq!(task.failure_kind, Some(FailureKind::Failed));
    assert!(task.output.is_none(), "no contents leaked: {task:?}");
}

#[tokio::test]
async fn an_output_over_the_cap_is_rejected_not_stored() {
    let h = Harness::new();
    let (_, task) = call(&h, "huge_output", json!({ "bytes": 20u64 << 20 })).await;
    assert_eq!(task.failure_kind, Some(FailureKind::InvalidOutput));
    assert!(task.message.unwrap().contains("over the limit"));
}

#[tokio::test]
async fn a_log_flood_is_capped_and_says_so() {
    let h = Harness::new();
    let (outcome, task) = call(&h, "log_flood", json!({ "lines": 200_000 })).await;
    assert_eq!(outcome.state, RunState::Completed);
    assert_eq!(task.output.as_deref(), Some("200000"));
    h.store.close();
    let logs = h.store.logs(outcome.id, 0, 1_000_000).unwrap();
    // stdout+stderr are capped at 1 MiB per instance, far below 200k lines.
    assert!(logs.len() < 100_000, "{} lines kept", logs.len());
    assert!(
        logs.iter().any(|l| l.message.contains("output truncated")),
        "truncation is reported"
    );
    assert!(logs.iter().any(|l| l.message == "flood line 0"));
}

#[tokio::test]
async fn every_misbehaviour_in_one_flow_and_the_flow_goes_on() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let outcome = h.run(&component, "many_outcomes", json!({})).await;
    assert_eq!(outcome.state, RunState::Completed, "{:?}", outcome.result);
    let report = json(&outcome.result.unwrap());
    assert_eq!(report["flaky"], "ok: 2");
    assert_eq!(
        report["after"], "ok: 4",
        "a task after all the failures still runs"
    );
    for (task, words) in [
        ("fatal", "fatal: this task always fails"),
        ("spin", "deadline exceeded"),
        ("burn", "out of fuel"),
        ("alloc_bomb", "memory limit"),
        ("panics", "fixture panic: boom"),
        ("read_file", "err: failed:"),
    ] {
        let text = report[task].as_str().unwrap();
        assert!(
            text.starts_with("err: ") && text.contains(words),
            "{task}: {text}"
        );
    }
    let kinds: Vec<Option<FailureKind>> = h
        .store
        .task_runs(outcome.id)
        .unwrap()
        .iter()
        .map(|t| t.failure_kind)
        .collect();
    for kind in [
        FailureKind::Timeout,
        FailureKind::OutOfFuel,
        FailureKind::Memory,
        FailureKind::Trap,
    ] {
        assert!(kinds.contains(&Some(kind)), "{kind} recorded in {kinds:?}");
    }
}

#[tokio::test]
async fn flow_level_failures_are_typed_too() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;

    let panicked = h.run(&component, "flow_panics", json!({})).await;
    assert_eq!(panicked.state, RunState::Failed);
    let failure = panicked.result.unwrap_err();
    assert_eq!(failure.kind, FailureKind::Trap);
    assert!(failure.message.contains("fixture flow panic"), "{failure}");

    let failed = h.run(&component, "flow_fails", json!({})).await;
    assert_eq!(failed.result.unwrap_err().message, "flow failed on purpose");

    let mut request = weir_host::worker::FlowRunRequest::new(component.clone(), "flow_loops", "{}");
    request.policy_override.timeout_ms = Some(300);
    let looped = h.executor.run_flow(request).await.unwrap();
    assert_eq!(looped.state, RunState::TimedOut);

    let bad_params = h
        .run(&component, "sequential", json!({ "n": "many" }))
        .await;
    assert_eq!(
        bad_params.result.unwrap_err().kind,
        FailureKind::InvalidInput
    );
}

#[tokio::test]
async fn bad_components_are_refused_with_a_reason() {
    let h = Harness::new();
    let refused = |bytes: Vec<u8>| {
        let engine = h.engine.clone();
        async move { engine.load(&bytes).await.err().expect("refused") }
    };
    assert!(matches!(
        refused(b"just some text".to_vec()).await,
        EngineError::NotWasm
    ));
    assert!(matches!(
        refused(wat::parse_str("(module)").unwrap()).await,
        EngineError::CoreModule
    ));
    let mut truncated = std::fs::read(FIXTURE_WASM).unwrap();
    truncated.truncate(truncated.len() / 2);
    assert!(matches!(refused(truncated).await, EngineError::Invalid(_)));
    // A valid component of another world: it exports nothing Weir can call.
    let other_world = wat::parse_str("(component)").unwrap();
    let err = refused(other_world).await;
    assert!(matches!(err, EngineError::WrongWorld(_)), "{err}");
    assert!(err.to_string().contains("weir:flow"), "{err}");
    // The engine still works afterwards.
    let component = h.load(FIXTURE_WASM).await;
    assert_eq!(
        h.run(&component, "sequential", json!({ "n": 3 }))
            .await
            .state,
        RunState::Completed
    );
}

#[tokio::test]
async fn compiled_artifacts_are_cached_and_a_damaged_one_is_recompiled() {
    let h = Harness::new();
    let first = h.load(FIXTURE_WASM).await;
    assert!(matches!(first.load, LoadKind::Compiled { .. }));
    let second = h.load(FIXTURE_WASM).await;
    assert!(
        matches!(second.load, LoadKind::Cached { .. }),
        "{:?}",
        second.load
    );

    for entry in std::fs::read_dir(h.paths.compile_cache()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cwasm") {
            let mut bytes = std::fs::read(&path).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
        }
    }
    let third = h.load(FIXTURE_WASM).await;
    assert!(
        matches!(third.load, LoadKind::Compiled { .. }),
        "a damaged artifact is not trusted"
    );
    assert_eq!(
        h.run(&third, "sequential", json!({ "n": 2 })).await.state,
        RunState::Completed
    );
}

#[tokio::test]
async fn run_info_tells_the_task_who_it_is() {
    let h = Harness::new();
    let (outcome, task) = call(&h, "info", json!({})).await;
    let info = json(task.output.as_deref().unwrap());
    assert_eq!(info["attempt"], 1);
    assert_eq!(info["task_name"], "info");
    assert_eq!(info["flow_name"], "call");
    assert_eq!(info["flow_run_id"], outcome.id.to_string());
    assert_eq!(info["task_run_id"], task.id.to_string());
}

/// Instances come from a pool whose slots are reset, not unmapped, between
/// tasks. A task that marks a 1 MiB static and megabytes of grown memory
/// must leave nothing for the next task in that slot, called one after
/// another (one slot reused) or all at once (many slots, each reused).
#[tokio::test]
async fn every_task_starts_in_clean_memory_whatever_the_last_one_left() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    for fan in [false, true] {
        let params = json!({ "n": 60, "pages": 48, "fan": fan });
        let outcome = h.run(&component, "memory_probes", params).await;
        let report = json(&outcome.result.unwrap());
        assert_eq!(
            report["own_instance_marked"], true,
            "the probe sees its own marks in one instance: {report}"
        );
        assert_eq!(report["calls"], 60, "{report}");
        assert_eq!(
            report["low_marked"], 0,
            "fan {fan}: a task saw a static marked by an earlier one: {report}"
        );
        assert_eq!(
            report["high_marked"], 0,
            "fan {fan}: a task saw grown memory marked by an earlier one: {report}"
        );
    }
}

/// This process's resident memory, from /proc/self/status.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib << 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_submitting_millions_is_refused_past_the_cap_and_the_host_stays_small() {
    let h = Harness::new();
    let limit = h.executor.settings().max_pending_submits;
    assert_eq!(limit, 10_000, "the default cap");
    let component = h.load(FIXTURE_WASM).await;
    let before = resident_bytes();
    let flood = {
        let (executor, component) = (h.executor.clone(), component.clone());
        tokio::spawn(async move {
            let params = json!({ "n": 10_000_000u64 }).to_string();
            let request = FlowRunRequest::new(component, "submit_flood", params);
            executor.run_flow(request).await.unwrap()
        })
    };
    // Another run of the same executor is not held up by the flood.
    let other = h.run(&component, "sequential", json!({ "n": 5 })).await;
    assert_eq!(other.state, RunState::Completed, "{:?}", other.result);

    let outcome = flood.await.unwrap();
    let grown = resident_bytes().saturating_sub(before);
    assert_eq!(outcome.state, RunState::Completed, "{:?}", outcome.result);
    let report = json(&outcome.result.unwrap());
    assert_eq!(report["first"], "ok: 1", "submits under the cap run");
    let last = report["last"].as_str().unwrap();
    assert!(
        last.starts_with("err: failed: submit-task refused")
            && last.contains("10000 submitted tasks that were not awaited")
            && last.contains("max_pending_submits"),
        "{last}"
    );
    assert!(
        grown < 500 << 20,
        "resident memory grew by {} MiB",
        grown >> 20
    );
    assert_eq!(
        h.store.task_runs(outcome.id).unwrap().len(),
        limit,
        "only submits under the cap became task runs"
    );
    h.store.close();
    let refusals = h
        .store
        .logs(outcome.id, 0, 1_000_000)
        .unwrap()
        .into_iter()
        .filter(|l| l.message.contains("submit-task refused"))
        .count();
    assert_eq!(refusals, 1, "the refusal is logged once, not per submit");
}

#[tokio::test]
async fn a_submit_input_over_the_payload_cap_is_a_task_error_not_a_task() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let cap = h.engine.config().max_payload_bytes as u64;
    let outcome = h
        .run(&component, "submit_big", json!({ "bytes": cap + 1 }))
        .await;
    assert_eq!(outcome.state, RunState::Completed, "{:?}", outcome.result);
    let answer = json(&outcome.result.unwrap());
    let answer = answer.as_str().unwrap();
    assert!(
        answer.starts_with("err: invalid input: task input is")
            && answer.contains(&format!("over the limit of {cap} bytes")),
        "{answer}"
    );
    assert!(
        h.store.task_runs(outcome.id).unwrap().is_empty(),
        "nothing ran"
    );
    // Under the cap the same flow's task runs.
    let small = h
        .run(&component, "submit_big", json!({ "bytes": 10 }))
        .await;
    assert_eq!(json(&small.result.unwrap()), "accepted");
}

/// Runs `flow` with overrides that ask for far more than any server allows.
async fn greedy_run(
    h: &Harness,
    flow: &str,
    params: serde_json::Value,
) -> (RunState, Vec<TaskRunRow>, Vec<String>) {
    let component = h.load(FIXTURE_WASM).await;
    let mut request = FlowRunRequest::new(component, flow, params.to_string());
    let greedy = Policy {
        retries: Some(1_000),
        fuel: Some(u64::MAX),
        memory_bytes: Some(64 << 30),
        timeout_ms: Some(86_400_000),
        ..Policy::default()
    };
    request.task_override = greedy.clone();
    request.policy_override = greedy;
    // Without ceilings these runs would go on for hours; bound the wait.
    let outcome = tokio::time::timeout(Duration::from_secs(120), h.executor.run_flow(request))
        .await
        .expect("the ceilings stop the run")
        .unwrap();
    h.store.close();
    let logs = h
        .store
        .logs(outcome.id, 0, 10_000)
        .unwrap()
        .into_iter()
        .map(|l| l.message)
        .collect();
    (outcome.state, h.store.task_runs(outcome.id).unwrap(), logs)
}

#[tokio::test]
async fn server_ceilings_bind_whatever_a_policy_asks_and_the_log_says_why() {
    let mut settings = ExecutorSettings::default();
    settings.task_defaults.max_fuel = 5_000_000;
    settings.task_defaults.max_retries = 1;
    settings.task_defaults.max_memory_bytes = 16 << 20;
    settings.task_defaults.max_timeout = Some(Duration::from_millis(700));
    settings.flow_defaults.max_retries = 0;

    let h = Harness::with_settings(settings.clone());
    let (_, tasks, logs) = greedy_run(
        &h,
        "call",
        json!({"task": "burn", "input": {"n": 10_000_000_000u64}}),
    )
    .await;
    let burn = &tasks[0];
    assert_eq!(burn.failure_kind, Some(FailureKind::OutOfFuel), "{burn:?}");
    assert_eq!(burn.attempts, 2, "1000 retries asked, 1 allowed");
    assert!(
        burn.fuel_used <= 2 * 5_000_000 + 100_000,
        "fuel {}",
        burn.fuel_used
    );
    let clamp_lines: Vec<&String> = logs
        .iter()
        .filter(|l| l.contains("lowered to the server's ceiling"))
        .collect();
    assert!(
        clamp_lines
            .iter()
            .any(|l| l.starts_with("policy of task 'burn'")
                && l.contains(
                    "fuel 18446744073709551615 lowered to the server's ceiling of 5000000"
                )
                && l.contains("retries 1000 lowered to the server's ceiling of 1")),
        "{logs:#?}"
    );
    assert_eq!(
        clamp_lines
            .iter()
            .filter(|l| l.contains("task 'burn'"))
            .count(),
        1,
        "said once, not per attempt"
    );

    // Enough fuel to reach the memory ceiling.
    let mut roomy = settings.clone();
    roomy.task_defaults.max_fuel = 100_000_000_000;
    let h = Harness::with_settings(roomy.clone());
    let (_, tasks, _) = greedy_run(&h, "call", json!({"task": "alloc_bomb", "input": {}})).await;
    assert_eq!(tasks[0].failure_kind, Some(FailureKind::Memory));
    assert!(
        tasks[0]
            .message
            .as_deref()
            .unwrap()
            .contains("memory limit of 16.0 MiB"),
        "{:?}",
        tasks[0]
    );

    let h = Harness::with_settings(roomy);
    let (_, tasks, _) = greedy_run(&h, "call", json!({"task": "spin", "input": {}})).await;
    assert_eq!(tasks[0].failure_kind, Some(FailureKind::Timeout));
    assert!(
        tasks[0]
            .message
            .as_deref()
            .unwrap()
            .contains("deadline of 700ms exceeded"),
        "{:?}",
        tasks[0]
    );

    settings.flow_defaults.max_timeout = Some(Duration::from_millis(300));
    let h = Harness::with_settings(settings);
    let (state, _, logs) = greedy_run(&h, "flow_loops", json!({})).await;
    assert_eq!(state, RunState::TimedOut, "the flow deadline ceiling holds");
    assert!(
        logs.iter().any(|l| l.starts_with("policy of this flow")
            && l.contains("timeout 1day lowered to the server's ceiling of 300ms")),
        "{logs:#?}"
    );
}

/// A component whose describe() is the core function `body` (returning a
/// pointer to a (pointer, length) pair) and whose other exports trap.
fn describe_component(body: &str) -> Vec<u8> {
    let wat = format!(
        r#"(component
  (import "weir:flow/types@0.1.0" (instance $types
    (type $kind (enum "out-of-fuel" "deadline-exceeded" "memory-limit" "trap" "invalid-output"))
    (export "sandbox-failure-kind" (type $kind' (eq $kind)))
    (type $failure (record (field "kind" $kind') (field "message" string)))
    (export "sandbox-failure" (type $failure' (eq $failure)))
    (type $error (variant (case "failed" string) (case "invalid-input" string) (case "cancelled") (case "sandbox" $failure')))
    (export "task-error" (type (eq $error)))
  ))
  (alias export $types "task-error" (type $task-error))
  (core module $m
    (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
    (func (export "run") (param i32 i32 i32 i32) (result i32) unreachable)
    (func (export "describe") (result i32) {body}))
  (core instance $i (instantiate $m))
  (func $describe (result string) (canon lift (core func $i "describe") (memory (core memory $i "memory"))))
  (func $run (param "name" string) (param "input" string) (result (result string (error $task-error)))
    (canon lift (core func $i "run") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (instance $guest
    (export "describe" (func $describe))
    (export "run-flow" (func $run))
    (export "run-task" (func $run)))
  (export "weir:flow/guest@0.1.0" (instance $guest)))"#
    );
    wat::parse_str(wat).unwrap()
}

#[tokio::test]
async fn a_describe_that_loops_or_answers_megabytes_fails_the_load_within_its_budget() {
    let h = Harness::new();
    let forever = describe_component("(loop $again (br $again)) unreachable");
    let err = h.engine.load(&forever).await.err().expect("refused");
    assert!(matches!(err, EngineError::Describe(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("ran out of fuel") || text.contains("did not return within"),
        "{text}"
    );
    assert!(
        text.contains("describe() may use") || text.contains("describe() should only"),
        "the message names the budget: {text}"
    );

    // 100 MB of text: memory grown to 101 MiB, the answer's (pointer, length) at 0.
    let huge = describe_component(
        "(drop (memory.grow (i32.const 1616)))
         (i32.store (i32.const 0) (i32.const 16))
         (i32.store (i32.const 4) (i32.const 100000000))
         (i32.const 0)",
    );
    let err = h.engine.load(&huge).await.err().expect("refused");
    assert!(
        matches!(
            err,
            EngineError::ManifestTooLarge {
                bytes: 100_000_000,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("over the limit of 1048576 bytes"),
        "{err}"
    );

    // The host goes on serving.
    let component = h.load(FIXTURE_WASM).await;
    let outcome = h.run(&component, "sequential", json!({ "n": 3 })).await;
    assert_eq!(outcome.state, RunState::Completed);
}

#[tokio::test]
async fn a_log_flood_keeps_at_most_the_byte_cap_across_a_subflow_tree_and_counts_the_rest() {
    let cap: u64 = 64 << 10;
    let h = Harness::with_settings(ExecutorSettings {
        max_log_bytes_per_run: cap,
        ..ExecutorSettings::default()
    });
    let component = h.load(FIXTURE_WASM).await;
    let outcome = h
        .run(
            &component,
            "log_flood_tree",
            json!({ "lines": 20_000, "depth": 2 }),
        )
        .await;
    assert_eq!(outcome.state, RunState::Completed, "{:?}", outcome.result);
    h.store.close();
    let runs = h
        .store
        .list_flow_runs(&FlowRunFilter {
            limit: 100,
            ..FlowRunFilter::default()
        })
        .unwrap();
    assert_eq!(runs.len(), 3, "the run and two nested subflows");
    let (mut kept_bytes, mut kept_lines, mut notes) = (0u64, 0u64, Vec::new());
    for run in &runs {
        for line in h.store.logs(run.id, 0, 1_000_000).unwrap() {
            if line.message.contains("log lines (") && line.message.contains("dropped") {
                notes.push((run.id, line.message));
            } else {
                kept_bytes += line.message.len() as u64;
                kept_lines += 1;
            }
        }
    }
    assert!(
        kept_bytes <= cap,
        "{kept_bytes} bytes kept over a cap of {cap}"
    );
    assert!(
        kept_bytes > cap / 2,
        "the budget is used, not wasted: {kept_bytes}"
    );
    assert_eq!(notes.len(), 1, "one note for the whole tree: {notes:?}");
    let (note_run, note) = &notes[0];
    assert_eq!(*note_run, outcome.id, "written by the root run");
    let dropped: u64 = note.split_whitespace().next().unwrap().parse().unwrap();
    // Three floods of 20,000 stdout lines and 20 stderr lines each.
    assert_eq!(kept_lines + dropped, 3 * 20_020, "{note}");
}

#[tokio::test]
async fn a_task_cannot_start_tasks_or_flows() {
    let h = Harness::new();
    let (outcome, task) = call(&h, "nested_calls", json!({})).await;
    assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    let answers = json(task.output.as_deref().unwrap());
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), 3, "{answers:?}");
    for answer in answers {
        assert!(
            answer
                .as_str()
                .unwrap()
                .contains("a task cannot start tasks or flows; call them from the flow instead"),
            "{answer}"
        );
    }
    // Nothing was started: `call` saw one task run, and there is no subflow run.
    let runs = h
        .store
        .list_flow_runs(&weir_host::store::FlowRunFilter {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
}
