//! Work pools and queues, components and their manifests, secrets (names
//! and a mask only: a value is written here and never read back) and
//! variables.

use super::html::{self, esc, short, url_part};
use super::{CsrfForm, DeleteForm, Session, UiResult, delete_button};
use crate::api::{ApiError, ApiState};
use crate::model::{ComponentDigest, Variable, WorkPool, WorkQueue};
use crate::store::ObjectKind;
use axum::Extension;
use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use std::fmt::Write as _;
use std::sync::Arc;

/// What the secrets page shows in place of every value.
const MASK: &str = "••••••••";

fn parse_rows<T: serde::de::DeserializeOwned>(
    state: &ApiState,
    kind: ObjectKind,
) -> Result<Vec<T>, ApiError> {
    state
        .store
        .objects(kind)?
        .iter()
        .map(|row| serde_json::from_str(&row.body).map_err(ApiError::internal))
        .collect()
}

pub(super) async fn pools(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
) -> UiResult<Html<String>> {
    let (pools, queues, active) = state
        .blocking(|state| {
            let pools: Vec<WorkPool> = parse_rows(state, ObjectKind::WorkPool)?;
            let queues: Vec<WorkQueue> = parse_rows(state, ObjectKind::WorkQueue)?;
            let active = pools
                .iter()
                .map(|p| state.store.active_runs_of_pool(&p.name, None))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((pools, queues, active))
        })
        .await?;
    let mut body = String::from(
        "<h1>Work pools</h1><div class=\"scroll\"><table><thead><tr><th>Pool</th><th>Description</th><th>Status</th>\
         <th>Limit</th><th>Active runs</th><th>Queues (priority, limit)</th></tr></thead><tbody>",
    );
    for (pool, active) in pools.iter().zip(active) {
        let mut queue_list = String::new();
        for q in queues.iter().filter(|q| q.work_pool == pool.name) {
            let delete = if q.name == crate::model::deploy::DEFAULT_QUEUE {
                String::new()
            } else {
                delete_button(
                    &session,
                    &format!(
                        "/pools/{}/queues/{}/delete",
                        url_part(&pool.name),
                        url_part(&q.name)
                    ),
                    "Delete",
                )
            };
            let _ = write!(
                queue_list,
                "<li>{} ({}, {}){} {delete}</li>",
                esc(&q.name),
                q.priority,
                q.concurrency_limit
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "no limit".into()),
                if q.paused { " paused" } else { "" }
            );
        }
        let (action, label) = if pool.paused {
            ("resume", "Resume")
        } else {
            ("pause", "Pause")
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{} <form method=\"post\" action=\"/pools/{}/{action}\" class=\"inline\">{}<button>{label}</button></form> {}</td>\
             <td>{}</td><td>{active}</td><td><ul>{queue_list}</ul></td></tr>",
            esc(&pool.name),
            esc(&pool.description),
            if pool.paused { "paused" } else { "active" },
            esc(&url_part(&pool.name)),
            session.csrf_field(),
            delete_button(
                &session,
                &format!("/pools/{}/delete", url_part(&pool.name)),
                "Delete"
            ),
            pool.concurrency_limit
                .map(|n| n.to_string())
                .unwrap_or_else(|| "none".into()),
        );
    }
    let mut pool_options = String::new();
    for pool in &pools {
        let _ = write!(pool_options, "<option>{}</option>", esc(&pool.name));
    }
    let csrf = session.csrf_field();
    let _ = write!(
        body,
        "</tbody></table></div><div class=\"cols\"><section><h2>Create a pool</h2>\
         <form method=\"post\" action=\"/pools\" class=\"stack\">{csrf}\
         <label>Name <input name=\"name\" required></label>\
         <label>Description <input name=\"description\"></label>\
         <label>Concurrency limit <small>empty: none</small> <input name=\"concurrency_limit\" inputmode=\"numeric\"></label>\
         <button>Create</button></form></section>\
         <section><h2>Add or change a queue</h2>\
         <form method=\"post\" action=\"/pools/queues\" class=\"stack\">{csrf}\
         <label>Pool <select name=\"pool\">{pool_options}</select></label>\
         <label>Queue <input name=\"name\" required></label>\
         <label>Priority <small>1 is served first</small> <input name=\"priority\" inputmode=\"numeric\" value=\"1\"></label>\
         <label>Concurrency limit <small>empty: none</small> <input name=\"concurrency_limit\" inputmode=\"numeric\"></label>\
         <button>Save</button></form></section></div>"
    );
    Ok(session.page("Work pools", "/pools", &body))
}

