//! The rows the store hands back, and the names it files things under.
//! Shared by every backend; what they look like on the wire is the API's business.

use crate::model::{
    FailureKind, FlowRunId, LogLevel, Manifest, RunState, TaskRunId, TimestampMicros,
};

#[derive(Debug, Clone, serde::Serialize)]
pub struct ComponentRow {
    pub digest: String,
    pub size_bytes: u64,
    pub manifest: Manifest,
    pub created_at: TimestampMicros,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PruneReport {
    pub flow_runs: u64,
    pub task_runs: u64,
    pub logs: u64,
    pub result_files: u64,
}

#[derive(Debug, Clone, Copy)]
pub enum StoreTable {
    FlowRuns,
    TaskRuns,
    Logs,
}

impl StoreTable {
    pub(crate) fn name(self) -> &'static str {
        match self {
            StoreTable::FlowRuns => "flow_runs",
            StoreTable::TaskRuns => "task_runs",
            StoreTable::Logs => "logs",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct FlowRunFilter {
    pub state: Option<RunState>,
    pub flow_name: Option<String>,
    pub deployment: Option<String>,
    /// Runs carrying this tag.
    pub tag: Option<String>,
    /// Created at or after / before.
    pub since: Option<TimestampMicros>,
    pub until: Option<TimestampMicros>,
    pub top_level_only: bool,
    pub limit: usize,
    pub offset: usize,
    /// Only runs listed after this one (a keyset page: the cost does not
    /// grow with the depth, as an offset's does).
    pub after: Option<RunCursor>,
}

/// A place in the list of runs (newest first, then by id): the last run of
/// a page. Clients see it as opaque text, `CREATED_US.ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunCursor {
    pub created: TimestampMicros,
    pub id: FlowRunId,
}

impl RunCursor {
    pub fn after(row: &FlowRunRow) -> RunCursor {
        RunCursor {
            created: row.created_at,
            id: row.id,
        }
    }
}

impl std::fmt::Display for RunCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.created, self.id)
    }
}

impl std::str::FromStr for RunCursor {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "cursor '{text}' is not one this server gave out: pass `next_cursor` from the previous page as it is"
            )
        };
        let (created, id) = text.split_once('.').ok_or_else(bad)?;
        Ok(RunCursor {
            created: created.parse().map_err(|_| bad())?,
            id: id.parse().map_err(|_| bad())?,
        })
    }
}

/// What kind of named object a row of `objects` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Deployment,
    WorkPool,
    WorkQueue,
    Variable,
    Secret,
    /// A remote host as it last said hello (name, pools, slots, runs in hand).
    Host,
    Automation,
    /// A report, table or link a run left (`model::artifact::Artifact`), by id.
    Artifact,
    /// A named concurrency or rate limit (`model::limits::ConcurrencyLimit`).
    ConcurrencyLimit,
}

impl ObjectKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Deployment => "deployment",
            ObjectKind::WorkPool => "work_pool",
            ObjectKind::WorkQueue => "work_queue",
            ObjectKind::Variable => "variable",
            ObjectKind::Secret => "secret",
            ObjectKind::Host => "host",
            ObjectKind::Automation => "automation",
            ObjectKind::Artifact => "artifact",
            ObjectKind::ConcurrencyLimit => "concurrency_limit",
        }
    }
    pub(crate) fn what(self) -> &'static str {
        match self {
            ObjectKind::Deployment => "deployment",
            ObjectKind::WorkPool => "work pool",
            ObjectKind::WorkQueue => "work queue",
            ObjectKind::Variable => "variable",
            ObjectKind::Secret => "secret",
            ObjectKind::Host => "host",
            ObjectKind::Automation => "automation",
            ObjectKind::Artifact => "artifact",
            ObjectKind::ConcurrencyLimit => "concurrency limit",
        }
    }
}

/// Where a webhook delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    /// Gave up after the last retry.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
}

/// One webhook delivery of the automations' outbox.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub id: i64,
    pub automation: String,
    pub flow_run: FlowRunId,
    pub event: String,
    pub payload: String,
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: TimestampMicros,
    pub last_error: Option<String>,
    pub response_code: Option<u16>,
    pub created_at: TimestampMicros,
    pub delivered_at: Option<TimestampMicros>,
}

/// One named object: its JSON body and when it was made and last changed.
#[derive(Debug, Clone)]
pub struct ObjectRow {
    pub name: String,
    pub body: String,
    pub created_at: TimestampMicros,
    pub updated_at: TimestampMicros,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FlowRunRow {
    pub id: FlowRunId,
    pub parent_flow_run: Option<FlowRunId>,
    pub component: String,
    pub flow_name: String,
    pub params: String,
    pub state: RunState,
    pub message: Option<String>,
    pub failure_kind: Option<FailureKind>,
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
    /// Names of the secrets it may read (fixed at creation).
    #[serde(skip)]
    pub secret_grants: Vec<String>,
    /// Who holds it (an executor in a server or a remote host), if anyone claimed it.
    #[serde(default)]
    pub lease_holder: Option<String>,
    /// Grows with every claim: a write from an older epoch is refused.
    #[serde(default)]
    pub lease_epoch: u64,
    #[serde(default)]
    pub lease_expires_at: Option<TimestampMicros>,
    /// The version of its deployment that made it.
    #[serde(default)]
    pub deployment_version: Option<u32>,
}

/// Slots of one limit that one acquisition holds.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotRow {
    pub lease: uuid::Uuid,
    pub name: String,
    pub slots: u32,
    pub flow_run: FlowRunId,
    pub taken_at: TimestampMicros,
}

/// One saved definition of a deployment (its body is the deployment's JSON).
#[derive(Debug, Clone)]
pub struct DeploymentVersionRow {
    pub deployment: String,
    pub version: u32,
    pub body: String,
    pub created_by: String,
    pub note: Option<String>,
    pub created_at: TimestampMicros,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TaskRunRow {
    pub id: TaskRunId,
    pub flow_run: FlowRunId,
    pub call_seq: u64,
    pub task_name: String,
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
    /// sha256 of the input before redaction, for replay. Never sent: from
    /// the hash of a known input shape a short secret could be guessed.
    #[serde(skip)]
    pub input_sha256: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LogRow {
    pub id: i64,
    pub task_run: Option<TaskRunId>,
    pub at: TimestampMicros,
    pub level: LogLevel,
    pub message: String,
    /// The task that wrote it, if a task did.
    #[serde(default)]
    pub task_name: Option<String>,
}
