//! `prefect`: the same work on Prefect 3.9.1, in the same run, and the ratios.
//!
//! Creates a venv under the cargo target directory with `prefect==3.9.1`
//! from PyPI (when its pins do not resolve: the package without
//! dependencies, then its requirements one by one), starts `prefect server
//! start` on loopback with its own `PREFECT_HOME` (SQLite), and measures on
//! it what the `recording` and `server` scenarios measure on Weir: a trivial
//! 1,000-task flow (sequential and fan-out), one flow with one task as a
//! whole process, `prefect version`, server start to healthy and idle RSS,
//! database bytes per task run, and deployment trigger → Running observed by
//! a polling client. Without Python or the network it prints one line and
//! skips. Prefect's flows report to that server (its fastest durable setup);
//! Weir's in-process figures record to SQLite directly, as `host flow run` does.

use crate::Options;
use crate::http::settled_rss_mb;
use crate::report::{Figure, Report, percentile};
use crate::secs_since;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const S: &str = "prefect";
const VERSION: &str = "3.9.1";

/// The flows Prefect runs: `add` is the fixture guest's `add`.
const FLOWS_PY: &str = r#"
import json, sys, time
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

@task(cache_policy=NO_CACHE)
def add(a: int, b: int) -> int:
    return a + b

@flow
def sequential(n: int) -> int:
    total = 0
    for i in range(n):
        total += add(i, 1)
    return total

@flow
def fan_out(n: int) -> int:
    futures = [add.submit(i, 1) for i in range(n)]
    return sum(f.result() for f in futures)

@flow
def one() -> int:
    return add(1, 2)

if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "one":
        one()
        sys.exit(0)
    n, runs = int(sys.argv[2]), int(sys.argv[3])
    sequential(1)  # warm: imports, the client, the first flow run
    rates = []
    for _ in range(runs):
        t = time.perf_counter()
        (sequential if mode == "sequential" else fan_out)(n)
        rates.append(n / (time.perf_counter() - t))
    print(json.dumps(rates))
"#;

/// Serves a deployment whose flow naps long enough to be seen Running.
const SERVE_PY: &str = r#"
import time
from prefect import flow

@flow
def nap():
    time.sleep(0.5)

if __name__ == "__main__":
    nap.serve(name="nap")
"#;

/// Triggers the deployment and polls each run until it is seen Running.
const TRIGGER_PY: &str = r#"
import json, sys, time
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

n = int(sys.argv[1])
latencies = []
with get_client(sync_client=True) as client:
    deadline = time.time() + 120
    while True:
        try:
            client.read_deployment_by_name("nap/nap")
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    for _ in range(n):
        t = time.perf_counter()
        run = run_deployment("nap/nap", timeout=0)
        while True:
            state = client.read_flow_run(run.id).state
            if state is not None and state.type.value not in ("SCHEDULED", "PENDING"):
                break
            time.sleep(0.005)
        latencies.append((time.perf_counter() - t) * 1e3)
        while not client.read_flow_run(run.id).state.is_final():
            time.sleep(0.05)
print(json.dumps(latencies))
"#;

