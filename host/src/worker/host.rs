//! The `GuestHost`s of the worker: `FlowHost` serves a flow instance's
//! imports, `TaskHost` a task attempt's.

use super::{FlowRun, FlowRunRequest, WorkerError, crashed};
use crate::engine::{GuestHost, HostFuture};
use crate::model::capabilities::Capabilities;
use crate::model::{Failure, FailureKind, LogLevel, RunInfo, TaskRunId};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::task::JoinHandle;

/// A handle `submit-task` gave out: a task, or why none was started.
pub(super) enum Submitted {
    Started(JoinHandle<Result<String, Failure>>),
    Refused(Failure),
}

/// Marks handles of submits refused because too many were pending: they need
/// no entry in the table, so a flow that submits millions costs no memory.
pub(super) const OVER_PENDING_LIMIT: u64 = 1 << 63;

pub(super) fn too_many_pending(limit: usize) -> Failure {
    Failure::new(
        FailureKind::Failed,
        format!(
            "submit-task refused: this flow run already has {limit} submitted tasks that were not awaited (the limit `max_pending_submits`); await some before submitting more, or ask the server's operator to raise the limit"
        ),
    )
}

/// Serves the flow instance's imports. Tasks it spawns hold the run alive.
pub(super) struct FlowHost(pub(super) Arc<FlowRun>);

impl GuestHost for FlowHost {
    fn log(&self, level: LogLevel, message: &str) {
        self.0.log(None, level, message);
    }

    fn call_task(&self, name: String, input: String) -> HostFuture<'_, Result<String, Failure>> {
        let seq = self.0.seq.fetch_add(1, Ordering::SeqCst);
        self.0.in_place(
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
                        // Boxed: tokio would otherwise allocate the ~6 KB
                        // future in a cache-line-aligned cell, through
                        // glibc's slower `posix_memalign` (fan-out +6 %).
                        Submitted::Started(tokio::spawn(Box::pin(
                            run.clone()
                                .execute_task_and_hooks(name, input, seq, Some(permit)),
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
pub(super) struct TaskHost {
    pub(super) run: Arc<FlowRun>,
    pub(super) task_run: TaskRunId,
    pub(super) task_name: String,
    pub(super) attempt: u32,
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
