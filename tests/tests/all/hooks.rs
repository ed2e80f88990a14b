//! State hooks: tasks a flow or task names for how it ends (`on_completion`,
//! `on_failure`, `on_cancellation`, `on_crashed`), recorded as task runs of
//! the run, never able to change how it ended, never hooks of their own.

use crate::common;

use common::{TestServer, start_fixture_run, wait_for_run};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use weir_host::clock::Clock;
use weir_host::model::{FlowRunId, RunState};
use weir_host::store::TaskRunRow;
use weir_host::worker::FlowRunRequest;
use weir_tests::{FIXTURE_WASM, Harness, json};

fn named<'a>(tasks: &'a [TaskRunRow], name: &str) -> Vec<&'a TaskRunRow> {
    tasks.iter().filter(|t| t.task_name == name).collect()
}

fn log_text(h: &Harness, id: FlowRunId) -> String {
    h.store
        .logs(id, 0, 10_000)
        .unwrap()
        .iter()
        .map(|l| l.message.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn a_completed_flow_runs_its_completion_hook_once_as_a_recorded_task() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let outcome = h.run(&component, "hooked_ok", json!({ "x": 1 })).await;
    assert_eq!(outcome.state, RunState::Completed);
    assert_eq!(json(&outcome.result.unwrap()), json!(2));
    let tasks = h.store.task_runs(outcome.id).unwrap();
    let hooks = named(&tasks, "note_end");
    assert_eq!(hooks.len(), 1, "on_completion only, once: {tasks:?}");
    assert_eq!(hooks[0].state, RunState::Completed);
    assert_eq!(
        json(hooks[0].output.as_deref().unwrap()),
        json!(":Completed:")
    );
    // Its input is how the run ended.
    let input = json(&hooks[0].input);
    assert_eq!(input["run"]["flow_run_id"], outcome.id.to_string());
    assert_eq!(
        (
            input["run"]["result"].clone(),
            input["run"]["input"].clone()
        ),
        (json!(2), json!({ "x": 1 }))
    );
    assert_eq!(
        h.store.flow_run(outcome.id).unwrap().state,
        RunState::Completed
    );
}

#[tokio::test]
async fn hooks_that_panic_loop_or_run_out_of_fuel_leave_the_failed_run_failed_and_are_logged() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let outcome = h.run(&component, "hooked_fails", json!({})).await;
    assert_eq!(outcome.state, RunState::Failed);
    assert!(
        outcome
            .result
            .unwrap_err()
            .message
            .contains("hooked flow fails on purpose")
    );
    let row = h.store.flow_run(outcome.id).unwrap();
    assert_eq!(row.state, RunState::Failed);
    assert!(
        row.message
            .unwrap()
            .contains("hooked flow fails on purpose"),
        "the hooks' failures are not the run's"
    );

    let tasks = h.store.task_runs(outcome.id).unwrap();
    let state_of = |name: &str| {
        let runs = named(&tasks, name);
        assert_eq!(runs.len(), 1, "{name} ran once: {tasks:?}");
        runs[0].state
    };
    assert_eq!(state_of("hook_panics"), RunState::Failed);
    assert_eq!(state_of("hook_loops"), RunState::TimedOut);
    assert_eq!(state_of("hook_burns"), RunState::Failed);
    // Its own on_failure hook is itself: a hook's end runs no hooks.
    assert_eq!(state_of("hook_fails_itself"), RunState::Failed);
    // After all of them, the last hook still ran and saw the run's state.
    assert_eq!(state_of("note_end"), RunState::Completed);
    let note = named(&tasks, "note_end")[0].output.clone().unwrap();
    assert!(
        json(&note)
            .as_str()
            .unwrap()
            .starts_with(":Failed:hooked flow fails on purpose"),
        "{note}"
    );
    assert_eq!(tasks.len(), 5, "the five hooks, nothing more: {tasks:?}");

    let logs = log_text(&h, outcome.id);
    for hook in [
        "hook_panics",
        "hook_loops",
        "hook_burns",
        "hook_fails_itself",
    ] {
        assert!(
            logs.contains(&format!("on_failure hook '{hook}' failed"))
                && logs.contains("the run's state stays Failed"),
            "{hook}: {logs}"
        );
    }
    assert!(logs.contains("fuel"), "{logs}");
}

