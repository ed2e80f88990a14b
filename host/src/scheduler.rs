//! The server's scheduler loop: makes `Scheduled` runs for deployment
//! schedules ahead of time (through the dispatcher, which owns run creation)
//! and marks runs waiting past their time `Late`. Executors claim due runs
//! themselves; the loop only wakes them.
//!
//! Materialization: each tick, every active schedule gets a run for each of
//! its fire times up to `look_ahead` from now (at most `max_ahead` of them).
//! The store keeps one slot per (deployment, schedule key, time), so a
//! restarted scheduler, or two at once, never make a run twice. When a
//! deployment changes, runs its edited, deleted or deactivated schedules made
//! ahead are deleted (they have not started); pausing a deployment deletes
//! all of its runs made ahead, and on resume it goes on from then.
//!
//! Catch-up: a fire time that passed more than `late_after` before the
//! scheduler first saw it was missed (no server ran then). The deployment's
//! `catchup` decides: `skip` none, `latest` the last one, `all` the latest
//! `catchup_limit`.

use crate::control::{ControlError, Durability};
use crate::dispatch::{DispatchError, Dispatcher};
use crate::model::{Catchup, Deployment, RunState, TimestampMicros};
use crate::schedule::Timetable;
use crate::store::{ObjectKind, Role, StateChange, StoreError, Write};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the loop looks.
pub const TICK: Duration = Duration::from_millis(500);

/// A run still waiting this long after its scheduled time is marked `Late`.
pub const LATE_AFTER: Duration = Duration::from_secs(60);

/// How far ahead schedules make runs, and at most how many per schedule.
pub const LOOK_AHEAD: Duration = Duration::from_secs(3600);
pub const MAX_AHEAD: usize = 100;

/// The scheduler's knobs (`host server start --late-after --schedule-ahead
/// --schedule-max-runs`).
#[derive(Clone, Copy, Debug)]
pub struct SchedulerSettings {
    pub tick: Duration,
    /// Marks runs `Late`, and tells a missed fire time from a merely due one.
    pub late_after: Duration,
    pub look_ahead: Duration,
    pub max_ahead: usize,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings {
            tick: TICK,
            late_after: LATE_AFTER,
            look_ahead: LOOK_AHEAD,
            max_ahead: MAX_AHEAD,
        }
    }
}

/// Runs until `stop` is cancelled.
pub async fn run(
    dispatcher: Arc<Dispatcher>,
    settings: SchedulerSettings,
    stop: CancellationToken,
) {
    let mut scheduler = Scheduler::new(dispatcher.clone(), settings);
    loop {
        // Several servers on one database: one schedules, the others only
        // wake their claimers for runs that came due.
        if dispatcher.leads(Role::Scheduler).await {
            scheduler.tick().await;
        } else {
            dispatcher.wake_claimers();
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(settings.tick) => {}
        }
    }
}

/// The scheduler's state between ticks: only caches; the store is the truth.
pub struct Scheduler {
    dispatcher: Arc<Dispatcher>,
    settings: SchedulerSettings,
    /// The last problem reported per deployment, so it is logged once.
    complained: HashMap<String, String>,
    /// Each deployment's kept schedule keys and [`run_shape`] when its runs
    /// made ahead were last matched to it.
    reconciled: HashMap<String, (Vec<String>, String)>,
    /// The latest slot made per (deployment, schedule key).
    last_slot: HashMap<(String, String), TimestampMicros>,
    /// Each deployment as last read: its body, parsed, and the keys of its
    /// active schedules, so an unchanged one costs a string comparison.
    parsed: HashMap<String, (String, Arc<Deployment>, Vec<String>)>,
    /// Whether a tick has run (the first asks the store for gone deployments).
    started: bool,
    /// Compiled schedules by key (the key covers everything they depend
    /// on), so a tick does not parse every cron again.
    timetables: HashMap<String, Timetable>,
}

/// What one tick did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Runs made for schedules.
    pub made: usize,
    /// Runs another scheduler had made for the same slot already.
    pub taken: usize,
}

