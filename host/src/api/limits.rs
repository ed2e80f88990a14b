//! Concurrency and rate limits: defined by name, shared by every run on
//! every host. Tasks take a slot of each limit named like one of their
//! tags; code takes them with `take-slots`. Remote hosts take and give
//! back slots here (`/api/concurrency-slots/...`), through the same
//! `dispatch::limits` as the server's own executor.

use super::deployments::{delete_object, put_object};
use super::{ApiError, ApiResult, ApiState, parse_body, schema};
use crate::dispatch::limits::{self, LimitRefusal, TakeSlots, Taken};
use crate::model::TimestampMicros;
use crate::model::limits::ConcurrencyLimit;
use crate::store::{ObjectKind, SlotRow};
use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A limit with what is taken of it now.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LimitInfo {
    pub name: String,
    pub slots: u32,
    /// Set for a rate limit: slots come back at this rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_decay_per_second: Option<f64>,
    /// Slots taken now (a rate limit's: not yet come back, rounded up).
    pub in_use: u64,
    /// Who holds a concurrency limit's slots, oldest first.
    pub holders: Vec<SlotHolder>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SlotHolder {
    pub flow_run: String,
    pub slots: u32,
    /// When they were taken, µs since the epoch.
    pub taken_at: i64,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LimitList {
    pub limits: Vec<LimitInfo>,
}

/// `PUT /api/concurrency-limits/{name}`'s body.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitBody {
    #[schema(minimum = 1, maximum = 1000000)]
    pub slots: u32,
    /// Makes it a rate limit: above 0, at most 1000000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0, maximum = 1000000)]
    pub slot_decay_per_second: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSlots {
    #[schema(value_type = String, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub lease: uuid::Uuid,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Released {
    #[schema(value_type = String)]
    pub released: uuid::Uuid,
}

/// Every limit with its use now. Blocks.
fn limit_infos(state: &ApiState, only: Option<&str>) -> ApiResult<Vec<LimitInfo>> {
    let now = state.now();
    let rows = match only {
        Some(name) => state
            .store
            .object(ObjectKind::ConcurrencyLimit, name)?
            .into_iter()
            .collect(),
        None => state.store.objects(ObjectKind::ConcurrencyLimit)?,
    };
    let held = state.store.held_slots(now)?;
    let marks = state.store.rate_marks()?;
    rows.iter()
        .map(|row| {
            let limit: ConcurrencyLimit =
                serde_json::from_str(&row.body).map_err(ApiError::internal)?;
            Ok(info(limit, &held, &marks, now))
        })
        .collect()
}

/// One limit with its use now, or 404. Blocks.
fn one_limit(state: &ApiState, name: &str) -> ApiResult<LimitInfo> {
    limit_infos(state, Some(name))?
        .pop()
        .ok_or_else(|| ApiError::not_found(format!("no concurrency limit named '{name}'")))
}

fn info(
    limit: ConcurrencyLimit,
    held: &[SlotRow],
    marks: &[(String, TimestampMicros)],
    now: TimestampMicros,
) -> LimitInfo {
    let (in_use, holders) = match limit.slot_decay_per_second {
        Some(rate) => {
            let mark = marks
                .iter()
                .find(|(name, _)| *name == limit.name)
                .map_or(now, |(_, tat)| *tat);
            let level = (mark - now).max(0) as f64 * rate / 1e6;
            (level.ceil() as u64, Vec::new())
        }
        None => {
            let holders: Vec<SlotHolder> = held
                .iter()
                .filter(|slot| slot.name == limit.name)
                .map(|slot| SlotHolder {
                    flow_run: slot.flow_run.to_string(),
                    slots: slot.slots,
                    taken_at: slot.taken_at,
                })
                .collect();
            (holders.iter().map(|h| u64::from(h.slots)).sum(), holders)
        }
    };
    LimitInfo {
        name: limit.name,
        slots: limit.slots,
        slot_decay_per_second: limit.slot_decay_per_second,
        in_use,
        holders,
    }
}

/// Every concurrency and rate limit, with the slots taken of each now.
#[utoipa::path(get, path = "/api/concurrency-limits", tag = "limits",
    responses((status = 200, body = LimitList)))]
pub(super) async fn list_limits(State(state): State<Arc<ApiState>>) -> ApiResult<Json<LimitList>> {
    state
        .blocking(|state| {
            Ok(Json(LimitList {
                limits: limit_infos(state, None)?,
            }))
        })
        .await
}

