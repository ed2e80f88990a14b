//! A server process for integration tests: `host server start` on
//! 127.0.0.1:0 with its own `$WEIR_HOME`, spoken to over HTTP and by the CLI.
//! Shared by the test modules of the one test binary; each uses what it
//! needs.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use weir_tests::workspace;

/// A process's output as text, for messages and checks.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub const HOST: &str = env!("CARGO_BIN_EXE_host-under-test");

/// A server process with its own `$WEIR_HOME`; stopped with SIGTERM on drop.
pub struct TestServer {
    pub child: Child,
    pub url: String,
    pub home: std::sync::Arc<tempfile::TempDir>,
    pub key: Option<String>,
    pub agent: ureq::Agent,
    /// The server's ready file and log.
    _scratch: tempfile::TempDir,
    /// The arguments it was started with, for a restart.
    extra: Vec<String>,
}

/// Where a test server's log goes (a file beside its home unless given)
/// and what else its environment holds.
#[derive(Default)]
pub struct ServerOutput {
    pub stderr: Option<std::fs::File>,
    pub env: Vec<(String, String)>,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(&[], None)
    }

    pub fn with_key(key: &str) -> TestServer {
        Self::start_with(&[], Some(key))
    }

    pub fn start_with(extra: &[&str], key: Option<&str>) -> TestServer {
        Self::start_in(
            std::sync::Arc::new(tempfile::tempdir().unwrap()),
            extra,
            key,
        )
    }

    /// Kills the server with SIGKILL and starts another on the same home.
    pub fn kill_and_restart(mut self) -> TestServer {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let (home, key, extra) = (self.home.clone(), self.key.clone(), self.extra.clone());
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        Self::start_in(home, &extra, key.as_deref())
    }

    pub fn start_in(
        home: std::sync::Arc<tempfile::TempDir>,
        extra: &[&str],
        key: Option<&str>,
    ) -> TestServer {
        let weir_home = home.path().to_path_buf();
        Self::start_at(home, &weir_home, extra, key)
    }

    /// A server whose `$WEIR_HOME` is `weir_home` (which may not exist yet);
    /// `extra` may give its own `--addr`.
    pub fn start_at(
        home: std::sync::Arc<tempfile::TempDir>,
        weir_home: &std::path::Path,
        extra: &[&str],
        key: Option<&str>,
    ) -> TestServer {
        Self::launch(home, weir_home, extra, key, &[], ServerOutput::default())
    }

    /// A server whose stderr (its log) goes to `stderr`, with `env` set.
    pub fn start_logging_to(stderr: std::fs::File, env: &[(&str, &str)]) -> TestServer {
        let home = std::sync::Arc::new(tempfile::tempdir().unwrap());
        let weir_home = home.path().to_path_buf();
        let output = ServerOutput {
            stderr: Some(stderr),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        Self::launch(home, &weir_home, &[], None, &[], output)
    }

    /// A server on `home` that is PID 1 of a new PID namespace, as in a
    /// container; killing the launcher kills it.
    pub fn start_as_pid_1(home: std::sync::Arc<tempfile::TempDir>) -> TestServer {
        let weir_home = home.path().to_path_buf();
        let launcher = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];
        Self::launch(
            home,
            &weir_home,
            &[],
            None,
            &launcher,
            ServerOutput::default(),
        )
    }

    /// Starts `launcher... host server start ...` and waits until it is ready.
    pub fn launch(
        home: std::sync::Arc<tempfile::TempDir>,
        weir_home: &std::path::Path,
        extra: &[&str],
        key: Option<&str>,
        launcher: &[&str],
        output: ServerOutput,
    ) -> TestServer {
        let addr: &[&str] = if extra.contains(&"--addr") {
            &[]
        } else {
            &["--addr", "127.0.0.1:0"]
        };
        // The server says where it listens in a file it writes once ready;
        // its log goes beside it (outside its home), for when a test fails.
        let scratch = tempfile::tempdir().unwrap();
        let ready = scratch.path().join("ready.json");
        let log = match output.stderr {
            Some(file) => file,
            None => std::fs::File::create(scratch.path().join("server.log")).unwrap(),
        };
        let mut command = match launcher.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(HOST);
                command
            }
            None => Command::new(HOST),
        };
        command
            .args(["server", "start"])
            .args(addr)
            .arg("--ready-file")
            .arg(&ready)
            .args(extra)
            .env("WEIR_HOME", weir_home)
            .env_remove("WEIR_API_URL")
            .env_remove("WEIR_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .envs(output.env)
            .stderr(log);
        if let Some(key) = key {
            let file = home.path().join("keys.txt");
            std::fs::write(&file, format!("# test keys\n{key}\n")).unwrap();
            command.arg("--api-key-file").arg(&file);
        }
        let mut child = command.spawn().expect("starting the server");
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let ready: Value = serde_json::from_str(&text).unwrap();
                if launcher.is_empty() {
                    assert_eq!(ready["pid"], json!(child.id()), "{text}");
                }
                break ready["url"].as_str().unwrap().to_string();
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the server exited ({status}) before it was ready:\n{}",
                    std::fs::read_to_string(scratch.path().join("server.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the server was not ready in 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        TestServer {
            child,
            url,
            home,
            key: key.map(str::to_string),
            agent,
            _scratch: scratch,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        }
    }

    pub fn request(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> (u16, Value) {
        self.request_with_key(method, path, body, self.key.as_deref())
    }

    pub fn request_with_key(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        key: Option<&str>,
    ) -> (u16, Value) {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url));
        if body.is_some() {
            let media_type = if path == "/api/components" {
                "application/wasm"
            } else {
                "application/json"
            };
            request = request.header("content-type", media_type);
        }
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let request = request.body(body.unwrap_or_default()).unwrap();
        let mut response = self.agent.run(request).expect("the server answers");
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .unwrap();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, None)
    }

    /// Waits (at most a minute) until run `id` has `n` completed task runs.
    pub fn wait_for_completed_tasks(&self, id: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, detail) = self.get(&format!("/api/flow-runs/{id}"));
            let completed = detail["task_runs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["state"] == "Completed")
                .count();
            if completed >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the run never got going: {detail}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// PUTs a new deployment `name` and expects 201 (created).
    pub fn deploy(&self, name: &str, body: Value) {
        let (status, reply) = self.send("PUT", &format!("/api/deployments/{name}"), body);
        assert_eq!(status, 201, "{reply}");
    }

    /// POSTs an empty JSON object (pause, resume, ...) and expects 200.
    pub fn post_ok(&self, path: &str) -> Value {
        self.post_ok_status(path, 200)
    }

    /// POSTs an empty JSON object and expects `status`.
    pub fn post_ok_status(&self, path: &str, status: u16) -> Value {
        let (got, reply) = self.send("POST", path, json!({}));
        assert_eq!(got, status, "POST {path}: {reply}");
        reply
    }

    pub fn send(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        self.request(method, path, Some(body.to_string().into_bytes()))
    }

    pub fn upload(&self, wasm: &str) -> String {
        let (status, reply) = self.request(
            "POST",
            "/api/components",
            Some(std::fs::read(wasm).unwrap()),
        );
        assert!(status == 201 || status == 200, "{status} {reply}");
        reply["digest"].as_str().unwrap().to_string()
    }

    pub fn healthy(&self) {
        let (status, reply) = self.get("/api/health");
        assert_eq!((status, reply["status"].clone()), (200, json!("ok")));
    }

    /// Reads the run's event stream to its `end`; returns (events, final run).
    pub fn events(&self, id: &str) -> (Vec<(String, Value)>, Value) {
        let mut request =
            ureq::http::Request::builder().uri(format!("{}/api/flow-runs/{id}/events", self.url));
        if let Some(key) = &self.key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        // A stream read only up to its `end` event is not a connection to reuse.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .build()
            .into();
        let mut response = agent.run(request.body(()).unwrap()).unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let reader = BufReader::new(response.body_mut().as_reader());
        let mut events = Vec::new();
        let mut event = String::new();
        for line in reader.lines() {
            let line = line.unwrap();
            if let Some(name) = line.strip_prefix("event: ") {
                event = name.to_string();
            } else if let Some(data) = line.strip_prefix("data: ") {
                let value: Value = serde_json::from_str(data).unwrap();
                if event == "end" {
                    return (events, value);
                }
                events.push((event.clone(), value));
            }
        }
        panic!("the event stream closed without an `end` event: {events:?}");
    }

    /// Runs the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut command = Command::new(HOST);
        command
            .args(args)
            .current_dir(workspace())
            .env("WEIR_HOME", self.home.path().join("cli"))
            .env("WEIR_API_URL", &self.url)
            .stdin(Stdio::null());
        match &self.key {
            Some(key) => command.env("WEIR_API_KEY", key),
            None => command.env_remove("WEIR_API_KEY"),
        };
        command.output().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
    }
}

