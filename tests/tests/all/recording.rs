//! Policies and durability: retries, backoff, caching, fan-out limits,
//! subflows, replay, cancellation, large results — as recorded in the store.

use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_host::clock::{Clock, ManualClock};
use weir_host::control::Control;
use weir_host::model::{FailureKind, RunState};
use weir_host::store::{ComponentFiles, Store, TaskRunRow};
use weir_host::worker::{Executor, ExecutorSettings, ExistingRun, FlowRunRequest};
use weir_tests::{FIXTURE_WASM, Harness, json};

fn calls(h: &Harness, id: weir_host::model::FlowRunId) -> Vec<TaskRunRow> {
    h.store.task_runs(id).unwrap()
}

/// The most task attempts of a run that overlapped in time, from their recorded
/// [start, end] intervals (an end sorts before a start at the same instant).
fn most_at_once(h: &Harness, id: weir_host::model::FlowRunId) -> i32 {
    let mut events = Vec::new();
    for task in calls(h, id) {
        for attempt in h.store.task_attempts(task.id).unwrap() {
            events.push((attempt.started_at, 1i32));
            events.push((attempt.ended_at, -1i32));
        }
    }
    events.sort();
    let (mut now, mut most) = (0, 0);
    for (_, delta) in events {
        now += delta;
        most = most.max(now);
    }
    most
}

#[tokio::test]
async fn a_flaky_task_is_retried_until_it_succeeds_and_each_attempt_is_recorded() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let outcome = h
        .run(
            &component,
            "call",
            json!({"task": "flaky", "input": {"fail_times": 2}}),
        )
        .await;
    assert_eq!(outcome.state, RunState::Completed);
    assert_eq!(
        json(&outcome.result.unwrap()),
        json!(3),
        "succeeded on attempt 3"
    );
    let task = &calls(&h, outcome.id)[0];
    assert_eq!((task.state, task.attempts), (RunState::Completed, 3));
    let attempts = h.store.task_attempts(task.id).unwrap();
    let failures: Vec<bool> = attempts.iter().map(|a| a.failure.is_some()).collect();
    assert_eq!(failures, [true, true, false]);
    let states: Vec<RunState> = h
        .store
        .state_history(task.id.0)
        .unwrap()
        .into_iter()
        .map(|s| s.1)
        .collect();
    use RunState::*;
    assert_eq!(
        states,
        [Running, Retrying, Running, Retrying, Running, Completed]
    );
}

#[tokio::test]
async fn retries_run_out() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let outcome = h
        .run(
            &component,
            "call",
            json!({"task": "flaky", "input": {"fail_times": 10}}),
        )
        .await;
    assert_eq!(outcome.state, RunState::Failed);
    let task = &calls(&h, outcome.id)[0];
    assert_eq!(
        (task.state, task.attempts),
        (RunState::Failed, 4),
        "1 attempt + 3 retries"
    );
    assert!(
        task.message
            .as_deref()
            .unwrap()
            .contains("attempt 4 fails on purpose")
    );
}

#[tokio::test]
async fn backoff_delays_follow_the_policy_without_waiting() {
    let h = Harness::new();
    let (executor, timer, clock) = crate::common::manual_time_executor(&h);
    let component = h.load(FIXTURE_WASM).await;
    let started = Instant::now();
    let request = FlowRunRequest::new(
        component,
        "call",
        json!({"task": "flaky", "input": {"fail_times": 3}}).to_string(),
    );
    let outcome = executor.run_flow(request).await.unwrap();
    assert_eq!(outcome.state, RunState::Completed);
    // flaky: retry_delay = ["10ms", "20ms"], backoff = 2.0 → 10, 20, then 20 × 2.
    let ms = timer.delays_ms();
    assert_eq!(ms, [10, 20, 40]);
    assert!(started.elapsed() < Duration::from_secs(30), "bounded");
    // The recorded next-attempt time is on the injected clock.
    let task = &calls(&h, outcome.id)[0];
    let history = h.store.state_history(task.id.0).unwrap();
    assert!(
        history
            .iter()
            .all(|(at, _, _)| *at >= 1_700_000_000_000_000),
        "{history:?}"
    );
    assert!(clock.now_micros() >= 1_700_000_000_070_000);
}

