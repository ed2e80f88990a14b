//! Deployments: create, replace, pause, delete, and run one; their saved
//! versions and rollback. Runs are created by the dispatcher; this module
//! only turns HTTP into its calls.

use super::guard::Caller;
use super::runs::{parse_digest, run_started};
use super::wire::{
    Deleted, DeploymentHistory, DeploymentInfo, DeploymentList, DeploymentSaved, Rollback,
    RunStarted, StartRun,
};
use super::{ApiError, ApiResult, ApiState, parse_body, schema};
use crate::model::deploy::DEFAULT_POOL;
use crate::model::{Deployment, DeploymentVersion};
use crate::store::{DeploymentVersionRow, ObjectKind, ObjectRow, Write};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::Value;
use std::sync::Arc;

fn parse_deployment(row: &ObjectRow) -> ApiResult<Deployment> {
    serde_json::from_str(&row.body).map_err(ApiError::internal)
}

fn deployment_info(row: &ObjectRow) -> ApiResult<DeploymentInfo> {
    Ok(DeploymentInfo {
        deployment: parse_deployment(row)?,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// The deployment `name` and its row. Blocks: call inside `ApiState::blocking`.
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
    responses((status = 200, body = super::wire::DeploymentList)))]
pub(super) async fn list_deployments(
    State(state): State<Arc<ApiState>>,
) -> ApiResult<Json<DeploymentList>> {
    state
        .blocking(|state| {
            let deployments = state
                .store
                .objects(ObjectKind::Deployment)?
                .iter()
                .map(deployment_info)
                .collect::<ApiResult<Vec<_>>>()?;
            Ok(Json(DeploymentList { deployments }))
        })
        .await
}

/// Create a deployment; 409 if one has its name (use PUT to replace).
#[utoipa::path(post, path = "/api/deployments", tag = "deployments",
    request_body(content = schema::Deployment, content_type = "application/json"),
    responses((status = 201, body = super::wire::DeploymentSaved),
        (status = 400, body = super::ErrorReply), (status = 409, body = super::ErrorReply),
        (status = 422, body = super::ErrorReply, description = "Unknown component, flow, pool or queue, or bad default params")))]
pub(super) async fn create_deployment(
    State(state): State<Arc<ApiState>>,
    axum::Extension(caller): axum::Extension<super::guard::Role>,
    axum::Extension(who): axum::Extension<Caller>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<DeploymentSaved>)> {
    let deployment: Deployment = parse_body(&body, "a deployment (see /api/openapi.json)")?;
    caller.may_grant_secrets(&deployment.secrets)?;
    state
        .blocking(move |state| {
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
            save_version(state, deployment, &who.0, None)
        })
        .await
}

/// Create or replace a deployment.
#[utoipa::path(put, path = "/api/deployments/{name}", tag = "deployments",
    params(("name" = String, Path)),
    request_body(content = schema::Deployment, content_type = "application/json"),
    responses((status = 200, body = super::wire::DeploymentSaved, description = "Replaced"),
        (status = 201, body = super::wire::DeploymentSaved, description = "Created"),
        (status = 400, body = super::ErrorReply), (status = 422, body = super::ErrorReply)))]
pub(super) async fn put_deployment(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    axum::Extension(caller): axum::Extension<super::guard::Role>,
    axum::Extension(who): axum::Extension<Caller>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<DeploymentSaved>)> {
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
    state
        .blocking(move |state| save_version(state, deployment, &who.0, None))
        .await
}

/// [`save_version`] for the web UI's forms.
pub(crate) fn save(
    state: &ApiState,
    deployment: Deployment,
) -> ApiResult<(StatusCode, Json<DeploymentSaved>)> {
    save_version(state, deployment, "web UI", None)
}

