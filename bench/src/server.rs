//! `server`: the release `host` binary as users run it, over loopback.
//!
//! Start to healthy; idle memory three ways (empty home, one component
//! uploaded and run, after a burst of runs) and after 100k task runs; API
//! trigger → Running observed as a state change by a client polling the run
//! (embedded executor, a named queue, a remote host); flows per second
//! through the API; whole-process CLI commands that do work.

use crate::http::{Server, start_remote, stop};
use crate::report::{Figure, Report, at_least, at_most, percentile};
use crate::{Options, secs_since};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const S: &str = "server";

pub fn run(options: &Options, report: &mut Report, host: &Path) {
    // Start to healthy, on a fresh home each time; idle RSS of that empty server.
    let mut starts = Vec::new();
    let mut empty_rss = Vec::new();
    for _ in 0..options.runs.max(3) {
        let t = Instant::now();
        let server = Server::start(host, &[]);
        while server.get("/api/health").0 != 200 {
            std::thread::sleep(Duration::from_micros(200));
        }
        starts.push(secs_since(t) * 1e3);
        empty_rss.push(server.settled_rss_mb());
    }
    report.push(
        Figure::new(S, "server start to healthy (fresh home)", "ms")
            .samples(starts)
            .target(at_most(300.0)),
    );
    report.push(
        Figure::new(S, "idle RSS, empty home", "MB")
            .samples(empty_rss)
            .target(at_most(40.0)),
    );

    // One server for the rest: upload, run once, idle; then trigger latency,
    // a burst, idle again, then 100k task runs.
    let server = Server::start(host, &[]);
    let digest = server.upload_fixture();
    server.deploy_task("add", &digest, "add", json!({"a": 1, "b": 2}), json!({}));
    server.deploy_task("nap", &digest, "sleeper", json!({"ms": 100}), json!({}));
    let (status, reply) = server.send(
        "POST",
        "/api/work-pools/wasm/queues",
        json!({"name": "fast", "priority": 1}),
    );
    assert!(status < 300, "queue: {status} {reply}");
    server.deploy_task(
        "nap-queued",
        &digest,
        "sleeper",
        json!({"ms": 100}),
        json!({"work_queue": "fast"}),
    );
    let id = server.trigger("add");
    server.wait_final(&id, Duration::from_secs(60));
    report.push(
        Figure::new(S, "idle RSS, one component uploaded and run", "MB")
            .one(server.idle_rss_mb())
            .target(at_most(40.0))
            .note("idle 2 s: freed heap and the binary's code go back after an idle second; the mapped component, the instance pool's resident pages and heap in use stay"),
    );

    let n = if options.quick { 30 } else { 100 };
    let latencies = trigger_to_running(&server, "nap", n);
    push_latency(
        report,
        "trigger → Running, embedded executor",
        &latencies,
        10.0,
    );
    let latencies = trigger_to_running(&server, "nap-queued", n);
    push_latency(report, "trigger → Running, queue 'fast'", &latencies, 10.0);

    let burst = if options.quick { 200 } else { 1000 };
    let mut rates = Vec::new();
    for _ in 0..options.runs {
        rates.push(run_burst(&server, "add", burst).completed_per_second);
    }
    report.push(
        Figure::new(
            S,
            format!("flows/s through the API, {burst} at once, embedded"),
            "/s",
        )
        .samples(rates)
        .target(at_least(300.0)),
    );
    report.push(
        Figure::new(S, "idle RSS after the bursts", "MB")
            .one(server.idle_rss_mb())
            .note("idle 2 s; see docs/performance.md"),
    );
    let tasks = if options.quick { 10_000 } else { 100_000 };
    let (status, started) = server.send(
        "POST",
        &format!("/api/components/{digest}/flows/sequential/runs"),
        json!({"params": {"n": tasks}}),
    );
    assert_eq!(status, 202, "{started}");
    let id = started["flow_run_id"].as_str().unwrap().to_string();
    let t = Instant::now();
    let detail = server.wait_final(&id, Duration::from_secs(600));
    assert_eq!(
        detail["flow_run"]["state"], "Completed",
        "{}",
        detail["flow_run"]
    );
    let through_server = tasks as f64 / secs_since(t);
    report.push(
        Figure::new(S, format!("RSS after a {tasks}-task run, settled"), "MB")
            .one(server.settled_rss_mb()),
    );
    report.push(
        Figure::new(S, format!("{tasks}-task sequential flow via the API"), "/s")
            .one(through_server),
    );
    drop(server);

    // The same through remote hosts (`host run --pool`), two of them.
    let server = Server::start(host, &["--no-worker"]);
    let digest = server.upload_fixture();
    server.deploy_task("add", &digest, "add", json!({"a": 1, "b": 2}), json!({}));
    server.deploy_task("nap", &digest, "sleeper", json!({"ms": 100}), json!({}));
    let mut hosts: Vec<_> = ["h1", "h2"]
        .iter()
        .map(|name| start_remote(host, &server.url, name, &[]))
        .collect();
    // One run each first: every host fetches and compiles the component once.
    for _ in 0..4 {
        let id = server.trigger("add");
        server.wait_final(&id, Duration::from_secs(60));
    }
    // Idle means nothing for a while: a host gives freed heap back after
    // one second without runs (`IDLE_AFTER`), not between two runs.
    std::thread::sleep(Duration::from_secs(2));
    // The larger of the two: four runs in a row may all go to one host,
    // and the other one has then never run anything.
    let (idle_rss, pid) = hosts
        .iter()
        .map(|(child, _)| (crate::http::settled_rss_mb(child.id()), child.id()))
        .fold(
            (0.0, 0),
            |most, next| if next.0 > most.0 { next } else { most },
        );
    let (anon, file) = crate::http::rss_split_mb(pid);
    report.push(
        Figure::new(S, "remote host idle RSS (after its first run)", "MB")
            .one(idle_rss)
            .target(at_most(20.0))
            .note(format!(
                "{anon:.1} MB its own (heap, compiled component), {file:.1} MB the binary's code and data mapped from disk"
            )),
    );
    // The idle hosts dropped their compiled components: the first claim
    // loads one again from the host's compiled cache.
    let after_drop = trigger_to_running(&server, "nap", 1);
    report.push(
        Figure::new(
            S,
            "trigger → Running, remote host that dropped its compiled state",
            "ms",
        )
        .samples(after_drop)
        .note("the first claim after an idle second: the component is mapped from the host's cache and described again"),
    );
    let latencies = trigger_to_running(&server, "nap", n);
    push_latency(report, "trigger → Running, remote host", &latencies, 5.0);
    let mut rates = Vec::new();
    for _ in 0..options.runs {
        rates.push(run_burst(&server, "add", burst).completed_per_second);
    }
    report.push(
        Figure::new(
            S,
            format!("flows/s through the API, {burst} at once, 2 remote hosts"),
            "/s",
        )
        .samples(rates)
        .target(at_least(300.0)),
    );
    for (child, _) in &mut hosts {
        stop(child);
    }
    // The same two hosts asking for one run per claim, as before batched
    // claims: the A/B of batching, measured in the same sitting.
    let mut hosts: Vec<_> = ["s1", "s2"]
        .iter()
        .map(|name| start_remote(host, &server.url, name, &["--claim-batch", "1"]))
        .collect();
    for _ in 0..4 {
        let id = server.trigger("add");
        server.wait_final(&id, Duration::from_secs(60));
    }
    let mut single = Vec::new();
    for _ in 0..options.runs {
        single.push(run_burst(&server, "add", burst).completed_per_second);
    }
    report.push(
        Figure::new(
            S,
            format!("flows/s through the API, {burst} at once, 2 remote hosts, one run per claim"),
            "/s",
        )
        .samples(single)
        .note("--claim-batch 1: the row above asks for all free slots in one claim"),
    );
    for (child, _) in &mut hosts {
        stop(child);
    }
    drop(server);

    // Whole processes that do work (`host version` prints literals: it is
    // the cold start of the binary only).
    let version = time_command(host, &["version"], 20, None);
    report.push(
        Figure::new(S, "`host version` (process start)", "ms")
            .samples(version)
            .target(at_most(20.0)),
    );
    let home = tempfile::tempdir().unwrap();
    let fixture = weir_tests::FIXTURE_WASM;
    let args = ["flow", "run", fixture, "call", "--param", "task=add"];
    let args: Vec<&str> = args
        .into_iter()
        .chain(["--param", r#"input={"a":1,"b":2}"#])
        .collect();
    // The first run compiles the component into the home's cache.
    time_command(host, &args, 1, Some(home.path()));
    let one = time_command(host, &args, options.runs.max(5), Some(home.path()));
    report.push(
        Figure::new(S, "`host flow run` one flow, one task (process)", "ms")
            .samples(one)
            .note("process start, open the database, load the cached component, run, record, exit"),
    );
    let ls = time_command(
        host,
        &["flow-run", "ls"],
        options.runs.max(5),
        Some(home.path()),
    );
    report.push(Figure::new(S, "`host flow-run ls` (process, local database)", "ms").samples(ls));
}

/// Triggers `deployment` `n` times one after another and polls each new run
/// until the client sees it started (Running, or already past it: a remote
/// host reports its states in batches, so Running alone may never be seen):
/// the figure is what a user watching the run sees, not a timestamp the
/// server wrote. The deployment's task sleeps 100 ms so that Running lasts.
fn trigger_to_running(server: &Server, deployment: &str, n: usize) -> Vec<f64> {
    let mut latencies = Vec::new();
    for _ in 0..n {
        let sent = Instant::now();
        let id = server.trigger(deployment);
        let deadline = sent + Duration::from_secs(30);
        loop {
            let (_, run) = server.get(&format!("/api/flow-runs/{id}"));
            let state = run["flow_run"]["state"].as_str().unwrap_or_default();
            if state != "Scheduled" && state != "Pending" {
                assert!(
                    state == "Running" || state == "Completed",
                    "run {id}: {state}: {run}"
                );
                latencies.push(secs_since(sent) * 1e3);
                break;
            }
            assert!(Instant::now() < deadline, "run {id} never started");
        }
        server.wait_final(&id, Duration::from_secs(30));
    }
    latencies
}

fn push_latency(report: &mut Report, name: &str, samples: &[f64], p50_target: f64) {
    report.push(
        Figure::new(S, format!("{name}, p50"), "ms")
            .one(percentile(samples, 50.0))
            .target(at_most(p50_target)),
    );
    report.push(
        Figure::new(S, format!("{name}, p99 of {}", samples.len()), "ms")
            .one(percentile(samples, 99.0))
            .target(at_most(20.0)),
    );
}

/// One burst of runs through the API.
pub struct Burst {
    /// Triggers answered per second, from one client.
    pub accepted_per_second: f64,
    /// Runs triggered and then Completed per second, from the first trigger.
    pub completed_per_second: f64,
}

/// Triggers `deployment` `n` times as fast as one client can, then waits
/// until all have completed.
pub fn run_burst(server: &Server, deployment: &str, n: usize) -> Burst {
    let started = Instant::now();
    let ids: Vec<String> = (0..n).map(|_| server.trigger(deployment)).collect();
    let accepted_per_second = n as f64 / secs_since(started);
    for id in &ids {
        let detail = server.wait_final(id, Duration::from_secs(300));
        assert_eq!(detail["flow_run"]["state"], "Completed", "{detail}");
    }
    Burst {
        accepted_per_second,
        completed_per_second: n as f64 / secs_since(started),
    }
}

/// Runs `host ARGS` `times` times; returns each wall time in ms.
fn time_command(host: &Path, args: &[&str], times: usize, home: Option<&Path>) -> Vec<f64> {
    let scratch = tempfile::tempdir().unwrap();
    let home = home.unwrap_or(scratch.path());
    (0..times)
        .map(|_| {
            let t = Instant::now();
            let output = Command::new(host)
                .args(args)
                .env("WEIR_HOME", home)
                .env_remove("WEIR_API_URL")
                .env_remove("WEIR_API_KEY")
                .current_dir(home)
                .output()
                .unwrap();
            let ms = secs_since(t) * 1e3;
            assert!(
                output.status.success(),
                "host {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            ms
        })
        .collect()
}
