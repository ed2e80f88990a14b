//! Components, flows, flow runs, task runs and logs.

use super::wire::{
    Attempt, ComponentDetail, ComponentList, ComponentSummary, FlowList, FlowRunDetail,
    FlowRunList, FlowSummary, LogList, ResumeInput, RunAction, RunStarted, StartRun, StateEntry,
    TaskRunDetail, TaskRunList, Uploaded,
};
use super::{ApiError, ApiResult, ApiState, parse_body, schema};
use crate::dispatch::{DispatchError, Dispatched, NewRun};
use crate::model::{ComponentDigest, FlowRunId, RunState, TaskRunId};
use crate::store::{FlowRunFilter, RunCursor};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

/// Upload a component: the raw `.wasm` bytes as the body.
///
/// Validated against the `weir:flow` world and stored by sha256; uploading
/// the same bytes again changes nothing.
#[utoipa::path(post, path = "/api/components", tag = "components",
    request_body(content = schema::WasmBytes, content_type = "application/wasm", description = "The component's bytes (at most 64 MiB)"),
    responses(
        (status = 201, body = super::wire::Uploaded, description = "Stored"),
        (status = 200, body = super::wire::Uploaded, description = "Already stored"),
        (status = 400, body = super::ErrorReply, description = "Empty, not a component, or a component of another world"),
        (status = 413, description = "Larger than 64 MiB"),
    ))]
pub(super) async fn upload_component(
    State(state): State<Arc<ApiState>>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Uploaded>)> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "empty_body",
            "send the component's .wasm bytes as the request body (curl --data-binary @flow.wasm)",
        ));
    }
    let (component, existed) = state.dispatcher.store_component(body).await?;
    let reply = Uploaded {
        digest: component.digest.as_str().to_string(),
        size_bytes: component.size_bytes,
        flows: names(&component.manifest),
        created: !existed,
    };
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(reply)))
}

/// Uploaded components, newest first.
#[utoipa::path(get, path = "/api/components", tag = "components",
    responses((status = 200, body = super::wire::ComponentList)))]
pub(super) async fn list_components(
    State(state): State<Arc<ApiState>>,
) -> ApiResult<Json<ComponentList>> {
    let components = state
        .blocking(|state| Ok(state.store.components()?))
        .await?
        .iter()
        .map(|c| ComponentSummary {
            digest: c.digest.clone(),
            size_bytes: c.size_bytes,
            flows: names(&c.manifest),
            created_at: c.created_at,
        })
        .collect();
    Ok(Json(ComponentList { components }))
}

fn names(manifest: &crate::model::Manifest) -> Vec<String> {
    manifest.flows.iter().map(|f| f.name.clone()).collect()
}

pub(super) fn parse_digest(text: &str) -> ApiResult<ComponentDigest> {
    ComponentDigest::parse(text.trim_start_matches("sha256:")).ok_or_else(|| {
        ApiError::bad_request(
            "bad_digest",
            format!("'{text}' is not a sha256 digest (64 lower-case hex characters)"),
        )
    })
}

/// A component's manifest: its flows, tasks, schemas and policies.
#[utoipa::path(get, path = "/api/components/{digest}", tag = "components",
    params(("digest" = String, Path, description = "sha256, hex")),
    responses((status = 200, body = super::wire::ComponentDetail), (status = 404, body = super::ErrorReply)))]
pub(super) async fn get_component(
    State(state): State<Arc<ApiState>>,
    Path(digest): Path<String>,
) -> ApiResult<Json<ComponentDetail>> {
    let digest = parse_digest(&digest)?;
    let row = state
        .blocking(move |state| {
            state
                .store
                .component(&digest)?
                .ok_or_else(|| ApiError::not_found(format!("no component with digest {digest}")))
        })
        .await?;
    Ok(Json(ComponentDetail {
        digest: row.digest,
        size_bytes: row.size_bytes,
        created_at: row.created_at,
        manifest: row.manifest,
    }))
}

/// The component's bytes, as uploaded (remote executors fetch them by digest).
#[utoipa::path(get, path = "/api/components/{digest}/wasm", tag = "components",
    params(("digest" = String, Path, description = "sha256, hex")),
    responses((status = 200, content_type = "application/wasm", body = schema::WasmBytes), (status = 404, body = super::ErrorReply)))]
pub(super) async fn download_component(
    State(state): State<Arc<ApiState>>,
    Path(digest): Path<String>,
) -> ApiResult<Response> {
    let digest = parse_digest(&digest)?;
    let bytes = state
        .blocking(move |state| Ok(state.dispatcher.component_bytes(&digest)?))
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/wasm")], bytes).into_response())
}

/// Flows of every uploaded component.
#[utoipa::path(get, path = "/api/flows", tag = "components",
    responses((status = 200, body = super::wire::FlowList)))]
