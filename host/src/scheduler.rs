//! The server's scheduler loop: makes `Scheduled` runs for deployment
//! schedules (through the dispatcher, which owns run creation) and marks
//! runs waiting past their time `Late`. Executors claim due runs themselves;
//! the loop only wakes them when it made new ones.
//!
//! Catch-up after downtime: a schedule whose fire times were missed while the
//! server was down gets one run, for the latest missed time, not one per miss.

use crate::control::Durability;
use crate::dispatch::{Dispatcher, RunSource};
use crate::model::{Deployment, RunState, TimestampMicros};
use crate::store::{ObjectKind, StateChange};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the loop looks.
pub const TICK: Duration = Duration::from_millis(500);

/// A run still waiting this long after its scheduled time is marked `Late`.
pub const LATE_AFTER: Duration = Duration::from_secs(60);

/// Runs until `stop` is cancelled; marks runs `Late` after `late_after`.
pub async fn run(
    dispatcher: Arc<Dispatcher>,
    tick: Duration,
    late_after: Duration,
    stop: CancellationToken,
) {
    let mut complained: HashMap<String, String> = HashMap::new();
    loop {
        make_scheduled_runs(&dispatcher, &mut complained).await;
        mark_late_runs(&dispatcher, late_after).await;
        // Runs made earlier for now may have come due: executors look again.
        dispatcher.run_ended();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

async fn make_scheduled_runs(
    dispatcher: &Arc<Dispatcher>,
    complained: &mut HashMap<String, String>,
) {
    let store = dispatcher.store();
    let Ok(rows) = store.objects(ObjectKind::Deployment) else {
        return;
    };
    let now = dispatcher.control().now();
    for row in rows {
        let Ok(deployment) = serde_json::from_str::<Deployment>(&row.body) else {
            continue;
        };
        if deployment.paused || deployment.schedules.iter().all(|s| !s.active) {
            continue;
        }
        let last = store
            .last_scheduled_at(&deployment.name)
            .ok()
            .flatten()
            .unwrap_or(0)
            .max(row.created_at);
        let Some(due) = latest_due(&deployment, last, now) else {
            continue;
        };
        let name = deployment.name.clone();
        match dispatcher.schedule_run(deployment, due).await {
            Ok(run) => {
                complained.remove(&name);
                tracing::info!("scheduled flow run {} of deployment '{name}'", run.id);
            }
            Err(e) => {
                let message = e.to_string();
                if complained.get(&name) != Some(&message) {
                    tracing::warn!("deployment '{name}' could not be scheduled: {message}");
                    complained.insert(name, message);
                }
            }
        }
    }
}

/// The latest fire time of any active schedule in (`last`, `now`].
fn latest_due(
    deployment: &Deployment,
    last: TimestampMicros,
    now: TimestampMicros,
) -> Option<TimestampMicros> {
    let mut latest = None;
    for schedule in deployment.schedules.iter().filter(|s| s.active) {
        let mut at = last;
        // Bounded: after a long downtime only the latest miss matters.
        for _ in 0..100_000 {
            match schedule.next_after(at) {
                Some(next) if next <= now => at = next,
                _ => break,
            }
        }
        if at > last {
            latest = latest.max(Some(at));
        }
    }
    latest
}

/// Marks runs that waited past `late_after` `Late` (they still start when allowed).
async fn mark_late_runs(dispatcher: &Dispatcher, late_after: Duration) {
    let now = dispatcher.control().now();
    let before = now - late_after.as_micros() as i64;
    let Ok(overdue) = dispatcher.store().overdue_runs(before, 100) else {
        return;
    };
    for run in overdue {
        let pool = run.work_pool.as_deref().unwrap_or_default();
        let why = if dispatcher.serves(pool) {
            "its pool, queue or deployment is paused or at its concurrency limit".to_string()
        } else {
            format!("no executor here serves work pool '{pool}'")
        };
        let mut change = StateChange::new(run.id.0, RunState::Scheduled, RunState::Late, now);
        change.message = Some(format!(
            "not started {} after its scheduled time: {why}",
            humantime::format_duration(Duration::from_secs(
                ((now - run.scheduled_at.unwrap_or(now)) / 1_000_000).max(0) as u64
            ))
        ));
        if let Ok(Some(ticket)) =
            dispatcher
                .control()
                .change_flow_run(change, Vec::new(), Durability::Committed)
        {
            let _ = ticket.committed().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Schedule;

    fn every_minute() -> Deployment {
        serde_json::from_value(serde_json::json!({
            "name": "d", "component": "0".repeat(64), "flow": "f",
            "schedules": [{ "interval_seconds": 60 }]
        }))
        .unwrap()
    }

    #[test]
    fn after_downtime_only_the_latest_miss_runs() {
        let d = every_minute();
        let min = 60_000_000;
        assert_eq!(latest_due(&d, 10 * min, 10 * min + 5), None);
        assert_eq!(latest_due(&d, 10 * min, 11 * min), Some(11 * min));
        assert_eq!(latest_due(&d, 10 * min, 95 * min + 7), Some(95 * min));
    }

    #[test]
    fn inactive_schedules_never_fire() {
        let mut d = every_minute();
        d.schedules = vec![
            serde_json::from_value::<Schedule>(
                serde_json::json!({"cron": "* * * * *", "active": false}),
            )
            .unwrap(),
        ];
        assert_eq!(latest_due(&d, 0, 1_000 * 60_000_000), None);
    }
}
