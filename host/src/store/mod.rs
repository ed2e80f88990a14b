//! Recording: the only module that names rusqlite.
//!
//! SQLite in WAL mode. Writes are queued and committed in groups: many units
//! of work in one transaction, each in its own savepoint, so a failed
//! compare-and-set rolls back that unit alone. A caller that needs a write to
//! be durable before it goes on (a completed task's result) commits inline or
//! has the current committer do it, and awaits its [`Ticket`]; everything else
//! is committed by a flusher thread. Reads use their own connection.
//!
//! State columns are only written with compare-and-set (`WHERE state = ?`); the
//! decision whether a transition is allowed is `orchestrate`'s, made before the
//! write is queued.

mod files;
mod results;
mod schema;

pub use files::{ComponentFileError, ComponentFiles};
pub use results::{DEFAULT_RESULT_THRESHOLD, ResultFiles};

use crate::model::{
    ComponentDigest, FailureKind, FlowRunId, LogLevel, Manifest, RunState, TaskRunId,
    TimestampMicros,
};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "the run changed under us: expected state {expected}, it is not (another writer got there first)"
    )]
    Conflict { expected: RunState },
    #[error("no {what} with id {id}")]
    NotFound { what: &'static str, id: String },
    #[error("the database writer has stopped")]
    WriterGone,
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The writer does not hold the run's lease (any more): another holder
    /// took it, or it expired and the run was crashed.
    #[error("flow run {id} is not held by {holder} at epoch {epoch} (its lease was lost)")]
    LeaseLost {
        id: FlowRunId,
        holder: String,
        epoch: u64,
    },
    #[error(
        "deployment '{deployment}' has a run for schedule {schedule_key} at {at} µs already (another scheduler made it)"
    )]
    SlotTaken {
        deployment: String,
        schedule_key: String,
        at: TimestampMicros,
    },
}

/// One change to record. A `Vec<Write>` is applied atomically.
#[derive(Debug, Clone)]
pub enum Write {
    Component {
        digest: ComponentDigest,
        size_bytes: u64,
        manifest: String,
        at: TimestampMicros,
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
    /// Deletes the not-yet-started runs, due after `after`, that schedules
    /// of `deployment` other than `keep` made ahead (edited, deleted or
    /// inactive schedules), with their slots.
    DropScheduledRuns {
        deployment: String,
        keep: Vec<String>,
        after: TimestampMicros,
    },
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

/// How hard a commit tries to reach the disk (the profile setting `store.durability`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DiskSync {
    /// `synchronous=NORMAL`: every commit survives a process crash; a power
    /// loss may lose the commits since the WAL was last synced (the flusher
    /// checkpoints, which syncs it, about every second).
    #[default]
    Normal,
    /// `synchronous=FULL`: the WAL is synced at every commit, so a commit
    /// also survives a power loss. Each commit waits for an fsync.
    Full,
}

impl std::str::FromStr for DiskSync {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "normal" => Ok(DiskSync::Normal),
            "full" => Ok(DiskSync::Full),
            other => Err(format!(
                "store.durability '{other}' is not `normal` or `full` (host config set store.durability full)"
            )),
        }
    }
}

impl DiskSync {
    fn pragma(self) -> &'static str {
        match self {
            DiskSync::Normal => "NORMAL",
            DiskSync::Full => "FULL",
        }
    }
}

/// How to open a [`Store`]; `Default` is what [`Store::open`] uses.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    pub durability: DiskSync,
}

/// Resolves when the writes it was handed out for are committed.
pub struct Ticket(oneshot::Receiver<Result<(), StoreError>>);

impl Ticket {
    pub async fn committed(self) -> Result<(), StoreError> {
        self.0.await.unwrap_or(Err(StoreError::WriterGone))
    }

    /// For callers outside an async runtime (the CLI).
    pub fn wait_blocking(self) -> Result<(), StoreError> {
        self.0
            .blocking_recv()
            .unwrap_or(Err(StoreError::WriterGone))
    }
}

struct Job {
    writes: Vec<Write>,
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// The write side: a queue of jobs and the connection that commits them.
///
/// Whoever holds the connection commits everything queued (group commit). A
/// caller that needs durability commits inline when the connection is free,
/// so a lone sequential writer pays no thread hand-off; when it is busy, the
/// holder picks the job up. Detached jobs are committed by the flusher
/// thread (or by the next inline commit, whichever comes first).
struct Writer {
    queue: Mutex<Queue>,
    wake: Condvar,
    conn: Mutex<Connection>,
    results: Arc<ResultFiles>,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    closed: bool,
}

impl Writer {
    fn push(&self, job: Job) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.closed {
            drop(queue);
            fail_job(job);
            return false;
        }
        queue.jobs.push(job);
        true
    }

    /// Commits queued jobs until the queue is empty, unless another thread
    /// holds the connection (it will see our jobs before it lets go).
    fn flush(&self) {
        loop {
            let mut conn = match self.conn.try_lock() {
                Ok(conn) => conn,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            loop {
                let batch: Vec<Job> = {
                    let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                    let n = queue.jobs.len().min(MAX_BATCH);
                    queue.jobs.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                let outcomes = apply_batch(&mut conn, &batch, &self.results);
                for (job, result) in batch.into_iter().zip(outcomes) {
                    if let Some(done) = job.done {
                        let _ = done.send(result);
                    } else if let Err(e) = result {
                        tracing::warn!("a background write was not recorded: {e}");
                    }
                }
            }
            drop(conn);
            // A job may have arrived after our last look and before we let go.
            if self
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .jobs
                .is_empty()
            {
                return;
            }
        }
    }

    /// The flusher thread: commits detached jobs as they come, and folds the
    /// WAL back into the database now and then, until closed.
    ///
    /// Checkpoints (which fsync) happen here, on a connection of their own,
    /// so that no commit on the hot path ever waits for one.
    fn run_flusher(&self, checkpointer: Connection) {
        let mut last_checkpoint = std::time::Instant::now();
        loop {
            {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                while queue.jobs.is_empty() && !queue.closed {
                    let (q, _) = self
                        .wake
                        .wait_timeout(queue, CHECKPOINT_EVERY)
                        .unwrap_or_else(|p| p.into_inner());
                    queue = q;
                    if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                        break;
                    }
                }
                if queue.jobs.is_empty() && queue.closed {
                    break;
                }
            }
            if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                let _ = checkpointer.pragma_update(None, "wal_checkpoint", "PASSIVE");
                last_checkpoint = std::time::Instant::now();
            }
            self.flush();
            // Another thread may hold the connection; let it finish before looking again.
            let _wait = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        }
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        // Everything queued was applied. Fold the WAL back into the database.
        let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
    }
}

/// The database: a writer (inline group commit + a flusher thread) and a read connection.
pub struct Store {
    path: PathBuf,
    results: Arc<ResultFiles>,
    writer: Arc<Writer>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// A few read connections: a slow read holds one, the others serve.
    readers: Vec<Mutex<Connection>>,
}

/// Read connections per store (WAL readers do not block each other or the writer).
const READERS: usize = 4;

/// The most units one transaction carries; more wait for the next commit.
const MAX_BATCH: usize = 4096;

