//! Polyglot benchmark: what a Python or JavaScript guest costs next to Rust.
//!
//! For each ETL twin (examples/etl, etl-python, etl-js): the build (first, and
//! reused from the build cache), the first start (compile the component) and
//! a second start in a fresh engine (load the compiled artifact from disk,
//! then describe()), and the per-task overhead: one trivial task
//! (`transform` of an empty chunk) instantiated and called in a fresh
//! sandbox, nothing recorded. Prints a table and writes JSON (default
//! `target/bench/polyglot.json`).
//!
//! Run with `cargo run --release -p bench --bin polyglot`. Toolchains are
//! installed on first use into `$WEIR_TOOLCHAINS`, default `target/weir-toolchains`.

use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_host::builder::{self, BuildDirs};
use weir_host::config::Paths;
use weir_host::engine::{Engine, EngineConfig, Entry, GuestHost, LoadKind, NullHost};
use weir_host::model::Limits;

/// Targets from issue 6.
const PYTHON_SECOND_LOAD_MS: f64 = 50.0;
const PYTHON_TASK_MS: f64 = 2.0;
const JS_TASK_MS: f64 = 1.0;

fn main() {
    let out = std::env::args()
        .skip_while(|a| a != "--out")
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| weir_tests::workspace().join("target/bench/polyglot.json"));
    let quick = std::env::args().any(|a| a == "--quick");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let toolchains = std::env::var_os("WEIR_TOOLCHAINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| weir_tests::workspace().join("target/weir-toolchains"));
    let mut rows = Vec::new();
    for (language, example) in [
        ("rust", "examples/etl"),
        ("python", "examples/etl-python"),
        ("javascript", "examples/etl-js"),
    ] {
        let path = weir_tests::workspace().join(example);
        rows.push(runtime.block_on(measure(language, &path, &toolchains, quick)));
    }
    let python = rows.iter().find(|r| r["language"] == "python").unwrap();
    let js = rows.iter().find(|r| r["language"] == "javascript").unwrap();
    let targets = json!({
        "python_second_load_ms": { "target": PYTHON_SECOND_LOAD_MS, "measured": python["second_load_ms"] },
        "python_task_ms": { "target": PYTHON_TASK_MS, "measured": python["task_ms"] },
        "js_task_ms": { "target": JS_TASK_MS, "measured": js["task_ms"] },
    });
    print_table(&rows, &targets);
    let results = json!({ "examples": rows, "targets": targets });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&out, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    println!("\nwrote {}", out.display());
}

async fn measure(
    language: &str,
    project: &Path,
    toolchains: &Path,
    quick: bool,
) -> serde_json::Value {
    let home = tempfile::tempdir().unwrap();
    let paths = Paths::at(home.path());
    let dirs = BuildDirs::new(&paths, Some(toolchains.to_path_buf()));

    let t = Instant::now();
    let built = builder::build(project, &dirs, false).expect("building the example");
    let first_build = t.elapsed();
    let t = Instant::now();
    builder::build(project, &dirs, false).unwrap();
    let second_build = t.elapsed();
    let bytes = std::fs::read(&built.wasm).unwrap();

    let config = EngineConfig {
        cache_dir: Some(paths.compile_cache()),
        ..EngineConfig::default()
    };
    // First start: nothing compiled yet.
    let engine = Engine::new(config.clone()).unwrap();
    let t = Instant::now();
    let component = engine.load(&bytes).await.unwrap();
    let first_load = t.elapsed();
    assert!(matches!(component.load, LoadKind::Compiled { .. }));
    drop((component, engine));

    // Second start: a fresh engine, as in a new process, finds the artifact.
    let mut second_loads = Vec::new();
    let mut artifact_loads = Vec::new();
    for _ in 0..5 {
        let engine = Engine::new(config.clone()).unwrap();
        let t = Instant::now();
        let component = engine.load(&bytes).await.unwrap();
        second_loads.push(t.elapsed());
        match component.load {
            LoadKind::Cached { millis } => artifact_loads.push(Duration::from_millis(millis)),
            LoadKind::Compiled { .. } => panic!("{language}: compiled again"),
        }
    }

    // Per-task overhead: fresh sandbox + a trivial task, sequentially.
    let engine = Engine::new(config).unwrap();
    let component = engine.load(&bytes).await.unwrap();
    let host: Arc<dyn GuestHost> = Arc::new(NullHost);
    let limits = Limits {
        fuel: 10_000_000_000,
        memory_bytes: 128 << 20,
        timeout: Some(Duration::from_secs(30)),
    };
    let n = match (language, quick) {
        ("python", true) => 100,
        ("python", false) => 1_000,
        (_, true) => 500,
        (_, false) => 5_000,
    };
    let entry = Entry::Task {
        name: "transform",
        input: r#"{"chunk":[]}"#,
    };
    for _ in 0..10 {
        let warm = engine
            .run(&component, entry, limits, host.clone(), Default::default())
            .await;
        let output = warm.result.expect("transform([])");
        let value: serde_json::Value = serde_json::from_str(&output).unwrap();
        assert_eq!(value, json!({"count": 0, "sum": 0}), "{language}");
    }
    let mut fuel = 0;
    let started = Instant::now();
    for _ in 0..n {
        let run = engine
            .run(&component, entry, limits, host.clone(), Default::default())
            .await;
        run.result.expect("transform([])");
        fuel = run.fuel_used;
    }
    let per_task = started.elapsed() / n;

    json!({
        "language": language,
        "example": project.strip_prefix(weir_tests::workspace()).unwrap_or(project),
        "component_bytes": bytes.len(),
        "first_build_ms": ms(first_build),
        "second_build_ms": ms(second_build),
        "first_load_ms": ms(first_load),
        "second_load_ms": ms(median(&mut second_loads)),
        "second_load_artifact_ms": ms(median(&mut artifact_loads)),
        "task_ms": ms(per_task),
        "task_fuel": fuel,
        "tasks_measured": n,
    })
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn print_table(rows: &[serde_json::Value], targets: &serde_json::Value) {
    println!(
        "{:<11} {:>10} {:>11} {:>11} {:>12} {:>12} {:>9}",
        "language", "component", "build 1st", "build 2nd", "start 1st", "start 2nd", "task"
    );
    for r in rows {
        let f = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<11} {:>8.1}MB {:>9.0}ms {:>9.1}ms {:>10.0}ms {:>10.1}ms {:>7.2}ms",
            r["language"].as_str().unwrap(),
            f("component_bytes") / 1e6,
            f("first_build_ms"),
            f("second_build_ms"),
            f("first_load_ms"),
            f("second_load_ms"),
            f("task_ms"),
        );
    }
    println!("\nstart = validate + compile (1st) or load the compiled artifact (2nd) + describe()");
    println!("task  = fresh sandbox + call of transform([]), nothing recorded");
    for (name, t) in targets.as_object().unwrap() {
        let (target, measured) = (
            t["target"].as_f64().unwrap(),
            t["measured"].as_f64().unwrap(),
        );
        let verdict = if measured <= target { "met" } else { "MISSED" };
        println!("target {name}: {measured} ms (≤ {target} ms) {verdict}");
    }
}
