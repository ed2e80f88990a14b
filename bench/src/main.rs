//! Foundation benchmark: how much a recorded task costs.
//!
//! Runs the fixture guest's `sequential(n)` and `fan_out(n)` flows (each task
//! adds two numbers) with full recording in SQLite, and measures cold compile,
//! cached load, database bytes per task run and peak RSS. Prints a table and
//! writes JSON (default `target/bench/foundation.json`).
//!
//! Run with `cargo run --release -p bench` (or `just bench`). Figures from one
//! run are comparable with each other; the machine is shared, so compare ratios.

use serde_json::json;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_host::clock::SystemClock;
use weir_host::config::Paths;
use weir_host::control::Control;
use weir_host::engine::{Engine, EngineConfig, Entry, GuestHost, NullHost};
use weir_host::model::{Limits, RunState};
use weir_host::store::{Store, StoreTable};
use weir_host::worker::{Executor, ExecutorSettings, FlowRunRequest};

fn main() {
    let out = std::env::args()
        .skip_while(|a| a != "--out")
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| weir_tests::workspace().join("target/bench/foundation.json"));
    let quick = std::env::args().any(|a| a == "--quick");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = runtime.block_on(run_all(quick));
    print_table(&results);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&out, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    println!("\nwrote {}", out.display());
}

async fn run_all(quick: bool) -> serde_json::Value {
    let bytes = std::fs::read(weir_tests::FIXTURE_WASM).expect("fixture guest");
    let home = tempfile::tempdir().unwrap();
    let paths = Paths::at(home.path());

    // Cold compile (no cache) versus load from the on-disk artifact cache.
    let cold_engine = Engine::new(EngineConfig::default()).unwrap();
    let t = Instant::now();
    cold_engine.load(&bytes).await.unwrap();
    let cold_compile = t.elapsed();
    drop(cold_engine);
    let engine = Arc::new(
        Engine::new(EngineConfig {
            cache_dir: Some(paths.compile_cache()),
            ..EngineConfig::default()
        })
        .unwrap(),
    );
    engine.load(&bytes).await.unwrap(); // fills the cache
    let mut cached_loads = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let component = engine.load(&bytes).await.unwrap();
        cached_loads.push(t.elapsed());
        assert!(matches!(
            component.load,
            weir_host::engine::LoadKind::Cached { .. }
        ));
    }
    let cached_load = median(&mut cached_loads);
    let component = engine.load(&bytes).await.unwrap();

    // The sandbox alone: instantiate + call a trivial task, nothing recorded.
    let n_raw = if quick { 2_000 } else { 20_000 };
    let host: Arc<dyn GuestHost> = Arc::new(NullHost);
    let limits = Limits {
        fuel: 10_000_000,
        memory_bytes: 64 << 20,
        timeout: Some(Duration::from_secs(10)),
    };
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
    let raw = t.elapsed();

    let store = Arc::new(Store::open(&paths.database()).unwrap());
    let control = Arc::new(Control::new(store.clone(), Arc::new(SystemClock)));
    let executor = Executor::new(engine.clone(), control, ExecutorSettings::default());
    let db_before = db_bytes(&paths);
    let tasks_before = store.count(StoreTable::TaskRuns).unwrap();

    let sizes: &[u64] = if quick { &[1_000] } else { &[1_000, 10_000] };
    let mut flows = Vec::new();
    for &n in sizes {
        for flow in ["sequential", "fan_out"] {
            let request =
                FlowRunRequest::new(component.clone(), flow, json!({ "n": n }).to_string());
            let t = Instant::now();
            let outcome = executor.run_flow(request).await.unwrap();
            let took = t.elapsed();
            assert_eq!(outcome.state, RunState::Completed, "{:?}", outcome.result);
            assert_eq!(outcome.summary.tasks, n);
            flows.push(json!({
                "flow": flow,
                "tasks": n,
                "seconds": took.as_secs_f64(),
                "tasks_per_second": n as f64 / took.as_secs_f64(),
                "per_task_us": took.as_secs_f64() * 1e6 / n as f64,
            }));
        }
    }
    store.close();
    let tasks = store.count(StoreTable::TaskRuns).unwrap() - tasks_before;
    let db_per_task = (db_bytes(&paths) - db_before) as f64 / tasks as f64;

    // Cache hits: the first call runs, every later one is served from the record.
    let store = Arc::new(Store::open(&paths.database()).unwrap());
    let control = Arc::new(Control::new(store.clone(), Arc::new(SystemClock)));
    let executor = Executor::new(engine.clone(), control, ExecutorSettings::default());
    let hits: u64 = if quick { 1_000 } else { 10_000 };
    let t = Instant::now();
    let outcome = executor
        .run_flow(FlowRunRequest::new(
            component.clone(),
            "cached_repeat",
            json!({ "n": hits }).to_string(),
        ))
        .await
        .unwrap();
    let cache_hit_us = t.elapsed().as_secs_f64() * 1e6 / hits as f64;
    assert_eq!(outcome.summary.cached, hits - 1);

    // Replay: attempt 1 runs n calls and fails; attempt 2 replays them from the record.
    let n_replay: u64 = if quick { 1_000 } else { 10_000 };
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
    let replay_seconds = (end - second_start) as f64 / 1e6;
    store.close();

    json!({
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "component_bytes": bytes.len(),
        "cold_compile_ms": cold_compile.as_secs_f64() * 1e3,
        "cached_load_ms": cached_load.as_secs_f64() * 1e3,
        "sandbox_only": {
            "tasks": n_raw,
            "tasks_per_second": n_raw as f64 / raw.as_secs_f64(),
            "per_task_us": raw.as_secs_f64() * 1e6 / n_raw as f64,
        },
        "recorded_flows": flows,
        "db_bytes_per_task_run": db_per_task,
        "cache_hit_us": cache_hit_us,
        "replay": { "calls": n_replay, "seconds": replay_seconds, "calls_per_second": n_replay as f64 / replay_seconds },
        "peak_rss_mb": peak_rss_kb() as f64 / 1024.0,
        "host_version_ms": host_version_ms(),
    })
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
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
                .map(|l| l.to_string())
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// Median wall time of `host version`, if the release binary is built.
fn host_version_ms() -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let host = exe.parent()?.join("host");
    if !host.exists() {
        return None;
    }
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let status = Command::new(&host).arg("version").output().ok()?.status;
        times.push(t.elapsed());
        if !status.success() {
            return None;
        }
    }
    Some(median(&mut times).as_secs_f64() * 1e3)
}