/// An optional whole number from a form field (empty: none).
fn optional_number(field: &str, text: &str) -> UiResult<Option<u32>> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        super::UiError::BadRequest(format!(
            "{field} must be a whole number from 0 to {}, or empty; got '{text}'",
            u32::MAX
        ))
    })
}

#[derive(serde::Deserialize)]
pub(super) struct PoolForm {
    #[serde(default)]
    csrf: String,
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    concurrency_limit: String,
}

pub(super) async fn create_pool(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    axum::Form(form): axum::Form<PoolForm>,
) -> UiResult<Response> {
    session.check_csrf(&form.csrf)?;
    let pool = WorkPool {
        name: form.name.trim().to_string(),
        description: form.description,
        paused: false,
        concurrency_limit: optional_number("the concurrency limit", &form.concurrency_limit)?,
    };
    state
        .blocking(move |state| crate::api::objects::create_pool(state, pool))
        .await?;
    Ok(Redirect::to("/pools").into_response())
}

#[derive(serde::Deserialize)]
pub(super) struct QueueForm {
    #[serde(default)]
    csrf: String,
    pool: String,
    name: String,
    #[serde(default)]
    priority: String,
    #[serde(default)]
    concurrency_limit: String,
}

pub(super) async fn put_queue(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    axum::Form(form): axum::Form<QueueForm>,
) -> UiResult<Response> {
    session.check_csrf(&form.csrf)?;
    let queue = WorkQueue {
        name: form.name.trim().to_string(),
        work_pool: form.pool,
        priority: optional_number("the priority", &form.priority)?.unwrap_or(1),
        concurrency_limit: optional_number("the concurrency limit", &form.concurrency_limit)?,
        paused: false,
        tags: Vec::new(),
    };
    state
        .blocking(move |state| {
            // The form has no tag filter: an edited queue keeps its own.
            let mut queue = queue;
            let key = format!("{}/{}", queue.work_pool, queue.name);
            if let Some(row) = state.store.object(ObjectKind::WorkQueue, &key)?
                && let Ok(old) = serde_json::from_str::<WorkQueue>(&row.body)
            {
                queue.tags = old.tags;
            }
            crate::api::objects::put_queue(state, queue)
        })
        .await?;
    Ok(Redirect::to("/pools").into_response())
}

pub(super) async fn components(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
) -> UiResult<Html<String>> {
    let rows = state
        .blocking(|state| Ok(state.store.components()?))
        .await?;
    let mut body = String::from(
        "<h1>Components</h1><div class=\"scroll\"><table><thead><tr><th>Digest</th><th>Size</th><th>Flows</th><th>Tasks</th>\
         <th>SDK</th><th>Uploaded</th></tr></thead><tbody>",
    );
    for c in &rows {
        let _ = write!(
            body,
            "<tr><td><a href=\"/components/{}\"><code>{}</code></a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&url_part(&c.digest)),
            esc(short(&c.digest)),
            html::bytes(c.size_bytes),
            esc(&c.manifest.flow_names().join(", ")),
            c.manifest.tasks.len(),
            esc(&c
                .manifest
                .sdk
                .as_ref()
                .map(|s| format!("{} {}", s.language, s.version))
                .unwrap_or_default()),
            html::time(c.created_at),
        );
    }
    body.push_str("</tbody></table></div>");
    if rows.is_empty() {
        body.push_str("<p class=\"empty\">No components yet.</p>");
    }
    // The file goes up as the raw body (like `POST /api/components`), sent
    // by the page's script with the CSRF token in a header.
    let _ = write!(
        body,
        "<h2>Upload a component</h2><form id=\"upload\" class=\"stack\" data-csrf=\"{}\">\
         <label>Component (.wasm, built with <code>host build PATH</code>) <input type=\"file\" name=\"wasm\" accept=\".wasm,application/wasm\" required></label>\
         <button>Upload</button><p class=\"error\" role=\"alert\" id=\"upload-error\"></p></form>\
         <noscript><p>Without JavaScript, upload with <code>host flow upload FILE.wasm</code>.</p></noscript>",
        session.csrf
    );
    Ok(session.page("Components", "/components", &body))
}

