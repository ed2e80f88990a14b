//! Runs flows: claims nothing yet, executes one flow run in a sandbox, serves its
//! imports (tasks, subflows, logs), applies task policies and records everything.
//!
//! A task call is: replay (if this run already completed the same call) → cache
//! lookup → attempts in fresh sandboxes with retries and backoff → a durable
//! record of the result before the flow sees it. Because of that last rule, a
//! flow run that dies mid-way can be run again and will not redo finished work.

mod contract;
mod events;
mod hooks;
mod limits;
pub mod remote;
mod result_storage;
mod retention;
mod serve;

pub use contract::RemoteServer;
pub use events::{RunEvent, RunSummary};
pub use retention::{log_retention_job, prune_logs_once};
pub use serve::{CLAIM_TICK, serve};

use crate::control::{Control, ControlError, Durability};
use crate::engine::{Component, Engine, Entry, GuestHost, HostFuture};
use crate::model::capabilities::Capabilities;
use crate::model::{
    ComponentDigest, EffectivePolicy, Failure, FailureKind, FlowRunId, GrantedSecrets, LogLevel,
    Policy, PolicyDefaults, RunInfo, RunState, TaskRunId,
};
use crate::store::{AttemptRecord, Lease, LogRecord, NewFlowRun, NewTaskRun, StateChange, Write};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
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

/// A task call in progress. If its future is dropped before it records an
/// end (the flow was cancelled or hit its deadline mid-call), the drop
/// records it as Cancelled, so no run is left Running.
struct CallGuard<'a> {
    control: &'a Control,
    id: TaskRunId,
    /// The state the row is in, as far as this call knows.
    state: RunState,
    finished: bool,
    /// The row's creation, until it is written (see ANNOUNCE_AFTER).
    unannounced: Option<NewTaskRun>,
}

impl CallGuard<'_> {
    /// `writes`, preceded by the row's creation if it is not written yet.
    fn unit(&mut self, writes: Vec<Write>) -> Result<Vec<Write>, Failure> {
        let mut all = Vec::with_capacity(writes.len() + 1);
        if let Some(new_run) = self.unannounced.take() {
            all.push(self.control.creating_task_run(new_run).map_err(crashed)?);
        }
        all.extend(writes);
        Ok(all)
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        // Nothing was written for a call that never got announced.
        if self.finished || self.unannounced.is_some() {
            return;
        }
        let mut change = StateChange::new(
            self.id.0,
            self.state,
            RunState::Cancelled,
            self.control.now(),
        );
        change.failure_kind = Some(FailureKind::Cancelled);
        change.message = Some("stopped because its flow run ended (cancelled or timed out)".into());
        if let Err(e) = self
            .control
            .change_task_run(change, Vec::new(), Durability::Detached)
        {
            tracing::warn!("could not record the end of task run {}: {e}", self.id);
        }
    }
}