/// How often the flusher folds the WAL back into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it.
    /// Payloads over 64 KiB go to files in `results/` beside the database.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_with_options(path, StoreOptions::default())
    }

    /// [`Store::open`] with options (the durability of commits).
    pub fn open_with_options(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let dir = path.parent().unwrap_or(Path::new(".")).join("results");
        Self::open_inner(
            path,
            ResultFiles::new(dir, DEFAULT_RESULT_THRESHOLD),
            &options,
        )
    }

    pub fn open_with(path: &Path, results: ResultFiles) -> Result<Store, StoreError> {
        Self::open_inner(path, results, &StoreOptions::default())
    }

    fn open_inner(
        path: &Path,
        results: ResultFiles,
        options: &StoreOptions,
    ) -> Result<Store, StoreError> {
        let durability = options.durability;
        let open_error = |e: &dyn std::fmt::Display| StoreError::Open {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            create_private_dir(dir).map_err(|e| open_error(&e))?;
        }
        create_private_file(path).map_err(|e| open_error(&e))?;
        let mut conn = connect(path, durability).map_err(|e| open_error(&e))?;
        schema::migrate(&mut conn).map_err(|e| open_error(&e))?;
        // The flusher thread checkpoints; commits never do.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| open_error(&e))?;
        let readers = (0..READERS)
            .map(|_| connect(path, durability).map(Mutex::new))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| open_error(&e))?;

        let results = Arc::new(results);
        let writer = Arc::new(Writer {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            conn: Mutex::new(conn),
            results: results.clone(),
        });
        let flusher_writer = writer.clone();
        let checkpointer = connect(path, durability).map_err(|e| open_error(&e))?;
        let flusher = std::thread::Builder::new()
            .name("weir-store-flusher".into())
            .spawn(move || flusher_writer.run_flusher(checkpointer))
            .map_err(|e| open_error(&e))?;
        Ok(Store {
            path: path.to_path_buf(),
            results,
            writer,
            flusher: Mutex::new(Some(flusher)),
            readers,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The write connection's `PRAGMA synchronous` (1 NORMAL, 2 FULL), to
    /// check what [`DiskSync`] is in effect.
    pub fn synchronous(&self) -> Result<u8, StoreError> {
        let conn = self.writer.conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(conn.pragma_query_value(None, "synchronous", |r| r.get(0))?)
    }

    /// Applies writes atomically, committing inline when the connection is
    /// free; the ticket resolves when they are durable.
    pub fn submit(&self, writes: Vec<Write>) -> Ticket {
        let (done, rx) = oneshot::channel();
        if self.writer.push(Job {
            writes,
            done: Some(done),
        }) {
            self.writer.flush();
        }
        Ticket(rx)
    }

    /// Queues writes that nobody waits for (logs, intermediate states).
    pub fn submit_detached(&self, writes: Vec<Write>) {
        if self.writer.push(Job { writes, done: None }) {
            self.writer.wake.notify_one();
        }
    }

    /// Commits everything queued so far, then stops the flusher. Later
    /// writes fail with `WriterGone`.
    pub fn close(&self) {
        self.writer
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed = true;
        self.writer.wake.notify_all();
        if let Some(thread) = self
            .flusher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = thread.join();
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        // A free connection if there is one; otherwise wait for one, chosen by thread.
        let conn = self
            .readers
            .iter()
            .find_map(|r| r.try_lock().ok())
            .unwrap_or_else(|| {
                let mut hasher = std::hash::DefaultHasher::new();
                std::hash::Hash::hash(&std::thread::current().id(), &mut hasher);
                let i = std::hash::Hasher::finish(&hasher) as usize % self.readers.len();
                self.readers[i].lock().unwrap_or_else(|p| p.into_inner())
            });
        Ok(f(&conn)?)
    }

    // ---- reads ----

    pub fn component_manifest(
        &self,
        digest: &ComponentDigest,
    ) -> Result<Option<Manifest>, StoreError> {
        Ok(self.component(digest)?.map(|row| row.manifest))
    }

    /// Uploaded components, newest first: (digest, size, manifest).
    pub fn components(&self) -> Result<Vec<ComponentRow>, StoreError> {
        self.component_rows("ORDER BY created_us DESC", None)
    }

    /// One uploaded component, if it is stored.
    pub fn component(&self, digest: &ComponentDigest) -> Result<Option<ComponentRow>, StoreError> {
        Ok(self
            .component_rows("WHERE digest = ?1", Some(digest.as_str()))?
            .pop())
    }

    fn component_rows(
        &self,
        tail: &str,
        digest: Option<&str>,
    ) -> Result<Vec<ComponentRow>, StoreError> {
        let rows: Vec<(String, i64, String, i64)> = self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT digest, size_bytes, manifest, created_us FROM components {tail}"
            ))?;
            let args: Vec<&str> = digest.into_iter().collect();
            stmt.query_map(rusqlite::params_from_iter(args), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect()
        })?;
        rows.into_iter()
            .map(|(digest, size, manifest, created)| {
                Ok(ComponentRow {
                    digest,
                    size_bytes: size as u64,
                    manifest: serde_json::from_str(&manifest)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    created_at: created,
                })
            })
            .collect()
    }

    /// One named object, if it exists.
    pub fn object(&self, kind: ObjectKind, name: &str) -> Result<Option<ObjectRow>, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT name, body, created_us, updated_us FROM objects WHERE kind = ?1 AND name = ?2",
                params![kind.as_str(), name],
                ObjectRow::from_row,
            )
            .optional()
        })
    }

    /// All objects of a kind, by name.
    pub fn objects(&self, kind: ObjectKind) -> Result<Vec<ObjectRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT name, body, created_us, updated_us FROM objects WHERE kind = ?1 ORDER BY name",
            )?;
            stmt.query_map([kind.as_str()], ObjectRow::from_row)?.collect()
        })
    }

    /// Scheduled runs still waiting though they were due before `before`.
    pub fn overdue_runs(
        &self,
        before: TimestampMicros,
        limit: usize,
    ) -> Result<Vec<FlowRunRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "{FLOW_RUN_SELECT} WHERE state = 'Scheduled' AND scheduled_us < ?1 ORDER BY scheduled_us LIMIT ?2"
            ))?;
            stmt.query_map(params![before, limit as i64], FlowRunRow::from_row)?
                .collect()
        })
    }

    /// Scheduled runs of these pools due by `now`, and Late ones, oldest
    /// first. Filtered by pool in SQL, so runs waiting for other pools (or
    /// stuck behind a limit) never crowd out the ones asked for.
    pub fn due_runs(
        &self,
        pools: &[String],
        now: TimestampMicros,
        limit: usize,
    ) -> Result<Vec<FlowRunRow>, StoreError> {
        let pools = serde_json::to_string(pools).unwrap_or_else(|_| "[]".into());
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT * FROM ({FLOW_RUN_SELECT} WHERE state = 'Scheduled' AND scheduled_us <= ?1
                 UNION ALL {FLOW_RUN_SELECT} WHERE state = 'Late')
                 WHERE work_pool IN (SELECT value FROM json_each(?3))
                 ORDER BY scheduled_us LIMIT ?2"
            ))?;
            stmt.query_map(params![now, limit as i64, pools], FlowRunRow::from_row)?
                .collect()
        })
    }

    /// The latest scheduled time among a deployment's runs.
    /// Pending deliveries due by `now`, oldest first.
    pub fn due_deliveries(
        &self,
        now: TimestampMicros,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "{DELIVERY_SELECT} WHERE status = 'pending' AND next_attempt_us <= ?1 ORDER BY next_attempt_us LIMIT ?2"
            ))?;
            stmt.query_map(params![now, limit as i64], DeliveryRow::from_row)?
                .collect()
        })
    }

    /// An automation's deliveries, newest first.
    pub fn deliveries(
        &self,
        automation: &str,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "{DELIVERY_SELECT} WHERE automation = ?1 ORDER BY id DESC LIMIT ?2"
            ))?;
            stmt.query_map(params![automation, limit as i64], DeliveryRow::from_row)?
                .collect()
        })
    }

    /// Top-level runs that ended after `after` (up to `limit`, oldest first).
    pub fn runs_ended_after(
        &self,
        after: TimestampMicros,
        limit: usize,
    ) -> Result<Vec<FlowRunRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "{FLOW_RUN_SELECT} WHERE ended_us > ?1 AND parent_flow_run IS NULL ORDER BY ended_us LIMIT ?2"
            ))?;
            stmt.query_map(params![after, limit as i64], FlowRunRow::from_row)?
                .collect()
        })
    }

    /// Top-level runs in `state` created before `before` (Late ones, or
    /// Running ones that may be stuck).
    pub fn runs_in_state(
        &self,
        state: RunState,
        limit: usize,
    ) -> Result<Vec<FlowRunRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "{FLOW_RUN_SELECT} WHERE state = ?1 AND parent_flow_run IS NULL ORDER BY created_us LIMIT ?2"
            ))?;
            stmt.query_map(params![state.as_str(), limit as i64], FlowRunRow::from_row)?
                .collect()
        })
    }

    /// The latest time a schedule of a deployment made a run for.
    pub fn last_schedule_slot(
        &self,
        deployment: &str,
        schedule_key: &str,
    ) -> Result<Option<TimestampMicros>, StoreError> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT max(scheduled_us) FROM schedule_slots WHERE deployment = ?1 AND schedule_key = ?2",
            )?
            .query_row(params![deployment, schedule_key], |r| r.get(0))
        })
    }

    /// Deployments that have runs made ahead by their schedules, waiting
    /// after `after` (to drop those of deployments that are gone).
    pub fn deployments_with_slots_after(
        &self,
        after: TimestampMicros,
    ) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT DISTINCT deployment FROM schedule_slots WHERE scheduled_us > ?1",
            )?;
            stmt.query_map([after], |r| r.get(0))?.collect()
        })
    }

    pub fn last_scheduled_at(
        &self,
        deployment: &str,
    ) -> Result<Option<TimestampMicros>, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT max(scheduled_us) FROM flow_runs WHERE deployment = ?1",
                [deployment],
                |r| r.get(0),
            )
        })
    }

    /// Runs of a work pool (and, if given, one of its queues) that have not
    /// ended, for their concurrency limits.
    pub fn active_runs_of_pool(&self, pool: &str, queue: Option<&str>) -> Result<u64, StoreError> {
        self.count_unfinished(
            "work_pool = ?1 AND (?2 IS NULL OR work_queue = ?2)",
            params![pool, queue],
        )
    }

    /// Runs of a deployment that have not ended (for its concurrency limit).
    pub fn active_runs_of_deployment(&self, deployment: &str) -> Result<u64, StoreError> {
        self.count_unfinished("deployment = ?1", params![deployment])
    }

    fn count_unfinished(
        &self,
        filter: &str,
        args: impl rusqlite::Params,
    ) -> Result<u64, StoreError> {
        let n: i64 = self.read(|c| {
            c.query_row(
                &format!("SELECT count(*) FROM flow_runs WHERE {filter} AND {UNFINISHED}"),
                args,
                |r| r.get(0),
            )
        })?;
        Ok(n as u64)
    }

    /// Flow runs per state, for metrics.
    pub fn count_flow_runs_by_state(&self) -> Result<Vec<(RunState, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = self.read(|c| {
            let mut stmt = c.prepare("SELECT state, count(*) FROM flow_runs GROUP BY state")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })?;
        rows.into_iter()
            .map(|(state, n)| Ok((parse_state(&state)?, n as u64)))
            .collect()
    }

    /// Flow runs created at or after `since`, per state (the UI's dashboard).
    pub fn count_flow_runs_by_state_since(
        &self,
        since: TimestampMicros,
    ) -> Result<Vec<(RunState, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT state, count(*) FROM flow_runs WHERE created_us >= ?1 GROUP BY state",
            )?;
            stmt.query_map([since], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })?;
        rows.into_iter()
            .map(|(state, n)| Ok((parse_state(&state)?, n as u64)))
            .collect()
    }

    /// Flow runs created at or after `since`, per hour since the epoch
    /// (the UI's throughput chart), oldest hour first.
    pub fn count_flow_runs_per_hour_since(
        &self,
        since: TimestampMicros,
    ) -> Result<Vec<(i64, u64)>, StoreError> {
        let rows: Vec<(i64, i64)> = self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT created_us / 3600000000 AS hour, count(*) FROM flow_runs
                 WHERE created_us >= ?1 GROUP BY hour ORDER BY hour",
            )?;
            stmt.query_map([since], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })?;
        Ok(rows.into_iter().map(|(hour, n)| (hour, n as u64)).collect())
    }

    pub fn flow_run(&self, id: FlowRunId) -> Result<FlowRunRow, StoreError> {
        let mut row = self
            .read(|c| {
                c.query_row(
                    &format!("{FLOW_RUN_SELECT} WHERE id = ?1"),
                    [id.as_bytes()],
                    FlowRunRow::from_row,
                )
                .optional()
            })?
            .ok_or(StoreError::NotFound {
                what: "flow run",
                id: id.to_string(),
            })?;
        self.results.inflate(&mut row.params)?;
        if let Some(result) = row.result.as_mut() {
            self.results.inflate(result)?;
        }
        Ok(row)
    }

    /// Whether someone asked for this run to be cancelled.
    pub fn cancel_requested(&self, id: FlowRunId) -> Result<bool, StoreError> {
        let at: Option<Option<i64>> = self.read(|c| {
            c.query_row(
                "SELECT cancel_requested_us FROM flow_runs WHERE id = ?1",
                [id.as_bytes()],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(matches!(at, Some(Some(_))))
    }

    /// Finds a flow run by a prefix of its id, as users type them.
    pub fn resolve_flow_run(&self, text: &str) -> Result<FlowRunId, StoreError> {
        if let Ok(id) = text.parse::<FlowRunId>() {
            return Ok(id);
        }
        let prefix: String = text
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .collect::<String>()
            .to_lowercase();
        let not_found = || StoreError::NotFound {
            what: "flow run",
            id: text.to_string(),
        };
        if prefix.len() < 4 || prefix.len() != text.replace('-', "").len() {
            return Err(not_found());
        }
        let ids: Vec<Vec<u8>> = self.read(|c| {
            let mut stmt = c.prepare("SELECT id FROM flow_runs WHERE hex(id) LIKE ?1 LIMIT 2")?;
            stmt.query_map([format!("{}%", prefix.to_uppercase())], |r| r.get(0))?
                .collect()
        })?;
        match ids.as_slice() {
            [one] => Ok(FlowRunId::from_bytes(
                blob16(one).map_err(StoreError::Corrupt)?,
            )),
            [] => Err(not_found()),
            _ => Err(StoreError::Corrupt(format!(
                "the id prefix '{text}' matches more than one flow run; type more of it"
            ))),
        }
    }

    pub fn list_flow_runs(&self, filter: &FlowRunFilter) -> Result<Vec<FlowRunRow>, StoreError> {
        let mut sql = format!("{FLOW_RUN_SELECT} WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(state) = filter.state {
            sql.push_str(" AND state = ?");
            args.push(state.as_str().to_string().into());
        }
        if let Some(flow) = &filter.flow_name {
            sql.push_str(" AND flow_name = ?");
            args.push(flow.clone().into());
        }
        if let Some(deployment) = &filter.deployment {
            sql.push_str(" AND deployment = ?");
            args.push(deployment.clone().into());
        }
        if let Some(tag) = &filter.tag {
            sql.push_str(
                " AND tags IS NOT NULL AND EXISTS (SELECT 1 FROM json_each(tags) WHERE value = ?)",
            );
            args.push(tag.clone().into());
        }
        if let Some(since) = filter.since {
            sql.push_str(" AND created_us >= ?");
            args.push(since.into());
        }
        if let Some(until) = filter.until {
            sql.push_str(" AND created_us < ?");
            args.push(until.into());
        }
        if filter.top_level_only {
            sql.push_str(" AND parent_flow_run IS NULL");
        }
        sql.push_str(" ORDER BY created_us DESC, id DESC LIMIT ? OFFSET ?");
        args.push((filter.limit.max(1) as i64).into());
        args.push((filter.offset as i64).into());
        self.read(|c| {
            let mut stmt = c.prepare(&sql)?;
            stmt.query_map(rusqlite::params_from_iter(args), FlowRunRow::from_row)?
                .collect()
        })
    }

    pub fn task_run(&self, id: TaskRunId) -> Result<TaskRunRow, StoreError> {
        let mut row = self
            .read(|c| {
                c.query_row(
                    &format!("{TASK_RUN_SELECT} WHERE id = ?1"),
                    [id.as_bytes()],
                    TaskRunRow::from_row,
                )
                .optional()
            })?
            .ok_or(StoreError::NotFound {
                what: "task run",
                id: id.to_string(),
            })?;
        self.results.inflate(&mut row.input)?;
        if let Some(output) = row.output.as_mut() {
            self.results.inflate(output)?;
        }
        Ok(row)
    }

    pub fn task_runs(&self, flow_run: FlowRunId) -> Result<Vec<TaskRunRow>, StoreError> {
        let mut rows: Vec<TaskRunRow> = self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "{TASK_RUN_SELECT} WHERE flow_run = ?1 ORDER BY call_seq, created_us"
            ))?;
            stmt.query_map([flow_run.as_bytes()], TaskRunRow::from_row)?
                .collect()
        })?;
        for row in &mut rows {
            self.results.inflate(&mut row.input)?;
            if let Some(output) = row.output.as_mut() {
                self.results.inflate(output)?;
            }
        }
        Ok(rows)
    }

    pub fn task_attempts(&self, task_run: TaskRunId) -> Result<Vec<AttemptRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT attempt, started_us, ended_us, fuel_used, peak_memory, failure_kind, message
                 FROM task_attempts WHERE task_run = ?1 ORDER BY attempt",
            )?;
            stmt.query_map([task_run.as_bytes()], |r| {
                let kind: Option<String> = r.get(5)?;
                let message: Option<String> = r.get(6)?;
                Ok(AttemptRecord {
                    task_run,
                    attempt: r.get(0)?,
                    started_at: r.get(1)?,
                    ended_at: r.get(2)?,
                    fuel_used: r.get::<_, i64>(3)? as u64,
                    peak_memory: r.get::<_, i64>(4)? as u64,
                    failure: kind
                        .and_then(|k| k.parse().ok())
                        .map(|k| (k, message.unwrap_or_default())),
                })
            })?
            .collect()
        })
    }

    /// The state history of a flow run or task run, oldest first.
    pub fn state_history(
        &self,
        run: uuid::Uuid,
    ) -> Result<Vec<(TimestampMicros, RunState, Option<String>)>, StoreError> {
        let rows: Vec<(i64, String, Option<String>)> = self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT at_us, state, message FROM run_states WHERE run_id = ?1 ORDER BY at_us",
            )?;
            stmt.query_map([run.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })?;
        rows.into_iter()
            .map(|(at, state, message)| Ok((at, parse_state(&state)?, message)))
            .collect()
    }

    /// Log lines of a flow run (and its tasks) after `after_id`, oldest first.
    pub fn logs(
        &self,
        flow_run: FlowRunId,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<LogRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT l.id, l.task_run, l.at_us, l.level, l.message, t.task_name FROM logs l
                 LEFT JOIN task_runs t ON t.id = l.task_run
                 WHERE l.flow_run = ?1 AND l.id > ?2 ORDER BY l.id LIMIT ?3",
            )?;
            stmt.query_map(params![flow_run.as_bytes(), after_id, limit as i64], |r| {
                let task_run: Option<Vec<u8>> = r.get(1)?;
                Ok(LogRow {
                    id: r.get(0)?,
                    task_run: task_run
                        .and_then(|b| blob16(&b).ok())
                        .map(TaskRunId::from_bytes),
                    at: r.get(2)?,
                    level: LogLevel::from_u8(r.get::<_, i64>(3)? as u8),
                    message: r.get(4)?,
                    task_name: r.get(5)?,
                })
            })?
            .collect()
        })
    }

    /// The newest unexpired output recorded for a cache key.
    pub fn cached_output(
        &self,
        cache_key: &str,
        not_before: TimestampMicros,
    ) -> Result<Option<(TaskRunId, String)>, StoreError> {
        let row: Option<(Vec<u8>, String)> = self.read(|c| {
            c.query_row(
                "SELECT id, output FROM task_runs
                 WHERE cache_key = ?1 AND state = 'Completed' AND ended_us >= ?2
                 ORDER BY ended_us DESC LIMIT 1",
                params![cache_key, not_before],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })?;
        row.map(|(id, mut out)| {
            self.results.inflate(&mut out)?;
            Ok((
                TaskRunId::from_bytes(blob16(&id).map_err(StoreError::Corrupt)?),
                out,
            ))
        })
        .transpose()
    }

    /// Unfinished runs that anyone holds (their holders may be checked for life).
    pub fn held_runs(&self) -> Result<Vec<FlowRunRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "{FLOW_RUN_SELECT} WHERE lease_holder IS NOT NULL AND {UNFINISHED} ORDER BY created_us"
            ))?;
            stmt.query_map([], FlowRunRow::from_row)?.collect()
        })
    }

    /// Unfinished subflow runs below `id`, at any depth, deepest last.
    pub fn unfinished_descendants(&self, id: FlowRunId) -> Result<Vec<FlowRunRow>, StoreError> {
        let mut runs = self.descendants(id)?;
        runs.retain(|r| {
            matches!(
                r.state,
                RunState::Pending | RunState::Running | RunState::Retrying | RunState::Cancelling
            )
        });
        Ok(runs)
    }

    /// Subflow runs below `id`, at any depth, deepest last.
    pub fn descendants(&self, id: FlowRunId) -> Result<Vec<FlowRunRow>, StoreError> {
        let mut runs: Vec<FlowRunRow> = self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "WITH RECURSIVE tree (id, depth) AS (
                    SELECT id, 1 FROM flow_runs WHERE parent_flow_run = ?1
                    UNION ALL SELECT f.id, tree.depth + 1 FROM flow_runs f JOIN tree ON f.parent_flow_run = tree.id)
                 SELECT r.* FROM ({FLOW_RUN_SELECT}) AS r JOIN tree USING (id) ORDER BY tree.depth, r.created_us"
            ))?;
            stmt.query_map([id.as_bytes()], FlowRunRow::from_row)?
                .collect()
        })?;
        for run in &mut runs {
            self.results.inflate(&mut run.params)?;
            if let Some(result) = run.result.as_mut() {
                self.results.inflate(result)?;
            }
        }
        Ok(runs)
    }

    /// Runs that were left unfinished (for recovery after a crash).
    pub fn unfinished_flow_runs(&self) -> Result<Vec<FlowRunRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "{FLOW_RUN_SELECT} WHERE {UNFINISHED} ORDER BY created_us"
            ))?;
            stmt.query_map([], FlowRunRow::from_row)?.collect()
        })
    }

    /// Deletes flow runs (with their tasks, attempts, states and logs) that
    /// ended before `ended_before`, then result files no row refers to.
    ///
    /// Files go only after the rows' deletion has committed (a crash in
    /// between leaves unreferenced files, never rows without their files),
    /// and only files that no row refers to, whether old or new, in any
    /// process: see [`Store::collect_result_files`].
    pub fn prune(&self, ended_before: TimestampMicros) -> Result<PruneReport, StoreError> {
        let mut report = PruneReport::default();
        {
            let mut conn = self.readers[0].lock().unwrap_or_else(|p| p.into_inner());
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS doomed (id BLOB PRIMARY KEY); DELETE FROM doomed;",
            )?;
            // Whole trees only: a child goes with its root.
            tx.execute(
                "INSERT INTO doomed SELECT id FROM flow_runs WHERE parent_flow_run IS NULL AND ended_us < ?1",
                [ended_before],
            )?;
            tx.execute_batch(
                "WITH RECURSIVE tree(id) AS (SELECT id FROM doomed UNION SELECT f.id FROM flow_runs f JOIN tree ON f.parent_flow_run = tree.id)
                 INSERT OR IGNORE INTO doomed SELECT id FROM tree;",
            )?;
            report.logs = tx.execute(
                "DELETE FROM logs WHERE flow_run IN (SELECT id FROM doomed)",
                [],
            )? as u64;
            tx.execute(
                "DELETE FROM run_states WHERE run_id IN (SELECT id FROM doomed)
                    OR run_id IN (SELECT id FROM task_runs WHERE flow_run IN (SELECT id FROM doomed))",
                [],
            )?;
            report.task_runs = tx.execute(
                "DELETE FROM task_runs WHERE flow_run IN (SELECT id FROM doomed)",
                [],
            )? as u64;
            report.flow_runs = tx.execute(
                "DELETE FROM flow_runs WHERE id IN (SELECT id FROM doomed)",
                [],
            )? as u64;
            tx.commit()?;
        }
        report.result_files = self.collect_result_files()?;
        Ok(report)
    }

    /// Removes result files that no committed row refers to, and temp
    /// files left by a crash mid-write.
    ///
    /// Writers write (or find) a result file only inside their write
    /// transaction, which begins IMMEDIATE. Holding the write lock here, from
    /// reading the references to the last removal, means every writer in
    /// every process has either committed its rows (so they are read here)
    /// or not yet begun (so it writes the file again if it is gone); a temp
    /// file seen now belongs to no writer in progress.
    fn collect_result_files(&self) -> Result<u64, StoreError> {
        let mut conn = self.readers[0].lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let referenced: std::collections::HashSet<String> = {
            let mut stmt = tx.prepare(
                "SELECT params FROM flow_runs UNION ALL SELECT result FROM flow_runs
                 UNION ALL SELECT input FROM task_runs UNION ALL SELECT output FROM task_runs",
            )?;
            let texts: Vec<Option<String>> = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            texts
                .into_iter()
                .flatten()
                .filter_map(|t| ResultFiles::referenced(&t).map(str::to_string))
                .collect()
        };
        let Ok(entries) = std::fs::read_dir(self.results.dir()) else {
            return Ok(0);
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let unreferenced = name
                .strip_suffix(".json")
                .is_some_and(|digest| !referenced.contains(digest));
            if (unreferenced || name.starts_with(files::TEMP_PREFIX))
                && std::fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
        // Nothing was written; ending the transaction lets writers go on.
        tx.rollback()?;
        Ok(removed)
    }

    /// Deletes log lines written before `before`, whatever their run: the
    /// server's log retention. Runs and their records stay. Returns the lines deleted.
    pub fn prune_logs_older_than(&self, before: TimestampMicros) -> Result<u64, StoreError> {
        let conn = self.readers[0].lock().unwrap_or_else(|p| p.into_inner());
        Ok(conn.execute("DELETE FROM logs WHERE at_us < ?1", [before])? as u64)
    }

    /// Counts rows per table, for `host version --verbose` and benchmarks.
    pub fn count(&self, table: StoreTable) -> Result<u64, StoreError> {
        let sql = format!("SELECT count(*) FROM {}", table.name());
        self.read(|c| {
            c.query_row(&sql, [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
        })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

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
    fn name(self) -> &'static str {
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
}

impl ObjectKind {
    fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Deployment => "deployment",
            ObjectKind::WorkPool => "work_pool",
            ObjectKind::WorkQueue => "work_queue",
            ObjectKind::Variable => "variable",
            ObjectKind::Secret => "secret",
            ObjectKind::Host => "host",
            ObjectKind::Automation => "automation",
        }
    }
    fn what(self) -> &'static str {
        match self {
            ObjectKind::Deployment => "deployment",
            ObjectKind::WorkPool => "work pool",
            ObjectKind::WorkQueue => "work queue",
            ObjectKind::Variable => "variable",
            ObjectKind::Secret => "secret",
            ObjectKind::Host => "host",
            ObjectKind::Automation => "automation",
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

const DELIVERY_SELECT: &str =
    "SELECT id, automation, flow_run, event, payload, status, attempts, next_attempt_us,
    last_error, response_code, created_us, delivered_us FROM automation_deliveries";

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

impl DeliveryRow {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        let run: Vec<u8> = r.get(2)?;
        Ok(DeliveryRow {
            id: r.get(0)?,
            automation: r.get(1)?,
            flow_run: FlowRunId::from_bytes(run.try_into().unwrap_or([0; 16])),
            event: r.get(3)?,
            payload: r.get(4)?,
            status: r.get(5)?,
            attempts: r.get(6)?,
            next_attempt_at: r.get(7)?,
            last_error: r.get(8)?,
            response_code: r.get(9)?,
            created_at: r.get(10)?,
            delivered_at: r.get(11)?,
        })
    }
}

/// One named object: its JSON body and when it was made and last changed.
#[derive(Debug, Clone)]
pub struct ObjectRow {
    pub name: String,
    pub body: String,
    pub created_at: TimestampMicros,
    pub updated_at: TimestampMicros,
}

fn tags_text(tags: &[String]) -> Option<String> {
    (!tags.is_empty()).then(|| serde_json::to_string(tags).unwrap_or_default())
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
}

/// Flow runs that have not ended, as SQL.
const UNFINISHED: &str = "state IN ('Pending', 'Running', 'Retrying', 'Cancelling')";

const FLOW_RUN_SELECT: &str =
    "SELECT id, parent_flow_run, component, flow_name, params, state, message,
    failure_kind, result, attempt, host, created_us, started_us, ended_us, fuel_used, peak_memory,
    deployment, tags, scheduled_us, work_pool, work_queue, secret_grants,
    lease_holder, lease_epoch, lease_expires_us FROM flow_runs";

impl FlowRunRow {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(FlowRunRow {
            id: FlowRunId::from_bytes(row_blob16(r, 0)?),
            parent_flow_run: r
                .get::<_, Option<Vec<u8>>>(1)?
                .and_then(|b| blob16(&b).ok())
                .map(FlowRunId::from_bytes),
            component: r.get(2)?,
            flow_name: r.get(3)?,
            params: r.get(4)?,
            state: row_state(r, 5)?,
            message: r.get(6)?,
            failure_kind: r.get::<_, Option<String>>(7)?.and_then(|k| k.parse().ok()),
            result: r.get(8)?,
            attempt: r.get(9)?,
            host: r.get(10)?,
            created_at: r.get(11)?,
            started_at: r.get(12)?,
            ended_at: r.get(13)?,
            fuel_used: r.get::<_, i64>(14)? as u64,
            peak_memory: r.get::<_, i64>(15)? as u64,
            deployment: r.get(16)?,
            tags: r
                .get::<_, Option<String>>(17)?
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default(),
            scheduled_at: r.get(18)?,
            work_pool: r.get(19)?,
            work_queue: r.get(20)?,
            secret_grants: r
                .get::<_, Option<String>>(21)?
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default(),
            lease_holder: r.get(22)?,
            lease_epoch: r.get::<_, i64>(23)? as u64,
            lease_expires_at: r.get(24)?,
        })
    }
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

const TASK_RUN_SELECT: &str = "SELECT id, flow_run, call_seq, task_name, input, output, state, failure_kind,
    message, attempts, fuel_used, peak_memory, created_us, started_us, ended_us, next_attempt_us, cached_from, host,
    input_sha256
    FROM task_runs";

impl TaskRunRow {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(TaskRunRow {
            id: TaskRunId::from_bytes(row_blob16(r, 0)?),
            flow_run: FlowRunId::from_bytes(row_blob16(r, 1)?),
            call_seq: r.get::<_, i64>(2)? as u64,
            task_name: r.get(3)?,
            input: r.get(4)?,
            output: r.get(5)?,
            state: row_state(r, 6)?,
            failure_kind: r.get::<_, Option<String>>(7)?.and_then(|k| k.parse().ok()),
            message: r.get(8)?,
            attempts: r.get(9)?,
            fuel_used: r.get::<_, i64>(10)? as u64,
            peak_memory: r.get::<_, i64>(11)? as u64,
            created_at: r.get(12)?,
            started_at: r.get(13)?,
            ended_at: r.get(14)?,
            next_attempt_at: r.get(15)?,
            cached_from: r
                .get::<_, Option<Vec<u8>>>(16)?
                .and_then(|b| blob16(&b).ok())
                .map(TaskRunId::from_bytes),
            host: r.get(17)?,
            input_sha256: r.get(18)?,
        })
    }
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

impl ObjectRow {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(ObjectRow {
            name: r.get(0)?,
            body: r.get(1)?,
            created_at: r.get(2)?,
            updated_at: r.get(3)?,
        })
    }
}

fn blob16(bytes: &[u8]) -> Result<[u8; 16], String> {
    bytes
        .try_into()
        .map_err(|_| format!("expected a 16-byte id, found {} bytes", bytes.len()))
}

fn row_blob16(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<[u8; 16]> {
    let bytes: Vec<u8> = r.get(i)?;
    blob16(&bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, e.into())
    })
}

