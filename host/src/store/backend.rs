//! The store interface: what every backend (SQLite today) does, in a few
//! families of operations. Callers reach them through [`Store`](super::Store),
//! which derefs to `dyn Backend`.

use super::*;

/// Writes: units of [`Write`]s, each applied atomically.
pub trait Writes {
    /// Applies writes atomically; the ticket resolves when they are durable.
    fn submit(&self, writes: Vec<Write>) -> Ticket;
    /// Queues writes that nobody waits for (logs, intermediate states).
    fn submit_detached(&self, writes: Vec<Write>);
    /// Queues writes that the caller will wait for, without committing them
    /// yet, so that they join a larger commit: the caller calls
    /// [`Writes::commit_queued`] before it waits on the ticket. A backend
    /// without group commit commits them at once.
    fn submit_queued(&self, writes: Vec<Write>) -> Ticket {
        self.submit(writes)
    }
    /// Commits what [`Writes::submit_queued`] left queued (with whatever
    /// else is queued), unless another caller is committing: it takes them.
    fn commit_queued(&self) {}
    /// Commits everything queued so far; later writes fail with `WriterGone`.
    fn close(&self);
}

/// Flow runs: one, a page, the due, the held and the unfinished, and counts.
pub trait FlowRuns {
    fn flow_run(&self, id: FlowRunId) -> Result<FlowRunRow, StoreError>;
    /// Whether someone asked for this run to be cancelled.
    fn cancel_requested(&self, id: FlowRunId) -> Result<bool, StoreError>;
    /// Finds a flow run by a prefix of its id, as users type them.
    fn resolve_flow_run(&self, text: &str) -> Result<FlowRunId, StoreError>;
    fn list_flow_runs(&self, filter: &FlowRunFilter) -> Result<Vec<FlowRunRow>, StoreError>;
    /// Scheduled runs still waiting though they were due before `before`.
    fn overdue_runs(
        &self,
        before: TimestampMicros,
        limit: usize,
    ) -> Result<Vec<FlowRunRow>, StoreError>;
    /// Scheduled runs of these pools due by `now`, and Late ones, oldest
    /// first. Filtered by pool in SQL, so runs waiting for other pools (or
    /// stuck behind a limit) never crowd out the ones asked for.
    fn due_runs(
        &self,
        pools: &[String],
        now: TimestampMicros,
        limit: usize,
    ) -> Result<Vec<FlowRunRow>, StoreError>;
    /// Top-level runs that ended after `after` (up to `limit`, oldest first).
    fn runs_ended_after(
        &self,
        after: TimestampMicros,
        limit: usize,
    ) -> Result<Vec<FlowRunRow>, StoreError>;
    /// Top-level runs in `state` created before `before` (Late ones, or
    /// Running ones that may be stuck).
    fn runs_in_state(&self, state: RunState, limit: usize) -> Result<Vec<FlowRunRow>, StoreError>;
    fn last_scheduled_at(&self, deployment: &str) -> Result<Option<TimestampMicros>, StoreError>;
    /// Runs of a work pool (and, if given, one of its queues) that have not
    /// ended, for their concurrency limits.
    fn active_runs_of_pool(&self, pool: &str, queue: Option<&str>) -> Result<u64, StoreError>;
    /// Runs of a deployment that have not ended (for its concurrency limit).
    fn active_runs_of_deployment(&self, deployment: &str) -> Result<u64, StoreError>;
    /// Flow runs per state, for metrics.
    fn count_flow_runs_by_state(&self) -> Result<Vec<(RunState, u64)>, StoreError>;
    /// Flow runs created at or after `since`, per hour since the epoch and
    /// state, oldest hour first: the UI's dashboard (its counts and its
    /// throughput chart) from one pass over an index.
    fn count_flow_runs_per_hour_and_state_since(
        &self,
        since: TimestampMicros,
    ) -> Result<Vec<(i64, RunState, u64)>, StoreError>;
    /// Unfinished runs that anyone holds (their holders may be checked for life).
    fn held_runs(&self) -> Result<Vec<FlowRunRow>, StoreError>;
    /// Subflow runs below `id`, at any depth, deepest last.
    fn descendants(&self, id: FlowRunId) -> Result<Vec<FlowRunRow>, StoreError>;
    /// Unfinished subflow runs below `id`, at any depth, deepest last.
    fn unfinished_descendants(&self, id: FlowRunId) -> Result<Vec<FlowRunRow>, StoreError> {
        let mut runs = self.descendants(id)?;
        runs.retain(|r| {
            matches!(
                r.state,
                RunState::Pending | RunState::Running | RunState::Retrying | RunState::Cancelling
            )
        });
        Ok(runs)
    }
    /// Runs that were left unfinished (for recovery after a crash).
    fn unfinished_flow_runs(&self) -> Result<Vec<FlowRunRow>, StoreError>;
}

