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

use super::{Executor, ExecutorSettings, serve};
use crate::client::{Client, ClientError};
use crate::clock::SystemClock;
use crate::config::Paths;
use crate::control::Control;
use crate::dispatch::remote::{
    ClaimRequest, Heartbeat, HeartbeatReply, MAX_CLAIM_BATCH, RemoteClaim, RemoteClaims, Report,
    ShippedLog, ShippedTaskRun,
};
use crate::dispatch::{BoxFuture, Claim, DispatchError, RunSource, leases};
use crate::engine::{Component, Engine, EngineConfig, EngineError};
use crate::model::capabilities::Capabilities;
use crate::model::{ComponentDigest, FlowRunId, GrantedSecrets, RunState, TaskRunId};
use crate::store::{ComponentFiles, NewFlowRun, Store, StoreError, StoreOptions, Write};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Shown in the server's host list and recorded on its task runs.
    pub name: String,
    /// How long SIGTERM waits for running flows before leaving them to
    /// their leases.
    pub drain_timeout: Duration,
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
/// How long a host holds no run before it gives freed heap back to the
/// system: long enough that a burst never pays for it between two runs.
const IDLE_TRIM_AFTER: Duration = Duration::from_secs(1);

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
    cap_malloc_arenas();
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

    // ---- heartbeats ----

    /// Beats every third of the server's lease time (`ttl_ms`, as it last said).
    async fn heartbeats(self: Arc<Self>, ttl_ms: u64, finished: CancellationToken) {
        let every_third =
            |ttl_ms: u64| Duration::from_millis(ttl_ms / 3).max(Duration::from_millis(50));
        let mut every = every_third(ttl_ms);
        loop {
            tokio::select! {
                _ = finished.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.beat().await {
                Ok(reply) => every = every_third(reply.lease_ttl_ms),
                Err(e) => tracing::warn!("heartbeat: {e}"),
            }
        }
    }

    /// One heartbeat: renews every lease held, stops the runs lost.
    async fn beat(&self) -> Result<HeartbeatReply, RemoteError> {
        let runs: Vec<(FlowRunId, u64)> = self
            .held()
            .iter()
            .map(|(id, held)| (*id, held.epoch))
            .collect();
        let beat = Heartbeat {
            holder: self.holder.clone(),
            name: self.config.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pools: self.config.pools.clone(),
            queues: self.config.queues.clone(),
            slots: self.config.slots as u32,
            runs,
            allows: self.config.allows.clone(),
        };
        let (status, body) = self.post("/api/hosts/heartbeat".into(), &beat).await?;
        if status != 200 {
            return Err(RemoteError::Refused(server_message(status, &body)));
        }
        let reply: HeartbeatReply = serde_json::from_slice(&body)
            .map_err(|e| RemoteError::Refused(format!("unreadable heartbeat reply: {e}")))?;
        for id in &reply.lost {
            tracing::warn!("flow run {id}: this host's lease on it was lost; stopping it");
            self.held().remove(id);
            self.cancel_locally(*id);
        }
        for id in &reply.cancel {
            self.cancel_locally(*id);
        }
        Ok(reply)
    }

    fn cancel_locally(&self, id: FlowRunId) {
        self.store.submit_detached(vec![Write::RequestCancel {
            id,
            at: self.control.now(),
        }]);
    }

    // ---- reports ----

    async fn ship_loop(self: Arc<Self>, finished: CancellationToken) {
        let mut backoff = SHIP_EVERY;
        // Since when nothing is held, and whether memory went back since.
        let mut idle_since: Option<tokio::time::Instant> = None;
        let mut trimmed = false;
        loop {
            let ids: Vec<FlowRunId> = self.held().keys().copied().collect();
            let mut failed = false;
            for id in ids {
                if let Err(e) = self.ship(id).await {
                    tracing::warn!("reporting flow run {id}: {e}");
                    failed = true;
                    break;
                }
            }
            backoff = if failed {
                (backoff * 2).min(MAX_BACKOFF)
            } else {
                SHIP_EVERY
            };
            if finished.is_cancelled() && (failed || self.held_count() == 0) {
                return;
            }
            if self.held_count() > 0 {
                idle_since = None;
                trimmed = false;
            } else if !trimmed {
                let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= IDLE_TRIM_AFTER {
                    trimmed = true;
                    let _ = tokio::task::spawn_blocking(give_back_freed_memory).await;
                }
            }
            tokio::select! {
                _ = finished.cancelled() => {}
                _ = tokio::time::sleep(backoff) => {}
                // A start or an end goes at once, unless the server is failing.
                _ = self.ship_soon.notified(), if !failed => {}
            }
        }
    }

    /// Sends what changed in run `id`'s records since the last accepted report.
    async fn ship(self: &Arc<Self>, id: FlowRunId) -> Result<(), RemoteError> {
        let Some((epoch, ended, shipped)) = self
            .held()
            .get(&id)
            .filter(|h| h.copied)
            .map(|h| (h.epoch, h.ended, h.shipped.clone()))
        else {
            return Ok(());
        };
        let this = self.clone();
        let built = tokio::task::spawn_blocking(move || this.build_report(id, epoch, shipped))
            .await
            .map_err(|e| RemoteError::Refused(e.to_string()))??;
        let Some((report, next)) = built else {
            if ended {
                self.held().remove(&id);
            }
            return Ok(());
        };
        let final_state = report
            .flow_runs
            .first()
            .is_some_and(|r| r.id == id && r.state.is_terminal());
        let (status, body) = self
            .post(format!("/api/flow-runs/{id}/report"), &report)
            .await?;
        match status {
            200 => {
                let mut held = self.held();
                if ended && final_state {
                    held.remove(&id);
                } else if let Some(h) = held.get_mut(&id) {
                    h.shipped = next;
                }
                Ok(())
            }
            404 | 409 => {
                tracing::warn!(
                    "flow run {id}: the server refused its report ({}); stopping it",
                    server_message(status, &body)
                );
                self.held().remove(&id);
                self.cancel_locally(id);
                Ok(())
            }
            _ => Err(RemoteError::Refused(server_message(status, &body))),
        }
    }

    /// The report of what changed, and what will have been sent once it is
    /// accepted; `None` when nothing changed.
    fn build_report(
        &self,
        id: FlowRunId,
        epoch: u64,
        mut shipped: Shipped,
    ) -> Result<Option<(Report, Shipped)>, RemoteError> {
        let root = self.store.flow_run(id)?;
        let mut tree = vec![root];
        tree.extend(self.store.descendants(id)?);
        let mut report = Report {
            holder: self.holder.clone(),
            epoch,
            flow_runs: Vec::new(),
            task_runs: Vec::new(),
            logs: Vec::new(),
        };
        let mut bytes = 0;
        // Set when something was left for the next report.
        let mut cut = false;
        for run in &tree {
            for task in self.store.task_runs(run.id)? {
                let mark = (task.state, task.attempts, task.started_at, task.ended_at);
                if shipped.task_runs.get(&task.id) == Some(&mark) {
                    continue;
                }
                let size = task.input.len() + task.output.as_ref().map_or(0, String::len) + 512;
                if bytes + size > REPORT_BUDGET_BYTES && !report.task_runs.is_empty() {
                    cut = true;
                    break;
                }
                bytes += size;
                shipped.task_runs.insert(task.id, mark);
                report.task_runs.push(ShippedTaskRun::new(task));
            }
            let after = shipped.logs.get(&run.id).copied().unwrap_or(0);
            let room = REPORT_LOG_LINES.saturating_sub(report.logs.len());
            let lines = self.store.logs(run.id, after, room)?;
            cut |= lines.len() == room;
            if let Some(last) = lines.last() {
                shipped.logs.insert(run.id, last.id);
            }
            report.logs.extend(lines.into_iter().map(|line| ShippedLog {
                flow_run: run.id,
                line,
            }));
        }
        let mut changed = !report.task_runs.is_empty() || !report.logs.is_empty();
        for (i, run) in tree.into_iter().enumerate() {
            // The run's own end waits until everything under it has gone:
            // once it has ended the server takes nothing more about it.
            if i == 0 && cut && run.state.is_terminal() {
                continue;
            }
            let mark = (run.state, run.attempt, run.ended_at);
            let new = shipped.flow_runs.insert(run.id, mark) != Some(mark);
            changed |= new;
            // The run itself goes first.
            if i == 0 || new {
                report.flow_runs.push(run);
            }
        }
        if !changed {
            return Ok(None);
        }
        Ok(Some((report, shipped)))
    }

    // ---- claims ----

    /// Claims up to `max` runs in one round trip and makes each ready to
    /// run here; runs that cannot run here are ended and left out.
    async fn claim_up_to(self: &Arc<Self>, max: u32) -> Result<Vec<Claim>, DispatchError> {
        let claims = loop {
            let single = max <= 1 || self.single_claims.load(Ordering::Relaxed);
            let request = ClaimRequest {
                holder: self.holder.clone(),
                pools: self.config.pools.clone(),
                queues: self.config.queues.clone(),
                wait_ms: CLAIM_WAIT_MS,
                allows: self.config.allows.clone(),
                max_runs: if single { 1 } else { max },
            };
            let path = if single {
                "/api/hosts/claim"
            } else {
                "/api/hosts/claims"
            };
            let (status, body) = self
                .post(path.into(), &request)
                .await
                .map_err(|e| DispatchError::Join(e.to_string()))?;
            let corrupt = |e: serde_json::Error| DispatchError::Corrupt {
                what: "claim",
                message: e.to_string(),
            };
            match status {
                204 => return Ok(Vec::new()),
                200 if single => {
                    break vec![serde_json::from_slice::<RemoteClaim>(&body).map_err(corrupt)?];
                }
                200 => {
                    break serde_json::from_slice::<RemoteClaims>(&body)
                        .map_err(corrupt)?
                        .claims;
                }
                // A server from before batched claims: one run per claim.
                404 if !single => {
                    tracing::info!("the server takes one run per claim (an older version)");
                    self.single_claims.store(true, Ordering::Relaxed);
                }
                _ => return Err(DispatchError::Join(server_message(status, &body))),
            }
        };
        let mut taken = Vec::with_capacity(claims.len());
        for claim in claims {
            if let Some(claim) = self.accept(claim).await {
                taken.push(claim);
            }
        }
        Ok(taken)
    }

    /// Holds a claimed run and makes its local copy; `None` when it cannot
    /// run here (it is then ended, so nobody waits for it).
    async fn accept(self: &Arc<Self>, claim: RemoteClaim) -> Option<Claim> {
        let id = claim.run;
        // Held at once, so heartbeats renew its lease while the component is
        // fetched and compiled; reports wait for its local copy.
        self.held().insert(
            id,
            Held {
                epoch: claim.epoch,
                copied: false,
                ended: false,
                shipped: Shipped::default(),
            },
        );
        let taken = match self.stop_earlier_attempt(id).await {
            Ok(()) => self.take(&claim).await,
            Err(why) => Err(why),
        };
        if let Some(h) = self.held().get_mut(&id) {
            h.copied = true;
        }
        match taken {
            Ok(component) => Some(Claim {
                run: id,
                component,
                flow: claim.flow,
                params: claim.params,
                attempt: claim.attempt,
                state: RunState::Pending,
                epoch: claim.epoch,
                deployment: claim.deployment,
                task_override: claim.task_override,
                secrets: GrantedSecrets::new(claim.secrets),
                capabilities: claim.capabilities,
            }),
            Err(why) => {
                tracing::error!("flow run {id} cannot run on this host: {why}");
                let this = self.clone();
                let _ =
                    tokio::task::spawn_blocking(move || this.record_unrunnable(&claim, &why)).await;
                if let Some(h) = self.held().get_mut(&id) {
                    h.ended = true;
                }
                None
            }
        }
    }

    /// A run handed to this host again while an earlier attempt of it still
    /// runs here (this host lost its lease, say, in a network partition):
    /// the earlier attempt is cancelled and must end before the new one starts.
    async fn stop_earlier_attempt(&self, id: FlowRunId) -> Result<(), String> {
        if !self.is_running(id) {
            return Ok(());
        }
        self.cancel_locally(id);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.is_running(id) {
            if tokio::time::Instant::now() >= deadline {
                return Err("an earlier attempt of it on this host did not stop".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn is_running(&self, id: FlowRunId) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }

    /// Makes the local copy of a claimed run (with the task calls to replay)
    /// and returns its component, fetched and checked if it is new here.
    async fn take(self: &Arc<Self>, claim: &RemoteClaim) -> Result<Component, String> {
        let component = self.component(&claim.component).await?;
        let this = self.clone();
        let claim = claim.clone();
        tokio::task::spawn_blocking(move || {
            this.copy_run(&claim, &component.digest, RunState::Pending, None)
                .map(|()| component)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    fn copy_run(
        &self,
        claim: &RemoteClaim,
        digest: &ComponentDigest,
        state: RunState,
        message: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut unit = vec![
            Write::ForgetFlowRun(claim.run),
            Write::NewFlowRun(NewFlowRun {
                id: claim.run,
                parent_flow_run: None,
                component: digest.clone(),
                flow_name: claim.flow.clone(),
                params: claim.params.clone(),
                state: RunState::Pending,
                attempt: claim.attempt,
                host: self.holder.clone(),
                at: self.control.now(),
                deployment: claim.deployment.clone(),
                tags: Vec::new(),
                scheduled_at: None,
                work_pool: None,
                work_queue: None,
                secret_grants: Vec::new(),
                lease: None,
                deployment_version: None,
            }),
        ];
        unit.extend(
            claim
                .replay
                .iter()
                .cloned()
                .map(|t| Write::UpsertTaskRun(Box::new(t.into_row()))),
        );
        if state != RunState::Pending {
            let mut change = crate::store::StateChange::new(
                claim.run.0,
                RunState::Pending,
                state,
                self.control.now(),
            );
            change.message = message.map(str::to_string);
            change.failure_kind = Some(crate::model::FailureKind::Crashed);
            unit.push(Write::FlowRunState(change));
        }
        self.store.submit(unit).wait_blocking()
    }

    /// Records a claimed run that cannot run here as `Crashed`, with why.
    fn record_unrunnable(&self, claim: &RemoteClaim, why: &str) {
        let digest = ComponentDigest::parse(&claim.component)
            .unwrap_or_else(|| ComponentDigest::from_sha256([0; 32]));
        let message = format!("host {} could not start it: {why}", self.config.name);
        if let Err(e) = self.copy_run(claim, &digest, RunState::Crashed, Some(&message)) {
            tracing::error!("recording flow run {}: {e}", claim.run);
        }
    }

    /// The component `digest`: loaded already, or from this host's copy, or
    /// fetched from the server and checked against its digest.
    async fn component(self: &Arc<Self>, digest: &str) -> Result<Component, String> {
        let digest = ComponentDigest::parse(digest)
            .ok_or_else(|| format!("the server named no valid component digest ('{digest}')"))?;
        if let Some(component) = self.loaded().get(&digest) {
            return Ok(component.clone());
        }
        let bytes = match self.files.get(&digest) {
            Ok(bytes) => bytes,
            Err(_) => {
                let client = self.client.clone();
                let path = format!("/api/components/{}/wasm", digest.as_str());
                let (status, bytes) = tokio::task::spawn_blocking(move || {
                    client.request("GET", &path, None, "application/json")
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
                if status != 200 {
                    return Err(format!(
                        "downloading component sha256:{}: {}",
                        digest.short(),
                        server_message(status, &bytes)
                    ));
                }
                let got = hex::encode(Sha256::digest(&bytes));
                if got != digest.as_str() {
                    return Err(format!(
                        "the component downloaded for sha256:{} has sha256:{}; refusing to run it (tampered or damaged in transit)",
                        digest.as_str(),
                        got
                    ));
                }
                self.files.put(&bytes).map_err(|e| e.to_string())?;
                bytes
            }
        };
        let component = self.engine.load(&bytes).await.map_err(|e| e.to_string())?;
        self.loaded().insert(digest, component.clone());
        Ok(component)
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, HashMap<ComponentDigest, Component>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
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
        Box::pin(self.claim_with_room(MAX_CLAIM_BATCH))
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

    /// Waits for a free slot, then claims as many runs as there are free
    /// slots (at most `limit`) in one round trip, retrying while the server
    /// is away. Empty when nothing became ready or the host is stopping.
    async fn claim_with_room(&self, limit: u32) -> Result<Vec<Claim>, DispatchError> {
        let this = self.arc();
        // A slot first: a host never takes more runs than it has room for.
        let mut permit = tokio::select! {
            permit = this.slots.clone().acquire_owned() => permit.map_err(|e| DispatchError::Join(e.to_string()))?,
            _ = this.stop.cancelled() => return Ok(Vec::new()),
        };
        // Every other free slot too, in the same round trip.
        let extra = (this.slots.available_permits() as u32).min(limit.saturating_sub(1));
        if extra > 0
            && let Ok(more) = this.slots.clone().try_acquire_many_owned(extra)
        {
            permit.merge(more);
        }
        let room = permit.num_permits();
        let mut backoff = Duration::from_millis(100);
        loop {
            if this.stop.is_cancelled() {
                return Ok(Vec::new());
            }
            match this.claim_up_to(room as u32).await {
                Ok(claims) => {
                    // A run's slot comes back in `run_ended`; unused ones now.
                    permit.forget();
                    this.slots.add_permits(room - claims.len());
                    let mut running = this.running.lock().unwrap_or_else(|p| p.into_inner());
                    running.extend(claims.iter().map(|c| c.run));
                    return Ok(claims);
                }
                Err(e) => {
                    tracing::warn!("claiming runs: {e}; trying again in {backoff:?}");
                    tokio::select! {
                        _ = this.stop.cancelled() => return Ok(Vec::new()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// glibc gives each thread that allocates under contention an arena of its
/// own (up to 8 per core) and keeps every arena's freed pages: a host whose
/// runs went through tokio's blocking threads idled with three arenas of
/// 5-13 MB each. Two arenas serve two cores.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn cap_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; it is called before
    // the runtime starts its threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn cap_malloc_arenas() {}

/// Returns the heap freed by finished runs to the system (glibc keeps it
/// otherwise): after its first runs a host's anonymous memory went from
/// 35 MB to 23 MB (41 to 18 MB with two arenas).
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages the allocator holds.
    unsafe {
        libc::malloc_trim(0);
    }
    tracing::debug!("idle: gave freed memory back to the system");
}

/// "STATUS: message" from an error reply.
fn server_message(status: u16, body: &[u8]) -> String {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect());
    format!("{status}: {message}")
}