pub(super) async fn list_flows(State(state): State<Arc<ApiState>>) -> ApiResult<Json<FlowList>> {
    let mut flows = Vec::new();
    let components = state
        .blocking(|state| Ok(state.store.components()?))
        .await?;
    for component in components {
        for flow in &component.manifest.flows {
            flows.push(FlowSummary {
                name: flow.name.clone(),
                component: component.digest.clone(),
                description: flow.description.clone(),
                params_schema: flow.params_schema.clone(),
            });
        }
    }
    Ok(Json(FlowList { flows }))
}

impl StartRun {
    pub(super) fn from_body(body: &[u8]) -> ApiResult<StartRun> {
        if body.is_empty() {
            return Ok(StartRun::default());
        }
        // `null` is "no body" spelled in JSON.
        Ok(
            parse_body::<Option<StartRun>>(body, r#"{"params": {...}, "tags": [...]}"#)?
                .unwrap_or_default(),
        )
    }
}

/// Run a flow of an uploaded component on the server's pool (no deployment).
#[utoipa::path(post, path = "/api/components/{digest}/flows/{flow}/runs", tag = "flow runs",
    params(("digest" = String, Path), ("flow" = String, Path)),
    request_body(content = Option<super::wire::StartRun>, content_type = "application/json",
        description = "Optional: no body runs with the flow's defaults"),
    responses(
        (status = 202, body = super::wire::RunStarted),
        (status = 404, body = super::ErrorReply, description = "No such component or flow"),
        (status = 422, body = super::ErrorReply, description = "Params do not match the flow's schema"),
    ))]
pub(super) async fn start_flow_run(
    State(state): State<Arc<ApiState>>,
    Path((digest, flow)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<RunStarted>)> {
    let digest = parse_digest(&digest)?;
    let start = StartRun::from_body(&body)?;
    let dispatched = state
        .dispatcher
        .create_run(NewRun {
            component: digest,
            flow,
            params: start.params,
            deployment: None,
            tags: start.tags.unwrap_or_default(),
            scheduled_at: None,
            schedule_key: None,
        })
        .await
        .map_err(|e| match e {
            // The flow is named in the path: a missing one is a missing resource.
            DispatchError::UnknownFlow { .. } => ApiError::not_found(e.to_string()),
            other => other.into(),
        })?;
    Ok((StatusCode::ACCEPTED, Json(run_started(dispatched))))
}

/// The reply to retrying, resuming or cancelling a run.
pub(super) fn run_action(dispatched: Dispatched) -> RunAction {
    RunAction {
        flow_run_id: dispatched.id.to_string(),
        state: dispatched.state,
    }
}

/// The reply to starting a run.
pub(super) fn run_started(dispatched: Dispatched) -> RunStarted {
    RunStarted {
        flow_run_id: dispatched.id.to_string(),
        state: dispatched.state,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunQuery {
    state: Option<String>,
    flow: Option<String>,
    deployment: Option<String>,
    tag: Option<String>,
    /// RFC 3339 or microseconds since the epoch.
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Leave out subflow runs.
    top_level: Option<bool>,
}

fn parse_time(name: &str, text: Option<&str>) -> ApiResult<Option<i64>> {
    let Some(text) = text else { return Ok(None) };
    if let Ok(micros) = text.parse::<i64>() {
        return Ok(Some(micros));
    }
    let time = humantime::parse_rfc3339_weak(text).map_err(|e| {
        ApiError::bad_request(
            "bad_query",
            format!("{name}='{text}' is not a time: {e} (use RFC 3339, e.g. 2026-11-25T10:00:00Z)"),
        )
    })?;
    let micros = time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    Ok(Some(micros))
}

/// Flow runs, newest first, filtered and paged.
#[utoipa::path(get, path = "/api/flow-runs", tag = "flow runs",
    params(
        ("state" = Option<String>, Query, description = "e.g. Running, Completed, Failed"),
        ("flow" = Option<String>, Query),
        ("deployment" = Option<String>, Query),
        ("tag" = Option<String>, Query),
        ("since" = Option<String>, Query, description = "created at or after (RFC 3339 or epoch microseconds)"),
        ("until" = Option<String>, Query, description = "created before"),
        ("limit" = Option<usize>, Query, description = "default 50, at most 1000"),
        ("offset" = Option<usize>, Query, description = "rows to skip; deep pages are faster with `cursor`"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page: the page after it, at the same cost however deep"),
        ("top_level" = Option<bool>, Query, description = "true leaves out subflow runs"),
    ),
    responses((status = 200, body = super::wire::FlowRunList), (status = 400, body = super::ErrorReply)))]
pub(super) async fn list_flow_runs(
    State(state): State<Arc<ApiState>>,
    Query(q): Query<RunQuery>,
) -> ApiResult<Json<FlowRunList>> {
    let run_state = q
        .state
        .map(|s| s.parse::<RunState>())
        .transpose()
        .map_err(|e| ApiError::bad_request("bad_query", e.to_string()))?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let offset = q.offset.unwrap_or(0);
    let after = q
        .cursor
        .as_deref()
        .map(str::parse::<RunCursor>)
        .transpose()
        .map_err(|message| ApiError::bad_request("bad_cursor", message))?;
    if after.is_some() && offset > 0 {
        return Err(ApiError::bad_request(
            "bad_query",
            "pass `cursor` or `offset`, not both: a cursor already says where the page starts",
        ));
    }
    let filter = FlowRunFilter {
        state: run_state,
        flow_name: q.flow,
        deployment: q.deployment,
        tag: q.tag,
        since: parse_time("since", q.since.as_deref())?,
        until: parse_time("until", q.until.as_deref())?,
        top_level_only: q.top_level.unwrap_or(false),
        limit,
        offset,
        after,
    };
    let rows = state
        .blocking(move |state| Ok(state.store.list_flow_runs(&filter)?))
        .await?;
    let full = rows.len() == limit;
    let next_offset = (full && after.is_none()).then_some(offset + limit);
    let next_cursor = rows
        .last()
        .filter(|_| full)
        .map(|row| RunCursor::after(row).to_string());
    Ok(Json(FlowRunList {
        flow_runs: rows.into_iter().map(Into::into).collect(),
        next_offset,
        next_cursor,
    }))
}

/// A flow run id, or a unique prefix of one (at least 4 hex characters).
pub(crate) fn parse_run_id(state: &ApiState, text: &str) -> ApiResult<FlowRunId> {
    state.store.resolve_flow_run(text).map_err(|e| match e {
        crate::store::StoreError::NotFound { .. } => ApiError::not_found(format!(
            "no flow run with id '{text}'; list them with `host flow-run ls`"
        )),
        crate::store::StoreError::Corrupt(message) => ApiError::bad_request("bad_id", message),
        other => ApiError::internal(other),
    })
}

/// A flow run and its task runs.
#[utoipa::path(get, path = "/api/flow-runs/{id}", tag = "flow runs",
    params(("id" = String, Path)),
    responses((status = 200, body = super::wire::FlowRunDetail), (status = 404, body = super::ErrorReply)))]
