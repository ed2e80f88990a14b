//! Application services: each state change is decided by `orchestrate` and then
//! queued to the store as one atomic unit with whatever goes with it.
//!
//! Nothing else writes run states. Callers say which state they believe a run is
//! in; `orchestrate` decides whether the move is allowed and the store checks
//! the belief with compare-and-set.

use crate::clock::Clock;
use crate::model::TimestampMicros;
use crate::orchestrate::{self, InvalidTransition};
use crate::store::{NewFlowRun, NewTaskRun, StateChange, Store, StoreError, Ticket, Write};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Control {
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
}

/// How long the caller is prepared to wait for a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Return a ticket that resolves on commit.
    Committed,
    /// Queue and move on (logs, intermediate states).
    Detached,
    /// Return a ticket; the write waits in the queue until the caller (or
    /// another writer) commits it: [`Control::commit_queued`].
    Queued,
}

impl Control {
    pub fn new(store: Arc<Store>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn now(&self) -> TimestampMicros {
        self.clock.now_micros()
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn create_flow_run(
        &self,
        run: NewFlowRun,
        durability: Durability,
    ) -> Result<Option<Ticket>, ControlError> {
        orchestrate::decide(None, run.state)?;
        Ok(self.submit(vec![Write::NewFlowRun(run)], durability))
    }

    /// Creates a run a schedule made for `schedule_key` and its time, in one
    /// unit with the slot that makes it unique: `StoreError::SlotTaken` (and
    /// no run) when that slot was made already.
    pub fn create_scheduled_flow_run(
        &self,
        run: NewFlowRun,
        schedule_key: String,
        durability: Durability,
    ) -> Result<Option<Ticket>, ControlError> {
        orchestrate::decide(None, run.state)?;
        let slot = Write::ScheduleSlot {
            deployment: run.deployment.clone().unwrap_or_default(),
            schedule_key,
            at: run.scheduled_at.unwrap_or(run.at),
            flow_run: run.id,
        };
        Ok(self.submit(vec![slot, Write::NewFlowRun(run)], durability))
    }

    pub fn create_task_run(
        &self,
        run: NewTaskRun,
        durability: Durability,
    ) -> Result<Option<Ticket>, ControlError> {
        orchestrate::decide(None, run.state)?;
        Ok(self.submit(vec![Write::NewTaskRun(run)], durability))
    }

    /// Moves a flow run, together with `with` (e.g. its last logs), in one unit.
    pub fn change_flow_run(
        &self,
        change: StateChange,
        with: Vec<Write>,
        durability: Durability,
    ) -> Result<Option<Ticket>, ControlError> {
        orchestrate::decide(Some(change.from), change.to)?;
        let mut writes = with;
        writes.push(Write::FlowRunState(change));
        Ok(self.submit(writes, durability))
    }

    /// The write that creates a task run, to be put in a unit with what follows
    /// (a fast task is created and completed in one commit).
    pub fn creating_task_run(&self, run: NewTaskRun) -> Result<Write, ControlError> {
        orchestrate::decide(None, run.state)?;
        Ok(Write::NewTaskRun(run))
    }

    /// Moves a task run, together with `with` (e.g. its attempt record), in one unit.
    pub fn change_task_run(
        &self,
        change: StateChange,
        with: Vec<Write>,
        durability: Durability,
    ) -> Result<Option<Ticket>, ControlError> {
        orchestrate::decide(Some(change.from), change.to)?;
        let mut writes = with;
        writes.push(Write::TaskRunState(change));
        Ok(self.submit(writes, durability))
    }

    /// Writes that carry no state change (logs, components).
    pub fn record(&self, writes: Vec<Write>, durability: Durability) -> Option<Ticket> {
        self.submit(writes, durability)
    }

    /// Commits writes left queued by [`Durability::Queued`].
    pub fn commit_queued(&self) {
        self.store.commit_queued();
    }

    fn submit(&self, writes: Vec<Write>, durability: Durability) -> Option<Ticket> {
        match durability {
            Durability::Committed => Some(self.store.submit(writes)),
            Durability::Queued => Some(self.store.submit_queued(writes)),
            Durability::Detached => {
                self.store.submit_detached(writes);
                None
            }
        }
    }
}
