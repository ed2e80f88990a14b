//! Deployments: the list (with a tag filter), a deployment's page with its
//! recent runs and a Run form generated from the flow's parameter JSON
//! Schema. The browser checks the form before it is sent; the dispatcher
//! checks the params again (the same check as the JSON API) and its refusal
//! is shown on the form.

use super::html::{esc, short, url_part};
use super::runs::run_table;
use super::{CsrfForm, DeleteForm, Session, UiError, UiResult};
use crate::api::ApiState;
use crate::model::ComponentDigest;
use crate::model::Deployment;
use crate::store::{FlowRunFilter, FlowRunRow, ObjectKind};
use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::sync::Arc;

/// Form fields that carry a parameter are named with this prefix.
const PARAM_FIELD: &str = "param.";
/// The field for params as one JSON object (flows without a schema).
const JSON_FIELD: &str = "params_json";

fn parse(body: &str) -> UiResult<Deployment> {
    serde_json::from_str(body).map_err(|e| {
        tracing::error!("a stored deployment does not parse: {e}");
        UiError::BadRequest("a stored deployment does not parse; see the server log".into())
    })
}

#[derive(serde::Deserialize, Default)]
pub(super) struct TagQuery {
    tag: Option<String>,
}

pub(super) async fn list(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Query(q): Query<TagQuery>,
) -> UiResult<Html<String>> {
    let rows = state
        .blocking(|state| Ok(state.store.objects(ObjectKind::Deployment)?))
        .await?;
    let tag = q.tag.filter(|t| !t.trim().is_empty());
    let mut body = format!(
        "<h1>Deployments</h1><form method=\"get\" action=\"/deployments\" class=\"filters\">\
         <label>Tag <input name=\"tag\" value=\"{}\"></label><button>Filter</button></form>",
        esc(tag.as_deref().unwrap_or(""))
    );
    let mut shown = 0;
    body.push_str(
        "<div class=\"scroll\"><table><thead><tr><th>Name</th><th>Flow</th><th>Component</th><th>Pool / queue</th>\
         <th>Schedules</th><th>Tags</th><th>Status</th></tr></thead><tbody>",
    );
    for row in &rows {
        let d = parse(&row.body)?;
        if tag.as_ref().is_some_and(|t| !d.tags.contains(t)) {
            continue;
        }
        shown += 1;
        let _ = write!(
            body,
            "<tr><td><a href=\"/deployments/{}\">{}</a></td><td>{}</td><td><a href=\"/components/{}\"><code>{}</code></a></td>\
             <td>{} / {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&url_part(&d.name)),
            esc(&d.name),
            esc(&d.flow),
            esc(&url_part(&d.component)),
            esc(short(&d.component)),
            esc(&d.work_pool),
            esc(&d.work_queue),
            d.schedules.len(),
            esc(&d.tags.join(", ")),
            if d.paused { "paused" } else { "active" },
        );
    }
    body.push_str("</tbody></table></div>");
    if shown == 0 {
        body.push_str(
            "<p class=\"empty\">No deployments. Create one with <code>host deploy</code>.</p>",
        );
    }
    Ok(session.page("Deployments", "/deployments", &body))
}

/// What a deployment page shows.
struct DeploymentView {
    deployment: Deployment,
    schema: Option<Value>,
    runs: Vec<FlowRunRow>,
}

async fn load(state: &Arc<ApiState>, name: String) -> UiResult<DeploymentView> {
    state
        .blocking(move |state| {
            let row = state
                .store
                .object(ObjectKind::Deployment, &name)?
                .ok_or_else(|| {
                    crate::api::ApiError::from(crate::store::StoreError::NotFound {
                        what: "deployment",
                        id: name.clone(),
                    })
                })?;
            let deployment: Deployment =
                serde_json::from_str(&row.body).map_err(crate::api::ApiError::internal)?;
            let schema = ComponentDigest::parse(&deployment.component)
                .map(|digest| state.store.component_manifest(&digest))
                .transpose()?
                .flatten()
                .and_then(|m| {
                    m.flow(&deployment.flow)
                        .and_then(|f| f.params_schema.clone())
                });
            let runs = state.store.list_flow_runs(&FlowRunFilter {
                deployment: Some(name.clone()),
                limit: 20,
                ..Default::default()
            })?;
            Ok(DeploymentView {
                deployment,
                schema,
                runs,
            })
        })
        .await
        .map_err(UiError::from)
}