fn row_state(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<RunState> {
    let text: String = r.get(i)?;
    text.parse().map_err(|e: crate::model::UnknownState| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    })
}

fn parse_state(text: &str) -> Result<RunState, StoreError> {
    text.parse()
        .map_err(|e: crate::model::UnknownState| StoreError::Corrupt(e.to_string()))
}

/// Creates `dir` and its missing parents readable by the owner only (0700):
/// `$WEIR_HOME` holds run records, results and sealed secrets.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates an empty database file 0600 if there is none, so that SQLite,
/// which gives its `-wal` and `-shm` files the database's mode, keeps all
/// three from other users.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

fn connect(path: &Path, durability: DiskSync) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // WAL + NORMAL: a commit survives a process crash; only power loss can
    // lose the last ones. FULL syncs the WAL at every commit.
    conn.pragma_update(None, "synchronous", durability.pragma())?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

fn fail_job(job: Job) {
    if let Some(done) = job.done {
        let _ = done.send(Err(StoreError::WriterGone));
    }
}

fn apply_batch(
    conn: &mut Connection,
    batch: &[Job],
    files: &ResultFiles,
) -> Vec<Result<(), StoreError>> {
    // IMMEDIATE takes the write lock before any unit runs, so result files
    // are written or found while the lock is held: `prune` cannot remove one
    // between then and the commit of the row that points at it.
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let message = e.to_string();
            return batch
                .iter()
                .map(|_| Err(StoreError::Corrupt(format!("begin failed: {message}"))))
                .collect();
        }
    };
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let unit = (|| -> Result<(), StoreError> {
            let sp = tx.unchecked_transaction_savepoint()?;
            for write in &job.writes {
                apply(&sp, write, files)?;
            }
            sp.commit()?;
            Ok(())
        })();
        results.push(unit);
    }
    if let Err(e) = tx.commit() {
        let message = e.to_string();
        return batch
            .iter()
            .map(|_| Err(StoreError::Corrupt(format!("commit failed: {message}"))))
            .collect();
    }
    results
}

