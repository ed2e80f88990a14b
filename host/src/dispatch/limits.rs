//! Server-wide limits: taking slots of named concurrency and rate limits,
//! and giving them back.
//!
//! A slot is taken by one unit of writes that counts what is held and
//! records the new holding (`Write::TakeSlots`), so two takers never both
//! get the last slot, on one server or several. A holding names its flow
//! run and counts only while that run is unfinished and its lease is live:
//! a host that dies frees its slots when its lease lapses, with no
//! heartbeat of their own. A rate limit's slots are not held; they come
//! back at its rate.
//!
//! In-process executors take slots here directly ([`try_take`]); remote
//! hosts through `POST /api/concurrency-slots/take`, which calls the same.

use crate::control::Control;
use crate::model::FlowRunId;
use crate::model::limits::{ConcurrencyLimit, MAX_SLOTS};
use crate::store::{LimitAsk, ObjectKind, StoreError, Write};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// An ask for slots: every named limit, `slots` each, for a flow run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TakeSlots {
    pub flow_run: FlowRunId,
    pub names: Vec<String>,
    pub slots: u32,
    /// From code (`limit`): a name with no limit is an error. From task
    /// tags: a tag with no limit is not limited.
    #[serde(default)]
    pub strict: bool,
}

impl TakeSlots {
    /// Refuses an ask that no limit could ever grant, whatever is held.
    pub fn check(&self) -> Result<(), LimitRefusal> {
        if self.slots == 0 || self.slots > MAX_SLOTS {
            return Err(LimitRefusal::BadSlots(self.slots));
        }
        if self.names.is_empty() || self.names.len() > 64 {
            return Err(LimitRefusal::BadNames);
        }
        Ok(())
    }
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Taken {
    /// Held under `lease` until released (or until the run ends); a rate
    /// limit's slots are spent instead, with nothing to release.
    Taken { lease: uuid::Uuid },
    /// None of the names has a limit (tags only).
    Unlimited,
    /// Too few free slots of `limit` now; ask again (a rate limit says when).
    Full {
        limit: String,
        retry_after_ms: Option<u64>,
    },
}

/// Asks that can never be granted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitRefusal {
    #[error(
        "no concurrency limit named '{0}'; create it with `host concurrency-limit create {0} SLOTS`"
    )]
    Unknown(String),
    #[error("asks for {asked} slots of '{limit}', which has {has}: it could never be granted")]
    TooMany { limit: String, asked: u32, has: u32 },
    #[error("slots must be 1 to {MAX_SLOTS}, not {0}")]
    BadSlots(u32),
    #[error("name 1 to 64 limits")]
    BadNames,
    #[error("no flow run {0}")]
    UnknownRun(FlowRunId),
    #[error("flow run {0} has ended; its slots were given back")]
    RunEnded(FlowRunId),
    #[error("{0}")]
    Store(String),
}

impl From<StoreError> for LimitRefusal {
    fn from(e: StoreError) -> Self {
        LimitRefusal::Store(e.to_string())
    }
}

/// The limits these names have, sorted by name (the order slots are taken
/// in, so two takers of the same pair never wait on each other).
fn asks(control: &Control, ask: &TakeSlots) -> Result<Vec<LimitAsk>, LimitRefusal> {
    ask.check()?;
    let mut names: Vec<&String> = ask.names.iter().collect();
    names.sort();
    names.dedup();
    let mut asks = Vec::new();
    for name in names {
        let Some(row) = control.store().object(ObjectKind::ConcurrencyLimit, name)? else {
            if ask.strict {
                return Err(LimitRefusal::Unknown(name.clone()));
            }
            continue;
        };
        let limit: ConcurrencyLimit = serde_json::from_str(&row.body)
            .map_err(|e| LimitRefusal::Store(format!("limit '{name}' is unreadable: {e}")))?;
        if ask.slots > limit.slots {
            return Err(LimitRefusal::TooMany {
                limit: limit.name,
                asked: ask.slots,
                has: limit.slots,
            });
        }
        asks.push(LimitAsk {
            name: limit.name,
            limit: limit.slots,
            decay_per_second: limit.slot_decay_per_second,
        });
    }
    Ok(asks)
}

/// Refuses an ask for a run that is not there or has ended (from another
/// process: this one's own runs may not be committed yet, and the unit
/// itself needs the run to exist). Blocks.
pub fn check_run(control: &Control, id: FlowRunId) -> Result<(), LimitRefusal> {
    match control.store().flow_run(id) {
        Ok(run) if run.state.is_terminal() => Err(LimitRefusal::RunEnded(id)),
        Ok(_) => Ok(()),
        Err(StoreError::NotFound { .. }) => Err(LimitRefusal::UnknownRun(id)),
        Err(e) => Err(e.into()),
    }
}

/// One attempt to take the slots `ask` names. Blocks on the store.
pub fn try_take(control: &Control, ask: &TakeSlots) -> Result<Taken, LimitRefusal> {
    let limits = asks(control, ask)?;
    if limits.is_empty() {
        return Ok(Taken::Unlimited);
    }
    let lease = uuid::Uuid::now_v7();
    let ticket = control.store().submit(vec![Write::TakeSlots {
        lease,
        flow_run: ask.flow_run,
        limits,
        slots: ask.slots,
        now: control.now(),
    }]);
    match ticket.wait_blocking() {
        Ok(()) => Ok(Taken::Taken { lease }),
        Err(StoreError::NoSlot {
            limit,
            retry_after_us,
        }) => Ok(Taken::Full {
            limit,
            retry_after_ms: retry_after_us.map(|us| (us as u64).div_ceil(1000)),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Gives back what `lease` holds. Not awaited: a release lost in a crash is
/// made good when the run ends or its lease lapses.
pub fn release(control: &Control, lease: uuid::Uuid) {
    control
        .store()
        .submit_detached(vec![Write::ReleaseSlots { lease }]);
}

/// How long to wait before asking again for a full limit: a rate limit's
/// own answer, else a backoff from 20 ms up to a second.
pub fn wait_before_retry(full: &Taken, attempt: u32) -> Duration {
    if let Taken::Full {
        retry_after_ms: Some(ms),
        ..
    } = full
    {
        return Duration::from_millis((*ms).clamp(1, 60_000));
    }
    let backoff = 20u64.saturating_mul(1 << attempt.min(6));
    Duration::from_millis(backoff.min(1_000))
}
