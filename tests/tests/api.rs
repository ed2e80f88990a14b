//! The API server as users and scripts drive it: `host server start` on
//! 127.0.0.1:0 in a process of its own, spoken to over HTTP and by the CLI.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use weir_tests::{ETL_WASM, FIXTURE_WASM, workspace};

const HOST: &str = env!("CARGO_BIN_EXE_host-under-test");

/// A server process with its own `$WEIR_HOME`; stopped with SIGTERM on drop.
struct TestServer {
    child: Child,
    url: String,
    home: std::sync::Arc<tempfile::TempDir>,
    key: Option<String>,
    agent: ureq::Agent,
}

impl TestServer {
    fn start() -> TestServer {
        Self::start_with(&[], None)
    }

    fn with_key(key: &str) -> TestServer {
        Self::start_with(&[], Some(key))
    }

    fn start_with(extra: &[&str], key: Option<&str>) -> TestServer {
        Self::start_in(
            std::sync::Arc::new(tempfile::tempdir().unwrap()),
            extra,
            key,
        )
    }

    /// Kills the server with SIGKILL and starts another on the same home.
    fn kill_and_restart(mut self) -> TestServer {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let (home, key) = (self.home.clone(), self.key.clone());
        Self::start_in(home, &[], key.as_deref())
    }

    fn start_in(
        home: std::sync::Arc<tempfile::TempDir>,
        extra: &[&str],
        key: Option<&str>,
    ) -> TestServer {
        let mut command = Command::new(HOST);
        command
            .args(["server", "start", "--addr", "127.0.0.1:0"])
            .args(extra)
            .env("WEIR_HOME", home.path())
            .env_remove("WEIR_API_URL")
            .env_remove("WEIR_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(key) = key {
            let file = home.path().join("keys.txt");
            std::fs::write(&file, format!("# test keys\n{key}\n")).unwrap();
            command.arg("--api-key-file").arg(&file);
        }
        let mut child = command.spawn().expect("starting the server");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr).lines();
            let mut sent = false;
            while let Some(Ok(line)) = lines.next() {
                if !sent && let Some(rest) = line.strip_prefix("Weir server on ") {
                    let url = rest.split_whitespace().next().unwrap().to_string();
                    tx.send(url).unwrap();
                    sent = true;
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server did not say where it listens");
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
        }
    }

    fn request(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> (u16, Value) {
        self.request_with_key(method, path, body, self.key.as_deref())
    }

    fn request_with_key(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        key: Option<&str>,
    ) -> (u16, Value) {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url));
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

    fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, None)
    }

    fn send(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        self.request(method, path, Some(body.to_string().into_bytes()))
    }

    fn upload(&self, wasm: &str) -> String {
        let (status, reply) = self.request(
            "POST",
            "/api/components",
            Some(std::fs::read(wasm).unwrap()),
        );
        assert!(status == 201 || status == 200, "{status} {reply}");
        reply["digest"].as_str().unwrap().to_string()
    }

    fn healthy(&self) {
        let (status, reply) = self.get("/api/health");
        assert_eq!((status, reply["status"].clone()), (200, json!("ok")));
    }

    /// Reads the run's event stream to its `end`; returns (events, final run).
    fn events(&self, id: &str) -> (Vec<(String, Value)>, Value) {
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
    fn cli(&self, args: &[&str]) -> Output {
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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn deployment(name: &str, digest: &str, flow: &str, params: Value) -> Value {
    json!({ "name": name, "component": digest, "flow": flow, "params": params })
}

fn expected_total(rows: u64) -> u64 {
    (0..rows).map(|i| (i * 7919) % 1000 * 2).sum()
}

#[test]
fn upload_deploy_run_completes_with_logs_over_sse() {
    let server = TestServer::start();
    let digest = server.upload(ETL_WASM);
    let (status, saved) = server.send(
        "PUT",
        "/api/deployments/etl-small",
        deployment("etl-small", &digest, "etl", json!({ "rows": 20 })),
    );
    assert_eq!(status, 201, "{saved}");
    let (status, started) = server.send(
        "POST",
        "/api/deployments/etl-small/runs",
        json!({ "params": { "rows": 40 } }),
    );
    assert_eq!(status, 202, "{started}");
    let id = started["flow_run_id"].as_str().unwrap();

    let (events, run) = server.events(id);
    assert_eq!(run["state"], "Completed", "{run}");
    let result: Value = serde_json::from_str(run["result"].as_str().unwrap()).unwrap();
    assert_eq!(
        result,
        json!({ "rows": 40, "chunks": 1, "total": expected_total(40) })
    );
    insta::assert_json_snapshot!("completed_flow_run", run, {
        ".id" => "[id]",
        ".component" => "[digest]",
        ".host" => "[host]",
        ".created_at" => "[time]",
        ".started_at" => "[time]",
        ".ended_at" => "[time]",
        ".fuel_used" => "[fuel]",
        ".peak_memory" => "[bytes]",
    });
    let logs: Vec<&str> = events
        .iter()
        .filter(|(e, _)| e == "log")
        .map(|(_, v)| v["message"].as_str().unwrap())
        .collect();
    assert!(logs.contains(&"extracting 40 rows"), "{logs:?}");
    assert!(
        logs.iter().any(|l| l.contains("retrying in 50ms")),
        "{logs:?}"
    );
    let retry_line = events
        .iter()
        .find(|(e, v)| e == "log" && v["message"].as_str().unwrap().contains("retrying in 50ms"))
        .unwrap();
    assert_eq!(retry_line.1["task_name"], "load", "{retry_line:?}");
    let states: Vec<&str> = events
        .iter()
        .filter(|(e, _)| e == "state")
        .map(|(_, v)| v["state"].as_str().unwrap())
        .collect();
    assert!(states.contains(&"Completed"), "{states:?}");

    // The run is found by deployment, and its task runs by id.
    let (_, list) = server.get("/api/flow-runs?deployment=etl-small");
    assert_eq!(list["flow_runs"].as_array().unwrap().len(), 1);
    assert_eq!(list["flow_runs"][0]["deployment"], "etl-small");
    let (_, detail) = server.get(&format!("/api/flow-runs/{id}"));
    let load = detail["task_runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_name"] == "load")
        .unwrap();
    let (status, task) = server.get(&format!("/api/task-runs/{}", load["id"].as_str().unwrap()));
    assert_eq!(status, 200);
    assert_eq!(task["attempts"].as_array().unwrap().len(), 2, "{task}");
}

#[test]
fn bad_uploads_get_a_4xx_and_the_server_keeps_serving() {
    let server = TestServer::start();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "garbage",
            b"definitely not wasm".to_vec(),
            400,
            "not a WebAssembly file",
        ),
        ("empty", Vec::new(), 400, "send the component's .wasm bytes"),
        (
            "a core module",
            wat::parse_str("(module)").unwrap(),
            400,
            "core WebAssembly module",
        ),
        (
            "a component of another world",
            wat::parse_str("(component)").unwrap(),
            400,
            "weir:flow",
        ),
        ("oversized", vec![0u8; (64 << 20) + 1], 413, ""),
    ];
    for (what, body, want, says) in cases {
        let (status, reply) = server.request("POST", "/api/components", Some(body));
        assert_eq!(status, want, "{what}: {reply}");
        if want == 400 {
            assert!(reply["error"].is_string(), "{what}: {reply}");
            let message = reply["message"].as_str().unwrap();
            assert!(message.contains(says), "{what}: {message}");
        }
        server.healthy();
    }
    // Bad JSON, unknown things, a bad cron: 4xx with our error shape, never 5xx.
    let digest = server.upload(FIXTURE_WASM);
    let bad: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        ("PUT", "/api/deployments/x", b"{not json".to_vec(), 400),
        ("PUT", "/api/deployments/x", deployment("x", &digest, "nope", json!({})).to_string().into_bytes(), 422),
        (
            "PUT",
            "/api/deployments/x",
            json!({ "name": "x", "component": digest, "flow": "call", "work_pool": "nowhere" }).to_string().into_bytes(),
            422,
        ),
        (
            "PUT",
            "/api/deployments/x",
            json!({ "name": "x", "component": digest, "flow": "call", "schedules": [{ "cron": "61 * * * *" }] })
                .to_string()
                .into_bytes(),
            400,
        ),
        ("POST", "/api/deployments/missing/runs", Vec::new(), 404),
        ("GET", "/api/flow-runs/not-an-id", Vec::new(), 404),
        ("GET", "/api/flow-runs?state=Sleeping", Vec::new(), 400),
        ("GET", "/api/no/such/thing", Vec::new(), 404),
        ("PUT", "/api/secrets/bad%20name", json!({ "value": "v" }).to_string().into_bytes(), 400),
    ];
    for (method, path, body, want) in bad {
        let (status, reply) = server.request(method, path, Some(body));
        assert_eq!(status, want, "{method} {path}: {reply}");
        assert!(
            reply["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{method} {path}: {reply}"
        );
    }
    server.healthy();
}

