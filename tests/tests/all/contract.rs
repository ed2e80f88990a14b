//! Contract 0.1.1 end to end: a component built against 0.1.0 still runs;
//! variables read by flows (recorded, so a resumed run sees what it saw);
//! pause for input and resume (schema-checked, across a restart, by the
//! API and the CLI, with a timeout); artifacts (versioned by key, secrets
//! redacted, a huge one refused without breaking the run); and
//! `{{ variables.NAME }}` in weir.yaml params.

use serde_json::{Value, json};
use std::time::Duration;
use weir_host::model::RunState;
use weir_tests::{FIXTURE_WASM, Harness, workspace};

use crate::common;
use crate::common::text;
use common::{TestServer, start_fixture_run, wait_for_run};

const OLD_HELLO: &str = "tests/fixtures/contract-0.1.0/hello.wasm";

fn state_is(state: &'static str) -> impl Fn(&Value) -> bool {
    move |run: &Value| run["state"] == state
}

fn task_runs(server: &TestServer, id: &str) -> Vec<Value> {
    let (_, detail) = server.get(&format!("/api/flow-runs/{id}"));
    detail["task_runs"].as_array().cloned().unwrap_or_default()
}

fn resume(server: &TestServer, id: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string().into_bytes());
    server.request("POST", &format!("/api/flow-runs/{id}/resume"), body)
}

#[tokio::test]
async fn a_component_built_against_contract_0_1_0_still_runs() {
    let bytes = std::fs::read(workspace().join(OLD_HELLO)).unwrap();
    let imports = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    // The fixture is what it claims to be: built before 0.1.1 existed.
    assert!(imports("weir:flow/runtime@0.1.0"));
    assert!(imports("weir:flow/guest@0.1.0"));
    assert!(!imports("@0.1.1"));
    let fresh = std::fs::read(FIXTURE_WASM).unwrap();
    assert!(fresh.windows(21).any(|w| w == b"weir:flow/guest@0.1.2"));

    let harness = Harness::new();
    let component = harness
        .engine
        .load(&bytes)
        .await
        .expect("a 0.1.0 component loads on a 0.1.2 host");
    assert_eq!(component.manifest.flow_names(), vec!["hello"]);
    let outcome = harness
        .run(&component, "hello", json!({ "name": "old" }))
        .await;
    assert_eq!(outcome.state, RunState::Completed, "{:?}", outcome.result);
    assert_eq!(outcome.result.unwrap(), "\"HELLO, OLD!\"");
}

