//! The sandbox: every way a guest can misbehave becomes a typed, recorded
//! failure, and the host goes on serving.

use serde_json::json;
use weir_host::engine::{EngineError, LoadKind};
use weir_host::model::{FailureKind, RunState};
use weir_host::store::TaskRunRow;
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
async fn secrets_are_not_granted_to_runs_started_by_hand() {
    let h = Harness::new();
    let (outcome, task) = call(&h, "get_secret", json!({ "name": "HOME" })).await;
    assert_eq!(outcome.state, RunState::Completed);
    assert_eq!(task.output.as_deref(), Some("null"));
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
