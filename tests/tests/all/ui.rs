//! The web UI as a browser and a hostile page would use it: every page's
//! status and escaping, the Run form's checks, CSRF tokens, the sign-in
//! cookie, and secrets that never reach a page (plain HTTP), then a real
//! headless Chromium driven over WebDriver (run page, timeline, live logs,
//! form checks). Servers listen on 127.0.0.1:0 in this process.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};
use weir_host::api::guard::{ApiKey, Role};
use weir_host::config::Paths;
use weir_host::server::{Server, ServerConfig, ServerHandle};
use weir_tests::{ETL_WASM, FIXTURE_WASM, test_engine_config, workspace};

const ADMIN_KEY: &str = "admin-key-0123456789abcdef";
const READER_KEY: &str = "reader-key-0123456789abcdef";

/// What a page request answered.
struct Reply {
    status: u16,
    location: Option<String>,
    set_cookie: Option<String>,
    csp: Option<String>,
    content_type: Option<String>,
    body: String,
}

/// A whole server (API, UI, executor) on 127.0.0.1:0 with a temp home.
struct UiServer {
    url: String,
    keys: bool,
    agent: ureq::Agent,
    _handle: ServerHandle,
    _runtime: tokio::runtime::Runtime,
    _home: tempfile::TempDir,
}

impl UiServer {
    fn start() -> UiServer {
        Self::start_with(false)
    }

    /// With `keys`, the server takes [`ADMIN_KEY`] and the read-only [`READER_KEY`].
    fn start_with(keys: bool) -> UiServer {
        Self::start_configured(keys, |_| {})
    }

