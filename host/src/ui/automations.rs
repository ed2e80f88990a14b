//! Automations: the list, one form to create or replace one (its JSON, as
//! `PUT /api/automations/{name}` takes it, checked by that very handler),
//! pause and resume, and deletes. Header values may carry tokens: like the API, the pages show
//! their names only, and a value left as `***` in the form keeps the stored one.

use super::html::{esc, url_part};
use super::{CsrfForm, DeleteForm, Session, UiError, UiResult, delete_button};
use crate::api::ApiState;
use crate::model::Automation;
use crate::model::deploy::REDACTED;
use crate::store::ObjectKind;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use std::fmt::Write as _;
use std::sync::Arc;

/// What the create form starts with: every field a user is likely to need.
const EXAMPLE: &str = r#"{
  "name": "notify-failures",
  "on": "failed",
  "deployment": "etl",
  "webhook": "https://hooks.example.com/weir",
  "headers": { "authorization": "Bearer TOKEN" }
}"#;

async fn stored(state: &Arc<ApiState>) -> UiResult<Vec<Automation>> {
    Ok(state
        .blocking(|state| {
            state
                .store
                .objects(ObjectKind::Automation)?
                .iter()
                .map(|row| serde_json::from_str(&row.body).map_err(crate::api::ApiError::internal))
                .collect()
        })
        .await?)
}

/// The automation as the form shows it: header values masked.
fn masked(automation: &Automation) -> String {
    let mut shown = automation.clone();
    for value in shown.headers.values_mut() {
        *value = REDACTED.to_string();
    }
    serde_json::to_string_pretty(&shown).unwrap_or_default()
}

fn form(session: &Session, title: &str, text: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    format!(
        "<section><h2>{}</h2>{error}<p class=\"note\">The fields of <code>PUT /api/automations/{{name}}</code>: \
         <code>on</code> is failed, crashed, late, cancelled, completed or stuck (with <code>stuck_after_seconds</code>); \
         <code>deployment</code>, <code>tag</code> and <code>flow</code> narrow it down. Header values shown as <code>{REDACTED}</code> keep their stored value.</p>\
         <form method=\"post\" action=\"/automations\" class=\"stack\" id=\"automation-form\">{}\
         <textarea name=\"automation\" rows=\"12\" spellcheck=\"false\" aria-label=\"The automation as JSON\">{}</textarea>\
         <button>Save</button></form></section>",
        esc(title),
        session.csrf_field(),
        esc(text)
    )
}

async fn list_page(
    state: &Arc<ApiState>,
    session: &Session,
    sent: Option<&str>,
    error: Option<&str>,
) -> UiResult<Html<String>> {
    let list = stored(state).await?;
    let mut body = String::from(
        "<h1>Automations</h1><div class=\"scroll\"><table><thead><tr><th>Name</th><th>On</th><th>Runs of</th>\
         <th>Webhook</th><th>Headers</th><th>Status</th><th></th></tr></thead><tbody>",
    );
    if list.is_empty() {
        body.push_str("<tr><td colspan=\"7\" class=\"empty\">No automations.</td></tr>");
    }
    for a in &list {
        let mut scope = Vec::new();
        for (label, value) in [
            ("deployment", &a.deployment),
            ("tag", &a.tag),
            ("flow", &a.flow),
        ] {
            if let Some(value) = value {
                scope.push(format!("{label} {}", esc(value)));
            }
        }
        let on = match a.stuck_after_seconds {
            Some(seconds) => format!("{} (after {seconds} s)", a.on.as_str()),
            None => a.on.as_str().to_string(),
        };
        let headers: Vec<String> = a.headers.keys().map(|k| esc(k).to_string()).collect();
        let _ = write!(
            body,
            "<tr><td><a href=\"/automations/{}\">{}</a></td><td>{on}</td><td>{}</td><td><code>{}</code></td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&url_part(&a.name)),
            esc(&a.name),
            if scope.is_empty() {
                "all runs".to_string()
            } else {
                scope.join(", ")
            },
            esc(&a.webhook),
            headers.join(", "),
            if a.paused { "paused" } else { "active" },
            delete_button(
                session,
                &format!("/automations/{}/delete", url_part(&a.name)),
                "Delete"
            ),
        );
    }
    body.push_str("</tbody></table></div>");
    body.push_str(&form(
        session,
        "Create an automation",
        sent.unwrap_or(EXAMPLE),
        error,
    ));
    Ok(session.page("Automations", "/automations", &body))
}

pub(super) async fn list(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
) -> UiResult<Html<String>> {
    list_page(&state, &session, None, None).await
}

/// One automation, in the form that replaces it.
pub(super) async fn show(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
) -> UiResult<Html<String>> {
    let automation = stored(&state)
        .await?
        .into_iter()
        .find(|a| a.name == name)
        .ok_or_else(|| UiError::Refused {
            status: StatusCode::NOT_FOUND,
            message: format!("no automation named '{name}'; see the automations page"),
        })?;
    let (action, label) = if automation.paused {
        ("resume", "Resume")
    } else {
        ("pause", "Pause")
    };
    let body = format!(
        "<h1>Automation <span class=\"flow\">{}</span></h1><p>{}</p>\
         <div class=\"actions\"><form method=\"post\" action=\"/automations/{}/{action}\">{}<button>{label}</button></form> {}</div>{}",
        esc(&automation.name),
        if automation.paused {
            "Paused: runs that end now are not delivered."
        } else {
            "Active."
        },
        esc(&url_part(&automation.name)),
        session.csrf_field(),
        delete_button(
            &session,
            &format!("/automations/{}/delete", url_part(&automation.name)),
            "Delete"
        ),
        form(&session, "Edit", &masked(&automation), None)
    );
    Ok(session.page("Automation", "/automations", &body))
}