#[tokio::test]
async fn a_thousand_task_fan_out_never_runs_more_than_the_limit_at_once() {
    let h = Harness::with_settings(ExecutorSettings {
        flow_concurrency: 8,
        ..ExecutorSettings::default()
    });
    let component = h.load(FIXTURE_WASM).await;
    let outcome = h.run(&component, "fan_out", json!({ "n": 1000 })).await;
    assert_eq!(outcome.state, RunState::Completed);
    assert_eq!(
        json(&outcome.result.unwrap()),
        json!((0..1000).map(|i| i + 1).sum::<i64>())
    );
    let tasks = calls(&h, outcome.id);
    assert_eq!(tasks.len(), 1000);
    let most = most_at_once(&h, outcome.id);
    assert!(most <= 8, "{most} tasks overlapped");
    assert!(most >= 2, "the fan-out did run concurrently ({most})");
}

#[tokio::test]
async fn tag_limits_hold_across_a_fan_out() {
    let settings = ExecutorSettings {
        tag_limits: [("db".to_string(), 2)].into(),
        ..ExecutorSettings::default()
    };
    let h = Harness::with_settings(settings);
    let component = h.load(FIXTURE_WASM).await;
    let outcome = h
        .run(&component, "db_fan_out", json!({ "n": 12, "ms": 20 }))
        .await;
    assert_eq!(outcome.state, RunState::Completed);
    let most = most_at_once(&h, outcome.id);
    assert_eq!(
        most, 2,
        "at most two `db` tasks at once, and the limit was reached"
    );
}

#[tokio::test]
async fn a_cache_hit_is_recorded_as_cached_and_expires_with_its_ttl() {
    let h = Harness::new();
    let clock = ManualClock::starting_at(1_700_000_000_000_000);
    let control = Arc::new(Control::new(h.store.clone(), Arc::new(clock.clone())));
    let executor = Executor::new(h.engine.clone(), control, ExecutorSettings::default());
    let component = h.load(FIXTURE_WASM).await;
    let run = |n: i64| {
        let request = FlowRunRequest::new(
            component.clone(),
            "call",
            json!({"task": "cached_square", "input": {"n": n}}).to_string(),
        );
        let executor = executor.clone();
        async move { executor.run_flow(request).await.unwrap() }
    };
    let first = run(7).await;
    let original = &calls(&h, first.id)[0];
    assert_eq!(original.state, RunState::Completed);

    clock.advance(Duration::from_secs(60));
    let second = run(7).await;
    assert_eq!(json(&second.result.unwrap()), json!(49));
    let hit = &calls(&h, second.id)[0];
    assert_eq!(hit.state, RunState::Cached);
    assert_eq!(hit.cached_from, Some(original.id));
    assert_eq!(second.summary.cached, 1);

    let other_input = run(8).await;
    assert_eq!(
        calls(&h, other_input.id)[0].state,
        RunState::Completed,
        "another input is not a hit"
    );

    clock.advance(Duration::from_secs(2 * 3600));
    let expired = run(7).await;
    assert_eq!(
        calls(&h, expired.id)[0].state,
        RunState::Completed,
        "past its TTL the task runs again"
    );
}

#[tokio::test]
async fn refresh_cache_runs_again_and_caches_the_new_result() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let input = json!({"task": "cached_square", "input": {"n": 5}});
    let first = h.run(&component, "call", input.clone()).await;
    let mut refresh = FlowRunRequest::new(component.clone(), "call", input.to_string());
    refresh.task_override.refresh_cache = Some(true);
    let refreshed = h.executor.run_flow(refresh).await.unwrap();
    let refreshed_task = &calls(&h, refreshed.id)[0];
    assert_eq!(
        refreshed_task.state,
        RunState::Completed,
        "refresh ran the task"
    );
    let third = h.run(&component, "call", input).await;
    let hit = &calls(&h, third.id)[0];
    assert_eq!(hit.state, RunState::Cached);
    assert_eq!(
        hit.cached_from,
        Some(refreshed_task.id),
        "the newest result is served"
    );
    assert_ne!(calls(&h, first.id)[0].id, refreshed_task.id);
}