impl Scheduler {
    pub fn new(dispatcher: Arc<Dispatcher>, settings: SchedulerSettings) -> Self {
        Scheduler {
            dispatcher,
            settings,
            complained: HashMap::new(),
            reconciled: HashMap::new(),
            last_slot: HashMap::new(),
            timetables: HashMap::new(),
            parsed: HashMap::new(),
            started: false,
        }
    }

    /// Makes runs for schedules, marks late ones `Late`, wakes executors.
    pub async fn tick(&mut self) -> TickReport {
        let report = self.make_scheduled_runs().await;
        mark_late_runs(&self.dispatcher, self.settings.late_after).await;
        match self.dispatcher.reap().await {
            Ok(crashed) => {
                for run in crashed {
                    tracing::warn!("flow run {} crashed: its holder is gone", run.id);
                }
            }
            Err(e) => tracing::warn!("looking for runs whose holder is gone: {e}"),
        }
        if let Err(e) = self.dispatcher.expire_pauses().await {
            tracing::warn!("failing paused runs past their timeout: {e}");
        }
        // Runs made earlier for now may have come due: claimers look again.
        self.dispatcher.wake_claimers();
        report
    }

    async fn make_scheduled_runs(&mut self) -> TickReport {
        let mut report = TickReport::default();
        let store = self.dispatcher.store().clone();
        let Ok(rows) = store.objects(ObjectKind::Deployment) else {
            return report;
        };
        let now = self.dispatcher.control().now();
        let mut present = HashSet::new();
        let mut keys_in_use = HashSet::new();
        for row in rows {
            present.insert(row.name.clone());
            let (deployment, keep) = match self.parsed.get(&row.name) {
                Some((body, deployment, keys)) if *body == row.body => {
                    (deployment.clone(), keys.clone())
                }
                _ => {
                    let Ok(deployment) = serde_json::from_str::<Deployment>(&row.body) else {
                        continue;
                    };
                    let keys: Vec<String> = deployment
                        .schedules
                        .iter()
                        .filter(|s| s.active)
                        .map(|s| s.key())
                        .collect();
                    let deployment = Arc::new(deployment);
                    self.parsed.insert(
                        row.name.clone(),
                        (row.body.clone(), deployment.clone(), keys.clone()),
                    );
                    (deployment, keys)
                }
            };
            // A paused deployment keeps none of the runs made ahead: its
            // times are skipped, not held back to run all at once on resume.
            let kept = if deployment.paused {
                Vec::new()
            } else {
                keep.clone()
            };
            let shape = run_shape(&deployment);
            let drop_keeping = match self.reconciled.get(&deployment.name) {
                Some((keys, old_shape)) if *keys == kept && *old_shape == shape => None,
                // Params, pool, limits or grants changed: runs made ahead
                // carry the old ones, so all go and are made again.
                Some((_, old_shape)) if *old_shape != shape => Some(Vec::new()),
                _ => Some(kept.clone()),
            };
            if let Some(keeping) = drop_keeping
                && self.drop_runs_ahead(&deployment.name, keeping, now).await
            {
                self.reconciled
                    .insert(deployment.name.clone(), (kept, shape));
            }
            if deployment.paused {
                continue;
            }
            let active = deployment.schedules.iter().filter(|s| s.active);
            for (schedule, key) in active.zip(keep) {
                keys_in_use.insert(key.clone());
                let timetable = match self.timetables.get(&key) {
                    Some(timetable) => timetable.clone(),
                    None => match schedule.timetable() {
                        Ok(timetable) => {
                            self.timetables.insert(key.clone(), timetable.clone());
                            timetable
                        }
                        Err(e) => {
                            self.complain(&deployment.name, e.to_string());
                            continue;
                        }
                    },
                };
                let slot = (deployment.name.clone(), key.clone());
                let last = match self.last_slot.get(&slot) {
                    Some(last) => Some(*last),
                    None => store
                        .last_schedule_slot(&deployment.name, &key)
                        .ok()
                        .flatten(),
                };
                // A schedule that never made a run starts from when the
                // deployment was last written (when it may have appeared).
                let times = plan(
                    &timetable,
                    last.unwrap_or(row.updated_at),
                    now,
                    &self.settings,
                    deployment.catchup,
                    deployment.catchup_limit as usize,
                );
                for at in times {
                    let made = self
                        .dispatcher
                        .schedule_run(
                            (*deployment).clone(),
                            key.clone(),
                            schedule.params.clone(),
                            at,
                        )
                        .await;
                    match made {
                        Ok(run) => {
                            self.complained.remove(&deployment.name);
                            self.last_slot.insert(slot.clone(), at);
                            report.made += 1;
                            tracing::debug!(
                                "scheduled flow run {} of deployment '{}'",
                                run.id,
                                deployment.name
                            );
                        }
                        Err(e) if is_slot_taken(&e) => {
                            // Another scheduler got there first: learn its
                            // progress from the store next time.
                            self.last_slot.remove(&slot);
                            report.taken += 1;
                        }
                        Err(e) => {
                            self.complain(&deployment.name, e.to_string());
                            break;
                        }
                    }
                }
            }
        }
        // Deployments that are gone: their runs made ahead go too. The store
        // is asked once (one may have gone while no scheduler ran), then the
        // ones seen before are enough.
        let gone: Vec<String> = if self.started {
            self.parsed
                .keys()
                .filter(|name| !present.contains(*name))
                .cloned()
                .collect()
        } else {
            store
                .deployments_with_slots_after(now)
                .unwrap_or_default()
                .into_iter()
                .filter(|name| !present.contains(name))
                .collect()
        };
        for name in gone {
            self.drop_runs_ahead(&name, Vec::new(), now).await;
        }
        self.started = true;
        self.parsed.retain(|name, _| present.contains(name));
        self.reconciled.retain(|name, _| present.contains(name));
        self.timetables.retain(|key, _| keys_in_use.contains(key));
        self.last_slot.retain(|(name, _), _| present.contains(name));
        report
    }

