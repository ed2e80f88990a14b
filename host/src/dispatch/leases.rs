//! Leases: who runs a flow run, and how everyone else learns that it died.
//!
//! Whoever claims a run (the embedded executor of a server, a `host flow
//! run` process, a remote host) holds it under a lease: a holder name, an
//! epoch that grows with every claim, and an expiry that the holder pushes
//! forward while it lives. A run whose lease ran out is `Crashed` and may be
//! resumed; its unfinished subflows (which live under their root's lease)
//! are crashed with it.
//!
//! Expiry alone would make a restarted server wait a whole lease before it
//! resumes what it left behind, so a holder on this machine is also known
//! dead at once when its process is gone, or when this process has its pid
//! but not its boot mark (a container's server is PID 1 again after every
//! restart, so a pid alone proves nothing).

use crate::control::{Control, Durability};
use crate::model::{FailureKind, RunState, TimestampMicros};
use crate::store::{FlowRunRow, StateChange, Store, StoreError, Write};
use std::sync::OnceLock;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a claim holds a run without being renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// "host pid=N boot=B": names a process uniquely, even when a restart in a
/// container gives the next one the same host name and pid.
pub fn process_marker(host_name: &str) -> String {
    format!(
        "{host_name} pid={} boot={}",
        std::process::id(),
        boot_mark()
    )
}

/// The marker of this process on this machine, as leases and runs record it.
pub fn this_process_marker() -> String {
    static MARKER: OnceLock<String> = OnceLock::new();
    MARKER
        .get_or_init(|| process_marker(&local_host_name()))
        .clone()
}

/// This machine's name, as markers record it.
pub fn local_host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "local".into())
}

/// Random per process start.
fn boot_mark() -> &'static str {
    static MARK: OnceLock<String> = OnceLock::new();
    MARK.get_or_init(|| uuid::Uuid::now_v7().simple().to_string()[24..].to_string())
}

