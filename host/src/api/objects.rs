//! Work pools and queues, secrets (write-only) and variables.

use super::deployments::{delete_object, put_object, put_raw};
use super::wire::{
    Deleted, SecretList, SecretName, SecretValue, VariableList, VariableValue, WorkPoolList,
    WorkQueueList,
};
use super::{ApiError, ApiResult, ApiState, parse_body, schema};
use crate::model::deploy::{DEFAULT_QUEUE, validate_name};
use crate::model::{Variable, WorkPool, WorkQueue};
use crate::store::ObjectKind;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::Value;
use std::sync::Arc;

fn check_name(what: &str, name: &str) -> ApiResult<()> {
    validate_name(what, name).map_err(|e| ApiError::bad_request("bad_name", e.to_string()))
}

fn parse_rows<T: serde::de::DeserializeOwned>(
    state: &ApiState,
    kind: ObjectKind,
) -> ApiResult<Vec<T>> {
    state
        .store
        .objects(kind)?
        .iter()
        .map(|row| serde_json::from_str(&row.body).map_err(ApiError::internal))
        .collect()
}

fn pool(state: &ApiState, name: &str) -> ApiResult<WorkPool> {
    let row = state
        .store
        .object(ObjectKind::WorkPool, name)?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no work pool named '{name}'; see `host work-pool ls`"
            ))
        })?;
    serde_json::from_str(&row.body).map_err(ApiError::internal)
}

/// Creates a pool (and its `default` queue) if it does not exist.
pub async fn ensure_pool(state: &Arc<ApiState>, name: &str) -> ApiResult<()> {
    let name = name.to_string();
    state
        .blocking(move |state| ensure_pool_now(state, &name))
        .await
}

/// [`ensure_pool`], blocking.
fn ensure_pool_now(state: &ApiState, name: &str) -> ApiResult<()> {
    if state.store.object(ObjectKind::WorkPool, name)?.is_none() {
        let pool = WorkPool {
            name: name.to_string(),
            description: String::new(),
            paused: false,
            concurrency_limit: None,
        };
        put_object(state, ObjectKind::WorkPool, name, &pool)?;
    }
    let queue_key = format!("{name}/{DEFAULT_QUEUE}");
    if state
        .store
        .object(ObjectKind::WorkQueue, &queue_key)?
        .is_none()
    {
        let queue = WorkQueue {
            name: DEFAULT_QUEUE.to_string(),
            work_pool: name.to_string(),
            priority: 1,
            concurrency_limit: None,
            paused: false,
            tags: Vec::new(),
        };
        put_object(state, ObjectKind::WorkQueue, &queue_key, &queue)?;
    }
    Ok(())
}

/// Work pools.
#[utoipa::path(get, path = "/api/work-pools", tag = "work pools",
    responses((status = 200, body = super::wire::WorkPoolList)))]
pub(super) async fn list_work_pools(
    State(state): State<Arc<ApiState>>,
) -> ApiResult<Json<WorkPoolList>> {
    state
        .blocking(|state| {
            let pools: Vec<WorkPool> = parse_rows(state, ObjectKind::WorkPool)?;
            Ok(Json(WorkPoolList { work_pools: pools }))
        })
        .await
}

/// Create a work pool (with a `default` queue).
#[utoipa::path(post, path = "/api/work-pools", tag = "work pools",
    request_body(content = schema::WorkPool, content_type = "application/json"),
    responses((status = 201, body = schema::WorkPool), (status = 409, body = super::ErrorReply)))]
pub(super) async fn create_work_pool(
    State(state): State<Arc<ApiState>>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<WorkPool>)> {
    let new: WorkPool = parse_body(
        &body,
        r#"{"name": "...", "description": "...", "concurrency_limit": N}"#,
    )?;
    state
        .blocking(move |state| Ok((StatusCode::CREATED, Json(create_pool(state, new)?))))
        .await
}

/// Creates a work pool with its `default` queue; 409 if it exists (the
/// JSON API and the web UI). Blocks.
pub(crate) fn create_pool(state: &ApiState, new: WorkPool) -> ApiResult<WorkPool> {
    check_name("work pool", &new.name)?;
    if state
        .store
        .object(ObjectKind::WorkPool, &new.name)?
        .is_some()
    {
        return Err(ApiError::conflict(format!(
            "work pool '{}' exists",
            new.name
        )));
    }
    put_object(state, ObjectKind::WorkPool, &new.name, &new)?;
    ensure_pool_now(state, &new.name)?;
    Ok(new)
}

