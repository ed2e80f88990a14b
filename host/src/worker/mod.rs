//! Runs flows: claims nothing yet, executes one flow run in a sandbox, serves its
//! imports (tasks, subflows, logs), applies task policies and records everything.
//!
//! A task call is: replay (if this run already completed the same call) → cache
//! lookup → attempts in fresh sandboxes with retries and backoff → a durable
//! record of the result before the flow sees it. Because of that last rule, a
//! flow run that dies mid-way can be run again and will not redo finished work.
//!
//! This file holds the public surface (`Executor`, `ExecutorSettings`,
//! `FlowRunRequest`, `FlowRunOutcome`) and `FlowRun`, the state every part shares.
//! The rest, by concern:
//!
//! - `flow`: a flow run's attempts, from its first record to how it ended;
//! - `task`: one task call, in named steps (policy, cache, permits, attempts, record);
//! - `retry`: the one retry step both attempt loops take;
//! - `guard`: `CallGuard`, which leaves no task call Running;
//! - `replay`: answers from an earlier attempt's records;
//! - `cache_key`: which earlier result a call may reuse;
//! - `logs`: a run's log lines and the budget that caps them;
//! - `run`: what a flow run in progress keeps (calls in flight, summary, info);
//! - `host`: `FlowHost` and `TaskHost`, the imports a flow and a task may call;
//! - `limits`: tag permits and server-wide slots; `hooks`: state hooks;
//! - `contract`: imports of contract 0.1.1+ (variables, pause, artifacts, deployments);
//! - `result_storage`, `events`, `retention`;
//! - `serve` and `remote`: the claim loop, in process and on another machine.

mod cache_key;
mod contract;
mod events;
mod flow;
mod guard;
mod hooks;
mod host;
mod limits;
mod logs;
pub mod remote;
mod replay;
mod result_storage;
mod retention;
mod retry;
mod run;
mod serve;
mod task;

pub use contract::RemoteServer;
pub use events::{RunEvent, RunSummary};
pub use retention::{log_retention_job, prune_logs_once};
pub use serve::{CLAIM_TICK, serve};

use crate::control::{Control, ControlError, Durability};
use crate::engine::{Component, Engine, Entry, HostFuture};
use crate::model::capabilities::Capabilities;
use crate::model::{
    EffectivePolicy, Failure, FailureKind, FlowRunId, GrantedSecrets, LogLevel, Policy,
    PolicyDefaults, RunState, TaskRunId,
};
use crate::store::{AttemptRecord, NewTaskRun, StateChange, Write};
use cache_key::input_sha256;
use host::{Submitted, TaskHost};
use logs::LogBudget;
use replay::Recorded;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use task::record_attempt_metrics;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Settings of an executor; defaults suit a laptop.
#[derive(Clone, Debug)]
pub struct ExecutorSettings {
    /// Defaults for tasks, and the server's ceilings no task policy may exceed.
    pub task_defaults: PolicyDefaults,
    /// Defaults for flows, and the ceilings (flow deadline included) no flow policy may exceed.
    pub flow_defaults: PolicyDefaults,
    /// Tasks of one flow run that may run at once.
    pub flow_concurrency: usize,
    /// Tasks a flow run may have submitted and not yet awaited. Past it,
    /// `submit-task` answers at once with a handle whose await fails, saying so.
    pub max_pending_submits: usize,
    /// Log lines kept per flow run (its tasks and subflows included); the rest are counted and dropped.
    pub max_log_lines_per_run: u64,
    /// Bytes of log text kept per flow run (its tasks and subflows included).
    pub max_log_bytes_per_run: u64,
    /// How deep subflows may nest.
    pub max_subflow_depth: u32,
    /// The name recorded as the host that ran each task.
    pub host_name: String,
    /// Tasks carrying a tag that may run at once across all flow runs of this executor.
    pub tag_limits: BTreeMap<String, usize>,
    /// How often a running flow checks whether someone asked to cancel it.
    pub cancel_poll: Duration,
    /// Directories by name where tasks with `result_storage = NAME` keep
    /// their results (`--result-storage NAME=DIR`).
    pub result_storages: BTreeMap<String, std::path::PathBuf>,
    /// How long a claim on a run lasts unless renewed (the holder renews it
    /// every third of this while it lives).
    pub lease_ttl: Duration,
}