/// Checks a deployment against what is stored and saves it: as the next
/// version when its definition changed, as it is (no new version) when
/// the same definition is deployed again. Blocks.
pub(crate) fn save_version(
    state: &ApiState,
    mut deployment: Deployment,
    created_by: &str,
    note: Option<String>,
) -> ApiResult<(StatusCode, Json<DeploymentSaved>)> {
    deployment
        .validate()
        .map_err(|e| ApiError::bad_request("invalid_deployment", e.to_string()))?;
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
    let current = state
        .store
        .object(ObjectKind::Deployment, &deployment.name)?
        .map(|row| parse_deployment(&row))
        .transpose()?;
    let existed = current.is_some();
    let versions = state.store.deployment_versions(&deployment.name)?;
    let latest = versions.last().map(|v| v.version);
    // The same definition again (whatever its paused flag) is no new version,
    // as long as the stored one is the latest saved (one saved before
    // versions existed, or never saved, gets its first now).
    let unchanged = match &current {
        Some(current) => {
            current.version.is_some()
                && current.version == latest
                && current.same_definition(&deployment)
        }
        None => false,
    };
    if unchanged {
        deployment.version = latest;
        if let Some(current) = &current
            && current.paused != deployment.paused
        {
            put_object(state, ObjectKind::Deployment, &deployment.name, &deployment)?;
        }
    } else {
        let version = latest.unwrap_or(0) + 1;
        deployment.version = Some(version);
        let body = serde_json::to_string(&deployment).map_err(ApiError::internal)?;
        let at = state.now();
        state
            .store
            .submit(vec![
                Write::DeploymentVersion {
                    deployment: deployment.name.clone(),
                    version,
                    body: body.clone(),
                    created_by: created_by.to_string(),
                    note,
                    at,
                },
                Write::PutObject {
                    kind: ObjectKind::Deployment,
                    name: deployment.name.clone(),
                    body,
                    at,
                },
            ])
            .wait_blocking()?;
    }
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(DeploymentSaved {
            deployment,
            created: !existed,
            changed: !unchanged,
            warnings,
        }),
    ))
}

fn version_json(row: &DeploymentVersionRow) -> ApiResult<DeploymentVersion> {
    Ok(DeploymentVersion {
        version: row.version,
        deployment: serde_json::from_str(&row.body).map_err(ApiError::internal)?,
        created_by: row.created_by.clone(),
        created_at: row.created_at,
        note: row.note.clone(),
    })
}

/// A deployment's saved versions, oldest first (the last is the current one).
#[utoipa::path(get, path = "/api/deployments/{name}/versions", tag = "deployments",
    params(("name" = String, Path)),
    responses((status = 200, body = super::wire::DeploymentHistory), (status = 404, body = super::ErrorReply)))]
pub(super) async fn list_deployment_versions(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<DeploymentHistory>> {
    state
        .blocking(move |state| {
            // A deleted deployment's history goes with it, as far as the
            // API says: its name is free again.
            load(state, &name)?;
            let versions = state.store.deployment_versions(&name)?;
            let versions = versions
                .iter()
                .map(version_json)
                .collect::<ApiResult<Vec<_>>>()?;
            Ok(Json(DeploymentHistory { versions }))
        })
        .await
}

/// Restore an earlier version's definition (keeping the paused flag): it
/// is saved as a new version, noted as a rollback, unless it is the
/// current definition already.
#[utoipa::path(post, path = "/api/deployments/{name}/rollback", tag = "deployments",
    params(("name" = String, Path)),
    request_body(content = super::wire::Rollback, content_type = "application/json"),
    responses((status = 200, body = super::wire::DeploymentSaved),
        (status = 404, body = super::ErrorReply, description = "No such deployment or version"),
        (status = 422, body = super::ErrorReply, description = "The version's component or pool is gone")))]
pub(super) async fn rollback_deployment(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    axum::Extension(caller): axum::Extension<super::guard::Role>,
    axum::Extension(who): axum::Extension<Caller>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<DeploymentSaved>)> {
    let Rollback { to } = parse_body(&body, "{\"to\": VERSION}")?;
    state
        .blocking(move |state| {
            let (current, _) = load(state, &name)?;
            let versions = state.store.deployment_versions(&name)?;
            let Some(row) = versions.iter().find(|v| v.version == to) else {
                let known = match (versions.first(), versions.last()) {
                    (Some(first), Some(last)) => {
                        format!("it has versions {} to {}", first.version, last.version)
                    }
                    _ => "it has no saved versions".to_string(),
                };
                return Err(ApiError::not_found(format!(
                    "deployment '{name}' has no version {to}; {known} (see `host deployment history {name}`)"
                )));
            };
            let mut restored = version_json(row)?.deployment;
            restored.paused = current.paused;
            caller.may_grant_secrets(&restored.secrets)?;
            save_version(
                state,
                restored,
                &who.0,
                Some(format!("rollback to version {to}")),
            )
            .map(|(_, body)| (StatusCode::OK, body))
        })
        .await
}

