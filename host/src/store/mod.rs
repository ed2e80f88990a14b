//! Recording: runs, task runs, states, logs, objects and components, behind
//! one interface ([`Backend`]) with two backends: SQLite ([`sqlite`], the
//! embedded default, the only module that names rusqlite) and PostgreSQL
//! ([`pg`], for several servers sharing one database).
//!
//! Rules every backend keeps:
//! - a `Vec<Write>` is one unit, applied atomically: a failed compare-and-set
//!   fails its unit alone, never its neighbours in a group commit;
//! - state columns are only written with compare-and-set (`WHERE state = ?`);
//!   whether a transition is allowed is `orchestrate`'s decision, made before
//!   the write is queued;
//! - a [`Ticket`] resolves only when its unit is durable (a crash after it
//!   loses nothing the caller saw);
//! - reads never see half a unit.

mod backend;
mod files;
pub mod pg;
mod results;
mod rows;
mod sql;
mod sqlite;
mod writes;

pub use backend::{Backend, Coordination, FlowRuns, Housekeeping, Objects, TaskRuns, Writes};
pub use files::{ComponentFileError, ComponentFiles};
pub use pg::PostgresStore;
pub use results::{DEFAULT_RESULT_THRESHOLD, ResultFiles};
pub use rows::*;
pub use sqlite::SqliteStore;
pub use writes::*;

use crate::model::{
    ComponentDigest, FlowRunId, LogLevel, Manifest, RunState, TaskRunId, TimestampMicros,
};
use std::path::{Path, PathBuf};
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {message}")]
    Open { path: PathBuf, message: String },
    /// The database server could not be reached or refused us.
    #[error("database {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The connection to the database server was lost (a restart, a network
    /// cut); the operation did not happen.
    #[error("lost the connection to the database: {0}")]
    ConnectionLost(String),
    /// The disk (or the database server's disk) has no room: nothing of the
    /// operation was written, and service returns once space does.
    #[error(
        "no space left for the database ({0}); free disk space, then retry: nothing was written"
    )]
    Full(String),
    /// The database refused or failed an operation (the backend's own words).
    #[error("database error: {0}")]
    Database(String),
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
    #[error(
        "deployment '{deployment}' got version {version} from another deploy at the same moment; deploy again"
    )]
    VersionTaken { deployment: String, version: u32 },
    /// A `TakeSlots` found too few free slots of `limit`; a rate limit says
    /// how long until enough come back.
    #[error("concurrency limit '{limit}' has no free slot")]
    NoSlot {
        limit: String,
        retry_after_us: Option<i64>,
    },
}

impl StoreError {
    /// The same error for another caller (a failed batch fails each of its units).
    pub(crate) fn clone_message(&self) -> StoreError {
        StoreError::Database(self.to_string())
    }
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

/// How to open a [`Store`]; `Default` is what [`Store::open`] uses.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    pub durability: DiskSync,
    /// A PostgreSQL URL (`postgres://user@host:port/db`): the store lives
    /// there instead of in the SQLite file (the `server.database` setting).
    pub database: Option<String>,
    /// Leave the schema as it is (`host db check`); otherwise pending
    /// migrations are applied at open.
    pub skip_migrations: bool,
}

/// Resolves when the writes it was handed out for are committed.
pub struct Ticket(oneshot::Receiver<Result<(), StoreError>>);

impl Ticket {
    /// A ticket and the sender that resolves it (for backends).
    pub(crate) fn new() -> (oneshot::Sender<Result<(), StoreError>>, Ticket) {
        let (done, rx) = oneshot::channel();
        (done, Ticket(rx))
    }
}

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

/// A lock held until this drops (see [`Coordination::lock_admission`]).
pub struct Exclusive(Option<Box<dyn FnOnce() + Send>>);

impl Exclusive {
    /// A lock with nothing to release (one server: the process's own mutex suffices).
    pub fn uncontended() -> Exclusive {
        Exclusive(None)
    }

    pub(crate) fn releasing(release: impl FnOnce() + Send + 'static) -> Exclusive {
        Exclusive(Some(Box::new(release)))
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        if let Some(release) = self.0.take() {
            release();
        }
    }
}

/// Work that one server at a time does for all (see [`Coordination::leads`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Makes scheduled runs, marks late ones, crashes runs whose lease ran out.
    Scheduler,
    /// Finds run events and delivers the automations' webhooks.
    Outbox,
}

/// What a user typed for a flow run: a whole id, or a hex prefix of one (at
/// least 4 digits, dashes allowed) for a backend to look up, in lowercase.
pub(crate) enum RunIdText {
    Whole(FlowRunId),
    Prefix(String),
}

impl RunIdText {
    pub(crate) fn parse(text: &str) -> Result<RunIdText, StoreError> {
        if let Ok(id) = text.parse::<FlowRunId>() {
            return Ok(RunIdText::Whole(id));
        }
        let prefix: String = text
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .collect::<String>()
            .to_lowercase();
        if prefix.len() < 4 || prefix.len() != text.replace('-', "").len() {
            return Err(Self::not_found(text));
        }
        Ok(RunIdText::Prefix(prefix))
    }

    /// The run a prefix lookup (`LIMIT 2`) found: exactly one, or why not.
    pub(crate) fn one(text: &str, found: &[[u8; 16]]) -> Result<FlowRunId, StoreError> {
        match found {
            [one] => Ok(FlowRunId::from_bytes(*one)),
            [] => Err(Self::not_found(text)),
            _ => Err(StoreError::Corrupt(format!(
                "the id prefix '{text}' matches more than one flow run; type more of it"
            ))),
        }
    }

    fn not_found(text: &str) -> StoreError {
        StoreError::NotFound {
            what: "flow run",
            id: text.to_string(),
        }
    }
}

/// The store: a backend behind the [`Backend`] interface. Its operations
/// are the backend's (`Store` derefs to `dyn Backend`).
pub struct Store {
    backend: Box<dyn Backend>,
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and migrates
    /// it. Payloads over 64 KiB go to files in `results/` beside the database.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store::new(SqliteStore::open(path)?))
    }

    /// [`Store::open`] with options (the durability of commits).
    /// With `options.database`, the PostgreSQL database it names instead.
    pub fn open_with_options(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        match &options.database {
            Some(url) => Ok(Store::new(PostgresStore::open_with(
                url,
                !options.skip_migrations,
            )?)),
            None => Ok(Store::new(SqliteStore::open_with_options(path, options)?)),
        }
    }

    /// [`Store::open`] with its own result files (a threshold for tests).
    pub fn open_with(path: &Path, results: ResultFiles) -> Result<Store, StoreError> {
        Ok(Store::new(SqliteStore::open_with(path, results)?))
    }

    pub fn new(backend: impl Backend + 'static) -> Store {
        Store {
            backend: Box::new(backend),
        }
    }
}

impl std::ops::Deref for Store {
    type Target = dyn Backend;
    fn deref(&self) -> &Self::Target {
        &*self.backend
    }
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

#[cfg(test)]
pub(crate) mod tests;
