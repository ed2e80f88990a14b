//! SQL text both backends share: the column lists their row readers
//! decode by position, and the unfinished states. Both schemas name their
//! tables and columns alike.

/// Flow runs that have not ended, as SQL.
pub(super) const UNFINISHED: &str = "state IN ('Pending', 'Running', 'Retrying', 'Cancelling')";

pub(super) const FLOW_RUN_SELECT: &str =
    "SELECT id, parent_flow_run, component, flow_name, params, state, message,
    failure_kind, result, attempt, host, created_us, started_us, ended_us, fuel_used, peak_memory,
    deployment, tags, scheduled_us, work_pool, work_queue, secret_grants,
    lease_holder, lease_epoch, lease_expires_us, deployment_version FROM flow_runs";

pub(super) const TASK_RUN_SELECT: &str = "SELECT id, flow_run, call_seq, task_name, input, output, state, failure_kind,
    message, attempts, fuel_used, peak_memory, created_us, started_us, ended_us, next_attempt_us, cached_from, host,
    input_sha256
    FROM task_runs";

pub(super) const DELIVERY_SELECT: &str =
    "SELECT id, automation, flow_run, event, payload, status, attempts, next_attempt_us,
    last_error, response_code, created_us, delivered_us FROM automation_deliveries";

/// Tags (or grants) as stored: a JSON array, or NULL when there are none.
pub(super) fn tags_text(tags: &[String]) -> Option<String> {
    (!tags.is_empty()).then(|| serde_json::to_string(tags).unwrap_or_default())
}

/// Slots still held: their run has not ended and its lease has not lapsed
/// (a subflow has no lease of its own: it lives while unfinished). A WHERE
/// clause on `limit_slots`, with the time as the backend's parameter `now`.
pub(super) fn live_slot(now: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM flow_runs f WHERE f.id = limit_slots.flow_run AND f.{UNFINISHED}
         AND (f.lease_expires_us IS NULL OR f.lease_expires_us > {now}))"
    )
}
