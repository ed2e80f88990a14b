//! The PostgreSQL backend: the only code that names the `postgres` driver.
//!
//! The driver's client is synchronous and runs its own small runtime, so it
//! must never be called on a thread that drives an async runtime. Each
//! connection therefore lives on a thread of its own and is handed closures:
//! a few reader threads share a queue of reads, and one writer thread commits
//! queued units in groups (one transaction, a savepoint per unit, as the
//! SQLite writer does), so callers on async threads only wait on a channel.
//!
//! Payloads are stored inline (`text`); PostgreSQL compresses large values
//! itself (TOAST), and every server sharing the database sees them.

mod apply;
mod coordination;
mod housekeeping;
mod objects;
mod rows;
mod runs;
mod schema;
mod tasks;
pub mod testing;

use super::sql::{DELIVERY_SELECT, FLOW_RUN_SELECT, TASK_RUN_SELECT, UNFINISHED, tags_text};
use super::*;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long connecting may take before the error says the database is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections serving reads.
const READERS: usize = 4;

/// The most units one transaction carries.
const MAX_BATCH: usize = 4096;

/// A read, run on a reader thread with its connection.
/// A read, run on a reader thread with its connection (or the error that
/// says why there is none).
type ReadJob = Box<dyn FnOnce(&mut Option<postgres::Client>, &Connect) + Send>;

/// Makes a connection (each thread keeps its own and makes it again when lost).
type Connect = Arc<dyn Fn() -> Result<postgres::Client, StoreError> + Send + Sync>;

/// How long a lost connection is tried again (a database restart) before
/// the operation waiting for it fails.
const RECONNECT_FOR: Duration = Duration::from_secs(30);

