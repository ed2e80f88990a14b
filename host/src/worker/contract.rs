//! The imports of contract 0.1.1 as a flow run serves them: variables read
//! once and recorded, `pause` that records the run `Paused` and drops its
//! sandbox, and artifacts.
//!
//! A flow's variable read and its pause are calls like a task's: they take
//! the next call number and are replayed from their records, so a retried
//! or resumed run sees the value it saw the first time and its pause
//! returns the input it was resumed with (`dispatch::pause` answers it).

use super::{Executor, FlowRun, crashed, input_sha256, send};
use crate::control::Durability;
use crate::dispatch::pause::{
    ARTIFACT_CALL, PAUSE_CALL, RUN_DEPLOYMENT_CALL, VARIABLE_CALL, pause_input,
};
use crate::dispatch::{DispatchError, Dispatcher};
use crate::engine::PauseAnswer;
use crate::model::artifact::{Artifact, NewArtifact};
use crate::model::{Failure, FailureKind, FlowRunId, LogLevel, RunState, TaskRunId, Variable};
use crate::store::{NewTaskRun, ObjectKind, StateChange, Write};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Where an executor reads variables when it is not beside the database: a
/// remote host (`host run --pool`) asks the server's API. Such an executor
/// also refuses `pause` and artifacts, whose records only a server keeps.
pub trait RemoteServer: Send + Sync + 'static {
    /// The variable's value, or none; `Err` says why it could not be read.
    fn variable(&self, name: &str) -> Result<Option<Value>, String>;
    /// One attempt to take slots of server-wide limits.
    fn take_slots(
        &self,
        ask: &crate::dispatch::limits::TakeSlots,
    ) -> Result<crate::dispatch::limits::Taken, String>;
    /// Gives back what a lease of `take_slots` holds.
    fn release_slots(&self, lease: uuid::Uuid) -> Result<(), String>;
}

impl Executor {
    /// Makes this executor a remote host's: variables come from `server`.
    pub fn serve_remotely(&self, server: Arc<dyn RemoteServer>) {
        let _ = self.remote.set(server);
    }

    /// Lets flows start deployments' runs (`run-deployment`) through the
    /// server's dispatcher; without one they are refused.
    pub fn start_deployments_with(&self, dispatcher: Arc<Dispatcher>) {
        let _ = self.dispatcher.set(dispatcher);
    }

    fn is_remote(&self) -> bool {
        self.remote.get().is_some()
    }

    /// A variable's current value. Blocks (a read, or a request to the server).
    fn read_variable_now(&self, name: &str) -> Result<Option<Value>, Failure> {
        if let Some(server) = self.remote.get() {
            return server.variable(name).map_err(|why| {
                Failure::new(
                    FailureKind::Failed,
                    format!("reading variable '{name}' from the server: {why}"),
                )
            });
        }
        let row = self
            .control
            .store()
            .object(ObjectKind::Variable, name)
            .map_err(|e| crashed(format!("reading variable '{name}': {e}")))?;
        match row {
            None => Ok(None),
            Some(row) => serde_json::from_str::<Variable>(&row.body)
                .map(|v| Some(v.value))
                .map_err(|e| crashed(format!("variable '{name}' is unreadable: {e}"))),
        }
    }
}

/// What a variable read records: whether it was set, and its value.
fn encode_read(value: Option<&Value>) -> String {
    match value {
        Some(value) => json!({"found": true, "value": value}).to_string(),
        None => json!({"found": false}).to_string(),
    }
}

fn decode_read(recorded: &str) -> Option<String> {
    let read: Value = serde_json::from_str(recorded).ok()?;
    if read.get("found").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    read.get("value").map(Value::to_string)
}

impl FlowRun {
    /// `get-variable` from a task: read now, not recorded (the task's
    /// result is what its flow's replay sees).
    pub(super) async fn current_variable(
        self: Arc<Self>,
        name: String,
    ) -> Result<Option<String>, Failure> {
        let executor = self.executor.clone();
        let value = tokio::task::spawn_blocking(move || executor.read_variable_now(&name))
            .await
            .map_err(|e| crashed(format!("reading a variable: {e}")))??;
        Ok(value.map(|v| v.to_string()))
    }

