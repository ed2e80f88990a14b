//! Deployment versions: a deploy that changes a deployment saves the next
//! version, the same deploy again saves none, runs record the version that
//! made them, and a rollback restores an older definition as a new version.

use crate::common;

use common::{TestServer, wait_for_run};
use serde_json::{Value, json};
use std::time::Duration;
use weir_tests::FIXTURE_WASM;

/// The fixture's `call` flow adding `a` and `b`.
fn adder(digest: &str, a: i64, b: i64) -> Value {
    json!({
        "component": digest, "flow": "call",
        "params": { "task": "add", "input": { "a": a, "b": b } },
    })
}

fn put(server: &TestServer, name: &str, body: Value) -> (u16, Value) {
    server.send("PUT", &format!("/api/deployments/{name}"), body)
}

fn versions(server: &TestServer, name: &str) -> Vec<Value> {
    let (status, reply) = server.get(&format!("/api/deployments/{name}/versions"));
    assert_eq!(status, 200, "{reply}");
    reply["versions"].as_array().unwrap().clone()
}

/// Runs the deployment to its end; returns the finished run.
fn run_to_end(server: &TestServer, name: &str) -> Value {
    let (status, started) =
        server.send("POST", &format!("/api/deployments/{name}/runs"), json!({}));
    assert_eq!(status, 202, "{started}");
    let id = started["flow_run_id"].as_str().unwrap().to_string();
    wait_for_run(server, &id, Duration::from_secs(60), |r| {
        r["ended_at"].is_i64()
    })
}

