//! Housekeeping through the API: deleting old runs (`host flow-run prune`),
//! so a server's history is pruned the same way from any machine.

use super::{ApiError, ApiResult, ApiState, parse_body};
use crate::clock::format_rfc3339;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The longest age a prune may name: a hundred years, far past any run, and
/// far from overflowing a microsecond clock.
const MAX_AGE_SECONDS: u64 = 100 * 365 * 24 * 3600;

/// Which runs to delete: those that ended longer ago than this.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneRequest {
    /// Seconds; at most 100 years. Unfinished runs are never deleted.
    #[schema(maximum = 3153600000_u64)]
    pub older_than_seconds: u64,
}

/// What a prune deleted.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PruneReply {
    pub flow_runs: u64,
    pub task_runs: u64,
    pub logs: u64,
    pub result_files: u64,
    /// Runs that ended before this time were deleted (RFC 3339).
    pub ended_before: String,
}

/// Deletes runs that ended longer ago than `older_than_seconds`, with their
/// task runs, logs and the result files no kept row shares. Needs an admin
/// key: it destroys history.
#[utoipa::path(post, path = "/api/flow-runs/prune", tag = "flow runs",
    request_body(content = PruneRequest, content_type = "application/json"),
    responses((status = 200, body = PruneReply),
        (status = 400, body = super::ErrorReply, description = "Not a prune request, or an age over 100 years")))]
pub(super) async fn prune_flow_runs(
    State(state): State<Arc<ApiState>>,
    body: axum::body::Bytes,
) -> ApiResult<Json<PruneReply>> {
    let PruneRequest { older_than_seconds } = parse_body(&body, r#"{"older_than_seconds": N}"#)?;
    if older_than_seconds > MAX_AGE_SECONDS {
        return Err(ApiError::bad_request(
            "bad_age",
            format!(
                "older_than_seconds is {older_than_seconds}; name at most {MAX_AGE_SECONDS} (100 years)"
            ),
        ));
    }
    state
        .blocking(move |state| {
            let cutoff = state.now() - older_than_seconds as i64 * 1_000_000;
            let report = state.store.prune(cutoff)?;
            Ok(Json(PruneReply {
                flow_runs: report.flow_runs,
                task_runs: report.task_runs,
                logs: report.logs,
                result_files: report.result_files,
                ended_before: format_rfc3339(cutoff),
            }))
        })
        .await
}