/// Polls a run until `done` holds; panics with the last reply after `within`.
pub fn wait_for_run(
    server: &TestServer,
    id: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (_, detail) = server.get(&format!("/api/flow-runs/{id}"));
        if done(&detail["flow_run"]) {
            return detail["flow_run"].clone();
        }
        assert!(Instant::now() < deadline, "gave up waiting: {detail}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `flow` of the fixture with `params`; returns the run's id.
pub fn start_fixture_run(server: &TestServer, digest: &str, flow: &str, params: Value) -> String {
    let (status, started) = server.send(
        "POST",
        &format!("/api/components/{digest}/flows/{flow}/runs"),
        json!({ "params": params }),
    );
    assert_eq!(status, 202, "{started}");
    started["flow_run_id"].as_str().unwrap().to_string()
}

/// Records the delays asked for and moves a manual clock instead of sleeping.
pub struct RecordingTimer {
    pub delays: std::sync::Mutex<Vec<Duration>>,
    pub clock: weir_host::clock::ManualClock,
}

impl RecordingTimer {
    /// The delays asked for so far, in milliseconds, in order.
    pub fn delays_ms(&self) -> Vec<u128> {
        self.delays
            .lock()
            .unwrap()
            .iter()
            .map(Duration::as_millis)
            .collect()
    }
}

impl weir_host::worker::Timer for RecordingTimer {
    fn sleep(&self, delay: Duration) -> weir_host::engine::HostFuture<'static, ()> {
        self.delays.lock().unwrap().push(delay);
        self.clock.advance(delay);
        Box::pin(async {})
    }
}

/// An executor over `h`'s store and engine on a manual clock that starts at
/// a fixed time, whose sleeps are recorded and skipped (the clock moves).
pub fn manual_time_executor(
    h: &weir_tests::Harness,
) -> (
    std::sync::Arc<weir_host::worker::Executor>,
    std::sync::Arc<RecordingTimer>,
    weir_host::clock::ManualClock,
) {
    use std::sync::Arc;
    let clock = weir_host::clock::ManualClock::starting_at(1_700_000_000_000_000);
    let timer = Arc::new(RecordingTimer {
        delays: std::sync::Mutex::new(Vec::new()),
        clock: clock.clone(),
    });
    let control = Arc::new(weir_host::control::Control::new(
        h.store.clone(),
        Arc::new(clock.clone()),
    ));
    let executor = weir_host::worker::Executor::with_timer(
        h.engine.clone(),
        control,
        weir_host::worker::ExecutorSettings::default(),
        timer.clone(),
    );
    (executor, timer, clock)
}
