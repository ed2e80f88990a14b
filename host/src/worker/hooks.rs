//! State hooks: tasks of a run's own component that run when the flow, or
//! one of its tasks, ends (`on_completion`, `on_failure`, `on_cancellation`,
//! `on_crashed` in its policy). Each is a task run of the flow run, recorded
//! like any other, in a sandbox of its own, with how the run ended as its
//! input (`{"run": {...}}`, the SDKs' `HookRun`).
//!
//! A hook never changes how the run ended: it runs after that is committed,
//! its failure is logged and goes no further, and a hook's own end runs no
//! hooks (an `on_failure` hook that fails cannot start itself again). It
//! runs under its own task policy's limits but not under the run's cancel
//! token, or an `on_cancellation` hook could never run; one attempt, no
//! cache, no replay.

use super::*;
use crate::store::FlowRunRow;
use serde_json::{Value, json};

/// Hooks are numbered from here, past any call a flow makes, so a hook's
/// record is never taken for a flow's call when a later attempt replays
/// (a crashed run's hook is recorded while its next attempt starts).
const HOOK_SEQ_BASE: u64 = 1 << 40;

/// How the run a hook watches ended, as the hook is given it.
pub(super) struct Ended<'a> {
    pub task_name: Option<&'a str>,
    pub state: RunState,
    pub message: Option<&'a str>,
    /// The flow's params or the task's input, as text.
    pub input: &'a str,
    pub result: Option<&'a str>,
    pub attempt: u32,
}

