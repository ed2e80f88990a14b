//! Deployments, and how every run the server makes is launched: now on the
//! embedded executor when its pool, queue and limits allow, or `Scheduled`
//! for the scheduler (or a remote executor) to start later.

use super::runs::{StartRun, check_params, parse_digest};
use super::{ApiError, ApiResult, ApiState, parse_body, schema};
use crate::control::Durability;
use crate::engine::Component;
use crate::model::deploy::{DEFAULT_POOL, DEFAULT_QUEUE};
use crate::model::{Deployment, FlowRunId, GrantedSecrets, RunState, TimestampMicros, WorkPool};
use crate::store::{FlowRunRow, NewFlowRun, ObjectKind, ObjectRow, Write};
use crate::worker::{ExistingRun, FlowRunRequest, this_process_marker};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// What to run.
pub(super) struct Launch {
    pub component: Component,
    pub flow: String,
    /// Already checked against the flow's schema.
    pub params: Value,
    pub deployment: Option<Deployment>,
    pub tags: Vec<String>,
    /// Made by a schedule for this time: created `Scheduled`, started when due.
    pub scheduled_at: Option<TimestampMicros>,
}

/// Creates the flow run and starts it if it may start now.
pub(super) async fn launch(
    state: &Arc<ApiState>,
    launch: Launch,
) -> ApiResult<(FlowRunId, RunState)> {
    let pool = launch
        .deployment
        .as_ref()
        .map(|d| d.work_pool.clone())
        .unwrap_or_else(|| DEFAULT_POOL.to_string());
    let queue = launch
        .deployment
        .as_ref()
        .map(|d| d.work_queue.clone())
        .unwrap_or_else(|| DEFAULT_QUEUE.to_string());
    let secrets = resolve_secrets(state, launch.deployment.as_ref())?;
    let now = state.control.now();
    let start_now = launch.scheduled_at.is_none()
        && may_start(state, &pool, &queue, launch.deployment.as_ref())?;
    let initial = if start_now {
        RunState::Pending
    } else {
        RunState::Scheduled
    };
    let mut tags = launch.tags;
    if let Some(d) = &launch.deployment {
        tags.extend(d.tags.iter().cloned());
    }
    tags.sort();
    tags.dedup();
    let id = FlowRunId::new();
    let ticket = state
        .control
        .create_flow_run(
            NewFlowRun {
                id,
                parent_flow_run: None,
                component: launch.component.digest.clone(),
                flow_name: launch.flow.clone(),
                params: launch.params.to_string(),
                state: initial,
                attempt: 0,
                host: this_process_marker(),
                at: now,
                deployment: launch.deployment.as_ref().map(|d| d.name.clone()),
                tags,
                scheduled_at: launch.scheduled_at.or((!start_now).then_some(now)),
                work_pool: Some(pool),
                work_queue: Some(queue),
            },
            Durability::Committed,
        )
        .map_err(ApiError::internal)?;
    if let Some(ticket) = ticket {
        ticket.committed().await?;
    }
    if start_now {
        spawn_run(
            state,
            launch.component,
            launch.flow,
            launch.params.to_string(),
            ExistingRun {
                id,
                state: RunState::Pending,
                attempt: 0,
            },
            launch.deployment.as_ref(),
            secrets,
        );
    }
    Ok((id, initial))
}

