//! Heartbeats and reports: how a remote host keeps its leases and ships
//! what it recorded to the server.

use super::{
    IDLE_LAST_TRIM_AFTER, MAX_BACKOFF, REPORT_BUDGET_BYTES, REPORT_LOG_LINES, RemoteError,
    RemoteHost, SHIP_EVERY, Shipped, memory::give_back_freed_memory, server_message,
};
use crate::dispatch::remote::{Heartbeat, HeartbeatReply, Report, ShippedLog, ShippedTaskRun};
use crate::model::FlowRunId;
use crate::store::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl RemoteHost {
    /// Beats every third of the server's lease time (`ttl_ms`, as it last said).
    pub(super) async fn heartbeats(self: Arc<Self>, ttl_ms: u64, finished: CancellationToken) {
        let every_third =
            |ttl_ms: u64| Duration::from_millis(ttl_ms / 3).max(Duration::from_millis(50));
        let mut every = every_third(ttl_ms);
        loop {
            tokio::select! {
                _ = finished.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.beat().await {
                Ok(reply) => every = every_third(reply.lease_ttl_ms),
                Err(e) => tracing::warn!("heartbeat: {e}"),
            }
        }
    }

    /// One heartbeat: renews every lease held, stops the runs lost.
    pub(super) async fn beat(&self) -> Result<HeartbeatReply, RemoteError> {
        let runs: Vec<(FlowRunId, u64)> = self
            .held()
            .iter()
            .map(|(id, held)| (*id, held.epoch))
            .collect();
        let beat = Heartbeat {
            holder: self.holder.clone(),
            name: self.config.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pools: self.config.pools.clone(),
            queues: self.config.queues.clone(),
            slots: self.config.slots as u32,
            runs,
            allows: self.config.allows.clone(),
        };
        let (status, body) = self.post("/api/hosts/heartbeat".into(), &beat).await?;
        if status != 200 {
            return Err(RemoteError::Refused(server_message(status, &body)));
        }
        let reply: HeartbeatReply = serde_json::from_slice(&body)
            .map_err(|e| RemoteError::Refused(format!("unreadable heartbeat reply: {e}")))?;
        for id in &reply.lost {
            tracing::warn!("flow run {id}: this host's lease on it was lost; stopping it");
            self.held().remove(id);
            self.cancel_locally(*id);
        }
        for id in &reply.cancel {
            self.cancel_locally(*id);
        }
        Ok(reply)
    }

    pub(super) fn cancel_locally(&self, id: FlowRunId) {
        self.store.submit_detached(vec![Write::RequestCancel {
            id,
            at: self.control.now(),
        }]);
    }

    // ---- reports ----

    pub(super) async fn ship_loop(self: Arc<Self>, finished: CancellationToken) {
        let mut backoff = SHIP_EVERY;
        // Since when nothing is held, and how long idle until memory goes
        // back next (`None`: done for this idle spell).
        let mut idle_since: Option<tokio::time::Instant> = None;
        let mut next_trim = Some(self.config.idle_after);
        loop {
            let ids: Vec<FlowRunId> = self.held().keys().copied().collect();
            let mut failed = false;
            for id in ids {
                if let Err(e) = self.ship(id).await {
                    tracing::warn!("reporting flow run {id}: {e}");
                    failed = true;
                    break;
                }
            }
            backoff = if failed {
                (backoff * 2).min(MAX_BACKOFF)
            } else {
                SHIP_EVERY
            };
            if finished.is_cancelled() && (failed || self.held_count() == 0) {
                return;
            }
            if self.held_count() > 0 {
                idle_since = None;
                next_trim = Some(self.config.idle_after);
            } else if let Some(after) = next_trim {
                let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= after {
                    // The first time in an idle spell, the compiled state
                    // goes too; later times give back what was freed since.
                    let first = after == self.config.idle_after;
                    let later = (after * 2).max(Duration::from_millis(1));
                    next_trim = (later <= IDLE_LAST_TRIM_AFTER).then_some(later);
                    let this = self.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        if first {
                            let dropped = this.drop_idle_state();
                            tracing::debug!(
                                "idle: dropped the compiled state ({dropped} components) and the store's caches"
                            );
                        }
                        give_back_freed_memory();
                    })
                    .await;
                }
            }
            tokio::select! {
                _ = finished.cancelled() => {}
                _ = tokio::time::sleep(backoff) => {}
                // A start or an end goes at once, unless the server is failing.
                _ = self.ship_soon.notified(), if !failed => {}
            }
        }
    }

    /// Sends what changed in run `id`'s records since the last accepted report.
    async fn ship(self: &Arc<Self>, id: FlowRunId) -> Result<(), RemoteError> {
        let Some((epoch, ended, shipped)) = self
            .held()
            .get(&id)
            .filter(|h| h.copied)
            .map(|h| (h.epoch, h.ended, h.shipped.clone()))
        else {
            return Ok(());
        };
        let this = self.clone();
        let built = tokio::task::spawn_blocking(move || this.build_report(id, epoch, shipped))
            .await
            .map_err(|e| RemoteError::Refused(e.to_string()))??;
        let Some((report, next)) = built else {
            if ended {
                self.held().remove(&id);
            }
            return Ok(());
        };
        let final_state = report
            .flow_runs
            .first()
            .is_some_and(|r| r.id == id && r.state.is_terminal());
        let (status, body) = self
            .post(format!("/api/flow-runs/{id}/report"), &report)
            .await?;
        match status {
            200 => {
                let mut held = self.held();
                if ended && final_state {
                    held.remove(&id);
                } else if let Some(h) = held.get_mut(&id) {
                    h.shipped = next;
                }
                Ok(())
            }
            404 | 409 => {
                tracing::warn!(
                    "flow run {id}: the server refused its report ({}); stopping it",
                    server_message(status, &body)
                );
                self.held().remove(&id);
                self.cancel_locally(id);
                Ok(())
            }
            _ => Err(RemoteError::Refused(server_message(status, &body))),
        }
    }

    /// The report of what changed, and what will have been sent once it is
    /// accepted; `None` when nothing changed.
    fn build_report(
        &self,
        id: FlowRunId,
        epoch: u64,
        mut shipped: Shipped,
    ) -> Result<Option<(Report, Shipped)>, RemoteError> {
        let root = self.store.flow_run(id)?;
        let mut tree = vec![root];
        tree.extend(self.store.descendants(id)?);
        let mut report = Report {
            holder: self.holder.clone(),
            epoch,
            flow_runs: Vec::new(),
            task_runs: Vec::new(),
            logs: Vec::new(),
        };
        let mut bytes = 0;
        // Set when something was left for the next report.
        let mut cut = false;
        for run in &tree {
            for task in self.store.task_runs(run.id)? {
                let mark = (task.state, task.attempts, task.started_at, task.ended_at);
                if shipped.task_runs.get(&task.id) == Some(&mark) {
                    continue;
                }
                let size = task.input.len() + task.output.as_ref().map_or(0, String::len) + 512;
                if bytes + size > REPORT_BUDGET_BYTES && !report.task_runs.is_empty() {
                    cut = true;
                    break;
                }
                bytes += size;
                shipped.task_runs.insert(task.id, mark);
                report.task_runs.push(ShippedTaskRun::new(task));
            }
            let after = shipped.logs.get(&run.id).copied().unwrap_or(0);
            let room = REPORT_LOG_LINES.saturating_sub(report.logs.len());
            let lines = self.store.logs(run.id, after, room)?;
            cut |= lines.len() == room;
            if let Some(last) = lines.last() {
                shipped.logs.insert(run.id, last.id);
            }
            report.logs.extend(lines.into_iter().map(|line| ShippedLog {
                flow_run: run.id,
                line,
            }));
        }
        let mut changed = !report.task_runs.is_empty() || !report.logs.is_empty();
        for (i, run) in tree.into_iter().enumerate() {
            // The run's own end waits until everything under it has gone:
            // once it has ended the server takes nothing more about it.
            if i == 0 && cut && run.state.is_terminal() {
                continue;
            }
            let mark = (run.state, run.attempt, run.ended_at);
            let new = shipped.flow_runs.insert(run.id, mark) != Some(mark);
            changed |= new;
            // The run itself goes first.
            if i == 0 || new {
                report.flow_runs.push(run);
            }
        }
        if !changed {
            return Ok(None);
        }
        Ok(Some((report, shipped)))
    }
}