pub fn run(options: &Options, report: &mut Report) {
    let venv = crate::target_dir().join("prefect").join("venv");
    if let Err(why) = ensure_venv(&venv) {
        report.notes.push(format!("prefect: SKIPPED: {why}"));
        return;
    }
    let python = venv.join("bin/python");
    let prefect = venv.join("bin/prefect");
    let scratch = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("flows.py", FLOWS_PY),
        ("serve.py", SERVE_PY),
        ("trigger.py", TRIGGER_PY),
    ] {
        std::fs::write(scratch.path().join(name), text).unwrap();
    }

    // `prefect version` on a fresh home: the cold start of the CLI.
    let home = tempfile::tempdir().unwrap();
    let version: Vec<f64> = (0..options.runs.max(3))
        .map(|_| timed(Command::new(&prefect).arg("version"), home.path(), None))
        .collect();
    report.push(Figure::new(S, "`prefect version` (process start)", "ms").samples(version));

    // Server start to healthy and idle RSS (the process and its children).
    let mut starts = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..options.runs.min(2) {
        let home = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let server = PrefectServer::start(&prefect, home.path());
        starts.push(secs_since(t) * 1e3);
        idle.push(tree_rss_mb(server.child.id()));
    }
    report.push(Figure::new(S, "server start to healthy (fresh home)", "ms").samples(starts));
    report.push(Figure::new(S, "idle RSS, empty home (with children)", "MB").samples(idle));

    // Flows against one server; bytes per task run from its database.
    let home = tempfile::tempdir().unwrap();
    let server = PrefectServer::start(&prefect, home.path());
    let api = Some(server.api.as_str());
    let db = home.path().join("prefect.db");
    let before = file_bytes(&db);
    let n = 1_000;
    for mode in ["sequential", "fan_out"] {
        let output = run_python(
            Command::new(&python)
                .arg(scratch.path().join("flows.py"))
                .args([mode, &n.to_string(), &options.runs.to_string()]),
            home.path(),
            api,
        );
        match serde_json::from_str::<Vec<f64>>(output.trim()) {
            Ok(rates) => report
                .push(Figure::new(S, format!("recorded {mode}, {n} tasks"), "/s").samples(rates)),
            Err(_) => report
                .notes
                .push(format!("prefect: {mode} flow failed: {output}")),
        }
    }
    // Each flows.py run records 1 + runs × n task runs per mode.
    let task_runs = 2 * (1 + options.runs * n);
    let grown = file_bytes(&db).saturating_sub(before);
    report.push(
        Figure::new(S, "database bytes per task run", "B")
            .one(grown as f64 / task_runs as f64)
            .note("prefect.db + WAL growth over the flows above"),
    );
    let one: Vec<f64> = (0..options.runs.max(3))
        .map(|_| {
            timed(
                Command::new(&python)
                    .arg(scratch.path().join("flows.py"))
                    .arg("one"),
                home.path(),
                api,
            )
        })
        .collect();
    report.push(
        Figure::new(S, "one flow, one task (python process)", "ms")
            .samples(one)
            .note("against the running server"),
    );

    // Deployment trigger → Running: `flow.serve()` polls for runs.
    let mut serve = spawn_python(
        Command::new(&python).arg(scratch.path().join("serve.py")),
        home.path(),
        api,
    );
    let n_trigger = if options.quick { 3 } else { 10 };
    let output = run_python(
        Command::new(&python)
            .arg(scratch.path().join("trigger.py"))
            .arg(n_trigger.to_string()),
        home.path(),
        api,
    );
    let _ = serve.kill();
    let _ = serve.wait();
    match serde_json::from_str::<Vec<f64>>(output.trim()) {
        Ok(latencies) => {
            report.push(
                Figure::new(S, "deployment trigger → Running, p50", "ms")
                    .one(percentile(&latencies, 50.0))
                    .note("flow.serve() runner, poll every 1 s (default 10 s), a process per run"),
            );
            report.push(
                Figure::new(
                    S,
                    format!("deployment trigger → Running, p99 of {}", latencies.len()),
                    "ms",
                )
                .one(percentile(&latencies, 99.0)),
            );
        }
        Err(_) => report
            .notes
            .push(format!("prefect: trigger latency failed: {output}")),
    }
    drop(server);
    ratios(report);
}

/// Weir / Prefect side by side: how many times better Weir is (> 1 means Weir wins).
fn ratios(report: &mut Report) {
    let pairs: [(&str, &str, &str, &str, bool); 9] = [
        (
            "recorded sequential, 1,000 tasks (tasks/s)",
            "recording",
            "recorded sequential, 1000 tasks",
            "recorded sequential, 1000 tasks",
            true,
        ),
        (
            "recorded fan-out, 1,000 tasks (tasks/s)",
            "recording",
            "recorded fan_out, 1000 tasks",
            "recorded fan_out, 1000 tasks",
            true,
        ),
        (
            "one flow, one task, whole process",
            "server",
            "`host flow run` one flow, one task (process)",
            "one flow, one task (python process)",
            false,
        ),
        (
            "`version` cold start",
            "server",
            "`host version` (process start)",
            "`prefect version` (process start)",
            false,
        ),
        (
            "server start to healthy",
            "server",
            "server start to healthy (fresh home)",
            "server start to healthy (fresh home)",
            false,
        ),
        (
            "idle RSS, empty home",
            "server",
            "idle RSS, empty home",
            "idle RSS, empty home (with children)",
            false,
        ),
        (
            "database bytes per task run",
            "recording",
            "database bytes per task run",
            "database bytes per task run",
            false,
        ),
        (
            "deployment trigger → Running, p50",
            "server",
            "trigger → Running, embedded executor, p50",
            "deployment trigger → Running, p50",
            false,
        ),
        (
            "deployment trigger → Running, p99",
            "server",
            "trigger → Running, embedded executor, p99",
            "deployment trigger → Running, p99",
            false,
        ),
    ];
    let mut rows = Vec::new();
    for (what, weir_scenario, weir_name, prefect_name, higher_is_better) in pairs {
        let weir = find(report, weir_scenario, weir_name);
        let prefect = find(report, S, prefect_name);
        let (Some(weir), Some(prefect)) = (weir, prefect) else {
            continue;
        };
        let ratio = if higher_is_better {
            weir / prefect
        } else {
            prefect / weir
        };
        rows.push(
            json!({"figure": what, "weir": weir, "prefect": prefect, "weir_advantage": ratio}),
        );
        report.push(Figure::new("ratio", format!("Weir vs Prefect: {what}"), "×").one(ratio));
    }
    report
        .extra
        .insert("prefect_ratios".into(), Value::Array(rows));
}

