//! `CallGuard`: no task call is left Running, by construction.

use super::crashed;
use crate::control::{Control, Durability};
use crate::model::{Failure, FailureKind, RunState, TaskRunId};
use crate::store::{NewTaskRun, StateChange, Write};

/// A task call in progress. If its future is dropped before it records an
/// end (the flow was cancelled or hit its deadline mid-call), the drop
/// records it as Cancelled, so no run is left Running.
pub(super) struct CallGuard<'a> {
    pub(super) control: &'a Control,
    pub(super) id: TaskRunId,
    /// The state the row is in, as far as this call knows.
    pub(super) state: RunState,
    pub(super) finished: bool,
    /// The row's creation, until it is written (see ANNOUNCE_AFTER).
    pub(super) unannounced: Option<NewTaskRun>,
}

impl CallGuard<'_> {
    /// `writes`, preceded by the row's creation if it is not written yet.
    pub(super) fn unit(&mut self, writes: Vec<Write>) -> Result<Vec<Write>, Failure> {
        let mut all = Vec::with_capacity(writes.len() + 1);
        if let Some(new_run) = self.unannounced.take() {
            all.push(self.control.creating_task_run(new_run).map_err(crashed)?);
        }
        all.extend(writes);
        Ok(all)
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        // Nothing was written for a call that never got announced.
        if self.finished || self.unannounced.is_some() {
            return;
        }
        let mut change = StateChange::new(
            self.id.0,
            self.state,
            RunState::Cancelled,
            self.control.now(),
        );
        change.failure_kind = Some(FailureKind::Cancelled);
        change.message = Some("stopped because its flow run ended (cancelled or timed out)".into());
        if let Err(e) = self
            .control
            .change_task_run(change, Vec::new(), Durability::Detached)
        {
            tracing::warn!("could not record the end of task run {}: {e}", self.id);
        }
    }
}