/// Create or replace a work pool (description, limit, paused).
#[utoipa::path(put, path = "/api/work-pools/{name}", tag = "work pools",
    params(("name" = String, Path)),
    request_body(content = schema::WorkPoolUpdate, content_type = "application/json"),
    responses((status = 200, body = schema::WorkPool), (status = 400, body = super::ErrorReply)))]
pub(super) async fn put_work_pool(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<WorkPool>> {
    check_name("work pool", &name)?;
    let mut value: Value = parse_body(&body, r#"{"concurrency_limit": N, "paused": false}"#)?;
    if let Some(object) = value.as_object_mut() {
        // The path names the pool; a body's own name is ignored, but only
        // if it is a name at all.
        if let Some(given) = object.get("name")
            && !given.is_string()
        {
            return Err(ApiError::bad_request(
                "bad_json",
                format!("the body's name must be a string (the path's '{name}'), not {given}"),
            ));
        }
        object.insert("name".into(), Value::String(name.clone()));
    }
    let new: WorkPool = serde_json::from_value(value).map_err(|e| {
        ApiError::bad_request("bad_json", format!("the body is not a work pool: {e}"))
    })?;
    state
        .blocking(move |state| {
            put_object(state, ObjectKind::WorkPool, &name, &new)?;
            ensure_pool_now(state, &name)?;
            Ok(Json(new))
        })
        .await
}

/// A work pool.
#[utoipa::path(get, path = "/api/work-pools/{name}", tag = "work pools",
    params(("name" = String, Path)),
    responses((status = 200, body = schema::WorkPool), (status = 404, body = super::ErrorReply)))]
pub(super) async fn get_work_pool(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<WorkPool>> {
    state
        .blocking(move |state| Ok(Json(pool(state, &name)?)))
        .await
}

/// Delete a work pool and its queues; refused while a deployment uses it.
#[utoipa::path(delete, path = "/api/work-pools/{name}", tag = "work pools",
    params(("name" = String, Path)),
    responses((status = 200, body = super::wire::Deleted), (status = 404, body = super::ErrorReply), (status = 409, body = super::ErrorReply)))]
pub(crate) async fn delete_work_pool(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Deleted>> {
    state.blocking(move |state| delete_pool(state, &name)).await
}

fn delete_pool(state: &ApiState, name: &str) -> ApiResult<Json<Deleted>> {
    pool(state, name)?;
    let users: Vec<crate::model::Deployment> = parse_rows(state, ObjectKind::Deployment)?;
    let users: Vec<&str> = users
        .iter()
        .filter(|d| d.work_pool == name)
        .map(|d| d.name.as_str())
        .collect();
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "work pool '{name}' is used by deployments {}; move or delete them first",
            users.join(", ")
        )));
    }
    let queues: Vec<WorkQueue> = parse_rows(state, ObjectKind::WorkQueue)?;
    for queue in queues.iter().filter(|q| q.work_pool == name) {
        let _ = delete_object(
            state,
            ObjectKind::WorkQueue,
            &format!("{name}/{}", queue.name),
        )?;
    }
    delete_object(state, ObjectKind::WorkPool, name)
}

/// Pauses or resumes a work pool (the JSON API and the web UI).
pub(crate) async fn set_pool_paused(
    state: &Arc<ApiState>,
    name: String,
    paused: bool,
) -> ApiResult<Json<WorkPool>> {
    state
        .blocking(move |state| {
            let mut p = pool(state, &name)?;
            p.paused = paused;
            put_object(state, ObjectKind::WorkPool, &name, &p)?;
            Ok(Json(p))
        })
        .await
}

/// Pause a pool: its runs wait in `Scheduled`.
#[utoipa::path(post, path = "/api/work-pools/{name}/pause", tag = "work pools",
    params(("name" = String, Path)),
    responses((status = 200, body = schema::WorkPool), (status = 404, body = super::ErrorReply)))]
pub(super) async fn pause_work_pool(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<WorkPool>> {
    set_pool_paused(&state, name, true).await
}

/// Resume a paused pool.
#[utoipa::path(post, path = "/api/work-pools/{name}/resume", tag = "work pools",
    params(("name" = String, Path)),
    responses((status = 200, body = schema::WorkPool), (status = 404, body = super::ErrorReply)))]