#[tokio::test]
async fn cancelling_a_parent_cancels_its_running_subflow() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let request = FlowRunRequest::new(
        component,
        "slow_parent",
        json!({ "n": 100, "ms": 20 }).to_string(),
    );
    let cancel = request.cancel.clone();
    let executor = h.executor.clone();
    let running = tokio::spawn(async move { executor.run_flow(request).await.unwrap() });
    let store = h.store.clone();
    let child_filter = weir_host::store::FlowRunFilter {
        flow_name: Some("slow_sequential".into()),
        limit: 1,
        ..Default::default()
    };
    wait_until(Duration::from_secs(20), || {
        store
            .list_flow_runs(&child_filter)
            .unwrap()
            .first()
            .is_some_and(|c| !store.task_runs(c.id).unwrap().is_empty())
    })
    .await;
    cancel.cancel();
    let parent = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("ended")
        .unwrap();
    assert_eq!(parent.state, RunState::Cancelled);
    let child = &h.store.list_flow_runs(&child_filter).unwrap()[0];
    assert_eq!(child.parent_flow_run, Some(parent.id));
    assert_eq!(child.state, RunState::Cancelled, "the child ended too");
    assert!(
        calls(&h, child.id).iter().all(|t| t.state.is_terminal()),
        "no task left running"
    );
}