/// How long a task attempt may run before its row is written as Running.
const ANNOUNCE_AFTER: Duration = Duration::from_millis(50);

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

    /// Sleeps for `delay` on the executor's timer; returns true if cancelled first.
    async fn sleep_unless_cancelled(&self, delay: Duration, cancel: &CancellationToken) -> bool {
        tokio::select! {
            _ = cancel.cancelled() => true,
            _ = self.timer.sleep(delay) => false,
        }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Runs a flow to its end: attempts, flow-level retries, replay of completed tasks.
    pub async fn run_flow(
        self: &Arc<Self>,
        request: FlowRunRequest,
    ) -> Result<FlowRunOutcome, WorkerError> {
        self.run_flow_at_depth(request, 0).await
    }

    fn run_flow_boxed(
        self: Arc<Self>,
        request: FlowRunRequest,
        depth: u32,
    ) -> HostFuture<'static, Result<FlowRunOutcome, WorkerError>> {
        Box::pin(async move { self.run_flow_at_depth(request, depth).await })
    }

    async fn run_flow_at_depth(
        self: &Arc<Self>,
        request: FlowRunRequest,
        depth: u32,
    ) -> Result<FlowRunOutcome, WorkerError> {
        let manifest = request.component.manifest.clone();
        let Some(flow_def) = manifest.flow(&request.flow_name) else {
            return Err(WorkerError::UnknownFlow {
                name: request.flow_name.clone(),
                available: manifest.flow_names().join(", "),
            });
        };
        let policy = EffectivePolicy::resolve(
            &flow_def.policy.overlay(&request.policy_override),
            &self.settings.flow_defaults,
        );
        let started = Instant::now();

        let (id, attempt, state) = match request.existing {
            Some(run) => {
                let now = self.control.now();
                let mut from = run.state;
                let attempt = run.attempt + 1;
                if from.is_terminal() {
                    // A finished run comes back through Pending (a user's retry or a resume).
                    let mut change = StateChange::new(run.id.0, from, RunState::Pending, now);
                    change.message = Some(format!(
                        "attempt {attempt} requested; completed tasks will be replayed"
                    ));
                    self.control
                        .change_flow_run(change, Vec::new(), Durability::Detached)?;
                    from = RunState::Pending;
                }
                let mut change = StateChange::new(run.id.0, from, RunState::Running, now);
                change.attempts = Some(attempt);
                self.committed(self.control.change_flow_run(
                    change,
                    Vec::new(),
                    Durability::Committed,
                )?)
                .await?;
                (run.id, attempt, RunState::Running)
            }
            None => {
                let id = FlowRunId::new();
                self.control.create_flow_run(
                    NewFlowRun {
                        id,
                        parent_flow_run: request.parent,
                        component: request.component.digest.clone(),
                        flow_name: request.flow_name.clone(),
                        // A subflow's params are built by its parent from what it read.
                        params: request.secrets.redact(&request.params).into_owned(),
                        state: RunState::Running,
                        attempt: 1,
                        host: process_marker(&self.settings.host_name),
                        at: self.control.now(),
                        deployment: request.deployment.clone(),
                        tags: Vec::new(),
                        scheduled_at: None,
                        work_pool: None,
                        work_queue: None,
                        secret_grants: Vec::new(),
                        // A subflow lives and dies under its root's lease.
                        lease: request.parent.is_none().then(|| Lease {
                            holder: process_marker(&self.settings.host_name),
                            expires_at: self.control.now()
                                + self.settings.lease_ttl.as_micros() as i64,
                        }),
                        deployment_version: None,
                    },
                    Durability::Detached,
                )?;
                (id, 1, RunState::Running)
            }
        };
        let events = request.events.clone();
        send(
            &events,
            RunEvent::FlowStarted {
                id,
                flow_name: request.flow_name.clone(),
                attempt,
            },
        );

        let run = Arc::new(FlowRun {
            executor: self.clone(),
            id,
            root: request.root.unwrap_or(id),
            component: request.component.clone(),
            flow_name: request.flow_name.clone(),
            attempt: AtomicU32::new(attempt),
            depth,
            seq: AtomicU64::new(0),
            replay: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            background: Mutex::new(Vec::new()),
            next_handle: AtomicU64::new(1),
            permits: Arc::new(Semaphore::new(self.settings.flow_concurrency.max(1))),
            cancel: request.cancel.clone(),
            events: events.clone(),
            owns_log_budget: request.log_budget.is_none(),
            persist_result: policy.persist_result,
            logs: request.log_budget.clone().unwrap_or_else(|| {
                Arc::new(LogBudget::new(
                    self.settings.max_log_lines_per_run,
                    self.settings.max_log_bytes_per_run,
                ))
            }),
            clamps_noted: Mutex::new(HashSet::new()),
            submits_refused: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            task_override: request.task_override.clone(),
            deployment: request.deployment.clone(),
            secrets: request.secrets.clone(),
            capabilities: request.capabilities.clone(),
            stats: Stats::default(),
            params: request.params.clone(),
        });

        run.note_clamps("this flow", &policy.clamped);

        // Someone in another process (or the API) may ask to cancel this run.
        let poller = (depth == 0).then(|| {
            let (store, cancel, every) = (
                self.control.store().clone(),
                request.cancel.clone(),
                self.settings.cancel_poll,
            );
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                    if store.cancel_requested(id).unwrap_or(false) {
                        cancel.cancel();
                        return;
                    }
                }
            })
        });
        let outcome = self
            .attempts(&run, &request, &policy, attempt, state, started)
            .await;
        if let Some(poller) = poller {
            poller.abort();
        }
        if let Ok(ended) = &outcome {
            let (result, message) = match &ended.result {
                // A result kept out of the records stays out of the hook's input too.
                Ok(_) if !policy.persist_result => (None, None),
                Ok(result) => (Some(result.as_str()), None),
                Err(failure) => (None, Some(failure.message.as_str())),
            };
            let ended = hooks::Ended {
                task_name: None,
                state: ended.state,
                message,
                input: &request.params,
                result,
                attempt: run.attempt.load(Ordering::SeqCst),
            };
            run.run_hooks(&flow_def.policy, ended).await;
        }
        outcome
    }

    /// Runs attempts of a flow until one succeeds or the policy gives up.
    async fn attempts(
        self: &Arc<Self>,
        run: &Arc<FlowRun>,
        request: &FlowRunRequest,
        policy: &EffectivePolicy,
        mut attempt: u32,
        mut state: RunState,
        started: Instant,
    ) -> Result<FlowRunOutcome, WorkerError> {
        let id = run.id;
        loop {
            run.load_replay()?;
            run.seq.store(0, Ordering::SeqCst);
            let host: Arc<dyn GuestHost> = Arc::new(FlowHost(run.clone()));
            let limits = policy.limits;
            let execution = self
                .engine
                .run(
                    &request.component,
                    Entry::Flow {
                        name: &request.flow_name,
                        params: &request.params,
                        nested: run.depth > 0,
                    },
                    limits,
                    host,
                    request.cancel.child_token(),
                )
                .await;
            // A flow stopped by its deadline takes the calls it was waiting
            // for with it (each recorded Cancelled), or a task could hold the
            // attempt far past the deadline that bounds it.
            if matches!(&execution.result, Err(f) if f.kind == FailureKind::Timeout) {
                run.abort_in_flight();
            }
            // Tasks the flow submitted but never awaited still finish and are recorded.
            run.drain_handles().await;
            run.stats
                .fuel
                .fetch_add(execution.fuel_used, Ordering::Relaxed);
            run.stats
                .peak_memory
                .fetch_max(execution.peak_memory_bytes, Ordering::Relaxed);
            if run.paused.swap(false, Ordering::SeqCst) && !request.cancel.is_cancelled() {
                return run.suspend(state, started).await;
            }

            let now = self.control.now();
            match execution.result {
                Ok(result) => return self.finish(run, state, Ok(result), started).await,
                Err(failure) => {
                    let cancelled = request.cancel.is_cancelled();
                    if !cancelled && policy.should_retry(attempt, failure.kind) {
                        let delay = policy.retry_delay(attempt, rand::random::<f64>());
                        let mut change = StateChange::new(id.0, state, RunState::Retrying, now);
                        change.message = Some(
                            run.secrets
                                .redact(&format!("attempt {attempt} failed: {failure}"))
                                .into_owned(),
                        );
                        change.next_attempt_at = Some(now + delay.as_micros() as i64);
                        self.control
                            .change_flow_run(change, Vec::new(), Durability::Detached)?;
                        run.log(
                            None,
                            LogLevel::Warn,
                            &format!(
                                "flow attempt {attempt} failed ({failure}); retrying in {}",
                                humantime::format_duration(delay)
                            ),
                        );
                        if self.sleep_unless_cancelled(delay, &request.cancel).await {
                            let cancelled = Failure::new(
                                FailureKind::Cancelled,
                                "cancelled while waiting to retry",
                            );
                            return self
                                .finish(run, RunState::Retrying, Err(cancelled), started)
                                .await;
                        }
                        attempt += 1;
                        run.attempt.store(attempt, Ordering::SeqCst);
                        let mut change = StateChange::new(
                            id.0,
                            RunState::Retrying,
                            RunState::Running,
                            self.control.now(),
                        );
                        change.attempts = Some(attempt);
                        self.control
                            .change_flow_run(change, Vec::new(), Durability::Detached)?;
                        state = RunState::Running;
                        continue;
                    }
                    let kind = if cancelled {
                        FailureKind::Cancelled
                    } else {
                        failure.kind
                    };
                    return self
                        .finish(
                            run,
                            state,
                            Err(Failure::new(kind, failure.message)),
                            started,
                        )
                        .await;
                }
            }
        }
    }

    /// Records how a flow run ended. If someone else ended it first (a forced
    /// cancel), their state stands and is what the outcome reports.
    async fn finish(
        &self,
        run: &FlowRun,
        from: RunState,
        result: Result<String, Failure>,
        started: Instant,
    ) -> Result<FlowRunOutcome, WorkerError> {
        if run.owns_log_budget
            && let Some(note) = run.logs.dropped_note()
        {
            run.write_log(None, LogLevel::Warn, note);
        }
        let id = run.id;
        let mut state = match &result {
            Ok(_) => RunState::Completed,
            Err(failure) => failure.kind.final_state(),
        };
        let mut change = StateChange::new(id.0, from, state, self.control.now());
        match &result {
            Ok(output) if run.persist_result => {
                change.output = Some(run.secrets.redact(output).into_owned())
            }
            Ok(_) => {}
            Err(failure) => {
                change.message = Some(run.secrets.redact(&failure.message).into_owned());
                change.failure_kind = Some(failure.kind);
            }
        }
        change.fuel_used = Some(run.stats.fuel.load(Ordering::Relaxed));
        change.peak_memory = Some(run.stats.peak_memory.load(Ordering::Relaxed));
        metrics::counter!("weir_flow_runs_finished_total", "state" => state.as_str()).increment(1);
        let ticket = self
            .control
            .change_flow_run(change, Vec::new(), Durability::Committed)?;
        let mut result = result;
        if let Some(ticket) = ticket {
            match ticket.committed().await {
                Ok(()) => {}
                Err(crate::store::StoreError::Conflict { .. }) => {
                    let row = self
                        .control
                        .store()
                        .flow_run(id)
                        .map_err(ControlError::from)?;
                    state = row.state;
                    if !state.is_success() {
                        let message = row
                            .message
                            .unwrap_or_else(|| format!("ended {state} by another process"));
                        result = Err(Failure::new(
                            row.failure_kind.unwrap_or(FailureKind::Cancelled),
                            message,
                        ));
                    }
                }
                Err(e) => return Err(ControlError::from(e).into()),
            }
        }
        let summary = run.summary(started.elapsed());
        send(
            &run.events,
            RunEvent::FlowFinished {
                id,
                state,
                summary: summary.clone(),
            },
        );
        Ok(FlowRunOutcome {
            id,
            state,
            result,
            summary,
        })
    }

    /// Permits for each limited tag, taken in name order so two tasks never deadlock.
    async fn acquire_tag_permits(
        &self,
        tags: &[String],
        cancel: &CancellationToken,
    ) -> Option<Vec<tokio::sync::OwnedSemaphorePermit>> {
        let mut limited: Vec<&Arc<Semaphore>> = Vec::new();
        let mut names: Vec<&String> = tags.iter().collect();
        names.sort();
        names.dedup();
        for tag in names {
            if let Some(semaphore) = self.tag_permits.get(tag) {
                limited.push(semaphore);
            }
        }
        let mut permits = Vec::with_capacity(limited.len());
        for semaphore in limited {
            tokio::select! {
                permit = semaphore.clone().acquire_owned() => permits.push(permit.ok()?),
                _ = cancel.cancelled() => return None,
            }
        }
        Some(permits)
    }

    async fn committed(&self, ticket: Option<crate::store::Ticket>) -> Result<(), WorkerError> {
        if let Some(ticket) = ticket {
            ticket.committed().await.map_err(ControlError::from)?;
        }
        Ok(())
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

/// Caps the log of one flow run and its subflows, in lines and in bytes.
/// Once a line does not fit, the budget is closed: later lines are only
/// counted, and the run's end records one line saying how many were dropped.
struct LogBudget {
    max_lines: u64,
    max_bytes: u64,
    lines: AtomicU64,
    bytes: AtomicU64,
    closed: AtomicBool,
    dropped_lines: AtomicU64,
    dropped_bytes: AtomicU64,
}

impl LogBudget {
    fn new(max_lines: u64, max_bytes: u64) -> Self {
        Self {
            max_lines,
            max_bytes,
            lines: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            dropped_lines: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
        }
    }

    /// Whether to keep a line of this text.
    fn admit(&self, message: &str) -> bool {
        let size = message.len() as u64;
        if !self.closed.load(Ordering::Relaxed) {
            let lines = self.lines.fetch_add(1, Ordering::Relaxed);
            let bytes = self.bytes.fetch_add(size, Ordering::Relaxed);
            if lines < self.max_lines && bytes.saturating_add(size) <= self.max_bytes {
                return true;
            }
            self.closed.store(true, Ordering::Relaxed);
        }
        self.dropped_lines.fetch_add(1, Ordering::Relaxed);
        self.dropped_bytes.fetch_add(size, Ordering::Relaxed);
        false
    }

    /// The line that says what was dropped, if anything was.
    fn dropped_note(&self) -> Option<String> {
        let lines = self.dropped_lines.load(Ordering::Relaxed);
        (lines > 0).then(|| {
            format!(
                "{lines} log lines ({}) dropped: this run and its subflows reached the log limit of {} lines or {} per run; log less, or ask the server's operator to raise the limit",
                crate::engine::human_bytes(self.dropped_bytes.load(Ordering::Relaxed)),
                self.max_lines,
                crate::engine::human_bytes(self.max_bytes),
            )
        })
    }
}

/// A handle `submit-task` gave out: a task, or why none was started.
enum Submitted {
    Started(JoinHandle<Result<String, Failure>>),
    Refused(Failure),
}

/// Marks handles of submits refused because too many were pending: they need
/// no entry in the table, so a flow that submits millions costs no memory.
const OVER_PENDING_LIMIT: u64 = 1 << 63;

fn too_many_pending(limit: usize) -> Failure {
    Failure::new(
        FailureKind::Failed,
        format!(
            "submit-task refused: this flow run already has {limit} submitted tasks that were not awaited (the limit `max_pending_submits`); await some before submitting more, or ask the server's operator to raise the limit"
        ),
    )
}

/// A completed call from an earlier attempt of this flow run.
struct Recorded {
    task_name: String,
    /// sha256 of the input as the flow passed it (rows from before the
    /// hash was kept have none: their recorded input is compared instead).
    input_sha256: Option<String>,
    input: String,
    output: String,
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

impl FlowRun {
    fn control(&self) -> &Control {
        &self.executor.control
    }

    fn load_replay(&self) -> Result<(), WorkerError> {
        let rows = self
            .control()
            .store()
            .task_runs(self.id)
            .map_err(ControlError::from)?;
        let mut replay = self.replay.lock().unwrap_or_else(|p| p.into_inner());
        replay.clear();
        for row in rows.into_iter().filter(|r| r.state.is_success()) {
            if let Some(output) = row.output {
                let output = match self.stored_result(&row.task_name, &output) {
                    Some(Ok(output)) => output,
                    Some(Err(e)) => {
                        drop(replay);
                        self.log(
                            None,
                            LogLevel::Warn,
                            &format!("call #{} runs again: {e}", row.call_seq),
                        );
                        replay = self.replay.lock().unwrap_or_else(|p| p.into_inner());
                        continue;
                    }
                    None => output,
                };
                replay.insert(
                    row.call_seq,
                    Recorded {
                        task_name: row.task_name,
                        input_sha256: row.input_sha256,
                        input: row.input,
                        output,
                    },
                );
            }
        }
        Ok(())
    }

    /// A recorded output of task `task` as the flow should see it: read back
    /// from its result storage when its policy names one (`None`: the record
    /// is the output itself).
    fn stored_result(
        &self,
        task: &str,
        recorded: &str,
    ) -> Option<Result<String, result_storage::ResultStorageError>> {
        self.component
            .manifest
            .task(task)?
            .policy
            .result_storage
            .as_ref()?;
        result_storage::read_back(&self.executor.settings.result_storages, recorded)
    }

    fn summary(&self, duration: Duration) -> RunSummary {
        RunSummary {
            tasks: self.stats.tasks.load(Ordering::Relaxed),
            attempts: self.stats.attempts.load(Ordering::Relaxed),
            cached: self.stats.cached.load(Ordering::Relaxed),
            replayed: self.stats.replayed.load(Ordering::Relaxed),
            failed: self.stats.failed.load(Ordering::Relaxed),
            fuel_used: self.stats.fuel.load(Ordering::Relaxed),
            peak_memory_bytes: self.stats.peak_memory.load(Ordering::Relaxed),
            duration,
        }
    }

    fn log(&self, task: Option<(TaskRunId, &str)>, level: LogLevel, message: &str) {
        let message = self.secrets.redact(message);
        if !self.logs.admit(&message) {
            return;
        }
        self.write_log(task, level, message.into_owned());
    }

    /// Records a log line, outside the budget.
    fn write_log(&self, task: Option<(TaskRunId, &str)>, level: LogLevel, message: String) {
        self.control().record(
            vec![Write::Logs(vec![LogRecord {
                flow_run: self.id,
                task_run: task.map(|t| t.0),
                at: self.control().now(),
                level,
                message: message.to_string(),
            }])],
            Durability::Detached,
        );
        send(
            &self.events,
            RunEvent::Log {
                task: task.map(|t| t.1.to_string()),
                level,
                message,
            },
        );
    }

    /// Logs, once per name, what the server's ceilings lowered in a policy.
    fn note_clamps(&self, name: &str, clamped: &[String]) {
        if clamped.is_empty() {
            return;
        }
        let first = self
            .clamps_noted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string());
        if first {
            self.log(
                None,
                LogLevel::Warn,
                &format!("policy of {name}: {}", clamped.join("; ")),
            );
        }
    }

    /// Stops every call still running for this attempt: dropped, a call's
    /// `CallGuard` records it Cancelled.
    fn abort_in_flight(&self) {
        for handle in self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            if let Submitted::Started(join) = handle {
                join.abort();
            }
        }
        for join in self
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            join.abort();
        }
    }

    async fn drain_handles(&self) {
        let handles: Vec<_> = {
            let mut map = self.handles.lock().unwrap_or_else(|p| p.into_inner());
            map.drain().map(|(_, h)| h).collect()
        };
        for handle in handles {
            if let Submitted::Started(join) = handle {
                let _ = join.await;
            }
        }
        let background: Vec<_> =
            std::mem::take(&mut *self.background.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in background {
            let _ = handle.await;
        }
    }

    /// Runs a call the flow waits for as a task of its own, so that it ends
    /// (and records how) even when the flow instance is dropped mid-call by a
    /// cancel or a deadline. The flow run waits for these before it ends.
    fn in_background(
        &self,
        call: impl Future<Output = Result<String, Failure>> + Send + 'static,
    ) -> HostFuture<'static, Result<String, Failure>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let join = tokio::spawn(async move {
            let _ = tx.send(call.await);
        });
        let mut background = self.background.lock().unwrap_or_else(|p| p.into_inner());
        if background.len() >= 1024 {
            background.retain(|j| !j.is_finished());
        }
        background.push(join);
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(crashed("the call ended without a result")))
        })
    }

    /// A slot among the tasks of this run that may run at once.
    async fn concurrency_permit(&self) -> Result<OwnedSemaphorePermit, Failure> {
        tokio::select! {
            permit = self.permits.clone().acquire_owned() => permit.map_err(|_| crashed("the run is shutting down")),
            _ = self.cancel.cancelled() => Err(Failure::new(FailureKind::Cancelled, "the run was cancelled")),
        }
    }

    /// One task call, with everything the policy asks for.
    async fn execute_task(
        self: Arc<Self>,
        name: String,
        input: String,
        seq: u64,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<String, Failure> {
        if let Some(output) = self.replayed(seq, &name, &input) {
            self.stats.replayed.fetch_add(1, Ordering::Relaxed);
            return Ok(output);
        }
        let Some(task_def) = self.component.manifest.task(&name) else {
            let names: Vec<&str> = self
                .component
                .manifest
                .tasks
                .iter()
                .map(|t| t.name.as_str())
                .collect();
            return Err(Failure::new(
                FailureKind::InvalidInput,
                format!(
                    "no task named '{name}' in this component; it has: {}",
                    names.join(", ")
                ),
            ));
        };
        let policy = EffectivePolicy::resolve(
            &task_def.policy.overlay(&self.task_override),
            &self.executor.settings.task_defaults,
        );
        self.note_clamps(&format!("task '{name}'"), &policy.clamped);
        if let Some(storage) = &policy.result_storage
            && let Err(e) = result_storage::dir_of(&self.executor.settings.result_storages, storage)
        {
            return Err(Failure::new(
                FailureKind::InvalidInput,
                format!("task '{name}': {e}"),
            ));
        }
        let cache_key = match &policy.cache_key_parts {
            // What is not recorded cannot be reused.
            _ if !policy.persist_result => None,
            Some(parts) => cache_key_of_parts(&policy, parts, &self.cache_scope(&name, &input)),
            None => cache_key(&policy, &self.component.digest, &name, &input),
        };
        self.stats.tasks.fetch_add(1, Ordering::Relaxed);

        let control = self.control();
        if let (Some(key), Some(ttl), false) = (&cache_key, policy.cache_ttl, policy.refresh_cache)
        {
            // A TTL of `Duration::MAX` ("forever") reaches back to the beginning.
            let ttl_micros = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
            let not_before = control.now().saturating_sub(ttl_micros);
            let hit = control
                .store()
                .cached_output(key, not_before)
                .ok()
                .flatten();
            // A hit whose result file is gone or damaged is a miss.
            let hit = hit.and_then(|(from, output)| match self.stored_result(&name, &output) {
                Some(Ok(read)) => Some((from, output, read)),
                Some(Err(_)) => None,
                None => Some((from, output.clone(), output)),
            });
            if let Some((from, output, read)) = hit {
                let id = TaskRunId::new();
                // Not awaited: after a crash the same call would simply hit the cache again.
                control
                    .create_task_run(
                        NewTaskRun {
                            id,
                            flow_run: self.id,
                            call_seq: seq,
                            task_name: name.clone(),
                            input_sha256: input_sha256(&input),
                            input: self.secrets.redact(&input).into_owned(),
                            state: RunState::Cached,
                            // A hit is not a source for later hits: lookups stay one index probe.
                            cache_key: None,
                            cached_from: Some((from, output.clone())),
                            host: self.executor.settings.host_name.clone(),
                            at: control.now(),
                        },
                        Durability::Detached,
                    )
                    .map_err(crashed)?;
                self.stats.cached.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("weir_task_cache_hits_total").increment(1);
                send(
                    &self.events,
                    RunEvent::TaskFinished {
                        id,
                        name,
                        state: RunState::Cached,
                        duration: Duration::ZERO,
                    },
                );
                return Ok(read);
            }
        }

        let _permit = match permit {
            Some(permit) => permit,
            None => self.concurrency_permit().await?,
        };
        let _tag_permits = match self
            .executor
            .acquire_tag_permits(&policy.tags, &self.cancel)
            .await
        {
            Some(permits) => permits,
            None => {
                return Err(Failure::new(
                    FailureKind::Cancelled,
                    "the run was cancelled",
                ));
            }
        };
        // Server-wide limits named like its tags, on every host at once.
        let _tag_slots = match policy.tags.is_empty() {
            true => None,
            false => {
                self.clone()
                    .take_slots(
                        &format!("task '{name}'"),
                        policy.tags.clone(),
                        1,
                        false,
                        None,
                    )
                    .await?
            }
        };
        let id = TaskRunId::new();
        // Attempt 1 starts as its row is created, so a fast task's attempt is its row (one write).
        let created_at = control.now();
        // The row is written with the first outcome, unless the attempt runs
        // longer than ANNOUNCE_AFTER: then it is written as Running right away.
        // A fast task costs one commit; a slow one is visible while it runs.
        let mut guard = CallGuard {
            control,
            id,
            state: RunState::Running,
            finished: false,
            unannounced: None,
        };
        guard.unannounced = Some(NewTaskRun {
            id,
            flow_run: self.id,
            call_seq: seq,
            task_name: name.clone(),
            input_sha256: input_sha256(&input),
            input: self.secrets.redact(&input).into_owned(),
            state: RunState::Running,
            cache_key: cache_key.clone(),
            cached_from: None,
            host: self.executor.settings.host_name.clone(),
            at: created_at,
        });

        let started = Instant::now();
        let mut attempt = 1u32;
        let (mut fuel_total, mut peak) = (0u64, 0u64);
        loop {
            send(
                &self.events,
                RunEvent::TaskStarted {
                    id,
                    name: name.clone(),
                    attempt,
                },
            );
            self.stats.attempts.fetch_add(1, Ordering::Relaxed);
            let task_host = Arc::new(TaskHost {
                run: self.clone(),
                task_run: id,
                task_name: name.clone(),
                attempt,
            });
            let attempt_started = if attempt == 1 {
                created_at
            } else {
                control.now()
            };
            let run = self.executor.engine.run(
                &self.component,
                Entry::Task {
                    name: &name,
                    input: &input,
                },
                policy.limits,
                task_host,
                self.cancel.child_token(),
            );
            let execution = match guard.unannounced.take() {
                None => run.await,
                Some(new_run) => {
                    tokio::pin!(run);
                    tokio::select! {
                        biased;
                        execution = &mut run => {
                            guard.unannounced = Some(new_run);
                            execution
                        }
                        _ = tokio::time::sleep(ANNOUNCE_AFTER) => {
                            let create = control.creating_task_run(new_run).map_err(crashed)?;
                            control.record(vec![create], Durability::Detached);
                            run.await
                        }
                    }
                }
            };

            fuel_total += execution.fuel_used;
            peak = peak.max(execution.peak_memory_bytes);
            record_attempt_metrics(&execution);
            self.stats
                .fuel
                .fetch_add(execution.fuel_used, Ordering::Relaxed);
            self.stats
                .peak_memory
                .fetch_max(execution.peak_memory_bytes, Ordering::Relaxed);
            let now = control.now();
            let record = AttemptRecord {
                task_run: id,
                attempt,
                started_at: attempt_started,
                ended_at: now,
                fuel_used: execution.fuel_used,
                peak_memory: execution.peak_memory_bytes,
                failure: execution
                    .result
                    .as_ref()
                    .err()
                    .map(|f| (f.kind, self.secrets.redact(&f.message).into_owned())),
            };
            let mut change = StateChange::new(id.0, guard.state, RunState::Completed, now);
            change.attempts = Some(attempt);
            change.fuel_used = Some(fuel_total);
            change.peak_memory = Some(peak);

            match execution.result {
                Ok(output) => {
                    // Recorded redacted: a replay of a secret-bearing result sees `***`;
                    // not at all under persist_result = false (a resume runs it again).
                    change.output = match (&policy.result_storage, policy.persist_result) {
                        (_, false) => None,
                        (None, true) => Some(self.secrets.redact(&output).into_owned()),
                        // The file holds it (redacted); the record, a reference to it.
                        (Some(storage), true) => Some(
                            result_storage::keep(
                                &self.executor.settings.result_storages,
                                storage,
                                &self.secrets.redact(&output),
                            )
                            .map_err(crashed)?,
                        ),
                    };
                    // Durable before the flow sees it: the rule that makes resume safe.
                    let ticket = control
                        .change_task_run(
                            change,
                            guard.unit(vec![Write::TaskAttempt(record)])?,
                            Durability::Committed,
                        )
                        .map_err(crashed)?;
                    guard.finished = true;
                    if let Some(ticket) = ticket {
                        ticket.committed().await.map_err(crashed)?;
                    }
                    send(
                        &self.events,
                        RunEvent::TaskFinished {
                            id,
                            name,
                            state: RunState::Completed,
                            duration: started.elapsed(),
                        },
                    );
                    return Ok(output);
                }
                Err(failure) => {
                    let cancelled = self.cancel.is_cancelled();
                    if !cancelled && policy.should_retry(attempt, failure.kind) {
                        let delay = policy.retry_delay(attempt, rand::random::<f64>());
                        change.to = RunState::Retrying;
                        change.message =
                            Some(self.secrets.redact(&failure.to_string()).into_owned());
                        change.failure_kind = Some(failure.kind);
                        change.next_attempt_at = Some(now + delay.as_micros() as i64);
                        control
                            .change_task_run(
                                change,
                                guard.unit(vec![Write::TaskAttempt(record)])?,
                                Durability::Detached,
                            )
                            .map_err(crashed)?;
                        guard.state = RunState::Retrying;
                        self.log(
                            Some((id, &name)),
                            LogLevel::Warn,
                            &format!(
                                "attempt {attempt} of {} failed ({failure}); retrying in {}",
                                policy.retries + 1,
                                humantime::format_duration(delay)
                            ),
                        );
                        send(
                            &self.events,
                            RunEvent::TaskRetrying {
                                id,
                                name: name.clone(),
                                attempt,
                                failure: Failure::new(
                                    failure.kind,
                                    self.secrets.redact(&failure.message),
                                ),
                                delay,
                            },
                        );
                        if self
                            .executor
                            .sleep_unless_cancelled(delay, &self.cancel)
                            .await
                        {
                            guard.finished = true;
                            change = StateChange::new(
                                id.0,
                                RunState::Retrying,
                                RunState::Cancelled,
                                control.now(),
                            );
                            change.failure_kind = Some(FailureKind::Cancelled);
                            change.message = Some("cancelled while waiting to retry".into());
                            control
                                .change_task_run(change, Vec::new(), Durability::Detached)
                                .map_err(crashed)?;
                            return Err(Failure::new(
                                FailureKind::Cancelled,
                                "the run was cancelled",
                            ));
                        }
                        let resume = StateChange::new(
                            id.0,
                            RunState::Retrying,
                            RunState::Running,
                            control.now(),
                        );
                        control
                            .change_task_run(resume, Vec::new(), Durability::Detached)
                            .map_err(crashed)?;
                        guard.state = RunState::Running;
                        attempt += 1;
                        continue;
                    }
                    let kind = if cancelled {
                        FailureKind::Cancelled
                    } else {
                        failure.kind
                    };
                    let failure = Failure::new(kind, failure.message);
                    change.to = kind.final_state();
                    change.message = Some(self.secrets.redact(&failure.message).into_owned());
                    change.failure_kind = Some(kind);
                    let ticket = control
                        .change_task_run(
                            change,
                            guard.unit(vec![Write::TaskAttempt(record)])?,
                            Durability::Committed,
                        )
                        .map_err(crashed)?;
                    guard.finished = true;
                    if let Some(ticket) = ticket {
                        ticket.committed().await.map_err(crashed)?;
                    }
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    self.log(
                        Some((id, &name)),
                        LogLevel::Error,
                        &format!("task failed: {failure}"),
                    );
                    send(
                        &self.events,
                        RunEvent::TaskFinished {
                            id,
                            name,
                            state: kind.final_state(),
                            duration: started.elapsed(),
                        },
                    );
                    return Err(failure);
                }
            }
        }
    }

    fn replayed(&self, seq: u64, name: &str, input: &str) -> Option<String> {
        let mut replay = self.replay.lock().unwrap_or_else(|p| p.into_inner());
        let recorded = replay.remove(&seq)?;
        // Inputs are recorded redacted, so a secret-bearing input is matched
        // by the hash of what the flow passed, not by its recorded text.
        let same_input = match &recorded.input_sha256 {
            Some(hash) => *hash == input_sha256(input),
            None => recorded.input == input,
        };
        if recorded.task_name == name && same_input {
            Some(recorded.output)
        } else {
            drop(replay);
            let what = if recorded.task_name == name {
                format!("'{name}' had another input in an earlier attempt")
            } else {
                format!(
                    "was '{}' in an earlier attempt and is '{name}' now",
                    recorded.task_name
                )
            };
            self.log(
                None,
                LogLevel::Warn,
                &format!(
                    "call #{seq} {what}: the flow is not deterministic, so the task runs again"
                ),
            );
            None
        }
    }

    /// Secrets are granted per deployment; a run started by hand has none.
    fn get_secret(&self, name: &str) -> Option<String> {
        self.secrets.get(name).map(str::to_string)
    }

    fn run_info(&self, task: Option<(&TaskRunId, &str, u32)>) -> RunInfo {
        RunInfo {
            flow_run_id: self.id.to_string(),
            task_run_id: task.map(|t| t.0.to_string()),
            attempt: task
                .map(|t| t.2)
                .unwrap_or_else(|| self.attempt.load(Ordering::SeqCst)),
            flow_name: self.flow_name.clone(),
            task_name: task.map(|t| t.1.to_string()),
            deployment: self.deployment.clone(),
            scheduled_at: None,
        }
    }
}