#[test]
fn params_are_checked_against_the_flow_schema() {
    let server = TestServer::start();
    let digest = server.upload(ETL_WASM);
    let (status, reply) = server.send(
        "POST",
        &format!("/api/components/{digest}/flows/etl/runs"),
        json!({ "params": { "rows": "many" } }),
    );
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["error"], "invalid_params");
    assert!(
        reply["message"].as_str().unwrap().contains("rows"),
        "{reply}"
    );
    let (status, _) = server.send(
        "POST",
        &format!("/api/components/{digest}/flows/etl/runs"),
        json!({ "params": { "rows": 3 }, "unexpected": 1 }),
    );
    assert_eq!(status, 400);
    assert_eq!(
        server.get("/api/flow-runs").1["flow_runs"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn with_api_keys_every_endpoint_but_health_needs_one() {
    let server = TestServer::with_key("k-123-test");
    assert_eq!(
        server.request_with_key("GET", "/api/health", None, None).0,
        200
    );
    for path in [
        "/api/flow-runs",
        "/api/deployments",
        "/api/openapi.json",
        "/metrics",
    ] {
        let (status, reply) = server.request_with_key("GET", path, None, None);
        assert_eq!(status, 401, "{path}: {reply}");
        assert!(
            reply["message"]
                .as_str()
                .unwrap()
                .contains("Authorization: Bearer")
        );
        assert_eq!(
            server.request_with_key("GET", path, None, Some("wrong")).0,
            401
        );
        assert_eq!(
            server
                .request_with_key("GET", path, None, Some("k-123-test"))
                .0,
            200,
            "{path}"
        );
    }
    // The CLI sends the profile's (here the environment's) key.
    let out = server.cli(&["flow-run", "ls", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut without = server.cli(&["deployment", "ls"]);
    assert!(without.status.success());
    without = Command::new(HOST)
        .args(["deployment", "ls"])
        .env("WEIR_HOME", server.home.path().join("cli"))
        .env("WEIR_API_URL", &server.url)
        .env_remove("WEIR_API_KEY")
        .output()
        .unwrap();
    assert_eq!(without.status.code(), Some(2));
    assert!(
        text(&without.stderr).contains("needs an API key"),
        "{}",
        text(&without.stderr)
    );
}

#[test]
fn without_api_keys_no_header_is_needed() {
    let server = TestServer::start();
    assert_eq!(
        server
            .request_with_key("GET", "/api/flow-runs", None, None)
            .0,
        200
    );
}

/// Every place a secret could end up: API replies, logs, the database files.
#[test]
fn a_secret_never_appears_in_clear_outside_the_guest() {
    const VALUE: &str = "s3cr3t-value-4711";
    let server = TestServer::start();
    let digest = server.upload(FIXTURE_WASM);
    let (status, _) = server.send("PUT", "/api/secrets/db-password", json!({ "value": VALUE }));
    assert_eq!(status, 200);
    let call = |task: &str| json!({ "task": task, "input": { "name": "db-password" } });
    let mut granted = deployment("leaky", &digest, "call", call("leak_secret"));
    granted["secrets"] = json!(["db-password"]);
    assert_eq!(server.send("PUT", "/api/deployments/leaky", granted).0, 201);
    assert_eq!(
        server
            .send(
                "PUT",
                "/api/deployments/ungranted",
                deployment("ungranted", &digest, "call", call("get_secret"))
            )
            .0,
        201
    );

    let (_, started) = server.send("POST", "/api/deployments/leaky/runs", json!({}));
    let id = started["flow_run_id"].as_str().unwrap().to_string();
    let (events, run) = server.events(&id);
    assert_eq!(run["state"], "Completed", "{run}");
    // The guest did get the value: what it returned is recorded redacted.
    assert_eq!(run["result"], json!("\"***\""), "{run}");
    let logged: Vec<String> = events.iter().map(|(_, v)| v.to_string()).collect();
    assert!(
        logged
            .iter()
            .any(|l| l.contains("the secret is Some(\\\"***\\\")")),
        "{logged:?}"
    );

    // A deployment that does not grant it gets nothing.
    let (_, started) = server.send("POST", "/api/deployments/ungranted/runs", json!({}));
    let (_, other) = server.events(started["flow_run_id"].as_str().unwrap());
    assert_eq!(other["result"], json!("null"), "{other}");

    let mut seen = Vec::new();
    for path in [
        format!("/api/flow-runs/{id}"),
        format!("/api/flow-runs/{id}/logs"),
        format!("/api/flow-runs/{id}/task-runs"),
        "/api/flow-runs".to_string(),
        "/api/secrets".to_string(),
        "/api/deployments".to_string(),
        "/api/deployments/leaky".to_string(),
        "/metrics".to_string(),
    ] {
        let (status, reply) = server.get(&path);
        assert_eq!(status, 200, "{path}");
        seen.push(reply.to_string());
    }
    assert!(
        seen[4].contains("db-password"),
        "the name is listed: {}",
        seen[4]
    );
    for reply in &seen {
        assert!(!reply.contains(VALUE), "in an API reply: {reply}");
    }
    // The database and its WAL hold only sealed text.
    std::thread::sleep(Duration::from_millis(200));
    for entry in std::fs::read_dir(server.home.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()),
                "{} holds the secret in clear",
                path.display()
            );
        }
    }
    let key = server.home.path().join("secrets.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

#[test]
fn a_granted_secret_that_is_not_set_refuses_the_run() {
    let server = TestServer::start();
    let digest = server.upload(FIXTURE_WASM);
    let mut d = deployment(
        "needs",
        &digest,
        "call",
        json!({ "task": "get_secret", "input": { "name": "nope" } }),
    );
    d["secrets"] = json!(["nope"]);
    let (status, saved) = server.send("PUT", "/api/deployments/needs", d);
    assert_eq!(status, 201);
    assert!(
        saved["warnings"][0]
            .as_str()
            .unwrap()
            .contains("secret 'nope' is not set"),
        "{saved}"
    );
    let (status, reply) = server.send("POST", "/api/deployments/needs/runs", json!({}));
    assert_eq!(status, 409, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("host secret set nope"),
        "{reply}"
    );
}

#[test]
fn paused_deployments_refuse_runs_until_resumed() {
    let server = TestServer::start();
    let digest = server.upload(FIXTURE_WASM);
    let d = deployment(
        "adder",
        &digest,
        "call",
        json!({ "task": "add", "input": { "a": 1, "b": 2 } }),
    );
    assert_eq!(server.send("PUT", "/api/deployments/adder", d).0, 201);
    assert_eq!(
        server
            .send("POST", "/api/deployments/adder/pause", json!({}))
            .0,
        200
    );
    let (status, reply) = server.send("POST", "/api/deployments/adder/runs", json!({}));
    assert_eq!(status, 409);
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("host deployment resume adder")
    );
    assert_eq!(
        server
            .send("POST", "/api/deployments/adder/resume", json!({}))
            .0,
        200
    );
    let (status, started) = server.send("POST", "/api/deployments/adder/runs", json!({}));
    assert_eq!(status, 202);
    let (_, run) = server.events(started["flow_run_id"].as_str().unwrap());
    assert_eq!(run["result"], json!("3"));
    assert_eq!(
        server.request("DELETE", "/api/deployments/adder", None).0,
        200
    );
    assert_eq!(
        server.request("DELETE", "/api/deployments/adder", None).0,
        404
    );
}

#[test]
fn a_paused_pool_holds_runs_in_scheduled_until_it_resumes() {
    let server = TestServer::start();
    let digest = server.upload(FIXTURE_WASM);
    let d = deployment(
        "adder",
        &digest,
        "call",
        json!({ "task": "add", "input": { "a": 2, "b": 2 } }),
    );
    assert_eq!(server.send("PUT", "/api/deployments/adder", d).0, 201);
    assert_eq!(
        server
            .send("POST", "/api/work-pools/wasm/pause", json!({}))
            .0,
        200
    );
    let (_, started) = server.send("POST", "/api/deployments/adder/runs", json!({}));
    assert_eq!(started["state"], "Scheduled");
    let id = started["flow_run_id"].as_str().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        server.get(&format!("/api/flow-runs/{id}")).1["flow_run"]["state"],
        "Scheduled"
    );
    assert_eq!(
        server
            .send("POST", "/api/work-pools/wasm/resume", json!({}))
            .0,
        200
    );
    let (_, run) = server.events(id);
    assert_eq!(run["state"], "Completed");
    assert_eq!(run["result"], json!("4"));
}

#[test]
fn a_pool_concurrency_limit_holds_the_second_run_until_the_first_ends() {
    let server = TestServer::start();
    let digest = server.upload(FIXTURE_WASM);
    let (status, pool) = server.send(
        "PUT",
        "/api/work-pools/wasm",
        json!({ "concurrency_limit": 1 }),
    );
    assert_eq!(status, 200, "{pool}");
    let slow = deployment(
        "slow",
        &digest,
        "slow_sequential",
        json!({ "n": 5, "ms": 100 }),
    );
    assert_eq!(server.send("PUT", "/api/deployments/slow", slow).0, 201);
    let (_, first) = server.send("POST", "/api/deployments/slow/runs", json!({}));
    let (_, second) = server.send("POST", "/api/deployments/slow/runs", json!({}));
    assert_eq!(first["state"], "Pending");
    assert_eq!(
        second["state"], "Scheduled",
        "the pool allows one at a time"
    );
    let (_, one) = server.events(first["flow_run_id"].as_str().unwrap());
    let (_, two) = server.events(second["flow_run_id"].as_str().unwrap());
    assert_eq!(
        (one["state"].as_str(), two["state"].as_str()),
        (Some("Completed"), Some("Completed"))
    );
    assert!(
        two["started_at"].as_i64().unwrap() >= one["ended_at"].as_i64().unwrap(),
        "the second started after the first ended: {one} {two}"
    );
}

#[test]
fn a_run_that_waits_past_its_time_is_marked_late_and_still_runs() {
    let server = TestServer::start_with(&["--late-after", "1s"], None);
    let digest = server.upload(FIXTURE_WASM);
    let d = deployment(
        "adder",
        &digest,
        "call",
        json!({ "task": "add", "input": { "a": 5, "b": 5 } }),
    );
    assert_eq!(server.send("PUT", "/api/deployments/adder", d).0, 201);
    assert_eq!(
        server
            .send("POST", "/api/work-pools/wasm/pause", json!({}))
            .0,
        200
    );
    let (_, started) = server.send("POST", "/api/deployments/adder/runs", json!({}));
    let id = started["flow_run_id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let late = loop {
        let (_, detail) = server.get(&format!("/api/flow-runs/{id}"));
        if detail["flow_run"]["state"] == "Late" {
            break detail;
        }
        assert!(Instant::now() < deadline, "never Late: {detail}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let message = late["flow_run"]["message"].as_str().unwrap();
    assert!(message.contains("after its scheduled time"), "{message}");
    assert_eq!(
        server
            .send("POST", "/api/work-pools/wasm/resume", json!({}))
            .0,
        200
    );
    let (_, run) = server.events(id);
    assert_eq!(
        (run["state"].as_str(), run["result"].as_str()),
        (Some("Completed"), Some("10"))
    );
}

#[test]
fn waiting_runs_start_by_queue_priority() {
    let server = TestServer::start();
    let digest = server.upload(FIXTURE_WASM);
    let pool = |paused: bool| json!({ "concurrency_limit": 1, "paused": paused });
    assert_eq!(
        server.send("PUT", "/api/work-pools/wasm", pool(true)).0,
        200
    );
    for (queue, priority) in [("bulk", 5), ("urgent", 0)] {
        let (status, reply) = server.send(
            "POST",
            "/api/work-pools/wasm/queues",
            json!({ "name": queue, "priority": priority }),
        );
        assert_eq!(status, 201, "{reply}");
        let mut d = deployment(
            queue,
            &digest,
            "slow_sequential",
            json!({ "n": 3, "ms": 50 }),
        );
        d["work_queue"] = json!(queue);
        assert_eq!(
            server
                .send("PUT", &format!("/api/deployments/{queue}"), d)
                .0,
            201
        );
    }
    let (_, bulk) = server.send("POST", "/api/deployments/bulk/runs", json!({}));
    let (_, urgent) = server.send("POST", "/api/deployments/urgent/runs", json!({}));
    assert_eq!(
        (bulk["state"].as_str(), urgent["state"].as_str()),
        (Some("Scheduled"), Some("Scheduled"))
    );
    assert_eq!(
        server.send("PUT", "/api/work-pools/wasm", pool(false)).0,
        200
    );
    let (_, bulk) = server.events(bulk["flow_run_id"].as_str().unwrap());
    let (_, urgent) = server.events(urgent["flow_run_id"].as_str().unwrap());
    assert_eq!(urgent["work_queue"], "urgent");
    assert!(
        bulk["started_at"].as_i64().unwrap() >= urgent["ended_at"].as_i64().unwrap(),
        "the urgent run, queued later, ran first: {urgent} {bulk}"
    );
}

#[test]
fn the_cli_deploys_from_a_file_and_follows_a_run() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weir.yaml");
    std::fs::write(
        &file,
        format!(
            "deployments:\n  - name: etl-cli\n    component: {}\n    flow: etl\n    params: {{rows: 30}}\n    schedules:\n      - cron: \"0 3 * * *\"\n    limits: {{timeout: 30s, memory: 64MiB}}\n    tags: [nightly]\n",
            ETL_WASM
        ),
    )
    .unwrap();
    let out = server.cli(&["deploy", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("Created deployment 'etl-cli'"),
        "{}",
        text(&out.stdout)
    );

    let out = server.cli(&[
        "deployment",
        "run",
        "etl-cli",
        "--param",
        "rows=60",
        "--watch",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let last: Value = text(&out.stdout)
        .lines()
        .last()
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap();
    assert_eq!(last["state"], "Completed");
    assert_eq!(
        last["result"],
        json!({ "rows": 60, "chunks": 1, "total": expected_total(60) })
    );

    let out = server.cli(&["flow-run", "ls", "--json"]);
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs[0]["deployment"], "etl-cli");
    assert_eq!(runs[0]["tags"], json!(["nightly"]));
    let id = runs[0]["id"].as_str().unwrap();
    let out = server.cli(&["flow-run", "logs", &id[..8]]);
    assert!(
        text(&out.stdout).contains("extracting 60 rows"),
        "{}",
        text(&out.stdout)
    );

    let out = server.cli(&["deployment", "ls", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    insta::assert_json_snapshot!("deployment_from_yaml", list[0], {
        ".deployment.component" => "[digest]",
        ".created_at" => "[time]",
        ".updated_at" => "[time]",
    });
}

#[test]
fn profiles_switch_between_a_server_and_the_local_database() {
    let server = TestServer::start();
    let digest = server.upload(FIXTURE_WASM);
    let (_, started) = server.send(
        "POST",
        &format!("/api/components/{digest}/flows/call/runs"),
        json!({ "params": { "task": "add", "input": { "a": 1, "b": 1 } } }),
    );
    server.events(started["flow_run_id"].as_str().unwrap());

    let home = tempfile::tempdir().unwrap();
    let cli = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(HOST);
        command
            .args(args)
            .env("WEIR_HOME", home.path())
            .env_remove("WEIR_API_URL")
            .env_remove("WEIR_PROFILE");
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let count = |stdout: String| {
        serde_json::from_str::<Value>(&stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(
        count(cli(&["flow-run", "ls", "--json"], &[])),
        0,
        "the local database is empty"
    );
    cli(&["profile", "create", "remote"], &[]);
    cli(&["profile", "use", "remote"], &[]);
    cli(&["config", "set", "api.url", &server.url], &[]);
    assert_eq!(
        count(cli(&["flow-run", "ls", "--json"], &[])),
        1,
        "the server has one run"
    );
    let view: Value =
        serde_json::from_str(&cli(&["config", "view", "--show-sources", "--json"], &[])).unwrap();
    assert_eq!(view["profile"], "remote");
    assert_eq!(view["settings"]["api.url"]["source"], "profile 'remote'");
    // The environment wins over the profile.
    let view: Value = serde_json::from_str(&cli(
        &["config", "view", "--json"],
        &[("WEIR_PROFILE", "default"), ("WEIR_LOG", "debug")],
    ))
    .unwrap();
    assert_eq!(view["profile"], "default");
    assert!(view["settings"].get("api.url").is_none(), "{view}");
    assert_eq!(view["settings"]["logging.level"]["source"], "env WEIR_LOG");
    cli(&["profile", "use", "default"], &[]);
    assert_eq!(count(cli(&["flow-run", "ls", "--json"], &[])), 0);
    let listed = cli(&["profile", "ls"], &[]);
    assert!(
        listed.contains("* default") && listed.contains("  remote"),
        "{listed}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.path().join("profiles.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "profiles.toml may hold an API key");
    }
}

#[test]
fn without_a_server_the_cli_uses_the_same_api_in_process() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weir.yaml");
    std::fs::write(
        &file,
        format!("deployments:\n  - name: local-add\n    component: {FIXTURE_WASM}\n    flow: call\n    params: {{task: add, input: {{a: 20, b: 22}}}}\n"),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        Command::new(HOST)
            .args(args)
            .env("WEIR_HOME", home.path())
            .env_remove("WEIR_API_URL")
            .output()
            .unwrap()
    };
    let out = cli(&["deploy", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli(&["deployment", "run", "local-add", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let last: Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(last["result"], json!(42));
    let out = cli(&["secret", "set", "token", "--value", "abc123"]);
    assert!(out.status.success());
    let out = cli(&["secret", "ls", "--json"]);
    assert!(text(&out.stdout).contains("token") && !text(&out.stdout).contains("abc123"));
    let out = cli(&["work-pool", "create", "gpu"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli(&[
        "work-queue",
        "create",
        "urgent",
        "--pool",
        "gpu",
        "--priority",
        "0",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli(&["work-queue", "ls", "--pool", "gpu", "--json"]);
    let queues: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(queues[0]["name"], "urgent", "by priority: {queues}");
    let out = cli(&["variable", "set", "limits", r#"{"rows": 5}"#]);
    assert!(out.status.success());
    let out = cli(&["variable", "get", "limits"]);
    assert_eq!(text(&out.stdout).trim(), r#"{"rows":5}"#);
    let out = cli(&["deployment", "run", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no deployment named 'nope'"));
}

/// A server killed with SIGKILL mid-run resumes the run when it starts again;
/// the tasks that had completed are replayed, not run again.
#[test]
fn a_server_killed_mid_run_resumes_it_on_restart() {
    let server = TestServer::start();
    let digest = server.upload(FIXTURE_WASM);
    let (status, started) = server.send(
        "POST",
        &format!("/api/components/{digest}/flows/slow_sequential/runs"),
        json!({ "params": { "n": 40, "ms": 20 } }),
    );
    assert_eq!(status, 202, "{started}");
    let id = started["flow_run_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let completed = |detail: &Value| {
        detail["task_runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["state"] == "Completed")
            .count()
    };
    loop {
        assert!(Instant::now() < deadline, "the run never got going");
        if completed(&server.get(&format!("/api/flow-runs/{id}")).1) >= 10 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let server = server.kill_and_restart();
    let (_, run) = server.events(&id);
    assert_eq!(run["state"], "Completed", "{run}");
    assert_eq!(run["result"], json!("800"));
    let (_, detail) = server.get(&format!("/api/flow-runs/{id}"));
    for seq in 0..40 {
        let done: Vec<&Value> = detail["task_runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["call_seq"] == seq && t["state"] == "Completed")
            .collect();
        assert_eq!(done.len(), 1, "call #{seq}: {detail}");
        assert_eq!(done[0]["attempts"], 1, "call #{seq} ran once");
    }
    let states: Vec<&str> = detail["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert!(states.contains(&"Crashed"), "{states:?}");
    assert_eq!(states.last(), Some(&"Completed"));
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = TestServer::start();
    server.healthy();
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(server.child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

/// The OpenAPI document is checked in; regenerate with `WEIR_BLESS=1 cargo test -p weir-tests --test api`.
#[test]
fn the_openapi_document_is_checked_in_and_served() {
    let checked_in = workspace().join("host/openapi.json");
    let generated = weir_host::api::openapi_document();
    if std::env::var_os("WEIR_BLESS").is_some() {
        std::fs::write(&checked_in, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&checked_in).unwrap_or_default();
    assert!(
        on_disk == generated,
        "host/openapi.json is out of date with the API; regenerate it with WEIR_BLESS=1 cargo test -p weir-tests --test api"
    );
    let server = TestServer::start();
    let (status, served) = server.get("/api/openapi.json");
    assert_eq!(status, 200);
    assert_eq!(served, serde_json::from_str::<Value>(&generated).unwrap());
    // Every route the router serves is documented.
    for path in [
        "/api/deployments/{name}/runs",
        "/api/flow-runs/{id}/events",
        "/api/secrets/{name}",
    ] {
        assert!(
            served["paths"].get(path).is_some(),
            "{path} is not documented"
        );
    }
}

/// Real replies validate against the schemas the document gives for them.
#[test]
fn replies_match_their_documented_schemas() {
    let doc: Value = serde_json::from_str(&weir_host::api::openapi_document()).unwrap();
    let check = |schema: &str, value: &Value| {
        let root = json!({ "$ref": format!("#/components/schemas/{schema}"), "components": doc["components"] });
        let validator = jsonschema::validator_for(&root).unwrap();
        let problems: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(problems.is_empty(), "{schema}: {problems:?}\n{value}");
    };
    let server = TestServer::start();
    let digest = server.upload(ETL_WASM);
    let (_, saved) = server.send(
        "PUT",
        "/api/deployments/e",
        deployment("e", &digest, "etl", json!({ "rows": 5 })),
    );
    check("DeploymentSaved", &saved);
    let (_, started) = server.send("POST", "/api/deployments/e/runs", json!({}));
    check("RunStarted", &started);
    let id = started["flow_run_id"].as_str().unwrap();
    let (events, run) = server.events(id);
    check("FlowRun", &run);
    check(
        "LogLine",
        &events.iter().find(|(e, _)| e == "log").unwrap().1,
    );
    for (schema, path) in [
        ("FlowRunDetail", format!("/api/flow-runs/{id}")),
        ("FlowRunList", "/api/flow-runs".to_string()),
        ("LogList", format!("/api/flow-runs/{id}/logs")),
        ("TaskRunList", format!("/api/flow-runs/{id}/task-runs")),
        ("DeploymentList", "/api/deployments".to_string()),
        ("ComponentList", "/api/components".to_string()),
        ("ComponentDetail", format!("/api/components/{digest}")),
        ("FlowList", "/api/flows".to_string()),
        ("WorkPoolList", "/api/work-pools".to_string()),
        ("WorkQueueList", "/api/work-pools/wasm/queues".to_string()),
        ("SecretList", "/api/secrets".to_string()),
        ("VariableList", "/api/variables".to_string()),
        ("Health", "/api/health".to_string()),
    ] {
        let (status, reply) = server.get(&path);
        assert_eq!(status, 200, "{path}");
        check(schema, &reply);
    }
    let (_, error) = server.get("/api/deployments/none");
    check("ErrorBody", &error);
    insta::assert_json_snapshot!("error_body", error);
}

#[test]
fn a_damaged_component_file_is_reported_and_a_fresh_upload_repairs_it() {
    let server = TestServer::start();
    let digest = server.upload(FIXTURE_WASM);
    let run = |server: &TestServer| {
        server.send(
            "POST",
            &format!("/api/components/{digest}/flows/sequential/runs"),
            json!({ "params": { "n": 3 } }),
        )
    };
    // A disk error or a hand edit: same name, other bytes.
    let file = server
        .home
        .path()
        .join("components")
        .join(format!("{digest}.wasm"));
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    // A fresh process has only the file to go by.
    let server = server.kill_and_restart();
    let (status, reply) = run(&server);
    assert_eq!(status, 500, "{reply}");
    assert_eq!(reply["error"], "component_damaged", "{reply}");
    let message = reply["message"].as_str().unwrap();
    assert!(
        message.contains(&digest) && message.contains("upload the same .wasm again"),
        "{message}"
    );
    let (status, reply) = server.get(&format!("/api/components/{digest}/wasm"));
    assert_eq!(
        (status, reply["error"].clone()),
        (500, json!("component_damaged"))
    );
    server.healthy();

    let (status, reply) = server.request(
        "POST",
        "/api/components",
        Some(std::fs::read(FIXTURE_WASM).unwrap()),
    );
    assert_eq!(status, 200, "already known, now repaired: {reply}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(FIXTURE_WASM).unwrap()
    );
    // And a process that starts after the repair reads it from disk.
    let server = server.kill_and_restart();
    let (status, started) = run(&server);
    assert_eq!(status, 202, "{started}");
    let (_, finished) = server.events(started["flow_run_id"].as_str().unwrap());
    assert_eq!(finished["state"], "Completed", "{finished}");
}