fn print_table(r: &serde_json::Value) {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "Weir foundation benchmark ({} cores)\n",
        r["machine"]["cores"]
    );
    println!(
        "{:<44} {:>14}",
        "component size",
        format!("{} KB", r["component_bytes"].as_u64().unwrap_or(0) / 1024)
    );
    println!(
        "{:<44} {:>11.1} ms",
        "cold compile",
        f(&r["cold_compile_ms"])
    );
    println!(
        "{:<44} {:>11.2} ms   (target <= 5 ms)",
        "cached load (median of 20)",
        f(&r["cached_load_ms"])
    );
    let s = &r["sandbox_only"];
    println!(
        "{:<44} {:>9.0} /s   {:.1} us/task",
        format!("sandbox only, {} tasks", s["tasks"]),
        f(&s["tasks_per_second"]),
        f(&s["per_task_us"])
    );
    for flow in r["recorded_flows"].as_array().into_iter().flatten() {
        println!(
            "{:<44} {:>9.0} /s   {:.1} us/task   (target >= 10,000 /s)",
            format!(
                "recorded {} {} tasks",
                flow["flow"].as_str().unwrap_or(""),
                flow["tasks"]
            ),
            f(&flow["tasks_per_second"]),
            f(&flow["per_task_us"])
        );
    }
    println!(
        "{:<44} {:>12.0} B   (target <= 1,024 B)",
        "database bytes per task run",
        f(&r["db_bytes_per_task_run"])
    );
    println!(
        "{:<44} {:>11.1} us   (target <= 50 us)",
        "cache hit (a call served from the record)",
        f(&r["cache_hit_us"])
    );
    println!(
        "{:<44} {:>9.0} /s   (target >= 50,000 /s)",
        format!("replay of {} completed calls", r["replay"]["calls"]),
        f(&r["replay"]["calls_per_second"])
    );
    println!("{:<44} {:>11.1} MB", "peak RSS", f(&r["peak_rss_mb"]));
    match r["host_version_ms"].as_f64() {
        Some(ms) => println!(
            "{:<44} {:>11.1} ms   (target <= 20 ms)",
            "`host version` (median of 20)", ms
        ),
        None => println!(
            "{:<44} {:>14}",
            "`host version`", "skipped: build with --release -p host first"
        ),
    }
}