/// The cache key of a call, or `None` when the task is not cached.
fn cache_key(
    policy: &EffectivePolicy,
    digest: &ComponentDigest,
    name: &str,
    input: &str,
) -> Option<String> {
    use crate::model::CacheKeyPolicy;
    policy.cache_ttl?;
    let canonical = serde_json::from_str::<serde_json::Value>(input)
        .ok()?
        .to_string();
    let mut hasher = Sha256::new();
    match policy.cache_key {
        CacheKeyPolicy::None => return None,
        CacheKeyPolicy::InputAndCode => hasher.update(digest.as_str()),
        CacheKeyPolicy::Input => {}
    }
    hasher.update([0]);
    hasher.update(name);
    hasher.update([0]);
    hasher.update(canonical);
    Some(hex::encode(hasher.finalize()))
}

/// What a call's cache key may be made of (`CacheKeyPart`).
struct CacheScope<'a> {
    task: &'a str,
    input: &'a str,
    params: &'a str,
    run: FlowRunId,
    digest: &'a ComponentDigest,
}

impl FlowRun {
    fn cache_scope<'a>(&'a self, task: &'a str, input: &'a str) -> CacheScope<'a> {
        CacheScope {
            task,
            input,
            params: &self.params,
            run: self.id,
            digest: &self.component.digest,
        }
    }
}

