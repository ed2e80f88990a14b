//! Outbound HTTP from guests (wasi:http) behind the run's allow-list, as an
//! attacker would try it: hosts and ports next to the granted one, names
//! that reach the same address, a redirect out of the granted host, a
//! server that never answers and one that never stops sending.
//!
//! The servers ([`Loopback`]) count the connections they accept: a denied
//! request must not even connect.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use weir_host::model::RunState;
use weir_host::model::capabilities::Capabilities;
use weir_host::worker::{FlowRunOutcome, FlowRunRequest};
use weir_tests::loopback::{Answer, Loopback};
use weir_tests::{FIXTURE_WASM, Harness};

/// Runs the fixture's `http_get` task (through the `call` flow) for `url`
/// with `http` as the run's allow-list.
async fn get(
    h: &Harness,
    http: &[String],
    url: &str,
    task_timeout_ms: Option<u64>,
) -> FlowRunOutcome {
    let component = h.load(FIXTURE_WASM).await;
    let params = json!({ "task": "http_get", "input": { "url": url } });
    let mut request = FlowRunRequest::new(component, "call", params.to_string());
    request.capabilities = Arc::new(Capabilities {
        http: http.to_vec(),
        ..Capabilities::default()
    });
    request.task_override.timeout_ms = task_timeout_ms;
    h.executor.run_flow(request).await.unwrap()
}

fn answer(outcome: &FlowRunOutcome) -> Value {
    assert_eq!(outcome.state, RunState::Completed, "{:?}", outcome.result);
    let result: Value = serde_json::from_str(outcome.result.as_ref().unwrap()).unwrap();
    result
}

fn failure(outcome: &FlowRunOutcome) -> String {
    assert_eq!(outcome.state, RunState::Failed, "{:?}", outcome.result);
    outcome.result.as_ref().unwrap_err().message.clone()
}