pub(super) async fn get_flow_run(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<FlowRunDetail>> {
    state
        .blocking(move |state| {
            let id = parse_run_id(state, &id)?;
            let run = state.store.flow_run(id)?;
            let tasks = state.store.task_runs(id)?;
            let states = state
                .store
                .state_history(id.0)?
                .into_iter()
                .map(|(at, state, message)| StateEntry { at, state, message })
                .collect();
            Ok(Json(FlowRunDetail {
                flow_run: run.into(),
                task_runs: tasks.into_iter().map(Into::into).collect(),
                states,
            }))
        })
        .await
}

/// The task runs of a flow run, in call order.
#[utoipa::path(get, path = "/api/flow-runs/{id}/task-runs", tag = "flow runs",
    params(("id" = String, Path)),
    responses((status = 200, body = super::wire::TaskRunList), (status = 404, body = super::ErrorReply)))]
pub(super) async fn list_task_runs(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<TaskRunList>> {
    state
        .blocking(move |state| {
            let id = parse_run_id(state, &id)?;
            state.store.flow_run(id)?;
            Ok(Json(TaskRunList {
                task_runs: state
                    .store
                    .task_runs(id)?
                    .into_iter()
                    .map(Into::into)
                    .collect(),
            }))
        })
        .await
}

/// A task run and each of its attempts.
#[utoipa::path(get, path = "/api/task-runs/{id}", tag = "flow runs",
    params(("id" = String, Path)),
    responses((status = 200, body = super::wire::TaskRunDetail), (status = 404, body = super::ErrorReply)))]