/// The cache key made of the parts a policy lists, or `None` when the task
/// is not cached (or its input or params are not JSON). Each part is
/// tagged in the hash, so a key from the input alone never equals one from
/// the params alone.
fn cache_key_of_parts(
    policy: &EffectivePolicy,
    parts: &[crate::model::CacheKeyPart],
    scope: &CacheScope<'_>,
) -> Option<String> {
    use crate::model::CacheKeyPart;
    policy.cache_ttl?;
    let canonical = |text: &str| {
        serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .map(|v| v.to_string())
    };
    let mut hasher = Sha256::new();
    hasher.update(b"parts\0");
    hasher.update(scope.task);
    for part in parts {
        let (tag, value): (&[u8], String) = match part {
            CacheKeyPart::Input => (b"input", canonical(scope.input)?),
            CacheKeyPart::Params => (b"params", canonical(scope.params)?),
            CacheKeyPart::RunId => (b"run-id", scope.run.to_string()),
            CacheKeyPart::Code => (b"code", scope.digest.as_str().to_string()),
        };
        hasher.update([0]);
        hasher.update(tag);
        hasher.update([0]);
        hasher.update(value.len().to_le_bytes());
        hasher.update(value);
    }
    Some(hex::encode(hasher.finalize()))
}

/// What replay compares a call's input by (sha256 of the text the flow passed, hex).
fn input_sha256(input: &str) -> String {
    hex::encode(Sha256::digest(input))
}

