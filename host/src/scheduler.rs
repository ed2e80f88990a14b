//! The server's scheduler loop: makes runs for deployment schedules and
//! starts `Scheduled` runs whose time has come (and that their pool, queue
//! and concurrency limits now allow).
//!
//! Catch-up after downtime: a schedule whose fire times were missed while the
//! server was down gets one run, for the latest missed time, not one per miss.

use crate::api::{self, ApiState};
use crate::control::Durability;
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
    state: Arc<ApiState>,
    tick: Duration,
    late_after: Duration,
    stop: CancellationToken,
) {
    let mut complained: HashMap<String, String> = HashMap::new();
    loop {
        make_scheduled_runs(&state, &mut complained).await;
        start_due_runs(&state).await;
        mark_late_runs(&state, late_after).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

async fn make_scheduled_runs(state: &Arc<ApiState>, complained: &mut HashMap<String, String>) {
    let Ok(rows) = state.store.objects(ObjectKind::Deployment) else {
        return;
    };
    let now = state.control.now();
    for row in rows {
        let Ok(deployment) = serde_json::from_str::<Deployment>(&row.body) else {
            continue;
        };
        if deployment.paused || deployment.schedules.iter().all(|s| !s.active) {
            continue;
        }
        let last = state
            .store
            .last_scheduled_at(&deployment.name)
            .ok()
            .flatten()
            .unwrap_or(0)
            .max(row.created_at);
        let Some(due) = latest_due(&deployment, last, now) else {
            continue;
        };
        let name = deployment.name.clone();
        match api::run_deployment_now(state, deployment, None, None, Some(due)).await {
            Ok((id, _)) => {
                complained.remove(&name);
                tracing::info!("scheduled flow run {id} of deployment '{name}'");
            }
            Err(e) => {
                let message = format!("{e:?}");
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

async fn start_due_runs(state: &Arc<ApiState>) {
    if state.executor.is_none() {
        return;
    }
    let now = state.control.now();
    let mut due = match state.store.due_runs(&state.pools, now, 100) {
        Ok(due) if !due.is_empty() => due,
        _ => return,
    };
    // Lower queue priority numbers first; within a priority, the oldest first.
    let priorities: HashMap<String, u32> = state
        .store
        .objects(ObjectKind::WorkQueue)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|row| {
            let queue: crate::model::WorkQueue = serde_json::from_str(&row.body).ok()?;
            Some((row.name, queue.priority))
        })
        .collect();
    let priority = |run: &crate::store::FlowRunRow| {
        let key = format!(
            "{}/{}",
            run.work_pool.as_deref().unwrap_or_default(),
            run.work_queue
                .as_deref()
                .unwrap_or(crate::model::deploy::DEFAULT_QUEUE)
        );
        priorities.get(&key).copied().unwrap_or(u32::MAX)
    };
    due.sort_by_key(|run| (priority(run), run.scheduled_at));
    for run in due {
        if let Err(e) = api::launch_scheduled(state, &run).await {
            tracing::warn!("flow run {} could not start: {e}", run.id);
        }
    }
}

/// Marks runs that waited past `late_after` `Late` (they still start when allowed).
async fn mark_late_runs(state: &Arc<ApiState>, late_after: Duration) {
    let now = state.control.now();
    let before = now - late_after.as_micros() as i64;
    let Ok(overdue) = state.store.overdue_runs(before, 100) else {
        return;
    };
    for run in overdue {
        let pool = run.work_pool.as_deref().unwrap_or_default();
        let why = if state.executor.is_some() && state.pools.iter().any(|p| p == pool) {
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
            state
                .control
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
        d.schedules = vec![Schedule {
            cron: Some("* * * * *".into()),
            interval_seconds: None,
            active: false,
        }];
        assert_eq!(latest_due(&d, 0, 1_000 * 60_000_000), None);
    }
}