/// A limit, with who holds its slots.
#[utoipa::path(get, path = "/api/concurrency-limits/{name}", tag = "limits",
    params(("name" = String, Path)),
    responses((status = 200, body = LimitInfo), (status = 404, body = super::ErrorReply)))]
pub(super) async fn get_limit(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<LimitInfo>> {
    state
        .blocking(move |state| one_limit(state, &name).map(Json))
        .await
}

/// Creates a limit, or changes its slots or rate. Slots held stay held: a
/// limit lowered below its use takes no new holder until enough are back.
#[utoipa::path(put, path = "/api/concurrency-limits/{name}", tag = "limits",
    params(("name" = String, Path)),
    request_body(content = LimitBody, content_type = "application/json"),
    responses((status = 200, body = LimitInfo), (status = 400, body = super::ErrorReply)))]
pub(super) async fn put_limit(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<LimitInfo>> {
    let LimitBody {
        slots,
        slot_decay_per_second,
    } = parse_body(
        &body,
        r#"{"slots": N, "slot_decay_per_second": R (for a rate limit)}"#,
    )?;
    state
        .blocking(move |state| {
            let limit = ConcurrencyLimit {
                name,
                slots,
                slot_decay_per_second,
            };
            limit
                .check()
                .map_err(|e| ApiError::bad_request("bad_limit", e.to_string()))?;
            put_object(state, ObjectKind::ConcurrencyLimit, &limit.name, &limit)?;
            one_limit(state, &limit.name).map(Json)
        })
        .await
}

/// Deletes a limit. Its holders keep what they took until they give it back.
#[utoipa::path(delete, path = "/api/concurrency-limits/{name}", tag = "limits",
    params(("name" = String, Path)),
    responses((status = 200, body = super::wire::Deleted), (status = 404, body = super::ErrorReply)))]
pub(super) async fn delete_limit(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<super::wire::Deleted>> {
    state
        .blocking(move |state| delete_object(state, ObjectKind::ConcurrencyLimit, &name))
        .await
}

/// One attempt to take slots for a flow run (remote hosts): `taken` with a
/// lease to give back, `unlimited`, or `full` (ask again; a rate limit says when).
#[utoipa::path(post, path = "/api/concurrency-slots/take", tag = "limits",
    request_body(content = schema::TakeSlotsRequest, content_type = "application/json"),
    responses((status = 200, body = schema::SlotOutcome), (status = 400, body = super::ErrorReply),
        (status = 404, body = super::ErrorReply), (status = 409, body = super::ErrorReply)))]
pub(super) async fn take_slots(
    State(state): State<Arc<ApiState>>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Taken>> {
    let ask: TakeSlots = parse_body(
        &body,
        r#"{"flow_run": ID, "names": ["db"], "slots": 1, "strict": true}"#,
    )?;
    state
        .blocking(move |state| {
            let control = state.dispatcher.control();
            ask.check()
                .and_then(|()| limits::check_run(control, ask.flow_run))
                .and_then(|()| limits::try_take(control, &ask))
                .map(Json)
                .map_err(|refusal| {
                    let message = refusal.to_string();
                    match refusal {
                        LimitRefusal::Unknown(_) | LimitRefusal::UnknownRun(_) => {
                            ApiError::not_found(message)
                        }
                        LimitRefusal::BadSlots(_) | LimitRefusal::BadNames => {
                            ApiError::bad_request("bad_slots", message)
                        }
                        LimitRefusal::TooMany { .. } | LimitRefusal::RunEnded(_) => {
                            ApiError::conflict(message)
                        }
                        LimitRefusal::Store(_) => ApiError::internal(message),
                    }
                })
        })
        .await
}

/// Gives back the slots a lease holds (nothing if they are back already).
#[utoipa::path(post, path = "/api/concurrency-slots/release", tag = "limits",
    request_body(content = ReleaseSlots, content_type = "application/json"),
    responses((status = 200, body = Released), (status = 400, body = super::ErrorReply)))]
pub(super) async fn release_slots(
    State(state): State<Arc<ApiState>>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Released>> {
    let ReleaseSlots { lease } = parse_body(&body, r#"{"lease": ID}"#)?;
    limits::release(state.dispatcher.control(), lease);
    Ok(Json(Released { released: lease }))
}
