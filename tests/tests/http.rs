//! Outbound HTTP from guests (wasi:http) behind the run's allow-list, as an
//! attacker would try it: hosts and ports next to the granted one, names
//! that reach the same address, a redirect out of the granted host, a
//! server that never answers and one that never stops sending.
//!
//! The servers are plain `TcpListener`s on 127.0.0.1:0 that count the
//! connections they accept: a denied request must not even connect.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};
use weir_host::model::RunState;
use weir_host::model::capabilities::Capabilities;
use weir_host::worker::{FlowRunOutcome, FlowRunRequest};
use weir_tests::{FIXTURE_WASM, Harness};

/// What a loopback server answers to every request.
#[derive(Clone)]
enum Answer {
    /// 200 with this body.
    Body(&'static str),
    /// 302 to this URL.
    Redirect(String),
    /// Reads the request and never answers; reports when the client hangs up.
    Silence,
    /// 200 with a body of this many bytes, sent as fast as it is read.
    Flood(u64),
}

struct Loopback {
    addr: SocketAddr,
    /// Connections accepted.
    hits: Arc<AtomicUsize>,
    /// One message per silent connection the client closed.
    hung_up: mpsc::Receiver<()>,
}

impl Loopback {
    fn start(answer: Answer) -> Loopback {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let (hung_up_tx, hung_up) = mpsc::channel();
        let counted = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                let hung_up = hung_up_tx.clone();
                std::thread::spawn(move || serve(stream, answer, hung_up));
            }
        });
        Loopback {
            addr,
            hits,
            hung_up,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn serve(mut stream: TcpStream, answer: Answer, hung_up: mpsc::Sender<()>) {
    // The request head; a GET has no body.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    match answer {
        Answer::Body(body) => {
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(reply.as_bytes()).ok();
        }
        Answer::Redirect(to) => {
            let reply = format!(
                "HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            stream.write_all(reply.as_bytes()).ok();
        }
        Answer::Silence => {
            // Read until the client closes the connection (0 or an error).
            let mut rest = [0u8; 1024];
            while matches!(stream.read(&mut rest), Ok(n) if n > 0) {}
            hung_up.send(()).ok();
        }
        Answer::Flood(bytes) => {
            let head =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {bytes}\r\nconnection: close\r\n\r\n");
            if stream.write_all(head.as_bytes()).is_err() {
                return;
            }
            let chunk = vec![b'x'; 64 << 10];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                if stream.write_all(&chunk[..n]).is_err() {
                    return;
                }
                left -= n as u64;
            }
        }
    }
}

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
