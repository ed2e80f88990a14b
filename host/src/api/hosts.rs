//! The remote-host protocol over HTTP: claim (a long poll), heartbeat,
//! report, and the list of hosts. What each does is the dispatcher's
//! (`dispatch::remote`); this file only moves it on and off the wire.

use super::runs::parse_run_id;
use super::wire::{Accepted, HostInfo, HostList};
use super::{ApiError, ApiResult, ApiState, parse_body, schema};
use crate::dispatch::RunSource;
use crate::dispatch::remote::{
    ClaimRequest, Heartbeat, HeartbeatReply, RemoteClaim, RemoteClaims, Report,
};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;

/// The longest a claim waits for work before answering 204.
const MAX_CLAIM_WAIT: Duration = Duration::from_secs(25);

/// Take the next run of the host's pools: 200 with the run (now leased to
/// the host), or 204 when none became ready within `wait_ms`. Hands over
/// the run's secrets in clear, so it needs an admin key.
#[utoipa::path(post, path = "/api/hosts/claim", tag = "hosts",
    request_body = schema::HostClaimRequest,
    responses((status = 200, body = schema::HostClaim),
        (status = 204, description = "Nothing became ready in time; ask again")))]
pub(super) async fn claim(
    State(state): State<Arc<ApiState>>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let request: ClaimRequest = parse_body(&body, "a claim (see /api/openapi.json)")?;
    request.check_max_runs()?;
    // One run, whatever the host asked for: the reply has room for one.
    let request = ClaimRequest {
        max_runs: 1,
        ..request
    };
    Ok(match wait_for_claims(&state, request).await?.pop() {
        Some(claim) => Json(claim).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// Take up to `max_runs` runs of the host's pools in one round trip (a
/// host asks for its free slots): 200 with the runs, each leased to the
/// host, as soon as at least one is ready, or 204 when none became ready
/// within `wait_ms`. Needs an admin key, as a single claim does.
#[utoipa::path(post, path = "/api/hosts/claims", tag = "hosts",
    request_body = schema::HostClaimRequest,
    responses((status = 200, body = schema::HostClaims),
        (status = 204, description = "Nothing became ready in time; ask again")))]
pub(super) async fn claims(
    State(state): State<Arc<ApiState>>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let request: ClaimRequest = parse_body(&body, "a claim (see /api/openapi.json)")?;
    request.check_max_runs()?;
    let claims = wait_for_claims(&state, request).await?;
    Ok(if claims.is_empty() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        Json(RemoteClaims { claims }).into_response()
    })
}

/// The long poll behind both claims: runs as soon as any is ready, or none
/// once `wait_ms` (at most [`MAX_CLAIM_WAIT`]) has passed.
async fn wait_for_claims(
    state: &Arc<ApiState>,
    request: ClaimRequest,
) -> ApiResult<Vec<RemoteClaim>> {
    if request.pools.is_empty() {
        return Err(ApiError::bad_request(
            "no_pools",
            "name at least one pool to take runs from".to_string(),
        ));
    }
    let wait = Duration::from_millis(request.wait_ms).min(MAX_CLAIM_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let dispatcher = state.dispatcher.clone();
    loop {
        // Interest first, so a run created between the look and the wait wakes us.
        let ready = RunSource::work_ready(&*dispatcher);
        let claims = dispatcher.claim_remote_some(request.clone()).await?;
        if !claims.is_empty() {
            return Ok(claims);
        }
        tokio::select! {
            _ = ready => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            _ = state.shutdown.cancelled() => return Ok(Vec::new()),
        }
    }
}

/// Renew the leases of the runs a host holds; says which it lost and which
/// someone asked to cancel.
#[utoipa::path(post, path = "/api/hosts/heartbeat", tag = "hosts",
    request_body = schema::HostHeartbeat,
    responses((status = 200, body = schema::HostHeartbeatReply)))]
pub(super) async fn heartbeat(
    State(state): State<Arc<ApiState>>,
    body: axum::body::Bytes,
) -> ApiResult<Json<HeartbeatReply>> {
    let beat: Heartbeat = parse_body(&body, "a heartbeat (see /api/openapi.json)")?;
    Ok(Json(state.dispatcher.heartbeat(beat).await?))
}

/// Record what a host recorded for a run it holds (states, task runs,
/// logs). 409 when the host's lease on the run is lost: it must stop it.
#[utoipa::path(post, path = "/api/flow-runs/{id}/report", tag = "hosts",
    params(("id" = String, Path)),
    request_body = schema::HostReport,
    responses((status = 200, body = super::wire::Accepted),
        (status = 404, body = super::ErrorReply),
        (status = 409, body = super::ErrorReply, description = "The host does not hold the run (any more)")))]
pub(super) async fn report(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Accepted>> {
    let report: Report = parse_body(&body, "a report (see /api/openapi.json)")?;
    let id = state
        .blocking(move |state| parse_run_id(state, &id))
        .await?;
    state.dispatcher.apply_report(id, report).await?;
    Ok(Json(Accepted { accepted: true }))
}

/// The hosts that have said hello: pools, slots, runs in hand, last heartbeat.
#[utoipa::path(get, path = "/api/hosts", tag = "hosts",
    responses((status = 200, body = super::wire::HostList)))]
pub(super) async fn list_hosts(State(state): State<Arc<ApiState>>) -> ApiResult<Json<HostList>> {
    let hosts = state
        .dispatcher
        .hosts()
        .await?
        .into_iter()
        .map(|(host, online)| HostInfo { host, online })
        .collect();
    Ok(Json(HostList { hosts }))
}