fn crashed(e: impl std::fmt::Display) -> Failure {
    Failure::new(
        FailureKind::Crashed,
        format!("could not record the task: {e}"),
    )
}

/// Serves the flow instance's imports. Tasks it spawns hold the run alive.
struct FlowHost(Arc<FlowRun>);

impl GuestHost for FlowHost {
    fn log(&self, level: LogLevel, message: &str) {
        self.0.log(None, level, message);
    }

    fn call_task(&self, name: String, input: String) -> HostFuture<'_, Result<String, Failure>> {
        let seq = self.0.seq.fetch_add(1, Ordering::SeqCst);
        self.0.in_background(
            self.0
                .clone()
                .execute_task_and_hooks(name, input, seq, None),
        )
    }

    /// Refuses what would let a flow exhaust the host: an input over the
    /// payload cap, or more pending submits than `max_pending_submits`. A
    /// refusal is a handle whose await fails with the reason, as the WIT's
    /// `submit-task` returns a bare handle. The concurrency permit is taken
    /// before the task is spawned, so a flow submits no faster than its tasks
    /// run and spawned tasks never pile up waiting.
    fn submit_task(&self, name: String, input: String) -> HostFuture<'_, u64> {
        Box::pin(async move {
            let run = &self.0;
            let handle = run.next_handle.fetch_add(1, Ordering::SeqCst);
            let limit = run.executor.settings.max_pending_submits;
            let pending = run.handles.lock().unwrap_or_else(|p| p.into_inner()).len();
            if pending >= limit {
                if !run.submits_refused.swap(true, Ordering::Relaxed) {
                    run.log(None, LogLevel::Warn, &too_many_pending(limit).message);
                }
                return handle | OVER_PENDING_LIMIT;
            }
            let submitted = match run.executor.engine.check_payload("task input", &input) {
                Err(failure) => Submitted::Refused(failure),
                Ok(()) => match run.concurrency_permit().await {
                    Err(failure) => Submitted::Refused(failure),
                    Ok(permit) => {
                        let seq = run.seq.fetch_add(1, Ordering::SeqCst);
                        Submitted::Started(tokio::spawn(run.clone().execute_task_and_hooks(
                            name,
                            input,
                            seq,
                            Some(permit),
                        )))
                    }
                },
            };
            run.handles
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(handle, submitted);
            handle
        })
    }

    fn await_task(&self, handle: u64) -> HostFuture<'_, Result<String, Failure>> {
        let submitted = self
            .0
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&handle);
        let limit = self.0.executor.settings.max_pending_submits;
        Box::pin(async move {
            match submitted {
                Some(Submitted::Started(join)) => join
                    .await
                    .unwrap_or_else(|e| Err(crashed(format!("task execution panicked: {e}")))),
                Some(Submitted::Refused(failure)) => Err(failure),
                None if handle & OVER_PENDING_LIMIT != 0 => Err(too_many_pending(limit)),
                None => Err(Failure::new(
                    FailureKind::InvalidInput,
                    format!(
                        "no pending task with handle {handle} (each handle can be awaited once)"
                    ),
                )),
            }
        })
    }

    fn call_flow(&self, name: String, params: String) -> HostFuture<'_, Result<String, Failure>> {
        let this = self.0.clone();
        self.0.in_background(async move {
            if this.depth + 1 > this.executor.settings.max_subflow_depth {
                return Err(Failure::new(
                    FailureKind::Failed,
                    format!(
                        "subflows nest deeper than {} levels",
                        this.executor.settings.max_subflow_depth
                    ),
                ));
            }
            let mut request = FlowRunRequest::new(this.component.clone(), name, params);
            request.parent = Some(this.id);
            request.events = this.events.clone();
            request.cancel = this.cancel.child_token();
            request.task_override = this.task_override.clone();
            request.deployment = this.deployment.clone();
            request.secrets = this.secrets.clone();
            request.capabilities = this.capabilities.clone();
            request.log_budget = Some(this.logs.clone());
            request.root = Some(this.root);
            match this
                .executor
                .clone()
                .run_flow_boxed(request, this.depth + 1)
                .await
            {
                Ok(outcome) => outcome.result,
                Err(WorkerError::UnknownFlow { name, available }) => Err(Failure::new(
                    FailureKind::InvalidInput,
                    format!("no flow named '{name}' in this component; it has: {available}"),
                )),
                Err(e) => Err(crashed(e)),
            }
        })
    }

    fn get_secret(&self, name: &str) -> Option<String> {
        self.0.get_secret(name)
    }

    fn info(&self) -> RunInfo {
        self.0.run_info(None)
    }

    fn get_variable(&self, name: String) -> HostFuture<'_, Result<Option<String>, Failure>> {
        Box::pin(self.0.clone().recorded_variable(name))
    }

    fn pause(
        &self,
        timeout: Duration,
        input_schema: String,
    ) -> HostFuture<'_, Result<crate::engine::PauseAnswer, Failure>> {
        Box::pin(self.0.clone().pause(timeout, input_schema))
    }

    fn create_artifact(
        &self,
        artifact: crate::model::artifact::NewArtifact,
    ) -> HostFuture<'_, Result<String, Failure>> {
        Box::pin(self.0.clone().create_artifact(None, artifact))
    }

    fn run_deployment(
        &self,
        name: String,
        params: String,
        wait: bool,
    ) -> HostFuture<'_, Result<String, Failure>> {
        self.0
            .in_background(self.0.clone().run_deployment(name, params, wait))
    }

    fn take_slots(
        &self,
        names: Vec<String>,
        slots: u32,
        timeout: Option<Duration>,
    ) -> HostFuture<'_, Result<crate::engine::HeldSlots, Failure>> {
        Box::pin(self.0.clone().take_slots_from_code(
            format!("flow '{}'", self.0.flow_name),
            names,
            slots,
            timeout,
        ))
    }

    fn capabilities(&self) -> &Capabilities {
        &self.0.capabilities
    }
}