#[tokio::test]
async fn subflows_are_child_runs_and_their_failure_propagates() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let ok = h.run(&component, "subflow_parent", json!({ "x": 3 })).await;
    assert_eq!(ok.state, RunState::Completed);
    assert_eq!(json(&ok.result.unwrap()), json!(12));
    let children: Vec<_> = h
        .store
        .list_flow_runs(&weir_host::store::FlowRunFilter {
            flow_name: Some("subflow_child".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(children.len(), 2);
    assert!(
        children
            .iter()
            .all(|c| c.parent_flow_run == Some(ok.id) && c.state == RunState::Completed)
    );
    assert_eq!(
        calls(&h, children[0].id).len(),
        1,
        "the child's task is recorded under the child"
    );

    let failed = h
        .run(&component, "subflow_parent", json!({ "x": -1 }))
        .await;
    assert_eq!(failed.state, RunState::Failed);
    assert!(
        failed
            .result
            .unwrap_err()
            .message
            .contains("child refuses negative numbers")
    );
}

#[tokio::test]
async fn a_retried_flow_run_replays_completed_tasks_instead_of_running_them() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    // Cancel a slow sequential flow part-way through.
    let request = FlowRunRequest::new(
        component.clone(),
        "slow_sequential",
        json!({ "n": 6, "ms": 30 }).to_string(),
    );
    let cancel = request.cancel.clone();
    let executor = h.executor.clone();
    let running = tokio::spawn(async move { executor.run_flow(request).await.unwrap() });
    let store = h.store.clone();
    wait_until(Duration::from_secs(20), || completed_count(&store) >= 3).await;
    cancel.cancel();
    let cancelled = running.await.unwrap();
    assert_eq!(cancelled.state, RunState::Cancelled);
    let done_before = completed_count(&h.store);
    assert!(
        (3..6).contains(&done_before),
        "{done_before} completed before the cancel"
    );

    let mut retry = FlowRunRequest::new(
        component,
        "slow_sequential",
        json!({ "n": 6, "ms": 30 }).to_string(),
    );
    retry.existing = Some(ExistingRun {
        id: cancelled.id,
        state: RunState::Cancelled,
        attempt: 1,
    });
    let outcome = h.executor.run_flow(retry).await.unwrap();
    assert_eq!(outcome.state, RunState::Completed);
    assert_eq!(json(&outcome.result.unwrap()), json!(180));
    assert_eq!(outcome.summary.replayed, done_before as u64);
    // Each call completed exactly once across both attempts.
    let tasks = calls(&h, outcome.id);
    for seq in 0..6 {
        let completed = tasks
            .iter()
            .filter(|t| t.call_seq == seq && t.state == RunState::Completed)
            .count();
        assert_eq!(completed, 1, "call #{seq}: {tasks:?}");
    }
    assert_eq!(h.store.flow_run(outcome.id).unwrap().attempt, 2);
}

fn completed_count(store: &Store) -> usize {
    let runs = store
        .list_flow_runs(&weir_host::store::FlowRunFilter {
            limit: 1,
            ..Default::default()
        })
        .unwrap();
    runs.first()
        .map(|r| {
            store
                .task_runs(r.id)
                .unwrap()
                .iter()
                .filter(|t| t.state == RunState::Completed)
                .count()
        })
        .unwrap_or(0)
}

async fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts a flow of the fixture and returns once its first task row is
/// recorded (announced once the attempt has run for a while), with the run's
/// handle and its cancel token.
async fn start_until_first_call(
    h: &Harness,
    flow: &str,
    params: serde_json::Value,
) -> (
    tokio::task::JoinHandle<weir_host::worker::FlowRunOutcome>,
    tokio_util::sync::CancellationToken,
) {
    let component = h.load(FIXTURE_WASM).await;
    let request = FlowRunRequest::new(component, flow, params.to_string());
    let cancel = request.cancel.clone();
    let executor = h.executor.clone();
    let running = tokio::spawn(async move { executor.run_flow(request).await.unwrap() });
    let store = h.store.clone();
    wait_until(Duration::from_secs(20), || {
        let runs = store
            .list_flow_runs(&weir_host::store::FlowRunFilter {
                limit: 1,
                ..Default::default()
            })
            .unwrap();
        runs.first()
            .is_some_and(|r| !store.task_runs(r.id).unwrap().is_empty())
    })
    .await;
    (running, cancel)
}

#[tokio::test]
async fn cancel_stops_a_running_task_within_a_second() {
    let h = Harness::new();
    let params = json!({"task": "sleeper", "input": {"ms": 60_000}});
    let (running, id_cancel) = start_until_first_call(&h, "call", params).await;
    let asked = Instant::now();
    id_cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("ended")
        .unwrap();
    let took = asked.elapsed();
    assert_eq!(outcome.state, RunState::Cancelled);
    assert!(took < Duration::from_secs(1), "stopped in {took:?}");
    let task = &calls(&h, outcome.id)[0];
    assert_eq!(
        (task.state, task.failure_kind),
        (RunState::Cancelled, Some(FailureKind::Cancelled))
    );
}

/// A sequential call runs inside the flow's own tokio task; when a cancel
/// drops the flow instance mid-call, the rest of the call moves to a task of
/// its own. It must still end and be recorded once, before the run ends,
/// and no later call may start.
#[tokio::test]
async fn a_sequential_call_cut_off_by_a_cancel_is_recorded_once_before_the_run_ends() {
    let h = Harness::new();
    let params = json!({ "n": 5, "ms": 60_000 });
    let (running, cancel) = start_until_first_call(&h, "slow_sequential", params).await;
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the cancelled run ended")
        .unwrap();
    assert_eq!(outcome.state, RunState::Cancelled);
    let tasks = calls(&h, outcome.id);
    assert_eq!(
        tasks.len(),
        1,
        "one call started, none after the cancel: {tasks:?}"
    );
    let task = &tasks[0];
    assert_eq!(task.state, RunState::Cancelled, "{task:?}");
    let run = h.store.flow_run(outcome.id).unwrap();
    let (task_end, run_end) = (task.ended_at.unwrap(), run.ended_at.unwrap());
    assert!(
        task_end <= run_end,
        "the run ended ({run_end:?}) before its call ({task_end:?})"
    );
    // Nothing is left to finish later: a second look finds the same rows.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = calls(&h, outcome.id);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].ended_at, task.ended_at, "{again:?}");
}

#[tokio::test]
async fn a_cancel_request_from_another_process_is_noticed() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let request = FlowRunRequest::new(
        component,
        "call",
        json!({"task": "sleeper", "input": {"ms": 60_000}}).to_string(),
    );
    let executor = h.executor.clone();
    let running = tokio::spawn(async move { executor.run_flow(request).await.unwrap() });
    let store = h.store.clone();
    wait_until(Duration::from_secs(20), || {
        !store
            .list_flow_runs(&weir_host::store::FlowRunFilter {
                limit: 1,
                ..Default::default()
            })
            .unwrap()
            .is_empty()
    })
    .await;
    let id = h
        .store
        .list_flow_runs(&weir_host::store::FlowRunFilter {
            limit: 1,
            ..Default::default()
        })
        .unwrap()[0]
        .id;
    // What `host flow-run cancel` writes, through a second connection as another process would.
    let other = Store::open(&h.paths.database()).unwrap();
    let at = weir_host::clock::SystemClock.now_micros();
    other
        .submit(vec![weir_host::store::Write::RequestCancel { id, at }])
        .committed()
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("ended")
        .unwrap();
    assert_eq!(outcome.state, RunState::Cancelled);
}

