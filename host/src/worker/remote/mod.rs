//! A remote host (`host run --pool P`): an executor on any machine that
//! takes runs of its pools from a server over HTTP.
//!
//! It claims runs with a long poll (a ready run is handed over as soon as it
//! exists), holds each under a lease that it renews with heartbeats, fetches
//! each component once by digest and checks its sha256 before compiling it,
//! and runs flows with the same executor, sandbox and durable task records as
//! a server, against a store in its own `$WEIR_HOME`. What it records there
//! is shipped to the server in reports; the local store is the buffer, so a
//! server that is away for a while loses nothing: reports are sent again
//! until one is accepted, and the server applies each once.
//!
//! A run the server says is lost (its lease ran out and it went elsewhere,
//! or it ended there) is cancelled here and its records are not sent again.

mod claim;
pub(crate) mod memory;
mod report;

use super::{Executor, ExecutorSettings, serve};
use crate::client::{Client, ClientError};
use crate::clock::SystemClock;
use crate::config::Paths;
use crate::control::Control;
use crate::dispatch::remote::MAX_CLAIM_BATCH;
use crate::dispatch::{BoxFuture, Claim, DispatchError, RunSource, leases};
use crate::engine::{Component, Engine, EngineConfig, EngineError};
use crate::model::capabilities::Capabilities;
use crate::model::{ComponentDigest, FlowRunId, RunState, TaskRunId};
use crate::store::{ComponentFiles, Store, StoreError, StoreOptions};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the server refused this host: {0}")]
    Refused(String),
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
}

/// How a remote host is set up.
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// Its own home: store, component copies, compiled cache.
    pub paths: Paths,
    /// The server, `http://HOST:PORT`.
    pub api: String,
    pub key: Option<String>,
    pub pools: Vec<String>,
    /// Only these queues of the pools; empty serves all.
    pub queues: Vec<String>,
    /// Flow runs at once.
    pub slots: usize,
    /// Runs asked for in one claim, at most (1 to [`MAX_CLAIM_BATCH`]): a
    /// host asks for all its free slots up to this; 1 asks one at a time
    /// through `/api/hosts/claim`, to compare the two.
    pub claim_batch: u32,
    /// Shown in the server's host list and recorded on its task runs.
    pub name: String,
    /// How long SIGTERM waits for running flows before leaving them to
    /// their leases.
    pub drain_timeout: Duration,
    /// How long the host holds no run before it sheds what only runs need
    /// ([`IDLE_AFTER`]; tests shorten it).
    pub idle_after: Duration,
    pub executor: ExecutorSettings,
    pub engine: EngineConfig,
    /// What runs on this host may reach (directories, env); it takes only
    /// runs that need no more.
    pub allows: Capabilities,
    /// The CA certificates to trust for an https:// server (PEM).
    pub ca_file: Option<std::path::PathBuf>,
}

/// How long one claim may wait on the server for work.
const CLAIM_WAIT_MS: u64 = 10_000;
/// How often recorded progress is shipped.
const SHIP_EVERY: Duration = Duration::from_millis(100);
/// Roughly how much one report carries (the server takes up to 128 MiB);
/// what does not fit goes in the next one. A report carries at least one
/// task run, however large.
const REPORT_BUDGET_BYTES: usize = 32 << 20;
/// Log lines per report, at most.
const REPORT_LOG_LINES: usize = 5_000;
/// The longest pause between attempts to reach a server that is away.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a host holds no run before it drops its compiled components
/// and gives freed heap back to the system: long enough that a burst never
/// pays for it between two runs.
pub const IDLE_AFTER: Duration = Duration::from_secs(1);
/// While idle, heap is given back again at twice the idle time of the last
/// time (2 s, 4 s, ...) up to this: what is freed after the first time
/// (pooled connections, blocking threads that exit) goes back too.
const IDLE_LAST_TRIM_AFTER: Duration = Duration::from_secs(64);

/// A run this host holds.
struct Held {
    epoch: u64,
    /// Its local copy exists (the component may still be compiling before
    /// that; heartbeats renew the lease meanwhile, reports wait).
    copied: bool,
    /// The executor finished with it; once its last report is accepted it is dropped.
    ended: bool,
    shipped: Shipped,
}