/// Starts a `Scheduled` run whose time has come, if its pool and limits allow.
/// Returns whether it started.
pub async fn launch_scheduled(state: &Arc<ApiState>, run: &FlowRunRow) -> Result<bool, String> {
    let deployment = deployment_of(state, run).map_err(|e| e.message)?;
    let pool = run.work_pool.clone().unwrap_or_else(|| DEFAULT_POOL.into());
    let queue = run
        .work_queue
        .clone()
        .unwrap_or_else(|| DEFAULT_QUEUE.into());
    if !may_start(state, &pool, &queue, deployment.as_ref()).map_err(|e| e.message)? {
        return Ok(false);
    }
    let secrets = resolve_secrets(state, deployment.as_ref()).map_err(|e| e.message)?;
    let digest = parse_digest(&run.component).map_err(|e| e.message)?;
    let component = state.component(&digest).await.map_err(|e| e.message)?;
    // Pending before it is handed over, so the next limit check counts it
    // (and a second dispatcher loses the compare-and-set).
    let change =
        crate::store::StateChange::new(run.id.0, run.state, RunState::Pending, state.control.now());
    match state
        .control
        .change_flow_run(change, Vec::new(), Durability::Committed)
    {
        Ok(Some(ticket)) => ticket.committed().await.map_err(|e| e.to_string())?,
        Ok(None) => {}
        Err(e) => return Err(e.to_string()),
    }
    spawn_run(
        state,
        component,
        run.flow_name.clone(),
        run.params.clone(),
        ExistingRun {
            id: run.id,
            state: RunState::Pending,
            attempt: run.attempt,
        },
        deployment.as_ref(),
        secrets,
    );
    Ok(true)
}

/// The deployment that made `run`, if it still exists.
pub(super) fn deployment_of(state: &ApiState, run: &FlowRunRow) -> ApiResult<Option<Deployment>> {
    match &run.deployment {
        Some(name) => state
            .store
            .object(ObjectKind::Deployment, name)?
            .map(|row| parse_deployment(&row))
            .transpose(),
        None => Ok(None),
    }
}

/// Hands a created run to the embedded executor (none: it waits).
pub(super) fn spawn_run(
    state: &Arc<ApiState>,
    component: Component,
    flow: String,
    params: String,
    existing: ExistingRun,
    deployment: Option<&Deployment>,
    secrets: GrantedSecrets,
) {
    let Some(executor) = state.executor.clone() else {
        return;
    };
    let mut request = FlowRunRequest::new(component, flow, params);
    request.existing = Some(existing);
    request.secrets = Arc::new(secrets);
    if let Some(d) = deployment {
        request.deployment = Some(d.name.clone());
        request.task_override = d.task_policy.clone();
    }
    let id = existing.id;
    state.runs.spawn(async move {
        if let Err(e) = executor.run_flow(request).await {
            tracing::error!("flow run {id} could not run: {e}");
        }
    });
}

/// Whether a run for `pool` (and `deployment`) may start on this server now.
fn may_start(
    state: &ApiState,
    pool: &str,
    queue: &str,
    deployment: Option<&Deployment>,
) -> ApiResult<bool> {
    if state.executor.is_none() || !state.pools.iter().any(|p| p == pool) {
        return Ok(false);
    }
    if let Some(row) = state.store.object(ObjectKind::WorkPool, pool)? {
        let pool: WorkPool = serde_json::from_str(&row.body).map_err(ApiError::internal)?;
        if pool.paused {
            return Ok(false);
        }
        if let Some(limit) = pool.concurrency_limit
            && state.store.active_runs_of_pool(&pool.name, None)? >= u64::from(limit)
        {
            return Ok(false);
        }
    }
    if let Some(row) = state
        .store
        .object(ObjectKind::WorkQueue, &format!("{pool}/{queue}"))?
    {
        let queue: crate::model::WorkQueue =
            serde_json::from_str(&row.body).map_err(ApiError::internal)?;
        if queue.paused {
            return Ok(false);
        }
        if let Some(limit) = queue.concurrency_limit
            && state.store.active_runs_of_pool(pool, Some(&queue.name))? >= u64::from(limit)
        {
            return Ok(false);
        }
    }
    if let Some(d) = deployment
        && let Some(limit) = d.concurrency_limit
        && state.store.active_runs_of_deployment(&d.name)? >= u64::from(limit)
    {
        return Ok(false);
    }
    Ok(true)
}

