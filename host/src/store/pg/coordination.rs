//! Locks that servers sharing the database agree on: PostgreSQL advisory
//! locks, on a connection of their own (session locks live as long as it).
//!
//! The admission lock is taken and released around each admission; a
//! leadership lock is taken once and held while the connection lives: a
//! server that dies (or loses the database) lets it go, and the next to ask
//! leads, within a tick.

use super::*;
use std::collections::HashSet;

/// Advisory lock keys ("wadm", "wsch", "wout" in ASCII).
const ADMISSION: i64 = 0x7761_646d;
const fn role_key(role: Role) -> i64 {
    match role {
        Role::Scheduler => 0x7773_6368,
        Role::Outbox => 0x776f_7574,
    }
}

/// How long admission waits for another server's before it gives up.
const LOCK_TIMEOUT: &str = "30s";

pub(super) enum LockJob {
    Lock(mpsc::Sender<Result<(), StoreError>>),
    Unlock,
    Lead(Role, mpsc::Sender<Result<bool, StoreError>>),
}

/// The lock thread: connects when first needed and again after losing the
/// connection (which also lost every lock it held).
pub(super) fn serve(
    jobs: mpsc::Receiver<LockJob>,
    connect: impl Fn() -> Result<postgres::Client, StoreError>,
) {
    let mut client: Option<postgres::Client> = None;
    let mut leading: HashSet<i64> = HashSet::new();
    let session = |client: &mut Option<postgres::Client>,
                   leading: &mut HashSet<i64>|
     -> Result<(), StoreError> {
        if client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        leading.clear();
        let mut fresh = connect()?;
        fresh.batch_execute(&format!("SET lock_timeout = '{LOCK_TIMEOUT}'"))?;
        *client = Some(fresh);
        Ok(())
    };
    while let Ok(job) = jobs.recv() {
        match job {
            LockJob::Lock(reply) => {
                let result = session(&mut client, &mut leading).and_then(|()| {
                    let c = client.as_mut().ok_or(StoreError::WriterGone)?;
                    c.execute("SELECT pg_advisory_lock($1)", &[&ADMISSION])
                        .map(|_| ())
                        .map_err(|e| {
                            StoreError::Database(format!(
                                "waiting for another server's admission: {}",
                                one_line(&e)
                            ))
                        })
                });
                let _ = reply.send(result);
            }
            LockJob::Unlock => {
                if let Some(c) = client.as_mut() {
                    // A lost connection released it already.
                    let _ = c.execute("SELECT pg_advisory_unlock($1)", &[&ADMISSION]);
                }
            }
            LockJob::Lead(role, reply) => {
                let key = role_key(role);
                let result = session(&mut client, &mut leading).and_then(|()| {
                    let c = client.as_mut().ok_or(StoreError::WriterGone)?;
                    // Session locks are re-entrant: asking again while
                    // holding it succeeds, and proves the session lives.
                    let held: bool = c
                        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])?
                        .try_get(0)?;
                    if held && !leading.insert(key) {
                        // Held already: the try took it a second time; keep one.
                        let _ = c.execute("SELECT pg_advisory_unlock($1)", &[&key]);
                    }
                    Ok(held)
                });
                if result.is_err() {
                    client = None;
                }
                let _ = reply.send(result);
            }
        }
    }
}

impl Coordination for PostgresStore {
    fn lock_admission(&self) -> Result<Exclusive, StoreError> {
        let (reply, answer) = mpsc::channel();
        send(&self.locks, LockJob::Lock(reply))?;
        answer.recv().unwrap_or(Err(StoreError::WriterGone))?;
        let locks = self.locks.clone();
        Ok(Exclusive::releasing(move || {
            let _ = send(&locks, LockJob::Unlock);
        }))
    }

    fn changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    fn shared(&self) -> bool {
        true
    }

    fn leads(&self, role: Role) -> Result<bool, StoreError> {
        let (reply, answer) = mpsc::channel();
        send(&self.locks, LockJob::Lead(role, reply))?;
        answer.recv().unwrap_or(Err(StoreError::WriterGone))
    }
}

/// The lock thread's queue; `None` once the store closed.
pub(super) type Locks = Arc<Mutex<Option<mpsc::Sender<LockJob>>>>;

fn send(locks: &Locks, job: LockJob) -> Result<(), StoreError> {
    match &*locks.lock().unwrap_or_else(|p| p.into_inner()) {
        Some(sender) => sender.send(job).map_err(|_| StoreError::WriterGone),
        None => Err(StoreError::WriterGone),
    }
}
