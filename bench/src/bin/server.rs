//! Server benchmark: start to healthy, idle memory, API trigger to task
//! running, and listing runs from a large database. Drives the release `host`
//! binary over loopback. Prints a table and writes JSON (default
//! `target/bench/server.json`).
//!
//! Run with `cargo build --release -p host && cargo run --release -p bench --bin server`.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weir_host::model::{ComponentDigest, FlowRunId, RunState};
use weir_host::store::{NewFlowRun, Store, Write};

fn main() {
    let out = std::env::args()
        .skip_while(|a| a != "--out")
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| weir_tests::workspace().join("target/bench/server.json"));
    let quick = std::env::args().any(|a| a == "--quick");
    let host = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.join("host")))
        .filter(|h| h.exists())
        .expect("build the release host first: cargo build --release -p host");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();

    // Start to healthy, on a fresh home each time.
    let mut starts = Vec::new();
    let mut idle_rss_mb = 0.0;
    for i in 0..5 {
        let home = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let (mut child, url) = start(&host, home.path());
        while get(&agent, &format!("{url}/api/health")).0 != 200 {
            std::thread::sleep(Duration::from_micros(200));
        }
        starts.push(started.elapsed());
        if i == 0 {
            std::thread::sleep(Duration::from_millis(500));
            idle_rss_mb = rss_kb(child.id()) as f64 / 1024.0;
        }
        stop(&mut child);
    }

    // Trigger → first task running, on a warm server.
    let home = tempfile::tempdir().unwrap();
    let (mut child, url) = start(&host, home.path());
    deploy_adder(&agent, &url);
    let n = if quick { 20 } else { 100 };
    let (mut trigger, mut round_trip) = trigger_runs(&agent, &url, n);
    let burst = if quick { 200 } else { 1000 };
    let embedded_burst = burst_runs_per_second(&agent, &url, burst);
    stop(&mut child);

    // The same on a pool served by remote hosts (`host run --pool`).
    let home = tempfile::tempdir().unwrap();
    let (mut child, url) = start_with(&host, home.path(), &["--no-worker"]);
    deploy_adder(&agent, &url);
    let mut hosts: Vec<(Child, tempfile::TempDir)> = ["h1", "h2"]
        .iter()
        .map(|name| start_remote(&host, &url, name))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let remote_idle_rss_mb = rss_kb(hosts[0].0.id()) as f64 / 1024.0;
    // One run first: each host fetches and compiles the component once.
    trigger_runs(&agent, &url, 4);
    let (mut remote_trigger, _) = trigger_runs(&agent, &url, n);
    let remote_burst = burst_runs_per_second(&agent, &url, burst);
    std::thread::sleep(Duration::from_millis(500));
    let remote_busy_rss_mb = rss_kb(hosts[0].0.id()) as f64 / 1024.0;
    for (host, _) in &mut hosts {
        stop(host);
    }
    stop(&mut child);

    // Listing 100 of 100,000 runs.
    let rows = if quick { 20_000 } else { 100_000 };
    let home = tempfile::tempdir().unwrap();
    fill(&home.path().join("weir.db"), rows);
    let (mut child, url) = start(&host, home.path());
    let mut list = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        let (status, reply) = get(
            &agent,
            &format!("{url}/api/flow-runs?limit=100&offset={}", (i % 10) * 100),
        );
        list.push(t.elapsed());
        assert_eq!(status, 200);
        assert_eq!(reply["flow_runs"].as_array().unwrap().len(), 100);
    }
    let filtered = {
        let t = Instant::now();
        let (_, reply) = get(
            &agent,
            &format!("{url}/api/flow-runs?limit=100&state=Scheduled"),
        );
        assert_eq!(reply["flow_runs"].as_array().unwrap().len(), 100);
        t.elapsed()
    };
    stop(&mut child);

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let results = json!({
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) },
        "start_to_healthy_ms": { "median": ms(pct(&mut starts, 50)), "max": ms(pct(&mut starts, 100)) },
        "idle_rss_mb": idle_rss_mb,
        "trigger_to_task_running_ms": { "runs": n, "p50": ms(pct(&mut trigger, 50)), "p90": ms(pct(&mut trigger, 90)) },
        "trigger_to_completed_seen_ms": { "p50": ms(pct(&mut round_trip, 50)) },
        "remote_trigger_to_task_running_ms": { "runs": n, "p50": ms(pct(&mut remote_trigger, 50)),
            "p99": ms(pct(&mut remote_trigger, 99)) },
        "burst_runs_per_second": { "runs": burst, "embedded": embedded_burst, "two_remote_hosts": remote_burst },
        "remote_host_idle_rss_mb": remote_idle_rss_mb,
        "remote_host_rss_after_burst_mb": remote_busy_rss_mb,
        "list_100_runs_ms": { "database_runs": rows, "p50": ms(pct(&mut list, 50)), "p99": ms(pct(&mut list, 99)),
            "by_state_ms": ms(filtered) },
    });
    println!(
        "Weir server benchmark ({} cores)\n",
        results["machine"]["cores"]
    );
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "{:<48} {:>9.1} ms   (target <= 300 ms)",
        "start to healthy (median of 5)",
        f(&results["start_to_healthy_ms"]["median"])
    );
    println!(
        "{:<48} {:>9.1} MB   (target <= 40 MB)",
        "idle RSS", idle_rss_mb
    );
    println!(
        "{:<48} {:>9.2} ms   (target <= 10 ms p50; p90 {:.2} ms)",
        format!("API trigger to task running ({n} runs)"),
        f(&results["trigger_to_task_running_ms"]["p50"]),
        f(&results["trigger_to_task_running_ms"]["p90"])
    );
    println!(
        "{:<48} {:>9.2} ms   (target <= 5 ms p50; p99 {:.2} ms, target <= 20)",
        "API trigger to task running on a remote host",
        f(&results["remote_trigger_to_task_running_ms"]["p50"]),
        f(&results["remote_trigger_to_task_running_ms"]["p99"])
    );
    println!(
        "{:<48} {:>9.0} /s   (target >= 300/s; embedded executor {:.0}/s)",
        format!("{burst} runs at once, two remote hosts"),
        remote_burst,
        embedded_burst
    );
    println!(
        "{:<48} {:>9.1} MB   (target <= 20 MB; {remote_busy_rss_mb:.1} MB after the burst)",
        "remote host idle RSS", remote_idle_rss_mb
    );
    println!(
        "{:<48} {:>9.2} ms   (target <= 20 ms p99; p50 {:.2} ms)",
        format!("list 100 of {rows} runs, p99"),
        f(&results["list_100_runs_ms"]["p99"]),
        f(&results["list_100_runs_ms"]["p50"])
    );
    println!(
        "{:<48} {:>9.2} ms",
        "list 100 Scheduled runs (state filter)",
        ms(filtered)
    );
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&out, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    println!("\nwrote {}", out.display());
}

