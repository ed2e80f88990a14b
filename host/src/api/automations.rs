//! Automations (webhooks on run events) and their deliveries. Header values
//! are write-only: they may carry tokens, so replies show their names only.

use super::deployments::{delete_object, put_object};
use super::wire::{AutomationInfo, AutomationList, Deleted, Delivery, DeliveryList};
use super::{ApiError, ApiResult, ApiState, parse_body, schema};
use crate::clock::format_rfc3339;
use crate::model::Automation;
use crate::model::deploy::REDACTED;
use crate::store::{DeliveryRow, ObjectKind, ObjectRow};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use std::sync::Arc;

fn shown(row: &ObjectRow) -> ApiResult<AutomationInfo> {
    let mut automation: Automation = serde_json::from_str(&row.body).map_err(ApiError::internal)?;
    for value in automation.headers.values_mut() {
        *value = REDACTED.to_string();
    }
    Ok(AutomationInfo {
        automation,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

fn load(state: &ApiState, name: &str) -> ApiResult<(Automation, ObjectRow)> {
    let row = state
        .store
        .object(ObjectKind::Automation, name)?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no automation named '{name}'; see `host automation ls`"
            ))
        })?;
    let automation = serde_json::from_str(&row.body).map_err(ApiError::internal)?;
    Ok((automation, row))
}

/// Automations.
#[utoipa::path(get, path = "/api/automations", tag = "automations",
    responses((status = 200, body = super::wire::AutomationList)))]
pub(super) async fn list_automations(
    State(state): State<Arc<ApiState>>,
) -> ApiResult<Json<AutomationList>> {
    state
        .blocking(|state| {
            let automations = state
                .store
                .objects(ObjectKind::Automation)?
                .iter()
                .map(shown)
                .collect::<ApiResult<Vec<_>>>()?;
            Ok(Json(AutomationList { automations }))
        })
        .await
}

/// Create or replace an automation.
#[utoipa::path(put, path = "/api/automations/{name}", tag = "automations",
    params(("name" = String, Path)),
    request_body(content = schema::Automation, content_type = "application/json"),
    responses((status = 201, body = super::wire::AutomationInfo), (status = 200, body = super::wire::AutomationInfo),
        (status = 400, body = super::ErrorReply)))]
pub(crate) async fn put_automation(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<AutomationInfo>)> {
    let automation: Automation =
        parse_body(&body, "an automation: {\"name\", \"on\", \"webhook\", ...}")?;
    if automation.name != name {
        return Err(ApiError::bad_request(
            "name_mismatch",
            format!(
                "the body names automation '{}' but the path '{name}'",
                automation.name
            ),
        ));
    }
    automation
        .validate()
        .map_err(|e| ApiError::bad_request("invalid_automation", e.to_string()))?;
    state
        .blocking(move |state| {
            let existed = state.store.object(ObjectKind::Automation, &name)?.is_some();
            put_object(state, ObjectKind::Automation, &name, &automation)?;
            let (_, row) = load(state, &name)?;
            let status = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((status, Json(shown(&row)?)))
        })
        .await
}

/// An automation (header values hidden).
#[utoipa::path(get, path = "/api/automations/{name}", tag = "automations",
    params(("name" = String, Path)),
    responses((status = 200, body = super::wire::AutomationInfo), (status = 404, body = super::ErrorReply)))]
pub(super) async fn get_automation(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<AutomationInfo>> {
    state
        .blocking(move |state| Ok(Json(shown(&load(state, &name)?.1)?)))
        .await
}

/// Delete an automation (its deliveries' records stay; pending ones are not sent).
#[utoipa::path(delete, path = "/api/automations/{name}", tag = "automations",
    params(("name" = String, Path)),
    responses((status = 200, body = super::wire::Deleted), (status = 404, body = super::ErrorReply)))]
pub(crate) async fn delete_automation(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Deleted>> {
    state
        .blocking(move |state| delete_object(state, ObjectKind::Automation, &name))
        .await
}

/// Pauses or resumes the automation `name`; the UI's buttons call this too.
pub(crate) async fn set_paused(
    state: Arc<ApiState>,
    name: String,
    paused: bool,
) -> ApiResult<Json<AutomationInfo>> {
    state
        .blocking(move |state| {
            let (mut automation, _) = load(state, &name)?;
            automation.paused = paused;
            put_object(state, ObjectKind::Automation, &name, &automation)?;
            Ok(Json(shown(&load(state, &name)?.1)?))
        })
        .await
}

/// Pause an automation: no new deliveries are queued or sent until it resumes.
#[utoipa::path(post, path = "/api/automations/{name}/pause", tag = "automations",
    params(("name" = String, Path)),
    responses((status = 200, body = super::wire::AutomationInfo), (status = 404, body = super::ErrorReply)))]
pub(super) async fn pause_automation(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<AutomationInfo>> {
    set_paused(state, name, true).await
}

/// Resume a paused automation.
#[utoipa::path(post, path = "/api/automations/{name}/resume", tag = "automations",
    params(("name" = String, Path)),
    responses((status = 200, body = super::wire::AutomationInfo), (status = 404, body = super::ErrorReply)))]
pub(super) async fn resume_automation(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<AutomationInfo>> {
    set_paused(state, name, false).await
}

#[derive(Deserialize)]
pub(super) struct DeliveryQuery {
    limit: Option<usize>,
}

fn delivery(d: &DeliveryRow) -> Delivery {
    Delivery {
        id: d.id,
        flow_run_id: d.flow_run.to_string(),
        event: d.event.clone(),
        status: d.status.clone(),
        attempts: d.attempts,
        last_error: d.last_error.clone(),
        response_code: d.response_code,
        created_at: format_rfc3339(d.created_at),
        next_attempt_at: (d.status == "pending").then(|| format_rfc3339(d.next_attempt_at)),
        delivered_at: d.delivered_at.map(format_rfc3339),
        payload: d.payload.clone(),
    }
}

/// An automation's deliveries, newest first: status, attempts, last error
/// and response code.
#[utoipa::path(get, path = "/api/automations/{name}/deliveries", tag = "automations",
    params(("name" = String, Path), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = super::wire::DeliveryList), (status = 404, body = super::ErrorReply)))]
pub(super) async fn list_deliveries(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Query(query): Query<DeliveryQuery>,
) -> ApiResult<Json<DeliveryList>> {
    state
        .blocking(move |state| {
            load(state, &name)?;
            let rows = state
                .store
                .deliveries(&name, query.limit.unwrap_or(100).min(1000))?;
            Ok(Json(DeliveryList {
                deliveries: rows.iter().map(delivery).collect(),
            }))
        })
        .await
}