/// The secrets a deployment grants, in clear (none without a deployment);
/// a granted one that is not set is an error.
pub(super) fn resolve_secrets(
    state: &ApiState,
    deployment: Option<&Deployment>,
) -> ApiResult<GrantedSecrets> {
    let Some(deployment) = deployment else {
        return Ok(GrantedSecrets::default());
    };
    let mut values = Vec::new();
    for name in &deployment.secrets {
        let row = state.store.object(ObjectKind::Secret, name)?.ok_or_else(|| {
            ApiError::conflict(format!(
                "deployment '{}' is granted secret '{name}', which is not set; set it with `host secret set {name}`",
                deployment.name
            ))
        })?;
        let value = state
            .secrets
            .open(name, &row.body)
            .map_err(|e| ApiError::conflict(e.to_string()))?;
        values.push((name.clone(), value));
    }
    Ok(GrantedSecrets::new(values))
}

fn parse_deployment(row: &ObjectRow) -> ApiResult<Deployment> {
    serde_json::from_str(&row.body).map_err(ApiError::internal)
}

fn deployment_json(row: &ObjectRow) -> ApiResult<Value> {
    Ok(json!({
        "deployment": parse_deployment(row)?,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }))
}

fn load(state: &ApiState, name: &str) -> ApiResult<(Deployment, ObjectRow)> {
    let row = state
        .store
        .object(ObjectKind::Deployment, name)?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no deployment named '{name}'; see `host deployment ls`"
            ))
        })?;
    Ok((parse_deployment(&row)?, row))
}

/// Deployments, by name.
#[utoipa::path(get, path = "/api/deployments", tag = "deployments",
    responses((status = 200, body = schema::DeploymentList)))]
pub(super) async fn list_deployments(State(state): State<Arc<ApiState>>) -> ApiResult<Json<Value>> {
    let list = state
        .store
        .objects(ObjectKind::Deployment)?
        .iter()
        .map(deployment_json)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(json!({ "deployments": list })))
}

/// Create a deployment; 409 if one has its name (use PUT to replace).
#[utoipa::path(post, path = "/api/deployments", tag = "deployments",
    request_body(content = schema::Deployment, content_type = "application/json"),
    responses((status = 201, body = schema::DeploymentSaved),
        (status = 400, body = schema::ErrorBody), (status = 409, body = schema::ErrorBody),
        (status = 422, body = schema::ErrorBody, description = "Unknown component, flow, pool or queue, or bad default params")))]
pub(super) async fn create_deployment(
    State(state): State<Arc<ApiState>>,
    axum::Extension(caller): axum::Extension<super::guard::Role>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let deployment: Deployment = parse_body(&body, "a deployment (see /api/openapi.json)")?;
    caller.may_grant_secrets(&deployment.secrets)?;
    if state
        .store
        .object(ObjectKind::Deployment, &deployment.name)?
        .is_some()
    {
        return Err(ApiError::conflict(format!(
            "deployment '{}' exists; PUT /api/deployments/{} replaces it",
            deployment.name, deployment.name
        )));
    }
    save(&state, deployment).await
}

/// Create or replace a deployment.
#[utoipa::path(put, path = "/api/deployments/{name}", tag = "deployments",
    params(("name" = String, Path)),
    request_body(content = schema::Deployment, content_type = "application/json"),
    responses((status = 200, body = schema::DeploymentSaved, description = "Replaced"),
        (status = 201, body = schema::DeploymentSaved, description = "Created"),
        (status = 400, body = schema::ErrorBody), (status = 422, body = schema::ErrorBody)))]
pub(super) async fn put_deployment(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    axum::Extension(caller): axum::Extension<super::guard::Role>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let mut value: Value = parse_body(&body, "a deployment (see /api/openapi.json)")?;
    if let Some(object) = value.as_object_mut() {
        match object.get("name").and_then(Value::as_str) {
            Some(given) if given != name => {
                return Err(ApiError::bad_request(
                    "name_mismatch",
                    format!("the body names deployment '{given}' but the URL says '{name}'"),
                ));
            }
            _ => {
                object.insert("name".into(), Value::String(name));
            }
        }
    }
    let deployment: Deployment = serde_json::from_value(value).map_err(|e| {
        ApiError::bad_request("bad_json", format!("the body is not a deployment: {e}"))
    })?;
    caller.may_grant_secrets(&deployment.secrets)?;
    save(&state, deployment).await
}