/// The header that carries the CSRF token of a script's upload.
const CSRF_HEADER: &str = "x-csrf-token";

/// Stores an uploaded component through the dispatcher (validated against
/// the world, compiled, described), as `POST /api/components` does.
pub(super) async fn upload(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> UiResult<Response> {
    let token = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    session.check_csrf(token)?;
    let media_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if media_type != "application/wasm" {
        return Err(super::UiError::Refused {
            status: axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: format!(
                "send the component as `Content-Type: application/wasm`, not `{media_type}`"
            ),
        });
    }
    if body.is_empty() {
        return Err(super::UiError::BadRequest(
            "the file is empty; choose the .wasm that `host build` wrote".into(),
        ));
    }
    let (component, existed) = state.dispatcher.store_component(body).await?;
    let status = if existed {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::CREATED
    };
    Ok((
        status,
        axum::Json(serde_json::json!({ "digest": component.digest.as_str(), "created": !existed })),
    )
        .into_response())
}

#[derive(serde::Deserialize)]
pub(super) struct DeployForm {
    #[serde(default)]
    csrf: String,
    flow: String,
    name: String,
}

/// Creates a deployment of one flow with the defaults (pool `wasm`, no
/// schedule), saved like `POST /api/deployments`; 409 if the name is taken.
pub(super) async fn deploy(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Path(digest): Path<String>,
    axum::Form(form): axum::Form<DeployForm>,
) -> UiResult<Response> {
    session.check_csrf(&form.csrf)?;
    let name = form.name.trim().to_string();
    let deployment: crate::model::Deployment = serde_json::from_value(serde_json::json!({
        "name": name, "component": digest, "flow": form.flow,
    }))
    .map_err(|e| super::UiError::BadRequest(format!("not a deployment: {e}")))?;
    let target = format!("/deployments/{}", url_part(&name));
    let taken = state
        .blocking(move |state| Ok(state.store.object(ObjectKind::Deployment, &name)?.is_some()))
        .await?;
    if taken {
        return Err(super::UiError::Refused {
            status: axum::http::StatusCode::CONFLICT,
            message: format!(
                "a deployment named '{}' exists; open it to edit it, or choose another name",
                deployment.name
            ),
        });
    }
    let _saved = state
        .blocking(move |state| crate::api::deployments::save(state, deployment))
        .await?;
    Ok(Redirect::to(&target).into_response())
}

pub(super) async fn component(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Path(digest): Path<String>,
) -> UiResult<Html<String>> {
    let parsed = ComponentDigest::parse(&digest).ok_or_else(|| {
        super::UiError::BadRequest(format!(
            "'{digest}' is not a sha256 digest (64 lower-case hex characters)"
        ))
    })?;
    let row = state
        .blocking(move |state| {
            state.store.component(&parsed)?.ok_or_else(|| {
                ApiError::from(crate::store::StoreError::NotFound {
                    what: "component",
                    id: parsed.to_string(),
                })
            })
        })
        .await?;
    let mut body = format!(
        "<h1>Component <code>{}</code></h1><p><code>{}</code>, {}, uploaded {}</p><h2>Flows</h2>",
        esc(short(&row.digest)),
        esc(&row.digest),
        html::bytes(row.size_bytes),
        html::time(row.created_at)
    );
    for flow in &row.manifest.flows {
        let _ = write!(
            body,
            "<section><h3>{}</h3><p>{}</p>\
             <form method=\"post\" action=\"/components/{}/deploy\" class=\"filters\">{}<input type=\"hidden\" name=\"flow\" value=\"{}\">\
             <label>Deployment name <input name=\"name\" value=\"{}\" required></label><button>Deploy</button></form>\
             <h4>Parameters</h4>{}<h4>Policy</h4>{}</section>",
            esc(&flow.name),
            esc(&flow.description),
            esc(&url_part(&row.digest)),
            session.csrf_field(),
            esc(&flow.name),
            esc(&flow.name),
            html::json_block(
                &flow
                    .params_schema
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "null".into())
            ),
            html::json_block(&serde_json::to_string(&flow.policy).unwrap_or_default()),
        );
    }
    body.push_str("<h2>Tasks</h2><div class=\"scroll\"><table><thead><tr><th>Task</th><th>Description</th><th>Policy</th></tr></thead><tbody>");
    for task in &row.manifest.tasks {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&task.name),
            esc(&task.description),
            esc(&serde_json::to_string(&task.policy).unwrap_or_default()),
        );
    }
    body.push_str("</tbody></table></div>");
    Ok(session.page("Component", "/components", &body))
}

