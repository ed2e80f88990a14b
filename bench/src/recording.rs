//! `recording`: what a recorded task costs inside one flow, in process.
//!
//! Cold compile and cached load of the fixture component, a trivial task in a
//! fresh sandbox with nothing recorded, then the fixture's `sequential(n)`
//! and `fan_out(n)` flows (each task adds two numbers) recorded durably in
//! SQLite at 1k, 10k and 100k tasks, each size repeated; database bytes per
//! task run, cache hits and replay.

use crate::report::{Figure, Report, at_least, at_most};
use crate::{Options, secs_since};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_host::clock::SystemClock;
use weir_host::config::Paths;
use weir_host::control::Control;
use weir_host::engine::{Engine, EngineConfig, Entry, GuestHost, LoadKind, NullHost};
use weir_host::model::{Limits, RunState};
use weir_host::store::{Store, StoreTable};
use weir_host::worker::{Executor, ExecutorSettings, FlowRunRequest};

const S: &str = "recording";

pub async fn run(options: &Options, report: &mut Report) {
    let bytes = std::fs::read(weir_tests::FIXTURE_WASM).expect("fixture guest");
    let home = tempfile::tempdir().unwrap();
    let paths = Paths::at(home.path());

    // Cold compile (no cache) versus load from the on-disk artifact cache.
    let mut cold = Vec::new();
    for _ in 0..options.runs.min(3) {
        let engine = Engine::new(EngineConfig::default()).unwrap();
        let t = Instant::now();
        engine.load(&bytes).await.unwrap();
        cold.push(secs_since(t) * 1e3);
    }
    report.push(
        Figure::new(
            S,
            format!("cold compile ({} KB component)", bytes.len() / 1024),
            "ms",
        )
        .samples(cold),
    );
    let engine = Arc::new(
        Engine::new(EngineConfig {
            cache_dir: Some(paths.compile_cache()),
            ..EngineConfig::default()
        })
        .unwrap(),
    );
    engine.load(&bytes).await.unwrap(); // fills the cache
    let mut cached = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let component = engine.load(&bytes).await.unwrap();
        cached.push(secs_since(t) * 1e3);
        assert!(matches!(component.load, LoadKind::Cached { .. }));
    }
    report.push(
        Figure::new(S, "cached load", "ms")
            .samples(cached)
            .target(at_most(5.0)),
    );
    let component = engine.load(&bytes).await.unwrap();

    // The sandbox alone: instantiate + call a trivial task, nothing recorded.
    let n_raw = if options.quick { 2_000 } else { 20_000 };
    let host: Arc<dyn GuestHost> = Arc::new(NullHost);
    let limits = Limits {
        fuel: 10_000_000,
        memory_bytes: 64 << 20,
        timeout: Some(Duration::from_secs(10)),
    };
    let mut raw = Vec::new();
    for _ in 0..options.runs {
        let t = Instant::now();
        for _ in 0..n_raw {
            let e = engine
                .run(
                    &component,
                    Entry::Task {
                        name: "add",
                        input: r#"{"a":1,"b":2}"#,
                    },
                    limits,
                    host.clone(),
                    Default::default(),
                )
                .await;
            assert!(e.result.is_ok(), "{:?}", e.result);
        }
        raw.push(n_raw as f64 / secs_since(t));
    }
    report.push(
        Figure::new(
            S,
            format!("sandbox only (instantiate + call), {n_raw} tasks"),
            "/s",
        )
        .samples(raw),
    );

    let store = Arc::new(Store::open(&paths.database()).unwrap());
    let control = Arc::new(Control::new(store.clone(), Arc::new(SystemClock)));
    // A 100k fan-out submits every task before it awaits one: past the
    // default cap of 10,000 pending submits, which an operator may raise.
    let settings = ExecutorSettings {
        max_pending_submits: 100_000,
        ..ExecutorSettings::default()
    };
    let executor = Executor::new(engine.clone(), control, settings);
    let sizes: &[u64] = if options.quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 10_000, 100_000]
    };
    for &n in sizes {
        // 100k-task flows take tens of seconds each: fewer repeats.
        let repeats = if n >= 100_000 {
            options.runs.min(2)
        } else {
            options.runs
        };
        for (flow, target, why) in [
            (
                "sequential",
                15_000.0,
                "per task: a fresh sandbox (the row 'sandbox only') and one commit of its own (the promise: ~6 WAL pwrites, ~6 fcntl locks); short flows swing with the machine. See ARCHITECTURE.md, store/sqlite",
            ),
            (
                "fan_out",
                30_000.0,
                "~50 us of CPU a task over both cores (instantiation, slot reset, spawn, commits shared by the calls ready together): it moves with the machine's load. See docs/performance.md",
            ),
        ] {
            let mut rates = Vec::new();
            for _ in 0..repeats {
                let request =
                    FlowRunRequest::new(component.clone(), flow, json!({ "n": n }).to_string());
                let t = Instant::now();
                let outcome = executor.run_flow(request).await.unwrap();
                let took = secs_since(t);
                assert_eq!(outcome.state, RunState::Completed, "{:?}", outcome.result);
                assert_eq!(outcome.summary.tasks, n);
                rates.push(n as f64 / took);
            }
            let mut figure = Figure::new(S, format!("recorded {flow}, {n} tasks"), "/s")
                .samples(rates)
                .target(at_least(target));
            if figure.met() == Some(false) {
                figure = figure.note(why);
            }
            report.push(figure);
        }
    }
    report.push(
        Figure::new(S, "database bytes per task run", "B")
            .one(bytes_per_task_run(&engine, &component).await)
            .target(at_most(1024.0))
            .note("flow + task rows, state history, indexes; 10k-task flow in a fresh database"),
    );

    // Cache hits: the first call runs, every later one is served from the record.
    let hits: u64 = if options.quick { 1_000 } else { 10_000 };
    let mut hit_us = Vec::new();
    for _ in 0..options.runs {
        let t = Instant::now();
        let outcome = executor
            .run_flow(FlowRunRequest::new(
                component.clone(),
                "cached_repeat",
                json!({ "n": hits }).to_string(),
            ))
            .await
            .unwrap();
        hit_us.push(secs_since(t) * 1e6 / hits as f64);
        assert!(outcome.summary.cached >= hits - 1);
    }
    report.push(
        Figure::new(S, "cache hit (a call served from the record)", "us")
            .samples(hit_us)
            .target(at_most(50.0))
            .note("a hit is a looked-up row plus a Cached task run row, committed without waiting"),
    );

    // Replay: attempt 1 runs n calls and fails; attempt 2 replays them.
    let n_replay: u64 = if options.quick { 1_000 } else { 10_000 };
    let mut replay = Vec::new();
    for _ in 0..options.runs {
        let outcome = executor
            .run_flow(FlowRunRequest::new(
                component.clone(),
                "replay_probe",
                json!({ "n": n_replay }).to_string(),
            ))
            .await
            .unwrap();
        assert_eq!(outcome.state, RunState::Completed, "{:?}", outcome.result);
        assert_eq!(outcome.summary.replayed, n_replay);
        let history = store.state_history(outcome.id.0).unwrap();
        let second_start = history
            .iter()
            .rev()
            .find(|h| h.1 == RunState::Running)
            .unwrap()
            .0;
        let end = history.last().unwrap().0;
        replay.push(n_replay as f64 / ((end - second_start) as f64 / 1e6));
    }
    report.push(
        Figure::new(S, format!("replay of {n_replay} completed calls"), "/s")
            .samples(replay)
            .target(at_least(50_000.0))
            .note("the second attempt reads every recorded call and records each replayed one"),
    );
    store.close();
    metering(options, report, &bytes).await;
    report
        .push(Figure::new(S, "peak RSS of this process", "MB").one(peak_rss_kb() as f64 / 1024.0));
}

