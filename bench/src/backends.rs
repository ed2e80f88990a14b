//! `backends`: SQLite and PostgreSQL side by side, in one run.
//!
//! A throwaway PostgreSQL cluster (the tests' `TestCluster`, but with fsync
//! on: `initdb` and `pg_ctl` on a free loopback port, stopped when the
//! scenario ends) and a
//! SQLite home get the same work: the fixture's `sequential` and `fan_out`
//! flows recorded in process, database bytes per task run, flow runs per
//! second through the release server's API, and a page of 100 runs listed
//! from a large history (100k, and 1M in a full run). Skipped, with a note,
//! where PostgreSQL is not installed.

use crate::http::Server;
use crate::report::{Figure, Report, at_least, at_most, percentile};
use crate::{Options, secs_since};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use weir_host::clock::SystemClock;
use weir_host::config::Paths;
use weir_host::control::Control;
use weir_host::engine::{Component, Engine, EngineConfig};
use weir_host::model::RunState;
use weir_host::store::pg::testing::TestCluster;
use weir_host::store::{DiskSync, Store, StoreOptions, StoreTable};
use weir_host::worker::{Executor, ExecutorSettings, FlowRunRequest};

const S: &str = "backends";

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    /// SQLite with `store.durability full`: an fsync per commit, as
    /// PostgreSQL does by default; recorded flows only.
    SqliteFull,
    Postgres,
}