pub(super) async fn show(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
) -> UiResult<Html<String>> {
    let view = load(&state, name).await?;
    let now = state.dispatcher.control().now();
    Ok(page(&view, &session, now, Feedback::default()))
}

/// What a refused form sent and why it was refused, shown on the page again.
#[derive(Default)]
struct Feedback<'a> {
    run_error: Option<&'a str>,
    /// The Run form's fields as sent.
    sent: &'a [(String, String)],
    edit_error: Option<&'a str>,
    /// The edit form's text as sent.
    edit_text: Option<&'a str>,
}

fn page(
    view: &DeploymentView,
    session: &Session,
    now: i64,
    feedback: Feedback<'_>,
) -> Html<String> {
    let d = &view.deployment;
    let mut body = format!(
        "<h1>Deployment <span class=\"flow\">{}</span></h1><p>{}</p><dl class=\"summary\">\
         <div><dt>Flow</dt><dd>{}</dd></div><div><dt>Component</dt><dd><a href=\"/components/{}\"><code>{}</code></a></dd></div>\
         <div><dt>Pool / queue</dt><dd>{} / {}</dd></div><div><dt>Status</dt><dd>{}</dd></div>\
         <div><dt>Concurrency limit</dt><dd>{}</dd></div><div><dt>Schedules</dt><dd>{}</dd></div>\
         <div><dt>Tags</dt><dd>{}</dd></div><div><dt>Secrets granted</dt><dd>{}</dd></div></dl>",
        esc(&d.name),
        esc(&d.description),
        esc(&d.flow),
        esc(&url_part(&d.component)),
        esc(short(&d.component)),
        esc(&d.work_pool),
        esc(&d.work_queue),
        if d.paused { "paused" } else { "active" },
        d.concurrency_limit
            .map(|n| n.to_string())
            .unwrap_or_else(|| "none".into()),
        d.schedules.len(),
        esc(&d.tags.join(", ")),
        esc(&d.secrets.join(", ")),
    );
    if !d.schedules.is_empty() {
        body.push_str(
            "<section><h2>Schedules</h2><table><thead><tr><th>Schedule</th><th>Zone</th><th>Status</th><th>Next runs</th></tr></thead><tbody>",
        );
        for schedule in &d.schedules {
            let what = match (&schedule.cron, schedule.interval_seconds, &schedule.rrule) {
                (Some(cron), _, _) => format!("cron {cron}"),
                (_, Some(seconds), _) => format!("every {seconds} s"),
                (_, _, Some(rule)) => format!("rrule {rule}"),
                _ => String::new(),
            };
            let next = match schedule.next_times(now, 5) {
                Ok(times) if times.is_empty() => "none".to_string(),
                Ok(times) => times
                    .iter()
                    .map(|t| esc(t).to_string())
                    .collect::<Vec<_>>()
                    .join("<br>"),
                Err(e) => esc(&e.to_string()).to_string(),
            };
            let _ = write!(
                body,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td class=\"next-runs\">{next}</td></tr>",
                esc(&what),
                esc(schedule.timezone.as_deref().unwrap_or("UTC")),
                if schedule.active {
                    "active"
                } else {
                    "inactive"
                },
            );
        }
        body.push_str("</tbody></table></section>");
    }
    let (action, label) = if d.paused {
        ("resume", "Resume")
    } else {
        ("pause", "Pause")
    };
    let _ = write!(
        body,
        "<div class=\"actions\"><form method=\"post\" action=\"/deployments/{}/{action}\">{}<button>{label}</button></form> {}</div>",
        esc(&url_part(&d.name)),
        session.csrf_field(),
        super::delete_button(
            session,
            &format!("/deployments/{}/delete", url_part(&d.name)),
            "Delete"
        )
    );
    body.push_str("<section><h2>Run</h2>");
    if let Some(error) = feedback.run_error {
        let _ = write!(
            body,
            "<p class=\"error\" role=\"alert\" id=\"run-error\">{}</p>",
            esc(error)
        );
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/deployments/{}/run\" class=\"stack\" id=\"run-form\" data-validate novalidate>{}",
        esc(&url_part(&d.name)),
        session.csrf_field()
    );
    body.push_str(&param_fields(
        view.schema.as_ref(),
        &d.params,
        feedback.sent,
    ));
    body.push_str("<button>Run</button></form></section>");
    body.push_str("<section><h2>Recent runs</h2>");
    body.push_str(&run_table(&view.runs, now));
    let _ = write!(
        body,
        "<p><a href=\"/runs?deployment={}\">All runs of this deployment →</a></p></section>",
        esc(&url_part(&d.name))
    );
    // Editing: the deployment as the JSON API takes it, saved by the same
    // function as `PUT /api/deployments/{name}` (and so checked the same way).
    let current = serde_json::to_string_pretty(d).unwrap_or_default();
    body.push_str("<section><h2>Edit</h2>");
    if let Some(error) = feedback.edit_error {
        let _ = write!(
            body,
            "<p class=\"error\" role=\"alert\" id=\"edit-error\">{}</p>",
            esc(error)
        );
    }
    let _ = write!(
        body,
        "<p class=\"note\">Description, params, pool and queue, schedules, limits, tags, granted secrets: \
         the fields of <code>PUT /api/deployments/{{name}}</code>.</p>\
         <form method=\"post\" action=\"/deployments/{}/edit\" class=\"stack\">{}\
         <textarea name=\"deployment\" rows=\"16\" spellcheck=\"false\" aria-label=\"The deployment as JSON\">{}</textarea>\
         <button>Save</button></form></section>",
        esc(&url_part(&d.name)),
        session.csrf_field(),
        esc(feedback.edit_text.unwrap_or(&current)),
    );
    Html(super::html::page(
        &format!("Deployment {}", d.name),
        "/deployments",
        session.signed_in,
        &body,
    ))
}