#[tokio::test]
async fn a_completed_run_stays_completed_when_its_completion_hooks_fail() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let outcome = h.run(&component, "hooked_completes", json!({})).await;
    assert_eq!(
        (outcome.state, json(&outcome.result.unwrap())),
        (RunState::Completed, json!(7))
    );
    let row = h.store.flow_run(outcome.id).unwrap();
    assert_eq!(
        (row.state, row.result.as_deref()),
        (RunState::Completed, Some("7"))
    );
    let tasks = h.store.task_runs(outcome.id).unwrap();
    assert_eq!(named(&tasks, "hook_panics")[0].state, RunState::Failed);
    assert_eq!(named(&tasks, "hook_fails_itself").len(), 1);
    assert_eq!(named(&tasks, "note_end")[0].state, RunState::Completed);
}

#[tokio::test]
async fn a_cancelled_run_runs_its_cancellation_hook() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let request = FlowRunRequest::new(
        component,
        "hooked_slow",
        json!({ "n": 1000, "ms": 50 }).to_string(),
    );
    let cancel = request.cancel.clone();
    let executor = h.executor.clone();
    let running = tokio::spawn(async move { executor.run_flow(request).await.unwrap() });
    let store = h.store.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = store.list_flow_runs(&Default::default()).unwrap();
        let done = runs
            .first()
            .map(|r| {
                store
                    .task_runs(r.id)
                    .unwrap()
                    .iter()
                    .any(|t| t.state == RunState::Completed)
            })
            .unwrap_or(false);
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the run never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    let outcome = running.await.unwrap();
    assert_eq!(outcome.state, RunState::Cancelled);
    let tasks = h.store.task_runs(outcome.id).unwrap();
    let hooks = named(&tasks, "note_end");
    assert_eq!(hooks.len(), 1, "{tasks:?}");
    assert_eq!(
        hooks[0].state,
        RunState::Completed,
        "the cancel does not stop the hook"
    );
    assert!(
        json(hooks[0].output.as_deref().unwrap())
            .as_str()
            .unwrap()
            .starts_with(":Cancelled:")
    );
    assert_eq!(
        h.store.flow_run(outcome.id).unwrap().state,
        RunState::Cancelled
    );
}