/// The median of the figure named `name`, or else of the first whose name
/// starts with it (p99 figures name their sample count).
fn find(report: &Report, scenario: &str, name: &str) -> Option<f64> {
    report
        .find(scenario, name)
        .or_else(|| {
            report
                .figures
                .iter()
                .find(|f| f.scenario == scenario && f.name.starts_with(name))
        })
        .map(|f| f.median())
}

/// Creates the venv and installs Prefect once; later runs reuse it.
fn ensure_venv(venv: &Path) -> Result<(), String> {
    let python = venv.join("bin/python");
    let installed = |python: &Path| {
        Command::new(python)
            .args(["-c", "import prefect; print(prefect.__version__)"])
            .output()
            .is_ok_and(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == VERSION
            })
    };
    if python.exists() && installed(&python) {
        return Ok(());
    }
    let system = Command::new("python3")
        .arg("--version")
        .output()
        .map_err(|_| "python3 is not installed".to_string())?;
    if !system.status.success() {
        return Err("python3 does not run".into());
    }
    if !python.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(venv)
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!(
                "python3 -m venv {} failed (install python3-venv)",
                venv.display()
            ));
        }
    }
    let pip = |args: &[&str]| {
        eprintln!("   pip install {}", args.join(" "));
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    };
    let spec = format!("prefect=={VERSION}");
    if !pip(&[&spec]) {
        // Its pins did not resolve: the package alone, then each requirement.
        if !pip(&["--no-deps", &spec]) {
            return Err(format!(
                "pip could not install {spec} (no network, or PyPI unreachable)"
            ));
        }
        let requirements = Command::new(&python)
            .args([
                "-c",
                "import importlib.metadata as m\nfor r in m.requires('prefect') or []:\n    if 'extra ==' not in r: print(r.split(';')[0])",
            ])
            .output()
            .map_err(|e| e.to_string())?;
        for requirement in String::from_utf8_lossy(&requirements.stdout).lines() {
            if !pip(&[requirement.trim()]) {
                eprintln!("   could not install {requirement}; continuing");
            }
        }
    }
    if installed(&python) {
        Ok(())
    } else {
        Err(format!("{spec} installed but does not import"))
    }
}

struct PrefectServer {
    child: Child,
    api: String,
}

impl PrefectServer {
    fn start(prefect: &Path, home: &Path) -> PrefectServer {
        let port = free_port();
        let mut command = Command::new(prefect);
        command.args([
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ]);
        let child = with_env(&mut command, home, None)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prefect server start");
        let api = format!("http://127.0.0.1:{port}/api");
        let agent = crate::http::agent();
        let deadline = Instant::now() + Duration::from_secs(120);
        while crate::http::get(&agent, &format!("{api}/health")).0 != 200 {
            assert!(
                Instant::now() < deadline,
                "prefect server not healthy in 2 min"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        PrefectServer { child, api }
    }
}

impl Drop for PrefectServer {
    fn drop(&mut self) {
        // Its uvicorn runs in a child: end the whole group politely.
        crate::http::stop(&mut self.child);
        for pid in descendants(self.child.id()) {
            // SAFETY: signalling processes this benchmark started.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

fn with_env<'a>(command: &'a mut Command, home: &Path, api: Option<&str>) -> &'a mut Command {
    command
        .env("PREFECT_HOME", home)
        .env("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        .env("DO_NOT_TRACK", "1")
        .env("PREFECT_RUNNER_POLL_FREQUENCY", "1")
        .env("PREFECT_LOGGING_LEVEL", "WARNING")
        .env("PREFECT_SERVER_API_HOST", "127.0.0.1")
        .current_dir(home);
    match api {
        Some(api) => command.env("PREFECT_API_URL", api),
        None => command.env_remove("PREFECT_API_URL"),
    }
}

fn timed(command: &mut Command, home: &Path, api: Option<&str>) -> f64 {
    let t = Instant::now();
    let output = with_env(command, home, api).output().unwrap();
    let ms = secs_since(t) * 1e3;
    if !output.status.success() {
        eprintln!(
            "   {:?} failed: {}",
            command,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    ms
}

fn run_python(command: &mut Command, home: &Path, api: Option<&str>) -> String {
    let output = with_env(command, home, api).output().unwrap();
    if output.status.success() {
        String::from_utf8_lossy(&output.stdout).into_owned()
    } else {
        String::from_utf8_lossy(&output.stderr)
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

fn spawn_python(command: &mut Command, home: &Path, api: Option<&str>) -> Child {
    with_env(command, home, api)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn file_bytes(db: &Path) -> u64 {
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    [db.to_path_buf(), wal]
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// Every process below `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command may hold spaces; the parent is the 2nd field after ')'.
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
        {
            parents.push((child, ppid));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

fn tree_rss_mb(pid: u32) -> f64 {
    settled_rss_mb(pid)
        + descendants(pid)
            .into_iter()
            .map(|p| crate::http::rss_kb(p) as f64 / 1024.0)
            .sum::<f64>()
}