/// The schema's type of a property: its first non-null `type`.
fn json_type(property: &Value) -> &str {
    match property.get("type") {
        Some(Value::String(t)) => t,
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("string"),
        _ => "json",
    }
}

/// Text of a JSON value as a form field shows it.
fn field_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One input per property of the schema (typed, with its limits as
/// attributes the page's script checks), or a JSON box without a schema.
fn param_fields(
    schema: Option<&Value>,
    defaults: &Map<String, Value>,
    sent: &[(String, String)],
) -> String {
    let sent_value = |field: &str| {
        sent.iter()
            .find(|(name, _)| name == field)
            .map(|(_, v)| v.clone())
    };
    let properties = schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .filter(|p| !p.is_empty());
    let Some(properties) = properties else {
        let text =
            sent_value(JSON_FIELD).unwrap_or_else(|| Value::Object(defaults.clone()).to_string());
        return format!(
            "<label>Parameters (JSON object) <textarea name=\"{JSON_FIELD}\" rows=\"6\" data-type=\"json\">{}</textarea></label><span class=\"field-error\"></span>",
            esc(&text)
        );
    };
    let required: Vec<&str> = schema
        .and_then(|s| s.get("required"))
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = String::new();
    for (name, property) in properties {
        let field = format!("{PARAM_FIELD}{name}");
        let kind = json_type(property);
        let value = sent_value(&field).unwrap_or_else(|| {
            defaults
                .get(name)
                .or_else(|| property.get("default"))
                .map(field_text)
                .unwrap_or_default()
        });
        let is_required = required.contains(&name.as_str()) && !defaults.contains_key(name);
        let mut limits = String::new();
        for (attribute, key) in [
            ("data-min", "minimum"),
            ("data-max", "maximum"),
            ("data-minlength", "minLength"),
            ("data-maxlength", "maxLength"),
            ("data-pattern", "pattern"),
        ] {
            if let Some(limit) = property.get(key) {
                let _ = write!(limits, " {attribute}=\"{}\"", esc(&field_text(limit)));
            }
        }
        if is_required {
            limits.push_str(" data-required");
        }
        let description = property
            .get("description")
            .and_then(Value::as_str)
            .map(|d| format!(" <small>{}</small>", esc(d)))
            .unwrap_or_default();
        let _ = write!(out, "<label>{}{description} ", esc(name));
        let enumerated = property.get("enum").and_then(Value::as_array);
        if kind == "boolean" || enumerated.is_some() {
            let options: Vec<String> = match enumerated {
                Some(values) => values.iter().map(field_text).collect(),
                None => vec!["true".into(), "false".into()],
            };
            let _ = write!(
                out,
                "<select name=\"{}\" data-type=\"{}\"{limits}><option value=\"\">(default)</option>",
                esc(&field),
                esc(kind)
            );
            for option in options {
                let selected = if option == value { " selected" } else { "" };
                let _ = write!(out, "<option{selected}>{}</option>", esc(&option));
            }
            out.push_str("</select>");
        } else if kind == "integer" || kind == "number" {
            let _ = write!(
                out,
                "<input type=\"text\" inputmode=\"decimal\" name=\"{}\" value=\"{}\" data-type=\"{kind}\"{limits}>",
                esc(&field),
                esc(&value)
            );
        } else if kind == "string" {
            let _ = write!(
                out,
                "<input type=\"text\" name=\"{}\" value=\"{}\" data-type=\"string\"{limits}>",
                esc(&field),
                esc(&value)
            );
        } else {
            let _ = write!(
                out,
                "<textarea name=\"{}\" rows=\"3\" data-type=\"json\"{limits}>{}</textarea>",
                esc(&field),
                esc(&value)
            );
        }
        out.push_str("</label><span class=\"field-error\" aria-live=\"polite\"></span>");
    }
    out
}

/// The params a posted form gives: each non-empty field converted by the
/// schema's type. A value that does not convert is passed on as text, so
/// the schema check names it.
fn params_from_form(
    schema: Option<&Value>,
    fields: &[(String, String)],
) -> UiResult<Map<String, Value>> {
    let mut params = Map::new();
    let json_text = fields
        .iter()
        .find(|(name, _)| name == JSON_FIELD)
        .map(|(_, text)| text.trim())
        .filter(|text| !text.is_empty());
    if let Some(text) = json_text {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => params = map,
            Ok(_) => {
                return Err(UiError::BadRequest(
                    "the parameters must be a JSON object ({\"name\": value, ...})".into(),
                ));
            }
            Err(e) => {
                return Err(UiError::BadRequest(format!(
                    "the parameters are not JSON: {e}"
                )));
            }
        }
    }
    let properties = schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object);
    for (field, text) in fields {
        let Some(name) = field.strip_prefix(PARAM_FIELD) else {
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        let kind = properties
            .and_then(|p| p.get(name))
            .map(json_type)
            .unwrap_or("json");
        let value = match kind {
            "string" => Value::String(text.clone()),
            "integer" => text
                .trim()
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(text.clone())),
            "number" => text
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .unwrap_or_else(|| Value::String(text.clone())),
            "boolean" => match text.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => Value::String(text.clone()),
            },
            _ => serde_json::from_str(text)
                .map_err(|e| UiError::BadRequest(format!("parameter '{name}' is not JSON: {e}")))?,
        };
        params.insert(name.to_string(), value);
    }
    Ok(params)
}

