//! Several servers on one PostgreSQL database, as a team runs them behind a
//! load balancer: each run is taken exactly once, one scheduler leads and
//! another takes over when it dies, a dead server's runs resume on the
//! other, and a database restart loses nothing acknowledged.
//!
//! Each test starts its own servers (`host server start --database URL`,
//! separate `$WEIR_HOME`s) on a fresh database of a throwaway cluster. Where
//! PostgreSQL is not installed they print SKIPPED, except under CI.

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use weir_host::store::pg::testing::{TestCluster, or_skip};
use weir_tests::FIXTURE_WASM;

use crate::common;
use common::{TestServer, start_fixture_run, wait_for_run};

/// A fresh database of the shared cluster; `None` (after saying why)
/// where PostgreSQL is missing.
fn database() -> Option<String> {
    or_skip(TestCluster::shared().and_then(|c| c.database()))
}

fn server_on(url: &str, extra: &[&str]) -> TestServer {
    let mut args = vec!["--database", url];
    args.extend_from_slice(extra);
    TestServer::start_with(&args, None)
}

fn states_of(detail: &Value) -> Vec<String> {
    detail["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn two_servers_on_one_database_run_each_of_a_thousand_runs_exactly_once() {
    let Some(url) = database() else {
        return;
    };
    let a = server_on(&url, &[]);
    let b = server_on(&url, &[]);
    // Uploaded through one; the other has no file of it and reads it from the database.
    let digest = a.upload(FIXTURE_WASM);
    const RUNS: usize = 1000;
    let started = Instant::now();
    let ids: Vec<String> = std::thread::scope(|scope| {
        let halves: Vec<_> = [&a, &b]
            .into_iter()
            .map(|server| {
                let digest = &digest;
                scope.spawn(move || {
                    (0..RUNS / 2)
                        .map(|i| {
                            start_fixture_run(server, digest, "sequential", json!({ "n": i % 3 }))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        halves.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        RUNS,
        "ids are unique"
    );
    let mut holders = BTreeSet::new();
    for (i, id) in ids.iter().enumerate() {
        // Ask either server: both see every run.
        let server = if i % 2 == 0 { &a } else { &b };
        let run = wait_for_run(server, id, Duration::from_secs(300), |r| {
            r["state"] == "Completed" || r["state"] == "Failed" || r["state"] == "Crashed"
        });
        assert_eq!(run["state"], "Completed", "{run}");
        let (_, detail) = server.get(&format!("/api/flow-runs/{id}"));
        let states = states_of(&detail);
        let running = states.iter().filter(|s| *s == "Running").count();
        assert_eq!(running, 1, "run {id} ran once: {states:?}");
        assert_eq!(run["lease_epoch"], 1, "run {id} was claimed once: {run}");
        holders.insert(run["lease_holder"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(holders.len(), 2, "both servers ran runs: {holders:?}");
    eprintln!(
        "{RUNS} runs through two servers on PostgreSQL: all completed once in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn the_leading_scheduler_killed_the_other_takes_over_without_skipping_or_doubling() {
    let Some(url) = database() else {
        return;
    };
    // Runs are made 2 s ahead only, so a scheduler that stops is missed at once.
    let fast = ["--schedule-ahead", "2s"];
    let a = server_on(&url, &fast);
    let digest = a.upload(FIXTURE_WASM);
    a.deploy(
        "every-second",
        json!({
            "name": "every-second",
            "component": digest,
            "flow": "sequential",
            "params": { "n": 0 },
            "schedules": [{ "interval_seconds": 1 }],
        }),
    );
    let scheduled = |server: &TestServer| -> Vec<i64> {
        let (_, list) = server.get("/api/flow-runs?deployment=every-second&limit=1000");
        let mut times: Vec<i64> = list["flow_runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["scheduled_at"].as_i64().unwrap())
            .collect();
        times.sort();
        times
    };
    // `a` is alone, so it leads; `b` starts after it has made runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    while scheduled(&a).len() < 2 {
        assert!(Instant::now() < deadline, "a made no runs");
        std::thread::sleep(Duration::from_millis(100));
    }
    let b = server_on(&url, &fast);
    std::thread::sleep(Duration::from_secs(2));
    let before_kill = scheduled(&b);
    let mut a = a;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed_at_last = *before_kill.last().unwrap();
    // `b` must go on making runs past what `a` had made.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let times = scheduled(&b);
        if times
            .last()
            .is_some_and(|t| *t >= killed_at_last + 5_000_000)
        {
            break times;
        }
        assert!(
            Instant::now() < deadline,
            "b never took over: last {:?}, a's last {killed_at_last}",
            times.last()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let unique: BTreeSet<_> = after.iter().collect();
    assert_eq!(unique.len(), after.len(), "no time doubled: {after:?}");
    for pair in after.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1_000_000,
            "no time skipped between {} and {}: {after:?}",
            pair[0],
            pair[1]
        );
    }
    eprintln!(
        "scheduler takeover: {} runs made, one per second, none doubled or skipped",
        after.len()
    );
}

#[test]
fn a_server_killed_mid_flow_its_run_resumes_on_the_other_from_its_records() {
    let Some(url) = database() else {
        return;
    };
    let a = server_on(&url, &[]);
    let b = server_on(&url, &[]);
    let digest = a.upload(FIXTURE_WASM);
    // Started through `a`, which runs it at once.
    let id = start_fixture_run(&a, &digest, "slow_retried", json!({ "n": 20, "ms": 100 }));
    a.wait_for_completed_tasks(&id, 5);
    let mut a = a;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let run = wait_for_run(&b, &id, Duration::from_secs(120), |r| {
        r["state"] == "Completed" || r["state"] == "Failed"
    });
    assert_eq!(run["state"], "Completed", "{run}");
    assert_eq!(run["result"], json!("2000"));
    let (_, detail) = b.get(&format!("/api/flow-runs/{id}"));
    for seq in 0..20 {
        let done: Vec<&Value> = detail["task_runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["call_seq"] == seq && t["state"] == "Completed")
            .collect();
        assert_eq!(done.len(), 1, "call #{seq} completed once: {detail}");
        assert_eq!(done[0]["attempts"], 1, "call #{seq} ran once");
    }
    let states = states_of(&detail);
    assert!(states.contains(&"Crashed".to_string()), "{states:?}");
    assert_ne!(
        run["lease_holder"], detail["task_runs"][0]["host"],
        "the end ran elsewhere than the start"
    );
}

#[test]
fn postgres_restarted_mid_run_the_server_reconnects_and_loses_nothing_acknowledged() {
    // A cluster of its own: restarting the shared one would cut other tests.
    let Some(own) = or_skip(TestCluster::start()) else {
        return;
    };
    let url = own.database().unwrap();
    let server = server_on(&url, &[]);
    let digest = server.upload(FIXTURE_WASM);
    // Runs completed (acknowledged) before the restart.
    let done: Vec<String> = (0..5)
        .map(|_| start_fixture_run(&server, &digest, "sequential", json!({ "n": 3 })))
        .collect();
    for id in &done {
        wait_for_run(&server, id, Duration::from_secs(60), |r| {
            r["state"] == "Completed"
        });
    }
    let slow = start_fixture_run(
        &server,
        &digest,
        "slow_retried",
        json!({ "n": 30, "ms": 100 }),
    );
    server.wait_for_completed_tasks(&slow, 5);
    own.restart().unwrap();
    let slow_run = wait_for_run(&server, &slow, Duration::from_secs(120), |r| {
        r["state"] == "Completed" || r["state"] == "Failed" || r["state"] == "Crashed"
    });
    // The run in flight when the database went away carried on: its writes
    // waited for the database to come back.
    assert_eq!(slow_run["state"], "Completed", "{slow_run}");
    assert_eq!(slow_run["result"], json!("3000"));
    // Everything acknowledged before is there, and new work goes on.
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let (status, started) = server.send(
            "POST",
            &format!("/api/components/{digest}/flows/sequential/runs"),
            json!({ "params": { "n": 3 } }),
        );
        if status == 202 {
            break started["flow_run_id"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "never served again: {status} {started}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let run = wait_for_run(&server, &id, Duration::from_secs(60), |r| {
        r["state"] == "Completed" || r["state"] == "Failed" || r["state"] == "Crashed"
    });
    assert_eq!(run["state"], "Completed", "{run}");
    for id in &done {
        let (_, detail) = server.get(&format!("/api/flow-runs/{id}"));
        assert_eq!(detail["flow_run"]["state"], "Completed", "{detail}");
        assert_eq!(detail["task_runs"].as_array().unwrap().len(), 3, "{detail}");
    }
}

/// A deployment's concurrency limit holds across servers: admission is
/// one step for all of them (an advisory lock), not one per process.
#[test]
fn a_deployment_limit_holds_across_two_servers_triggered_at_once() {
    let Some(url) = database() else {
        return;
    };
    let a = server_on(&url, &[]);
    let b = server_on(&url, &[]);
    let digest = a.upload(FIXTURE_WASM);
    a.deploy(
        "one-at-a-time",
        json!({
            "name": "one-at-a-time",
            "component": digest,
            "flow": "slow_sequential",
            "params": { "n": 1, "ms": 5 },
            "concurrency_limit": 1,
        }),
    );
    let ids: Vec<String> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..12)
            .map(|i| {
                let server = if i % 2 == 0 { &a } else { &b };
                scope.spawn(move || {
                    let (status, started) =
                        server.send("POST", "/api/deployments/one-at-a-time/runs", json!({}));
                    assert_eq!(status, 202, "{started}");
                    started["flow_run_id"].as_str().unwrap().to_string()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut spans: Vec<(i64, i64)> = ids
        .iter()
        .map(|id| {
            let run = wait_for_run(&a, id, Duration::from_secs(120), |r| {
                r["state"] == "Completed" || r["state"] == "Failed"
            });
            assert_eq!(run["state"], "Completed", "{run}");
            (
                run["started_at"].as_i64().unwrap(),
                run["ended_at"].as_i64().unwrap(),
            )
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two runs of a limit-1 deployment overlapped: {pair:?}"
        );
    }
}

/// A cancel asked through one server reaches the run on another: the
/// request is a row both read, and the run ends `Cancelled` with the tasks
/// it finished; a run that waits is cancelled at once through either.
#[test]
fn a_cancel_through_one_server_stops_a_run_on_the_other() {
    let Some(url) = database() else {
        return;
    };
    let a = server_on(&url, &[]);
    let b = server_on(&url, &[]);
    let digest = a.upload(FIXTURE_WASM);
    // Started through `a`, which runs it; cancelled through `b`.
    let id = start_fixture_run(
        &a,
        &digest,
        "slow_sequential",
        json!({ "n": 200, "ms": 50 }),
    );
    a.wait_for_completed_tasks(&id, 2);
    let (status, asked) = b.send("POST", &format!("/api/flow-runs/{id}/cancel"), json!({}));
    assert_eq!(status, 200, "{asked}");
    let run = wait_for_run(&a, &id, Duration::from_secs(60), |r| {
        r["state"] == "Cancelled" || r["state"] == "Completed" || r["state"] == "Failed"
    });
    assert_eq!(run["state"], "Cancelled", "{run}");
    let (_, detail) = b.get(&format!("/api/flow-runs/{id}"));
    let finished = detail["task_runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "Completed")
        .count();
    assert!(
        (2..200).contains(&finished),
        "stopped part way, its finished calls kept: {finished}"
    );
}

/// Components come from the database to a server that never saw the
/// upload, and are checked against their digest there: bytes damaged in
/// the database are refused, never served or run under that name.
#[test]
fn a_component_damaged_in_the_database_is_refused_by_the_server_that_reads_it() {
    let Some(url) = database() else {
        return;
    };
    let a = server_on(&url, &[]);
    let b = server_on(&url, &[]);
    let digest = a.upload(FIXTURE_WASM);
    TestCluster::shared()
        .unwrap()
        .psql(
            &url,
            "UPDATE component_blobs SET wasm = set_byte(wasm, 100, (get_byte(wasm, 100) + 1) % 256)",
        )
        .unwrap();
    let (status, refused) = b.get(&format!("/api/components/{digest}/wasm"));
    assert_eq!(status, 500, "the damaged bytes were served");
    assert_eq!(refused["error"], "component_damaged", "{refused}");
    let (status, refused) = b.send(
        "POST",
        &format!("/api/components/{digest}/flows/sequential/runs"),
        json!({ "params": { "n": 1 } }),
    );
    assert_ne!(status, 202, "a damaged component was run: {refused}");
    assert_eq!(refused["error"], "component_damaged", "{refused}");
    // The server that took the upload has its own good copy.
    let (status, _) = a.get(&format!("/api/components/{digest}/wasm"));
    assert_eq!(status, 200);
}