#[derive(serde::Deserialize)]
pub(super) struct AutomationForm {
    #[serde(default)]
    csrf: String,
    automation: String,
}

/// The sent JSON with each `***` header value put back to the stored one,
/// only while the webhook stays the same: a value (a token) is never sent
/// to an address other than the one it was given for.
fn with_stored_headers(sent: &str, stored: &[Automation]) -> Result<Vec<u8>, String> {
    let mut value: serde_json::Value =
        serde_json::from_str(sent).map_err(|e| format!("the automation is not JSON: {e}"))?;
    let name = value
        .get("name")
        .and_then(|n| n.as_str())
        .ok_or("the automation needs a \"name\"")?
        .to_string();
    let webhook = value
        .get("webhook")
        .and_then(|w| w.as_str())
        .map(str::to_string);
    if let (Some(before), Some(headers)) = (
        stored.iter().find(|a| a.name == name),
        value.get_mut("headers").and_then(|h| h.as_object_mut()),
    ) {
        for (header, text) in headers.iter_mut() {
            if text.as_str() == Some(REDACTED)
                && let Some(kept) = before.headers.get(header)
            {
                if webhook.as_deref() != Some(before.webhook.as_str()) {
                    return Err(format!(
                        "the webhook changed, so header '{header}' is not sent there with its stored value; type the value again"
                    ));
                }
                *text = serde_json::Value::String(kept.clone());
            }
        }
    }
    Ok(value.to_string().into_bytes())
}

/// Creates or replaces an automation through `PUT /api/automations/{name}`'s
/// own handler; a refusal shows the form again with what was sent.
pub(super) async fn save(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    axum::Form(form): axum::Form<AutomationForm>,
) -> UiResult<Response> {
    session.check_csrf(&form.csrf)?;
    let before = stored(&state).await?;
    let refused = |status: StatusCode, message: String| {
        let (state, session, text) = (state.clone(), session.clone(), form.automation.clone());
        async move {
            let page = list_page(&state, &session, Some(&text), Some(&message)).await?;
            Ok::<_, UiError>((status, page).into_response())
        }
    };
    let body = match with_stored_headers(&form.automation, &before) {
        Ok(body) => body,
        Err(message) => return refused(StatusCode::BAD_REQUEST, message).await,
    };
    let name = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["name"].as_str().map(str::to_string))
        .unwrap_or_default();
    let saved = crate::api::automations::put_automation(
        State(state.clone()),
        Path(name),
        axum::body::Bytes::from(body),
    )
    .await;
    match saved {
        Ok(_) => Ok(Redirect::to("/automations").into_response()),
        Err(e) if e.status().is_client_error() => {
            refused(e.status(), e.message().to_string()).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Pauses (`PAUSED`) or resumes an automation: one handler for both routes.
pub(super) async fn set_paused<const PAUSED: bool>(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    axum::Form(form): axum::Form<CsrfForm>,
) -> UiResult<Response> {
    let back = format!("/automations/{}", url_part(&name));
    super::action_step(
        &session,
        form,
        &back,
        crate::api::automations::set_paused(state, name, PAUSED),
    )
    .await
}

pub(super) async fn delete(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    axum::Form(form): axum::Form<DeleteForm>,
) -> UiResult<Response> {
    let what = format!("automation '{name}'");
    let gone = crate::api::automations::delete_automation(State(state), Path(name));
    let consequence = "Its webhook is not called again; deliveries already made stay recorded.";
    super::delete_step(&session, form, &what, consequence, "/automations", gone).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_header_values_keep_the_stored_ones_and_new_values_replace_them() {
        let stored: Automation = serde_json::from_value(serde_json::json!({
            "name": "a", "on": "failed", "webhook": "http://x/",
            "headers": { "authorization": "Bearer secret", "x-team": "ops" } }))
        .unwrap();
        let sent = r#"{"name": "a", "on": "failed", "webhook": "http://x/",
            "headers": { "authorization": "***", "x-team": "dev", "x-new": "***" }}"#;
        let body = with_stored_headers(sent, std::slice::from_ref(&stored)).unwrap();
        let merged: Automation = serde_json::from_slice(&body).unwrap();
        assert_eq!(merged.headers["authorization"], "Bearer secret");
        assert_eq!(merged.headers["x-team"], "dev");
        assert_eq!(merged.headers["x-new"], "***", "nothing stored to keep");
        assert!(!masked(&stored).contains("Bearer secret"));
        // A new webhook does not get the stored token.
        let moved = sent.replace("http://x/", "http://evil.example/");
        let refused = with_stored_headers(&moved, std::slice::from_ref(&stored)).unwrap_err();
        assert!(refused.contains("authorization"), "{refused}");
        assert!(with_stored_headers("{", &[]).is_err());
        assert!(with_stored_headers("{}", &[]).is_err());
    }
}
