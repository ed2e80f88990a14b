//! `ui`: the web UI's two budgets, measured over loopback on the release
//! server: the run page of a 1,000-task run (time, and bytes of the HTML with
//! its stylesheet and script: everything a first visit transfers), and the
//! dashboard over 100,000 runs of the last day.

use crate::http::Server;
use crate::report::{Figure, Report, at_most, percentile};
use crate::{Options, secs_since};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

const S: &str = "ui";

pub fn run(options: &Options, report: &mut Report, host: &Path) {
    let samples = if options.quick { 20 } else { 100 };
    let server = Server::start(host, &[]);
    let digest = server.upload_fixture();
    let (status, started) = server.send(
        "POST",
        &format!("/api/components/{digest}/flows/sequential/runs"),
        json!({"params": {"n": 1000}}),
    );
    assert_eq!(status, 202, "{started}");
    let id = started["flow_run_id"].as_str().unwrap().to_string();
    server.wait_final(&id, Duration::from_secs(120));
    let (times, page) = timed_pages(&server, &format!("/runs/{id}"), samples);
    assert!(page.contains("add"), "the run page lists its tasks");
    let page_path = format!("/runs/{id}");
    let transferred: usize = [page_path.as_str(), "/assets/style.css", "/assets/app.js"]
        .iter()
        .map(|path| gzipped_len(&server, path))
        .sum();
    report.push(
        Figure::new(
            S,
            format!("run page of a 1,000-task run (p99 of {samples})"),
            "ms",
        )
        .one(percentile(&times, 99.0))
        .target(at_most(50.0)),
    );
    report.push(
        Figure::new(
            S,
            "run page of a 1,000-task run, HTML + CSS + JS transferred",
            "KB",
        )
        .one(transferred as f64 / 1024.0)
        .target(at_most(300.0))
        .note(format!(
            "gzip, as a browser asks; the HTML alone is {} KB uncompressed",
            page.len() / 1024
        )),
    );
    drop(server);

    let rows = if options.quick { 20_000 } else { 100_000 };
    let home = tempfile::tempdir().unwrap();
    crate::list::fill(&home.path().join("weir.db"), rows);
    let server = Server::start_in(host, home, &[]);
    let (times, page) = timed_pages(&server, "/", samples);
    assert!(page.contains("Dashboard"), "{page}");
    report.push(
        Figure::new(
            S,
            format!("dashboard over {rows} runs of the last day (p99 of {samples})"),
            "ms",
        )
        .one(percentile(&times, 99.0))
        .target(at_most(30.0)),
    );
}

/// Fetches `path` `n` times; returns each time in ms and the last body.
fn timed_pages(server: &Server, path: &str, n: usize) -> (Vec<f64>, String) {
    let mut times = Vec::with_capacity(n);
    let mut body = String::new();
    for _ in 0..n {
        let t = Instant::now();
        body = page_text(server, path);
        times.push(secs_since(t) * 1e3);
    }
    (times, body)
}

/// Bytes on the wire for `path` when the client takes gzip, as browsers do.
fn gzipped_len(server: &Server, path: &str) -> usize {
    fetch(server, path, Some("gzip")).len()
}

fn page_text(server: &Server, path: &str) -> String {
    String::from_utf8(fetch(server, path, None)).expect("pages are UTF-8")
}

/// The body of `path` as sent, asking for `encoding` if any.
fn fetch(server: &Server, path: &str, encoding: Option<&str>) -> Vec<u8> {
    let mut request = server.agent.get(format!("{}{path}", server.url));
    if let Some(encoding) = encoding {
        request = request.header("accept-encoding", encoding);
    }
    let mut reply = request.call().unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(reply.status().as_u16(), 200, "GET {path}");
    reply
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap()
}
