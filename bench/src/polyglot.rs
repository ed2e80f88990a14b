//! `polyglot`: what a Python, JavaScript, C or C++ guest costs next to Rust.
//!
//! For each ETL twin (examples/etl, etl-python, etl-js, etl-c, etl-cpp): the build (first,
//! and reused from the build cache), cold compile of the component and a
//! cached load in a fresh engine (as in a new process), and the per-task
//! overhead: one trivial task (`transform` of an empty chunk) in a fresh
//! sandbox, nothing recorded. Toolchains are installed on first use into
//! `$WEIR_TOOLCHAINS`, default `<target>/weir-toolchains`; a language whose
//! toolchain cannot be installed (no network, no clang) is skipped with one
//! line. C's per-task target is Rust's figure of the same run plus 10 %
//! (issue 17); C++ is held to the same. That ratio is measured apart from the
//! per-language figures, in rounds that run Rust, C and C++ tasks in turn in
//! one engine: measured minutes apart, as the per-language figures are, the
//! load of a shared machine moved the ratio by more than the 10 % it judges
//! (57 % to 393 % in four runs, docs/performance.md).

use crate::Options;
use crate::report::{Figure, Report, at_most};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_host::builder::{self, BuildDirs};
use weir_host::config::Paths;
use weir_host::engine::{Component, Engine, EngineConfig, Entry, GuestHost, LoadKind, NullHost};
use weir_host::model::Limits;

const S: &str = "polyglot";
/// Generous: a trivial task is measured, not stopped.
const TASK_LIMITS: Limits = Limits {
    fuel: 10_000_000_000,
    memory_bytes: 128 << 20,
    timeout: Some(Duration::from_secs(30)),
};

pub async fn run(options: &Options, report: &mut Report) {
    let toolchains = std::env::var_os("WEIR_TOOLCHAINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::target_dir().join("weir-toolchains"));
    // The compiled twins' components, for the interleaved per-task rounds.
    let mut compiled: Vec<(&str, Vec<u8>)> = Vec::new();
    for (language, example, second_load, task) in [
        ("rust", "examples/etl", None, None),
        ("python", "examples/etl-python", Some(50.0), Some(2.0)),
        ("javascript", "examples/etl-js", None, Some(1.0)),
        ("c", "examples/etl-c", None, None),
        // C's and C++'s target is a ratio to Rust's: `per_task_ratios`.
        ("cpp", "examples/etl-cpp", None, None),
    ] {
        let path = weir_tests::workspace().join(example);
        let (r, wasm) = match measure(language, &path, &toolchains, options.quick).await {
            Ok(measured) => measured,
            Err(why) => {
                report
                    .notes
                    .push(format!("polyglot: {language} SKIPPED: {why}"));
                continue;
            }
        };
        let f = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
        if matches!(language, "rust" | "c" | "cpp") {
            compiled.push((language, wasm));
        }
        let kb = f("component_bytes") / 1024.0;
        report.push(
            Figure::new(S, format!("{language}: build, first"), "ms").one(f("first_build_ms")),
        );
        report.push(
            Figure::new(S, format!("{language}: build, cached"), "ms")
                .one(f("second_build_ms"))
                // Issue 17: a second build of an unchanged project is a cache hit.
                .target(if language == "rust" {
                    None
                } else {
                    at_most(100.0)
                }),
        );
        report.push(
            Figure::new(S, format!("{language}: cold compile ({kb:.0} KB)"), "ms")
                .one(f("first_load_ms")),
        );
        report.push(
            Figure::new(S, format!("{language}: cached load + describe"), "ms")
                .samples(
                    r["second_loads_ms"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(|v| v.as_f64())
                        .collect(),
                )
                .target(second_load.and_then(at_most)),
        );
        report.push(
            Figure::new(
                S,
                format!("{language}: trivial task in a fresh sandbox"),
                "ms",
            )
            .one(f("task_ms"))
            .target(task.and_then(at_most)),
        );
    }
    if compiled
        .first()
        .is_some_and(|(language, _)| *language == "rust")
        && compiled.len() > 1
    {
        per_task_ratios(&compiled, options.quick, report).await;
    }
}

/// The per-task overhead of C and C++ as a percentage of Rust's: rounds of
/// `n` trivial tasks of each language in turn, in one engine, each round's
/// ratio a sample, so a change of load hits both sides of a ratio alike.
async fn per_task_ratios(compiled: &[(&str, Vec<u8>)], quick: bool, report: &mut Report) {
    let engine = Engine::new(EngineConfig::default()).unwrap();
    let mut components = Vec::new();
    for (language, bytes) in compiled {
        components.push((*language, engine.load(bytes).await.unwrap()));
    }
    let (rounds, n) = if quick { (10, 200) } else { (30, 500) };
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); components.len()];
    let mut fuel = vec![0; components.len()];
    for round in 0..=rounds {
        let mut per_task_us = vec![0.0; components.len()];
        // Every other round backwards, so going first or last favours no one.
        let mut order: Vec<usize> = (0..components.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (elapsed, used) = trivial_tasks(&engine, &components[i].1, n).await;
            per_task_us[i] = elapsed.as_secs_f64() * 1e6 / f64::from(n);
            fuel[i] = used;
        }
        // Round 0 warms every instance slot and cache line; it is not kept.
        if round > 0 {
            for (i, us) in per_task_us.iter().enumerate() {
                ratios[i].push(100.0 * us / per_task_us[0]);
            }
        }
    }
    for (i, (language, _)) in components.iter().enumerate().skip(1) {
        report.push(
            Figure::new(S, format!("{language}: per-task overhead / rust's"), "%")
                .samples(std::mem::take(&mut ratios[i]))
                .target(at_most(110.0))
                .note(format!(
                    "{rounds} rounds of {n} tasks, in turn with Rust; fuel per task {} against Rust's {}",
                    fuel[i], fuel[0]
                )),
        );
    }
}