async fn save(
    state: &Arc<ApiState>,
    mut deployment: Deployment,
) -> ApiResult<(StatusCode, Json<Value>)> {
    deployment
        .validate()
        .map_err(|e| ApiError::bad_request("invalid_deployment", e))?;
    deployment.component = deployment
        .component
        .trim_start_matches("sha256:")
        .to_string();
    let digest = parse_digest(&deployment.component)?;
    let manifest = state.store.component_manifest(&digest)?.ok_or_else(|| {
        ApiError::unprocessable(
            "unknown_component",
            format!(
                "no component with digest {digest}; upload it first (host flow upload FILE.wasm)"
            ),
        )
    })?;
    let Some(flow) = manifest.flow(&deployment.flow) else {
        return Err(ApiError::unprocessable(
            "unknown_flow",
            format!(
                "component {} has no flow '{}'; it has: {}",
                digest.short(),
                deployment.flow,
                manifest.flow_names().join(", ")
            ),
        ));
    };
    if state
        .store
        .object(ObjectKind::WorkPool, &deployment.work_pool)?
        .is_none()
    {
        return Err(ApiError::unprocessable(
            "unknown_work_pool",
            format!(
                "work pool '{}' does not exist; create it with `host work-pool create {}` or use '{DEFAULT_POOL}'",
                deployment.work_pool, deployment.work_pool
            ),
        ));
    }
    let queue_key = format!("{}/{}", deployment.work_pool, deployment.work_queue);
    if state
        .store
        .object(ObjectKind::WorkQueue, &queue_key)?
        .is_none()
    {
        return Err(ApiError::unprocessable(
            "unknown_work_queue",
            format!(
                "work pool '{}' has no queue '{}'; create it with `host work-queue create {} --pool {}`",
                deployment.work_pool,
                deployment.work_queue,
                deployment.work_queue,
                deployment.work_pool
            ),
        ));
    }
    // Defaults must at least be the right shape; required params may come per run.
    if let Some(schema) = &flow.params_schema {
        let defaults = Value::Object(deployment.params.clone());
        if let Err(crate::protocol::ParamError::Invalid(problems)) =
            crate::protocol::validate_params(schema, &defaults)
        {
            let real: Vec<String> = problems
                .into_iter()
                .filter(|p| !p.contains("is a required property"))
                .collect();
            if !real.is_empty() {
                return Err(ApiError::unprocessable(
                    "invalid_params",
                    format!("default params: {}", real.join("; ")),
                ));
            }
        }
    }
    let mut warnings = Vec::new();
    for secret in &deployment.secrets {
        if state.store.object(ObjectKind::Secret, secret)?.is_none() {
            warnings.push(format!(
                "secret '{secret}' is not set yet; runs will fail to start until `host secret set {secret}`"
            ));
        }
    }
    let existed = state
        .store
        .object(ObjectKind::Deployment, &deployment.name)?
        .is_some();
    put_object(state, ObjectKind::Deployment, &deployment.name, &deployment).await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(json!({ "deployment": deployment, "created": !existed, "warnings": warnings })),
    ))
}

pub(super) async fn put_object(
    state: &ApiState,
    kind: ObjectKind,
    name: &str,
    value: &impl serde::Serialize,
) -> ApiResult<()> {
    let body = serde_json::to_string(value).map_err(ApiError::internal)?;
    put_raw(state, kind, name, body).await
}

pub(super) async fn put_raw(
    state: &ApiState,
    kind: ObjectKind,
    name: &str,
    body: String,
) -> ApiResult<()> {
    state
        .store
        .submit(vec![Write::PutObject {
            kind,
            name: name.to_string(),
            body,
            at: state.control.now(),
        }])
        .committed()
        .await?;
    Ok(())
}

pub(super) async fn delete_object(
    state: &ApiState,
    kind: ObjectKind,
    name: &str,
) -> ApiResult<Json<Value>> {
    state
        .store
        .submit(vec![Write::DeleteObject {
            kind,
            name: name.to_string(),
        }])
        .committed()
        .await?;
    Ok(Json(json!({ "deleted": name })))
}