#[tokio::test]
async fn a_tasks_hooks_run_for_each_of_its_ends() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let outcome = h.run(&component, "hooked_tasks", json!({})).await;
    assert_eq!(outcome.state, RunState::Completed, "{:?}", outcome.result);
    let tasks = h.store.task_runs(outcome.id).unwrap();
    let notes: Vec<String> = named(&tasks, "note_end")
        .iter()
        .map(|t| {
            json(t.output.as_deref().unwrap())
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(notes.len(), 2, "{tasks:?}");
    assert_eq!(notes[0], "hooked_task:Completed:");
    assert!(
        notes[1].starts_with("hooked_task:Failed:hooked task fails on purpose"),
        "{notes:?}"
    );
    // The task's own state is what it was.
    let hooked: Vec<RunState> = named(&tasks, "hooked_task")
        .iter()
        .map(|t| t.state)
        .collect();
    assert_eq!(hooked, [RunState::Completed, RunState::Failed]);
}

/// The `note_end` hook runs of a server's run.
fn crash_notes(server: &TestServer, id: &str) -> Vec<Value> {
    let (_, detail) = server.get(&format!("/api/flow-runs/{id}"));
    detail["task_runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["task_name"] == "note_end")
        .cloned()
        .collect()
}

/// A server killed mid-run: the next one marks the run Crashed, runs its
/// on_crashed hook once and resumes the run, whose replay the hook's record
/// does not disturb; a later restart runs the hook no more.
#[test]
fn a_crashed_runs_hook_runs_once_and_the_resumed_run_replays_around_it() {
    let server = TestServer::start();
    let digest = server.upload(FIXTURE_WASM);
    let first = start_fixture_run(
        &server,
        &digest,
        "hooked_slow",
        json!({ "n": 40, "ms": 50 }),
    );
    server.wait_for_completed_tasks(&first, 1);
    let server = server.kill_and_restart();
    let run = wait_for_run(&server, &first, Duration::from_secs(120), |r| {
        r["ended_at"].is_i64()
    });
    assert_eq!(
        (run["state"].clone(), run["result"].clone()),
        (json!("Completed"), json!("2000")),
        "resumed: {run}"
    );
    let notes = crash_notes(&server, &first);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0]["output"].as_str().unwrap().contains(":Crashed:"),
        "{notes:?}"
    );
    let (_, detail) = server.get(&format!("/api/flow-runs/{first}"));
    let tasks = detail["task_runs"].as_array().unwrap();
    for seq in 0..40 {
        let done = tasks
            .iter()
            .filter(|t| {
                t["task_name"] == "sleeper" && t["call_seq"] == seq && t["state"] == "Completed"
            })
            .count();
        assert_eq!(done, 1, "call #{seq} completed once");
    }

    // Restart again and run something to the end: the opening pass is over,
    // and the first run's hook did not run again.
    let server = server.kill_and_restart();
    let digest = server.upload(FIXTURE_WASM);
    let second = start_fixture_run(&server, &digest, "hooked_ok", json!({ "x": 1 }));
    wait_for_run(&server, &second, Duration::from_secs(60), |r| {
        r["state"] == "Completed"
    });
    assert_eq!(
        crash_notes(&server, &first).len(),
        1,
        "the first run's hook ran once"
    );
}

/// Two recovery passes at once over one crashed run: only the pass whose
/// compare-and-set made it Crashed tells of it, so its hooks run once.
#[test]
fn two_recovery_passes_at_once_tell_of_a_crash_once() {
    let home = tempfile::tempdir().unwrap();
    let mut config =
        weir_host::server::ServerConfig::new(weir_host::config::Paths::at(home.path()));
    config.executor = None;
    let server = weir_host::server::Server::open(config).unwrap();
    let (tell, mut told) = tokio::sync::mpsc::unbounded_channel();
    server.dispatcher.listen_for_crashes(tell);
    let now = weir_host::clock::SystemClock.now_micros();
    let id = FlowRunId::new();
    server
        .store
        .submit(vec![weir_host::store::Write::NewFlowRun(
            weir_host::store::NewFlowRun {
                id,
                parent_flow_run: None,
                component: weir_host::model::ComponentDigest::from_sha256([0; 32]),
                flow_name: "f".into(),
                params: "{}".into(),
                state: RunState::Running,
                attempt: 1,
                host: "remote".into(),
                at: now,
                deployment: None,
                tags: Vec::new(),
                scheduled_at: None,
                work_pool: None,
                work_queue: None,
                secret_grants: Vec::new(),
                lease: Some(weir_host::store::Lease {
                    holder: "remote-9".into(),
                    expires_at: now - 1,
                }),
                deployment_version: None,
            },
        )])
        .wait_blocking()
        .unwrap();
    let (a, b) =
        server.block_on(async { tokio::join!(server.dispatcher.reap(), server.dispatcher.reap()) });
    let crashed = a.unwrap().len() + b.unwrap().len();
    assert_eq!(crashed, 1, "one pass wins the compare-and-set");
    assert_eq!(told.try_recv().map(|r| r.id).ok(), Some(id));
    assert!(told.try_recv().is_err(), "told of once");
    assert_eq!(server.store.flow_run(id).unwrap().state, RunState::Crashed);
}