    /// Deletes the not-yet-started runs that schedules of `deployment` other
    /// than `keep` made for after `now`. True when that was recorded.
    async fn drop_runs_ahead(
        &mut self,
        deployment: &str,
        keep: Vec<String>,
        now: TimestampMicros,
    ) -> bool {
        let write = Write::DropScheduledRuns {
            deployment: deployment.to_string(),
            keep,
            after: now,
        };
        let ticket = self
            .dispatcher
            .control()
            .record(vec![write], Durability::Committed);
        let done = match ticket {
            Some(ticket) => ticket.committed().await,
            None => Ok(()),
        };
        // Slots were deleted: the store says where each schedule stands.
        self.last_slot.retain(|(name, _), _| name != deployment);
        match done {
            Ok(()) => true,
            Err(e) => {
                self.complain(
                    deployment,
                    format!("removing runs of changed schedules: {e}"),
                );
                false
            }
        }
    }

    fn complain(&mut self, deployment: &str, message: String) {
        if self.complained.get(deployment) != Some(&message) {
            tracing::warn!("deployment '{deployment}' could not be scheduled: {message}");
            self.complained.insert(deployment.to_string(), message);
        }
    }
}

/// What a deployment gives the runs it makes when they are created (params,
/// pool, limits, grants, tags), without its schedules and paused flag.
fn run_shape(deployment: &Deployment) -> String {
    let mut shape = deployment.clone();
    shape.schedules.clear();
    shape.paused = false;
    serde_json::to_string(&shape).unwrap_or_default()
}

fn is_slot_taken(error: &DispatchError) -> bool {
    matches!(
        error,
        DispatchError::Store(StoreError::SlotTaken { .. })
            | DispatchError::Control(ControlError::Store(StoreError::SlotTaken { .. }))
    )
}