#[tokio::test]
async fn a_granted_host_answers_and_every_look_alike_is_denied_before_connecting() {
    let h = Harness::new();
    let granted = Loopback::start(Answer::Body("hello from the granted host"));
    let other = Loopback::start(Answer::Body("must never be read"));
    let allow = vec![format!("127.0.0.1:{}", granted.port())];

    let ok = get(&h, &allow, &granted.url("/data?x=1"), None).await;
    let body = answer(&ok);
    assert_eq!(body["status"], 200, "{body}");
    assert_eq!(body["body"], "hello from the granted host");
    assert_eq!(granted.hits(), 1);

    let port = granted.port();
    let mut denied = Vec::new();
    for url in [
        // Same address, another port.
        other.url("/"),
        // Other names for the granted address.
        format!("http://localhost:{port}/"),
        format!("http://127.1:{port}/"),
        format!("http://127.0.0.2:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        // The granted text with user info in front.
        format!("http://127.0.0.1:{port}@127.0.0.1:{}/", other.port()),
        // The granted host, the scheme's own port rather than the granted one.
        "http://127.0.0.1/".to_string(),
    ] {
        let outcome = get(&h, &allow, &url, None).await;
        let message = failure(&outcome);
        assert!(
            message.contains("HttpRequestDenied") || message.contains("not a URL"),
            "{url}: {message}"
        );
        denied.push((url, outcome.id));
    }
    assert_eq!(
        granted.hits(),
        1,
        "no look-alike reached the granted server"
    );
    assert_eq!(other.hits(), 0, "no look-alike reached the other server");

    // With nothing granted, not even the granted host.
    let outcome = get(&h, &[], &granted.url("/"), None).await;
    assert!(failure(&outcome).contains("HttpRequestDenied"));
    assert_eq!(granted.hits(), 1);

    // The run's log names the refused host and says how to grant it.
    h.store.close();
    let logs = h.store.logs(denied[0].1, 0, 1000).unwrap();
    let refused = format!("127.0.0.1:{}", other.port());
    assert!(
        logs.iter().any(|l| l.message.contains(&refused)
            && l.message.contains("capabilities.http")
            && l.message.contains(&format!("--allow-http {refused}"))),
        "{logs:?}"
    );
}

#[tokio::test]
async fn a_redirect_out_of_the_granted_host_is_handed_back_not_followed() {
    let h = Harness::new();
    let forbidden = Loopback::start(Answer::Body("forbidden"));
    let granted = Loopback::start(Answer::Redirect(forbidden.url("/secret")));
    let allow = vec![format!("127.0.0.1:{}", granted.port())];

    let body = answer(&get(&h, &allow, &granted.url("/"), None).await);
    assert_eq!(body["status"], 302, "{body}");
    assert_eq!(body["location"], forbidden.url("/secret"));
    assert_eq!(forbidden.hits(), 0, "wasi:http did not follow the redirect");

    // Following it is a request of the guest's own, and checked as one.
    let outcome = get(&h, &allow, &forbidden.url("/secret"), None).await;
    assert!(failure(&outcome).contains("HttpRequestDenied"));
    assert_eq!(forbidden.hits(), 0);
}

#[tokio::test]
async fn a_server_that_never_answers_is_cut_off_at_the_task_deadline() {
    let h = Harness::new();
    let silent = Loopback::start(Answer::Silence);
    let talking = Loopback::start(Answer::Body("still serving"));
    let allow = vec![
        format!("127.0.0.1:{}", silent.port()),
        format!("127.0.0.1:{}", talking.port()),
    ];

    let outcome = get(&h, &allow, &silent.url("/"), Some(1000)).await;
    let message = failure(&outcome);
    assert!(message.contains("deadline"), "{message}");
    let tasks = h.store.task_runs(outcome.id).unwrap();
    assert_eq!(tasks[0].state, RunState::TimedOut, "{tasks:?}");
    assert_eq!(silent.hits(), 1, "the request was sent");
    // The connection does not outlive the task: the host hung up.
    silent
        .hung_up
        .recv_timeout(Duration::from_secs(30))
        .expect("the host kept the silent server's connection open after the deadline");

    let body = answer(&get(&h, &allow, &talking.url("/"), None).await);
    assert_eq!(body["body"], "still serving");
}

#[tokio::test]
async fn a_response_body_past_the_bound_fails_the_read() {
    let h = Harness::new();
    let bound = weir_host::engine::MAX_RESPONSE_BODY_BYTES as u64;
    let flood = Loopback::start(Answer::Flood(bound + (1 << 20)));
    let allow = vec![format!("127.0.0.1:{}", flood.port())];
    // The guest keeps what it reads, so give it room for the whole bound.
    let component = h.load(FIXTURE_WASM).await;
    let params = json!({ "task": "http_get", "input": { "url": flood.url("/") } });
    let mut request = FlowRunRequest::new(component, "call", params.to_string());
    request.capabilities = Arc::new(Capabilities {
        http: allow,
        ..Capabilities::default()
    });
    request.task_override.memory_bytes = Some(4 * bound);
    request.task_override.fuel = Some(u64::MAX / 2);
    let outcome = h.executor.run_flow(request).await.unwrap();
    let message = failure(&outcome);
    assert!(
        message.contains("body size exceeds limit: 67108864 bytes"),
        "{message}"
    );
}

/// `host flow run` grants what its flags say and nothing else.
#[test]
fn host_flow_run_reaches_only_what_allow_http_names() {
    let api = Loopback::start(Answer::Body("from the cli"));
    let home = tempfile::tempdir().unwrap();
    let run = |allow: &[&str]| {
        let input = json!({ "task": "http_get", "input": { "url": api.url("/") } });
        std::process::Command::new(common::HOST)
            .args([
                "flow",
                "run",
                FIXTURE_WASM,
                "call",
                "--json",
                "--params-json",
            ])
            .arg(input.to_string())
            .args(allow)
            .env("WEIR_HOME", home.path())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running the host")
    };
    let denied = run(&[]);
    let stdout = String::from_utf8_lossy(&denied.stdout);
    assert!(!denied.status.success(), "{stdout}");
    assert!(stdout.contains("HttpRequestDenied"), "{stdout}");
    assert_eq!(api.hits(), 0);

    let granted = format!("127.0.0.1:{}", api.port());
    let allowed = run(&["--allow-http", &granted]);
    let stdout = String::from_utf8_lossy(&allowed.stdout);
    assert!(allowed.status.success(), "{stdout}");
    assert!(stdout.contains("from the cli"), "{stdout}");
    assert_eq!(api.hits(), 1);
}

/// weir.yaml's `capabilities.http` through `host deploy`, run by the
/// server's embedded executor only when the server was started to allow it.
#[test]
fn a_weir_yaml_http_grant_runs_on_the_embedded_executor_that_allows_it() {
    let api = Loopback::start(Answer::Body("from weir.yaml"));
    let granted = format!("127.0.0.1:{}", api.port());
    let dir = tempfile::tempdir().unwrap();
    let write = |hosts: &str| {
        let file = dir.path().join("weir.yaml");
        let params = json!({ "task": "http_get", "input": { "url": api.url("/") } });
        std::fs::write(
            &file,
            format!(
                "deployments:\n  - name: fetch\n    component: {FIXTURE_WASM}\n    flow: call\n    params: {params}\n    capabilities:\n      http: [{hosts}]\n"
            ),
        )
        .unwrap();
        file.to_str().unwrap().to_string()
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();

    let allowing = common::TestServer::start_with(&["--allow-http", &granted], None);
    let bad = allowing.cli(&["deploy", "-f", &write("\"http://127.0.0.1\"")]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("'http://127.0.0.1' is not an HTTP host"),
        "{}",
        text(&bad.stderr)
    );
    let file = write(&format!("\"{granted}\""));
    let out = allowing.cli(&["deploy", "-f", &file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = allowing.cli(&["deployment", "run", "fetch", "--watch", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let last: Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(last["state"], "Completed", "{last}");
    assert!(last.to_string().contains("from weir.yaml"), "{last}");
    assert_eq!(api.hits(), 1);

    // A server started without --allow-http refuses the run, naming the host.
    let plain = common::TestServer::start();
    assert!(plain.cli(&["deploy", "-f", &file]).status.success());
    let (status, refused) = plain.send("POST", "/api/deployments/fetch/runs", json!({}));
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains(&format!("HTTP host {granted}")),
        "{refused}"
    );
    assert_eq!(api.hits(), 1);
}