/// Task runs, their attempts, state histories, the cache, and log lines.
pub trait TaskRuns {
    fn task_run(&self, id: TaskRunId) -> Result<TaskRunRow, StoreError>;
    fn task_runs(&self, flow_run: FlowRunId) -> Result<Vec<TaskRunRow>, StoreError>;
    fn task_attempts(&self, task_run: TaskRunId) -> Result<Vec<AttemptRecord>, StoreError>;
    /// The state history of a flow run or task run, oldest first.
    fn state_history(
        &self,
        run: uuid::Uuid,
    ) -> Result<Vec<(TimestampMicros, RunState, Option<String>)>, StoreError>;
    /// The newest unexpired output recorded for a cache key.
    fn cached_output(
        &self,
        cache_key: &str,
        not_before: TimestampMicros,
    ) -> Result<Option<(TaskRunId, String)>, StoreError>;
    /// Log lines of a flow run (and its tasks) after `after_id`, oldest first.
    fn logs(
        &self,
        flow_run: FlowRunId,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<LogRow>, StoreError>;
}

/// Named objects, components, schedule slots and webhook deliveries.
pub trait Objects {
    /// A component's bytes, where the backend keeps them for every server
    /// (PostgreSQL); `None` where they are only files beside it (SQLite).
    fn component_wasm(&self, digest: &ComponentDigest) -> Result<Option<Vec<u8>>, StoreError>;
    /// One named object, if it exists.
    fn object(&self, kind: ObjectKind, name: &str) -> Result<Option<ObjectRow>, StoreError>;
    /// All objects of a kind, by name.
    fn objects(&self, kind: ObjectKind) -> Result<Vec<ObjectRow>, StoreError>;
    /// Uploaded components, newest first: (digest, size, manifest).
    fn components(&self) -> Result<Vec<ComponentRow>, StoreError>;
    /// One uploaded component, if it is stored.
    fn component(&self, digest: &ComponentDigest) -> Result<Option<ComponentRow>, StoreError>;
    fn component_manifest(&self, digest: &ComponentDigest) -> Result<Option<Manifest>, StoreError> {
        Ok(self.component(digest)?.map(|row| row.manifest))
    }
    /// The latest time a schedule of a deployment made a run for.
    fn last_schedule_slot(
        &self,
        deployment: &str,
        schedule_key: &str,
    ) -> Result<Option<TimestampMicros>, StoreError>;
    /// Deployments that have runs made ahead by their schedules, waiting
    /// after `after` (to drop those of deployments that are gone).
    fn deployments_with_slots_after(
        &self,
        after: TimestampMicros,
    ) -> Result<Vec<String>, StoreError>;
    /// The latest scheduled time among a deployment's runs.
    /// Pending deliveries due by `now`, oldest first.
    fn due_deliveries(
        &self,
        now: TimestampMicros,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>, StoreError>;
    /// An automation's deliveries, newest first.
    fn deliveries(&self, automation: &str, limit: usize) -> Result<Vec<DeliveryRow>, StoreError>;
    /// Slots of concurrency limits held at `now`, oldest first.
    fn held_slots(&self, now: TimestampMicros) -> Result<Vec<SlotRow>, StoreError>;
    /// Each rate limit's mark: when its bucket would be empty.
    fn rate_marks(&self) -> Result<Vec<(String, TimestampMicros)>, StoreError>;
    /// A deployment's saved versions, oldest first (they outlive a delete,
    /// so a deployment made again under the name goes on numbering).
    fn deployment_versions(
        &self,
        deployment: &str,
    ) -> Result<Vec<DeploymentVersionRow>, StoreError>;
}

/// Pruning, retention and counts.
pub trait Housekeeping {
    /// Deletes flow runs (with their tasks, attempts, states and logs) that
    /// ended before `ended_before`, then result files no row refers to.
    ///
    /// Files go only after the rows' deletion has committed (a crash in
    /// between leaves unreferenced files, never rows without their files),
    /// and only files that no row refers to, whether old or new, in any
    /// process: see [`Store::collect_result_files`].
    fn prune(&self, ended_before: TimestampMicros) -> Result<PruneReport, StoreError>;
    /// Deletes log lines written before `before`, whatever their run: the
    /// server's log retention. Runs and their records stay. Returns the lines deleted.
    fn prune_logs_older_than(&self, before: TimestampMicros) -> Result<u64, StoreError>;
    /// Counts rows per table, for `host version --verbose` and benchmarks.
    fn count(&self, table: StoreTable) -> Result<u64, StoreError>;
    /// How hard a commit tries to reach the disk.
    fn disk_sync(&self) -> Result<DiskSync, StoreError>;
    /// The schema version the database is at, and the newest this host knows.
    fn schema_version(&self) -> Result<(u64, u64), StoreError>;
    /// Where the data lives, for people: a file path or a URL without its password.
    fn location(&self) -> String;
    /// Bytes the database takes: SQLite's pages (the WAL's included),
    /// PostgreSQL's `pg_database_size`. Result files beside it are not counted.
    fn size_bytes(&self) -> Result<u64, StoreError>;
    /// Gives back what the connections cache (pages, prepared statements)
    /// and no one is using now: an idle remote host. The next queries read
    /// and prepare again. Does nothing where there is nothing to give.
    fn release_memory(&self) {}
}

/// What several servers sharing one database agree on.
pub trait Coordination {
    /// Holds the admission lock until the guard drops: admitting a run (a
    /// limit counted, then the run moved) is one step across every server
    /// sharing the database. Within one process the dispatcher's own mutex
    /// comes first. SQLite has one server: a no-op there.
    fn lock_admission(&self) -> Result<Exclusive, StoreError>;
    /// Whether this process leads `role` (the scheduler, the outbox): the
    /// first to ask holds it until its connection to the database ends,
    /// then another may. Always true with SQLite.
    fn leads(&self, role: Role) -> Result<bool, StoreError>;
    /// Changes as they commit, for followers (event streams, claimers):
    /// SQLite's own process's; every server's under PostgreSQL
    /// (`LISTEN/NOTIFY`). A follower that lags is told so and reads again.
    fn changes(&self) -> tokio::sync::broadcast::Receiver<Change>;
    /// Whether other servers write to this database too (their changes
    /// arrive through [`Coordination::changes`] only).
    fn shared(&self) -> bool;
}

/// Everything a backend does.
pub trait Backend:
    Writes + FlowRuns + TaskRuns + Objects + Housekeeping + Coordination + Send + Sync
{
}

impl<T> Backend for T where
    T: Writes + FlowRuns + TaskRuns + Objects + Housekeeping + Coordination + Send + Sync
{
}
