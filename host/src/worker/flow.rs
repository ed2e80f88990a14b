//! A flow run's attempts: start or resume its record, run the flow instance,
//! retry by its policy, record how it ended.

use super::host::FlowHost;
use super::logs::LogBudget;
use super::retry::{self, AfterFailure};
use super::{
    Executor, ExistingRun, FlowRun, FlowRunOutcome, FlowRunRequest, RunEvent, Stats, WorkerError,
    hooks, process_marker, send,
};
use crate::control::{ControlError, Durability};
use crate::engine::{Entry, GuestHost, HostFuture};
use crate::model::{EffectivePolicy, Failure, FailureKind, FlowRunId, LogLevel, RunState};
use crate::store::{Lease, NewFlowRun, StateChange};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

impl Executor {
    /// Runs a flow to its end: attempts, flow-level retries, replay of completed tasks.
    pub async fn run_flow(
        self: &Arc<Self>,
        request: FlowRunRequest,
    ) -> Result<FlowRunOutcome, WorkerError> {
        self.run_flow_at_depth(request, 0).await
    }

    pub(super) fn run_flow_boxed(
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

        let (id, attempt) = match request.existing {
            Some(run) => (run.id, self.reopen_record(run).await?),
            None => (self.create_record(&request)?, 1),
        };
        send(
            &request.events,
            RunEvent::FlowStarted {
                id,
                flow_name: request.flow_name.clone(),
                attempt,
            },
        );
        let run = self.flow_run(&request, id, attempt, depth, &policy);
        run.note_clamps("this flow", &policy.clamped);

        // Someone in another process (or the API) may ask to cancel this run.
        let poller = (depth == 0).then(|| self.watch_for_cancel(id, request.cancel.clone()));
        let outcome = self
            .attempts(&run, &request, &policy, attempt, RunState::Running, started)
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

    /// Moves an existing run (a retry or a resume) to Running for its next
    /// attempt, durably; answers that attempt's number.
    async fn reopen_record(&self, run: ExistingRun) -> Result<u32, WorkerError> {
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
        self.committed(
            self.control
                .change_flow_run(change, Vec::new(), Durability::Committed)?,
        )
        .await?;
        Ok(attempt)
    }

    /// Records a new run, Running at its first attempt.
    fn create_record(&self, request: &FlowRunRequest) -> Result<FlowRunId, WorkerError> {
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
                    expires_at: self.control.now() + self.settings.lease_ttl.as_micros() as i64,
                }),
                deployment_version: None,
            },
            Durability::Detached,
        )?;
        Ok(id)
    }

    /// The state of run `id` in progress, as its attempts and calls share it.
    fn flow_run(
        self: &Arc<Self>,
        request: &FlowRunRequest,
        id: FlowRunId,
        attempt: u32,
        depth: u32,
        policy: &EffectivePolicy,
    ) -> Arc<FlowRun> {
        Arc::new(FlowRun {
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
            events: request.events.clone(),
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
        })
    }

    /// Cancels `cancel` once someone (another process, the API) asks to
    /// cancel run `id` in the store; checks every `cancel_poll`.
    fn watch_for_cancel(&self, id: FlowRunId, cancel: CancellationToken) -> JoinHandle<()> {
        let (store, every) = (self.control.store().clone(), self.settings.cancel_poll);
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
            run.stats.count_resources(&execution);
            if run.paused.swap(false, Ordering::SeqCst) && !request.cancel.is_cancelled() {
                return run.suspend(state, started).await;
            }

            let now = self.control.now();
            let failure = match execution.result {
                Ok(result) => return self.finish(run, state, Ok(result), started).await,
                Err(failure) => failure,
            };
            let announce = |failure: &Failure, delay: Duration| -> Result<(), WorkerError> {
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
                Ok(())
            };
            let after = retry::after_failed_attempt(
                &*self.timer,
                policy,
                attempt,
                failure,
                &request.cancel,
                announce,
            )
            .await?;
            match after {
                AfterFailure::RetryNow => {}
                AfterFailure::CancelledWhileWaiting => {
                    let cancelled =
                        Failure::new(FailureKind::Cancelled, "cancelled while waiting to retry");
                    return self
                        .finish(run, RunState::Retrying, Err(cancelled), started)
                        .await;
                }
                AfterFailure::GiveUp(failure) => {
                    return self.finish(run, state, Err(failure), started).await;
                }
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

    pub(super) async fn committed(
        &self,
        ticket: Option<crate::store::Ticket>,
    ) -> Result<(), WorkerError> {
        if let Some(ticket) = ticket {
            ticket.committed().await.map_err(ControlError::from)?;
        }
        Ok(())
    }
}