pub(super) async fn run(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    axum::Form(fields): axum::Form<Vec<(String, String)>>,
) -> UiResult<Response> {
    let csrf = fields
        .iter()
        .find(|(field, _)| field == "csrf")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    session.check_csrf(csrf)?;
    let view = load(&state, name.clone()).await?;
    let refused = |status: StatusCode, message: &str| {
        let now = state.dispatcher.control().now();
        let feedback = Feedback {
            run_error: Some(message),
            sent: &fields,
            ..Feedback::default()
        };
        (status, page(&view, &session, now, feedback)).into_response()
    };
    let params = match params_from_form(view.schema.as_ref(), &fields) {
        Ok(params) => params,
        Err(e) => return Ok(refused(StatusCode::BAD_REQUEST, &e.to_string())),
    };
    match state
        .dispatcher
        .run_deployment(&name, Some(Value::Object(params)), Vec::new())
        .await
    {
        Ok(dispatched) => Ok(Redirect::to(&format!("/runs/{}", dispatched.id)).into_response()),
        Err(e) => {
            let e = crate::api::ApiError::from(e);
            if e.status().is_client_error() {
                Ok(refused(e.status(), e.message()))
            } else {
                Err(e.into())
            }
        }
    }
}

#[derive(serde::Deserialize)]
pub(super) struct EditForm {
    #[serde(default)]
    csrf: String,
    deployment: String,
}