/// The whole pause story as an attacker drives it: a variable read before
/// the pause is replayed after the variable changed; input that fails the
/// schema (or none) is refused with 422 and the run stays Paused; valid
/// input completes it without running its finished task again; resuming a
/// run that is not paused is refused.
#[test]
fn a_paused_run_takes_only_input_that_matches_and_replays_what_it_saw() {
    let server = TestServer::start();
    let digest = server.upload(FIXTURE_WASM);
    let (status, reply) = server.send("PUT", "/api/variables/threshold", json!({"value": 1}));
    assert_eq!(status, 200, "{reply}");
    let id = start_fixture_run(
        &server,
        &digest,
        "approval_gate",
        json!({"name": "threshold", "timeout_s": 3600}),
    );
    let run = wait_for_run(&server, &id, Duration::from_secs(60), state_is("Paused"));
    assert!(run["message"].as_str().unwrap().contains("resume"), "{run}");
    let tasks = task_runs(&server, &id);
    let names: Vec<(&str, &str)> = tasks
        .iter()
        .map(|t| {
            (
                t["task_name"].as_str().unwrap(),
                t["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("weir:variable", "Completed"),
            ("add", "Completed"),
            ("weir:pause", "Paused")
        ]
    );

    // Changed while the run waits: the resumed run must still see 1 first.
    server.send("PUT", "/api/variables/threshold", json!({"value": 2}));

    for bad in [
        Some(json!({"input": {"approved": "yes"}})),
        Some(json!({"input": {"approved": true, "extra": 1}})),
        Some(json!({"input": "approved"})),
        None,
    ] {
        let (status, reply) = resume(&server, &id, bad.clone());
        assert_eq!(status, 422, "{bad:?}: {reply}");
        assert_eq!(reply["error"], "invalid_input", "{reply}");
        assert!(
            reply["message"].as_str().unwrap().contains("still Paused"),
            "{reply}"
        );
        let (_, detail) = server.get(&format!("/api/flow-runs/{id}"));
        assert_eq!(detail["flow_run"]["state"], "Paused", "{bad:?}");
    }
    let (status, reply) = server.request(
        "POST",
        &format!("/api/flow-runs/{id}/resume"),
        Some(b"{not json".to_vec()),
    );
    assert_eq!(status, 400, "{reply}");

    let (status, reply) = resume(
        &server,
        &id,
        Some(json!({"input": {"approved": true, "note": "ship it"}})),
    );
    assert_eq!(status, 202, "{reply}");
    let run = wait_for_run(&server, &id, Duration::from_secs(60), |r| {
        r["state"] != "Paused"
            && r["state"] != "Pending"
            && r["state"] != "Running"
            && r["state"] != "Scheduled"
    });
    assert_eq!(run["state"], "Completed", "{run}");
    let result: Value = serde_json::from_str(run["result"].as_str().unwrap()).unwrap();
    assert_eq!(
        result,
        json!({
            "seen": 1,
            "sum": 3,
            "answer": {"approved": true, "note": "ship it"},
            "after": 2,
            "from_task": 2
        })
    );
    // Every call ran once: the first read and the task were replayed.
    let tasks = task_runs(&server, &id);
    let adds = tasks.iter().filter(|t| t["task_name"] == "add").count();
    assert_eq!(adds, 1, "{tasks:?}");
    let mut seqs: Vec<u64> = tasks
        .iter()
        .map(|t| t["call_seq"].as_u64().unwrap())
        .collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), tasks.len(), "a call ran twice: {tasks:?}");

    // A run that is not paused takes no input, and a finished one no resume.
    let (status, reply) = resume(&server, &id, Some(json!({"input": {"approved": true}})));
    assert_eq!(status, 409, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("only a Paused run"),
        "{reply}"
    );
    let other = start_fixture_run(
        &server,
        &digest,
        "call",
        json!({"task": "add", "input": {"a": 1, "b": 1}}),
    );
    wait_for_run(
        &server,
        &other,
        Duration::from_secs(60),
        state_is("Completed"),
    );
    let (status, reply) = resume(&server, &other, Some(json!({"input": {}})));
    assert_eq!(status, 409, "{reply}");
}

