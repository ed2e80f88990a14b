//! The write vocabulary: every change a backend records, as data. A
//! `Vec<Write>` is one unit, applied atomically or not at all.

use super::{DeliveryStatus, FlowRunRow, ObjectKind, TaskRunRow};
use crate::model::{
    ComponentDigest, FailureKind, FlowRunId, LogLevel, RunState, TaskRunId, TimestampMicros,
};

/// One change to record. A `Vec<Write>` is applied atomically.
#[derive(Debug, Clone)]
pub enum Write {
    Component {
        digest: ComponentDigest,
        size_bytes: u64,
        manifest: String,
        at: TimestampMicros,
        /// The bytes, for a backend that keeps them for every server
        /// (PostgreSQL); SQLite's are files beside it and ignore this.
        wasm: Option<Wasm>,
    },
    NewFlowRun(NewFlowRun),
    FlowRunState(StateChange),
    NewTaskRun(NewTaskRun),
    TaskRunState(StateChange),
    TaskAttempt(AttemptRecord),
    Logs(Vec<LogRecord>),
    /// Creates or replaces a named object (deployment, pool, queue, variable, secret).
    PutObject {
        kind: ObjectKind,
        name: String,
        body: String,
        at: TimestampMicros,
    },
    /// Saves version `version` of a deployment's definition. Two saves of
    /// one version cannot both succeed: the second fails its unit with
    /// `VersionTaken`, so two deploys at once never share a number.
    DeploymentVersion {
        deployment: String,
        version: u32,
        body: String,
        created_by: String,
        note: Option<String>,
        at: TimestampMicros,
    },
    /// Deletes a named object; `NotFound` if there is none.
    DeleteObject {
        kind: ObjectKind,
        name: String,
    },
    /// Puts a run (back) in a pool's queue, due at `scheduled_at`: a retry
    /// waits there like any other run when it may not start at once.
    PlaceRun {
        id: FlowRunId,
        work_pool: String,
        work_queue: String,
        scheduled_at: TimestampMicros,
    },
    /// Asks whoever runs a flow run to stop it (not a state change: the runner makes that).
    RequestCancel {
        id: FlowRunId,
        at: TimestampMicros,
    },
    /// Gives a run to `holder` until `expires_at`, with the next epoch.
    TakeLease {
        id: FlowRunId,
        holder: String,
        expires_at: TimestampMicros,
    },
    /// Renews every unfinished run `holder` holds (an executor's heartbeat).
    RenewLeases {
        holder: String,
        expires_at: TimestampMicros,
    },
    /// Fails the unit with `LeaseLost` unless `holder` holds the run at
    /// `epoch` and the run has not ended (a report from a host that lost it).
    CheckLease {
        id: FlowRunId,
        holder: String,
        epoch: u64,
    },
    /// A flow run as another store has it (a remote host's report): created,
    /// or its progress copied over. A run that ended here is never moved.
    UpsertFlowRun(Box<FlowRunRow>),
    /// A task run as another store has it; created or updated.
    UpsertTaskRun(Box<TaskRunRow>),
    /// Log lines from another store, each with its origin there: a line
    /// sent twice is stored once.
    ImportLogs(Vec<(String, LogRecord)>),
    /// Deletes a flow run with everything under it (a remote host's local
    /// copy of a run, before it takes the run again).
    ForgetFlowRun(FlowRunId),
    /// Pushes the expiry of these runs' leases to at least `until` (a
    /// server that was down gives its hosts a lease's time to reach it again).
    ExtendLeases {
        ids: Vec<FlowRunId>,
        until: TimestampMicros,
    },
    /// Renews one run, if `holder` still holds it at `epoch`; `LeaseLost` if not.
    RenewLease {
        id: FlowRunId,
        holder: String,
        epoch: u64,
        expires_at: TimestampMicros,
    },
    /// Records that a schedule made `flow_run` for `at`; goes in one unit
    /// with the run's creation, which fails whole (`SlotTaken`) when the
    /// slot was made already.
    ScheduleSlot {
        deployment: String,
        schedule_key: String,
        at: TimestampMicros,
        flow_run: FlowRunId,
    },
    /// Queues a webhook delivery; nothing when that automation already has
    /// one for this run and event.
    EnqueueDelivery {
        automation: String,
        flow_run: FlowRunId,
        event: String,
        payload: String,
        at: TimestampMicros,
    },
    /// Records one delivery attempt: `delivered`, or `pending` again until
    /// `next_attempt_at`, or `failed` for good.
    DeliveryAttempt {
        id: i64,
        status: DeliveryStatus,
        next_attempt_at: TimestampMicros,
        error: Option<String>,
        response_code: Option<u16>,
        at: TimestampMicros,
    },
    /// Takes `slots` of every limit in `limits` for `flow_run`, all or none:
    /// fails the unit with `NoSlot` when one of them has too few free. A
    /// concurrency limit's slots are held (under `lease`) until released
    /// or until the run ends or its lease lapses; a rate limit's are spent.
    TakeSlots {
        lease: uuid::Uuid,
        flow_run: FlowRunId,
        limits: Vec<LimitAsk>,
        slots: u32,
        now: TimestampMicros,
    },
    /// Gives back what one `TakeSlots` took (nothing if it is gone already).
    ReleaseSlots {
        lease: uuid::Uuid,
    },
    /// Deletes the not-yet-started runs, due after `after`, that schedules
    /// of `deployment` other than `keep` made ahead (edited, deleted or
    /// inactive schedules), with their slots.
    DropScheduledRuns {
        deployment: String,
        keep: Vec<String>,
        after: TimestampMicros,
    },
}

