//! Slots of server-wide limits, as a run takes them: for a task, one of
//! each limit named like one of its tags; from code, the limits it names
//! (`take-slots`). Taken from the store beside this executor, or from the
//! server's API on a remote host; waited for while full; given back when
//! the holder drops (the task or instance ends, or traps).

use super::{Executor, FlowRun, crashed};
use crate::dispatch::limits::{self, LimitRefusal, TakeSlots, Taken};
use crate::engine::HeldSlots;
use crate::model::{Failure, FailureKind, LogLevel};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Slots held under one lease; given back on drop.
struct Held {
    lease: uuid::Uuid,
    executor: Arc<Executor>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.executor.release_slots(self.lease);
    }
}

impl Executor {
    /// One attempt to take slots. Blocks (the store, or the server's API).
    fn try_take_slots(&self, ask: &TakeSlots) -> Result<Taken, Failure> {
        let refused = |why: String| Failure::new(FailureKind::Failed, why);
        match self.remote.get() {
            Some(server) => server
                .take_slots(ask)
                .map_err(|why| refused(format!("taking slots from the server: {why}"))),
            None => limits::try_take(&self.control, ask).map_err(|e| match e {
                LimitRefusal::Store(why) => crashed(why),
                other => refused(other.to_string()),
            }),
        }
    }

    fn release_slots(&self, lease: uuid::Uuid) {
        match self.remote.get() {
            None => limits::release(&self.control, lease),
            Some(server) => {
                // A request may wait on the network: never on this thread,
                // which may be the runtime's. A lost release is made good
                // when the run ends or its lease lapses.
                let server = server.clone();
                std::thread::spawn(move || {
                    if let Err(why) = server.release_slots(lease) {
                        tracing::warn!("giving back slots {lease}: {why}");
                    }
                });
            }
        }
    }
}

impl FlowRun {
    /// Takes `slots` of each limit in `names` for this run, waiting while
    /// one is full, until `timeout` (if any) or the run is cancelled.
    /// `None` when none of the names has a limit (only when not `strict`).
    pub(super) async fn take_slots(
        self: Arc<Self>,
        who: &str,
        names: Vec<String>,
        slots: u32,
        strict: bool,
        timeout: Option<Duration>,
    ) -> Result<Option<HeldSlots>, Failure> {
        let ask = TakeSlots {
            flow_run: self.root,
            names,
            slots,
            strict,
        };
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut attempt = 0u32;
        loop {
            let executor = self.executor.clone();
            let this_ask = ask.clone();
            let taken = tokio::task::spawn_blocking(move || executor.try_take_slots(&this_ask))
                .await
                .map_err(|e| crashed(format!("taking slots: {e}")))??;
            let full_limit = match &taken {
                Taken::Taken { lease } => {
                    let held: HeldSlots = Box::new(Held {
                        lease: *lease,
                        executor: self.executor.clone(),
                    });
                    return Ok(Some(held));
                }
                Taken::Unlimited => return Ok(None),
                Taken::Full { limit, .. } => limit.clone(),
            };
            if attempt == 0 {
                self.log(
                    None,
                    LogLevel::Info,
                    &format!("{who} waits for a free slot of limit '{full_limit}'"),
                );
            }
            let mut wake = Instant::now() + limits::wait_before_retry(&taken, attempt);
            if let Some(deadline) = deadline {
                if Instant::now() >= deadline {
                    return Err(Failure::new(
                        FailureKind::Failed,
                        format!(
                            "{who} found no free slot of limit '{full_limit}' within {}s",
                            timeout.unwrap_or_default().as_secs()
                        ),
                    ));
                }
                wake = wake.min(deadline);
            }
            attempt += 1;
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    return Err(Failure::new(FailureKind::Cancelled, "the run was cancelled"));
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

impl FlowRun {
    /// `take-slots` from guest code: every name must have a limit.
    pub(super) async fn take_slots_from_code(
        self: Arc<Self>,
        who: String,
        names: Vec<String>,
        slots: u32,
        timeout: Option<Duration>,
    ) -> Result<HeldSlots, Failure> {
        let held = self.take_slots(&who, names, slots, true, timeout).await?;
        // Strict asks name limits that exist, so something was taken.
        Ok(held.unwrap_or_else(|| Box::new(())))
    }
}

impl Executor {
    /// Permits for each limited tag, taken in name order so two tasks never deadlock.
    pub(super) async fn acquire_tag_permits(
        &self,
        tags: &[String],
        cancel: &CancellationToken,
    ) -> Option<Vec<tokio::sync::OwnedSemaphorePermit>> {
        let mut limited: Vec<&Arc<Semaphore>> = Vec::new();
        let mut names: Vec<&String> = tags.iter().collect();
        names.sort();
        names.dedup();
        for tag in names {
            if let Some(semaphore) = self.tag_permits.get(tag) {
                limited.push(semaphore);
            }
        }
        let mut permits = Vec::with_capacity(limited.len());
        for semaphore in limited {
            tokio::select! {
                permit = semaphore.clone().acquire_owned() => permits.push(permit.ok()?),
                _ = cancel.cancelled() => return None,
            }
        }
        Some(permits)
    }
}