/// Serves a task instance: logs and secrets; no nested tasks or flows.
struct TaskHost {
    run: Arc<FlowRun>,
    task_run: TaskRunId,
    task_name: String,
    attempt: u32,
}

impl GuestHost for TaskHost {
    fn log(&self, level: LogLevel, message: &str) {
        self.run
            .log(Some((self.task_run, &self.task_name)), level, message);
    }
    fn get_secret(&self, name: &str) -> Option<String> {
        self.run.get_secret(name)
    }
    fn info(&self) -> RunInfo {
        self.run
            .run_info(Some((&self.task_run, &self.task_name, self.attempt)))
    }
    fn get_variable(&self, name: String) -> HostFuture<'_, Result<Option<String>, Failure>> {
        Box::pin(self.run.clone().current_variable(name))
    }
    fn create_artifact(
        &self,
        artifact: crate::model::artifact::NewArtifact,
    ) -> HostFuture<'_, Result<String, Failure>> {
        Box::pin(
            self.run
                .clone()
                .create_artifact(Some(self.task_run), artifact),
        )
    }
    fn take_slots(
        &self,
        names: Vec<String>,
        slots: u32,
        timeout: Option<Duration>,
    ) -> HostFuture<'_, Result<crate::engine::HeldSlots, Failure>> {
        Box::pin(self.run.clone().take_slots_from_code(
            format!("task '{}'", self.task_name),
            names,
            slots,
            timeout,
        ))
    }
    fn capabilities(&self) -> &Capabilities {
        &self.run.capabilities
    }
    fn refusal(&self) -> Failure {
        Failure::new(
            FailureKind::Failed,
            "a task cannot start tasks or flows; call them from the flow instead",
        )
    }
}