pub(super) async fn resume_work_pool(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<WorkPool>> {
    set_pool_paused(&state, name, false).await
}

/// A pool's queues, by priority.
#[utoipa::path(get, path = "/api/work-pools/{name}/queues", tag = "work pools",
    params(("name" = String, Path)),
    responses((status = 200, body = super::wire::WorkQueueList), (status = 404, body = super::ErrorReply)))]
pub(super) async fn list_work_queues(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<WorkQueueList>> {
    state
        .blocking(move |state| {
            pool(state, &name)?;
            let mut queues: Vec<WorkQueue> = parse_rows(state, ObjectKind::WorkQueue)?;
            queues.retain(|q| q.work_pool == name);
            queues.sort_by(|a, b| a.priority.cmp(&b.priority).then(a.name.cmp(&b.name)));
            Ok(Json(WorkQueueList {
                work_queues: queues,
            }))
        })
        .await
}

/// Create or replace a queue in a pool.
#[utoipa::path(post, path = "/api/work-pools/{name}/queues", tag = "work pools",
    params(("name" = String, Path)),
    request_body(content = schema::WorkQueue, content_type = "application/json"),
    responses((status = 201, body = schema::WorkQueue), (status = 404, body = super::ErrorReply)))]
pub(super) async fn create_work_queue(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<WorkQueue>)> {
    let mut value: Value = parse_body(
        &body,
        r#"{"name": "...", "priority": N, "concurrency_limit": N}"#,
    )?;
    if let Some(object) = value.as_object_mut() {
        // The path names the pool; a body's own `work_pool` is ignored, but
        // only if it is a name at all.
        if let Some(given) = object.get("work_pool")
            && !given.is_string()
        {
            return Err(ApiError::bad_request(
                "bad_json",
                format!("the body's work_pool must be a string (the path's '{name}'), not {given}"),
            ));
        }
        object.insert("work_pool".into(), Value::String(name.clone()));
    }
    let queue: WorkQueue = serde_json::from_value(value).map_err(|e| {
        ApiError::bad_request("bad_json", format!("the body is not a work queue: {e}"))
    })?;
    state
        .blocking(move |state| Ok((StatusCode::CREATED, Json(put_queue(state, queue)?))))
        .await
}

/// Creates or replaces a queue of an existing pool (the JSON API and the
/// web UI). Blocks.
pub(crate) fn put_queue(state: &ApiState, queue: WorkQueue) -> ApiResult<WorkQueue> {
    check_name("work queue", &queue.name)?;
    pool(state, &queue.work_pool)?;
    put_object(
        state,
        ObjectKind::WorkQueue,
        &format!("{}/{}", queue.work_pool, queue.name),
        &queue,
    )?;
    Ok(queue)
}

/// Delete a queue (not a pool's `default`).
#[utoipa::path(delete, path = "/api/work-pools/{pool}/queues/{name}", tag = "work pools",
    params(("pool" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = super::wire::Deleted), (status = 404, body = super::ErrorReply), (status = 409, body = super::ErrorReply)))]
pub(crate) async fn delete_work_queue(
    State(state): State<Arc<ApiState>>,
    Path((pool_name, name)): Path<(String, String)>,
) -> ApiResult<Json<Deleted>> {
    if name == DEFAULT_QUEUE {
        return Err(ApiError::conflict(format!(
            "every pool keeps its '{DEFAULT_QUEUE}' queue; delete the pool instead"
        )));
    }
    state
        .blocking(move |state| {
            delete_object(state, ObjectKind::WorkQueue, &format!("{pool_name}/{name}"))
        })
        .await
}

/// Secret names; values are never returned.
#[utoipa::path(get, path = "/api/secrets", tag = "secrets",
    responses((status = 200, body = super::wire::SecretList)))]
pub(super) async fn list_secrets(
    State(state): State<Arc<ApiState>>,
) -> ApiResult<Json<SecretList>> {
    let secrets = state
        .blocking(|state| Ok(state.store.objects(ObjectKind::Secret)?))
        .await?
        .into_iter()
        .map(|row| SecretName {
            name: row.name,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
        .collect();
    Ok(Json(SecretList { secrets }))
}

/// Set a secret; it is encrypted at rest and readable only by runs of
/// deployments that grant it.
#[utoipa::path(put, path = "/api/secrets/{name}", tag = "secrets",
    params(("name" = String, Path)),
    request_body(content = super::wire::SecretValue, content_type = "application/json"),
    responses((status = 200, body = super::wire::SecretName), (status = 400, body = super::ErrorReply)))]