/// The fire times to make runs for now, in order: those missed (after
/// `last`, more than `late_after` ago) that `catchup` keeps, then every one
/// from then up to `look_ahead` from `now`, at most `max_ahead`.
fn plan(
    timetable: &Timetable,
    last: TimestampMicros,
    now: TimestampMicros,
    settings: &SchedulerSettings,
    catchup: Catchup,
    catchup_limit: usize,
) -> Vec<TimestampMicros> {
    let missed_until = now - settings.late_after.as_micros() as i64;
    let horizon = now + settings.look_ahead.as_micros() as i64;
    let keep_missed = match catchup {
        Catchup::Skip => 0,
        Catchup::Latest => 1,
        Catchup::All => catchup_limit,
    };
    let mut times = timetable.latest_between(last, missed_until, keep_missed);
    // `max_ahead` bounds the runs waiting ahead, not the runs made per
    // tick: those made by earlier ticks (up to `last`) count.
    let mut waiting = 0;
    let mut seen = now;
    while waiting < settings.max_ahead {
        match timetable.next_after(seen) {
            Some(next) if next <= last => {
                waiting += 1;
                seen = next;
            }
            _ => break,
        }
    }
    let room = times.len() + settings.max_ahead - waiting;
    let mut at = last.max(missed_until);
    while times.len() < room {
        match timetable.next_after(at) {
            Some(next) if next <= horizon => {
                times.push(next);
                at = next;
            }
            _ => break,
        }
    }
    times
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

    const MIN: i64 = 60_000_000;

    fn plan_every_minute(last: i64, now: i64, catchup: Catchup, limit: usize) -> Vec<i64> {
        let settings = SchedulerSettings {
            look_ahead: Duration::from_secs(120),
            max_ahead: 100,
            ..SchedulerSettings::default()
        };
        let every_minute = Timetable::interval(60, None).unwrap();
        plan(&every_minute, last, now, &settings, catchup, limit)
            .into_iter()
            .map(|t| t / MIN)
            .collect()
    }

    #[test]
    fn after_downtime_each_policy_keeps_its_missed_times() {
        // Last run made for minute 10; back at 20:30. Minutes 11-19 were
        // missed (more than a minute ago); 20 is just due; 21, 22 ahead.
        let (last, now) = (10 * MIN, 20 * MIN + 30_000_000);
        assert_eq!(plan_every_minute(last, now, Catchup::Skip, 5), [20, 21, 22]);
        assert_eq!(
            plan_every_minute(last, now, Catchup::Latest, 5),
            [19, 20, 21, 22]
        );
        assert_eq!(
            plan_every_minute(last, now, Catchup::All, 3),
            [17, 18, 19, 20, 21, 22]
        );
        assert_eq!(
            plan_every_minute(last, now, Catchup::All, 100),
            [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]
        );
    }

    #[test]
    fn without_downtime_only_new_times_ahead_are_planned() {
        assert_eq!(plan_every_minute(22 * MIN, 21 * MIN, Catchup::All, 5), [23]);
        assert_eq!(
            plan_every_minute(23 * MIN, 21 * MIN, Catchup::Latest, 5),
            Vec::<i64>::new()
        );
    }

    #[test]
    fn at_most_max_ahead_runs_are_planned() {
        let settings = SchedulerSettings {
            look_ahead: Duration::from_secs(3600),
            max_ahead: 7,
            ..SchedulerSettings::default()
        };
        let every_second = Timetable::interval(1, None).unwrap();
        let first = plan(&every_second, 0, 0, &settings, Catchup::Skip, 1);
        assert_eq!(first.len(), 7);
        // The next tick, a moment later: the 7 are still waiting, so none
        // more (it made 100 per tick before, up to the whole hour).
        let last = *first.last().unwrap();
        assert!(plan(&every_second, last, 1, &settings, Catchup::Skip, 1).is_empty());
        // Two seconds on, two ran: two more.
        assert_eq!(
            plan(&every_second, last, 2_000_000, &settings, Catchup::Skip, 1).len(),
            2
        );
    }
}
