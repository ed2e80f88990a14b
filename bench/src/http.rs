//! Driving the release `host` binary over loopback: start a server on
//! 127.0.0.1:0, speak JSON to it, read a process's memory.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The release `host` beside this benchmark's own binary.
pub fn host_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.join("host")).filter(|h| h.exists())
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// A `host server start` with its own home, stopped (SIGTERM) on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
    /// Held so that the server's home lives as long as the server.
    _home: tempfile::TempDir,
    pub agent: ureq::Agent,
}

impl Server {
    pub fn start(host: &Path, extra: &[&str]) -> Server {
        Self::start_in(host, tempfile::tempdir().unwrap(), extra)
    }

    pub fn start_in(host: &Path, home: tempfile::TempDir, extra: &[&str]) -> Server {
        let (child, url) = start_server(host, home.path(), extra);
        Server {
            child,
            url,
            _home: home,
            agent: agent(),
        }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        get(&self.agent, &format!("{}{path}", self.url))
    }

    pub fn send(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        send(
            &self.agent,
            method,
            &format!("{}{path}", self.url),
            body.to_string().into_bytes(),
        )
    }

    /// Uploads the fixture component; returns its digest.
    pub fn upload_fixture(&self) -> String {
        let wasm = std::fs::read(weir_tests::FIXTURE_WASM).unwrap();
        let (status, uploaded) = send(
            &self.agent,
            "POST",
            &format!("{}/api/components", self.url),
            wasm,
        );
        assert!(status < 300, "upload: {status} {uploaded}");
        uploaded["digest"].as_str().unwrap().to_string()
    }

    /// Deploys one fixture task behind the `call` flow as `name`.
    pub fn deploy_task(&self, name: &str, digest: &str, task: &str, input: Value, extra: Value) {
        let mut deployment = json!({
            "name": name, "component": digest, "flow": "call",
            "params": { "task": task, "input": input }
        });
        if let (Some(d), Some(e)) = (deployment.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        let (status, reply) = self.send("PUT", &format!("/api/deployments/{name}"), deployment);
        assert!(status < 300, "deploy {name}: {status} {reply}");
    }

    /// Triggers deployment `name`; returns the new run's id.
    pub fn trigger(&self, name: &str) -> String {
        let (status, started) =
            self.send("POST", &format!("/api/deployments/{name}/runs"), json!({}));
        assert_eq!(status, 202, "{started}");
        started["flow_run_id"].as_str().unwrap().to_string()
    }

    /// Waits (bounded) until run `id` is in a final state; returns it.
    pub fn wait_final(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (_, detail) = self.get(&format!("/api/flow-runs/{id}"));
            let state = detail["flow_run"]["state"].as_str().unwrap_or_default();
            if matches!(
                state,
                "Completed" | "Failed" | "Crashed" | "Cancelled" | "TimedOut"
            ) {
                return detail;
            }
            assert!(Instant::now() < deadline, "run {id} did not end: {detail}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until the resident set stops moving (two readings 200 ms apart
    /// within 1%, at most 5 s), then returns it: one reading right after
    /// start catches the allocator mid-way.
    pub fn settled_rss_mb(&self) -> f64 {
        settled_rss_mb(self.child.id())
    }

    /// RSS once the server has been idle for [`IDLE`] (an idle server gives
    /// freed heap back after a second without run changes), then settled.
    pub fn idle_rss_mb(&self) -> f64 {
        std::thread::sleep(IDLE);
        settled_rss_mb(self.child.id())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// How long the idle-RSS rows let a server idle first.
pub const IDLE: Duration = Duration::from_secs(2);

pub fn settled_rss_mb(pid: u32) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = rss_kb(pid);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = rss_kb(pid);
        if now.abs_diff(last) * 100 <= last || Instant::now() > deadline {
            return now as f64 / 1024.0;
        }
        last = now;
    }
}

/// Starts a server and waits for its ready file; returns it and its URL.
pub fn start_server(host: &Path, home: &Path, extra: &[&str]) -> (Child, String) {
    let ready = home.with_extension("ready.json");
    let _ = std::fs::remove_file(&ready);
    let child = Command::new(host)
        .args(["server", "start", "--addr", "127.0.0.1:0", "--ready-file"])
        .arg(&ready)
        .args(extra)
        .env("WEIR_HOME", home)
        .env_remove("WEIR_API_URL")
        .env_remove("WEIR_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = wait_ready(&ready);
    (child, url)
}

pub fn wait_ready(ready: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(ready)
            && let Ok(ready) = serde_json::from_str::<Value>(&text)
        {
            return ready["url"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the server was not ready in 60 s"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A remote host (`host run --pool wasm`) with its own home.
pub fn start_remote(
    host: &Path,
    url: &str,
    name: &str,
    extra: &[&str],
) -> (Child, tempfile::TempDir) {
    let home = tempfile::tempdir().unwrap();
    let child = Command::new(host)
        .args([
            "run", "--pool", "wasm", "--slots", "8", "--api", url, "--name", name,
        ])
        .args(extra)
        .env("WEIR_HOME", home.path())
        .env_remove("WEIR_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (child, home)
}

pub fn stop(child: &mut Child) {
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub fn get(agent: &ureq::Agent, url: &str) -> (u16, Value) {
    let request = ureq::http::Request::builder().uri(url).body(()).unwrap();
    match agent.run(request) {
        Ok(mut r) => (
            r.status().as_u16(),
            serde_json::from_slice(
                &r.body_mut()
                    .with_config()
                    .limit(u64::MAX)
                    .read_to_vec()
                    .unwrap_or_default(),
            )
            .unwrap_or(Value::Null),
        ),
        Err(_) => (0, Value::Null),
    }
}

pub fn send(agent: &ureq::Agent, method: &str, url: &str, body: Vec<u8>) -> (u16, Value) {
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
    match agent.run(request) {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let bytes = r.body_mut().read_to_vec().unwrap_or_default();
            (
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        }
        Err(e) => (0, Value::String(e.to_string())),
    }
}

pub fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

/// A process's resident memory split into its own (anonymous: heap, stacks,
/// compiled code) and pages mapped from files (mostly the binary's code,
/// shared with every process that runs it), in MB.
pub fn rss_split_mb(pid: u32) -> (f64, f64) {
    (
        status_kb(pid, "RssAnon:") as f64 / 1024.0,
        status_kb(pid, "RssFile:") as f64 / 1024.0,
    )
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