pub(super) async fn get_task_run(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<TaskRunDetail>> {
    let id: TaskRunId = id
        .parse()
        .map_err(|_| ApiError::bad_request("bad_id", format!("'{id}' is not a task run id")))?;
    let (run, attempts) = state
        .blocking(move |state| Ok((state.store.task_run(id)?, state.store.task_attempts(id)?)))
        .await?;
    let attempts = attempts
        .into_iter()
        .map(|a| Attempt {
            attempt: a.attempt,
            started_at: a.started_at,
            ended_at: a.ended_at,
            fuel_used: a.fuel_used,
            peak_memory: a.peak_memory,
            failure_kind: a.failure.as_ref().map(|f| f.0),
            message: a.failure.map(|f| f.1),
        })
        .collect();
    Ok(Json(TaskRunDetail {
        task_run: run.into(),
        attempts,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogQuery {
    after: Option<i64>,
    limit: Option<usize>,
}

/// A page of a flow run's log.
#[utoipa::path(get, path = "/api/flow-runs/{id}/logs", tag = "flow runs",
    params(("id" = String, Path),
        ("after" = Option<i64>, Query, description = "only lines with a greater id"),
        ("limit" = Option<usize>, Query, description = "default 1000, at most 10000")),
    responses((status = 200, body = super::wire::LogList), (status = 404, body = super::ErrorReply)))]
pub(super) async fn get_logs(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<LogList>> {
    state
        .blocking(move |state| {
            let id = parse_run_id(state, &id)?;
            state.store.flow_run(id)?;
            let lines = state.store.logs(
                id,
                q.after.unwrap_or(0),
                q.limit.unwrap_or(1000).clamp(1, 10_000),
            )?;
            Ok(Json(LogList {
                logs: lines.into_iter().map(Into::into).collect(),
            }))
        })
        .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CancelQuery {
    force: Option<bool>,
}

/// Cancel a flow run: a waiting run ends at once, a running one within a
/// second. `force=true` ends a run whose executor does not answer.
#[utoipa::path(post, path = "/api/flow-runs/{id}/cancel", tag = "flow runs",
    params(("id" = String, Path),
        ("force" = Option<bool>, Query, description = "end it here even if its executor does not answer")),
    responses((status = 200, body = super::wire::RunAction),
        (status = 404, body = super::ErrorReply),
        (status = 409, body = super::ErrorReply, description = "It already ended")))]
pub(super) async fn cancel_flow_run(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Query(q): Query<CancelQuery>,
) -> ApiResult<Json<RunAction>> {
    let id = state
        .blocking(move |state| parse_run_id(state, &id))
        .await?;
    let force = q.force.unwrap_or(false);
    Ok(Json(run_action(state.dispatcher.cancel(id, force).await?)))
}

/// Resume an interrupted flow run: one whose holder is gone (it is crashed
/// now, with its subflows) or already Crashed goes again, its completed
/// tasks replayed. A run someone still holds gets 409: cancel it first.
///
/// A `Paused` run takes `{"input": ...}`: it must match the JSON Schema its
/// pause asked for (else 422 and the run stays Paused); the run goes again,
/// replaying its finished calls, and its pause returns the input.
#[utoipa::path(post, path = "/api/flow-runs/{id}/resume", tag = "flow runs",
    params(("id" = String, Path)),
    request_body(content = Option<super::wire::ResumeInput>, content_type = "application/json",
        description = "For a Paused run: `{\"input\": <JSON matching its pause's schema>}`"),
    responses((status = 202, body = super::wire::RunAction),
        (status = 404, body = super::ErrorReply),
        (status = 409, body = super::ErrorReply, description = "Someone still holds it, it completed, or input was sent for a run that is not Paused"),
        (status = 422, body = super::ErrorReply, description = "The input does not match the pause's schema; the run stays Paused")))]
pub(super) async fn resume_flow_run(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<RunAction>)> {
    // No body, `null` and `{}` all resume without input.
    let input = if body.is_empty() {
        None
    } else {
        parse_body::<Option<ResumeInput>>(
            &body,
            r#"{"input": <JSON matching the pause's schema>}"#,
        )?
        .and_then(|b| b.input)
    };
    let (id, paused) = state
        .blocking(move |state| {
            let id = parse_run_id(state, &id)?;
            Ok((id, state.store.flow_run(id)?.state == RunState::Paused))
        })
        .await?;
    let dispatched = if paused || input.is_some() {
        state
            .dispatcher
            .resume_paused(id, input.unwrap_or(Value::Null))
            .await?
    } else {
        state.dispatcher.resume(id).await?
    };
    Ok((StatusCode::ACCEPTED, Json(run_action(dispatched))))
}

/// Run a Failed, Crashed, TimedOut or Cancelled flow run again; completed
/// tasks are replayed from their recorded results. It starts at once
/// (`Pending`) when its pool, queue and deployment allow, else it waits
/// (`Scheduled`) like any other run.
#[utoipa::path(post, path = "/api/flow-runs/{id}/retry", tag = "flow runs",
    params(("id" = String, Path)),
    responses((status = 202, body = super::wire::RunAction),
        (status = 404, body = super::ErrorReply),
        (status = 409, body = super::ErrorReply, description = "It has not ended, or it completed")))]
pub(super) async fn retry_flow_run(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<RunAction>)> {
    let id = state
        .blocking(move |state| parse_run_id(state, &id))
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(run_action(state.dispatcher.retry(id).await?)),
    ))
}