#[test]
fn changes_make_versions_the_same_deploy_makes_none_and_runs_record_theirs() {
    let server = TestServer::start();
    let digest = server.upload(FIXTURE_WASM);

    let (status, first) = put(&server, "adder", adder(&digest, 1, 2));
    assert_eq!(status, 201, "{first}");
    assert_eq!(
        (
            first["deployment"]["version"].clone(),
            first["changed"].clone()
        ),
        (json!(1), json!(true))
    );

    // The same definition again, even with `version` forged in the body: no new version.
    let mut again = adder(&digest, 1, 2);
    again["version"] = json!(42);
    let (status, same) = put(&server, "adder", again);
    assert_eq!(status, 200, "{same}");
    assert_eq!(
        (
            same["deployment"]["version"].clone(),
            same["changed"].clone()
        ),
        (json!(1), json!(false))
    );
    // Pausing and resuming is an operation, not a deploy.
    server.post_ok("/api/deployments/adder/pause");
    server.post_ok("/api/deployments/adder/resume");
    assert_eq!(versions(&server, "adder").len(), 1);

    let (_, second) = put(&server, "adder", adder(&digest, 10, 20));
    assert_eq!(second["deployment"]["version"], 2, "{second}");
    let run = run_to_end(&server, "adder");
    assert_eq!(
        (run["result"].clone(), run["deployment_version"].clone()),
        (json!("30"), json!(2)),
        "{run}"
    );

    // Roll back to 1: its params come back, as version 3, noted as such.
    let (status, rolled) = server.send(
        "POST",
        "/api/deployments/adder/rollback",
        json!({ "to": 1 }),
    );
    assert_eq!(status, 200, "{rolled}");
    assert_eq!(rolled["deployment"]["version"], 3, "{rolled}");
    let history = versions(&server, "adder");
    let numbers: Vec<&Value> = history.iter().map(|v| &v["version"]).collect();
    assert_eq!(numbers, [&json!(1), &json!(2), &json!(3)]);
    assert_eq!(history[2]["note"], "rollback to version 1");
    assert_eq!(
        history[2]["deployment"]["params"],
        history[0]["deployment"]["params"]
    );
    assert!(
        history
            .iter()
            .all(|v| v["created_by"].is_string() && v["created_at"].is_i64())
    );
    let later = run_to_end(&server, "adder");
    assert_eq!(
        (later["result"].clone(), later["deployment_version"].clone()),
        (json!("3"), json!(3)),
        "{later}"
    );
    // The run made by version 2 still says 2.
    let (_, detail) = server.get(&format!("/api/flow-runs/{}", run["id"].as_str().unwrap()));
    assert_eq!(detail["flow_run"]["deployment_version"], 2);

    // The CLI: inspect names the current version, history lists all three,
    // flow-run inspect names the run's.
    let inspect = server.cli(&["deployment", "inspect", "adder"]);
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        inspect.status.success() && text.contains("version    3"),
        "{text}"
    );
    let listed = server.cli(&["deployment", "history", "adder"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{text}");
    assert_eq!(
        text.lines().count(),
        4,
        "a header and three versions: {text}"
    );
    assert!(text.contains("rollback to version 1"), "{text}");
    let run_inspect = server.cli(&["flow-run", "inspect", run["id"].as_str().unwrap()]);
    let text = String::from_utf8_lossy(&run_inspect.stdout);
    assert!(text.contains("deployment adder (version 2)"), "{text}");

    // Rolling back to where it is already makes nothing new.
    let (_, still) = server.send(
        "POST",
        "/api/deployments/adder/rollback",
        json!({ "to": 3 }),
    );
    assert_eq!(still["changed"], false, "{still}");
    assert_eq!(versions(&server, "adder").len(), 3);
}

#[test]
fn a_rollback_to_a_version_that_does_not_exist_is_refused_and_changes_nothing() {
    let server = TestServer::start();
    let digest = server.upload(FIXTURE_WASM);
    put(&server, "adder", adder(&digest, 1, 2));
    put(&server, "adder", adder(&digest, 3, 4));
    for to in [json!(0), json!(3), json!(5_000_000_000u64)] {
        let (status, reply) = server.send(
            "POST",
            "/api/deployments/adder/rollback",
            json!({ "to": to }),
        );
        if to == json!(5_000_000_000u64) {
            assert_eq!(status, 400, "not a version number: {reply}");
            continue;
        }
        assert_eq!(status, 404, "{reply}");
        let message = reply["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("has no version {to}"))
                && message.contains("versions 1 to 2"),
            "{message}"
        );
    }
    for body in [
        json!({}),
        json!({ "to": "1" }),
        json!({ "to": 1, "extra": true }),
    ] {
        let (status, reply) = server.send("POST", "/api/deployments/adder/rollback", body);
        assert_eq!(status, 400, "{reply}");
    }
    let (status, reply) = server.send(
        "POST",
        "/api/deployments/nobody/rollback",
        json!({ "to": 1 }),
    );
    assert_eq!(status, 404, "{reply}");
    assert_eq!(versions(&server, "adder").len(), 2);
    let (_, current) = server.get("/api/deployments/adder");
    assert_eq!(current["deployment"]["version"], 2);

    let cli = server.cli(&["deployment", "rollback", "adder", "--to", "7"]);
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(!cli.status.success(), "{stderr}");
    assert!(stderr.contains("has no version 7"), "{stderr}");
}

/// Twenty deploys of different definitions at once: each saved version has
/// its own number (none lost, none twice); a loser is told to deploy again.
#[test]
fn concurrent_deploys_never_share_a_version_number() {
    let server = std::sync::Arc::new(TestServer::start());
    let digest = server.upload(FIXTURE_WASM);
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let (server, digest) = (server.clone(), digest.clone());
            std::thread::spawn(move || put(&server, "racy", adder(&digest, i, i)))
        })
        .collect();
    let mut saved = 0;
    for thread in threads {
        let (status, reply) = thread.join().unwrap();
        match status {
            200 | 201 => saved += 1,
            409 => assert!(
                reply["message"].as_str().unwrap().contains("deploy again"),
                "{reply}"
            ),
            other => panic!("{other}: {reply}"),
        }
    }
    let history = versions(&server, "racy");
    let numbers: Vec<u64> = history
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(
        numbers,
        (1..=saved as u64).collect::<Vec<_>>(),
        "{history:?}"
    );
    let (_, current) = server.get("/api/deployments/racy");
    assert_eq!(
        current["deployment"]["version"],
        json!(saved),
        "the last saved is the current one"
    );
}

#[test]
fn a_version_records_who_saved_it_by_key_fingerprint_never_the_key() {
    let key = "versions-test-admin-key-0123456789";
    let server = TestServer::with_key(key);
    let digest = server.upload(FIXTURE_WASM);
    let (status, reply) = put(&server, "adder", adder(&digest, 1, 2));
    assert_eq!(status, 201, "{reply}");
    let history = versions(&server, "adder");
    let by = history[0]["created_by"].as_str().unwrap();
    assert!(by.starts_with("admin key sha256:"), "{by}");
    assert!(!by.contains(key) && !by.contains(&key[..8]), "{by}");
}

/// `host deploy` of an unchanged weir.yaml says so and saves no version.
#[test]
fn deploying_the_same_file_twice_saves_one_version() {
    let server = TestServer::start();
    let digest = server.upload(FIXTURE_WASM);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weir.yaml");
    std::fs::write(
        &file,
        format!(
            "deployments:\n  - name: adder\n    component: sha256:{digest}\n    flow: call\n    params:\n      task: add\n      input: {{a: 1, b: 2}}\n"
        ),
    )
    .unwrap();
    let first = server.cli(&["deploy", "-f", file.to_str().unwrap()]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = server.cli(&["deploy", "-f", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&second.stdout);
    assert!(
        second.status.success() && text.contains("Unchanged"),
        "{text}"
    );
    assert_eq!(versions(&server, "adder").len(), 1);
}
