//! Log retention: a periodic job that deletes log lines older than a setting
//! (`--log-retention 30d` on the server), so a busy server's log table stays
//! bounded. Runs, tasks and their states are kept; `flow-run prune` removes those.

use crate::control::Control;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the job looks, at most: deleting once an hour keeps the table
/// within an hour of the setting without a steady trickle of deletes.
const EVERY: Duration = Duration::from_secs(3600);

/// Deletes log lines older than `keep` now and then every hour (or every
/// `keep`, if shorter) until `stop` is cancelled.
pub async fn log_retention_job(control: Arc<Control>, keep: Duration, stop: CancellationToken) {
    let every = keep.clamp(Duration::from_secs(1), EVERY);
    loop {
        prune_logs_once(&control, keep);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One pass of the job; returns the lines deleted.
pub fn prune_logs_once(control: &Control, keep: Duration) -> u64 {
    let before = control.now() - keep.as_micros().min(i64::MAX as u128) as i64;
    match control.store().prune_logs_older_than(before) {
        Ok(deleted) => {
            if deleted > 0 {
                tracing::info!(
                    "log retention: deleted {deleted} log lines older than {}",
                    humantime::format_duration(keep)
                );
            }
            deleted
        }
        Err(e) => {
            tracing::warn!("log retention: could not delete old log lines: {e}");
            0
        }
    }
}