/// Nothing of a paused run lives in the server's memory: killed and
/// restarted, the server still has it Paused, and the CLI resumes it.
#[test]
fn a_paused_run_survives_a_restart_and_is_resumed_from_the_cli() {
    let server = TestServer::start();
    let digest = server.upload(FIXTURE_WASM);
    let id = start_fixture_run(&server, &digest, "pause_once", json!({}));
    wait_for_run(&server, &id, Duration::from_secs(60), state_is("Paused"));
    let server = server.kill_and_restart();
    // A restart crashes runs whose holder is gone; a paused run has none.
    let run = wait_for_run(&server, &id, Duration::from_secs(5), |_| true);
    assert_eq!(run["state"], "Paused", "{run}");

    let bad = server.cli(&["flow-run", "resume", &id, "--input", "{not json"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
    assert!(
        text(&bad.stderr).contains("--input is not JSON"),
        "{}",
        text(&bad.stderr)
    );

    let out = server.cli(&[
        "flow-run",
        "resume",
        &id,
        "--input",
        r#"{"go": [1, 2]}"#,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let run = wait_for_run(&server, &id, Duration::from_secs(60), state_is("Completed"));
    assert_eq!(run["result"], r#"{"go":[1,2]}"#, "{run}");
}

#[test]
fn a_pause_nobody_answers_fails_the_run_at_its_timeout() {
    let server = TestServer::start();
    let digest = server.upload(FIXTURE_WASM);
    let id = start_fixture_run(
        &server,
        &digest,
        "approval_gate",
        json!({"name": "unset", "timeout_s": 1}),
    );
    let run = wait_for_run(&server, &id, Duration::from_secs(60), |r| {
        r["state"] == "Failed"
    });
    let message = run["message"].as_str().unwrap();
    assert!(message.contains("pause timeout (1s)"), "{message}");
    let (status, reply) = resume(&server, &id, Some(json!({"input": {"approved": true}})));
    assert_eq!(status, 409, "a timed-out pause takes no input: {reply}");
}

#[test]
fn only_a_top_level_flow_may_pause() {
    let server = TestServer::start();
    let digest = server.upload(FIXTURE_WASM);
    let id = start_fixture_run(&server, &digest, "pause_in_child", json!({}));
    let run = wait_for_run(&server, &id, Duration::from_secs(60), state_is("Failed"));
    assert!(
        run["message"]
            .as_str()
            .unwrap()
            .contains("only a top-level flow can pause"),
        "{run}"
    );
}

/// Artifacts from a flow and a task, versioned by key across runs, with a
/// secret (quote, newline) redacted from every stored form, and one over
/// the size cap refused while the run goes on.
#[test]
fn artifacts_are_versioned_by_key_redacted_and_capped() {
    let server = TestServer::start();
    let digest = server.upload(FIXTURE_WASM);
    let secret = "pa\"ss\nword-9f3k";
    let (status, reply) = server.send("PUT", "/api/secrets/tricky", json!({"value": secret}));
    assert_eq!(status, 200, "{reply}");
    let mut d = json!({
        "name": "reporter", "component": digest, "flow": "leave_artifacts",
        "params": {"key": "daily-report", "secret": "tricky", "huge": 300_000},
        "secrets": ["tricky"],
    });
    server.deploy("reporter", d.take());
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, started) = server.send("POST", "/api/deployments/reporter/runs", json!({}));
        assert_eq!(status, 202, "{started}");
        let id = started["flow_run_id"].as_str().unwrap().to_string();
        let (_, run) = server.events(&id);
        assert_eq!(run["state"], "Completed", "{run}");
        let result: Value = serde_json::from_str(run["result"].as_str().unwrap()).unwrap();
        let refused = result["refused"].as_str().unwrap();
        assert!(
            refused.contains("300000 bytes, over the limit"),
            "{refused}"
        );
        ids.push(id);
    }

    let (status, list) = server.get(&format!("/api/artifacts?flow_run={}", ids[0]));
    assert_eq!(status, 200, "{list}");
    let artifacts = list["artifacts"].as_array().unwrap();
    assert_eq!(artifacts.len(), 4, "{list}");
    let from_task = artifacts
        .iter()
        .filter(|a| a["task_run"].is_string())
        .count();
    assert_eq!(from_task, 1, "{list}");

    // Key history: three per run, numbered across both runs.
    let (status, key) = server.get("/api/artifacts/daily-report");
    assert_eq!(status, 200, "{key}");
    let versions: Vec<u64> = key["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![6, 5, 4, 3, 2, 1]);
    assert_eq!(key["artifact"]["version"], 6);
    assert_eq!(key["artifact"]["flow_run"], ids[1].as_str());

    // The secret is nowhere, in any encoding; its place is marked.
    let (_, everything) = server.get("/api/artifacts");
    let all = everything.to_string();
    for trace in [
        secret.to_string(),
        "word-9f3k".to_string(),
        "pa\\\"ss".to_string(),
        serde_json::to_string(secret).unwrap(),
    ] {
        assert!(!all.contains(&trace), "{trace:?} in {all}");
    }
    let report = artifacts
        .iter()
        .find(|a| a["kind"] == "markdown" && a["key"] == "daily-report" && a["task_run"].is_null())
        .unwrap();
    assert_eq!(report["data"], "# Report\n\nsecret: ***", "{report}");
    assert_eq!(report["description"], "made with ***");
    let table = artifacts.iter().find(|a| a["kind"] == "table").unwrap();
    assert_eq!(table["data"], json!([{"secret": "***", "n": 1}]), "{table}");

    let (status, missing) = server.get("/api/artifacts/no-such-key");
    assert_eq!(status, 404, "{missing}");

    let out = server.cli(&["artifact", "inspect", "daily-report"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("daily-report v6 (markdown)"), "{shown}");
    assert!(shown.contains("6 versions"), "{shown}");
    let out = server.cli(&["artifact", "ls", "--key", "daily-report", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 6);
}

/// `{{ variables.NAME }}` in weir.yaml params is replaced at deploy time,
/// keeping the variable's type; an unset variable stops the deploy.
#[test]
fn weir_yaml_params_take_variables() {
    let server = TestServer::start();
    server.send("PUT", "/api/variables/rows", json!({"value": 500}));
    server.send("PUT", "/api/variables/team", json!({"value": "ops"}));
    let dir = tempfile::tempdir().unwrap();
    let yaml = |params: &str| {
        format!(
            "deployments:\n  - name: templated\n    component: {FIXTURE_WASM}\n    flow: call\n    params: {params}\n"
        )
    };
    let file = dir.path().join("weir.yaml");
    std::fs::write(
        &file,
        yaml(r#"{task: echo, input: {rows: "{{ variables.rows }}", to: "team {{ variables.team }}"}}"#),
    )
    .unwrap();
    let out = server.cli(&["deploy", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (_, deployment) = server.get("/api/deployments/templated");
    assert_eq!(
        deployment["deployment"]["params"]["input"],
        json!({"rows": 500, "to": "team ops"}),
        "{deployment}"
    );

    std::fs::write(
        &file,
        yaml(r#"{task: echo, input: "{{ variables.nope }}"}"#),
    )
    .unwrap();
    let out = server.cli(&["deploy", "-f", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("variable 'nope', which is not set"),
        "{}",
        text(&out.stderr)
    );
}

fn local_host(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::HOST)
        .args(args)
        .env("WEIR_HOME", home)
        .env_remove("WEIR_API_URL")
        .current_dir(workspace())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running the host")
}

/// The README's approval example without a server: `host flow run` ends
/// Paused (exit 0), the artifact shows what waits, a bad answer is refused
/// with exit 2, and `host flow-run resume --input` finishes it in this
/// process, replaying `plan` instead of running it again.
#[test]
fn the_approval_example_pauses_and_is_resumed_from_the_cli() {
    let home = tempfile::tempdir().unwrap();
    let out = local_host(home.path(), &["variable", "set", "price-increase", "10"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = local_host(home.path(), &["flow", "run", "examples/approval", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["state"], "Paused", "{run}");
    let id = run["flow_run_id"].as_str().unwrap().to_string();

    let out = local_host(
        home.path(),
        &["artifact", "inspect", "price-change", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let artifact: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        artifact["artifact"]["data"][2],
        json!({"plan": "team", "from": 60, "to": 66}),
        "{artifact}"
    );

    let out = local_host(
        home.path(),
        &[
            "flow-run",
            "resume",
            &id,
            "--input",
            r#"{"approved": "yes"}"#,
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("approved"),
        "{}",
        text(&out.stderr)
    );

    let out = local_host(
        home.path(),
        &[
            "flow-run",
            "resume",
            &id,
            "--input",
            r#"{"approved": true, "note": "ok for Q3"}"#,
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let done: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["state"], "Completed", "{done}");
    assert_eq!(
        done["result"],
        "approved (ok for Q3): applied 3 price changes"
    );
    assert_eq!(
        done["summary"]["replayed"], 4,
        "variable, plan, artifact and pause: {done}"
    );
    // The replayed artifact was not left again: one version, from the first attempt.
    let out = local_host(
        home.path(),
        &["artifact", "ls", "--key", "price-change", "--json"],
    );
    let versions: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(versions.as_array().unwrap().len(), 1, "{versions}");

    let out = local_host(home.path(), &["flow-run", "resume", &id, "--input", "{}"]);
    assert_eq!(out.status.code(), Some(2), "a finished run takes no input");
}

/// A remote host (`host run --pool`) has no variables of its own: the flow's
/// read and a task's read come from the server's API (the flow's recorded and
/// shipped like any call), and a pause is refused with a reason instead of
/// leaving a run no server could resume.
#[test]
fn a_remote_host_reads_variables_from_the_server_and_refuses_pause() {
    let server = TestServer::start_with(&["--no-worker"], None);
    let host_home = tempfile::tempdir().unwrap();
    let log = host_home.path().join("host.log");
    let mut remote = std::process::Command::new(common::HOST)
        .args([
            "run",
            "--pool",
            "wasm",
            "--api",
            &server.url,
            "--name",
            "far",
        ])
        .env("WEIR_HOME", host_home.path().join("home"))
        .env_remove("WEIR_API_URL")
        .env_remove("WEIR_API_KEY")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let digest = server.upload(FIXTURE_WASM);
    server.send(
        "PUT",
        "/api/variables/level",
        json!({"value": {"deep": [7]}}),
    );
    let read = start_fixture_run(
        &server,
        &digest,
        "call",
        json!({"task": "task_variable", "input": {"name": "level"}}),
    );
    let gate = start_fixture_run(
        &server,
        &digest,
        "approval_gate",
        json!({"name": "level", "timeout_s": 60}),
    );
    let ended = |r: &Value| {
        r["state"]
            .as_str()
            .is_some_and(|s| !["Scheduled", "Pending", "Running"].contains(&s))
    };
    let run = wait_for_run(&server, &read, Duration::from_secs(120), ended);
    let host_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(run["state"], "Completed", "{run}\n{host_log}");
    assert_eq!(run["result"], r#"{"deep":[7]}"#, "{run}");

    let run = wait_for_run(&server, &gate, Duration::from_secs(120), ended);
    assert_eq!(run["state"], "Failed", "{run}");
    assert!(
        run["message"]
            .as_str()
            .unwrap()
            .contains("pause is not available on a remote host"),
        "{run}"
    );
    let tasks = task_runs(&server, &gate);
    let read = tasks
        .iter()
        .find(|t| t["task_name"] == "weir:variable")
        .unwrap_or_else(|| panic!("the read was shipped: {tasks:?}"));
    assert_eq!(read["output"], r#"{"found":true,"value":{"deep":[7]}}"#);
    let _ = remote.kill();
    let _ = remote.wait();
}

fn runs_of(server: &TestServer, deployment: &str) -> Vec<Value> {
    let (_, list) = server.get("/api/flow-runs?limit=500");
    list["flow_runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["deployment"] == deployment)
        .cloned()
        .collect()
}

/// `run-deployment` from a flow: the child is a run of another component's
/// deployment and its result comes back; the parent, paused and resumed
/// after it, replays the start instead of starting a second child; an
/// unknown deployment, params the child's schema refuses and a child that
/// fails each fail the call with the reason; without waiting the call
/// returns the child's id.
#[test]
fn a_flow_runs_another_deployment_once_and_gets_its_result() {
    let server = TestServer::start();
    let fixture = server.upload(FIXTURE_WASM);
    let etl = server.upload(weir_tests::ETL_WASM);
    server.deploy(
        "etl-small",
        json!({"name": "etl-small", "component": etl, "flow": "etl", "params": {"rows": 20}}),
    );
    server.deploy(
        "always-fails",
        json!({"name": "always-fails", "component": fixture, "flow": "flow_fails", "params": {}}),
    );
    let launch = |deployment: &str, params: Value, wait: bool, then_pause: bool| {
        start_fixture_run(
            &server,
            &fixture,
            "launch",
            json!({"deployment": deployment, "params": params, "wait": wait, "then_pause": then_pause}),
        )
    };
    let ended = |r: &Value| {
        r["state"]
            .as_str()
            .is_some_and(|s| !["Scheduled", "Pending", "Running"].contains(&s))
    };

    let parent = launch("etl-small", json!({"rows": 40}), true, true);
    wait_for_run(
        &server,
        &parent,
        Duration::from_secs(120),
        state_is("Paused"),
    );
    assert_eq!(runs_of(&server, "etl-small").len(), 1);
    let (status, reply) = resume(&server, &parent, Some(json!({"input": {}})));
    assert_eq!(status, 202, "{reply}");
    let run = wait_for_run(&server, &parent, Duration::from_secs(120), ended);
    assert_eq!(run["state"], "Completed", "{run}");
    let total: u64 = (0..40u64).map(|i| (i * 7919) % 1000 * 2).sum();
    assert_eq!(
        serde_json::from_str::<Value>(run["result"].as_str().unwrap()).unwrap(),
        json!({"rows": 40, "chunks": 1, "total": total})
    );
    let children = runs_of(&server, "etl-small");
    assert_eq!(
        children.len(),
        1,
        "the resume started no second child: {children:?}"
    );
    let start = task_runs(&server, &parent)
        .into_iter()
        .find(|t| t["task_name"] == "weir:run-deployment")
        .unwrap();
    assert_eq!(
        start["output"],
        Value::String(children[0]["id"].to_string())
    );

    for (deployment, params, why) in [
        ("nope", json!({}), "no deployment named 'nope'"),
        ("etl-small", json!({"rows": "many"}), "rows"),
        ("always-fails", json!({}), "ended Failed"),
    ] {
        let id = launch(deployment, params, true, false);
        let run = wait_for_run(&server, &id, Duration::from_secs(120), ended);
        assert_eq!(run["state"], "Failed", "{run}");
        let message = run["message"].as_str().unwrap();
        assert!(message.contains(why), "{why}: {message}");
    }

    let id = launch("etl-small", json!({"rows": 3}), false, false);
    let run = wait_for_run(&server, &id, Duration::from_secs(120), ended);
    assert_eq!(run["state"], "Completed", "{run}");
    let child: String = serde_json::from_str(run["result"].as_str().unwrap()).unwrap();
    let child = wait_for_run(&server, &child, Duration::from_secs(120), ended);
    assert_eq!(child["state"], "Completed", "{child}");
    assert_eq!(child["deployment"], "etl-small");
}

/// Two people answer the same pause at once: exactly one resume wins (the
/// pause's record moves by compare-and-set), the other gets 409. A paused
/// run can be cancelled at once, though nobody runs it.
#[test]
fn a_pause_is_answered_once_and_a_paused_run_can_be_cancelled() {
    let server = TestServer::start();
    let digest = server.upload(FIXTURE_WASM);
    let id = start_fixture_run(&server, &digest, "pause_once", json!({}));
    wait_for_run(&server, &id, Duration::from_secs(60), state_is("Paused"));
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..4)
            .map(|i| {
                let (server, id) = (&server, &id);
                scope.spawn(move || resume(server, id, Some(json!({"input": {"who": i}}))).0)
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let won = statuses.iter().filter(|s| **s == 202).count();
    assert_eq!(won, 1, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 202 || *s == 409),
        "{statuses:?}"
    );
    let run = wait_for_run(&server, &id, Duration::from_secs(60), state_is("Completed"));
    let answer: Value = serde_json::from_str(run["result"].as_str().unwrap()).unwrap();
    assert!(answer["who"].is_u64(), "{run}");

    // Following a run (deployment run --watch) ends when it pauses, exit 0.
    server.deploy(
        "pauser",
        json!({"name": "pauser", "component": digest, "flow": "pause_once", "params": {}}),
    );
    let out = server.cli(&["deployment", "run", "pauser", "--watch", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Log lines come first, one JSON object each; the run's end is the last.
    let stdout = text(&out.stdout);
    let followed: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(followed["state"], "Paused", "{followed}");
    let id = followed["flow_run_id"].as_str().unwrap().to_string();
    let (status, reply) = server.send("POST", &format!("/api/flow-runs/{id}/cancel"), json!({}));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["state"], "Cancelled", "{reply}");
    let (status, reply) = resume(&server, &id, Some(json!({"input": {}})));
    assert_eq!(status, 409, "a cancelled run takes no input: {reply}");
}

/// Without a server nothing expires pauses on a timer: a resume that comes
/// after the deadline ends the pause itself (the run fails) instead of
/// continuing a run whose pause was over.
#[test]
fn a_resume_after_the_pause_timeout_is_refused_and_fails_the_run() {
    let home = tempfile::tempdir().unwrap();
    let args = [
        "flow",
        "run",
        FIXTURE_WASM,
        "approval_gate",
        "--param",
        "name=x",
    ];
    let out = local_host(
        home.path(),
        &[&args[..], &["--param", "timeout_s=1", "--json"]].concat(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["state"], "Paused", "{run}");
    let id = run["flow_run_id"].as_str().unwrap().to_string();
    // Input the schema refuses, until the deadline passes: then the refusal
    // is the timeout's (bounded; the clock, not an event, decides).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = local_host(home.path(), &["flow-run", "resume", &id, "--input", "{}"]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        let said = text(&out.stderr);
        if said.contains("timed out") {
            break;
        }
        assert!(said.contains("does not match"), "{said}");
        assert!(std::time::Instant::now() < deadline, "{said}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = local_host(home.path(), &["flow-run", "inspect", &id, "--json"]);
    let detail: Value = serde_json::from_slice(&out.stdout).unwrap();
    let state = &detail["flow_run"]["state"];
    assert_eq!(state, "Failed", "{detail}");
}
