//! Automations at work: finds the run events automations watch (failed,
//! crashed, cancelled, completed, late, stuck in Running) and delivers their
//! webhooks through a durable outbox.
//!
//! Finding an event only queues a delivery (one per automation, run and
//! event: the store's unique key), in its own loop, so neither the scheduler
//! nor a run ever waits for a receiver. Deliveries are retried with
//! exponential backoff until one answers 2xx, recorded attempt by attempt,
//! and survive a restart: the outbox is a table.

use crate::control::Durability;
use crate::dispatch::Dispatcher;
use crate::model::FlowRunId;
use crate::model::{Automation, AutomationEvent, EventFields, RunState, TimestampMicros};
use crate::store::{DeliveryRow, DeliveryStatus, FlowRunRow, ObjectKind, ObjectRow, Role, Write};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the loop looks for events and due deliveries.
pub const TICK: Duration = Duration::from_millis(500);

/// Attempts before a delivery is given up (`failed`).
pub const MAX_ATTEMPTS: u32 = 10;

/// The wait before the first retry; each next one doubles, up to `MAX_RETRY_WAIT`.
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(200);
const MAX_RETRY_WAIT: Duration = Duration::from_secs(600);

/// A receiver gets this long to answer.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs until `stop` is cancelled; links in payloads start with `link_base`
/// (the server's URL).
pub async fn run(dispatcher: Arc<Dispatcher>, link_base: String, stop: CancellationToken) {
    let mut outbox = Outbox::new(dispatcher, link_base);
    loop {
        if outbox.dispatcher.leads(Role::Outbox).await {
            outbox.tick().await;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// The loop's state: where it is in the runs that ended.
pub struct Outbox {
    dispatcher: Arc<Dispatcher>,
    link_base: String,
    /// Runs that ended at or before this were looked at.
    ended_cursor: TimestampMicros,
    /// Late and stuck events queued already (the store would ignore them,
    /// but a write per tick per waiting run is waste), for runs still so.
    queued: HashSet<(String, FlowRunId)>,
}

impl Outbox {
    pub fn new(dispatcher: Arc<Dispatcher>, link_base: String) -> Self {
        // A restarted server looks back an hour: events of its downtime are
        // still delivered, and the outbox's key keeps them once each.
        let ended_cursor = dispatcher.control().now() - 3_600_000_000;
        Outbox {
            dispatcher,
            link_base,
            ended_cursor,
            queued: HashSet::new(),
        }
    }

    /// Queues deliveries for new events, then attempts the due ones.
    pub async fn tick(&mut self) {
        self.find_events().await;
        self.deliver_due().await;
    }

    async fn find_events(&mut self) {
        let store = self.dispatcher.store().clone();
        let now = self.dispatcher.control().now();
        let automations: Vec<(Automation, ObjectRow)> = store
            .objects(ObjectKind::Automation)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|row| Some((serde_json::from_str::<Automation>(&row.body).ok()?, row)))
            .filter(|(a, _)| !a.paused)
            .collect();
        let mut events: Vec<(FlowRunRow, AutomationEvent, String)> = Vec::new();
        if let Ok(ended) = store.runs_ended_after(self.ended_cursor, 500) {
            for run in ended {
                self.ended_cursor = self.ended_cursor.max(run.ended_at.unwrap_or_default());
                let event = match run.state {
                    RunState::Failed | RunState::TimedOut => AutomationEvent::Failed,
                    RunState::Crashed => AutomationEvent::Crashed,
                    RunState::Cancelled => AutomationEvent::Cancelled,
                    RunState::Completed | RunState::Cached => AutomationEvent::Completed,
                    _ => continue,
                };
                let reason = run.message.clone().unwrap_or_default();
                events.push((run, event, reason));
            }
        }
        let watches = |event| automations.iter().any(|(a, _)| a.on == event);
        if watches(AutomationEvent::Late) {
            for run in store.runs_in_state(RunState::Late, 500).unwrap_or_default() {
                let reason = run.message.clone().unwrap_or_default();
                events.push((run, AutomationEvent::Late, reason));
            }
        }
        let running = if watches(AutomationEvent::Stuck) {
            store
                .runs_in_state(RunState::Running, 1000)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut writes = Vec::new();
        let mut queued_now = Vec::new();
        for (automation, row) in &automations {
            let ongoing = matches!(
                automation.on,
                AutomationEvent::Late | AutomationEvent::Stuck
            );
            let mut push = |run: &FlowRunRow, reason: String| {
                if !automation.matches(run.deployment.as_deref(), &run.flow_name, &run.tags) {
                    return;
                }
                if ongoing {
                    let key = (automation.name.clone(), run.id);
                    if self.queued.contains(&key) {
                        return;
                    }
                    queued_now.push(key);
                }
                let fields = EventFields {
                    automation: automation.name.clone(),
                    event: automation.on.as_str().to_string(),
                    flow_run_id: run.id.to_string(),
                    flow: run.flow_name.clone(),
                    deployment: run.deployment.clone().unwrap_or_default(),
                    state: run.state.to_string(),
                    reason,
                    link: format!("{}/api/flow-runs/{}", self.link_base, run.id),
                };
                writes.push(Write::EnqueueDelivery {
                    automation: automation.name.clone(),
                    flow_run: run.id,
                    event: automation.on.as_str().to_string(),
                    payload: automation.payload(&fields),
                    at: now,
                });
            };
            if automation.on == AutomationEvent::Stuck {
                let stuck_after = automation.stuck_after_seconds.unwrap_or(u64::MAX);
                let before = now.saturating_sub((stuck_after.min(1 << 40) * 1_000_000) as i64);
                for run in &running {
                    let started = run.started_at.unwrap_or(run.created_at);
                    if started < before {
                        let reason = format!(
                            "Running for {} (stuck after {})",
                            humantime::format_duration(Duration::from_secs(
                                ((now - started) / 1_000_000).max(0) as u64
                            )),
                            humantime::format_duration(Duration::from_secs(stuck_after))
                        );
                        push(run, reason);
                    }
                }
                continue;
            }
            for (run, event, reason) in &events {
                // An automation hears of what happened after it was made.
                let when = run.ended_at.unwrap_or(now);
                if *event == automation.on
                    && (*event == AutomationEvent::Late || when >= row.created_at)
                {
                    push(run, reason.clone());
                }
            }
        }
        // Forget runs no longer Late or Running: they cannot fire these again.
        let live: HashSet<FlowRunId> = events
            .iter()
            .filter(|(_, event, _)| *event == AutomationEvent::Late)
            .map(|(run, _, _)| run.id)
            .chain(running.iter().map(|run| run.id))
            .collect();
        self.queued.retain(|(_, run)| live.contains(run));
        if writes.is_empty() {
            return;
        }
        let committed = match self
            .dispatcher
            .control()
            .record(writes, Durability::Committed)
        {
            Some(ticket) => ticket.committed().await,
            None => Ok(()),
        };
        match committed {
            Ok(()) => self.queued.extend(queued_now),
            Err(e) => tracing::warn!("queueing automation deliveries: {e}"),
        }
    }

    async fn deliver_due(&mut self) {
        let store = self.dispatcher.store().clone();
        let now = self.dispatcher.control().now();
        let Ok(due) = store.due_deliveries(now, 20) else {
            return;
        };
        for delivery in due {
            let automation = store
                .object(ObjectKind::Automation, &delivery.automation)
                .ok()
                .flatten()
                .and_then(|row| serde_json::from_str::<Automation>(&row.body).ok());
            let outcome = match automation {
                None => Err("the automation was deleted".to_string()),
                Some(a) if a.paused => continue,
                Some(a) => send(&a, &delivery).await,
            };
            let now = self.dispatcher.control().now();
            let attempts = delivery.attempts + 1;
            let (status, error, code) = match outcome {
                Ok(code) if (200..300).contains(&code) => {
                    (DeliveryStatus::Delivered, None, Some(code))
                }
                Ok(code) => (
                    retry_or_fail(attempts),
                    Some(format!("the receiver answered {code}")),
                    Some(code),
                ),
                Err(e) => (retry_or_fail(attempts), Some(e), None),
            };
            let outcome = if status == DeliveryStatus::Delivered {
                "delivered"
            } else {
                "refused_or_unreachable"
            };
            metrics::counter!("weir_webhook_deliveries_total", "outcome" => outcome).increment(1);
            let write = Write::DeliveryAttempt {
                id: delivery.id,
                status,
                next_attempt_at: now + retry_wait(attempts).as_micros() as i64,
                error,
                response_code: code,
                at: now,
            };
            if let Some(ticket) = self
                .dispatcher
                .control()
                .record(vec![write], Durability::Committed)
                && let Err(e) = ticket.committed().await
            {
                tracing::warn!("recording a delivery of '{}': {e}", delivery.automation);
            }
        }
    }
}

fn retry_or_fail(attempts: u32) -> DeliveryStatus {
    if attempts >= MAX_ATTEMPTS {
        DeliveryStatus::Failed
    } else {
        DeliveryStatus::Pending
    }
}

/// The wait after `attempts` failed attempts: 0.2 s, 0.4 s, 0.8 s, ... up to 10 min.
fn retry_wait(attempts: u32) -> Duration {
    FIRST_RETRY_WAIT
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(MAX_RETRY_WAIT)
}

/// POSTs one delivery on the blocking pool (ureq blocks).
async fn send(automation: &Automation, delivery: &DeliveryRow) -> Result<u16, String> {
    let url = automation.webhook.clone();
    let headers: Vec<(String, String)> = automation
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let body = delivery.payload.clone();
    tokio::task::spawn_blocking(move || {
        crate::client::post_webhook(&url, &headers, &body, DELIVERY_TIMEOUT)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("the delivery task stopped: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_to_a_cap() {
        assert_eq!(retry_wait(1), Duration::from_millis(200));
        assert_eq!(retry_wait(2), Duration::from_millis(400));
        assert_eq!(retry_wait(5), Duration::from_millis(3200));
        assert_eq!(retry_wait(30), MAX_RETRY_WAIT);
        assert_eq!(retry_or_fail(MAX_ATTEMPTS - 1), DeliveryStatus::Pending);
        assert_eq!(retry_or_fail(MAX_ATTEMPTS), DeliveryStatus::Failed);
    }
}
