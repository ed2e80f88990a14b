//! The API's requests and replies as types: the handlers read and build
//! them, the CLI sends and reads them (over HTTP or in-process) with the
//! same structs, and the OpenAPI document is derived from them
//! (`utoipa::ToSchema`), so a renamed or added field changes all three at
//! once. Fields whose type lives below the API (`model`, `store`) name their
//! document shape with `#[schema(value_type = ...)]` (`schema.rs`).
//! Times are microseconds since the Unix epoch.

use super::schema;
use crate::model::{
    FailureKind, FlowRunId, LogLevel, Manifest, RunState, TaskRunId, TimestampMicros,
};
use crate::store::{FlowRunRow, LogRow, TaskRunRow};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// `POST /api/components`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Uploaded {
    pub digest: String,
    pub size_bytes: u64,
    pub flows: Vec<String>,
    /// False when the same bytes were uploaded before.
    pub created: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ComponentSummary {
    pub digest: String,
    pub size_bytes: u64,
    pub flows: Vec<String>,
    pub created_at: i64,
}

/// `GET /api/components`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ComponentList {
    pub components: Vec<ComponentSummary>,
}

/// `GET /api/components/{digest}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ComponentDetail {
    pub digest: String,
    pub size_bytes: u64,
    pub created_at: i64,
    /// What the component's `describe()` returned: flows, tasks, schemas, policies.
    #[schema(value_type = Value)]
    pub manifest: Manifest,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FlowSummary {
    pub name: String,
    pub component: String,
    pub description: String,
    pub params_schema: Option<Value>,
}

/// `GET /api/flows`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FlowList {
    pub flows: Vec<FlowSummary>,
}

/// Starting, retrying, resuming or cancelling a run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunAction {
    pub flow_run_id: String,
    #[schema(value_type = String)]
    pub state: RunState,
}

/// The reply to starting a run (the same fields as `RunAction`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunStarted {
    pub flow_run_id: String,
    /// `Pending` when an executor takes it now, `Scheduled` when it waits.
    #[schema(value_type = String)]
    pub state: RunState,
}

/// A flow run as the API shows it: the store's row without what only the
/// server may see (the secrets it may read). Fields added since a client's
/// version default, so an older server's reply still reads.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FlowRun {
    #[schema(value_type = String)]
    pub id: FlowRunId,
    #[schema(value_type = Option<String>)]
    pub parent_flow_run: Option<FlowRunId>,
    pub component: String,
    pub flow_name: String,
    /// The parameters as JSON text.
    pub params: String,
    #[schema(value_type = String)]
    pub state: RunState,
    pub message: Option<String>,
    #[schema(value_type = Option<String>)]
    pub failure_kind: Option<FailureKind>,
    /// The result as JSON text, once Completed.
    pub result: Option<String>,
    pub attempt: u32,
    pub host: Option<String>,
    #[schema(value_type = i64)]
    pub created_at: TimestampMicros,
    #[schema(value_type = Option<i64>)]
    pub started_at: Option<TimestampMicros>,
    #[schema(value_type = Option<i64>)]
    pub ended_at: Option<TimestampMicros>,
    pub fuel_used: u64,
    pub peak_memory: u64,
    #[serde(default)]
    pub deployment: Option<String>,
    // The server always sends it; the default is for older servers' replies.
    #[serde(default)]
    #[schema(required = true)]
    pub tags: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Option<i64>)]
    pub scheduled_at: Option<TimestampMicros>,
    #[serde(default)]
    pub work_pool: Option<String>,
    #[serde(default)]
    pub work_queue: Option<String>,
    /// Who holds the run: the executor or remote host that claimed it.
    #[serde(default)]
    pub lease_holder: Option<String>,
    /// Grows with every claim; a write from an older claim is refused.
    #[serde(default)]
    #[schema(required = true)]
    pub lease_epoch: u64,
    /// When the lease runs out unless its holder renews it (µs since the epoch).
    #[serde(default)]
    #[schema(value_type = Option<i64>)]
    pub lease_expires_at: Option<TimestampMicros>,
    /// The version of its deployment that made it.
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
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskRun {
    #[schema(value_type = String)]
    pub id: TaskRunId,
    #[schema(value_type = String)]
    pub flow_run: FlowRunId,
    pub call_seq: u64,
    pub task_name: String,
    /// The input as JSON text, secrets redacted.
    pub input: String,
    pub output: Option<String>,
    #[schema(value_type = String)]
    pub state: RunState,
    #[schema(value_type = Option<String>)]
    pub failure_kind: Option<FailureKind>,
    pub message: Option<String>,
    pub attempts: u32,
    pub fuel_used: u64,
    pub peak_memory: u64,
    #[schema(value_type = i64)]
    pub created_at: TimestampMicros,
    #[schema(value_type = Option<i64>)]
    pub started_at: Option<TimestampMicros>,
    #[schema(value_type = Option<i64>)]
    pub ended_at: Option<TimestampMicros>,
    #[schema(value_type = Option<i64>)]
    pub next_attempt_at: Option<TimestampMicros>,
    #[schema(value_type = Option<String>)]
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
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    /// Grows with every line: pass the last one seen as `after`.
    pub id: i64,
    #[schema(value_type = Option<String>)]
    pub task_run: Option<TaskRunId>,
    #[schema(value_type = i64)]
    pub at: TimestampMicros,
    /// trace, debug, info, warn or error.
    #[schema(value_type = String)]
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
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FlowRunList {
    pub flow_runs: Vec<FlowRun>,
    /// Pass as `offset` for the next page; absent on the last page (and
    /// when paging by cursor).
    pub next_offset: Option<usize>,
    /// Pass as `cursor` for the next page: same cost at any depth, and no
    /// run is skipped or repeated when new runs arrive between pages.
    pub next_cursor: Option<String>,
}

/// One state a run went through.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StateEntry {
    pub at: i64,
    #[schema(value_type = String)]
    pub state: RunState,
    pub message: Option<String>,
}

