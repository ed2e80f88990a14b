//! `list`: listing runs through the API from a large history.
//!
//! The history is written through the store's own writer (the path every
//! run's creation takes), 100k and, in a full run, 1M flow runs spread over
//! states and deployments; a trigger through the API would take an hour for
//! a million. Then the release server is started on that home and asked, over
//! HTTP, for the first page, pages deep into the history, and pages filtered
//! by state and by deployment, each many times.

use crate::http::Server;
use crate::report::{Figure, Report, at_most, percentile};
use crate::{Options, secs_since};
use std::path::Path;
use std::time::Instant;
use weir_host::model::{ComponentDigest, FlowRunId, RunState};
use weir_host::store::{NewFlowRun, Store, Write};

const S: &str = "list";

pub fn run(options: &Options, report: &mut Report, host: &Path) {
    let sizes: &[usize] = if options.quick {
        &[20_000]
    } else {
        &[100_000, 1_000_000]
    };
    for &rows in sizes {
        let home = tempfile::tempdir().unwrap();
        let t = Instant::now();
        fill(&home.path().join("weir.db"), rows);
        report.notes.push(format!(
            "list: wrote {rows} runs through the store's writer in {:.1} s",
            secs_since(t)
        ));
        let server = Server::start_in(host, home, &[]);
        let deep_cursor = cursor_at(&server, &format!("limit=100&offset={}", rows - 300));
        let deep_state_cursor = cursor_at(
            &server,
            &format!("limit=100&state=Completed&offset={}", rows / 8 - 100),
        );
        let queries = [
            ("first page", "limit=100".to_string()),
            ("deep page", format!("limit=100&offset={}", rows - 200)),
            (
                "deep page by cursor",
                format!("limit=100&cursor={deep_cursor}"),
            ),
            ("by state", "limit=100&state=Completed".to_string()),
            (
                "by state, deep",
                format!("limit=100&state=Completed&offset={}", rows / 8),
            ),
            (
                "by state, deep by cursor",
                format!("limit=100&state=Completed&cursor={deep_state_cursor}"),
            ),
            ("by deployment", "limit=100&deployment=d7".to_string()),
        ];
        for (what, query) in queries {
            let samples = page_times(&server, &query, if options.quick { 30 } else { 100 });
            let name = format!("list 100 of {rows}, {what} (p99 of {})", samples.len());
            let mut figure = Figure::new(S, name, "ms")
                .one(percentile(&samples, 99.0))
                .target(at_most(20.0));
            if figure.met() == Some(false) && what.ends_with("deep") {
                figure = figure.note("OFFSET walks the skipped rows; page with `cursor` instead");
            }
            report.push(figure);
        }
    }
}

/// Lists the page `query` (100 runs) `n` times; returns each time in ms.
pub fn page_times(server: &Server, query: &str, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let (status, reply) = server.get(&format!("/api/flow-runs?{query}"));
            let ms = secs_since(t) * 1e3;
            assert_eq!(status, 200, "{query}: {reply}");
            assert_eq!(
                reply["flow_runs"].as_array().map_or(0, Vec::len),
                100,
                "{query}"
            );
            ms
        })
        .collect()
}

/// The `next_cursor` of the page `query` lists (one slow offset read, to
/// find a place deep in the history).
fn cursor_at(server: &Server, query: &str) -> String {
    let (status, reply) = server.get(&format!("/api/flow-runs?{query}"));
    assert_eq!(status, 200, "{query}: {reply}");
    reply["next_cursor"]
        .as_str()
        .unwrap_or_else(|| panic!("{query}: no next_cursor in {reply}"))
        .to_string()
}

/// Writes `rows` flow runs through the store's writer: finished runs spread
/// over states and ten deployments, on a pool no executor serves, so the
/// server leaves them alone.
pub fn fill(db: &Path, rows: usize) {
    let store = Store::open(db).unwrap();
    fill_store(&store, rows);
    store.close();
}

/// [`fill`] into an open store (either backend).
pub fn fill_store(store: &Store, rows: usize) {
    let digest = ComponentDigest::from_sha256([1; 32]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let base = now - rows as i64 * 1000;
    let states = [
        RunState::Completed,
        RunState::Completed,
        RunState::Completed,
        RunState::Completed,
        RunState::Completed,
        RunState::Failed,
        RunState::Crashed,
        RunState::Cancelled,
    ];
    for chunk in 0..rows.div_ceil(10_000) {
        let writes: Vec<Write> = (chunk * 10_000..((chunk + 1) * 10_000).min(rows))
            .map(|i| {
                Write::NewFlowRun(NewFlowRun {
                    id: FlowRunId::new(),
                    parent_flow_run: None,
                    component: digest.clone(),
                    flow_name: "etl".into(),
                    params: "{\"rows\":10}".into(),
                    state: states[i % states.len()],
                    attempt: 1,
                    host: "bench".into(),
                    at: base + i as i64 * 1000,
                    deployment: Some(format!("d{}", i % 10)),
                    tags: vec!["bench".into()],
                    scheduled_at: Some(base + i as i64 * 1000),
                    work_pool: Some("elsewhere".into()),
                    work_queue: Some("default".into()),
                    secret_grants: Vec::new(),
                    lease: None,
                    deployment_version: None,
                })
            })
            .collect();
        store.submit(writes).wait_blocking().unwrap();
    }
}