/// What the server has already been sent of one run.
#[derive(Default, Clone)]
struct Shipped {
    flow_runs: HashMap<FlowRunId, (RunState, u32, Option<i64>)>,
    task_runs: HashMap<TaskRunId, (RunState, u32, Option<i64>, Option<i64>)>,
    /// Per flow run of the tree, the last log line sent (local ids).
    logs: HashMap<FlowRunId, i64>,
}

/// The host: its link to the server and what it holds.
pub struct RemoteHost {
    config: RemoteConfig,
    holder: String,
    client: Arc<Client>,
    store: Arc<Store>,
    control: Arc<Control>,
    engine: Arc<Engine>,
    files: ComponentFiles,
    loaded: Mutex<HashMap<ComponentDigest, Component>>,
    held: Mutex<HashMap<FlowRunId, Held>>,
    /// Runs the executor is running now (a lost run may still be stopping).
    running: Mutex<std::collections::HashSet<FlowRunId>>,
    /// Wakes the reporter at once: a run started or ended.
    ship_soon: tokio::sync::Notify,
    slots: Arc<Semaphore>,
    /// Set on SIGTERM: claims stop.
    stop: CancellationToken,
    /// The server has no `/api/hosts/claims` (it is older): one run per claim.
    single_claims: AtomicBool,
    me: std::sync::Weak<RemoteHost>,
}