/// A CPU-bound task (`burn`, a tight xor loop) with fuel and epoch
/// interruption on, as Weir always runs, and off: what metering costs.
async fn metering(options: &Options, report: &mut Report, bytes: &[u8]) {
    let iterations: u64 = if options.quick { 5_000_000 } else { 50_000_000 };
    let input = json!({ "n": iterations }).to_string();
    let limits = Limits {
        fuel: u64::MAX / 2,
        memory_bytes: 64 << 20,
        timeout: Some(Duration::from_secs(120)),
    };
    let mut medians = Vec::new();
    for metering in [true, false] {
        let engine = Engine::new(EngineConfig {
            metering,
            ..EngineConfig::default()
        })
        .unwrap();
        let component = engine.load(bytes).await.unwrap();
        let host: Arc<dyn GuestHost> = Arc::new(NullHost);
        let mut ms = Vec::new();
        for _ in 0..options.runs {
            let t = Instant::now();
            let e = engine
                .run(
                    &component,
                    Entry::Task {
                        name: "burn",
                        input: &input,
                    },
                    limits,
                    host.clone(),
                    Default::default(),
                )
                .await;
            assert!(e.result.is_ok(), "{:?}", e.result);
            ms.push(secs_since(t) * 1e3);
        }
        let figure = Figure::new(
            S,
            format!(
                "CPU-bound task ({}M iterations), fuel + epochs {}",
                iterations / 1_000_000,
                if metering { "on" } else { "off" }
            ),
            "ms",
        )
        .samples(ms);
        medians.push(figure.median());
        report.push(figure);
    }
    report.push(
        Figure::new(S, "metering overhead on a CPU-bound task", "%")
            .one((medians[0] / medians[1] - 1.0) * 100.0),
    );
}

/// Runs `sequential(10000)` in a fresh home, closes the store (which
/// checkpoints the WAL) and divides the growth of the files by the task runs.
async fn bytes_per_task_run(engine: &Arc<Engine>, component: &weir_host::engine::Component) -> f64 {
    let home = tempfile::tempdir().unwrap();
    let paths = Paths::at(home.path());
    let store = Store::open(&paths.database()).unwrap();
    store.close();
    // Dropping the last connection checkpoints the WAL into the database file.
    drop(store);
    let empty = db_bytes(&paths);
    let store = Arc::new(Store::open(&paths.database()).unwrap());
    let control = Arc::new(Control::new(store.clone(), Arc::new(SystemClock)));
    let executor = Executor::new(engine.clone(), control, ExecutorSettings::default());
    let request = FlowRunRequest::new(component.clone(), "sequential", r#"{"n":10000}"#);
    let outcome = executor.run_flow(request).await.unwrap();
    assert_eq!(outcome.state, RunState::Completed);
    let tasks = store.count(StoreTable::TaskRuns).unwrap();
    drop(executor);
    store.close();
    drop(store);
    db_bytes(&paths).saturating_sub(empty) as f64 / tasks as f64
}

fn db_bytes(paths: &Paths) -> u64 {
    ["weir.db", "weir.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(paths.home().join(f)).ok())
        .map(|m| m.len())
        .sum()
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