    /// `get-variable` from the flow: replayed when an earlier attempt read
    /// it, else read now and recorded (durably) before the flow sees it.
    pub(super) async fn recorded_variable(
        self: Arc<Self>,
        name: String,
    ) -> Result<Option<String>, Failure> {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let input = json!({ "name": name }).to_string();
        if let Some(recorded) = self.replayed(seq, VARIABLE_CALL, &input) {
            self.stats.replayed.fetch_add(1, Ordering::Relaxed);
            return Ok(decode_read(&recorded));
        }
        let executor = self.executor.clone();
        let value = tokio::task::spawn_blocking(move || executor.read_variable_now(&name))
            .await
            .map_err(|e| crashed(format!("reading a variable: {e}")))??;
        let output = encode_read(value.as_ref());
        self.record_call(
            seq,
            VARIABLE_CALL,
            &input,
            RunState::Completed,
            Some(output),
            None,
        )
        .await?;
        Ok(value.map(|v| v.to_string()))
    }

    /// Writes a host-served call (variable read, pause) as a task run that
    /// is created and moved to `to` in one unit, committed before the flow
    /// goes on.
    async fn record_call(
        &self,
        seq: u64,
        name: &str,
        input: &str,
        to: RunState,
        output: Option<String>,
        next_attempt_at: Option<i64>,
    ) -> Result<TaskRunId, Failure> {
        let control = self.control();
        let id = TaskRunId::new();
        let now = control.now();
        let create = control
            .creating_task_run(NewTaskRun {
                id,
                flow_run: self.id,
                call_seq: seq,
                task_name: name.to_string(),
                input_sha256: input_sha256(input),
                input: self.secrets.redact(input).into_owned(),
                state: RunState::Running,
                cache_key: None,
                cached_from: None,
                host: self.executor.settings.host_name.clone(),
                at: now,
            })
            .map_err(crashed)?;
        let mut change = StateChange::new(id.0, RunState::Running, to, now);
        change.output = output.map(|o| self.secrets.redact(&o).into_owned());
        change.attempts = Some(1);
        change.next_attempt_at = next_attempt_at;
        let ticket = control
            .change_task_run(change, vec![create], Durability::Committed)
            .map_err(crashed)?;
        if let Some(ticket) = ticket {
            ticket.committed().await.map_err(crashed)?;
        }
        Ok(id)
    }