/// Counts a task attempt for `/metrics` (a no-op in a process without a recorder).
fn record_attempt_metrics(execution: &crate::engine::Execution) {
    let outcome = match &execution.result {
        Ok(_) => "ok",
        Err(failure) => failure.kind.as_str(),
    };
    metrics::counter!("weir_task_attempts_total", "outcome" => outcome).increment(1);
    metrics::histogram!("weir_task_fuel").record(execution.fuel_used as f64);
    metrics::histogram!("weir_task_peak_memory_bytes").record(execution.peak_memory_bytes as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_budget_keeps_max_lines_then_counts_what_it_drops() {
        let budget = LogBudget::new(2, 1000);
        assert!(budget.admit("a") && budget.admit("b"));
        assert!(budget.dropped_note().is_none());
        assert!(!budget.admit("c") && !budget.admit("d"));
        let note = budget.dropped_note().unwrap();
        assert!(note.starts_with("2 log lines (2 B) dropped"), "{note}");
    }

    #[test]
    fn log_budget_keeps_at_most_max_bytes_and_closes_at_the_first_misfit() {
        let budget = LogBudget::new(100, 10);
        assert!(budget.admit("12345678"));
        assert!(!budget.admit("123"), "would make 11 bytes");
        assert!(!budget.admit("1"), "closed: lines stay in order");
        assert!(
            budget
                .dropped_note()
                .unwrap()
                .starts_with("2 log lines (4 B)")
        );
    }

    #[test]
    fn cache_keys_of_parts_take_exactly_what_they_name() {
        use crate::model::CacheKeyPart::{self, *};
        let defaults = PolicyDefaults::unbounded(1, 1, None);
        let forever = Policy {
            cache_ttl_ms: Some(crate::model::CACHE_FOREVER_MS),
            ..Policy::default()
        };
        let policy = EffectivePolicy::resolve(&forever, &defaults);
        assert_eq!(policy.cache_ttl, Some(Duration::MAX));
        let (a, b) = (
            ComponentDigest::from_sha256([1; 32]),
            ComponentDigest::from_sha256([2; 32]),
        );
        let (r1, r2) = (FlowRunId::new(), FlowRunId::new());
        let key = |parts: &[CacheKeyPart], input, params, run, digest| {
            let scope = CacheScope {
                task: "t",
                input,
                params,
                run,
                digest,
            };
            cache_key_of_parts(&policy, parts, &scope).unwrap()
        };
        // The input alone: params, run and code do not count, whitespace neither.
        assert_eq!(
            key(&[Input], r#"{"x": 1}"#, "{}", r1, &a),
            key(&[Input], r#"{"x":1}"#, r#"{"p":2}"#, r2, &b)
        );
        assert_ne!(
            key(&[Input, Params], "1", r#"{"p":1}"#, r1, &a),
            key(&[Input, Params], "1", r#"{"p":2}"#, r1, &a)
        );
        assert_eq!(
            key(&[RunId], "1", "{}", r1, &a),
            key(&[RunId], "2", "{}", r1, &a)
        );
        assert_ne!(
            key(&[RunId], "1", "{}", r1, &a),
            key(&[RunId], "1", "{}", r2, &a)
        );
        assert_ne!(
            key(&[Input, Code], "1", "{}", r1, &a),
            key(&[Input, Code], "1", "{}", r1, &b)
        );
        // Each part is tagged: input 1 with params 2 is not params 1 with input 2.
        assert_ne!(
            key(&[Input], "1", "2", r1, &a),
            key(&[Params], "2", "1", r1, &a)
        );
        let uncached = EffectivePolicy::resolve(&Policy::default(), &defaults);
        let scope = CacheScope {
            task: "t",
            input: "1",
            params: "{}",
            run: r1,
            digest: &a,
        };
        assert_eq!(cache_key_of_parts(&uncached, &[Input], &scope), None);
    }

    #[test]
    fn cache_key_depends_on_policy_code_and_canonical_input() {
        let defaults = PolicyDefaults::unbounded(1, 1, None);
        let mut policy = Policy {
            cache_ttl_ms: Some(1000),
            ..Policy::default()
        };
        let a = ComponentDigest::from_sha256([1; 32]);
        let b = ComponentDigest::from_sha256([2; 32]);
        let p = EffectivePolicy::resolve(&policy, &defaults);
        let k1 = cache_key(&p, &a, "t", r#"{"x": 1}"#).unwrap();
        assert_eq!(
            Some(k1.clone()),
            cache_key(&p, &a, "t", r#"{"x":1}"#),
            "whitespace does not matter"
        );
        assert_ne!(
            Some(k1.clone()),
            cache_key(&p, &b, "t", r#"{"x":1}"#),
            "code matters by default"
        );
        policy.cache_key = Some(crate::model::CacheKeyPolicy::Input);
        let p = EffectivePolicy::resolve(&policy, &defaults);
        assert_eq!(cache_key(&p, &a, "t", "1"), cache_key(&p, &b, "t", "1"));
        policy.cache_ttl_ms = None;
        assert_eq!(
            cache_key(&EffectivePolicy::resolve(&policy, &defaults), &a, "t", "1"),
            None
        );
    }
}