/// Creates or replaces a named object and waits for the commit. Blocks.
pub(super) fn put_object(
    state: &ApiState,
    kind: ObjectKind,
    name: &str,
    value: &impl serde::Serialize,
) -> ApiResult<()> {
    let body = serde_json::to_string(value).map_err(ApiError::internal)?;
    put_raw(state, kind, name, body)
}

/// Like [`put_object`], with the body already serialized (sealed secrets). Blocks.
pub(super) fn put_raw(
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
            at: state.now(),
        }])
        .wait_blocking()?;
    if matches!(
        kind,
        ObjectKind::WorkPool | ObjectKind::WorkQueue | ObjectKind::Deployment
    ) {
        // A pause lifted or a limit raised may let waiting runs start:
        // long-polling hosts look now, not at the scheduler's next tick.
        state.dispatcher.wake_claimers();
    }
    Ok(())
}

/// Deletes a named object (404 if there is none). Blocks.
pub(super) fn delete_object(
    state: &ApiState,
    kind: ObjectKind,
    name: &str,
) -> ApiResult<Json<Deleted>> {
    state
        .store
        .submit(vec![Write::DeleteObject {
            kind,
            name: name.to_string(),
        }])
        .wait_blocking()?;
    Ok(Json(Deleted {
        deleted: name.to_string(),
    }))
}

/// A deployment.
#[utoipa::path(get, path = "/api/deployments/{name}", tag = "deployments",
    params(("name" = String, Path)),
    responses((status = 200, body = super::wire::DeploymentInfo), (status = 404, body = super::ErrorReply)))]
pub(super) async fn get_deployment(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<DeploymentInfo>> {
    state
        .blocking(move |state| {
            let (_, row) = load(state, &name)?;
            Ok(Json(deployment_info(&row)?))
        })
        .await
}

/// Delete a deployment (its runs stay).
#[utoipa::path(delete, path = "/api/deployments/{name}", tag = "deployments",
    params(("name" = String, Path)),
    responses((status = 200, body = super::wire::Deleted), (status = 404, body = super::ErrorReply)))]
pub(crate) async fn delete_deployment(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Deleted>> {
    state
        .blocking(move |state| delete_object(state, ObjectKind::Deployment, &name))
        .await
}

/// Pauses or resumes a deployment (the JSON API and the web UI).
pub(crate) async fn set_paused(
    state: &Arc<ApiState>,
    name: String,
    paused: bool,
) -> ApiResult<Json<DeploymentInfo>> {
    state
        .blocking(move |state| {
            let (mut deployment, _) = load(state, &name)?;
            deployment.paused = paused;
            put_object(state, ObjectKind::Deployment, &name, &deployment)?;
            let (_, row) = load(state, &name)?;
            Ok(Json(deployment_info(&row)?))
        })
        .await
}

/// Pause a deployment: its schedules stop and runs cannot be started.
#[utoipa::path(post, path = "/api/deployments/{name}/pause", tag = "deployments",
    params(("name" = String, Path)),
    responses((status = 200, body = super::wire::DeploymentInfo), (status = 404, body = super::ErrorReply)))]
pub(super) async fn pause_deployment(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<DeploymentInfo>> {
    set_paused(&state, name, true).await
}

/// Resume a paused deployment.
#[utoipa::path(post, path = "/api/deployments/{name}/resume", tag = "deployments",
    params(("name" = String, Path)),
    responses((status = 200, body = super::wire::DeploymentInfo), (status = 404, body = super::ErrorReply)))]
pub(super) async fn resume_deployment(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<DeploymentInfo>> {
    set_paused(&state, name, false).await
}

/// Run a deployment; `params` are laid over its defaults and checked against the schema.
#[utoipa::path(post, path = "/api/deployments/{name}/runs", tag = "deployments",
    params(("name" = String, Path)),
    request_body(content = Option<super::wire::StartRun>, content_type = "application/json",
        description = "Optional: no body runs with the deployment's params"),
    responses((status = 202, body = super::wire::RunStarted),
        (status = 404, body = super::ErrorReply),
        (status = 409, body = super::ErrorReply, description = "Paused, or a granted secret is not set"),
        (status = 422, body = super::ErrorReply, description = "Params do not match the flow's schema")))]
pub(super) async fn run_deployment(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<RunStarted>)> {
    let start = StartRun::from_body(&body)?;
    let dispatched = state
        .dispatcher
        .run_deployment(&name, start.params, start.tags.unwrap_or_default())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(run_started(dispatched))))
}