impl Backend {
    fn label(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::SqliteFull => "SQLite (durability full)",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

/// A fresh, empty database of one backend: a SQLite home, or a new
/// database in the cluster. The home holds result files and caches either way.
struct Fresh {
    home: tempfile::TempDir,
    url: Option<String>,
    durability: DiskSync,
}

impl Fresh {
    fn new(backend: Backend, cluster: &TestCluster) -> Fresh {
        let url = match backend {
            Backend::Sqlite | Backend::SqliteFull => None,
            Backend::Postgres => Some(cluster.database().expect("a fresh PostgreSQL database")),
        };
        Fresh {
            home: tempfile::tempdir().unwrap(),
            url,
            durability: match backend {
                Backend::SqliteFull => DiskSync::Full,
                _ => DiskSync::Normal,
            },
        }
    }

    fn open(&self) -> Store {
        let options = StoreOptions {
            database: self.url.clone(),
            durability: self.durability,
            ..StoreOptions::default()
        };
        Store::open_with_options(&Paths::at(self.home.path()).database(), options).unwrap()
    }

    /// `host server start` arguments that select this database.
    fn server_args(&self) -> Vec<&str> {
        match &self.url {
            Some(url) => vec!["--database", url],
            None => Vec::new(),
        }
    }
}

pub async fn run(options: &Options, report: &mut Report, host: &Path) {
    let cluster = match TestCluster::start_durable() {
        Ok(cluster) => cluster,
        Err(why) => {
            report
                .notes
                .push(format!("backends: SKIPPED: no PostgreSQL to start: {why}"));
            return;
        }
    };
    let bytes = std::fs::read(weir_tests::FIXTURE_WASM).expect("fixture guest");
    let cache = tempfile::tempdir().unwrap();
    let engine = Arc::new(
        Engine::new(EngineConfig {
            cache_dir: Some(cache.path().to_path_buf()),
            ..EngineConfig::default()
        })
        .unwrap(),
    );
    let component = engine.load(&bytes).await.unwrap();
    for backend in [Backend::Sqlite, Backend::SqliteFull, Backend::Postgres] {
        eprintln!("   {}", backend.label());
        recorded(options, report, backend, &cluster, &engine, &component).await;
        if matches!(backend, Backend::SqliteFull) {
            continue;
        }
        // Both block on HTTP and on the store's tickets: off the runtime.
        tokio::task::block_in_place(|| {
            through_api(options, report, backend, &cluster, host);
            listed(options, report, backend, &cluster, host);
        });
    }
}

/// Recorded tasks per second in one flow, and bytes per task run.
async fn recorded(
    options: &Options,
    report: &mut Report,
    backend: Backend,
    cluster: &TestCluster,
    engine: &Arc<Engine>,
    component: &Component,
) {
    let n: u64 = if options.quick { 2_000 } else { 10_000 };
    let fresh = Fresh::new(backend, cluster);
    let store = Arc::new(fresh.open());
    let control = Arc::new(Control::new(store.clone(), Arc::new(SystemClock)));
    let executor = Executor::new(engine.clone(), control, ExecutorSettings::default());
    for (flow, target) in [("sequential", 15_000.0), ("fan_out", 30_000.0)] {
        if matches!(backend, Backend::SqliteFull) && flow == "fan_out" {
            continue;
        }
        let mut rates = Vec::new();
        for _ in 0..options.runs {
            let request =
                FlowRunRequest::new(component.clone(), flow, json!({ "n": n }).to_string());
            let t = Instant::now();
            let outcome = executor.run_flow(request).await.unwrap();
            let took = secs_since(t);
            assert_eq!(outcome.state, RunState::Completed, "{:?}", outcome.result);
            rates.push(n as f64 / took);
        }
        let mut figure = Figure::new(
            S,
            format!("{}: recorded {flow}, {n} tasks", backend.label()),
            "/s",
        )
        .samples(rates)
        .target(at_least(target));
        if flow == "sequential" && !matches!(backend, Backend::Sqlite) {
            figure =
                figure.note("each task waits for its commit, and here each commit for an fsync");
        }
        report.push(figure);
    }
    drop(executor);
    store.close();
    if matches!(backend, Backend::SqliteFull) {
        return;
    }

    // Bytes: one sequential flow in a database of its own.
    let fresh = Fresh::new(backend, cluster);
    let store = Arc::new(fresh.open());
    let empty = store.size_bytes().unwrap();
    let control = Arc::new(Control::new(store.clone(), Arc::new(SystemClock)));
    let executor = Executor::new(engine.clone(), control, ExecutorSettings::default());
    let request = FlowRunRequest::new(
        component.clone(),
        "sequential",
        json!({ "n": n }).to_string(),
    );
    let outcome = executor.run_flow(request).await.unwrap();
    assert_eq!(outcome.state, RunState::Completed);
    let tasks = store.count(StoreTable::TaskRuns).unwrap();
    let grown = store.size_bytes().unwrap().saturating_sub(empty);
    drop(executor);
    store.close();
    report.push(
        Figure::new(
            S,
            format!("{}: database bytes per task run", backend.label()),
            "B",
        )
        .one(grown as f64 / tasks as f64)
        .target(at_most(1024.0))
        .note(match backend {
            Backend::Sqlite | Backend::SqliteFull => {
                "page_count × page_size, the WAL's pages included"
            }
            Backend::Postgres => "pg_database_size growth: heap, indexes, TOAST, free space map",
        }),
    );
}

/// Flow runs per second through the release server's API: a burst of
/// triggers from one client, then every run waited for.
fn through_api(
    options: &Options,
    report: &mut Report,
    backend: Backend,
    cluster: &TestCluster,
    host: &Path,
) {
    let fresh = Fresh::new(backend, cluster);
    let server = Server::start(host, &fresh.server_args());
    let digest = server.upload_fixture();
    server.deploy_task("add", &digest, "add", json!({"a": 1, "b": 2}), json!({}));
    let burst = if options.quick { 200 } else { 1_000 };
    let mut rates = Vec::new();
    let mut accepted = Vec::new();
    for _ in 0..options.runs {
        let done = crate::server::run_burst(&server, "add", burst);
        accepted.push(done.accepted_per_second);
        rates.push(done.completed_per_second);
    }
    report.push(
        Figure::new(
            S,
            format!(
                "{}: flows/s through the API, {burst} at once",
                backend.label()
            ),
            "/s",
        )
        .samples(rates)
        .target(at_least(300.0)),
    );
    report.push(
        Figure::new(
            S,
            format!("{}: triggers accepted/s, one client", backend.label()),
            "/s",
        )
        .samples(accepted)
        .note("each trigger is answered once its run is committed"),
    );
}

/// A page of 100 runs from a large history, first page and filtered.
fn listed(
    options: &Options,
    report: &mut Report,
    backend: Backend,
    cluster: &TestCluster,
    host: &Path,
) {
    let rows = if options.quick { 20_000 } else { 1_000_000 };
    let fresh = Fresh::new(backend, cluster);
    let t = Instant::now();
    let store = fresh.open();
    crate::list::fill_store(&store, rows);
    store.close();
    drop(store);
    report.notes.push(format!(
        "backends: {}: wrote {rows} runs through the store's writer in {:.1} s",
        backend.label(),
        secs_since(t)
    ));
    // The SQLite history lives in the fresh home: the server gets that home.
    let server = match fresh.url.clone() {
        Some(url) => Server::start(host, &["--database", &url]),
        None => Server::start_in(host, fresh.home, &[]),
    };
    let queries = [
        ("first page", "limit=100"),
        ("by state", "limit=100&state=Completed"),
        ("by deployment", "limit=100&deployment=d7"),
    ];
    for (what, query) in queries {
        let samples = crate::list::page_times(&server, query, if options.quick { 30 } else { 100 });
        report.push(
            Figure::new(
                S,
                format!(
                    "{}: list 100 of {rows}, {what} (p99 of {})",
                    backend.label(),
                    samples.len()
                ),
                "ms",
            )
            .one(percentile(&samples, 99.0))
            .target(at_most(20.0)),
        );
    }
}