impl Default for ExecutorSettings {
    fn default() -> Self {
        Self {
            task_defaults: PolicyDefaults {
                // About ten seconds of busy CPU: a runaway is stopped, real work is not.
                fuel: 100_000_000_000,
                memory_bytes: 128 << 20,
                timeout: Some(Duration::from_secs(300)),
                max_memory_bytes: 4 << 30,
                // Ceilings: generous, but a manifest cannot ask for forever.
                max_fuel: 10_000_000_000_000,
                max_timeout: Some(Duration::from_secs(24 * 3600)),
                max_retries: 100,
            },
            flow_defaults: PolicyDefaults {
                fuel: 1_000_000_000_000,
                memory_bytes: 256 << 20,
                timeout: None,
                max_memory_bytes: 4 << 30,
                max_fuel: 100_000_000_000_000,
                max_timeout: Some(Duration::from_secs(7 * 24 * 3600)),
                max_retries: 100,
            },
            flow_concurrency: 64,
            max_pending_submits: 10_000,
            max_log_lines_per_run: 100_000,
            max_log_bytes_per_run: 64 << 20,
            max_subflow_depth: 16,
            host_name: crate::dispatch::leases::local_host_name(),
            tag_limits: BTreeMap::new(),
            cancel_poll: Duration::from_millis(200),
            result_storages: BTreeMap::new(),
            lease_ttl: crate::dispatch::leases::LEASE_TTL,
        }
    }
}

pub use crate::dispatch::leases::{process_marker, this_process_marker};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("no flow named '{name}' in this component; it has: {available}")]
    UnknownFlow { name: String, available: String },
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// Waits between retries. Tests replace it to observe delays without waiting.
pub trait Timer: Send + Sync + 'static {
    fn sleep(&self, delay: Duration) -> HostFuture<'static, ()>;
}

/// The real timer.
pub struct TokioTimer;

impl Timer for TokioTimer {
    fn sleep(&self, delay: Duration) -> HostFuture<'static, ()> {
        Box::pin(tokio::time::sleep(delay))
    }
}

/// Executes flow runs on one engine and records them through `Control`.
pub struct Executor {
    engine: Arc<Engine>,
    control: Arc<Control>,
    settings: ExecutorSettings,
    timer: Arc<dyn Timer>,
    /// One semaphore per limited tag, shared by every run of this executor.
    tag_permits: BTreeMap<String, Arc<Semaphore>>,
    /// Set on a remote host: where variables are read (see `contract`).
    remote: std::sync::OnceLock<Arc<dyn RemoteServer>>,
    /// Set on a server: starts the runs of `run-deployment` (see `contract`).
    dispatcher: std::sync::OnceLock<Arc<crate::dispatch::Dispatcher>>,
}

/// What to run.
pub struct FlowRunRequest {
    pub component: Component,
    pub flow_name: String,
    pub params: String,
    /// Run again an existing flow run (retry or resume) instead of creating one.
    pub existing: Option<ExistingRun>,
    pub parent: Option<FlowRunId>,
    pub events: Option<mpsc::UnboundedSender<RunEvent>>,
    pub cancel: CancellationToken,
    pub policy_override: Policy,
    /// Applied over every task's own policy in this run (and its subflows):
    /// limits, retries, `refresh_cache`.
    pub task_override: Policy,
    /// The deployment that asked for this run (recorded, and shown to the guest).
    pub deployment: Option<String>,
    /// Secrets the guest may read; their values are redacted from its logs and results.
    pub secrets: Arc<GrantedSecrets>,
    /// Directories and environment variables its instances may reach.
    pub capabilities: Arc<Capabilities>,
    /// A subflow writes into its root run's log budget.
    log_budget: Option<Arc<LogBudget>>,
    /// A subflow's top-level run.
    root: Option<FlowRunId>,
}

#[derive(Clone, Copy, Debug)]
pub struct ExistingRun {
    pub id: FlowRunId,
    pub state: RunState,
    pub attempt: u32,
}

