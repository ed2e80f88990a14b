//! One task call: replay, cache lookup, permits, attempts in fresh sandboxes
//! with retries, and a durable record before the flow sees the result.

use super::cache_key::{cache_key, cache_key_of_parts, input_sha256};
use super::guard::CallGuard;
use super::host::TaskHost;
use super::{FlowRun, RunEvent, crashed, result_storage, send};
use crate::control::Durability;
use crate::engine::Entry;
use crate::model::{EffectivePolicy, Failure, FailureKind, LogLevel, RunState, TaskRunId};
use crate::store::{AttemptRecord, NewTaskRun, StateChange, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;

/// How long a task attempt may run before its row is written as Running.
const ANNOUNCE_AFTER: Duration = Duration::from_millis(50);

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
            at: control.now(),
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
            let attempt_started = control.now();
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
}

/// Counts a task attempt for `/metrics` (a no-op in a process without a recorder).
pub(super) fn record_attempt_metrics(execution: &crate::engine::Execution) {
    let outcome = match &execution.result {
        Ok(_) => "ok",
        Err(failure) => failure.kind.as_str(),
    };
    metrics::counter!("weir_task_attempts_total", "outcome" => outcome).increment(1);
    metrics::histogram!("weir_task_fuel").record(execution.fuel_used as f64);
    metrics::histogram!("weir_task_peak_memory_bytes").record(execution.peak_memory_bytes as f64);
}