/// Savepoints on a shared transaction reference (rusqlite wants `&mut`).
trait SavepointExt {
    fn unchecked_transaction_savepoint(&self) -> rusqlite::Result<Savepoint<'_>>;
}

impl SavepointExt for rusqlite::Transaction<'_> {
    fn unchecked_transaction_savepoint(&self) -> rusqlite::Result<Savepoint<'_>> {
        self.execute_batch("SAVEPOINT unit")?;
        Ok(Savepoint {
            conn: self,
            done: false,
        })
    }
}

struct Savepoint<'a> {
    conn: &'a Connection,
    done: bool,
}

impl Savepoint<'_> {
    fn commit(mut self) -> rusqlite::Result<()> {
        self.done = true;
        self.conn.execute_batch("RELEASE unit")
    }
}

impl std::ops::Deref for Savepoint<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.conn.execute_batch("ROLLBACK TO unit; RELEASE unit");
        }
    }
}

/// The two run tables whose state changes are written alike.
#[derive(Clone, Copy)]
enum RunTable {
    Flow,
    Task,
}

impl RunTable {
    /// The compare-and-set update of a run's state, with the table's column
    /// names; only task runs wait for a next attempt (`?12`).
    fn set_state_sql(self) -> String {
        let (table, output, attempts, next_attempt) = match self {
            RunTable::Flow => ("flow_runs", "result", "attempt", ""),
            RunTable::Task => ("task_runs", "output", "attempts", ", next_attempt_us = ?12"),
        };
        format!(
            "UPDATE {table} SET state = ?3, message = CASE WHEN ?3 IN ('Completed', 'Running') THEN ?4 ELSE coalesce(?4, message) END, failure_kind = ?5,
                {output} = coalesce(?6, {output}), {attempts} = coalesce(?7, {attempts}),
                fuel_used = coalesce(?8, fuel_used), peak_memory = coalesce(?9, peak_memory),
                started_us = CASE WHEN ?3 = 'Running' THEN coalesce(started_us, ?10) ELSE started_us END,
                ended_us = CASE WHEN ?11 THEN ?10 ELSE NULL END{next_attempt}
             WHERE id = ?1 AND state = ?2"
        )
    }

