//! Weir's benchmark suite: one entry point, one table, one JSON file.
//!
//! `cargo run --release -p bench -- all` runs every scenario (and `just
//! bench` does the same after building the release `host`); `-- SCENARIO`
//! runs one. Each figure keeps every sample: the table prints the median and
//! the spread, the machine, the version and the commit, and the JSON goes to
//! `bench/results/<date>-<commit>.json` (or `--out FILE`). Figures from one
//! run are comparable with each other; the machine may be shared, so compare
//! ratios, and read the spread before the median.

mod backends;
mod drills;
mod growth;
mod http;
mod list;
mod polyglot;
mod prefect;
mod recording;
mod report;
mod scheduler;
mod server;
mod ui;

use report::Report;
use std::path::PathBuf;
use std::time::Instant;

/// Scenarios in the order `all` runs them.
const SCENARIOS: &[(&str, &str)] = &[
    (
        "recording",
        "tasks/s of one recorded flow (1k, 10k, 100k; sequential and fan-out), compile, load, cache hits, replay, bytes per task run",
    ),
    (
        "server",
        "start, idle RSS three ways, trigger → Running (embedded, queue, remote), flows/s via the API, CLI processes",
    ),
    (
        "list",
        "list runs through the API from 100k and 1M runs: first and deep pages, filters",
    ),
    (
        "polyglot",
        "Rust, Python, JavaScript, C and C++ components: build, cold compile, cached load, task overhead",
    ),
    (
        "backends",
        "SQLite and PostgreSQL side by side: recorded tasks/s, bytes per task run, flows/s through the API, list 100 of 1M",
    ),
    (
        "ui",
        "the web UI: run page of a 1,000-task run (time, bytes), dashboard over 100k runs",
    ),
    ("scheduler", "scheduler ticks over 1,000 cron deployments"),
    (
        "prefect",
        "the same work on Prefect 3.9.1 in a venv, and Weir/Prefect ratios",
    ),
];

pub struct Options {
    /// Repeats of each repeated measurement (`--runs N`, default 3).
    pub runs: usize,
    /// Smaller sizes, for a smoke run (`--quick`).
    pub quick: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        usage();
        return;
    }
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let quick = args.iter().any(|a| a == "--quick");
    let options = Options {
        runs: value_of("--runs")
            .and_then(|n| n.parse().ok())
            .unwrap_or(if quick { 2 } else { 3 })
            .max(1),
        quick,
    };
    let mut chosen: Vec<&str> = Vec::new();
    let mut skip_next = false;
    for a in &args {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        match a.as_str() {
            "--runs" | "--out" => skip_next = true,
            "--quick" => {}
            "all" => chosen.extend(SCENARIOS.iter().map(|(name, _)| *name)),
            "drills" => chosen.push("drills"),
            name if SCENARIOS.iter().any(|(n, _)| *n == name) => chosen.push(
                SCENARIOS
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(n, _)| *n)
                    .unwrap(),
            ),
            other => {
                eprintln!("unknown scenario or flag '{other}'\n");
                usage();
                std::process::exit(2);
            }
        }
    }
    if chosen.is_empty() {
        usage();
        std::process::exit(2);
    }
    chosen.dedup();

    let machine = report::machine();
    let mut report = Report::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    for scenario in &chosen {
        let t = Instant::now();
        eprintln!("== {scenario}");
        match *scenario {
            "recording" => runtime.block_on(recording::run(&options, &mut report)),
            "polyglot" => runtime.block_on(polyglot::run(&options, &mut report)),
            "scheduler" => scheduler::run(&options, &mut report),
            "prefect" => prefect::run(&options, &mut report),
            needs_host => match http::host_binary() {
                Some(host) if needs_host == "server" => server::run(&options, &mut report, &host),
                Some(host) if needs_host == "drills" => drills::run(&mut report, &host),
                Some(host) if needs_host == "ui" => ui::run(&options, &mut report, &host),
                Some(host) if needs_host == "backends" => {
                    runtime.block_on(backends::run(&options, &mut report, &host))
                }
                Some(host) => list::run(&options, &mut report, &host),
                None => report.notes.push(format!(
                    "{needs_host}: SKIPPED: build the release host first (cargo build --release -p host, or just bench)"
                )),
            },
        }
        eprintln!("   {scenario} took {:.0} s", secs_since(t));
    }
    growth::summarize(&mut report);
    report
        .notes
        .push(format!("whole run: {:.0} s", secs_since(started)));
    report.print(&machine);

    let out = value_of("--out").map(PathBuf::from).unwrap_or_else(|| {
        let date = &machine["date"].as_str().unwrap_or("unknown")[..10];
        let commit = machine["commit"].as_str().unwrap_or("unknown");
        weir_tests::workspace()
            .join("bench/results")
            .join(format!("{date}-{commit}.json"))
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let mut json = report.to_json(&machine);
    json["scenarios"] = serde_json::json!(chosen);
    json["options"] = serde_json::json!({"runs": options.runs, "quick": options.quick});
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap() + "\n").unwrap();
    println!("\nwrote {}", out.display());
}

fn usage() {
    eprintln!(
        "usage: cargo run --release -p bench -- all|SCENARIO... [--runs N] [--quick] [--out FILE]\n"
    );
    for (name, what) in SCENARIOS {
        eprintln!("  {name:<10} {what}");
    }
    eprintln!("  all        every scenario above, in that order");
    eprintln!(
        "  drills     the full drills (kill -9 mid 100 flows, 1,000 triggers, API fuzz, disk full)"
    );
}

pub fn secs_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// The cargo target directory this benchmark was built into (for the
/// Prefect venv and the guest toolchains: big, rebuildable, not in git).
pub fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| weir_tests::workspace().join("target"))
}