impl FlowRunRequest {
    pub fn new(
        component: Component,
        flow_name: impl Into<String>,
        params: impl Into<String>,
    ) -> Self {
        Self {
            component,
            flow_name: flow_name.into(),
            params: params.into(),
            existing: None,
            parent: None,
            events: None,
            cancel: CancellationToken::new(),
            policy_override: Policy::default(),
            task_override: Policy::default(),
            deployment: None,
            secrets: Arc::new(GrantedSecrets::default()),
            capabilities: Arc::new(Capabilities::default()),
            log_budget: None,
            root: None,
        }
    }
}

/// How a flow run ended.
#[derive(Debug)]
pub struct FlowRunOutcome {
    pub id: FlowRunId,
    pub state: RunState,
    pub result: Result<String, Failure>,
    pub summary: RunSummary,
}

impl Executor {
    pub fn new(
        engine: Arc<Engine>,
        control: Arc<Control>,
        settings: ExecutorSettings,
    ) -> Arc<Self> {
        Self::with_timer(engine, control, settings, Arc::new(TokioTimer))
    }

    pub fn with_timer(
        engine: Arc<Engine>,
        control: Arc<Control>,
        settings: ExecutorSettings,
        timer: Arc<dyn Timer>,
    ) -> Arc<Self> {
        let tag_permits = settings
            .tag_limits
            .iter()
            .map(|(tag, limit)| (tag.clone(), Arc::new(Semaphore::new((*limit).max(1)))))
            .collect();
        Arc::new(Self {
            engine,
            control,
            settings,
            timer,
            tag_permits,
            remote: std::sync::OnceLock::new(),
            dispatcher: std::sync::OnceLock::new(),
        })
    }

    pub fn settings(&self) -> &ExecutorSettings {
        &self.settings
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }
}

fn send(events: &Option<mpsc::UnboundedSender<RunEvent>>, event: RunEvent) {
    if let Some(tx) = events {
        let _ = tx.send(event);
    }
}

#[derive(Default)]
struct Stats {
    tasks: AtomicU64,
    attempts: AtomicU64,
    cached: AtomicU64,
    replayed: AtomicU64,
    failed: AtomicU64,
    fuel: AtomicU64,
    peak_memory: AtomicU64,
}

impl Stats {
    /// Adds what an instance (a flow attempt or a task attempt) used.
    fn count_resources(&self, execution: &crate::engine::Execution) {
        self.fuel.fetch_add(execution.fuel_used, Ordering::Relaxed);
        self.peak_memory
            .fetch_max(execution.peak_memory_bytes, Ordering::Relaxed);
    }
}

/// One flow run in progress: serves the flow instance's imports.
struct FlowRun {
    executor: Arc<Executor>,
    id: FlowRunId,
    /// The top-level run: the one under a lease, that slots are held for.
    root: FlowRunId,
    component: Component,
    flow_name: String,
    attempt: AtomicU32,
    depth: u32,
    /// Call order within the current attempt; replay matches on it.
    seq: AtomicU64,
    replay: Mutex<HashMap<u64, Recorded>>,
    handles: Mutex<HashMap<u64, Submitted>>,
    /// Calls the flow is waiting for (see `in_background`).
    background: Mutex<Vec<JoinHandle<()>>>,
    next_handle: AtomicU64,
    permits: Arc<Semaphore>,
    cancel: CancellationToken,
    events: Option<mpsc::UnboundedSender<RunEvent>>,
    /// Shared with subflows; the run that made it writes what was dropped.
    logs: Arc<LogBudget>,
    owns_log_budget: bool,
    /// Tasks whose clamped policy was already logged (once per task name).
    clamps_noted: Mutex<HashSet<String>>,
    /// Whether the refusal of a submit past the pending limit was logged.
    submits_refused: AtomicBool,
    /// Set by a `pause` that suspended this attempt (see `contract`).
    paused: AtomicBool,
    stats: Stats,
    task_override: Policy,
    deployment: Option<String>,
    secrets: Arc<GrantedSecrets>,
    capabilities: Arc<Capabilities>,
    /// Its params as given (a cache key may be made of them).
    params: String,
    /// Whether the flow's own result is recorded (`persist_result`).
    persist_result: bool,
}

fn crashed(e: impl std::fmt::Display) -> Failure {
    Failure::new(
        FailureKind::Crashed,
        format!("could not record the task: {e}"),
    )
}