#[tokio::test]
async fn large_results_live_in_files_and_come_back_whole() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let outcome = h
        .run(
            &component,
            "call",
            json!({"task": "huge_output", "input": {"bytes": 200_000}}),
        )
        .await;
    assert_eq!(outcome.state, RunState::Completed);
    let task = &calls(&h, outcome.id)[0];
    assert_eq!(
        task.output.as_ref().unwrap().len(),
        200_002,
        "a JSON string of 200,000 characters"
    );
    let files: Vec<_> = std::fs::read_dir(h.home.path().join("results"))
        .unwrap()
        .collect();
    assert!(!files.is_empty(), "the payload went to a file");
    // Pruning removes old runs and the files only they referred to.
    let report = h.store.prune(i64::MAX).unwrap();
    assert!(
        report.flow_runs >= 1 && report.result_files >= 1,
        "{report:?}"
    );
    assert!(h.store.flow_run(outcome.id).is_err());
}

#[tokio::test]
async fn components_are_stored_by_digest_and_checked_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let files = ComponentFiles::new(dir.path());
    let bytes = std::fs::read(FIXTURE_WASM).unwrap();
    let digest = files.put(&bytes).unwrap();
    assert_eq!(files.put(&bytes).unwrap(), digest, "idempotent");
    assert_eq!(files.get(&digest).unwrap(), bytes);
    std::fs::write(files.path_of(&digest), b"tampered").unwrap();
    assert!(files.get(&digest).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_fan_out_runs_wanting_more_instances_than_the_pool_has_all_complete() {
    let h = Harness::new();
    let pool = weir_tests::test_engine_config(None).max_instances as u64;
    let component = h.load(FIXTURE_WASM).await;
    let (runs, tasks, ms) = (20u64, 100u64, 20u64);
    let per_run_at_once = (h.executor.settings().flow_concurrency as u64).min(tasks);
    assert!(
        runs * (per_run_at_once + 1) > pool,
        "the runs want more instances at once than the pool of {pool} has"
    );
    let started: Vec<_> = (0..runs)
        .map(|_| {
            let (executor, component) = (h.executor.clone(), component.clone());
            tokio::spawn(async move {
                let params = json!({ "n": tasks, "ms": ms }).to_string();
                executor
                    .run_flow(FlowRunRequest::new(component, "db_fan_out", params))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for run in started {
        let outcome = run.await.unwrap();
        assert_eq!(outcome.state, RunState::Completed, "{:?}", outcome.result);
        assert_eq!(json(&outcome.result.unwrap()), json!(tasks * ms));
        let attempts: u32 = calls(&h, outcome.id).iter().map(|t| t.attempts).sum();
        assert_eq!(
            attempts as u64, tasks,
            "no task failed for want of an instance"
        );
    }
}

#[tokio::test]
async fn log_retention_deletes_only_lines_older_than_the_setting_and_keeps_the_runs() {
    let h = Harness::new();
    let component = h.load(FIXTURE_WASM).await;
    let outcome = h.run(&component, "subflow_parent", json!({ "x": 1 })).await;
    assert_eq!(outcome.state, RunState::Completed);
    h.store.close();
    let lines = |h: &Harness| {
        h.store
            .list_flow_runs(&weir_host::store::FlowRunFilter {
                limit: 100,
                ..Default::default()
            })
            .unwrap()
            .iter()
            .map(|run| h.store.logs(run.id, 0, 10_000).unwrap().len())
            .sum::<usize>()
    };
    let written = lines(&h);
    assert!(written >= 2, "the children logged: {written}");
    let control = h.executor.control();
    assert_eq!(
        weir_host::worker::prune_logs_once(control, Duration::from_secs(3600)),
        0,
        "nothing is an hour old"
    );
    assert_eq!(lines(&h), written);
    assert_eq!(
        weir_host::worker::prune_logs_once(control, Duration::ZERO) as usize,
        written
    );
    assert_eq!(lines(&h), 0);
    assert_eq!(
        h.store.flow_run(outcome.id).unwrap().state,
        RunState::Completed,
        "the run stays"
    );
}

// ---- leases: runs whose holder is gone ----

/// A server without executor or scheduler, for driving the dispatcher by hand.
fn idle_server(home: &std::path::Path) -> weir_host::server::Server {
    let mut config = weir_host::server::ServerConfig::new(weir_host::config::Paths::at(home));
    config.executor = None;
    weir_host::server::Server::open(config).unwrap()
}

/// Records a Running flow run held by `holder` until `expires_at`, or a
/// subflow of `parent` (which holds no lease of its own).
fn held_run(
    store: &Store,
    parent: Option<weir_host::model::FlowRunId>,
    lease: Option<(&str, i64)>,
) -> weir_host::model::FlowRunId {
    let id = weir_host::model::FlowRunId::new();
    store
        .submit(vec![weir_host::store::Write::NewFlowRun(
            weir_host::store::NewFlowRun {
                id,
                parent_flow_run: parent,
                component: weir_host::model::ComponentDigest::from_sha256([0; 32]),
                flow_name: "f".into(),
                params: "{}".into(),
                state: RunState::Running,
                attempt: 1,
                host: "remote".into(),
                at: weir_host::clock::SystemClock.now_micros(),
                deployment: None,
                tags: Vec::new(),
                scheduled_at: None,
                work_pool: None,
                work_queue: None,
                secret_grants: Vec::new(),
                lease: lease.map(|(holder, expires_at)| weir_host::store::Lease {
                    holder: holder.into(),
                    expires_at,
                }),
                deployment_version: None,
            },
        )])
        .wait_blocking()
        .unwrap();
    id
}

#[test]
fn a_run_whose_lease_ran_out_is_crashed_with_its_subflows_and_a_held_one_is_not() {
    let home = tempfile::tempdir().unwrap();
    let server = idle_server(home.path());
    let now = weir_host::clock::SystemClock.now_micros();
    let store = server.store.clone();
    let lost = held_run(&store, None, Some(("remote-7", now - 1)));
    let child = held_run(&store, Some(lost), None);
    let grandchild = held_run(&store, Some(child), None);
    let held = held_run(&store, None, Some(("remote-8", now + 3_600_000_000)));
    let held_child = held_run(&store, Some(held), None);

    let crashed = server.block_on(server.dispatcher.reap()).unwrap();
    assert_eq!(
        crashed.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![lost],
        "only the run whose lease ran out"
    );
    let run = store.flow_run(lost).unwrap();
    assert_eq!(run.state, RunState::Crashed);
    assert_eq!(run.failure_kind, Some(FailureKind::Crashed));
    assert!(
        run.message
            .as_deref()
            .unwrap()
            .contains("host remote-7 lost"),
        "{:?}",
        run.message
    );
    for sub in [child, grandchild] {
        let sub = store.flow_run(sub).unwrap();
        assert_eq!(sub.state, RunState::Crashed, "subflows die with their root");
        assert!(sub.message.as_deref().unwrap().contains(&lost.to_string()));
    }
    assert_eq!(store.flow_run(held).unwrap().state, RunState::Running);
    assert_eq!(store.flow_run(held_child).unwrap().state, RunState::Running);
    // Reaping again finds nothing new.
    assert!(
        server
            .block_on(server.dispatcher.reap())
            .unwrap()
            .is_empty()
    );
}

/// A reaper judges a run lost from what it read; if the run was claimed
/// again before the reaper's crash lands (a retry went back to the pool and
/// another host took it), the crash must not land on the new claim.
#[test]
fn a_reaper_that_read_a_lapsed_lease_does_not_crash_the_next_claim() {
    let home = tempfile::tempdir().unwrap();
    let server = idle_server(home.path());
    let now = weir_host::clock::SystemClock.now_micros();
    let store = server.store.clone();
    let run = held_run(&store, None, Some(("remote-7", now - 1)));
    let judged = store.flow_run(run).unwrap();
    // Meanwhile another host claims it under a fresh lease.
    store
        .submit(vec![weir_host::store::Write::TakeLease {
            id: run,
            holder: "remote-9".into(),
            expires_at: now + 3_600_000_000,
        }])
        .wait_blocking()
        .unwrap();
    let control = server.dispatcher.control().clone();
    let crashed = weir_host::dispatch::leases::crash_tree(&control, &judged, "host remote-7 lost");
    assert!(!crashed, "the run moved on since the reaper looked");
    let now_row = store.flow_run(run).unwrap();
    assert_eq!(now_row.state, RunState::Running);
    assert_eq!(now_row.lease_holder.as_deref(), Some("remote-9"));
    // The run as it is now, lapsed again, is crashed.
    store
        .submit(vec![weir_host::store::Write::TakeLease {
            id: run,
            holder: "remote-9".into(),
            expires_at: now - 1,
        }])
        .wait_blocking()
        .unwrap();
    let crashed = server.block_on(server.dispatcher.reap()).unwrap();
    assert_eq!(crashed.iter().map(|r| r.id).collect::<Vec<_>>(), vec![run]);
    assert!(
        store
            .flow_run(run)
            .unwrap()
            .message
            .unwrap()
            .contains("remote-9"),
        "the crash names the holder that lapsed"
    );
}

#[test]
fn cancelling_a_run_nobody_holds_ends_it_at_once() {
    let home = tempfile::tempdir().unwrap();
    let server = idle_server(home.path());
    let now = weir_host::clock::SystemClock.now_micros();
    let store = server.store.clone();
    let orphan = held_run(&store, None, Some(("remote-7", now - 1)));
    let orphan_child = held_run(&store, Some(orphan), None);
    let held = held_run(&store, None, Some(("remote-8", now + 3_600_000_000)));

    let ended = server
        .block_on(server.dispatcher.cancel(orphan, false))
        .unwrap();
    assert_eq!(ended.state, RunState::Cancelled, "nobody would ever answer");
    assert_eq!(store.flow_run(orphan).unwrap().state, RunState::Cancelled);
    assert_eq!(
        store.flow_run(orphan_child).unwrap().state,
        RunState::Cancelled
    );

    let asked = server
        .block_on(server.dispatcher.cancel(held, false))
        .unwrap();
    assert_eq!(asked.state, RunState::Cancelling, "its holder is asked");
    assert_eq!(store.flow_run(held).unwrap().state, RunState::Running);
    assert!(store.cancel_requested(held).unwrap());
}

#[test]
fn a_restarted_server_crashes_what_an_earlier_life_with_its_pid_held() {
    let home = tempfile::tempdir().unwrap();
    let earlier_life = {
        let server = idle_server(home.path());
        let host = weir_host::dispatch::leases::local_host_name();
        // Same host and pid as this process (PID 1 again in a container),
        // another boot; its lease has not run out yet.
        let marker = format!("{host} pid={} boot=0ldl1fe0", std::process::id());
        let now = weir_host::clock::SystemClock.now_micros();
        held_run(&server.store, None, Some((&marker, now + 3_600_000_000)))
    };
    let server = idle_server(home.path());
    assert_eq!(
        server.interrupted.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![earlier_life]
    );
    assert_eq!(
        server.store.flow_run(earlier_life).unwrap().state,
        RunState::Crashed
    );
}