    /// How many of `set_state`'s parameters its update binds.
    fn set_state_parameters(self) -> usize {
        match self {
            RunTable::Flow => 11,
            RunTable::Task => 12,
        }
    }
}

/// Writes a state change to a flow or task run if the run is still in
/// `change.from`, and adds it to the run's state history.
fn set_state(
    conn: &Connection,
    table: RunTable,
    change: &StateChange,
    files: &ResultFiles,
) -> Result<(), StoreError> {
    let output = change
        .output
        .as_deref()
        .map(|o| files.deflate(o))
        .transpose()?;
    let args = params![
        change.id.as_bytes(),
        change.from.as_str(),
        change.to.as_str(),
        change.message,
        change.failure_kind.map(|k| k.as_str()),
        output,
        change.attempts,
        change.fuel_used.map(|v| v as i64),
        change.peak_memory.map(|v| v as i64),
        change.at,
        change.to.is_terminal(),
        change.next_attempt_at,
    ];
    let n = conn
        .prepare_cached(&table.set_state_sql())?
        .execute(&args[..table.set_state_parameters()])?;
    if n != 1 {
        return Err(StoreError::Conflict {
            expected: change.from,
        });
    }
    record_state(
        conn,
        change.id,
        change.at,
        change.to,
        change.message.as_deref(),
    )?;
    Ok(())
}