/// `GET /api/flow-runs/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FlowRunDetail {
    pub flow_run: FlowRun,
    pub task_runs: Vec<TaskRun>,
    /// Every state it went through, oldest first.
    pub states: Vec<StateEntry>,
}

/// `GET /api/flow-runs/{id}/task-runs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskRunList {
    pub task_runs: Vec<TaskRun>,
}

/// One attempt of a task run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    pub attempt: u32,
    pub started_at: i64,
    pub ended_at: i64,
    pub fuel_used: u64,
    pub peak_memory: u64,
    #[schema(value_type = Option<String>)]
    pub failure_kind: Option<FailureKind>,
    pub message: Option<String>,
}

/// `GET /api/task-runs/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskRunDetail {
    pub task_run: TaskRun,
    pub attempts: Vec<Attempt>,
}

/// `GET /api/flow-runs/{id}/logs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogList {
    pub logs: Vec<LogLine>,
}

/// `GET /api/health`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// `DELETE` of a named thing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    pub deleted: String,
}

/// `GET /api/work-pools`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkPoolList {
    #[schema(value_type = Vec<schema::WorkPool>)]
    pub work_pools: Vec<crate::model::WorkPool>,
}

/// `GET /api/work-pools/{name}/queues`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkQueueList {
    #[schema(value_type = Vec<schema::WorkQueue>)]
    pub work_queues: Vec<crate::model::WorkQueue>,
}

/// A secret as listed or saved: never its value.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretName {
    pub name: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// `GET /api/secrets`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretList {
    pub secrets: Vec<SecretName>,
}

/// `GET /api/variables`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VariableList {
    #[schema(value_type = Vec<schema::Variable>)]
    pub variables: Vec<crate::model::Variable>,
}

/// A deployment with when it was made and last changed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentInfo {
    #[schema(value_type = schema::Deployment)]
    pub deployment: crate::model::Deployment,
    pub created_at: i64,
    pub updated_at: i64,
}

/// `GET /api/deployments`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentList {
    pub deployments: Vec<DeploymentInfo>,
}

/// `PUT`/`POST` of a deployment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentSaved {
    #[schema(value_type = schema::Deployment)]
    pub deployment: crate::model::Deployment,
    pub created: bool,
    /// Whether this made a new version (false: the same definition was deployed again).
    pub changed: bool,
    /// Things that will fail later, e.g. a granted secret that is not set yet.
    pub warnings: Vec<String>,
}

/// `GET /api/deployments/{name}/versions`, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentHistory {
    /// Oldest first; the last is the current one.
    #[schema(value_type = Vec<schema::DeploymentVersion>)]
    pub versions: Vec<crate::model::DeploymentVersion>,
}

/// An automation (header values shown as `***`) with when it was made and
/// last changed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AutomationInfo {
    #[schema(value_type = schema::Automation)]
    pub automation: crate::model::Automation,
    pub created_at: i64,
    pub updated_at: i64,
}

/// `GET /api/automations`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AutomationList {
    pub automations: Vec<AutomationInfo>,
}

/// One webhook delivery; times in RFC 3339.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<Delivery>,
}

/// A report's answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostList {
    #[schema(value_type = Vec<schema::Host>)]
    pub hosts: Vec<HostInfo>,
}

/// `GET /api/artifacts`, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ArtifactList {
    #[schema(value_type = Vec<schema::Artifact>)]
    pub artifacts: Vec<crate::model::artifact::Artifact>,
}

/// `GET /api/artifacts/{key}`: the newest version and all of them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ArtifactVersions {
    #[schema(value_type = schema::Artifact)]
    pub artifact: crate::model::artifact::Artifact,
    #[schema(value_type = Vec<schema::Artifact>)]
    pub versions: Vec<crate::model::artifact::Artifact>,
}

/// `GET /api/ready`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// `ready`
    pub status: String,
    /// `ok`
    pub database: String,
}

/// A `state` event of `GET /api/flow-runs/{id}/events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateEvent {
    pub state: RunState,
    pub message: Option<String>,
}

// ---- request bodies: the handlers read these, the CLI sends them ----

/// The body of a request that starts a run (all of it optional: no body
/// runs with the flow's or deployment's defaults).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// Parameters, checked against the flow's JSON Schema.
    // Read as any JSON so that a non-object gets the dispatcher's own
    // `invalid_params` answer; the document says what it must be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<std::collections::BTreeMap<String, Value>>)]
    pub params: Option<Value>,
    /// Tags recorded on the run (filter with `?tag=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

/// The input that resumes a Paused run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeInput {
    /// Must match the JSON Schema the flow's `pause` asked for; absent or
    /// null resumes an interrupted run without input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
}

/// `POST /api/deployments/{name}/rollback`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// The version whose definition to restore.
    pub to: u32,
}

/// `PUT /api/secrets/{name}`'s body: the path names it.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretValue {
    /// At least 3 characters (`MIN_SECRET_CHARS`).
    #[schema(min_length = 3)]
    pub value: String,
}

/// `PUT /api/variables/{name}`'s body: the path names it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VariableValue {
    pub value: Value,
}