/// `client`, connected again if the database dropped it (a restart, a
/// network cut), trying for up to [`RECONNECT_FOR`].
fn live<'a>(
    client: &'a mut Option<postgres::Client>,
    connect: &Connect,
) -> Result<&'a mut postgres::Client, StoreError> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = None;
        apply::forget_prepared();
        let deadline = std::time::Instant::now() + RECONNECT_FOR;
        loop {
            match connect() {
                Ok(fresh) => {
                    *client = Some(fresh);
                    break;
                }
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
    client.as_mut().ok_or(StoreError::WriterGone)
}

struct Job {
    writes: Vec<Write>,
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    closed: bool,
}

/// The write side: queued units and the thread that commits them.
struct Writer {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// A store in a PostgreSQL database that several servers may share.
pub struct PostgresStore {
    /// The URL without its password, for messages.
    shown_url: String,
    writer: Arc<Writer>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    reads: Mutex<Option<mpsc::Sender<ReadJob>>>,
    reader_threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// The lock connection's queue (advisory locks; see `coordination`).
    locks: coordination::Locks,
    /// What every server commits, as the listener hears it.
    changes: tokio::sync::broadcast::Sender<Change>,
    /// Tells the listener thread to stop.
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/db`),
    /// migrates the schema (under an advisory lock, so servers starting at
    /// once apply each migration once) and starts the connection threads.
    pub fn open(url: &str) -> Result<PostgresStore, StoreError> {
        Self::open_with(url, true)
    }

    /// [`PostgresStore::open`], migrating only when `migrate`.
    pub fn open_with(url: &str, migrate: bool) -> Result<PostgresStore, StoreError> {
        let shown_url = shown(url);
        let mut config: postgres::Config = url.parse().map_err(|e| StoreError::Unreachable {
            url: shown_url.clone(),
            message: format!("not a PostgreSQL URL ({e}); expected postgres://user@host:port/db"),
        })?;
        config.connect_timeout(CONNECT_TIMEOUT);
        // Each connection is made on its own thread: the driver may not be
        // called on a thread that drives an async runtime, which a caller's may.
        let spawn = |name: String, body: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(body)
                .map_err(|e| StoreError::Unreachable {
                    url: shown_url.clone(),
                    message: e.to_string(),
                })
        };
        let connect: Connect = {
            let (config, shown_url) = (config.clone(), shown_url.clone());
            Arc::new(move || -> Result<postgres::Client, StoreError> {
                config
                    .connect(postgres::NoTls)
                    .map_err(|e| StoreError::Unreachable {
                        url: shown_url.clone(),
                        message: one_line(&e),
                    })
            })
        };

        let writer = Arc::new(Writer {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let (ready, started) = mpsc::channel::<Result<(), StoreError>>();
        let writer_thread = {
            let (writer, connect, ready) = (writer.clone(), connect.clone(), ready.clone());
            spawn(
                "weir-pg-write".into(),
                Box::new(move || {
                    let client = connect().and_then(|mut client| {
                        if migrate {
                            schema::migrate(&mut client)?;
                        }
                        Ok(client)
                    });
                    match client {
                        Ok(client) => {
                            let _ = ready.send(Ok(()));
                            writer.run(client, connect);
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    }
                }),
            )?
        };
        let store = PostgresStore {
            shown_url: shown_url.clone(),
            writer,
            writer_thread: Mutex::new(Some(writer_thread)),
            reads: Mutex::new(None),
            reader_threads: Mutex::new(Vec::new()),
            locks: Arc::new(Mutex::new(None)),
            changes: tokio::sync::broadcast::channel(CHANGES_BUFFER).0,
            closed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        {
            let (connect, changes, closed) =
                (connect.clone(), store.changes.clone(), store.closed.clone());
            spawn(
                "weir-pg-listen".into(),
                Box::new(move || listen(connect, changes, closed)),
            )?;
        }
        {
            let (jobs, queue) = mpsc::channel();
            let connect = connect.clone();
            spawn(
                "weir-pg-locks".into(),
                Box::new(move || coordination::serve(queue, move || connect())),
            )?;
            *store.locks.lock().unwrap_or_else(|p| p.into_inner()) = Some(jobs);
        }
        // Readers connect once the schema is there.
        started.recv().unwrap_or(Err(StoreError::WriterGone))?;

        let (reads, queue) = mpsc::channel::<ReadJob>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..READERS {
            let (queue, connect, ready) = (queue.clone(), connect.clone(), ready.clone());
            let thread = spawn(
                format!("weir-pg-read-{i}"),
                Box::new(move || {
                    let mut client = match connect() {
                        Ok(client) => Some(client),
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready.send(Ok(()));
                    loop {
                        let job = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            Ok(job) => job(&mut client, &connect),
                            Err(_) => break,
                        }
                    }
                }),
            )?;
            store
                .reader_threads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(thread);
        }
        *store.reads.lock().unwrap_or_else(|p| p.into_inner()) = Some(reads);
        for _ in 0..READERS {
            started.recv().unwrap_or(Err(StoreError::WriterGone))?;
        }
        Ok(store)
    }

    /// The database URL without its password.
    pub fn url(&self) -> &str {
        &self.shown_url
    }

    /// Runs `f` on a reader connection and waits for its answer.
    fn read<T: Send + 'static>(
        &self,
        f: impl Fn(&mut postgres::Client) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::channel();
        let job: ReadJob = Box::new(move |client, connect| {
            // A read on a connection the database dropped is made again on a
            // new one: it changed nothing.
            let mut answer = live(client, connect).and_then(&f);
            if matches!(answer, Err(StoreError::ConnectionLost(_))) {
                answer = live(client, connect).and_then(&f);
            }
            let _ = tx.send(answer);
        });
        let sent = match &*self.reads.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(reads) => reads.send(job).is_ok(),
            None => false,
        };
        if !sent {
            return Err(StoreError::WriterGone);
        }
        rx.recv().unwrap_or(Err(StoreError::WriterGone))
    }
}

impl Writer {
    fn push(&self, job: Job) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.closed {
            drop(queue);
            if let Some(done) = job.done {
                let _ = done.send(Err(StoreError::WriterGone));
            }
            return;
        }
        queue.jobs.push(job);
        drop(queue);
        self.wake.notify_one();
    }

    /// The writer thread: commits whatever is queued, in groups, until closed.
    fn run(&self, client: postgres::Client, connect: Connect) {
        let mut client = Some(client);
        loop {
            let batch: Vec<Job> = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                while queue.jobs.is_empty() && !queue.closed {
                    queue = self.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
                }
                if queue.jobs.is_empty() {
                    break;
                }
                let n = queue.jobs.len().min(MAX_BATCH);
                queue.jobs.drain(..n).collect()
            };
            let outcomes = self.commit(&mut client, &connect, &batch);
            for (job, result) in batch.into_iter().zip(outcomes) {
                if let Some(done) = job.done {
                    let _ = done.send(result);
                } else if let Err(e) = result {
                    tracing::warn!("a background write was not recorded: {e}");
                }
            }
        }
    }
}

impl Writer {
    /// Commits `batch`. A batch whose connection was lost before it
    /// committed did not happen: it is applied again on a new connection.
    /// Lost while committing, its outcome is unknown, and each unit says so.
    fn commit(
        &self,
        client: &mut Option<postgres::Client>,
        connect: &Connect,
        batch: &[Job],
    ) -> Vec<Result<(), StoreError>> {
        let deadline = std::time::Instant::now() + RECONNECT_FOR;
        loop {
            let outcome = match live(client, connect) {
                Ok(c) => apply::apply_batch(c, batch),
                Err(e) => return batch.iter().map(|_| Err(e.clone_message())).collect(),
            };
            match outcome {
                apply::Outcome::Done(results) => return results,
                apply::Outcome::LostBeforeCommit(e) if std::time::Instant::now() < deadline => {
                    tracing::warn!("the database connection was lost; writing again: {e}");
                    *client = None;
                }
                apply::Outcome::LostBeforeCommit(e) => {
                    return batch.iter().map(|_| Err(e.clone_message())).collect();
                }
                apply::Outcome::LostAtCommit(e) => {
                    *client = None;
                    let message = format!(
                        "the database connection was lost while committing; the write may or may not have been recorded: {e}"
                    );
                    return batch
                        .iter()
                        .map(|_| Err(StoreError::ConnectionLost(message.clone())))
                        .collect();
                }
            }
        }
    }
}

impl Writes for PostgresStore {
    fn submit(&self, writes: Vec<Write>) -> Ticket {
        let (done, ticket) = Ticket::new();
        self.writer.push(Job {
            writes,
            done: Some(done),
        });
        ticket
    }

    fn submit_detached(&self, writes: Vec<Write>) {
        self.writer.push(Job { writes, done: None });
    }

    fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.writer
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed = true;
        self.writer.wake.notify_all();
        if let Some(thread) = self
            .writer_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = thread.join();
        }
        // Dropping the senders ends the lock thread (its session, and so
        // every lock it held, with it) and the reader threads once their
        // queues are empty.
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.reads.lock().unwrap_or_else(|p| p.into_inner()).take();
        for thread in self
            .reader_threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = thread.join();
        }
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        if connection_lost(&e) {
            StoreError::ConnectionLost(one_line(&e))
        } else if e.code() == Some(&postgres::error::SqlState::DISK_FULL) {
            StoreError::Full(one_line(&e))
        } else {
            StoreError::Database(one_line(&e))
        }
    }
}

/// Whether `e` says the connection is gone: closed, or the server ending
/// it (shutdown, crash: SQLSTATE 57P01-57P03) or a connection exception (08).
fn connection_lost(e: &postgres::Error) -> bool {
    e.is_closed()
        || e.code()
            .is_some_and(|c| c.code().starts_with("57P") || c.code().starts_with("08"))
}

/// The driver's error with its cause, on one line.
fn one_line(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            text
        }
    }
}

/// `url` with any password replaced by `***`.
fn shown(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// The `LISTEN/NOTIFY` channel that carries [`Change`]s between servers.
const CHANGES_CHANNEL: &str = "weir_changes";

/// Changes a slow follower may fall behind by before it is told it lagged.
const CHANGES_BUFFER: usize = 4096;

/// The listener thread: hears every server's changes and passes them on to
/// this process's followers, until `closed`.
fn listen(
    connect: Connect,
    changes: tokio::sync::broadcast::Sender<Change>,
    closed: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut client: Option<postgres::Client> = None;
    while !closed.load(std::sync::atomic::Ordering::SeqCst) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = connect()
                .and_then(|mut c| {
                    c.batch_execute(&format!("LISTEN {CHANGES_CHANNEL}"))?;
                    Ok(c)
                })
                .ok();
            if client.is_none() {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            // Changes made while nobody listened: followers read again.
            let _ = changes.send(Change::anything());
        }
        let Some(c) = client.as_mut() else {
            continue;
        };
        let lost = {
            use postgres::fallible_iterator::FallibleIterator as _;
            let mut notifications = c.notifications();
            let mut heard = notifications.timeout_iter(Duration::from_millis(500));
            loop {
                match heard.next() {
                    Ok(Some(note)) => {
                        if let Some(change) = Change::from_text(note.payload()) {
                            let _ = changes.send(change);
                        }
                    }
                    Ok(None) => break false,
                    Err(_) => break true,
                }
            }
        };
        if lost {
            client = None;
        }
    }
}

#[cfg(test)]
mod tests;