/// Runs `transform` of an empty chunk `n` times in fresh sandboxes: the time
/// taken and the fuel of the last task.
async fn trivial_tasks(engine: &Engine, component: &Component, n: u32) -> (Duration, u64) {
    let host: Arc<dyn GuestHost> = Arc::new(NullHost);
    let entry = Entry::Task {
        name: "transform",
        input: r#"{"chunk":[]}"#,
    };
    let mut fuel = 0;
    let started = Instant::now();
    for _ in 0..n {
        let run = engine
            .run(
                component,
                entry,
                TASK_LIMITS,
                host.clone(),
                Default::default(),
            )
            .await;
        run.result.expect("transform([])");
        fuel = run.fuel_used;
    }
    (started.elapsed(), fuel)
}

async fn measure(
    language: &str,
    project: &Path,
    toolchains: &Path,
    quick: bool,
) -> Result<(serde_json::Value, Vec<u8>), String> {
    let home = tempfile::tempdir().unwrap();
    let paths = Paths::at(home.path());
    let dirs = BuildDirs::new(&paths, Some(toolchains.to_path_buf()));

    let t = Instant::now();
    let built = builder::build(project, &dirs, false).map_err(|e| e.to_string())?;
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
    let host: Arc<dyn GuestHost> = Arc::new(NullHost);
    for _ in 0..10 {
        let warm = engine
            .run(
                &component,
                entry,
                TASK_LIMITS,
                host.clone(),
                Default::default(),
            )
            .await;
        let output = warm.result.expect("transform([])");
        let value: serde_json::Value = serde_json::from_str(&output).unwrap();
        assert_eq!(value, json!({"count": 0, "sum": 0}), "{language}");
    }
    let (elapsed, fuel) = trivial_tasks(&engine, &component, n).await;
    let per_task = elapsed / n;

    let measured = json!({
        "language": language,
        "example": project.strip_prefix(weir_tests::workspace()).unwrap_or(project),
        "component_bytes": bytes.len(),
        "first_build_ms": ms(first_build),
        "second_build_ms": ms(second_build),
        "first_load_ms": ms(first_load),
        "second_loads_ms": second_loads.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        "second_load_artifact_ms": ms(median(&mut artifact_loads)),
        "task_ms": ms(per_task),
        "task_us": per_task.as_secs_f64() * 1e6,
        "task_fuel": fuel,
        "tasks_measured": n,
    });
    Ok((measured, bytes))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}
