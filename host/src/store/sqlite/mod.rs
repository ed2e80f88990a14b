//! The SQLite backend: the only code that names rusqlite.
//!
//! WAL mode. Writes are queued and committed in groups: many units of work
//! in one transaction, each in its own savepoint, so a failed compare-and-set
//! rolls back that unit alone. A caller that needs a write to be durable
//! before it goes on (a completed task's result) commits inline or has the
//! current committer do it, and awaits its [`Ticket`]; one that can wait a
//! moment queues it (`submit_queued`) and commits later, with what others
//! queued meanwhile. Everything else is committed by a flusher thread.
//! Reads use connections of their own.
//!
//! Payloads over the result threshold are kept in content-addressed files
//! beside the database (`results/`), written inside the write transaction.

mod apply;
mod housekeeping;
mod objects;
mod rows;
mod runs;
mod schema;
mod tasks;

use super::files;
use super::sql::{DELIVERY_SELECT, FLOW_RUN_SELECT, TASK_RUN_SELECT, UNFINISHED, tags_text};
use super::*;
use apply::apply_batch;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::oneshot;

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
    /// Commits were made since the last checkpoint.
    unfolded: AtomicBool,
    /// The WAL's length in pages after the last commit (SQLite's WAL hook).
    wal_pages: Arc<AtomicU32>,
    /// The flusher was told the WAL passed its bound.
    fold_asked: AtomicBool,
    results: Arc<ResultFiles>,
    changes: tokio::sync::broadcast::Sender<Change>,
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
                // The first commit since the last checkpoint tells the
                // flusher there is something to fold back, and so does a WAL
                // grown past its bound (under the queue's lock, so the
                // flusher cannot miss it between look and sleep).
                let full = self.wal_pages.load(Ordering::Acquire) >= WAL_PAGES_TO_FOLD;
                if !self.unfolded.swap(true, Ordering::AcqRel)
                    || (full && !self.fold_asked.swap(true, Ordering::AcqRel))
                {
                    let _queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                    self.wake.notify_one();
                }
                if self.changes.receiver_count() > 0 {
                    let mut sent = std::collections::HashSet::new();
                    for (job, result) in batch.iter().zip(&outcomes) {
                        if result.is_ok() {
                            for change in Change::of(&job.writes) {
                                if sent.insert(change) {
                                    let _ = self.changes.send(change);
                                }
                            }
                        }
                    }
                }
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

    /// Whether the WAL should be folded back now: commits came since the
    /// last checkpoint and that was a second ago (so the first commit after
    /// an idle spell is folded back at once), or the WAL passed its bound
    /// (at most every [`FOLD_GAP`]).
    fn fold_due(&self, last_checkpoint: std::time::Instant) -> bool {
        let since = last_checkpoint.elapsed();
        self.unfolded.load(Ordering::Acquire)
            && (since >= CHECKPOINT_EVERY
                || (since >= FOLD_GAP
                    && self.wal_pages.load(Ordering::Acquire) >= WAL_PAGES_TO_FOLD))
    }

    /// Copies the WAL's frames into the database, so that the next commit
    /// starts the WAL over.
    ///
    /// SQLite starts the WAL over only when every frame was copied back, and
    /// a checkpoint copies the frames that were there when it began: under
    /// steady commits that is never all of them, and a 100,000-task flow
    /// left a 1.2 GB WAL that every read searched through (sequential tasks
    /// slowed from 33k to 14k/s). So the first pass runs beside the
    /// commits, and when the WAL is long, a second pass holds the write
    /// connection: it copies only what the first pass missed. Commits wait
    /// for it (an fsync or two); their jobs queue and are committed right
    /// after.
    fn checkpoint(&self, checkpointer: &Connection) {
        let pass = || {
            checkpointer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })
        };
        // `log` is the WAL's length when the pass began (frames committed
        // during the pass are not counted). A short WAL is left to start
        // over at the next quiet moment: commits do not wait for it.
        if let Ok((log, _)) = pass()
            && log >= WAL_PAGES_TO_HOLD
        {
            let _hold = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            let _ = pass();
        }
    }

    /// The flusher thread: commits detached jobs as they come, and folds the
    /// WAL back into the database every [`CHECKPOINT_EVERY`] while commits
    /// come in, until closed. It sleeps until the next job when nothing
    /// waits to be folded back, so an idle store wakes no one.
    ///
    /// Checkpoints (which fsync) happen here, on a connection of their own:
    /// a commit waits only for the short second pass (see [`Self::checkpoint`]).
    fn run_flusher(&self, checkpointer: Connection) {
        let mut last_checkpoint = std::time::Instant::now();
        loop {
            {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                while queue.jobs.is_empty() && !queue.closed {
                    if !self.unfolded.load(Ordering::Acquire) {
                        queue = self.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
                        continue;
                    }
                    if self.fold_due(last_checkpoint) {
                        break;
                    }
                    let left = CHECKPOINT_EVERY.saturating_sub(last_checkpoint.elapsed());
                    queue = self
                        .wake
                        .wait_timeout(queue, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                if queue.jobs.is_empty() && queue.closed {
                    break;
                }
            }
            if self.fold_due(last_checkpoint) {
                self.unfolded.store(false, Ordering::Release);
                self.fold_asked.store(false, Ordering::Release);
                self.wal_pages.store(0, Ordering::Release);
                self.checkpoint(&checkpointer);
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

/// The SQLite backend: a writer (inline group commit + a flusher thread)
/// and a few read connections.
pub struct SqliteStore {
    path: PathBuf,
    results: Arc<ResultFiles>,
    writer: Arc<Writer>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// A few read connections: a slow read holds one, the others serve.
    readers: Vec<Mutex<Connection>>,
}

/// Read connections per store (WAL readers do not block each other or the writer).
const READERS: usize = 4;

/// Changes a slow follower may fall behind by before it is told it lagged.
const CHANGES_BUFFER: usize = 4096;

/// The most units one transaction carries; more wait for the next commit.
const MAX_BATCH: usize = 4096;

/// Prepared statements kept per connection: more than the store has.
const STATEMENT_CACHE: usize = 256;

/// The bytes a WAL file keeps when it starts over (SQLite's
/// `journal_size_limit`).
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// How often the flusher folds the WAL back into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The WAL's length (4 KiB pages: 256 MiB) past which it is folded back
/// before the second is up. A sequential flow writes ~350 MB of WAL a
/// second (each commit writes whole pages); each checkpoint's fsync writes
/// the WAL out, so a lower bound means more of them.
const WAL_PAGES_TO_FOLD: u32 = 65536;

/// The WAL's length (4 KiB pages: 64 MiB, as `journal_size_limit`) from
/// which a checkpoint holds the commits for its second pass.
const WAL_PAGES_TO_HOLD: i64 = 16384;

/// The shortest time between two checkpoints.
const FOLD_GAP: std::time::Duration = std::time::Duration::from_millis(10);

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    /// Payloads over 64 KiB go to files in `results/` beside the database.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        Self::open_with_options(path, StoreOptions::default())
    }

    /// [`Store::open`] with options (the durability of commits).
    pub fn open_with_options(
        path: &Path,
        options: StoreOptions,
    ) -> Result<SqliteStore, StoreError> {
        let dir = path.parent().unwrap_or(Path::new(".")).join("results");
        Self::open_inner(
            path,
            ResultFiles::new(dir, DEFAULT_RESULT_THRESHOLD),
            &options,
        )
    }

    pub fn open_with(path: &Path, results: ResultFiles) -> Result<SqliteStore, StoreError> {
        Self::open_inner(path, results, &StoreOptions::default())
    }

    fn open_inner(
        path: &Path,
        results: ResultFiles,
        options: &StoreOptions,
    ) -> Result<SqliteStore, StoreError> {
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
        if !options.skip_migrations {
            schema::migrate(&mut conn).map_err(|e| open_error(&e))?;
        }
        // The flusher thread checkpoints; commits never do.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| open_error(&e))?;
        let wal_pages = Arc::new(AtomicU32::new(0));
        let heard = wal_pages.clone();
        conn.wal_hook(Some(
            move |_: &mut rusqlite::hooks::Wal, pages: std::ffi::c_int| {
                heard.store(pages.max(0) as u32, Ordering::Release);
                Ok(())
            },
        ))
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
            unfolded: Default::default(),
            wal_pages,
            fold_asked: Default::default(),
            results: results.clone(),
            changes: tokio::sync::broadcast::channel(CHANGES_BUFFER).0,
        });
        let flusher_writer = writer.clone();
        let checkpointer = connect(path, durability).map_err(|e| open_error(&e))?;
        let flusher = std::thread::Builder::new()
            .name("weir-store-flusher".into())
            .spawn(move || flusher_writer.run_flusher(checkpointer))
            .map_err(|e| open_error(&e))?;
        Ok(SqliteStore {
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
}

// ---- reads ----

impl Writes for SqliteStore {
    /// Applies writes atomically, committing inline when the connection is
    /// free; the ticket resolves when they are durable.
    fn submit(&self, writes: Vec<Write>) -> Ticket {
        let ticket = self.submit_queued(writes);
        self.writer.flush();
        ticket
    }

    fn submit_queued(&self, writes: Vec<Write>) -> Ticket {
        let (done, ticket) = Ticket::new();
        self.writer.push(Job {
            writes,
            done: Some(done),
        });
        ticket
    }

    fn commit_queued(&self) {
        self.writer.flush();
    }

    /// Queues writes that nobody waits for (logs, intermediate states).
    fn submit_detached(&self, writes: Vec<Write>) {
        if self.writer.push(Job { writes, done: None }) {
            self.writer.wake.notify_one();
        }
    }

    /// Commits everything queued so far, then stops the flusher. Later
    /// writes fail with `WriterGone`.
    fn close(&self) {
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
}

/// One server per SQLite file: its processes' own mutexes are the locks.
impl Coordination for SqliteStore {
    fn lock_admission(&self) -> Result<Exclusive, StoreError> {
        Ok(Exclusive::uncontended())
    }

    fn leads(&self, _role: Role) -> Result<bool, StoreError> {
        Ok(true)
    }

    fn changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.writer.changes.subscribe()
    }

    fn shared(&self) -> bool {
        false
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
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

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::Full(e.to_string()),
            _ => StoreError::Database(e.to_string()),
        }
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
    // When the WAL starts over, a file grown past this is cut back to it.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    // Every statement is prepared once per connection; rusqlite keeps 16 by
    // default, fewer than the writer and the readers each use, and an
    // evicted statement is parsed again on its next use.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

fn fail_job(job: Job) {
    if let Some(done) = job.done {
        let _ = done.send(Err(StoreError::WriterGone));
    }
}

#[cfg(test)]
mod tests;