/// One limit as a `TakeSlots` sees it: its name and its definition (read
/// by the caller just before, so the unit needs no JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct LimitAsk {
    pub name: String,
    /// Slots it has in all.
    pub limit: u32,
    /// A rate limit's slots come back at this rate instead of on release.
    pub decay_per_second: Option<f64>,
}

impl LimitAsk {
    /// For a rate limit: how long one slot takes to come back, in µs.
    pub(crate) fn interval_us(&self) -> Option<i64> {
        self.decay_per_second
            .filter(|rate| *rate > 0.0)
            .map(|rate| ((1e6 / rate).ceil() as i64).max(1))
    }

    /// A rate limit as a generic cell rate: `tat` is when the bucket would
    /// be empty. Taking `slots` moves it on by as many intervals, unless
    /// that would pass `limit` intervals from now: then the answer is how
    /// long to wait before asking again.
    pub(crate) fn next_mark(
        &self,
        tat: Option<TimestampMicros>,
        slots: u32,
        now: TimestampMicros,
    ) -> Result<TimestampMicros, i64> {
        let interval = self.interval_us().unwrap_or(1);
        let start = tat.unwrap_or(now).max(now);
        let next = start.saturating_add(interval.saturating_mul(i64::from(slots)));
        let room = interval.saturating_mul(i64::from(self.limit));
        let over = next.saturating_sub(now).saturating_sub(room);
        if over > 0 { Err(over) } else { Ok(next) }
    }
}

/// Who holds a run and until when.
#[derive(Debug, Clone)]
pub struct Lease {
    pub holder: String,
    pub expires_at: TimestampMicros,
}