fn apply(conn: &Connection, write: &Write, files: &ResultFiles) -> Result<(), StoreError> {
    match write {
        Write::Component {
            digest,
            size_bytes,
            manifest,
            at,
        } => {
            conn.prepare_cached(
                "INSERT INTO components (digest, size_bytes, manifest, created_us) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (digest) DO UPDATE SET manifest = excluded.manifest",
            )?
            .execute(params![digest.as_str(), *size_bytes as i64, manifest, at])?;
        }
        Write::NewFlowRun(run) => {
            conn.prepare_cached(
                "INSERT INTO flow_runs (id, parent_flow_run, component, flow_name, params, state, attempt, host, created_us, started_us,
                    deployment, tags, scheduled_us, work_pool, work_queue, secret_grants, lease_holder, lease_epoch, lease_expires_us)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, CASE WHEN ?6 = 'Running' THEN ?9 END, ?10, ?11, ?12, ?13, ?14, ?15,
                    ?16, CASE WHEN ?16 IS NULL THEN 0 ELSE 1 END, ?17)",
            )?
            .execute(params![
                run.id.as_bytes(),
                run.parent_flow_run.as_ref().map(|p| p.as_bytes().to_vec()),
                run.component.as_str(),
                run.flow_name,
                files.deflate(&run.params)?,
                run.state.as_str(),
                run.attempt,
                run.host,
                run.at,
                run.deployment,
                tags_text(&run.tags),
                run.scheduled_at,
                run.work_pool,
                run.work_queue,
                tags_text(&run.secret_grants),
                run.lease.as_ref().map(|l| l.holder.as_str()),
                run.lease.as_ref().map(|l| l.expires_at),
            ])?;
            record_state(conn, run.id.0, run.at, run.state, None)?;
        }
        Write::NewTaskRun(run) => {
            let (cached_from, output) = match &run.cached_from {
                Some((from, output)) => (Some(from.as_bytes().to_vec()), Some(output.as_str())),
                None => (None, None),
            };
            conn.prepare_cached(
                "INSERT INTO task_runs (id, flow_run, call_seq, task_name, input, output, state, cache_key, cached_from,
                    host, created_us, started_us, ended_us, input_sha256)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11,
                    CASE WHEN ?7 = 'Running' THEN ?11 END, CASE WHEN ?7 = 'Cached' THEN ?11 END, ?12)",
            )?
            .execute(params![
                run.id.as_bytes(),
                run.flow_run.as_bytes(),
                run.call_seq as i64,
                run.task_name,
                files.deflate(&run.input)?,
                output.map(|o| files.deflate(o)).transpose()?,
                run.state.as_str(),
                run.cache_key,
                cached_from,
                run.host,
                run.at,
                run.input_sha256,
            ])?;
            record_state(conn, run.id.0, run.at, run.state, None)?;
        }
        Write::FlowRunState(change) => set_state(conn, RunTable::Flow, change, files)?,
        Write::TaskRunState(change) => set_state(conn, RunTable::Task, change, files)?,
        Write::TaskAttempt(a) => {
            let (kind, message) = match &a.failure {
                Some((kind, message)) => (Some(kind.as_str()), Some(message.as_str())),
                None => (None, None),
            };
            conn.prepare_cached(
                "INSERT INTO task_attempts (task_run, attempt, started_us, ended_us, fuel_used, peak_memory, failure_kind, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                a.task_run.as_bytes(),
                a.attempt,
                a.started_at,
                a.ended_at,
                a.fuel_used as i64,
                a.peak_memory as i64,
                kind,
                message,
            ])?;
        }
        Write::PutObject {
            kind,
            name,
            body,
            at,
        } => {
            conn.prepare_cached(
                "INSERT INTO objects (kind, name, body, created_us, updated_us) VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT (kind, name) DO UPDATE SET body = excluded.body, updated_us = excluded.updated_us",
            )?
            .execute(params![kind.as_str(), name, body, at])?;
        }
        Write::DeleteObject { kind, name } => {
            let n = conn
                .prepare_cached("DELETE FROM objects WHERE kind = ?1 AND name = ?2")?
                .execute(params![kind.as_str(), name])?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    what: kind.what(),
                    id: name.clone(),
                });
            }
        }
        Write::PlaceRun {
            id,
            work_pool,
            work_queue,
            scheduled_at,
        } => {
            let n = conn
                .prepare_cached(
                    "UPDATE flow_runs SET work_pool = ?2, work_queue = ?3, scheduled_us = ?4 WHERE id = ?1",
                )?
                .execute(params![id.as_bytes(), work_pool, work_queue, scheduled_at])?;
            if n != 1 {
                return Err(StoreError::NotFound {
                    what: "flow run",
                    id: id.to_string(),
                });
            }
        }
        Write::EnqueueDelivery {
            automation,
            flow_run,
            event,
            payload,
            at,
        } => {
            conn.prepare_cached(
                "INSERT INTO automation_deliveries (automation, flow_run, event, payload, status, next_attempt_us, created_us)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5) ON CONFLICT DO NOTHING",
            )?
            .execute(params![automation, flow_run.as_bytes(), event, payload, at])?;
        }
        Write::DeliveryAttempt {
            id,
            status,
            next_attempt_at,
            error,
            response_code,
            at,
        } => {
            conn.prepare_cached(
                "UPDATE automation_deliveries SET status = ?2, attempts = attempts + 1, next_attempt_us = ?3,
                    last_error = ?4, response_code = ?5,
                    delivered_us = CASE WHEN ?2 = 'delivered' THEN ?6 END
                 WHERE id = ?1 AND status = 'pending'",
            )?
            .execute(params![id, status.as_str(), next_attempt_at, error, response_code, at])?;
        }
        Write::ScheduleSlot {
            deployment,
            schedule_key,
            at,
            flow_run,
        } => {
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO schedule_slots (deployment, schedule_key, scheduled_us, flow_run) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT DO NOTHING",
                )?
                .execute(params![deployment, schedule_key, at, flow_run.as_bytes()])?;
            if inserted == 0 {
                return Err(StoreError::SlotTaken {
                    deployment: deployment.clone(),
                    schedule_key: schedule_key.clone(),
                    at: *at,
                });
            }
        }
        Write::DropScheduledRuns {
            deployment,
            keep,
            after,
        } => {
            let keep = serde_json::to_string(keep).unwrap_or_else(|_| "[]".into());
            let doomed =
                "SELECT s.flow_run FROM schedule_slots s JOIN flow_runs f ON f.id = s.flow_run
                 WHERE s.deployment = ?1 AND s.scheduled_us > ?3 AND f.state = 'Scheduled'
                   AND s.schedule_key NOT IN (SELECT value FROM json_each(?2))";
            for sql in [
                format!("DELETE FROM run_states WHERE run_id IN ({doomed})"),
                format!("DELETE FROM flow_runs WHERE id IN ({doomed})"),
            ] {
                conn.prepare_cached(&sql)?
                    .execute(params![deployment, keep, after])?;
            }
            // Slots whose runs are gone: the schedule may make them again.
            conn.prepare_cached(
                "DELETE FROM schedule_slots WHERE deployment = ?1 AND scheduled_us > ?3
                   AND schedule_key NOT IN (SELECT value FROM json_each(?2))
                   AND NOT EXISTS (SELECT 1 FROM flow_runs f WHERE f.id = schedule_slots.flow_run)",
            )?
            .execute(params![deployment, keep, after])?;
        }
        Write::RequestCancel { id, at } => {
            let n = conn
                .prepare_cached("UPDATE flow_runs SET cancel_requested_us = coalesce(cancel_requested_us, ?2) WHERE id = ?1")?
                .execute(params![id.as_bytes(), at])?;
            if n != 1 {
                return Err(StoreError::NotFound {
                    what: "flow run",
                    id: id.to_string(),
                });
            }
        }
        Write::TakeLease {
            id,
            holder,
            expires_at,
        } => {
            let n = conn
                .prepare_cached(
                    "UPDATE flow_runs SET lease_holder = ?2, lease_epoch = lease_epoch + 1, lease_expires_us = ?3 WHERE id = ?1",
                )?
                .execute(params![id.as_bytes(), holder, expires_at])?;
            if n != 1 {
                return Err(StoreError::NotFound {
                    what: "flow run",
                    id: id.to_string(),
                });
            }
        }
        Write::RenewLeases { holder, expires_at } => {
            conn.prepare_cached(&format!(
                "UPDATE flow_runs SET lease_expires_us = ?2 WHERE lease_holder = ?1 AND {UNFINISHED}"
            ))?
            .execute(params![holder, expires_at])?;
        }
        Write::ExtendLeases { ids, until } => {
            let mut stmt = conn.prepare_cached(
                "UPDATE flow_runs SET lease_expires_us = max(coalesce(lease_expires_us, 0), ?2) WHERE id = ?1",
            )?;
            for id in ids {
                stmt.execute(params![id.as_bytes(), until])?;
            }
        }
        Write::RenewLease {
            id,
            holder,
            epoch,
            expires_at,
        } => {
            let n = conn
                .prepare_cached(&format!(
                    "UPDATE flow_runs SET lease_expires_us = ?4
                     WHERE id = ?1 AND lease_holder = ?2 AND lease_epoch = ?3 AND {UNFINISHED}"
                ))?
                .execute(params![id.as_bytes(), holder, *epoch as i64, expires_at])?;
            if n != 1 {
                return Err(StoreError::LeaseLost {
                    id: *id,
                    holder: holder.clone(),
                    epoch: *epoch,
                });
            }
        }
        Write::CheckLease { id, holder, epoch } => {
            let held: Option<(Option<String>, i64, String)> = conn
                .prepare_cached(
                    "SELECT lease_holder, lease_epoch, state FROM flow_runs WHERE id = ?1",
                )?
                .query_row([id.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            let holds = held.is_some_and(|(h, e, state)| {
                h.as_deref() == Some(holder.as_str())
                    && e as u64 == *epoch
                    && state.parse::<RunState>().is_ok_and(|s| !s.is_terminal())
            });
            if !holds {
                return Err(StoreError::LeaseLost {
                    id: *id,
                    holder: holder.clone(),
                    epoch: *epoch,
                });
            }
        }
        Write::UpsertFlowRun(run) => {
            let params_text = files.deflate(&run.params)?;
            let result = run
                .result
                .as_deref()
                .map(|r| files.deflate(r))
                .transpose()?;
            conn.prepare_cached(
                "INSERT INTO flow_runs (id, parent_flow_run, component, flow_name, params, state, message, failure_kind,
                    result, attempt, host, created_us, started_us, ended_us, fuel_used, peak_memory,
                    deployment, tags, scheduled_us, work_pool, work_queue)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, message = excluded.message,
                    failure_kind = excluded.failure_kind, result = excluded.result, attempt = excluded.attempt,
                    host = excluded.host, started_us = excluded.started_us, ended_us = excluded.ended_us,
                    fuel_used = excluded.fuel_used, peak_memory = excluded.peak_memory
                 WHERE flow_runs.state NOT IN ('Completed', 'Cached', 'Failed', 'Cancelled', 'Crashed', 'TimedOut')",
            )?
            .execute(params![
                run.id.as_bytes(),
                run.parent_flow_run.as_ref().map(|p| p.as_bytes().to_vec()),
                run.component,
                run.flow_name,
                params_text,
                run.state.as_str(),
                run.message,
                run.failure_kind.map(|k| k.as_str()),
                result,
                run.attempt,
                run.host,
                run.created_at,
                run.started_at,
                run.ended_at,
                run.fuel_used as i64,
                run.peak_memory as i64,
                run.deployment,
                tags_text(&run.tags),
                run.scheduled_at,
                run.work_pool,
                run.work_queue,
            ])?;
            let at = run.ended_at.or(run.started_at).unwrap_or(run.created_at);
            record_state(conn, run.id.0, at, run.state, run.message.as_deref())?;
        }
        Write::UpsertTaskRun(task) => {
            let input = files.deflate(&task.input)?;
            let output = task
                .output
                .as_deref()
                .map(|o| files.deflate(o))
                .transpose()?;
            conn.prepare_cached(
                "INSERT INTO task_runs (id, flow_run, call_seq, task_name, input, output, state, failure_kind, message,
                    attempts, fuel_used, peak_memory, created_us, started_us, ended_us, next_attempt_us, cached_from,
                    host, input_sha256)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)
                 ON CONFLICT (id) DO UPDATE SET output = excluded.output, state = excluded.state,
                    failure_kind = excluded.failure_kind, message = excluded.message, attempts = excluded.attempts,
                    fuel_used = excluded.fuel_used, peak_memory = excluded.peak_memory,
                    started_us = excluded.started_us, ended_us = excluded.ended_us,
                    next_attempt_us = excluded.next_attempt_us, host = excluded.host",
            )?
            .execute(params![
                task.id.as_bytes(),
                task.flow_run.as_bytes(),
                task.call_seq as i64,
                task.task_name,
                input,
                output,
                task.state.as_str(),
                task.failure_kind.map(|k| k.as_str()),
                task.message,
                task.attempts,
                task.fuel_used as i64,
                task.peak_memory as i64,
                task.created_at,
                task.started_at,
                task.ended_at,
                task.next_attempt_at,
                task.cached_from.map(|c| c.as_bytes().to_vec()),
                task.host,
                task.input_sha256,
            ])?;
            let at = task.ended_at.or(task.started_at).unwrap_or(task.created_at);
            record_state(conn, task.id.0, at, task.state, task.message.as_deref())?;
        }
        Write::ImportLogs(lines) => {
            let mut stmt = conn.prepare_cached(
                "INSERT OR IGNORE INTO logs (flow_run, task_run, at_us, level, message, origin) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (origin, line) in lines {
                stmt.execute(params![
                    line.flow_run.as_bytes(),
                    line.task_run.as_ref().map(|t| t.as_bytes().to_vec()),
                    line.at,
                    line.level as u8,
                    line.message,
                    origin,
                ])?;
            }
        }
        Write::ForgetFlowRun(id) => {
            conn.prepare_cached("DELETE FROM logs WHERE flow_run = ?1")?
                .execute([id.as_bytes()])?;
            conn.prepare_cached("DELETE FROM flow_runs WHERE id = ?1")?
                .execute([id.as_bytes()])?;
        }
        Write::Logs(lines) => {
            let mut stmt = conn.prepare_cached(
                "INSERT INTO logs (flow_run, task_run, at_us, level, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for line in lines {
                stmt.execute(params![
                    line.flow_run.as_bytes(),
                    line.task_run.as_ref().map(|t| t.as_bytes().to_vec()),
                    line.at,
                    line.level as u8,
                    line.message,
                ])?;
            }
        }
    }
    Ok(())
}

fn record_state(
    conn: &Connection,
    run: uuid::Uuid,
    at: TimestampMicros,
    state: RunState,
    message: Option<&str>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO run_states (run_id, at_us, state, message) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![run.as_bytes(), at, state.as_str(), message])?;
    Ok(())
}

#[cfg(test)]
mod tests;