/// Uploads the fixture and deploys `add`: one trivial task per run.
fn deploy_adder(agent: &ureq::Agent, url: &str) {
    let wasm = std::fs::read(weir_tests::FIXTURE_WASM).unwrap();
    let (_, uploaded) = send(agent, "POST", &format!("{url}/api/components"), wasm);
    let digest = uploaded["digest"].as_str().unwrap().to_string();
    let deployment = json!({
        "name": "add", "component": digest, "flow": "call",
        "params": { "task": "add", "input": { "a": 1, "b": 2 } }
    });
    send(
        agent,
        "PUT",
        &format!("{url}/api/deployments/add"),
        deployment.to_string().into_bytes(),
    );
}

/// Triggers `add` `n` times one after another; returns (trigger → task
/// running, trigger → completed seen by the client).
fn trigger_runs(agent: &ureq::Agent, url: &str, n: usize) -> (Vec<Duration>, Vec<Duration>) {
    let mut trigger = Vec::new();
    let mut round_trip = Vec::new();
    for _ in 0..n {
        let t0 = now_micros();
        let sent = Instant::now();
        let (_, started) = send(
            agent,
            "POST",
            &format!("{url}/api/deployments/add/runs"),
            b"{}".to_vec(),
        );
        let id = started["flow_run_id"].as_str().unwrap().to_string();
        loop {
            let (_, detail) = get(agent, &format!("{url}/api/flow-runs/{id}"));
            let state = detail["flow_run"]["state"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if state == "Completed" {
                round_trip.push(sent.elapsed());
                let task_started = detail["task_runs"][0]["started_at"].as_i64().unwrap();
                trigger.push(Duration::from_micros((task_started - t0).max(0) as u64));
                break;
            }
            assert!(state != "Failed" && state != "Crashed", "{detail}");
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    (trigger, round_trip)
}

/// Triggers `add` `n` times at once; returns completed runs per second.
fn burst_runs_per_second(agent: &ureq::Agent, url: &str, n: usize) -> f64 {
    let before = completed_runs(agent, url);
    let started = Instant::now();
    for _ in 0..n {
        let (status, reply) = send(
            agent,
            "POST",
            &format!("{url}/api/deployments/add/runs"),
            b"{}".to_vec(),
        );
        assert_eq!(status, 202, "{reply}");
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while completed_runs(agent, url) < before + n {
        assert!(
            Instant::now() < deadline,
            "the burst did not finish in 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Completed runs, counted through the API's list.
fn completed_runs(agent: &ureq::Agent, url: &str) -> usize {
    let mut count = 0;
    let mut offset = 0;
    loop {
        let (_, page) = get(
            agent,
            &format!("{url}/api/flow-runs?state=Completed&limit=1000&offset={offset}"),
        );
        let got = page["flow_runs"].as_array().map_or(0, Vec::len);
        count += got;
        if got < 1000 {
            return count;
        }
        offset += 1000;
    }
}

/// A remote host (`host run --pool wasm`) with its own home.
fn start_remote(host: &Path, url: &str, name: &str) -> (Child, tempfile::TempDir) {
    let home = tempfile::tempdir().unwrap();
    let child = Command::new(host)
        .args([
            "run", "--pool", "wasm", "--slots", "8", "--api", url, "--name", name,
        ])
        .env("WEIR_HOME", home.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (child, home)
}

fn start(host: &Path, home: &Path) -> (Child, String) {
    start_with(host, home, &[])
}

fn start_with(host: &Path, home: &Path, extra: &[&str]) -> (Child, String) {
    // The server writes where it listens to its ready file once it serves.
    let ready = home.with_extension("ready.json");
    let _ = std::fs::remove_file(&ready);
    let child = Command::new(host)
        .args(["server", "start", "--addr", "127.0.0.1:0", "--ready-file"])
        .arg(&ready)
        .args(extra)
        .env("WEIR_HOME", home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            let ready: Value = serde_json::from_str(&text).unwrap();
            break ready["url"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the server was not ready in 30 s"
        );
        std::thread::sleep(Duration::from_micros(200));
    };
    (child, url)
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

fn get(agent: &ureq::Agent, url: &str) -> (u16, Value) {
    let request = ureq::http::Request::builder().uri(url).body(()).unwrap();
    match agent.run(request) {
        Ok(mut r) => (
            r.status().as_u16(),
            serde_json::from_slice(&r.body_mut().read_to_vec().unwrap_or_default())
                .unwrap_or(Value::Null),
        ),
        Err(_) => (0, Value::Null),
    }
}

fn send(agent: &ureq::Agent, method: &str, url: &str, body: Vec<u8>) -> (u16, Value) {
    // The server reads a body only with its type: JSON, or the component's bytes.
    let content_type = if url.ends_with("/api/components") {
        "application/wasm"
    } else {
        "application/json"
    };
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", content_type)
        .body(body)
        .unwrap();
    let mut r = agent.run(request).unwrap();
    let status = r.status().as_u16();
    let value = serde_json::from_slice(&r.body_mut().read_to_vec().unwrap()).unwrap_or(Value::Null);
    assert!(status < 300, "{method} {url}: {status} {value}");
    (status, value)
}

/// Writes `rows` flow runs straight into the database: Scheduled far ahead or
/// Pending, on a pool no executor serves, so the server leaves them alone.
fn fill(db: &Path, rows: usize) {
    let store = Store::open(db).unwrap();
    let digest = ComponentDigest::from_sha256([1; 32]);
    let base = now_micros() - rows as i64 * 1000;
    for chunk in 0..rows.div_ceil(5000) {
        let writes: Vec<Write> = (chunk * 5000..((chunk + 1) * 5000).min(rows))
            .map(|i| {
                Write::NewFlowRun(NewFlowRun {
                    id: FlowRunId::new(),
                    parent_flow_run: None,
                    component: digest.clone(),
                    flow_name: "etl".into(),
                    params: "{\"rows\":10}".into(),
                    state: if i % 2 == 0 {
                        RunState::Scheduled
                    } else {
                        RunState::Pending
                    },
                    attempt: 0,
                    host: "bench".into(),
                    at: base + i as i64 * 1000,
                    deployment: Some("nightly".into()),
                    tags: vec!["bench".into()],
                    scheduled_at: Some(i64::MAX / 2),
                    work_pool: Some("elsewhere".into()),
                    work_queue: Some("default".into()),
                    secret_grants: Vec::new(),
                    lease: None,
                })
            })
            .collect();
        store.submit(writes).wait_blocking().unwrap();
    }
    store.close();
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn pct(samples: &mut [Duration], p: usize) -> Duration {
    samples.sort();
    let i = (samples.len() * p / 100).min(samples.len() - 1);
    samples[i]
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}