#[derive(Debug, Clone)]
pub struct NewFlowRun {
    pub id: FlowRunId,
    pub parent_flow_run: Option<FlowRunId>,
    pub component: ComponentDigest,
    pub flow_name: String,
    pub params: String,
    pub state: RunState,
    pub attempt: u32,
    pub host: String,
    pub at: TimestampMicros,
    /// The deployment that created it, if any.
    pub deployment: Option<String>,
    pub tags: Vec<String>,
    /// When a scheduled run is due.
    pub scheduled_at: Option<TimestampMicros>,
    /// The pool whose executors may run it (runs started in-process have none).
    pub work_pool: Option<String>,
    /// Its queue in that pool.
    pub work_queue: Option<String>,
    /// Names of the secrets it may read, fixed when it is created.
    pub secret_grants: Vec<String>,
    /// Held from creation (a run that starts at once); subflows have none,
    /// they live and die with their parent's.
    pub lease: Option<Lease>,
    /// The version of its deployment that made it.
    pub deployment_version: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct NewTaskRun {
    pub id: TaskRunId,
    pub flow_run: FlowRunId,
    pub call_seq: u64,
    pub task_name: String,
    /// Recorded redacted (secrets replaced), so replay compares this instead.
    pub input: String,
    /// sha256 (hex) of the input before redaction.
    pub input_sha256: String,
    pub state: RunState,
    pub cache_key: Option<String>,
    /// For a cache hit: the run whose output is reused, and that output.
    pub cached_from: Option<(TaskRunId, String)>,
    pub host: String,
    pub at: TimestampMicros,
}

/// A compare-and-set state change with what came with it.
#[derive(Debug, Clone)]
pub struct StateChange {
    pub id: uuid::Uuid,
    pub from: RunState,
    pub to: RunState,
    pub at: TimestampMicros,
    pub message: Option<String>,
    pub failure_kind: Option<FailureKind>,
    /// The result (flow) or output (task), on completion.
    pub output: Option<String>,
    pub attempts: Option<u32>,
    pub fuel_used: Option<u64>,
    pub peak_memory: Option<u64>,
    pub next_attempt_at: Option<TimestampMicros>,
}

impl StateChange {
    pub fn new(id: uuid::Uuid, from: RunState, to: RunState, at: TimestampMicros) -> Self {
        Self {
            id,
            from,
            to,
            at,
            message: None,
            failure_kind: None,
            output: None,
            attempts: None,
            fuel_used: None,
            peak_memory: None,
            next_attempt_at: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub task_run: TaskRunId,
    pub attempt: u32,
    pub started_at: TimestampMicros,
    pub ended_at: TimestampMicros,
    pub fuel_used: u64,
    pub peak_memory: u64,
    pub failure: Option<(FailureKind, String)>,
}

#[derive(Debug, Clone)]
pub struct LogRecord {
    pub flow_run: FlowRunId,
    pub task_run: Option<TaskRunId>,
    pub at: TimestampMicros,
    pub level: LogLevel,
    pub message: String,
}

/// A component's bytes in a [`Write`]; shown by size only.
#[derive(Clone)]
pub struct Wasm(pub bytes::Bytes);

impl std::fmt::Debug for Wasm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Wasm({} bytes)", self.0.len())
    }
}

/// What a committed unit changed, as followers care: a flow run's state or
/// log moved, or a run now waits to be claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Change {
    pub run: FlowRunId,
    /// The run waits in a pool's queue (made, placed or put back), so
    /// claimers should look.
    pub waiting: bool,
}

impl Change {
    /// The changes `writes` make, once each.
    pub fn of(writes: &[Write]) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut add = |run: FlowRunId, waiting: bool| {
            let change = Change { run, waiting };
            if !changes.contains(&change) {
                changes.push(change);
            }
        };
        for write in writes {
            match write {
                Write::NewFlowRun(run) => add(run.id, run.state == RunState::Scheduled),
                Write::FlowRunState(change) => add(
                    FlowRunId(change.id),
                    matches!(change.to, RunState::Scheduled | RunState::Late),
                ),
                Write::PlaceRun { id, .. } => add(*id, true),
                Write::RequestCancel { id, .. } => add(*id, false),
                Write::NewTaskRun(task) => add(task.flow_run, false),
                Write::Logs(lines) => {
                    for line in lines {
                        add(line.flow_run, false);
                    }
                }
                Write::ImportLogs(lines) => {
                    for (_, line) in lines {
                        add(line.flow_run, false);
                    }
                }
                Write::UpsertFlowRun(run) => add(run.id, false),
                Write::UpsertTaskRun(task) => add(task.flow_run, false),
                _ => {}
            }
        }
        changes
    }

    /// A change to no run in particular that wakes every follower (after
    /// changes may have been missed).
    pub fn anything() -> Change {
        Change {
            run: FlowRunId(uuid::Uuid::nil()),
            waiting: true,
        }
    }

    /// Whether a follower of `run` should look again.
    pub fn concerns(&self, run: FlowRunId) -> bool {
        self.run == run || self.run.0.is_nil()
    }

    /// As text, for a PostgreSQL notification: `w:` (waiting) or `r:` and the id.
    pub(crate) fn to_text(self) -> String {
        format!("{}:{}", if self.waiting { "w" } else { "r" }, self.run)
    }

    pub(crate) fn from_text(text: &str) -> Option<Change> {
        let (kind, id) = text.split_once(':')?;
        Some(Change {
            run: id.parse().ok()?,
            waiting: kind == "w",
        })
    }
}