/// Runs a remote host until `stop`, then drains. Blocks.
pub fn run(config: RemoteConfig, stop: CancellationToken) -> Result<(), RemoteError> {
    memory::cap_malloc_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("weir-host")
        .enable_all()
        .build()
        .map_err(RemoteError::Runtime)?;
    let store = Arc::new(Store::open_with_options(
        &config.paths.database(),
        StoreOptions::default(),
    )?);
    let engine = Arc::new(Engine::new(config.engine.clone())?);
    let control = Arc::new(Control::new(store.clone(), Arc::new(SystemClock)));
    let mut client = Client::new(&config.api, config.key.clone(), "--api or api.url")?;
    if let Some(ca_file) = &config.ca_file {
        client = client.with_ca_file(ca_file)?;
    }
    let client = Arc::new(client);
    let host = Arc::new_cyclic(|me| RemoteHost {
        me: me.clone(),
        holder: leases::process_marker(&config.name),
        files: ComponentFiles::new(config.paths.components()),
        slots: Arc::new(Semaphore::new(config.slots.max(1))),
        config,
        client,
        store,
        control: control.clone(),
        engine: engine.clone(),
        loaded: Mutex::new(HashMap::new()),
        held: Mutex::new(HashMap::new()),
        running: Mutex::new(std::collections::HashSet::new()),
        ship_soon: tokio::sync::Notify::new(),
        stop: stop.clone(),
        single_claims: AtomicBool::new(false),
    });
    let mut settings = host.config.executor.clone();
    settings.host_name = host.config.name.clone();
    let executor = Executor::new(engine, control, settings);
    executor.serve_remotely(Arc::new(ApiServer(host.client.clone())));
    let finished = CancellationToken::new();
    runtime.block_on(async {
        // Say hello first: a wrong key or URL is one clear error, not a loop.
        let hello = host.beat().await?;
        let serving = tokio::spawn(serve(
            executor,
            host.clone(),
            host.config.pools.clone(),
            tokio::runtime::Handle::current(),
            stop.clone(),
        ));
        let beating = tokio::spawn(host.clone().heartbeats(hello.lease_ttl_ms, finished.clone()));
        let shipping = tokio::spawn(host.clone().ship_loop(finished.clone()));
        stop.cancelled().await;
        let _ = serving.await;
        // Drain: running flows finish (bounded), their last reports go out.
        let deadline = tokio::time::Instant::now() + host.config.drain_timeout;
        while host.held_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        finished.cancel();
        let _ = shipping.await;
        let _ = beating.await;
        let left = host.held_count();
        if left > 0 {
            tracing::warn!(
                "{left} flow runs were still running after the drain timeout; their leases will run out and the server will crash and resume them"
            );
        }
        Ok::<(), RemoteError>(())
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Variables and limits through the server's API (`GET /api/variables/NAME`,
/// `POST /api/concurrency-slots/take`): this host's own store has neither.
struct ApiServer(Arc<Client>);

impl super::RemoteServer for ApiServer {
    fn variable(&self, name: &str) -> Result<Option<serde_json::Value>, String> {
        // Only names a variable can have reach the URL.
        if crate::model::deploy::validate_name("variable", name).is_err() {
            return Ok(None);
        }
        let (status, body) = self
            .0
            .request(
                "GET",
                &format!("/api/variables/{name}"),
                None,
                "application/json",
            )
            .map_err(|e| e.to_string())?;
        match status {
            200 => serde_json::from_slice::<crate::model::Variable>(&body)
                .map(|v| Some(v.value))
                .map_err(|e| format!("the server's answer is not a variable: {e}")),
            404 => Ok(None),
            _ => Err(server_message(status, &body)),
        }
    }

    fn take_slots(
        &self,
        ask: &crate::dispatch::limits::TakeSlots,
    ) -> Result<crate::dispatch::limits::Taken, String> {
        let body = serde_json::to_vec(ask).map_err(|e| e.to_string())?;
        let (status, body) = self
            .0
            .request(
                "POST",
                "/api/concurrency-slots/take",
                Some(body),
                "application/json",
            )
            .map_err(|e| e.to_string())?;
        match status {
            200 => serde_json::from_slice(&body)
                .map_err(|e| format!("the server's answer is not a slot outcome: {e}")),
            _ => Err(server_message(status, &body)),
        }
    }

    fn release_slots(&self, lease: uuid::Uuid) -> Result<(), String> {
        let body = serde_json::to_vec(&serde_json::json!({ "lease": lease }))
            .map_err(|e| e.to_string())?;
        let (status, body) = self
            .0
            .request(
                "POST",
                "/api/concurrency-slots/release",
                Some(body),
                "application/json",
            )
            .map_err(|e| e.to_string())?;
        match status {
            200 => Ok(()),
            _ => Err(server_message(status, &body)),
        }
    }
}

impl RemoteHost {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<FlowRunId, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn held_count(&self) -> usize {
        self.held().len()
    }

    /// Sends `body` as JSON to `path` off the async threads.
    async fn post<T: serde::Serialize + Send + 'static>(
        &self,
        path: String,
        body: &T,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let body = serde_json::to_vec(body).expect("wire types serialize");
        let client = self.client.clone();
        tokio::task::spawn_blocking(move || {
            client.request("POST", &path, Some(body), "application/json")
        })
        .await
        .unwrap_or_else(|e| {
            Err(ClientError::Unreachable {
                url: String::new(),
                message: e.to_string(),
                source_hint: String::new(),
            })
        })
    }
}

impl RunSource for RemoteHost {
    fn claim<'a>(
        &'a self,
        _pools: &'a [String],
    ) -> BoxFuture<'a, Result<Option<Claim>, DispatchError>> {
        Box::pin(async move { Ok(self.claim_with_room(1).await?.pop()) })
    }

    fn claim_some<'a>(
        &'a self,
        _pools: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Claim>, DispatchError>> {
        Box::pin(self.claim_with_room(self.config.claim_batch.clamp(1, MAX_CLAIM_BATCH)))
    }

    fn work_ready(&self) -> BoxFuture<'_, ()> {
        // The claim itself waits on the server; ask again at once.
        Box::pin(std::future::ready(()))
    }

    fn run_ended(&self, run: FlowRunId) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&run);
        // Its last report drops it from the runs held.
        if let Some(h) = self.held().get_mut(&run) {
            h.ended = true;
        }
        self.slots.add_permits(1);
        self.ship_soon.notify_one();
    }

    fn wants_starts(&self) -> bool {
        true
    }

    fn run_started(&self, _run: FlowRunId) {
        // The server hears of a start (and an end) at once; task records
        // go with the next batch.
        self.ship_soon.notify_one();
    }
}

impl RemoteHost {
    /// The host as an `Arc` again: `run` makes it inside one, and a borrow
    /// of it keeps that alive.
    fn arc(&self) -> Arc<RemoteHost> {
        self.me.upgrade().expect("a borrowed host is alive")
    }
}

/// "STATUS: message" from an error reply.
fn server_message(status: u16, body: &[u8]) -> String {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect());
    format!("{status}: {message}")
}