pub(super) async fn secrets(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
) -> UiResult<Html<String>> {
    secrets_page(&state, &session, None).await
}

async fn secrets_page(
    state: &Arc<ApiState>,
    session: &Session,
    error: Option<&str>,
) -> UiResult<Html<String>> {
    // Only names and times leave the store here; the sealed bodies are dropped unread.
    let names: Vec<(String, i64)> = state
        .blocking(|state| {
            Ok(state
                .store
                .objects(ObjectKind::Secret)?
                .into_iter()
                .map(|row| (row.name, row.updated_at))
                .collect())
        })
        .await?;
    let mut body = String::from("<h1>Secrets</h1>");
    if let Some(error) = error {
        let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", esc(error));
    }
    body.push_str(
        "<p>Values are encrypted at rest and never shown again; a run reads a secret only if its deployment grants it.</p>\
         <div class=\"scroll\"><table><thead><tr><th>Name</th><th>Value</th><th>Updated</th><th></th></tr></thead><tbody>",
    );
    for (name, updated) in &names {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{MASK}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            html::time(*updated),
            delete_button(
                session,
                &format!("/secrets/{}/delete", url_part(name)),
                "Delete"
            )
        );
    }
    let _ = write!(
        body,
        "</tbody></table></div><h2>Set a secret</h2><form method=\"post\" action=\"/secrets\" class=\"stack\" autocomplete=\"off\">{}\
         <label>Name <input name=\"name\" required></label>\
         <label>Value <input type=\"password\" name=\"value\" autocomplete=\"new-password\" required></label>\
         <button>Save</button></form>",
        session.csrf_field()
    );
    Ok(session.page("Secrets", "/secrets", &body))
}

#[derive(serde::Deserialize)]
pub(super) struct SecretForm {
    #[serde(default)]
    csrf: String,
    name: String,
    value: String,
}