/// A deployment.
#[utoipa::path(get, path = "/api/deployments/{name}", tag = "deployments",
    params(("name" = String, Path)),
    responses((status = 200, body = schema::DeploymentInfo), (status = 404, body = schema::ErrorBody)))]
pub(super) async fn get_deployment(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let (_, row) = load(&state, &name)?;
    Ok(Json(deployment_json(&row)?))
}

/// Delete a deployment (its runs stay).
#[utoipa::path(delete, path = "/api/deployments/{name}", tag = "deployments",
    params(("name" = String, Path)),
    responses((status = 200, body = schema::Deleted), (status = 404, body = schema::ErrorBody)))]
pub(super) async fn delete_deployment(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    delete_object(&state, ObjectKind::Deployment, &name).await
}

async fn set_paused(state: &ApiState, name: &str, paused: bool) -> ApiResult<Json<Value>> {
    let (mut deployment, _) = load(state, name)?;
    deployment.paused = paused;
    put_object(state, ObjectKind::Deployment, name, &deployment).await?;
    let (_, row) = load(state, name)?;
    Ok(Json(deployment_json(&row)?))
}

/// Pause a deployment: its schedules stop and runs cannot be started.
#[utoipa::path(post, path = "/api/deployments/{name}/pause", tag = "deployments",
    params(("name" = String, Path)),
    responses((status = 200, body = schema::DeploymentInfo), (status = 404, body = schema::ErrorBody)))]
pub(super) async fn pause_deployment(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(&state, &name, true).await
}

/// Resume a paused deployment.
#[utoipa::path(post, path = "/api/deployments/{name}/resume", tag = "deployments",
    params(("name" = String, Path)),
    responses((status = 200, body = schema::DeploymentInfo), (status = 404, body = schema::ErrorBody)))]
pub(super) async fn resume_deployment(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(&state, &name, false).await
}

/// Run a deployment; `params` are laid over its defaults and checked against the schema.
#[utoipa::path(post, path = "/api/deployments/{name}/runs", tag = "deployments",
    params(("name" = String, Path)),
    request_body(content = schema::StartRun, content_type = "application/json"),
    responses((status = 202, body = schema::RunStarted),
        (status = 404, body = schema::ErrorBody),
        (status = 409, body = schema::ErrorBody, description = "Paused, or a granted secret is not set"),
        (status = 422, body = schema::ErrorBody, description = "Params do not match the flow's schema")))]
pub(super) async fn run_deployment(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let start = StartRun::from_body(&body)?;
    let (deployment, _) = load(&state, &name)?;
    if deployment.paused {
        return Err(ApiError::conflict(format!(
            "deployment '{name}' is paused; resume it with `host deployment resume {name}`"
        )));
    }
    let (id, run_state) =
        run_deployment_now(&state, deployment, start.params, start.tags, None).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "flow_run_id": id.to_string(), "state": run_state })),
    ))
}

/// Shared by `run_deployment` and the scheduler (which passes the fire time).
pub async fn run_deployment_now(
    state: &Arc<ApiState>,
    deployment: Deployment,
    params: Option<Value>,
    tags: Option<Vec<String>>,
    scheduled_at: Option<TimestampMicros>,
) -> ApiResult<(FlowRunId, RunState)> {
    let digest = parse_digest(&deployment.component)?;
    let component = state.component(&digest).await?;
    let Some(flow_def) = component.manifest.flow(&deployment.flow) else {
        return Err(ApiError::unprocessable(
            "unknown_flow",
            format!(
                "component {} no longer has flow '{}'",
                digest.short(),
                deployment.flow
            ),
        ));
    };
    let mut merged: Map<String, Value> = deployment.params.clone();
    match params {
        Some(Value::Object(own)) => merged.extend(own),
        Some(Value::Null) | None => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_params",
                "params must be a JSON object",
            ));
        }
    }
    let params = Value::Object(merged);
    check_params(flow_def.params_schema.as_ref(), &params)?;
    launch(
        state,
        Launch {
            component,
            flow: deployment.flow.clone(),
            params,
            deployment: Some(deployment),
            tags: tags.unwrap_or_default(),
            scheduled_at,
        },
    )
    .await
}