    /// `pause` from the flow: the input it was resumed with, or (the first
    /// time) a `Paused` record and the order to drop the instance.
    pub(super) async fn pause(
        self: Arc<Self>,
        timeout: Duration,
        input_schema: String,
    ) -> Result<PauseAnswer, Failure> {
        if self.depth > 0 {
            return Err(Failure::new(
                FailureKind::Failed,
                "only a top-level flow can pause (a paused subflow would keep its parent's sandbox waiting); pause in the parent flow",
            ));
        }
        if self.executor.is_remote() {
            return Err(Failure::new(
                FailureKind::Failed,
                "pause is not available on a remote host (host run --pool) yet; run this deployment on a server's own pool",
            ));
        }
        let schema: Value = serde_json::from_str(&input_schema)
            .map_err(|e| Failure::new(FailureKind::InvalidInput, e.to_string()))?;
        crate::protocol::check_schema(&schema).map_err(|e| {
            let detail = match e {
                crate::protocol::ParamError::BadSchema(detail) => detail,
                other => other.to_string(),
            };
            Failure::new(
                FailureKind::InvalidInput,
                format!("the pause's input schema is not valid JSON Schema: {detail}"),
            )
        })?;
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let input = pause_input(timeout.as_secs(), &schema);
        if let Some(answer) = self.replayed(seq, PAUSE_CALL, &input) {
            self.stats.replayed.fetch_add(1, Ordering::Relaxed);
            return Ok(PauseAnswer::Input(answer));
        }
        let now = self.control().now();
        let deadline = now.saturating_add(i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX));
        self.record_call(
            seq,
            PAUSE_CALL,
            &input,
            RunState::Paused,
            None,
            Some(deadline),
        )
        .await?;
        self.paused.store(true, Ordering::SeqCst);
        self.log(
            None,
            LogLevel::Info,
            &format!(
                "paused to wait for input (for up to {}); resume with `host flow-run resume {} --input JSON`",
                humantime::format_duration(timeout),
                self.id
            ),
        );
        Ok(PauseAnswer::Suspend)
    }

    /// `create-artifact` from the flow (`task` none) or one of its tasks.
    pub(super) async fn create_artifact(
        self: Arc<Self>,
        task: Option<TaskRunId>,
        mut artifact: NewArtifact,
    ) -> Result<String, Failure> {
        if self.executor.is_remote() {
            return Err(Failure::new(
                FailureKind::Failed,
                "artifacts are not available on a remote host (host run --pool) yet; run this deployment on a server's own pool",
            ));
        }
        // Secrets are redacted before anything else sees the data, in every
        // form the guest may have written them (JSON-escaped in a table).
        artifact.data = self.secrets.redact(&artifact.data).into_owned();
        artifact.description = artifact
            .description
            .map(|d| self.secrets.redact(&d).into_owned());
        let data = artifact
            .validate()
            .map_err(|e| Failure::new(FailureKind::InvalidInput, e.to_string()))?;
        // A flow's artifact is a recorded call, so a retried or resumed run
        // does not leave it (and a version of its key) again. A task's is
        // covered by the task's own record.
        let call = match task {
            Some(_) => None,
            None => {
                let seq = self.seq.fetch_add(1, Ordering::SeqCst);
                let input = json!({
                    "kind": artifact.kind.as_str(),
                    "key": artifact.key,
                    "data_sha256": input_sha256(&artifact.data),
                })
                .to_string();
                if let Some(id) = self.replayed(seq, ARTIFACT_CALL, &input) {
                    self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                    return Ok(serde_json::from_str(&id).unwrap_or(id));
                }
                Some((seq, input))
            }
        };
        let run = self.clone();
        let id = tokio::task::spawn_blocking(move || run.store_artifact(task, artifact, data))
            .await
            .map_err(|e| crashed(format!("storing an artifact: {e}")))??;
        if let Some((seq, input)) = call {
            let output = Value::String(id.clone()).to_string();
            self.record_call(
                seq,
                ARTIFACT_CALL,
                &input,
                RunState::Completed,
                Some(output),
                None,
            )
            .await?;
        }
        Ok(id)
    }

    /// Numbers a keyed artifact after the newest version of its key. Blocks.
    fn store_artifact(
        &self,
        task: Option<TaskRunId>,
        artifact: NewArtifact,
        data: Value,
    ) -> Result<String, Failure> {
        // One at a time in this process, so two artifacts of a key made at
        // once do not take the same version.
        static NUMBERING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _numbering = NUMBERING.lock().unwrap_or_else(|p| p.into_inner());
        let control = self.control();
        // And one at a time across servers sharing PostgreSQL (a no-op on
        // SQLite), held until the artifact is committed below.
        let _across_servers = control.store().lock_admission().map_err(crashed)?;
        let version = match &artifact.key {
            None => 1,
            Some(key) => {
                let rows = control
                    .store()
                    .objects(ObjectKind::Artifact)
                    .map_err(crashed)?;
                rows.iter()
                    .filter_map(|row| serde_json::from_str::<Artifact>(&row.body).ok())
                    .filter(|a| a.key.as_deref() == Some(key))
                    .map(|a| a.version)
                    .max()
                    .unwrap_or(0)
                    + 1
            }
        };
        let id = uuid::Uuid::now_v7().to_string();
        let now = control.now();
        let stored = Artifact {
            id: id.clone(),
            key: artifact.key,
            version,
            kind: artifact.kind,
            description: artifact.description,
            data,
            flow_run: self.id.to_string(),
            task_run: task.map(|t| t.to_string()),
            created_at: crate::clock::format_rfc3339(now),
        };
        let body = serde_json::to_string(&stored).map_err(crashed)?;
        let ticket = control.record(
            vec![Write::PutObject {
                kind: ObjectKind::Artifact,
                name: id.clone(),
                body,
                at: now,
            }],
            Durability::Committed,
        );
        if let Some(ticket) = ticket {
            ticket.wait_blocking().map_err(crashed)?;
        }
        Ok(id)
    }

    /// `run-deployment`: starts the child once (the start is a recorded
    /// call holding its id, replayed on a retry or resume), then, with
    /// `wait`, follows it to its end.
    pub(super) async fn run_deployment(
        self: Arc<Self>,
        name: String,
        params: String,
        wait: bool,
    ) -> Result<String, Failure> {
        if self.executor.is_remote() {
            return Err(Failure::new(
                FailureKind::Failed,
                "run-deployment is not available on a remote host (host run --pool) yet; run this deployment on a server's own pool",
            ));
        }
        let Some(dispatcher) = self.executor.dispatcher.get().cloned() else {
            return Err(Failure::new(
                FailureKind::Failed,
                "run-deployment needs a server (its run goes to the deployment's pool): run this flow on `host server start`, e.g. from a deployment",
            ));
        };
        let params: Value = serde_json::from_str(&params)
            .map_err(|e| Failure::new(FailureKind::InvalidInput, e.to_string()))?;
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let input = json!({ "deployment": name, "params": params }).to_string();
        let child = match self.replayed(seq, RUN_DEPLOYMENT_CALL, &input) {
            Some(recorded) => {
                self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                serde_json::from_str::<String>(&recorded)
                    .ok()
                    .and_then(|id| id.parse::<FlowRunId>().ok())
                    .ok_or_else(|| crashed(format!("the record of call #{seq} holds no run id")))?
            }
            None => {
                let dispatched = dispatcher
                    .run_deployment(&name, Some(params), Vec::new())
                    .await
                    .map_err(|e| {
                        let kind = match e {
                            DispatchError::UnknownDeployment(_)
                            | DispatchError::InvalidParams(_)
                            | DispatchError::ParamsNotObject => FailureKind::InvalidInput,
                            _ => FailureKind::Failed,
                        };
                        Failure::new(kind, format!("run-deployment '{name}': {e}"))
                    })?;
                let output = Value::String(dispatched.id.to_string()).to_string();
                self.record_call(
                    seq,
                    RUN_DEPLOYMENT_CALL,
                    &input,
                    RunState::Completed,
                    Some(output),
                    None,
                )
                .await?;
                self.log(
                    None,
                    LogLevel::Info,
                    &format!("started run {} of deployment '{name}'", dispatched.id),
                );
                dispatched.id
            }
        };
        if !wait {
            return Ok(Value::String(child.to_string()).to_string());
        }
        loop {
            let store = self.control().store().clone();
            let row = tokio::task::spawn_blocking(move || store.flow_run(child))
                .await
                .map_err(|e| crashed(format!("reading run {child}: {e}")))?
                .map_err(|e| crashed(format!("reading run {child}: {e}")))?;
            if row.state.is_terminal() {
                if row.state.is_success() {
                    return Ok(row.result.unwrap_or_else(|| "null".into()));
                }
                return Err(Failure::new(
                    FailureKind::Failed,
                    format!(
                        "run {child} of deployment '{name}' ended {}: {}",
                        row.state,
                        row.message.unwrap_or_default()
                    ),
                ));
            }
            // Runs of any process end in the store: follow it, as the API's events do.
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    return Err(Failure::new(FailureKind::Cancelled, "the run was cancelled"));
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Ends an attempt that paused: the run is `Paused` and held by nobody.
    pub(super) async fn suspend(
        &self,
        from: RunState,
        started: Instant,
    ) -> Result<super::FlowRunOutcome, super::WorkerError> {
        let control = self.control();
        let mut change = StateChange::new(self.id.0, from, RunState::Paused, control.now());
        change.message = Some(format!(
            "waiting for input; resume with `host flow-run resume {} --input JSON`",
            self.id
        ));
        change.fuel_used = Some(self.stats.fuel.load(Ordering::Relaxed));
        change.peak_memory = Some(self.stats.peak_memory.load(Ordering::Relaxed));
        self.executor
            .committed(control.change_flow_run(change, Vec::new(), Durability::Committed)?)
            .await?;
        let summary = self.summary(started.elapsed());
        send(
            &self.events,
            super::RunEvent::FlowFinished {
                id: self.id,
                state: RunState::Paused,
                summary: summary.clone(),
            },
        );
        Ok(super::FlowRunOutcome {
            id: self.id,
            state: RunState::Paused,
            result: Err(Failure::new(
                FailureKind::Failed,
                format!(
                    "paused, waiting for input; resume with `host flow-run resume {} --input JSON`",
                    self.id
                ),
            )),
            summary,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_read_tells_unset_from_null() {
        assert_eq!(decode_read(&encode_read(None)), None);
        assert_eq!(
            decode_read(&encode_read(Some(&Value::Null))).as_deref(),
            Some("null")
        );
        assert_eq!(
            decode_read(&encode_read(Some(&json!({"a": [1]})))).as_deref(),
            Some(r#"{"a":[1]}"#)
        );
    }
}