pub(super) async fn set_secret(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    axum::Form(form): axum::Form<SecretForm>,
) -> UiResult<Response> {
    session.check_csrf(&form.csrf)?;
    let SecretForm { name, value, .. } = form;
    let saved = state
        .blocking(move |state| crate::api::objects::set_secret(state, name.trim(), &value))
        .await;
    match saved {
        Ok(_) => Ok(Redirect::to("/secrets").into_response()),
        Err(e) if e.status().is_client_error() => {
            let status = e.status();
            let page = secrets_page(&state, &session, Some(e.message())).await?;
            Ok((status, page).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn variables(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
) -> UiResult<Html<String>> {
    let list: Vec<Variable> = state
        .blocking(|state| parse_rows(state, ObjectKind::Variable))
        .await?;
    let mut body = String::from(
        "<h1>Variables</h1><div class=\"scroll\"><table><thead><tr><th>Name</th><th>Value</th><th></th></tr></thead><tbody>",
    );
    for v in &list {
        let _ = write!(
            body,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            esc(&v.name),
            esc(&v.value.to_string()),
            delete_button(
                &session,
                &format!("/variables/{}/delete", url_part(&v.name)),
                "Delete"
            )
        );
    }
    let _ = write!(
        body,
        "</tbody></table></div><h2>Set a variable</h2><form method=\"post\" action=\"/variables\" class=\"stack\">{}\
         <label>Name <input name=\"name\" required></label>\
         <label>Value <small>JSON, or text</small> <textarea name=\"value\" rows=\"3\"></textarea></label>\
         <button>Save</button></form>",
        session.csrf_field()
    );
    Ok(session.page("Variables", "/variables", &body))
}

#[derive(serde::Deserialize)]
pub(super) struct VariableForm {
    #[serde(default)]
    csrf: String,
    name: String,
    value: String,
}

pub(super) async fn set_variable(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    axum::Form(form): axum::Form<VariableForm>,
) -> UiResult<Response> {
    session.check_csrf(&form.csrf)?;
    // JSON when it parses (`42`, `{"a": 1}`), else the text itself.
    let value = serde_json::from_str(&form.value)
        .unwrap_or_else(|_| serde_json::Value::String(form.value.clone()));
    let name = form.name.trim().to_string();
    state
        .blocking(move |state| crate::api::objects::set_variable(state, name, value))
        .await?;
    Ok(Redirect::to("/variables").into_response())
}

/// Pauses (`PAUSED`) or resumes a pool: one handler for both routes.
pub(super) async fn set_pool_paused<const PAUSED: bool>(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    axum::Form(form): axum::Form<CsrfForm>,
) -> UiResult<Response> {
    super::action_step(
        &session,
        form,
        "/pools",
        crate::api::objects::set_pool_paused(&state, name, PAUSED),
    )
    .await
}

/// Deletes a pool and its queues after the confirmation step, through the
/// API's own function (refused while a deployment uses the pool).
pub(super) async fn delete_pool(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    axum::Form(form): axum::Form<DeleteForm>,
) -> UiResult<Response> {
    let what = format!("work pool '{name}'");
    let gone = crate::api::objects::delete_work_pool(State(state), Path(name));
    let consequence = "Its queues go with it; hosts serving it find no more runs. A pool that a deployment uses is kept.";
    super::delete_step(&session, form, &what, consequence, "/pools", gone).await
}

pub(super) async fn delete_queue(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Path((pool, name)): Path<(String, String)>,
    axum::Form(form): axum::Form<DeleteForm>,
) -> UiResult<Response> {
    let what = format!("queue '{name}' of pool '{pool}'");
    let gone = crate::api::objects::delete_work_queue(State(state), Path((pool, name)));
    let consequence = "Deployments that send runs to it must be moved to another queue.";
    super::delete_step(&session, form, &what, consequence, "/pools", gone).await
}

pub(super) async fn delete_secret(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    axum::Form(form): axum::Form<DeleteForm>,
) -> UiResult<Response> {
    let what = format!("secret '{name}'");
    let gone = crate::api::objects::delete_secret(State(state), Path(name));
    let consequence = "Runs of deployments granted it will not start until it is set again.";
    super::delete_step(&session, form, &what, consequence, "/secrets", gone).await
}

pub(super) async fn delete_variable(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    axum::Form(form): axum::Form<DeleteForm>,
) -> UiResult<Response> {
    let what = format!("variable '{name}'");
    let gone = crate::api::objects::delete_variable(State(state), Path(name));
    let consequence = "Flows that read it get nothing from now on.";
    super::delete_step(&session, form, &what, consequence, "/variables", gone).await
}
