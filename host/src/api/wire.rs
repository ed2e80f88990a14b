//! The API's replies as types: the handlers build them, the CLI reads them
//! (over HTTP or in-process) with the same structs, so a renamed field fails
//! to compile or to parse instead of printing a blank column.
//!
//! Serde only: `schema.rs` describes each one to the OpenAPI document, and
//! `tests/tests/all/api.rs` validates real replies against those descriptions.
//! Times are microseconds since the Unix epoch.

use crate::model::{
    FailureKind, FlowRunId, LogLevel, Manifest, RunState, TaskRunId, TimestampMicros,
};
use crate::store::{FlowRunRow, LogRow, TaskRunRow};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /api/components`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Uploaded {
    pub digest: String,
    pub size_bytes: u64,
    pub flows: Vec<String>,
    /// False when the same bytes were uploaded before.
    pub created: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentSummary {
    pub digest: String,
    pub size_bytes: u64,
    pub flows: Vec<String>,
    pub created_at: i64,
}

/// `GET /api/components`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentList {
    pub components: Vec<ComponentSummary>,
}

/// `GET /api/components/{digest}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentDetail {
    pub digest: String,
    pub size_bytes: u64,
    pub created_at: i64,
    pub manifest: Manifest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowSummary {
    pub name: String,
    pub component: String,
    pub description: String,
    pub params_schema: Option<Value>,
}

/// `GET /api/flows`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowList {
    pub flows: Vec<FlowSummary>,
}

/// Starting, retrying, resuming or cancelling a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunAction {
    pub flow_run_id: String,
    pub state: RunState,
}

/// A flow run as the API shows it: the store's row without what only the
/// server may see (the secrets it may read). Fields added since a client's
/// version default, so an older server's reply still reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowRun {
    pub id: FlowRunId,
    pub parent_flow_run: Option<FlowRunId>,
    pub component: String,
    pub flow_name: String,
    /// The parameters as JSON text.
    pub params: String,
    pub state: RunState,
    pub message: Option<String>,
    pub failure_kind: Option<FailureKind>,
    /// The result as JSON text, once Completed.
    pub result: Option<String>,
    pub attempt: u32,
    pub host: Option<String>,
    pub created_at: TimestampMicros,
    pub started_at: Option<TimestampMicros>,
    pub ended_at: Option<TimestampMicros>,
    pub fuel_used: u64,
    pub peak_memory: u64,
    #[serde(default)]
    pub deployment: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub scheduled_at: Option<TimestampMicros>,
    #[serde(default)]
    pub work_pool: Option<String>,
    #[serde(default)]
    pub work_queue: Option<String>,
    #[serde(default)]
    pub lease_holder: Option<String>,
    #[serde(default)]
    pub lease_epoch: u64,
    #[serde(default)]
    pub lease_expires_at: Option<TimestampMicros>,
    #[serde(default)]
    pub deployment_version: Option<u32>,
}

impl From<FlowRunRow> for FlowRun {
    fn from(row: FlowRunRow) -> FlowRun {
        // Named field by field (no `..`): a column added to the row must be
        // placed here, or left off the wire, on purpose.
        let FlowRunRow {
            id,
            parent_flow_run,
            component,
            flow_name,
            params,
            state,
            message,
            failure_kind,
            result,
            attempt,
            host,
            created_at,
            started_at,
            ended_at,
            fuel_used,
            peak_memory,
            deployment,
            tags,
            scheduled_at,
            work_pool,
            work_queue,
            secret_grants: _,
            lease_holder,
            lease_epoch,
            lease_expires_at,
            deployment_version,
        } = row;
        FlowRun {
            id,
            parent_flow_run,
            component,
            flow_name,
            params,
            state,
            message,
            failure_kind,
            result,
            attempt,
            host,
            created_at,
            started_at,
            ended_at,
            fuel_used,
            peak_memory,
            deployment,
            tags,
            scheduled_at,
            work_pool,
            work_queue,
            lease_holder,
            lease_epoch,
            lease_expires_at,
            deployment_version,
        }
    }
}

/// A task run as the API shows it: the store's row without the hash of its
/// unredacted input (from which a short secret could be guessed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRun {
    pub id: TaskRunId,
    pub flow_run: FlowRunId,
    pub call_seq: u64,
    pub task_name: String,
    /// The input as JSON text, secrets redacted.
    pub input: String,
    pub output: Option<String>,
    pub state: RunState,
    pub failure_kind: Option<FailureKind>,
    pub message: Option<String>,
    pub attempts: u32,
    pub fuel_used: u64,
    pub peak_memory: u64,
    pub created_at: TimestampMicros,
    pub started_at: Option<TimestampMicros>,
    pub ended_at: Option<TimestampMicros>,
    pub next_attempt_at: Option<TimestampMicros>,
    pub cached_from: Option<TaskRunId>,
    pub host: Option<String>,
}