/// Whether the process a marker names is certainly gone: it ran on this
/// machine and no process has its pid now, or this process has its pid (so
/// it is an earlier life of a restarted container). Markers of other
/// machines say nothing: their leases expire instead.
pub fn holder_gone(marker: &str) -> bool {
    let Some((host, rest)) = marker.rsplit_once(" pid=") else {
        return false;
    };
    if host != local_host_name() {
        return false;
    }
    let (pid, boot) = match rest.split_once(" boot=") {
        Some((pid, boot)) => (pid, Some(boot)),
        None => (rest, None),
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    if pid == std::process::id() {
        return boot != Some(boot_mark());
    }
    !process_alive(pid)
}

/// Whether a process with this pid exists on this machine.
pub fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A run whose holder is gone, and why.
pub struct LostRun {
    pub run: FlowRunRow,
    pub why: String,
}

/// Unfinished top-level runs whose holder is gone or whose lease ran out by
/// `now`. Runs recorded before leases existed are judged by their process
/// marker alone.
pub fn lost_runs(store: &Store, now: TimestampMicros) -> Result<Vec<LostRun>, StoreError> {
    let mut lost = Vec::new();
    for run in store.unfinished_flow_runs()? {
        if run.parent_flow_run.is_some() {
            continue;
        }
        let why = match (&run.lease_holder, run.lease_expires_at) {
            (Some(holder), _) if holder_gone(holder) => {
                format!("the process running it ({holder}) stopped before it finished")
            }
            (Some(holder), Some(expires)) if expires < now => {
                format!("host {holder} lost: it stopped renewing its lease")
            }
            (Some(_), _) => continue,
            (None, _) => match run.host.as_deref() {
                Some(marker) if holder_gone(marker) => {
                    format!("the process running it ({marker}) stopped before it finished")
                }
                _ => continue,
            },
        };
        lost.push(LostRun { run, why });
    }
    Ok(lost)
}

/// Whether anyone alive holds `run` at `now`.
pub fn is_held(run: &FlowRunRow, now: TimestampMicros) -> bool {
    match (&run.lease_holder, run.lease_expires_at) {
        (Some(holder), Some(expires)) => expires >= now && !holder_gone(holder),
        (Some(holder), None) => !holder_gone(holder),
        (None, _) => run.host.as_deref().is_some_and(|m| !holder_gone(m)),
    }
}

/// Marks lost runs `Crashed`, with their unfinished subflows; returns the
/// top-level runs it crashed. Blocks on the store.
pub fn crash_lost_runs(control: &Control) -> Vec<FlowRunRow> {
    let store = control.store();
    let lost = match lost_runs(store, control.now()) {
        Ok(lost) => lost,
        Err(e) => {
            tracing::warn!("looking for runs whose holder is gone: {e}");
            return Vec::new();
        }
    };
    let mut crashed = Vec::new();
    for LostRun { run, why } in lost {
        if crash_tree(control, &run, &why) {
            crashed.push(run);
        }
    }
    crashed
}

/// Crashes `run` and every unfinished subflow below it in one unit.
/// Returns false if the run moved meanwhile (it ended, or was claimed).
///
/// `run` is what the caller read when it judged the run lost. The state
/// alone cannot tell that the run moved: a retry sends it back to its pool
/// and the next claim makes it `Pending` again, so the crash also requires
/// the lease it judged (holder and epoch) to be the run's lease still.
pub fn crash_tree(control: &Control, run: &FlowRunRow, why: &str) -> bool {
    let now = control.now();
    let mut with = Vec::new();
    if let Some(holder) = &run.lease_holder {
        with.push(Write::CheckLease {
            id: run.id,
            holder: holder.clone(),
            epoch: run.lease_epoch,
        });
    }
    for sub in control
        .store()
        .unfinished_descendants(run.id)
        .unwrap_or_default()
        .into_iter()
        .rev()
    {
        let mut change = StateChange::new(sub.id.0, sub.state, RunState::Crashed, now);
        change.message = Some(format!("its parent run {} crashed: {why}", run.id));
        change.failure_kind = Some(FailureKind::Crashed);
        with.push(Write::FlowRunState(change));
    }
    let mut change = StateChange::new(run.id.0, run.state, RunState::Crashed, now);
    change.message = Some(why.to_string());
    change.failure_kind = Some(FailureKind::Crashed);
    match control.change_flow_run(change, with, Durability::Committed) {
        Ok(Some(ticket)) => match ticket.wait_blocking() {
            Ok(()) => true,
            Err(StoreError::Conflict { .. } | StoreError::LeaseLost { .. }) => false,
            Err(e) => {
                tracing::warn!("flow run {} could not be marked Crashed: {e}", run.id);
                false
            }
        },
        Ok(None) => true,
        Err(e) => {
            tracing::warn!("flow run {} could not be marked Crashed: {e}", run.id);
            false
        }
    }
}

/// Gives every run held by a holder not known to be gone a whole `ttl`
/// from now: its holder could not renew while no server was running. Call
/// once, when a server opens, before [`crash_lost_runs`].
pub fn grace_after_downtime(control: &Control, ttl: Duration) {
    let ids: Vec<_> = match control.store().held_runs() {
        Ok(runs) => runs
            .into_iter()
            .filter(|r| r.lease_holder.as_deref().is_some_and(|h| !holder_gone(h)))
            .map(|r| r.id)
            .collect(),
        Err(e) => {
            tracing::warn!("reading held runs: {e}");
            return;
        }
    };
    if ids.is_empty() {
        return;
    }
    let until = control.now() + ttl.as_micros() as i64;
    if let Some(ticket) = control.record(
        vec![Write::ExtendLeases { ids, until }],
        Durability::Committed,
    ) && let Err(e) = ticket.wait_blocking()
    {
        tracing::warn!("extending leases after downtime: {e}");
    }
}

/// Renews every run `holder` holds, every third of `ttl`, until `stop`.
pub async fn keep_leases(
    control: std::sync::Arc<Control>,
    holder: String,
    ttl: Duration,
    stop: CancellationToken,
) {
    let every = ttl / 3;
    loop {
        let expires_at = control.now() + ttl.as_micros() as i64;
        control.record(
            vec![Write::RenewLeases {
                holder: holder.clone(),
                expires_at,
            }],
            Durability::Detached,
        );
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_life_with_this_pid_is_gone() {
        let me = this_process_marker();
        assert!(!holder_gone(&me), "this process is alive");
        let host = local_host_name();
        let pid = std::process::id();
        // PID 1 again after a container restart: same host, same pid, another boot.
        assert!(holder_gone(&format!("{host} pid={pid} boot=00000000")));
        // A marker written before boot marks existed, with this pid: an earlier life.
        assert!(holder_gone(&format!("{host} pid={pid}")));
    }

    #[test]
    fn markers_of_other_machines_are_judged_by_expiry_only() {
        assert!(!holder_gone("elsewhere pid=1 boot=abcd"));
        assert!(!holder_gone("remote-host-7"));
    }

    #[test]
    fn a_dead_pid_on_this_machine_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let host = local_host_name();
        assert!(holder_gone(&format!("{host} pid={pid} boot=abcd")));
    }
}