pub(super) async fn edit(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    axum::Form(form): axum::Form<EditForm>,
) -> UiResult<Response> {
    session.check_csrf(&form.csrf)?;
    let view = load(&state, name.clone()).await?;
    let text = form.deployment;
    let parsed = serde_json::from_str::<Value>(&text)
        .map_err(|e| format!("the deployment is not JSON: {e}"))
        .and_then(|value| match value.get("name").and_then(Value::as_str) {
            Some(given) if given != name => Err(format!(
                "the text names deployment '{given}' but this is '{name}'; renaming is not editing"
            )),
            _ => serde_json::from_value::<Deployment>(value)
                .map_err(|e| format!("the text is not a deployment: {e}")),
        });
    let outcome = match parsed {
        Err(message) => Err((StatusCode::BAD_REQUEST, message)),
        Ok(mut deployment) => {
            deployment.name = name.clone();
            let role = session.role;
            let saved = match role.may_grant_secrets(&deployment.secrets) {
                Err(e) => Err(e),
                Ok(()) => {
                    state
                        .blocking(move |state| crate::api::deployments::save(state, deployment))
                        .await
                }
            };
            saved.map_err(|e| (e.status(), e.message().to_string()))
        }
    };
    match outcome {
        Ok(_) => Ok(Redirect::to(&format!("/deployments/{}", url_part(&name))).into_response()),
        Err((status, message)) if status.is_client_error() => {
            let now = state.dispatcher.control().now();
            let feedback = Feedback {
                edit_error: Some(&message),
                edit_text: Some(&text),
                ..Feedback::default()
            };
            Ok((status, page(&view, &session, now, feedback)).into_response())
        }
        Err((status, message)) => Err(UiError::Refused { status, message }),
    }
}

/// Pauses (`PAUSED`) or resumes a deployment's schedules: one handler for both routes.
pub(super) async fn set_paused<const PAUSED: bool>(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    axum::Form(form): axum::Form<CsrfForm>,
) -> UiResult<Response> {
    let back = format!("/deployments/{}", url_part(&name));
    super::action_step(
        &session,
        form,
        &back,
        crate::api::deployments::set_paused(&state, name, PAUSED),
    )
    .await
}

/// Deletes a deployment after the confirmation step, as
/// `DELETE /api/deployments/{name}` does (its runs stay).
pub(super) async fn delete(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    axum::Form(form): axum::Form<DeleteForm>,
) -> UiResult<Response> {
    let what = format!("deployment '{name}'");
    let gone = crate::api::deployments::delete_deployment(State(state), Path(name));
    super::delete_step(
        &session,
        form,
        &what,
        "Its schedules stop making runs and it can no longer be run; its past runs stay.",
        "/deployments",
        gone,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn form_fields_become_params_of_the_schema_types() {
        let schema = json!({ "properties": {
            "rows": { "type": "integer" }, "rate": { "type": "number" },
            "name": { "type": "string" }, "dry": { "type": ["boolean", "null"] },
            "list": { "type": "array" } } });
        let fields: Vec<(String, String)> = [
            ("csrf", "x"),
            ("param.rows", "40"),
            ("param.rate", "0.5"),
            ("param.name", "<b>"),
            ("param.dry", "true"),
            ("param.list", "[1, 2]"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let params = params_from_form(Some(&schema), &fields).unwrap();
        assert_eq!(
            Value::Object(params),
            json!({ "rows": 40, "rate": 0.5, "name": "<b>", "dry": true, "list": [1, 2] })
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_is_passed_on_for_the_schema_to_name() {
        let schema = json!({ "properties": { "rows": { "type": "integer" } } });
        let fields = vec![("param.rows".to_string(), "many".to_string())];
        let params = params_from_form(Some(&schema), &fields).unwrap();
        assert_eq!(params["rows"], json!("many"));
        let bad_json = vec![("params_json".to_string(), "[1]".to_string())];
        assert!(params_from_form(None, &bad_json).is_err());
    }

    #[test]
    fn empty_fields_leave_the_defaults_alone() {
        let schema = json!({ "properties": { "rows": { "type": "integer" } } });
        let fields = vec![("param.rows".to_string(), " ".to_string())];
        assert!(params_from_form(Some(&schema), &fields).unwrap().is_empty());
    }
}