fn parsed(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

impl FlowRun {
    /// Runs the hooks `policy` names for how `ended` ended, one after another.
    pub(super) async fn run_hooks(self: &Arc<Self>, policy: &Policy, ended: Ended<'_>) {
        let (event, hooks) = policy.hooks_for(ended.state);
        if hooks.is_empty() {
            return;
        }
        let subject = json!({
            "flow_run_id": self.id.to_string(),
            "flow_name": self.flow_name,
            "task_name": ended.task_name,
            "state": ended.state.as_str(),
            "message": ended.message,
            "input": parsed(ended.input),
            "result": ended.result.map(parsed),
            "attempt": ended.attempt,
        });
        let input = json!({ "run": subject }).to_string();
        for hook in hooks {
            self.run_hook(event, hook, &input, ended.state).await;
        }
    }

    /// A task call, then its task's hooks for how it ended. A call replayed
    /// from an earlier attempt runs none: they ran when it first ended.
    pub(super) async fn execute_task_and_hooks(
        self: Arc<Self>,
        name: String,
        input: String,
        seq: u64,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<String, Failure> {
        let replaying = self
            .replay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&seq);
        let result = self
            .clone()
            .execute_task(name.clone(), input.clone(), seq, permit)
            .await;
        let component = self.component.clone();
        if let (false, Some(task)) = (replaying, component.manifest.task(&name)) {
            let kept = task.policy.persist_result != Some(false);
            let (state, message, output) = match &result {
                // A result kept out of the records stays out of the hook's input too.
                Ok(_) if !kept => (RunState::Completed, None, None),
                Ok(output) => (RunState::Completed, None, Some(output.as_str())),
                Err(failure) => (
                    failure.kind.final_state(),
                    Some(failure.message.as_str()),
                    None,
                ),
            };
            let ended = Ended {
                task_name: Some(&name),
                state,
                message,
                input: &input,
                result: output,
                attempt: self.attempt.load(Ordering::SeqCst),
            };
            self.run_hooks(&task.policy, ended).await;
        }
        result
    }

    /// One hook: a recorded task run; a failure is logged, nothing more.
    async fn run_hook(self: &Arc<Self>, event: &str, name: &str, input: &str, state: RunState) {
        let control = self.control();
        let Some(task_def) = self.component.manifest.task(name) else {
            self.log(
                None,
                LogLevel::Warn,
                &format!(
                    "{event} hook '{name}' is not a task of this component, so nothing ran; name a #[task] of the same component"
                ),
            );
            return;
        };
        let policy = EffectivePolicy::resolve(
            &task_def.policy.overlay(&self.task_override),
            &self.executor.settings.task_defaults,
        );
        let id = TaskRunId::new();
        let new = NewTaskRun {
            id,
            flow_run: self.id,
            call_seq: HOOK_SEQ_BASE + self.seq.fetch_add(1, Ordering::SeqCst),
            task_name: name.to_string(),
            input_sha256: input_sha256(input),
            input: self.secrets.redact(input).into_owned(),
            state: RunState::Running,
            cache_key: None,
            cached_from: None,
            host: self.executor.settings.host_name.clone(),
            at: control.now(),
        };
        if let Err(e) = control.create_task_run(new, Durability::Detached) {
            self.log(
                None,
                LogLevel::Error,
                &format!("{event} hook '{name}' could not be recorded, so it did not run: {e}"),
            );
            return;
        }
        send(
            &self.events,
            RunEvent::TaskStarted {
                id,
                name: name.to_string(),
                attempt: 1,
            },
        );
        let started = Instant::now();
        let started_at = control.now();
        let host = Arc::new(TaskHost {
            run: self.clone(),
            task_run: id,
            task_name: name.to_string(),
            attempt: 1,
        });
        let execution = self
            .executor
            .engine
            .run(
                &self.component,
                Entry::Task { name, input },
                policy.limits,
                host,
                CancellationToken::new(),
            )
            .await;
        record_attempt_metrics(&execution);
        let now = control.now();
        let failure = execution.result.as_ref().err();
        let record = AttemptRecord {
            task_run: id,
            attempt: 1,
            started_at,
            ended_at: now,
            fuel_used: execution.fuel_used,
            peak_memory: execution.peak_memory_bytes,
            failure: failure.map(|f| (f.kind, self.secrets.redact(&f.message).into_owned())),
        };
        let mut change = StateChange::new(id.0, RunState::Running, RunState::Completed, now);
        change.attempts = Some(1);
        change.fuel_used = Some(execution.fuel_used);
        change.peak_memory = Some(execution.peak_memory_bytes);
        match &execution.result {
            Ok(output) => change.output = Some(self.secrets.redact(output).into_owned()),
            Err(failure) => {
                change.to = failure.kind.final_state();
                change.message = Some(self.secrets.redact(&failure.message).into_owned());
                change.failure_kind = Some(failure.kind);
            }
        }
        let hook_state = change.to;
        match control.change_task_run(
            change,
            vec![Write::TaskAttempt(record)],
            Durability::Committed,
        ) {
            Ok(Some(ticket)) => {
                if let Err(e) = ticket.committed().await {
                    tracing::warn!("hook {name} of flow run {}: {e}", self.id);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("hook {name} of flow run {}: {e}", self.id),
        }
        if let Err(failure) = &execution.result {
            self.log(
                Some((id, name)),
                LogLevel::Error,
                &format!("{event} hook '{name}' failed ({failure}); the run's state stays {state}"),
            );
        }
        send(
            &self.events,
            RunEvent::TaskFinished {
                id,
                name: name.to_string(),
                state: hook_state,
                duration: started.elapsed(),
            },
        );
    }
}

impl Executor {
    /// Runs the `on_crashed` hooks of a run someone found crashed (its
    /// holder gone, its lease run out), in this process: the run's own
    /// sandbox is gone with its holder. Called once per crash, by whoever
    /// won the compare-and-set that made the run `Crashed`. The hooks get
    /// no secrets and no capabilities: those were the lost holder's.
    pub async fn run_crash_hooks(self: &Arc<Self>, component: Component, crashed: &FlowRunRow) {
        let Some(flow) = component.manifest.flow(&crashed.flow_name) else {
            return;
        };
        let policy = flow.policy.clone();
        if policy.hooks_for(RunState::Crashed).1.is_empty() {
            return;
        }
        // Numbered after every call (and hook) the run recorded.
        let next_seq = self
            .control
            .store()
            .task_runs(crashed.id)
            .map(|tasks| {
                let last = tasks.iter().map(|t| t.call_seq % HOOK_SEQ_BASE + 1).max();
                last.unwrap_or(0)
            })
            .unwrap_or(0);
        let run = Arc::new(FlowRun {
            executor: self.clone(),
            id: crashed.id,
            root: crashed.id,
            component,
            flow_name: crashed.flow_name.clone(),
            attempt: AtomicU32::new(crashed.attempt),
            depth: 0,
            seq: AtomicU64::new(next_seq),
            replay: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            background: Mutex::new(Vec::new()),
            next_handle: AtomicU64::new(1),
            permits: Arc::new(Semaphore::new(1)),
            cancel: CancellationToken::new(),
            events: None,
            owns_log_budget: true,
            logs: Arc::new(LogBudget::new(
                self.settings.max_log_lines_per_run,
                self.settings.max_log_bytes_per_run,
            )),
            clamps_noted: Mutex::new(HashSet::new()),
            submits_refused: AtomicBool::new(false),
            task_override: Policy::default(),
            deployment: crashed.deployment.clone(),
            secrets: Arc::new(GrantedSecrets::default()),
            capabilities: Arc::new(Capabilities::default()),
            stats: Stats::default(),
            params: crashed.params.clone(),
            persist_result: true,
            paused: AtomicBool::new(false),
        });
        let ended = Ended {
            task_name: None,
            state: RunState::Crashed,
            message: crashed.message.as_deref(),
            input: &crashed.params,
            result: None,
            attempt: crashed.attempt,
        };
        run.run_hooks(&policy, ended).await;
    }
}