impl From<TaskRunRow> for TaskRun {
    fn from(row: TaskRunRow) -> TaskRun {
        let TaskRunRow {
            id,
            flow_run,
            call_seq,
            task_name,
            input,
            output,
            state,
            failure_kind,
            message,
            attempts,
            fuel_used,
            peak_memory,
            created_at,
            started_at,
            ended_at,
            next_attempt_at,
            cached_from,
            host,
            input_sha256: _,
        } = row;
        TaskRun {
            id,
            flow_run,
            call_seq,
            task_name,
            input,
            output,
            state,
            failure_kind,
            message,
            attempts,
            fuel_used,
            peak_memory,
            created_at,
            started_at,
            ended_at,
            next_attempt_at,
            cached_from,
            host,
        }
    }
}

/// One line of a run's log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    /// Grows with every line: pass the last one seen as `after`.
    pub id: i64,
    pub task_run: Option<TaskRunId>,
    pub at: TimestampMicros,
    pub level: LogLevel,
    pub message: String,
    /// The task that wrote it, if a task did.
    #[serde(default)]
    pub task_name: Option<String>,
}

impl From<LogRow> for LogLine {
    fn from(row: LogRow) -> LogLine {
        let LogRow {
            id,
            task_run,
            at,
            level,
            message,
            task_name,
        } = row;
        LogLine {
            id,
            task_run,
            at,
            level,
            message,
            task_name,
        }
    }
}

/// `GET /api/flow-runs`: a page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowRunList {
    pub flow_runs: Vec<FlowRun>,
    pub next_offset: Option<usize>,
    pub next_cursor: Option<String>,
}

/// One state a run went through.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateEntry {
    pub at: i64,
    pub state: RunState,
    pub message: Option<String>,
}

/// `GET /api/flow-runs/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowRunDetail {
    pub flow_run: FlowRun,
    pub task_runs: Vec<TaskRun>,
    pub states: Vec<StateEntry>,
}

/// `GET /api/flow-runs/{id}/task-runs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRunList {
    pub task_runs: Vec<TaskRun>,
}

/// One attempt of a task run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: u32,
    pub started_at: i64,
    pub ended_at: i64,
    pub fuel_used: u64,
    pub peak_memory: u64,
    pub failure_kind: Option<FailureKind>,
    pub message: Option<String>,
}

/// `GET /api/task-runs/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRunDetail {
    pub task_run: TaskRun,
    pub attempts: Vec<Attempt>,
}

/// `GET /api/flow-runs/{id}/logs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogList {
    pub logs: Vec<LogLine>,
}

/// `GET /api/health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// `DELETE` of a named thing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deleted {
    pub deleted: String,
}

/// `GET /api/work-pools`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkPoolList {
    pub work_pools: Vec<crate::model::WorkPool>,
}

/// `GET /api/work-pools/{name}/queues`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkQueueList {
    pub work_queues: Vec<crate::model::WorkQueue>,
}

/// A secret as listed or saved: never its value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretName {
    pub name: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// `GET /api/secrets`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretList {
    pub secrets: Vec<SecretName>,
}

/// `GET /api/variables`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariableList {
    pub variables: Vec<crate::model::Variable>,
}

/// A deployment with when it was made and last changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentInfo {
    pub deployment: crate::model::Deployment,
    pub created_at: i64,
    pub updated_at: i64,
}

/// `GET /api/deployments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentList {
    pub deployments: Vec<DeploymentInfo>,
}

/// `PUT`/`POST` of a deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentSaved {
    pub deployment: crate::model::Deployment,
    pub created: bool,
    /// Whether this made a new version.
    pub changed: bool,
    /// Things that will fail later, e.g. a granted secret that is not set yet.
    pub warnings: Vec<String>,
}

/// `GET /api/deployments/{name}/versions`, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentHistory {
    pub versions: Vec<crate::model::DeploymentVersion>,
}

/// An automation (header values shown as `***`) with when it was made and
/// last changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutomationInfo {
    pub automation: crate::model::Automation,
    pub created_at: i64,
    pub updated_at: i64,
}

/// `GET /api/automations`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutomationList {
    pub automations: Vec<AutomationInfo>,
}

/// One webhook delivery; times in RFC 3339.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    pub id: i64,
    pub flow_run_id: String,
    pub event: String,
    /// pending, delivered or failed (given up).
    pub status: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub response_code: Option<u16>,
    pub created_at: String,
    pub next_attempt_at: Option<String>,
    pub delivered_at: Option<String>,
    /// The body sent.
    pub payload: String,
}

/// `GET /api/automations/{name}/deliveries`, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryList {
    pub deliveries: Vec<Delivery>,
}

/// A report's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Accepted {
    pub accepted: bool,
}

/// A host as last heard from, and whether that was recent enough.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostInfo {
    #[serde(flatten)]
    pub host: crate::dispatch::remote::HostRecord,
    /// Heard from within two lease periods.
    pub online: bool,
}

/// `GET /api/hosts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostList {
    pub hosts: Vec<HostInfo>,
}

/// `GET /api/artifacts`, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactList {
    pub artifacts: Vec<crate::model::artifact::Artifact>,
}

/// `GET /api/artifacts/{key}`: the newest version and all of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactVersions {
    pub artifact: crate::model::artifact::Artifact,
    pub versions: Vec<crate::model::artifact::Artifact>,
}

/// `GET /api/ready`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    pub status: String,
    pub database: String,
}

/// A `state` event of `GET /api/flow-runs/{id}/events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateEvent {
    pub state: RunState,
    pub message: Option<String>,
}