    fn start_configured(keys: bool, adjust: impl FnOnce(&mut ServerConfig)) -> UiServer {
        let home = tempfile::tempdir().unwrap();
        let paths = Paths::at(home.path());
        let mut config = ServerConfig::new(paths.clone());
        config.engine = test_engine_config(Some(paths.compile_cache()));
        adjust(&mut config);
        if keys {
            config.api_keys = vec![
                ApiKey::new(Role::Admin, ADMIN_KEY),
                ApiKey::new(Role::ReadOnly, READER_KEY),
            ];
        }
        let server = Server::open(config).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let handle = runtime
            .block_on(server.start("127.0.0.1:0".parse().unwrap()))
            .unwrap();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        UiServer {
            url: handle.url(),
            keys,
            agent,
            _handle: handle,
            _runtime: runtime,
            _home: home,
        }
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<(String, &str)>,
    ) -> Reply {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let bytes = match body {
            Some((body, media_type)) => {
                request = request.header("content-type", media_type);
                body.into_bytes()
            }
            None => Vec::new(),
        };
        let mut response = self
            .agent
            .run(request.body(bytes).unwrap())
            .expect("the server answers");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let (location, set_cookie, csp, content_type) = (
            header("location"),
            header("set-cookie"),
            header("content-security-policy"),
            header("content-type"),
        );
        Reply {
            status: response.status().as_u16(),
            location,
            set_cookie,
            csp,
            content_type,
            body: response.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    /// GET as a browser holding `cookie` (the `Cookie` header's value).
    fn page(&self, path: &str, cookie: Option<&str>) -> Reply {
        let headers: Vec<(&str, String)> = cookie
            .map(|c| ("cookie", c.to_string()))
            .into_iter()
            .collect();
        self.send("GET", path, &headers, None)
    }

    /// POSTs a form as a browser holding `cookie`.
    fn form(&self, path: &str, fields: &[(&str, &str)], cookie: Option<&str>) -> Reply {
        let headers: Vec<(&str, String)> = cookie
            .map(|c| ("cookie", c.to_string()))
            .into_iter()
            .collect();
        self.send(
            "POST",
            path,
            &headers,
            Some((form_body(fields), "application/x-www-form-urlencoded")),
        )
    }

    /// Signs in with `key`; returns the `Cookie` header's value that holds
    /// the session, after checking that it is not the key in any form.
    fn sign_in(&self, key: &str) -> String {
        let reply = self.form("/login", &[("key", key)], None);
        assert_eq!(reply.status, 303, "{}", reply.body);
        let set_cookie = reply.set_cookie.expect("signing in sets a cookie");
        assert!(
            set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
            "{set_cookie}"
        );
        let cookie = set_cookie.split(';').next().unwrap().to_string();
        let value = cookie.strip_prefix("weir_session=").expect(&cookie);
        assert_eq!(value.len(), 64, "a 256-bit session id: {cookie}");
        for form in [key.to_string(), hex(key), hex(key).to_uppercase()] {
            assert!(
                !cookie.contains(&form),
                "the cookie holds the key: {cookie}"
            );
        }
        cookie
    }

    /// The JSON API, with the admin key when the server has keys.
    fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut headers = Vec::new();
        if self.keys {
            headers.push(("authorization", format!("Bearer {ADMIN_KEY}")));
        }
        let body = body.map(|b| (b.to_string(), "application/json"));
        let reply = self.send(method, path, &headers, body);
        let value = serde_json::from_str(&reply.body).unwrap_or(Value::String(reply.body));
        (reply.status, value)
    }

    fn upload(&self, wasm: &str) -> String {
        let mut headers = Vec::new();
        if self.keys {
            headers.push(("authorization", format!("Bearer {ADMIN_KEY}")));
        }
        let mut request = ureq::http::Request::builder()
            .method("POST")
            .uri(format!("{}/api/components", self.url))
            .header("content-type", "application/wasm");
        for (name, value) in &headers {
            request = request.header(*name, value);
        }
        let mut response = self
            .agent
            .run(request.body(std::fs::read(wasm).unwrap()).unwrap())
            .unwrap();
        let reply: Value =
            serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
        reply["digest"].as_str().unwrap().to_string()
    }

    /// Deploys the ETL example as `etl` with `rows` 40 by default.
    fn deploy_etl(&self) -> String {
        let digest = self.upload(ETL_WASM);
        let (status, reply) = self.api(
            "PUT",
            "/api/deployments/etl",
            Some(json!({ "name": "etl", "component": digest, "flow": "etl",
                         "description": "loads <b>rows</b>", "params": { "rows": 40 } })),
        );
        assert_eq!(status, 201, "{reply}");
        digest
    }

    /// Follows the UI's event stream of a run to its `end`; returns the log
    /// messages and the final run.
    fn follow(&self, id: &str, cookie: Option<&str>) -> (Vec<String>, Value) {
        let mut request =
            ureq::http::Request::builder().uri(format!("{}/runs/{id}/events", self.url));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .max_idle_connections(0)
            .build()
            .into();
        let mut response = agent.run(request.body(()).unwrap()).unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let mut event = String::new();
        let mut logs = Vec::new();
        for line in BufReader::new(response.body_mut().as_reader()).lines() {
            let line = line.unwrap();
            if let Some(name) = line.strip_prefix("event: ") {
                event = name.to_string();
            } else if let Some(data) = line.strip_prefix("data: ") {
                let value: Value = serde_json::from_str(data).unwrap();
                match event.as_str() {
                    "end" => return (logs, value),
                    "log" => logs.push(value["message"].as_str().unwrap().to_string()),
                    _ => {}
                }
            }
        }
        panic!("the event stream closed without an `end` event");
    }
}

fn form_body(fields: &[(&str, &str)]) -> String {
    let encode = |text: &str| {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    fields
        .iter()
        .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The CSRF token in a page's forms.
fn csrf_of(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let at = page
        .find(marker)
        .expect("the page has a form with a CSRF token")
        + marker.len();
    page[at..at + page[at..].find('"').unwrap()].to_string()
}

/// The run id a `/runs/ID` redirect names.
fn run_of(reply: &Reply) -> String {
    assert_eq!(reply.status, 303, "{}", reply.body);
    let location = reply.location.as_deref().unwrap();
    location.strip_prefix("/runs/").expect(location).to_string()
}

/// The UI's pages for a server holding `run` and deployment `etl`.
fn all_pages(run: &str, digest: &str) -> Vec<String> {
    [
        "/",
        "/runs",
        "/runs?state=Completed",
        "/deployments",
        "/deployments/etl",
        "/pools",
        "/components",
        "/secrets",
        "/variables",
        "/automations",
    ]
    .iter()
    .map(|p| p.to_string())
    .chain([format!("/runs/{run}"), format!("/components/{digest}")])
    .collect()
}

#[test]
fn every_page_answers_and_escapes_what_users_wrote() {
    let server = UiServer::start();
    let digest = server.upload(FIXTURE_WASM);
    let script = "<script>alert('x')</script>";
    // A deployment whose description, tags and params carry markup, and a
    // run of it whose failure message repeats the markup.
    let (status, reply) = server.api(
        "PUT",
        "/api/deployments/marked",
        Some(
            json!({ "name": "marked", "component": digest, "flow": "call",
                     "description": script, "tags": [script],
                     "params": { "task": script, "input": { "note": script } } }),
        ),
    );
    assert_eq!(status, 201, "{reply}");
    let (status, reply) = server.api("POST", "/api/deployments/marked/runs", Some(json!({})));
    assert_eq!(status, 202, "{reply}");
    let id = reply["flow_run_id"].as_str().unwrap().to_string();
    let (_, run) = server.follow(&id, None);
    assert_eq!(run["state"], "Failed", "{run}");
    let (status, _) = server.api(
        "PUT",
        "/api/variables/note",
        Some(json!({ "value": script })),
    );
    assert_eq!(status, 200);

    let mut pages = all_pages(&id, &digest);
    pages.retain(|p| p != "/deployments/etl");
    pages.push("/deployments/marked".into());
    pages.push(format!("/runs?tag={}", "%3Cscript%3E"));
    for path in &pages {
        let reply = server.page(path, None);
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        assert!(
            !reply.body.contains("<script>alert"),
            "{path} shows markup unescaped:\n{}",
            reply.body
        );
        let csp = reply.csp.unwrap_or_default();
        assert!(csp.contains("script-src 'self'"), "{path}: CSP {csp}");
    }
    for (path, what) in [
        (format!("/runs/{id}"), "the run's params"),
        ("/deployments/marked".to_string(), "the description"),
        ("/deployments".to_string(), "the tags"),
        ("/variables".to_string(), "the variable"),
    ] {
        let body = server.page(&path, None).body;
        assert!(
            body.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"),
            "{path} should show {what}, escaped:\n{body}"
        );
    }
    // Bad input in a URL gets a page that says what was wrong, not a crash.
    for (path, status) in [
        ("/runs/not-a-run", 404),
        ("/runs/0000aaaa", 404),
        ("/runs?state=Bogus", 400),
        ("/deployments/nope", 404),
        ("/components/xyz", 400),
        ("/no-such-page/%3Cb%3E", 404),
    ] {
        let reply = server.page(path, None);
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
        assert!(
            reply.body.contains("role=\"alert\""),
            "{path}: {}",
            reply.body
        );
    }
    // The API's own misses stay JSON.
    let (status, reply) = server.api("GET", "/api/no-such-endpoint", None);
    assert_eq!(
        (status, &reply["error"]),
        (404, &json!("not_found")),
        "{reply}"
    );
}

#[test]
fn the_run_form_shows_the_servers_refusal_and_a_valid_run_opens_its_page() {
    let server = UiServer::start();
    server.deploy_etl();
    let page = server.page("/deployments/etl", None);
    assert_eq!(page.status, 200);
    // The form is generated from the flow's schema, with the deployment's defaults.
    assert!(
        page.body.contains("name=\"param.rows\" value=\"40\""),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("name=\"param.chunk_size\""),
        "{}",
        page.body
    );
    let csrf = csrf_of(&page.body);

    // Below the schema's minimum: the server's own check refuses it, on the form.
    let refused = server.form(
        "/deployments/etl/run",
        &[
            ("csrf", &csrf),
            ("param.rows", "-3"),
            ("param.chunk_size", "10"),
        ],
        None,
    );
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.body.contains("id=\"run-error\""),
        "{}",
        refused.body
    );
    assert!(refused.body.contains("minimum of 0"), "{}", refused.body);
    // What was typed stays in the form.
    assert!(
        refused.body.contains("name=\"param.rows\" value=\"-3\""),
        "{}",
        refused.body
    );
    // Text where a number belongs is named too.
    let refused = server.form(
        "/deployments/etl/run",
        &[("csrf", &csrf), ("param.rows", "many")],
        None,
    );
    assert_eq!(refused.status, 422, "{}", refused.body);
    let (_, list) = server.api("GET", "/api/flow-runs", None);
    assert_eq!(list["flow_runs"], json!([]), "a refused form made a run");

    let started = server.form(
        "/deployments/etl/run",
        &[
            ("csrf", &csrf),
            ("param.rows", "30"),
            ("param.chunk_size", "10"),
        ],
        None,
    );
    let id = run_of(&started);
    let (logs, run) = server.follow(&id, None);
    assert_eq!(run["state"], "Completed", "{run}");
    assert!(logs.contains(&"extracting 30 rows".to_string()), "{logs:?}");
    assert_eq!(
        serde_json::from_str::<Value>(run["params"].as_str().unwrap()).unwrap(),
        json!({ "rows": 30, "chunk_size": 10 })
    );

    let page = server.page(&format!("/runs/{id}"), None).body;
    let gantt = &page[page.find("id=\"gantt\"").expect("a timeline")..];
    for task in ["extract", "transform", "load"] {
        assert!(
            gantt.contains(&format!("\">{task}</a>")),
            "the timeline lacks {task}:\n{gantt}"
        );
    }
    // 1 extract + 3 chunks + 1 load; load failed once and was retried.
    assert_eq!(gantt.matches("<tr class=\"task\">").count(), 5, "{gantt}");
    assert!(gantt.contains("retried"), "{gantt}");
    assert!(page.contains("badge s-Completed"), "{page}");
    // The load task's page shows both attempts: the failure, then success.
    let load = gantt
        .split("<tr class=\"task\">")
        .find(|row| row.contains(">load</a>"))
        .unwrap();
    let at = load.find("href=\"/task-runs/").unwrap() + "href=\"".len();
    let task_page = server
        .page(&load[at..at + load[at..].find('"').unwrap()], None)
        .body;
    assert_eq!(
        task_page.matches("<tr class=\"attempt\">").count(),
        2,
        "{task_page}"
    );
    assert!(
        task_page.contains("warehouse connection reset (simulated)"),
        "{task_page}"
    );
    assert!(
        task_page.contains(&format!("href=\"/runs/{id}\"")),
        "{task_page}"
    );
    for (path, status) in [
        ("/task-runs/nope", 400),
        ("/task-runs/01a21c43-0d85-72b8-b05c-751fd9f3009b", 404),
    ] {
        assert_eq!(server.page(path, None).status, status, "{path}");
    }
    // A completed run offers neither cancel nor retry.
    assert!(
        !page.contains("/cancel\"") && !page.contains("/retry\""),
        "{page}"
    );
}

#[test]
fn forms_without_this_pages_csrf_token_change_nothing() {
    let server = UiServer::start();
    server.deploy_etl();
    for token in [None, Some(""), Some("0123456789abcdef0123456789abcdef")] {
        let mut fields = vec![("param.rows", "5")];
        if let Some(token) = token {
            fields.push(("csrf", token));
        }
        let reply = server.form("/deployments/etl/run", &fields, None);
        assert_eq!(reply.status, 403, "{token:?}: {}", reply.body);
        let mut fields = vec![("name", "stolen"), ("value", "attacker-chosen-value")];
        if let Some(token) = token {
            fields.push(("csrf", token));
        }
        assert_eq!(server.form("/secrets", &fields, None).status, 403);
    }
    let (_, runs) = server.api("GET", "/api/flow-runs", None);
    assert_eq!(runs["flow_runs"], json!([]));
    let (_, secrets) = server.api("GET", "/api/secrets", None);
    assert_eq!(secrets["secrets"], json!([]));

    // A form posted from another site's page is refused by the Host/Origin guard.
    let csrf = csrf_of(&server.page("/secrets", None).body);
    let reply = server.send(
        "POST",
        "/secrets",
        &[("origin", "http://evil.example".to_string())],
        Some((
            form_body(&[("csrf", &csrf), ("name", "x1"), ("value", "abcdefgh-long")]),
            "application/x-www-form-urlencoded",
        )),
    );
    assert_eq!(reply.status, 403, "{}", reply.body);
    let reply = server.send("GET", "/", &[("host", "evil.example".to_string())], None);
    assert_eq!(reply.status, 403, "{}", reply.body);
}

#[test]
fn a_secret_set_in_the_ui_never_appears_in_any_page() {
    let server = UiServer::start();
    let digest = server.deploy_etl();
    let value = "hunter2-very-secret-value";
    let csrf = csrf_of(&server.page("/secrets", None).body);
    let saved = server.form(
        "/secrets",
        &[
            ("csrf", &csrf),
            ("name", "warehouse-password"),
            ("value", value),
        ],
        None,
    );
    assert_eq!(saved.status, 303, "{}", saved.body);
    // Replacing it works the same way.
    let saved = server.form(
        "/secrets",
        &[
            ("csrf", &csrf),
            ("name", "warehouse-password"),
            ("value", value),
        ],
        None,
    );
    assert_eq!(saved.status, 303, "{}", saved.body);
    // A too-short value is refused with the API's reason, and not echoed.
    let refused = server.form(
        "/secrets",
        &[("csrf", &csrf), ("name", "short"), ("value", "q7")],
        None,
    );
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("at least"), "{}", refused.body);
    assert!(!refused.body.contains("q7"), "{}", refused.body);

    let csrf = csrf_of(&server.page("/deployments/etl", None).body);
    let id = run_of(&server.form("/deployments/etl/run", &[("csrf", &csrf)], None));
    server.follow(&id, None);
    let secrets = server.page("/secrets", None).body;
    assert!(secrets.contains("warehouse-password"), "{secrets}");
    assert!(secrets.contains("••••"), "{secrets}");
    for path in all_pages(&id, &digest).iter().map(String::as_str).chain([
        "/api/secrets",
        "/assets/app.js",
        "/assets/style.css",
    ]) {
        let reply = server.page(path, None);
        assert!(!reply.body.contains(value), "{path} shows the secret");
        assert!(
            !reply.body.contains("hunter2"),
            "{path} shows part of the secret"
        );
    }
}

#[test]
fn with_api_keys_no_page_or_stream_shows_anything_without_the_cookie() {
    let server = UiServer::start_with(true);
    let digest = server.deploy_etl();
    let (status, started) = server.api("POST", "/api/deployments/etl/runs", Some(json!({})));
    assert_eq!(status, 202);
    let id = started["flow_run_id"].as_str().unwrap().to_string();
    let admin_cookie = server.sign_in(ADMIN_KEY);
    server.follow(&id, Some(&admin_cookie));

    let (_, detail) = server.api("GET", &format!("/api/flow-runs/{id}"), None);
    let task = detail["task_runs"][0]["id"].as_str().unwrap().to_string();
    let mut pages = all_pages(&id, &digest);
    pages.push(format!("/task-runs/{task}"));

    // Without a cookie, or with a wrong one (a forged session id, the key
    // itself where the session id goes, the key in the old cookie), every
    // page sends the browser to sign in and shows nothing of the server's data.
    let forged = format!("weir_session={}", "ab".repeat(32));
    let key_as_session = format!("weir_session={ADMIN_KEY}");
    let hex_key_as_session = format!("weir_session={}", hex(ADMIN_KEY));
    let old_key_cookie = format!("weir_key={}", hex(ADMIN_KEY));
    for cookie in [
        None,
        Some(forged.as_str()),
        Some(key_as_session.as_str()),
        Some(hex_key_as_session.as_str()),
        Some(old_key_cookie.as_str()),
        Some("weir_session="),
        Some("weir_session=not-hex; weir_session=also-not"),
    ] {
        for path in &pages {
            let reply = server.page(path, cookie);
            assert_eq!(reply.status, 303, "{path} with {cookie:?}: {}", reply.body);
            assert_eq!(reply.location.as_deref(), Some("/login"), "{path}");
            for data in ["etl", &id[..8], &digest[..12], "extract"] {
                assert!(
                    !reply.body.contains(data),
                    "{path} leaks {data}: {}",
                    reply.body
                );
            }
        }
        let stream = server.page(&format!("/runs/{id}/events"), cookie);
        assert_eq!(stream.status, 401, "{}", stream.body);
        assert!(!stream.body.contains("extracting"), "{}", stream.body);
        for path in [
            format!("/runs/{id}/retry"),
            format!("/runs/{id}/cancel"),
            "/deployments/etl/run".into(),
            "/deployments/etl/pause".into(),
            "/deployments/etl/edit".into(),
            "/pools/wasm/pause".into(),
            "/pools".into(),
            "/pools/queues".into(),
            "/components".into(),
            format!("/components/{digest}/deploy"),
            "/variables".into(),
            "/secrets".into(),
            "/deployments/etl/delete".into(),
            "/secrets/x/delete".into(),
            "/automations".into(),
        ] {
            let reply = server.form(&path, &[("name", "x"), ("value", "y")], cookie);
            assert_eq!(reply.status, 401, "{path}: {}", reply.body);
        }
    }
    // The assets hold no data; the sign-in page asks for a key.
    for path in ["/assets/app.js", "/assets/style.css", "/login"] {
        let reply = server.page(path, None);
        assert_eq!(reply.status, 200, "{path}");
        assert!(!reply.body.contains(&digest[..12]) && !reply.body.contains(&id[..8]));
    }
    // The cookie is the UI's: the JSON API still wants a bearer key.
    let reply = server.page("/api/flow-runs", Some(&admin_cookie));
    assert_eq!(reply.status, 401, "{}", reply.body);

    // Signing in: a wrong key is refused, a right one sets the cookie.
    let refused = server.form("/login", &[("key", "wrong-key-0123456789abcdef")], None);
    assert_eq!(refused.status, 401);
    assert!(refused.set_cookie.is_none());
    let signed_in = server.form("/login", &[("key", ADMIN_KEY)], None);
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    let cookie = signed_in.set_cookie.expect("a cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap().to_string();
    assert_ne!(cookie, admin_cookie, "each sign-in is a session of its own");
    let run_page = server.page(&format!("/runs/{id}"), Some(&cookie));
    assert_eq!(run_page.status, 200);
    assert!(run_page.body.contains("id=\"gantt\""), "{}", run_page.body);
    let (logs, _) = server.follow(&id, Some(&cookie));
    assert!(logs.iter().any(|l| l.contains("extracting")), "{logs:?}");

    // A read-only key sees pages but may not set secrets or start runs,
    // even with its own page's CSRF token.
    let reader = server.sign_in(READER_KEY);
    let page = server.page("/deployments/etl", Some(&reader));
    assert_eq!(page.status, 200);
    let csrf = csrf_of(&page.body);
    let reply = server.form("/deployments/etl/run", &[("csrf", &csrf)], Some(&reader));
    assert_eq!(reply.status, 403, "{}", reply.body);
    let reply = server.form(
        "/secrets",
        &[("csrf", &csrf), ("name", "x1"), ("value", "abcdefgh-long")],
        Some(&reader),
    );
    assert_eq!(reply.status, 403, "{}", reply.body);
    let reply = server.form("/deployments/etl/pause", &[("csrf", &csrf)], Some(&reader));
    assert_eq!(reply.status, 403, "{}", reply.body);
    let reply = server.form(
        "/deployments/etl/delete",
        &[("csrf", &csrf), ("confirm", "yes")],
        Some(&reader),
    );
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(server.api("GET", "/api/deployments/etl", None).0, 200);
    // One key's token is not another's.
    let reply = server.form("/deployments/etl/run", &[("csrf", &csrf)], Some(&cookie));
    assert_eq!(reply.status, 403, "{}", reply.body);
    let (_, runs) = server.api("GET", "/api/flow-runs", None);
    assert_eq!(runs["flow_runs"].as_array().unwrap().len(), 1);
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

// ---- in a real browser ----

/// A headless Chromium session over WebDriver (chromedriver's JSON over
/// HTTP, spoken with ureq: no TLS and no extra crates needed on loopback).
struct Browser {
    driver: std::process::Child,
    base: String,
    session: String,
    agent: ureq::Agent,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    /// Starts chromedriver and a headless session; `None` (with one line
    /// saying why) when no browser is installed, unless `CI=true`.
    fn launch() -> Option<Browser> {
        let find = |names: &[&str]| {
            names.iter().find_map(|name| {
                std::env::var_os("PATH").and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|dir| dir.join(name))
                        .find(|path| path.is_file())
                })
            })
        };
        let (Some(driver), Some(chromium)) = (
            find(&["chromedriver"]),
            find(&["chromium", "chromium-browser"]),
        ) else {
            let why = "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver; .ci/run does)";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true: browser tests must run, but {why}");
            }
            eprintln!("skipping the browser test: {why}");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut browser = Browser {
            driver: child,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            agent,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut reply) = browser.agent.get(format!("{}/status", browser.base)).call() {
                let status: Value =
                    serde_json::from_str(&reply.body_mut().read_to_string().unwrap()).unwrap();
                if status["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver was not ready in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let session = browser.call(
            "POST",
            "/session",
            json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome",
                "goog:chromeOptions": { "binary": chromium.to_str().unwrap(),
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,1400"] } } } }),
        );
        browser.session = session["sessionId"]
            .as_str()
            .expect("a session")
            .to_string();
        Some(browser)
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string().into_bytes())
            .unwrap();
        let mut reply = self.agent.run(request).expect("chromedriver answers");
        let value: Value =
            serde_json::from_str(&reply.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(reply.status().as_u16(), 200, "{method} {path}: {value}");
        value["value"].clone()
    }

    fn session_call(&self, method: &str, path: &str, body: Value) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn goto(&self, url: &str) {
        self.session_call("POST", "/url", json!({ "url": url }));
    }

    fn url(&self) -> String {
        self.session_call("GET", "/url", json!({}))
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The page's script's answer to `script` (a function body).
    fn script(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
    }

    fn element(&self, css: &str) -> String {
        let found = self.session_call(
            "POST",
            "/element",
            json!({ "using": "css selector", "value": css }),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css);
        // A file input takes a path and cannot be cleared.
        if !css.contains("type=file") {
            self.session_call("POST", &format!("/element/{element}/clear"), json!({}));
        }
        self.session_call(
            "POST",
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        );
    }

    fn click(&self, css: &str) {
        let element = self.element(css);
        self.session_call("POST", &format!("/element/{element}/click"), json!({}));
    }

    /// Waits (at most a minute) until `script` returns true.
    fn wait_until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.script(script) != json!(true) {
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what} at {}: {}",
                self.url(),
                self.script("return document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn source(&self) -> String {
        self.session_call("GET", "/source", json!({}))
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Saves a PNG under `target/ui-screenshots/` (a CI artifact).
    fn screenshot(&self, name: &str) {
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"))
            .join("ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        self.save_screenshot(&dir.join(name));
    }

    fn save_screenshot(&self, path: &std::path::Path) {
        let encoded = self.session_call("GET", "/screenshot", json!({}));
        std::fs::write(path, base64_decode(encoded.as_str().unwrap())).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("{}/session/{}", self.base, self.session);
            let _ = self.agent.delete(path).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, c)| n | (u32::from(value(*c)) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn in_a_browser_a_run_shows_its_timeline_and_live_logs() {
    let Some(browser) = Browser::launch() else {
        return;
    };
    let server = UiServer::start_with(true);

    // Signed out, the browser lands on the sign-in form.
    browser.goto(&format!("{}/components", server.url));
    assert!(browser.url().ends_with("/login"), "{}", browser.url());
    browser.type_into("input[name=key]", ADMIN_KEY);
    browser.click("form[action='/login'] button");
    browser.wait_until(
        "the dashboard",
        "return document.title.startsWith('Dashboard')",
    );
    // The cookie is out of the page's reach.
    assert_eq!(browser.script("return document.cookie"), json!(""));

    // As a new user would: upload the ETL example, deploy its flow, run it.
    browser.goto(&format!("{}/components", server.url));
    let etl = std::fs::canonicalize(ETL_WASM).unwrap();
    browser.type_into("#upload input[type=file]", etl.to_str().unwrap());
    browser.click("#upload button");
    browser.wait_until(
        "the component's page",
        "return location.pathname.startsWith('/components/') && document.title.startsWith('Component')",
    );
    browser.click("form[action$='/deploy'] button");
    browser.wait_until(
        "the deployment's page",
        "return location.pathname === '/deployments/etl'",
    );

    // An invalid parameter is caught before the form is sent.
    browser.type_into("input[name='param.rows']", "-5");
    browser.click("#run-form button");
    browser.wait_until(
        "the field's error",
        "return [...document.querySelectorAll('.field-error')].some(e => e.textContent.includes('rows must be at least 0'))",
    );
    assert!(
        browser.url().ends_with("/deployments/etl"),
        "{}",
        browser.url()
    );
    let (_, runs) = server.api("GET", "/api/flow-runs", None);
    assert_eq!(runs["flow_runs"], json!([]), "an invalid form was sent");
    browser.screenshot("run-form-error.png");

    // A valid one starts a run and opens its page.
    browser.type_into("input[name='param.rows']", "60");
    browser.click("#run-form button");
    browser.wait_until(
        "the run page",
        "return location.pathname.startsWith('/runs/')",
    );
    browser.wait_until(
        "live log lines",
        "return [...document.querySelectorAll('#logs .line')].some(l => l.textContent.includes('extracting 60 rows'))",
    );
    browser.wait_until(
        "the completed timeline",
        "return document.querySelector('#run-state .badge')?.textContent === 'Completed' \
         && ['extract', 'transform', 'load'].every(t => [...document.querySelectorAll('#gantt tr.task td.name a')].some(a => a.textContent === t))",
    );
    browser.screenshot("run-page.png");
    // `WEIR_UPDATE_SCREENSHOTS=1 cargo test -p weir-tests --test ui -- in_a_browser`
    // refreshes the README's picture from this very page.
    if std::env::var_os("WEIR_UPDATE_SCREENSHOTS").is_some() {
        browser.wait_until(
            "the last log line",
            "return [...document.querySelectorAll('#logs .line')].some(l => l.textContent.includes('loaded'))",
        );
        browser.save_screenshot(&workspace().join("docs/run-page.png"));
    }
    // Times are shown in the viewer's zone (the page says UTC without script).
    browser.wait_until(
        "local times",
        "const t = [...document.querySelectorAll('time')]; return t.length > 0 && t.every(e => !e.textContent.endsWith('Z') && e.title.endsWith('Z'))",
    );

    // The level filter hides lines below the level chosen.
    browser.script(
        "const s = document.getElementById('log-level'); s.value = '4'; s.dispatchEvent(new Event('change')); return true",
    );
    let shown = browser.script(
        "return [...document.querySelectorAll('#logs .line')].filter(l => !l.hidden).map(l => l.textContent)",
    );
    assert!(
        shown
            .as_array()
            .unwrap()
            .iter()
            .all(|l| !l.as_str().unwrap().contains("INFO")),
        "{shown}"
    );

    // A secret typed into its form never comes back to the browser.
    let value = "browser-secret-value-93715";
    browser.goto(&format!("{}/secrets", server.url));
    browser.type_into("input[name=name]", "browser-secret");
    browser.type_into("input[name=value]", value);
    browser.click("form[action='/secrets'] button");
    browser.wait_until(
        "the secret listed",
        "return document.body.innerText.includes('browser-secret')",
    );
    assert!(!browser.source().contains(value));
}

#[test]
fn big_pages_are_gzipped_and_event_streams_are_not() {
    let server = UiServer::start();
    let digest = server.upload(ETL_WASM);
    let (status, started) = server.api(
        "POST",
        &format!("/api/components/{digest}/flows/etl/runs"),
        Some(json!({ "params": { "rows": 200, "chunk_size": 1 } })),
    );
    assert_eq!(status, 202, "{started}");
    let id = started["flow_run_id"].as_str().unwrap().to_string();
    server.follow(&id, None);
    let plain = server.page(&format!("/runs/{id}"), None);
    assert!(plain.body.len() > 40_000, "{}", plain.body.len());

    let gzip = [("accept-encoding", "gzip, deflate".to_string())];
    let mut request = ureq::http::Request::builder().uri(format!("{}/runs/{id}", server.url));
    for (name, value) in &gzip {
        request = request.header(*name, value);
    }
    let mut response = server.agent.run(request.body(()).unwrap()).unwrap();
    assert_eq!(
        response
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("gzip")
    );
    let compressed = response.body_mut().read_to_vec().unwrap();
    assert!(
        compressed.len() * 5 < plain.body.len(),
        "{} bytes",
        compressed.len()
    );
    let mut unpacked = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&compressed[..]),
        &mut unpacked,
    )
    .unwrap();
    // The same page (but for the times and figures of a live render).
    assert_eq!(
        unpacked.matches("<tr class=\"task\">").count(),
        plain.body.matches("<tr class=\"task\">").count()
    );
    assert_eq!(unpacked.matches("<tr class=\"task\">").count(), 202);

    // An event stream is not buffered to be compressed: its first event
    // arrives while the stream is open.
    let mut request =
        ureq::http::Request::builder().uri(format!("{}/runs/{id}/events", server.url));
    for (name, value) in &gzip {
        request = request.header(*name, value);
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .max_idle_connections(0)
        .build()
        .into();
    let mut response = agent.run(request.body(()).unwrap()).unwrap();
    assert!(response.headers().get("content-encoding").is_none());
    let mut first = String::new();
    BufReader::new(response.body_mut().as_reader())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "event: log\n");
}

#[test]
fn cancel_and_retry_buttons_act_through_the_dispatcher() {
    let server = UiServer::start();
    let digest = server.upload(FIXTURE_WASM);
    let (status, reply) = server.api(
        "PUT",
        "/api/deployments/slow",
        Some(
            json!({ "name": "slow", "component": digest, "flow": "slow_sequential",
                     "params": { "n": 600, "ms": 100 } }),
        ),
    );
    assert_eq!(status, 201, "{reply}");
    let csrf = csrf_of(&server.page("/deployments/slow", None).body);
    let id = run_of(&server.form("/deployments/slow/run", &[("csrf", &csrf)], None));
    let page = server.page(&format!("/runs/{id}"), None).body;
    assert!(
        page.contains(&format!("action=\"/runs/{id}/cancel\"")),
        "{page}"
    );
    assert!(
        !page.contains("/retry\""),
        "a run going on offers no retry: {page}"
    );
    // A cancel without the page's token is refused and changes nothing.
    let refused = server.form(&format!("/runs/{id}/cancel"), &[("csrf", "0")], None);
    assert_eq!(refused.status, 403);
    let (_, detail) = server.api("GET", &format!("/api/flow-runs/{id}"), None);
    let state = detail["flow_run"]["state"].as_str().unwrap();
    assert!(!["Cancelling", "Cancelled"].contains(&state), "{detail}");

    let cancelled = server.form(&format!("/runs/{id}/cancel"), &[("csrf", &csrf)], None);
    assert_eq!(
        cancelled.location.as_deref(),
        Some(format!("/runs/{id}").as_str())
    );
    let (_, run) = server.follow(&id, None);
    assert_eq!(run["state"], "Cancelled", "{run}");
    // Cancelling again is refused with the dispatcher's reason.
    let again = server.form(&format!("/runs/{id}/cancel"), &[("csrf", &csrf)], None);
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(again.body.contains("role=\"alert\""), "{}", again.body);

    let page = server.page(&format!("/runs/{id}"), None).body;
    assert!(
        page.contains(&format!("action=\"/runs/{id}/retry\"")),
        "{page}"
    );
    let retried = server.form(&format!("/runs/{id}/retry"), &[("csrf", &csrf)], None);
    assert_eq!(retried.status, 303, "{}", retried.body);
    let (_, detail) = server.api("GET", &format!("/api/flow-runs/{id}"), None);
    let state = detail["flow_run"]["state"].as_str().unwrap();
    assert!(
        ["Pending", "Running", "Scheduled"].contains(&state),
        "{detail}"
    );
    let cancelled = server.form(&format!("/runs/{id}/cancel"), &[("csrf", &csrf)], None);
    assert_eq!(cancelled.status, 303, "{}", cancelled.body);
    let (_, run) = server.follow(&id, None);
    assert_eq!(run["state"], "Cancelled", "{run}");
}

#[test]
fn the_timeline_marks_cache_hits() {
    let server = UiServer::start();
    let digest = server.upload(FIXTURE_WASM);
    let (_, started) = server.api(
        "POST",
        &format!("/api/components/{digest}/flows/cached_repeat/runs"),
        Some(json!({ "params": { "n": 3 } })),
    );
    let id = started["flow_run_id"].as_str().unwrap().to_string();
    let (_, run) = server.follow(&id, None);
    assert_eq!(run["state"], "Completed", "{run}");
    let page = server.page(&format!("/runs/{id}"), None).body;
    let gantt = &page[page.find("id=\"gantt\"").unwrap()..];
    // The first call computes; the two after it come from the cache.
    assert_eq!(gantt.matches("<tr class=\"task\">").count(), 3, "{gantt}");
    assert_eq!(gantt.matches(">cache hit<").count(), 2, "{gantt}");
}

#[test]
fn pausing_from_the_ui_holds_runs_and_the_form_says_why() {
    let server = UiServer::start();
    server.deploy_etl();
    let page = server.page("/deployments/etl", None).body;
    let csrf = csrf_of(&page);
    assert!(page.contains("action=\"/deployments/etl/pause\""), "{page}");
    assert_eq!(
        server
            .form("/deployments/etl/pause", &[("csrf", "x")], None)
            .status,
        403
    );
    let paused = server.form("/deployments/etl/pause", &[("csrf", &csrf)], None);
    assert_eq!(paused.status, 303, "{}", paused.body);
    let (_, deployment) = server.api("GET", "/api/deployments/etl", None);
    assert_eq!(deployment["deployment"]["paused"], true, "{deployment}");
    // The dispatcher refuses a run of a paused deployment; the form says so.
    let refused = server.form("/deployments/etl/run", &[("csrf", &csrf)], None);
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.body.contains("paused"), "{}", refused.body);
    assert!(refused.body.contains("action=\"/deployments/etl/resume\""));
    let resumed = server.form("/deployments/etl/resume", &[("csrf", &csrf)], None);
    assert_eq!(resumed.status, 303);
    let id = run_of(&server.form("/deployments/etl/run", &[("csrf", &csrf)], None));
    assert_eq!(server.follow(&id, None).1["state"], "Completed");
    // Unknown deployments are named, not crashed on.
    let missing = server.form("/deployments/nope/pause", &[("csrf", &csrf)], None);
    assert_eq!(missing.status, 404, "{}", missing.body);

    // Pools pause the same way.
    let pools = server.page("/pools", None).body;
    assert!(pools.contains("action=\"/pools/wasm/pause\""), "{pools}");
    assert_eq!(
        server
            .form("/pools/wasm/pause", &[("csrf", &csrf)], None)
            .status,
        303
    );
    let (_, pool) = server.api("GET", "/api/work-pools/wasm", None);
    assert_eq!(pool["paused"], true, "{pool}");
    assert!(
        server
            .page("/pools", None)
            .body
            .contains("action=\"/pools/wasm/resume\"")
    );
    assert_eq!(
        server
            .form("/pools/wasm/resume", &[("csrf", &csrf)], None)
            .status,
        303
    );
    let (_, pool) = server.api("GET", "/api/work-pools/wasm", None);
    assert_eq!(pool["paused"], false, "{pool}");
}

#[test]
fn variables_set_in_the_ui_keep_their_json_and_names_are_checked() {
    let server = UiServer::start();
    let csrf = csrf_of(&server.page("/variables", None).body);
    for (name, value) in [("limits", "{\"rows\": 5}"), ("greeting", "<i>hello</i>")] {
        let saved = server.form(
            "/variables",
            &[("csrf", &csrf), ("name", name), ("value", value)],
            None,
        );
        assert_eq!(saved.status, 303, "{}", saved.body);
    }
    let (_, limits) = server.api("GET", "/api/variables/limits", None);
    assert_eq!(limits["value"], json!({ "rows": 5 }));
    let (_, greeting) = server.api("GET", "/api/variables/greeting", None);
    assert_eq!(greeting["value"], json!("<i>hello</i>"));
    let page = server.page("/variables", None).body;
    assert!(
        page.contains("&lt;i&gt;hello&lt;/i&gt;") && !page.contains("<i>hello"),
        "{page}"
    );
    // The API's name rule, with its reason.
    let refused = server.form(
        "/variables",
        &[("csrf", &csrf), ("name", "../etc"), ("value", "1")],
        None,
    );
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("role=\"alert\""), "{}", refused.body);
}

#[test]
fn the_run_list_pages_through_runs_and_keeps_its_filters() {
    let server = UiServer::start();
    let digest = server.upload(FIXTURE_WASM);
    let mut ids = Vec::new();
    for i in 0..52 {
        let (status, started) = server.api(
            "POST",
            &format!("/api/components/{digest}/flows/call/runs"),
            Some(json!({ "params": { "task": "add", "input": { "a": i, "b": 1 } }, "tags": ["batch"] })),
        );
        assert_eq!(status, 202, "{started}");
        ids.push(started["flow_run_id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        server.follow(id, None);
    }
    let first = server.page("/runs?tag=batch&within=24h", None).body;
    assert_eq!(
        first.matches("<tr><td><a href=\"/runs/").count(),
        50,
        "{first}"
    );
    // Newest first: the last run started is on the first page, the first is not.
    assert!(first.contains(&ids[51]) && !first.contains(&ids[0]));
    assert!(
        first.contains("href=\"/runs?tag=batch&amp;within=24h&amp;offset=50\""),
        "{first}"
    );
    let second = server
        .page("/runs?tag=batch&within=24h&offset=50", None)
        .body;
    assert_eq!(
        second.matches("<tr><td><a href=\"/runs/").count(),
        2,
        "{second}"
    );
    assert!(
        second.contains(&ids[0]) && !second.contains("rel=\"next\""),
        "{second}"
    );
    assert!(second.contains("offset=0\" rel=\"prev\""), "{second}");
    // Filters that match nothing, far pages and bad windows.
    assert!(
        server
            .page("/runs?tag=other", None)
            .body
            .contains("No runs.")
    );
    assert!(
        server
            .page("/runs?offset=100000", None)
            .body
            .contains("No runs.")
    );
    assert_eq!(server.page("/runs?within=forever", None).status, 400);
    assert_eq!(server.page("/runs?offset=-1", None).status, 400);
    // The dashboard counts them and draws the hour they ran in.
    let dashboard = server.page("/", None).body;
    assert!(
        dashboard.contains("href=\"/runs?state=Completed\""),
        "{dashboard}"
    );
    assert!(dashboard.contains("<strong>52</strong>"), "{dashboard}");
    // (Summed: the runs may straddle the turn of an hour.)
    let charted: u64 = dashboard
        .split("<title>")
        .skip(1)
        .filter_map(|t| t.split_once(" runs, "))
        .map(|(n, _)| n.parse::<u64>().unwrap())
        .sum();
    assert_eq!(charted, 52, "{dashboard}");
}

#[test]
fn a_deployment_edited_in_the_ui_is_checked_like_a_put() {
    let server = UiServer::start();
    let digest = server.deploy_etl();
    let page = server.page("/deployments/etl", None).body;
    let csrf = csrf_of(&page);
    assert!(page.contains("action=\"/deployments/etl/edit\""), "{page}");
    let edited = json!({ "name": "etl", "component": digest, "flow": "etl",
        "description": "nightly <load>", "params": { "rows": 7 }, "tags": ["nightly"],
        "concurrency_limit": 2 });
    let saved = server.form(
        "/deployments/etl/edit",
        &[("csrf", &csrf), ("deployment", &edited.to_string())],
        None,
    );
    assert_eq!(saved.status, 303, "{}", saved.body);
    let (_, stored) = server.api("GET", "/api/deployments/etl", None);
    let stored = &stored["deployment"];
    assert_eq!(
        (
            &stored["description"],
            &stored["params"],
            &stored["tags"],
            &stored["concurrency_limit"]
        ),
        (
            &json!("nightly <load>"),
            &json!({ "rows": 7 }),
            &json!(["nightly"]),
            &json!(2)
        ),
        "{stored}"
    );
    let page = server.page("/deployments/etl", None).body;
    assert!(
        page.contains("nightly &lt;load&gt;") && page.contains("value=\"7\""),
        "{page}"
    );
    assert!(
        server
            .page("/deployments?tag=nightly", None)
            .body
            .contains("href=\"/deployments/etl\"")
    );
    assert!(
        !server
            .page("/deployments?tag=other", None)
            .body
            .contains("href=\"/deployments/etl\"")
    );

    // Refusals come back on the form with the text as sent, and change nothing.
    let unknown_pool =
        json!({ "name": "etl", "component": digest, "flow": "etl", "work_pool": "nowhere" });
    for (text, status, reason) in [
        ("{not json".to_string(), 400, "not JSON"),
        (
            json!({ "name": "other", "component": digest, "flow": "etl" }).to_string(),
            400,
            "renaming",
        ),
        (
            unknown_pool.to_string(),
            422,
            "work pool &#39;nowhere&#39; does not exist",
        ),
        (
            json!({ "name": "etl", "component": digest, "flow": "etl", "params": { "rows": -1 } })
                .to_string(),
            422,
            "minimum",
        ),
    ] {
        let refused = server.form(
            "/deployments/etl/edit",
            &[("csrf", &csrf), ("deployment", &text)],
            None,
        );
        assert_eq!(refused.status, status, "{text}: {}", refused.body);
        assert!(
            refused.body.contains("id=\"edit-error\""),
            "{}",
            refused.body
        );
        assert!(refused.body.contains(reason), "{text}: {}", refused.body);
    }
    let (_, after) = server.api("GET", "/api/deployments/etl", None);
    assert_eq!(&after["deployment"], stored);
    assert_eq!(
        server
            .form(
                "/deployments/etl/edit",
                &[("deployment", &edited.to_string())],
                None
            )
            .status,
        403
    );
}

#[test]
fn pools_and_queues_made_in_the_ui_follow_the_apis_rules() {
    let server = UiServer::start();
    let csrf = csrf_of(&server.page("/pools", None).body);
    let created = server.form(
        "/pools",
        &[
            ("csrf", &csrf),
            ("name", "gpu"),
            ("description", "<b>big</b>"),
            ("concurrency_limit", "2"),
        ],
        None,
    );
    assert_eq!(created.status, 303, "{}", created.body);
    let (_, pool) = server.api("GET", "/api/work-pools/gpu", None);
    assert_eq!(
        (&pool["concurrency_limit"], &pool["paused"]),
        (&json!(2), &json!(false)),
        "{pool}"
    );
    let queue = server.form(
        "/pools/queues",
        &[
            ("csrf", &csrf),
            ("pool", "gpu"),
            ("name", "fast"),
            ("priority", "0"),
            ("concurrency_limit", "1"),
        ],
        None,
    );
    assert_eq!(queue.status, 303, "{}", queue.body);
    let (_, queues) = server.api("GET", "/api/work-pools/gpu/queues", None);
    assert_eq!(queues["work_queues"][0]["name"], "fast", "{queues}");
    assert_eq!(queues["work_queues"][0]["concurrency_limit"], 1, "{queues}");
    assert_eq!(queues["work_queues"][1]["name"], "default", "{queues}");
    let page = server.page("/pools", None).body;
    assert!(
        page.contains("&lt;b&gt;big&lt;/b&gt;") && page.contains("<li>fast (0, 1) <form"),
        "{page}"
    );

    for (path, fields, status) in [
        ("/pools", vec![("name", "gpu")], 409),
        ("/pools", vec![("name", "a b")], 400),
        (
            "/pools",
            vec![("name", "cpu"), ("concurrency_limit", "-1")],
            400,
        ),
        (
            "/pools/queues",
            vec![("pool", "nowhere"), ("name", "q")],
            404,
        ),
        (
            "/pools/queues",
            vec![("pool", "gpu"), ("name", "q"), ("priority", "first")],
            400,
        ),
    ] {
        let mut fields = fields;
        fields.push(("csrf", &csrf));
        let reply = server.form(path, &fields, None);
        assert_eq!(reply.status, status, "{path} {fields:?}: {}", reply.body);
        assert!(reply.body.contains("role=\"alert\""), "{}", reply.body);
    }
    let (_, pools) = server.api("GET", "/api/work-pools", None);
    assert_eq!(pools["work_pools"].as_array().unwrap().len(), 2, "{pools}");
}

#[test]
fn the_dashboard_lists_runs_waiting_past_their_time() {
    let server = UiServer::start_configured(false, |config| {
        config.late_after = Duration::from_millis(50);
        config.scheduler_tick = Duration::from_millis(20);
    });
    server.deploy_etl();
    let (status, _) = server.api("POST", "/api/work-pools/wasm/pause", Some(json!({})));
    assert_eq!(status, 200);
    let (status, started) = server.api("POST", "/api/deployments/etl/runs", Some(json!({})));
    assert_eq!(status, 202, "{started}");
    let id = started["flow_run_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, detail) = server.api("GET", &format!("/api/flow-runs/{id}"), None);
        if detail["flow_run"]["state"] == "Late" {
            break;
        }
        assert!(Instant::now() < deadline, "never Late: {detail}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let dashboard = server.page("/", None).body;
    let late = &dashboard[dashboard.find("<h2>Late runs</h2>").unwrap()..];
    let late = &late[..late.find("</section>").unwrap()];
    assert!(late.contains(&format!("href=\"/runs/{id}\"")), "{late}");
    assert!(late.contains("badge s-Late"), "{late}");
}

#[test]
fn a_new_user_uploads_deploys_and_runs_from_the_ui() {
    let server = UiServer::start();
    let csrf = csrf_of(&server.page("/secrets", None).body);
    let components = server.page("/components", None).body;
    assert!(
        components.contains(&format!("data-csrf=\"{csrf}\"")),
        "{components}"
    );
    let upload = |token: Option<&str>, media_type: &str, bytes: Vec<u8>| {
        let mut request = ureq::http::Request::builder()
            .method("POST")
            .uri(format!("{}/components", server.url))
            .header("content-type", media_type);
        if let Some(token) = token {
            request = request.header("x-csrf-token", token);
        }
        let mut response = server.agent.run(request.body(bytes).unwrap()).unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.body_mut().read_to_string().unwrap_or_default(),
        )
    };
    let wasm = std::fs::read(ETL_WASM).unwrap();
    assert_eq!(upload(None, "application/wasm", wasm.clone()).0, 403);
    assert_eq!(
        upload(Some("0123"), "application/wasm", wasm.clone()).0,
        403
    );
    // A cross-site form can only send form or text types: refused.
    assert_eq!(upload(Some(&csrf), "text/plain", wasm.clone()).0, 415);
    let (status, body) = upload(Some(&csrf), "application/wasm", Vec::new());
    assert_eq!(status, 400, "{body}");
    let (status, body) = upload(
        Some(&csrf),
        "application/wasm",
        b"\0asm not really".to_vec(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("role=\"alert\""), "{body}");
    let (_, list) = server.api("GET", "/api/components", None);
    assert_eq!(list["components"], json!([]), "a refused upload was stored");

    let (status, body) = upload(Some(&csrf), "application/wasm", wasm.clone());
    assert_eq!(status, 201, "{body}");
    let digest = serde_json::from_str::<Value>(&body).unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        upload(Some(&csrf), "application/wasm", wasm).0,
        200,
        "the same bytes again"
    );

    let page = server.page(&format!("/components/{digest}"), None).body;
    assert!(
        page.contains(&format!("action=\"/components/{digest}/deploy\"")),
        "{page}"
    );
    let deploy = |fields: &[(&str, &str)]| {
        let mut fields = fields.to_vec();
        fields.push(("csrf", &csrf));
        server.form(&format!("/components/{digest}/deploy"), &fields, None)
    };
    let created = deploy(&[("flow", "etl"), ("name", "etl-ui")]);
    assert_eq!(
        created.location.as_deref(),
        Some("/deployments/etl-ui"),
        "{}",
        created.body
    );
    for (fields, status) in [
        (vec![("flow", "etl"), ("name", "etl-ui")], 409),
        (vec![("flow", "etl"), ("name", "two words")], 400),
        (vec![("flow", "nope"), ("name", "other")], 422),
    ] {
        let reply = deploy(&fields);
        assert_eq!(reply.status, status, "{fields:?}: {}", reply.body);
        assert!(reply.body.contains("role=\"alert\""), "{}", reply.body);
    }
    let no_token = server.form(
        &format!("/components/{digest}/deploy"),
        &[("flow", "etl"), ("name", "x1")],
        None,
    );
    assert_eq!(no_token.status, 403);

    let csrf = csrf_of(&server.page("/deployments/etl-ui", None).body);
    let id = run_of(&server.form(
        "/deployments/etl-ui/run",
        &[("csrf", &csrf), ("param.rows", "12")],
        None,
    ));
    let (_, run) = server.follow(&id, None);
    assert_eq!(run["state"], "Completed", "{run}");
}

/// A deployment's page lists each schedule with its zone and next five fire
/// times, in that zone's offset.
#[test]
fn a_deployment_page_shows_each_schedules_next_runs_in_its_zone() {
    let server = UiServer::start();
    let digest = server.upload(ETL_WASM);
    let (status, reply) = server.api(
        "PUT",
        "/api/deployments/berlin",
        Some(
            json!({ "name": "berlin", "component": digest, "flow": "etl",
                     "params": { "rows": 5 }, "paused": true,
                     "schedules": [{ "cron": "30 6 * * 1-5", "timezone": "Europe/Berlin" }] }),
        ),
    );
    assert_eq!(status, 201, "{reply}");
    let page = server.page("/deployments/berlin", None).body;
    assert!(page.contains("<code>cron 30 6 * * 1-5</code>"), "{page}");
    assert!(page.contains("Europe/Berlin"), "{page}");
    let cell = page
        .split("class=\"next-runs\">")
        .nth(1)
        .and_then(|rest| rest.split("</td>").next())
        .unwrap_or_else(|| panic!("no next runs: {page}"));
    let times: Vec<&str> = cell.split("<br>").collect();
    assert_eq!(times.len(), 5, "{cell}");
    for time in times {
        assert!(
            time.contains("T06:30:00+01:00") || time.contains("T06:30:00+02:00"),
            "06:30 Berlin time: {time}"
        );
    }
}

/// The UI's queue form has no tag filter; changing a queue there keeps the
/// filter it was given through the CLI or API.
#[test]
fn editing_a_queue_in_the_ui_keeps_its_tag_filter() {
    let server = UiServer::start();
    let (status, reply) = server.api(
        "POST",
        "/api/work-pools/wasm/queues",
        Some(json!({ "name": "demo", "priority": 5, "tags": ["demo"] })),
    );
    assert_eq!(status, 201, "{reply}");
    let csrf = csrf_of(&server.page("/pools", None).body);
    let edited = server.form(
        "/pools/queues",
        &[
            ("csrf", &csrf),
            ("pool", "wasm"),
            ("name", "demo"),
            ("priority", "0"),
        ],
        None,
    );
    assert_eq!(edited.status, 303, "{}", edited.body);
    let (_, queues) = server.api("GET", "/api/work-pools/wasm/queues", None);
    let demo = queues["work_queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "demo")
        .unwrap_or_else(|| panic!("{queues}"));
    assert_eq!(demo["priority"], 0, "{demo}");
    assert_eq!(demo["tags"], json!(["demo"]), "{demo}");
}

/// POSTs `/login` with `key` from the loopback address `from` (Linux
/// answers on all of 127/8, so each is a client of its own); returns the
/// status, the `Retry-After` and `Set-Cookie` headers and the body.
fn login_from(server: &UiServer, from: [u8; 4], key: &str) -> (u16, Option<u64>, bool, String) {
    use std::io::{Read as _, Write as _};
    let target: std::net::SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind((std::net::Ipv4Addr::from(from), 0).into())
            .unwrap();
        socket.connect(target).await.unwrap().into_std().unwrap()
    });
    let mut stream = stream;
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let body = form_body(&[("key", key)]);
    write!(
        stream,
        "POST /login HTTP/1.1\r\nHost: {target}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("a whole reply");
    let status = head[9..12].parse().unwrap();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            })
            .map(|(_, v)| v.trim().to_string())
    };
    let retry_after = header("retry-after").map(|v| v.parse().unwrap());
    (
        status,
        retry_after,
        header("set-cookie").is_some(),
        body.to_string(),
    )
}

#[test]
fn a_client_guessing_keys_is_locked_out_while_others_still_sign_in() {
    let server = UiServer::start_with(true);
    let attacker = [127, 0, 0, 2];
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for attempt in 0..1000 {
        let guess = format!("guess-{attempt:04}-0123456789abcdef");
        let (status, retry_after, set_cookie, body) = login_from(&server, attacker, &guess);
        *statuses.entry(status).or_default() += 1;
        assert!(!set_cookie, "a wrong key got a cookie");
        match status {
            401 => assert!(attempt < 5, "attempt {attempt} was let through"),
            429 => {
                let wait = retry_after.expect("429 says when to try again");
                assert!((1..=21).contains(&wait), "Retry-After {wait}");
                assert!(body.contains("too many wrong keys"), "{body}");
                assert!(body.starts_with("<!doctype html>"), "{body}");
            }
            other => panic!("attempt {attempt}: {other}: {body}"),
        }
    }
    assert_eq!(statuses, [(401, 5), (429, 995)].into());
    // Locked out, even the right key is refused: the lock tells nothing.
    let (status, _, set_cookie, _) = login_from(&server, attacker, ADMIN_KEY);
    assert_eq!((status, set_cookie), (429, false));
    // Anyone else signs in meanwhile, and their session works.
    let (status, _, set_cookie, body) = login_from(&server, [127, 0, 0, 3], ADMIN_KEY);
    assert_eq!((status, set_cookie), (303, true), "{body}");
    let cookie = server.sign_in(READER_KEY);
    assert_eq!(server.page("/", Some(&cookie)).status, 200);
}

#[test]
fn a_session_ends_at_sign_out_and_other_sessions_go_on() {
    let server = UiServer::start_with(true);
    let first = server.sign_in(ADMIN_KEY);
    let second = server.sign_in(ADMIN_KEY);
    assert_ne!(first, second);
    let page = server.page("/variables", Some(&first));
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = csrf_of(&page.body);

    let out = server.form("/logout", &[], Some(&first));
    assert_eq!(out.status, 303);
    assert_eq!(out.location.as_deref(), Some("/login"));
    assert!(
        out.set_cookie
            .as_deref()
            .is_some_and(|c| c.starts_with("weir_session=;") && c.contains("Max-Age=0")),
        "{:?}",
        out.set_cookie
    );
    // A copy of the old cookie is worth nothing now: no page, no form, no stream.
    let page = server.page("/variables", Some(&first));
    assert_eq!(
        (page.status, page.location.as_deref()),
        (303, Some("/login"))
    );
    let reply = server.form(
        "/variables",
        &[("csrf", &csrf), ("name", "after_logout"), ("value", "1")],
        Some(&first),
    );
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert_eq!(server.page("/runs/x/events", Some(&first)).status, 401);
    let (_, variables) = server.api("GET", "/api/variables", None);
    assert!(
        !variables.to_string().contains("after_logout"),
        "{variables}"
    );
    // The other session is untouched.
    assert_eq!(server.page("/variables", Some(&second)).status, 200);
}

/// Asserts that `reply` is the UI's error page for `status`.
fn assert_error_page(what: &str, reply: &Reply, status: u16) {
    assert_eq!(reply.status, status, "{what}: {}", reply.body);
    assert!(
        reply
            .content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("text/html")),
        "{what}: {:?}: {}",
        reply.content_type,
        reply.body
    );
    assert!(
        reply.body.starts_with("<!doctype html>")
            && reply.body.contains(&format!("<h1>{status} "))
            && reply.body.contains("role=\"alert\""),
        "{what}: {}",
        reply.body
    );
    assert!(
        reply
            .csp
            .as_deref()
            .is_some_and(|c| c.contains("default-src 'none'")),
        "{what}: no CSP"
    );
}

#[test]
fn every_refusal_a_browser_sees_is_a_page_and_the_api_keeps_json() {
    let server = UiServer::start_with(true);
    let digest = server.deploy_etl();
    let admin = server.sign_in(ADMIN_KEY);
    let reader = server.sign_in(READER_KEY);
    let csrf = csrf_of(&server.page("/deployments/etl", Some(&admin)).body);
    let reader_csrf = csrf_of(&server.page("/deployments/etl", Some(&reader)).body);

    // 404: an unknown run, task run, deployment, component, address.
    for path in [
        "/runs/00000000-0000-0000-0000-000000000000".to_string(),
        "/deployments/no-such-deployment".into(),
        format!("/components/{}", "0".repeat(64)),
        "/no/such/page".into(),
    ] {
        assert_error_page(&path, &server.page(&path, Some(&admin)), 404);
    }
    // 403: a read-only key changing something, a form without its token.
    let reply = server.form(
        "/deployments/etl/pause",
        &[("csrf", &reader_csrf)],
        Some(&reader),
    );
    assert_error_page("read-only pause", &reply, 403);
    assert!(reply.body.contains("read-only role"), "{}", reply.body);
    let reply = server.form("/deployments/etl/pause", &[], Some(&admin));
    assert_error_page("no CSRF token", &reply, 403);
    // 400 and 422: what the page's handlers and the form reader refuse.
    assert_error_page(
        "bad task run id",
        &server.page("/task-runs/not-an-id", Some(&admin)),
        400,
    );
    assert_error_page(
        "bad window",
        &server.page("/runs?within=forever", Some(&admin)),
        400,
    );
    let reply = server.form(
        "/deployments/etl/run",
        &[("csrf", &csrf), ("params_json", "{not json")],
        Some(&admin),
    );
    // The form comes back with the sentence beside it.
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.body.starts_with("<!doctype html>")
            && reply.body.contains("id=\"run-form\"")
            && reply
                .body
                .contains("role=\"alert\" id=\"run-error\">the parameters are not JSON"),
        "{}",
        reply.body
    );
    let reply = server.form("/components/x/deploy", &[("csrf", &csrf)], Some(&admin));
    assert_error_page("form without its fields", &reply, 422);
    assert!(reply.body.contains("missing field"), "{}", reply.body);
    // 409: a name that is taken.
    let reply = server.form(
        &format!("/components/{digest}/deploy"),
        &[("csrf", &csrf), ("flow", "etl"), ("name", "etl")],
        Some(&admin),
    );
    assert_error_page("taken name", &reply, 409);
    // 405 and 413: the router's own refusals.
    let reply = server.page("/logout", Some(&admin));
    assert_error_page("GET /logout", &reply, 405);
    let huge = "x".repeat(5 << 20);
    let fields = [("csrf", csrf.as_str()), ("name", "big"), ("value", &huge)];
    // The server refuses on the length alone, and reads and drops the rest
    // so that a client still writing hears it.
    let reply = server.send(
        "POST",
        "/variables",
        &[("cookie", admin.clone())],
        Some((form_body(&fields), "application/x-www-form-urlencoded")),
    );
    assert_error_page("huge form", &reply, 413);
    // 403 from the Host guard, before any UI code runs.
    let reply = server.send("GET", "/", &[("host", "evil.example".into())], None);
    assert_error_page("foreign Host", &reply, 403);
    // 500: a stored row the server cannot read says nothing of it.
    let database = Paths::at(server._home.path()).database();
    let db = rusqlite::Connection::open(database).unwrap();
    db.busy_timeout(Duration::from_secs(30)).unwrap();
    let changed = db
        .execute(
            "UPDATE objects SET body = '{broken <b>' WHERE kind = 'work_pool'",
            [],
        )
        .unwrap();
    assert!(changed > 0, "the default pool is stored");
    let reply = server.page("/pools", Some(&admin));
    assert_error_page("unreadable pool", &reply, 500);
    assert!(!reply.body.contains("broken"), "{}", reply.body);

    // The JSON API keeps JSON for the same kinds of refusal.
    for (path, status) in [
        ("/api/flow-runs/00000000-0000-0000-0000-000000000000", 404),
        ("/api/no-such-endpoint", 404),
        ("/api/work-pools", 500),
    ] {
        let (got, body) = server.api("GET", path, None);
        assert_eq!(got, status, "{path}: {body}");
        assert!(body["message"].is_string(), "{path}: {body}");
    }
    let reply = server.send(
        "GET",
        "/api/health",
        &[("host", "evil.example".into())],
        None,
    );
    assert_eq!(reply.status, 403);
    assert!(
        reply.content_type.as_deref() == Some("application/json"),
        "{:?}",
        reply.content_type
    );
}

/// Posts a delete the way a browser does: first the button (which only
/// asks), then the confirmation page's own form.
fn delete_in_two_steps(server: &UiServer, path: &str, csrf: &str) -> Reply {
    let asked = server.form(path, &[("csrf", csrf)], None);
    assert_eq!(asked.status, 200, "{path}: {}", asked.body);
    assert!(
        asked.body.contains("<h1>Delete ") && asked.body.contains("name=\"confirm\" value=\"yes\""),
        "{path}: {}",
        asked.body
    );
    // The confirmation posts back to the same address, with the token.
    assert!(
        !asked.body.contains("action=") || asked.body.contains(&format!("action=\"{path}\"")),
        "{}",
        asked.body
    );
    server.form(
        path,
        &[("csrf", &csrf_of(&asked.body)), ("confirm", "yes")],
        None,
    )
}

#[test]
fn deletes_in_the_ui_ask_first_need_the_token_and_keep_the_apis_rules() {
    let server = UiServer::start();
    server.deploy_etl();
    let csrf = csrf_of(&server.page("/pools", None).body);
    for (path, fields) in [
        ("/pools", vec![("name", "side")]),
        (
            "/pools/queues",
            vec![("pool", "side"), ("name", "q2"), ("priority", "1")],
        ),
        ("/variables", vec![("name", "region"), ("value", "eu")]),
        (
            "/secrets",
            vec![("name", "db_password"), ("value", "s3cret-value-123")],
        ),
    ] {
        let mut fields = fields;
        fields.push(("csrf", &csrf));
        let reply = server.form(path, &fields, None);
        assert_eq!(reply.status, 303, "{path}: {}", reply.body);
    }
    let exists = |api: &str| server.api("GET", api, None).0 == 200;
    let secret_listed = || {
        server
            .api("GET", "/api/secrets", None)
            .1
            .to_string()
            .contains("db_password")
    };
    assert!(exists("/api/variables/region") && secret_listed());

    // Each list shows a Delete button for what it lists.
    for (page, action) in [
        ("/deployments/etl", "/deployments/etl/delete"),
        ("/pools", "/pools/side/delete"),
        ("/pools", "/pools/side/queues/q2/delete"),
        ("/variables", "/variables/region/delete"),
        ("/secrets", "/secrets/db_password/delete"),
    ] {
        let body = server.page(page, None).body;
        assert!(
            body.contains(&format!("action=\"{action}\"")),
            "{page}: {body}"
        );
    }
    // Every pool keeps its default queue: no button, and a post is refused.
    assert!(
        !server
            .page("/pools", None)
            .body
            .contains("/queues/default/delete")
    );

    // Without the page's token nothing is asked nor deleted, confirmed or not.
    for path in [
        "/deployments/etl/delete",
        "/pools/side/delete",
        "/variables/region/delete",
        "/secrets/db_password/delete",
    ] {
        for fields in [
            vec![("confirm", "yes")],
            vec![
                ("confirm", "yes"),
                ("csrf", "0123456789abcdef0123456789abcdef"),
            ],
        ] {
            let reply = server.form(path, &fields, None);
            assert_eq!(reply.status, 403, "{path}: {}", reply.body);
        }
    }
    // Asking alone deletes nothing.
    let asked = server.form("/variables/region/delete", &[("csrf", &csrf)], None);
    assert_eq!(asked.status, 200);
    assert!(
        asked.body.contains("Delete variable &#39;region&#39;?"),
        "{}",
        asked.body
    );
    assert!(exists("/api/variables/region") && exists("/api/deployments/etl"));

    // The API's rules hold: a pool in use stays, so does a default queue.
    let reply = delete_in_two_steps(&server, "/pools/wasm/delete", &csrf);
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(
        reply.body.contains("used by deployments etl"),
        "{}",
        reply.body
    );
    assert!(exists("/api/work-pools/wasm"));
    let reply = delete_in_two_steps(&server, "/pools/side/queues/default/delete", &csrf);
    assert_eq!(reply.status, 409, "{}", reply.body);

    for (path, back, gone) in [
        ("/pools/side/queues/q2/delete", "/pools", None),
        (
            "/deployments/etl/delete",
            "/deployments",
            Some("/api/deployments/etl"),
        ),
        ("/pools/side/delete", "/pools", Some("/api/work-pools/side")),
        (
            "/variables/region/delete",
            "/variables",
            Some("/api/variables/region"),
        ),
        ("/secrets/db_password/delete", "/secrets", None),
    ] {
        let reply = delete_in_two_steps(&server, path, &csrf);
        assert_eq!(reply.status, 303, "{path}: {}", reply.body);
        assert_eq!(reply.location.as_deref(), Some(back), "{path}");
        if let Some(api) = gone {
            assert!(!exists(api), "{api} is still there");
        }
    }
    let (_, queues) = server.api("GET", "/api/work-pools/wasm/queues", None);
    assert!(!queues.to_string().contains("q2"), "{queues}");
    assert!(!secret_listed());
}

#[test]
fn automations_are_made_edited_and_deleted_in_the_ui_without_showing_header_values() {
    let server = UiServer::start();
    let page = server.page("/automations", None);
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = csrf_of(&page.body);
    let token = "Bearer tok-0123456789-do-not-show";
    let automation = json!({ "name": "notify", "on": "failed", "deployment": "etl",
        "webhook": "http://127.0.0.1:9/hook", "headers": { "authorization": token } });
    let save = |text: &str| {
        server.form(
            "/automations",
            &[("csrf", &csrf), ("automation", text)],
            None,
        )
    };
    let reply = save(&automation.to_string());
    assert_eq!(reply.status, 303, "{}", reply.body);
    let (status, shown) = server.api("GET", "/api/automations/notify", None);
    assert_eq!(status, 200, "{shown}");
    assert!(shown.to_string().contains("127.0.0.1:9/hook"), "{shown}");

    // The list and the edit page name the header, never its value.
    let list = server.page("/automations", None).body;
    assert!(
        list.contains("href=\"/automations/notify\"") && list.contains("authorization"),
        "{list}"
    );
    let edit = server.page("/automations/notify", None).body;
    assert!(
        edit.contains("&quot;authorization&quot;: &quot;***&quot;"),
        "{edit}"
    );
    for body in [&list, &edit] {
        assert!(!body.contains("tok-0123456789"), "{body}");
    }
    let stored_token = || {
        let db = rusqlite::Connection::open(Paths::at(server._home.path()).database()).unwrap();
        db.busy_timeout(Duration::from_secs(30)).unwrap();
        db.query_row(
            "SELECT body FROM objects WHERE kind = 'automation' AND name = 'notify'",
            [],
            |row| row.get::<_, String>(0),
        )
        .unwrap()
    };

    // Saved again with the mask: the value stays; the rule changes.
    let mut edited = automation.clone();
    edited["on"] = json!("crashed");
    edited["headers"]["authorization"] = json!("***");
    let reply = save(&edited.to_string());
    assert_eq!(reply.status, 303, "{}", reply.body);
    assert!(stored_token().contains(token) && stored_token().contains("crashed"));
    // The mask never follows the token to another webhook.
    let mut moved = edited.clone();
    moved["webhook"] = json!("http://evil.example/steal");
    let reply = save(&moved.to_string());
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.body.contains("type the value again"),
        "{}",
        reply.body
    );
    assert!(!stored_token().contains("evil.example"));
    // The API's own checks answer, with the sent text back in the form.
    let mut bad = automation.clone();
    bad["webhook"] = json!("ftp://example.com/x");
    let reply = save(&bad.to_string());
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.body.contains("is not an http:// or https:// URL")
            && reply.body.contains("ftp://example.com/x"),
        "{}",
        reply.body
    );
    for text in ["{not json", "{\"on\": \"failed\"}"] {
        assert_eq!(save(text).status, 400, "{text}");
    }
    assert_eq!(server.page("/automations/nope", None).status, 404);

    // Paused and resumed from its page; a form without the CSRF token, or
    // for an automation that does not exist, changes nothing.
    let paused =
        || server.api("GET", "/api/automations/notify", None).1["automation"]["paused"].clone();
    assert!(
        server
            .page("/automations/notify", None)
            .body
            .contains("action=\"/automations/notify/pause\"")
    );
    assert_eq!(
        server.form("/automations/notify/pause", &[], None).status,
        403
    );
    assert_eq!(paused(), json!(false));
    assert_eq!(
        server
            .form("/automations/nope/pause", &[("csrf", &csrf)], None)
            .status,
        404
    );
    let reply = server.form("/automations/notify/pause", &[("csrf", &csrf)], None);
    assert_eq!(reply.status, 303, "{}", reply.body);
    assert_eq!(paused(), json!(true));
    let page = server.page("/automations/notify", None).body;
    assert!(
        page.contains("Paused") && page.contains("action=\"/automations/notify/resume\""),
        "{page}"
    );
    assert!(server.page("/automations", None).body.contains("paused"));
    let reply = server.form("/automations/notify/resume", &[("csrf", &csrf)], None);
    assert_eq!(reply.status, 303, "{}", reply.body);
    assert_eq!(paused(), json!(false));
    assert!(
        stored_token().contains(token),
        "pausing keeps the header value"
    );

    let reply = delete_in_two_steps(&server, "/automations/notify/delete", &csrf);
    assert_eq!(reply.status, 303, "{}", reply.body);
    assert_eq!(server.api("GET", "/api/automations/notify", None).0, 404);
}