pub(super) async fn put_secret(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<SecretName>> {
    let SecretValue { value } = parse_body(&body, r#"{"value": "..."}"#)?;
    state
        .blocking(move |state| Ok(Json(set_secret(state, &name, &value)?)))
        .await
}

/// Checks, seals and stores a secret; the reply names it (never its value).
/// Blocks. The JSON API and the web UI both set secrets through this.
pub(crate) fn set_secret(state: &ApiState, name: &str, value: &str) -> ApiResult<SecretName> {
    check_name("secret", name)?;
    crate::model::validate_secret_value(name, value)
        .map_err(|e| ApiError::bad_request("secret_too_short", e.to_string()))?;
    let sealed = state.dispatcher.secrets().seal(name, value);
    put_raw(state, ObjectKind::Secret, name, sealed)?;
    let row = state
        .store
        .object(ObjectKind::Secret, name)?
        .ok_or_else(|| ApiError::internal("a secret vanished after it was written"))?;
    Ok(SecretName {
        name: name.to_string(),
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// Delete a secret.
#[utoipa::path(delete, path = "/api/secrets/{name}", tag = "secrets",
    params(("name" = String, Path)),
    responses((status = 200, body = super::wire::Deleted), (status = 404, body = super::ErrorReply)))]
pub(crate) async fn delete_secret(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Deleted>> {
    state
        .blocking(move |state| delete_object(state, ObjectKind::Secret, &name))
        .await
}

/// Variables, by name.
#[utoipa::path(get, path = "/api/variables", tag = "variables",
    responses((status = 200, body = super::wire::VariableList)))]
pub(super) async fn list_variables(
    State(state): State<Arc<ApiState>>,
) -> ApiResult<Json<VariableList>> {
    state
        .blocking(|state| {
            let variables: Vec<Variable> = parse_rows(state, ObjectKind::Variable)?;
            Ok(Json(VariableList { variables }))
        })
        .await
}

/// A variable.
#[utoipa::path(get, path = "/api/variables/{name}", tag = "variables",
    params(("name" = String, Path)),
    responses((status = 200, body = schema::Variable), (status = 404, body = super::ErrorReply)))]
pub(super) async fn get_variable(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Variable>> {
    let row = state
        .blocking(move |state| {
            state
                .store
                .object(ObjectKind::Variable, &name)?
                .ok_or_else(|| ApiError::not_found(format!("no variable named '{name}'")))
        })
        .await?;
    let variable: Variable = serde_json::from_str(&row.body).map_err(ApiError::internal)?;
    Ok(Json(variable))
}

/// Set a variable to any JSON value.
#[utoipa::path(put, path = "/api/variables/{name}", tag = "variables",
    params(("name" = String, Path)),
    request_body(content = super::wire::VariableValue, content_type = "application/json", description = "`{\"value\": <any JSON>}`"),
    responses((status = 200, body = schema::Variable), (status = 400, body = super::ErrorReply)))]
pub(super) async fn put_variable(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Variable>> {
    let VariableValue { value } = parse_body(&body, r#"{"value": <any JSON>}"#)?;
    state
        .blocking(move |state| Ok(Json(set_variable(state, name, value)?)))
        .await
}

/// Checks the name and stores a variable (the JSON API and the web UI). Blocks.
pub(crate) fn set_variable(state: &ApiState, name: String, value: Value) -> ApiResult<Variable> {
    check_name("variable", &name)?;
    let variable = Variable { name, value };
    put_object(state, ObjectKind::Variable, &variable.name, &variable)?;
    Ok(variable)
}

/// Delete a variable.
#[utoipa::path(delete, path = "/api/variables/{name}", tag = "variables",
    params(("name" = String, Path)),
    responses((status = 200, body = super::wire::Deleted), (status = 404, body = super::ErrorReply)))]
pub(crate) async fn delete_variable(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Deleted>> {
    state
        .blocking(move |state| delete_object(state, ObjectKind::Variable, &name))
        .await
}
