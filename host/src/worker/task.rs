//! One task call, in named steps: replay, policy and cache key, cache lookup,
//! permits, then attempts in fresh sandboxes with retries, each outcome
//! recorded, the last one durably before the flow sees the result.

use super::cache_key::{cache_key, cache_key_of_parts, input_sha256};
use super::guard::CallGuard;
use super::host::TaskHost;
use super::retry::{self, AfterFailure};
use super::{FlowRun, RunEvent, crashed, result_storage, send};
use crate::control::{Control, Durability};
use crate::engine::{Entry, Execution, HeldSlots};
use crate::model::{
    EffectivePolicy, Failure, FailureKind, LogLevel, RunState, TaskRunId, TimestampMicros,
};
use crate::store::{AttemptRecord, NewTaskRun, StateChange, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;

/// How long a task attempt may run before its row is written as Running.
const ANNOUNCE_AFTER: Duration = Duration::from_millis(50);

/// A task call past replay: what it runs and under which policy.
struct TaskCall {
    name: String,
    input: String,
    seq: u64,
    policy: EffectivePolicy,
    /// `None` when its result may not be reused (see `cache_key`).
    cache_key: Option<String>,
    /// Submitted (not called): the flow goes on while it runs, and other
    /// calls of the run are likely in flight beside it.
    submitted: bool,
}

/// What a running call holds, given back when it ends. Fields drop in
/// order: server-wide slots first, the run's own concurrency permit last.
struct TaskPermits {
    _slots: Option<HeldSlots>,
    _tags: Vec<OwnedSemaphorePermit>,
    _concurrency: OwnedSemaphorePermit,
}

/// Fuel and peak memory of a call over all its attempts.
#[derive(Default)]
struct Totals {
    fuel: u64,
    peak_memory: u64,
}

/// How an attempt ended, as it will be written: the call's state change
/// (to Completed until a step says otherwise) and the attempt's own record.
struct AttemptEnd {
    change: StateChange,
    record: AttemptRecord,
}

impl FlowRun {
    /// One task call, with everything the policy asks for.
    pub(super) async fn execute_task(
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
        let call = self.prepare_call(name, input, seq, permit.is_some())?;
        self.stats.tasks.fetch_add(1, Ordering::Relaxed);
        if let Some(output) = self.cache_hit(&call)? {
            return Ok(output);
        }
        let _permits = self.task_permits(&call, permit).await?;
        self.attempts(call).await
    }

    /// The call's policy (the task's own, under the run's override and the
    /// server's ceilings) and cache key. Fails for a task the component does
    /// not have, or a result storage this server does not know.
    fn prepare_call(
        &self,
        name: String,
        input: String,
        seq: u64,
        submitted: bool,
    ) -> Result<TaskCall, Failure> {
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
        Ok(TaskCall {
            name,
            input,
            seq,
            policy,
            cache_key,
            submitted,
        })
    }

    /// The result of an earlier call with the same cache key, when the
    /// policy allows reuse and one is fresh; the hit is recorded as a Cached
    /// task run.
    fn cache_hit(&self, call: &TaskCall) -> Result<Option<String>, Failure> {
        let policy = &call.policy;
        let (Some(key), Some(ttl), false) =
            (&call.cache_key, policy.cache_ttl, policy.refresh_cache)
        else {
            return Ok(None);
        };
        let control = self.control();
        // A TTL of `Duration::MAX` ("forever") reaches back to the beginning.
        let ttl_micros = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
        let not_before = control.now().saturating_sub(ttl_micros);
        let hit = control
            .store()
            .cached_output(key, not_before)
            .ok()
            .flatten();
        // A hit whose result file is gone or damaged is a miss.
        let hit = hit.and_then(
            |(from, output)| match self.stored_result(&call.name, &output) {
                Some(Ok(read)) => Some((from, output, read)),
                Some(Err(_)) => None,
                None => Some((from, output.clone(), output)),
            },
        );
        let Some((from, output, read)) = hit else {
            return Ok(None);
        };
        let id = TaskRunId::new();
        // Not awaited: after a crash the same call would simply hit the cache again.
        control
            .create_task_run(
                NewTaskRun {
                    // A hit is not a source for later hits: lookups stay one index probe.
                    cache_key: None,
                    cached_from: Some((from, output)),
                    ..self.new_task_run(call, id, RunState::Cached)
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
                name: call.name.clone(),
                state: RunState::Cached,
                duration: Duration::ZERO,
            },
        );
        Ok(Some(read))
    }

    /// The row of task run `id` for this call, created in `state`, under
    /// the call's cache key; its input is recorded redacted, with the hash
    /// of the text the flow passed for replay to compare.
    fn new_task_run(&self, call: &TaskCall, id: TaskRunId, state: RunState) -> NewTaskRun {
        NewTaskRun {
            id,
            flow_run: self.id,
            call_seq: call.seq,
            task_name: call.name.clone(),
            input_sha256: input_sha256(&call.input),
            input: self.secrets.redact(&call.input).into_owned(),
            state,
            cache_key: call.cache_key.clone(),
            cached_from: None,
            host: self.executor.settings.host_name.clone(),
            at: self.control().now(),
        }
    }

    /// A slot among the run's tasks (unless the call brings one), one per
    /// limited tag of this executor, and the server-wide slots named like its tags.
    async fn task_permits(
        self: &Arc<Self>,
        call: &TaskCall,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<TaskPermits, Failure> {
        let concurrency = match permit {
            Some(permit) => permit,
            None => self.concurrency_permit().await?,
        };
        let tags = match self
            .executor
            .acquire_tag_permits(&call.policy.tags, &self.cancel)
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
        let slots = match call.policy.tags.is_empty() {
            true => None,
            false => {
                self.clone()
                    .take_slots(
                        &format!("task '{}'", call.name),
                        call.policy.tags.clone(),
                        1,
                        false,
                        None,
                    )
                    .await?
            }
        };
        Ok(TaskPermits {
            _slots: slots,
            _tags: tags,
            _concurrency: concurrency,
        })
    }

    /// Attempts in fresh sandboxes until one succeeds or the policy gives up.
    async fn attempts(self: &Arc<Self>, call: TaskCall) -> Result<String, Failure> {
        let control = self.control();
        let id = TaskRunId::new();
        // The row is written with the first outcome, unless the attempt runs
        // longer than ANNOUNCE_AFTER: then it is written as Running right away.
        // A fast task costs one commit; a slow one is visible while it runs.
        let mut guard = CallGuard {
            control,
            id,
            state: RunState::Running,
            finished: false,
            unannounced: Some(self.new_task_run(&call, id, RunState::Running)),
        };

        let started = Instant::now();
        let mut attempt = 1u32;
        let mut totals = Totals::default();
        loop {
            let (attempt_started, execution) = self.run_attempt(&mut guard, &call, attempt).await?;
            let end = self.attempt_end(&guard, attempt, attempt_started, &execution, &mut totals);
            let failure = match execution.result {
                Ok(output) => return self.completed(guard, end, call, output, started).await,
                Err(failure) => failure,
            };
            let after = retry::after_failed_attempt(
                &*self.executor.timer,
                &call.policy,
                attempt,
                failure,
                &self.cancel,
                |failure, delay| self.announce_retry(&mut guard, &end, &call, failure, delay),
            )
            .await?;
            match after {
                AfterFailure::RetryNow => {}
                AfterFailure::CancelledWhileWaiting => return self.cancelled_while_waiting(guard),
                AfterFailure::GiveUp(failure) => {
                    return self.failed(guard, end, call, failure, started).await;
                }
            }
            let resume = StateChange::new(
                guard.id.0,
                RunState::Retrying,
                RunState::Running,
                control.now(),
            );
            control
                .change_task_run(resume, Vec::new(), Durability::Detached)
                .map_err(crashed)?;
            guard.state = RunState::Running;
            attempt += 1;
        }
    }

    /// Counts an attempt that ran (for the run's summary and `/metrics`) and
    /// says how it ended, as the call's record will be written.
    fn attempt_end(
        &self,
        guard: &CallGuard<'_>,
        attempt: u32,
        started_at: TimestampMicros,
        execution: &Execution,
        totals: &mut Totals,
    ) -> AttemptEnd {
        totals.fuel += execution.fuel_used;
        totals.peak_memory = totals.peak_memory.max(execution.peak_memory_bytes);
        record_attempt_metrics(execution);
        self.stats.count_resources(execution);
        let now = self.control().now();
        let record = AttemptRecord {
            task_run: guard.id,
            attempt,
            started_at,
            ended_at: now,
            fuel_used: execution.fuel_used,
            peak_memory: execution.peak_memory_bytes,
            failure: execution
                .result
                .as_ref()
                .err()
                .map(|f| (f.kind, self.secrets.redact(&f.message).into_owned())),
        };
        let mut change = StateChange::new(guard.id.0, guard.state, RunState::Completed, now);
        change.attempts = Some(attempt);
        change.fuel_used = Some(totals.fuel);
        change.peak_memory = Some(totals.peak_memory);
        AttemptEnd { change, record }
    }

    /// Records that the attempt of `end` failed and the next one comes after
    /// `delay`, logs it and tells the run's watchers.
    fn announce_retry(
        &self,
        guard: &mut CallGuard<'_>,
        end: &AttemptEnd,
        call: &TaskCall,
        failure: &Failure,
        delay: Duration,
    ) -> Result<(), Failure> {
        let (id, attempt) = (guard.id, end.record.attempt);
        let mut change = end.change.clone();
        change.to = RunState::Retrying;
        change.message = Some(self.secrets.redact(&failure.to_string()).into_owned());
        change.failure_kind = Some(failure.kind);
        change.next_attempt_at = Some(end.record.ended_at + delay.as_micros() as i64);
        self.control()
            .change_task_run(
                change,
                guard.unit(vec![Write::TaskAttempt(end.record.clone())])?,
                Durability::Detached,
            )
            .map_err(crashed)?;
        guard.state = RunState::Retrying;
        self.log(
            Some((id, &call.name)),
            LogLevel::Warn,
            &format!(
                "attempt {attempt} of {} failed ({failure}); retrying in {}",
                call.policy.retries + 1,
                humantime::format_duration(delay)
            ),
        );
        send(
            &self.events,
            RunEvent::TaskRetrying {
                id,
                name: call.name.clone(),
                attempt,
                failure: Failure::new(failure.kind, self.secrets.redact(&failure.message)),
                delay,
            },
        );
        Ok(())
    }

    /// Records a call cancelled while it waited for its next attempt.
    fn cancelled_while_waiting(&self, mut guard: CallGuard<'_>) -> Result<String, Failure> {
        guard.finished = true;
        let control = self.control();
        let mut change = StateChange::new(
            guard.id.0,
            RunState::Retrying,
            RunState::Cancelled,
            control.now(),
        );
        change.failure_kind = Some(FailureKind::Cancelled);
        change.message = Some("cancelled while waiting to retry".into());
        control
            .change_task_run(change, Vec::new(), Durability::Detached)
            .map_err(crashed)?;
        Err(Failure::new(
            FailureKind::Cancelled,
            "the run was cancelled",
        ))
    }

    /// Runs one attempt in a fresh sandbox; answers when it started and how
    /// it went. Writes the call's row as Running if the attempt outlasts
    /// ANNOUNCE_AFTER while the row is not written yet.
    async fn run_attempt(
        self: &Arc<Self>,
        guard: &mut CallGuard<'_>,
        call: &TaskCall,
        attempt: u32,
    ) -> Result<(TimestampMicros, Execution), Failure> {
        let control = self.control();
        send(
            &self.events,
            RunEvent::TaskStarted {
                id: guard.id,
                name: call.name.clone(),
                attempt,
            },
        );
        self.stats.attempts.fetch_add(1, Ordering::Relaxed);
        let task_host = Arc::new(TaskHost {
            run: self.clone(),
            task_run: guard.id,
            task_name: call.name.clone(),
            attempt,
        });
        // Attempt 1 starts as its row is created, so a fast task's attempt
        // is its row alone (the store writes no attempt or history rows).
        let attempt_started = match (attempt, &guard.unannounced) {
            (1, Some(row)) => row.at,
            _ => control.now(),
        };
        let run = self.executor.engine.run(
            &self.component,
            Entry::Task {
                name: &call.name,
                input: &call.input,
            },
            call.policy.limits,
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
        Ok((attempt_started, execution))
    }

    /// Records a completed call durably before the flow sees its result: the
    /// rule that makes resume safe.
    async fn completed(
        &self,
        mut guard: CallGuard<'_>,
        end: AttemptEnd,
        call: TaskCall,
        output: String,
        started: Instant,
    ) -> Result<String, Failure> {
        let mut end = end;
        let policy = &call.policy;
        // Recorded redacted: a replay of a secret-bearing result sees `***`;
        // not at all under persist_result = false (a resume runs it again).
        end.change.output = match (&policy.result_storage, policy.persist_result) {
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
        self.record_final(&mut guard, end, call.submitted).await?;
        send(
            &self.events,
            RunEvent::TaskFinished {
                id: guard.id,
                name: call.name,
                state: RunState::Completed,
                duration: started.elapsed(),
            },
        );
        Ok(output)
    }

    /// Records a call that failed for good (or was cancelled), durably, and
    /// logs why.
    async fn failed(
        &self,
        mut guard: CallGuard<'_>,
        end: AttemptEnd,
        call: TaskCall,
        failure: Failure,
        started: Instant,
    ) -> Result<String, Failure> {
        let mut end = end;
        let kind = failure.kind;
        end.change.to = kind.final_state();
        end.change.message = Some(self.secrets.redact(&failure.message).into_owned());
        end.change.failure_kind = Some(kind);
        self.record_final(&mut guard, end, call.submitted).await?;
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        self.log(
            Some((guard.id, &call.name)),
            LogLevel::Error,
            &format!("task failed: {failure}"),
        );
        send(
            &self.events,
            RunEvent::TaskFinished {
                id: guard.id,
                name: call.name,
                state: kind.final_state(),
                duration: started.elapsed(),
            },
        );
        Err(failure)
    }

    /// Writes how the call ended and waits until it is durable: the flow
    /// sees neither its result nor its failure before that (the rule that
    /// makes resume safe).
    ///
    /// A submitted call's outcome waits in the queue while this worker
    /// thread runs the other calls ready beside it, so that theirs join the
    /// same commit: a fan-out commits many calls at once instead of one or
    /// two (each commit writes whole pages). It is committed when this call
    /// is polled again, or when it is dropped.
    async fn record_final(
        &self,
        guard: &mut CallGuard<'_>,
        end: AttemptEnd,
        submitted: bool,
    ) -> Result<(), Failure> {
        let durability = match submitted {
            true => Durability::Queued,
            false => Durability::Committed,
        };
        let control = self.control();
        let ticket = control
            .change_task_run(
                end.change,
                guard.unit(vec![Write::TaskAttempt(end.record)])?,
                durability,
            )
            .map_err(crashed)?;
        guard.finished = true;
        if let Some(ticket) = ticket {
            if submitted {
                commit_beside_ready_calls(control).await;
            }
            ticket.committed().await.map_err(crashed)?;
        }
        Ok(())
    }
}

/// Counts a task attempt for `/metrics` (a no-op in a process without a recorder).
pub(super) fn record_attempt_metrics(execution: &Execution) {
    let outcome = match &execution.result {
        Ok(_) => "ok",
        Err(failure) => failure.kind.as_str(),
    };
    metrics::counter!("weir_task_attempts_total", "outcome" => outcome).increment(1);
    metrics::histogram!("weir_task_fuel").record(execution.fuel_used as f64);
    metrics::histogram!("weir_task_peak_memory_bytes").record(execution.peak_memory_bytes as f64);
}

/// Lets the calls ready on this worker thread run (and queue their outcomes)
/// before committing what is queued: tokio polls a yielding task again only
/// after the others ready on its thread. A fan-out of 10k calls went from
/// 4.2 to 2.0 WAL writes a call, and one of 100k from 28k to 33k calls/s. A
/// caller dropped while it waits (a cancel, a deadline) still commits.
async fn commit_beside_ready_calls(control: &Control) {
    let commit = CommitOnDrop(control);
    tokio::task::yield_now().await;
    drop(commit);
}

/// Commits what a call left queued when it is dropped, awaited or not.
struct CommitOnDrop<'a>(&'a Control);

impl Drop for CommitOnDrop<'_> {
    fn drop(&mut self) {
        self.0.commit_queued();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::store::{Store, tests::new_flow_run};
    use futures_util::FutureExt;

    /// A submitted call's outcome that waits in the queue is committed even
    /// when the call is dropped while it waits: nothing it recorded is lost.
    #[tokio::test]
    async fn a_call_dropped_while_its_outcome_waits_in_the_queue_still_commits_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("weir.db")).unwrap());
        let control = Control::new(store.clone(), Arc::new(SystemClock));
        let id = crate::model::FlowRunId::new();
        let ticket = control
            .record(vec![new_flow_run(id)], Durability::Queued)
            .unwrap();
        // Polled once it yields; then it is dropped, as a cancel drops it.
        assert!(commit_beside_ready_calls(&control).now_or_never().is_none());
        assert!(store.flow_run(id).is_ok(), "the dropped call committed");
        ticket.committed().await.unwrap();
    }
}
