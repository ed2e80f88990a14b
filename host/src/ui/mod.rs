//! The web UI at `/`: server-rendered HTML pages and one small ES module.
//!
//! It is a client of the same services as the JSON API: reads go through
//! [`ApiState::blocking`] to the store, every change through the dispatcher
//! (create, cancel, retry runs) or the very functions the JSON handlers call
//! (setting a secret), so there is no second set of rules. It is mounted by
//! `api::router`, behind the same Host/Origin guard.
//!
//! Who may look: when the server has API keys, `/login` takes one once
//! (a few wrong ones per client, then 429: see [`auth`]) and gives the
//! browser a random session id in an `HttpOnly`, `SameSite=Strict` cookie;
//! every other page (and the live event stream) answers only to a live
//! session, with its key's role (read-only keys see, operators run and
//! cancel, admins set secrets). Every form that changes something carries a
//! CSRF token derived from the session id and a secret of this process, so a
//! page elsewhere cannot post one even where `SameSite` or `Origin` would not
//! stop it. The assets hold no data and are served to anyone (the login page
//! needs them).

mod auth;
mod automations;
mod deployments;
mod html;
mod objects;
mod runs;

use crate::api::ApiState;
use crate::api::guard::Role;
use auth::{Client, UiAuth};
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// The cookie that holds the session id (never the key: see [`auth`]).
const SESSION_COOKIE: &str = "weir_session";

const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// No inline script or foreign origin: a value that slipped through
/// escaping still could not run. Styles are ours only too (bars are SVG
/// attributes, not inline styles).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Why a page could not be shown or a form not carried out.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// What the API's rules refused, with their status and sentence.
    #[error("{message}")]
    Refused { status: StatusCode, message: String },
    #[error("sign in first: this server asks for an API key")]
    SignedOut,
    #[error(
        "the form is stale or was not sent by this page (its CSRF token does not match); reload the page and send it again"
    )]
    BadCsrf,
    #[error("this API key has the {has} role; this needs an {needs} key. Sign in with another key")]
    Forbidden {
        has: &'static str,
        needs: &'static str,
    },
    #[error("{0}")]
    BadRequest(String),
}

impl From<crate::api::ApiError> for UiError {
    fn from(e: crate::api::ApiError) -> Self {
        UiError::Refused {
            status: e.status(),
            message: e.message().to_string(),
        }
    }
}

impl From<crate::dispatch::DispatchError> for UiError {
    fn from(e: crate::dispatch::DispatchError) -> Self {
        crate::api::ApiError::from(e).into()
    }
}

impl UiError {
    fn status(&self) -> StatusCode {
        match self {
            UiError::Refused { status, .. } => *status,
            UiError::SignedOut => StatusCode::UNAUTHORIZED,
            UiError::BadCsrf | UiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            UiError::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = format!(
            "<h1>{} {}</h1><p class=\"error\" role=\"alert\">{}</p><p><a href=\"/\">Dashboard</a></p>",
            status.as_u16(),
            html::esc(status.canonical_reason().unwrap_or("")),
            html::esc(&self.to_string())
        );
        let mut response = (status, Html(html::page("Error", "", false, &body))).into_response();
        // Error pages also go out from outside the UI's router (the
        // fallback, `html_errors`), past its header layer.
        add_safety_headers(response.headers_mut());
        response
    }
}

type UiResult<T> = Result<T, UiError>;

/// A form that only confirms an action (cancel, retry, pause, resume).
#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// A delete's form: without `confirm=yes` it only asks (see [`delete_step`]).
#[derive(serde::Deserialize)]
struct DeleteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: String,
}

/// The small form behind every Delete button: it leads to the confirmation.
fn delete_button(session: &Session, action: &str, label: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\">{}<button class=\"danger\">{}</button></form>",
        html::esc(action),
        session.csrf_field(),
        html::esc(label)
    )
}

/// Every delete in two steps, both CSRF-checked: the first post answers a
/// page that names what goes and what follows from it; only its own form,
/// which adds `confirm=yes`, deletes (through `delete`, the JSON API's own
/// function) and goes on to `back_to`.
async fn delete_step<T>(
    session: &Session,
    form: DeleteForm,
    what: &str,
    consequence: &str,
    back_to: &str,
    delete: impl std::future::Future<Output = Result<T, crate::api::ApiError>>,
) -> UiResult<Response> {
    session.check_csrf(&form.csrf)?;
    if form.confirm != "yes" {
        let body = format!(
            "<h1>Delete {what_text}?</h1><p>{consequence}</p>\
             <form method=\"post\" class=\"actions\">{csrf}<input type=\"hidden\" name=\"confirm\" value=\"yes\">\
             <button class=\"danger\" autofocus>Delete {what_text}</button> <a href=\"{back}\">Keep it</a></form>",
            what_text = html::esc(what),
            consequence = html::esc(consequence),
            csrf = session.csrf_field(),
            back = html::esc(back_to),
        );
        return Ok(session.page("Delete", "", &body).into_response());
    }
    delete.await?;
    Ok(Redirect::to(back_to).into_response())
}

/// A button that only confirms an action (pause, resume): the form's CSRF
/// token first, then `action` (the API's own handler; a future, so nothing
/// runs before the check), then back to `back_to`.
async fn action_step<T>(
    session: &Session,
    form: CsrfForm,
    back_to: &str,
    action: impl std::future::Future<Output = Result<T, crate::api::ApiError>>,
) -> UiResult<Response> {
    session.check_csrf(&form.csrf)?;
    action.await?;
    Ok(Redirect::to(back_to).into_response())
}

/// Who is looking: the key's role and the CSRF token for its forms.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    role: Role,
    csrf: String,
    /// The server has keys (the page offers to sign out).
    signed_in: bool,
}

/// Random per process: tokens of an earlier process are not accepted.
fn csrf_secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(rand::random)
}

impl Session {
    /// `session_id` is the cookie's (empty on a server without keys).
    fn new(role: Role, session_id: &str, signed_in: bool) -> Session {
        let mut hasher = Sha256::new();
        hasher.update(csrf_secret());
        hasher.update(b"weir-ui-csrf\0");
        hasher.update(session_id.as_bytes());
        Session {
            role,
            csrf: hex::encode(&hasher.finalize()[..16]),
            signed_in,
        }
    }

    /// The hidden field every changing form carries.
    fn csrf_field(&self) -> String {
        format!(
            "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
            self.csrf
        )
    }

    /// `Ok` when a posted token is this session's (compared in constant time).
    fn check_csrf(&self, sent: &str) -> UiResult<()> {
        let (a, b) = (self.csrf.as_bytes(), sent.as_bytes());
        let same =
            a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
        if same { Ok(()) } else { Err(UiError::BadCsrf) }
    }

    fn page(&self, title: &str, active: &str, body: &str) -> Html<String> {
        Html(html::page(title, active, self.signed_in, body))
    }
}

/// The page for an address that is neither a page nor an endpoint.
pub(crate) fn not_found(path: &str) -> Response {
    UiError::Refused {
        status: StatusCode::NOT_FOUND,
        message: format!("there is no page at {path}; start from the dashboard"),
    }
    .into_response()
}

/// Whether a path is a page's (people in a browser) rather than the JSON
/// API's or the metrics' (programs, which keep their JSON errors).
fn is_page_path(path: &str) -> bool {
    !(path == "/api" || path.starts_with("/api/") || path == "/metrics")
}

/// The largest error body [`html_errors`] reads to find its sentence.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Turns every refusal on a page's address that is not a page yet into one:
/// what the UI's handlers cannot see (a form body the extractor could not
/// read, a method the route lacks, a body over the limit, the Host/Origin
/// guard, the request time limit) answers in JSON or plain text, and a
/// browser would show that raw. Status and `Retry-After`/`Allow` stay; the
/// sentence is the JSON `message` or the text. Layered outermost by
/// `api::serve`, so it sees the guards' refusals too.
pub async fn html_errors(request: Request, next: Next) -> Response {
    let for_people = is_page_path(request.uri().path());
    let method = request.method().clone();
    let response = next.run(request).await;
    let is_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/html"));
    if !for_people
        || is_html
        || !(response.status().is_client_error() || response.status().is_server_error())
    {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_ERROR_BODY_BYTES)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let from_json = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_string));
    let message = match from_json {
        Some(message) => message,
        None if !text.trim().is_empty() => text.trim().to_string(),
        None if parts.status == StatusCode::METHOD_NOT_ALLOWED => {
            format!(
                "this address does not take a {method} request; use the page's links and buttons"
            )
        }
        None => "the server could not answer this request; go back and try again".to_string(),
    };
    let mut page = UiError::Refused {
        status: parts.status,
        message,
    }
    .into_response();
    for name in [header::RETRY_AFTER, header::ALLOW, header::WWW_AUTHENTICATE] {
        if let Some(value) = parts.headers.get(&name) {
            page.headers_mut().insert(name, value.clone());
        }
    }
    page
}

/// The UI's routes (merged into the API router, which adds the Host guard).
pub fn routes(state: Arc<ApiState>) -> Router<Arc<ApiState>> {
    let pages = Router::new()
        .route("/", get(runs::dashboard))
        .route("/runs", get(runs::list))
        .route("/runs/{id}", get(runs::show))
        .route(
            "/runs/{id}/events",
            get(crate::api::events::flow_run_events),
        )
        .route("/runs/{id}/cancel", post(runs::cancel))
        .route("/runs/{id}/retry", post(runs::retry))
        .route("/runs/{id}/resume", post(runs::resume))
        .route("/task-runs/{id}", get(runs::task))
        .route("/deployments", get(deployments::list))
        .route("/deployments/{name}", get(deployments::show))
        .route("/deployments/{name}/run", post(deployments::run))
        .route("/deployments/{name}/edit", post(deployments::edit))
        .route(
            "/deployments/{name}/pause",
            post(deployments::set_paused::<true>),
        )
        .route(
            "/deployments/{name}/resume",
            post(deployments::set_paused::<false>),
        )
        .route("/deployments/{name}/delete", post(deployments::delete))
        .route("/pools", get(objects::pools).post(objects::create_pool))
        .route("/pools/queues", post(objects::put_queue))
        .route(
            "/pools/{name}/pause",
            post(objects::set_pool_paused::<true>),
        )
        .route(
            "/pools/{name}/resume",
            post(objects::set_pool_paused::<false>),
        )
        .route("/pools/{name}/delete", post(objects::delete_pool))
        .route(
            "/pools/{pool}/queues/{name}/delete",
            post(objects::delete_queue),
        )
        .route(
            "/components",
            get(objects::components).post(objects::upload).layer(
                axum::extract::DefaultBodyLimit::max(crate::api::MAX_COMPONENT_BYTES),
            ),
        )
        .route("/components/{digest}", get(objects::component))
        .route("/components/{digest}/deploy", post(objects::deploy))
        .route("/secrets", get(objects::secrets).post(objects::set_secret))
        .route("/secrets/{name}/delete", post(objects::delete_secret))
        .route(
            "/variables",
            get(objects::variables).post(objects::set_variable),
        )
        .route("/variables/{name}/delete", post(objects::delete_variable))
        .route(
            "/automations",
            get(automations::list).post(automations::save),
        )
        .route("/automations/{name}", get(automations::show))
        .route(
            "/automations/{name}/pause",
            post(automations::set_paused::<true>),
        )
        .route(
            "/automations/{name}/resume",
            post(automations::set_paused::<false>),
        )
        .route("/automations/{name}/delete", post(automations::delete))
        .route("/logout", post(logout))
        .layer(axum::middleware::from_fn_with_state(state, require_session));
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/assets/app.js", get(app_js))
        .route("/assets/style.css", get(style_css))
        .merge(pages)
        .layer(axum::middleware::map_response(safety_headers))
        .layer(axum::middleware::from_fn(gzip))
        // One per router, so one per server: sessions end when it stops.
        .layer(Extension(Arc::new(UiAuth::default())))
}

/// Pages and assets smaller than this go out as they are.
const GZIP_FROM_BYTES: usize = 8 * 1024;

/// Gzips pages and assets for clients that take it: a run page of 1,000
/// tasks is ~400 KB of HTML and ~31 KB gzipped. Event streams pass untouched.
async fn gzip(request: Request, next: Next) -> Response {
    let accepts_gzip = request
        .headers()
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| coding.split(';').next().unwrap_or("").trim() == "gzip");
    let response = next.run(request).await;
    let compressible = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.starts_with("text/html")
                || t.starts_with("text/css")
                || t.starts_with("text/javascript")
        });
    if !accepts_gzip || !compressible || response.headers().contains_key(header::CONTENT_ENCODING) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Our pages are built whole in memory already; this bounds a surprise.
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 20).await else {
        return UiError::BadRequest("the page was too large to send".into()).into_response();
    };
    if bytes.len() < GZIP_FROM_BYTES {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    use std::io::Write as _;
    // Level 1: most of the gain for a fraction of the time.
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 8),
        flate2::Compression::fast(),
    );
    let compressed = encoder.write_all(&bytes).and_then(|()| encoder.finish());
    match compressed {
        Ok(compressed) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            parts
                .headers
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            parts
                .headers
                .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            Response::from_parts(parts, axum::body::Body::from(compressed))
        }
        Err(_) => Response::from_parts(parts, axum::body::Body::from(bytes)),
    }
}

/// Headers on every UI reply: the CSP, no sniffing, no referrer to other sites, no caching
/// of pages that show run data.
async fn safety_headers(mut response: Response) -> Response {
    add_safety_headers(response.headers_mut());
    response
}

fn add_safety_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: with it, Chromium sends `Origin: null` on our own
    // form posts, which the Host/Origin guard rightly refuses.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

/// The session id in our cookie, if one was sent.
fn cookie_session(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
}

/// The server's sign-in state, which [`routes`] always layers in.
fn ui_auth(request: &Request) -> Arc<UiAuth> {
    request
        .extensions()
        .get::<Arc<UiAuth>>()
        .cloned()
        .expect("ui::routes layers the UI's auth state")
}

/// The role a UI request needs: reading is read-only, secrets need admin,
/// every other change an operator (the API's rule, by the UI's paths).
fn needed_role(method: &Method, path: &str) -> Role {
    if method == Method::GET || method == Method::HEAD || path == "/logout" {
        Role::ReadOnly
    } else if path.starts_with("/secrets") {
        Role::Admin
    } else {
        Role::Operator
    }
}

/// Lets a request through with its [`Session`], or sends it to `/login`.
async fn require_session(
    State(state): State<Arc<ApiState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let session = if !state.needs_keys() {
        Session::new(Role::Admin, "", false)
    } else {
        let auth = ui_auth(&request);
        let signed = cookie_session(request.headers()).and_then(|id| {
            let role = auth.sessions().role_of(id, Instant::now())?;
            Some(Session::new(role, id, true))
        });
        match signed {
            Some(session) => session,
            // A page asked for in the browser goes to the sign-in form; an
            // event stream or a form post is refused outright.
            None if request.method() == Method::GET
                && !request.uri().path().ends_with("/events") =>
            {
                return Redirect::to("/login").into_response();
            }
            None => return UiError::SignedOut.into_response(),
        }
    };
    let needed = needed_role(request.method(), request.uri().path());
    if session.role < needed {
        return UiError::Forbidden {
            has: session.role.name(),
            needs: needed.name(),
        }
        .into_response();
    }
    request.extensions_mut().insert(session);
    next.run(request).await
}

async fn login_page(State(state): State<Arc<ApiState>>) -> Response {
    if !state.needs_keys() {
        return Redirect::to("/").into_response();
    }
    Html(html::page("Sign in", "", false, &login_form(None))).into_response()
}

fn login_form(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", html::esc(e)))
        .unwrap_or_default();
    format!(
        "<h1>Sign in</h1>{error}<p>This server asks for an API key (a line of its key file). \
         It is kept in a cookie this browser sends only to this server.</p>\
         <form method=\"post\" action=\"/login\" class=\"stack\">\
         <label>API key <input type=\"password\" name=\"key\" autocomplete=\"current-password\" required autofocus></label>\
         <button>Sign in</button></form>"
    )
}

#[derive(serde::Deserialize)]
struct LoginForm {
    key: String,
}

/// Checks a key and starts a session. Each client's attempts are limited
/// ([`auth::LoginLimiter`]) before the key is looked at, so a locked-out
/// client learns nothing, not even from a good key.
async fn login(
    State(state): State<Arc<ApiState>>,
    Extension(auth): Extension<Arc<UiAuth>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let client = Client::of(peer.map(|Extension(ConnectInfo(addr))| addr.ip()));
    if let Err(wait) = auth.logins().attempt(client, Instant::now()) {
        let seconds = wait.as_secs() + 1;
        let message =
            format!("too many wrong keys from this address; wait {seconds} s before the next try");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, seconds.to_string())],
            Html(html::page(
                "Sign in",
                "",
                false,
                &login_form(Some(&message)),
            )),
        )
            .into_response();
    }
    let role = if state.needs_keys() {
        state.role_of_key(form.key.trim())
    } else {
        None
    };
    let Some(role) = role else {
        let message =
            "this key is not accepted by this server; check it against the server's key file";
        return (
            StatusCode::UNAUTHORIZED,
            Html(html::page("Sign in", "", false, &login_form(Some(message)))),
        )
            .into_response();
    };
    let now = Instant::now();
    auth.logins().succeeded(client, now);
    let id = auth.sessions().start(role, now);
    let cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        auth::SESSION_TTL.as_secs()
    );
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Ends the session on the server (its cookie is worthless from now on,
/// wherever a copy of it went) and clears it in the browser.
async fn logout(Extension(auth): Extension<Arc<UiAuth>>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie_session(&headers) {
        auth.sessions().end(id);
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("weir_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; weir_key=k; weir_session=abc123; b=2"),
        );
        assert_eq!(cookie_session(&headers), Some("abc123"));
        headers.insert(header::COOKIE, HeaderValue::from_static("weir_key=zz"));
        assert_eq!(cookie_session(&headers), None);
        assert_eq!(cookie_session(&HeaderMap::new()), None);
    }

    #[test]
    fn csrf_tokens_differ_by_session_and_are_checked_exactly() {
        let a = Session::new(Role::Admin, "session-a", true);
        let b = Session::new(Role::Admin, "session-b", true);
        assert_ne!(a.csrf, b.csrf);
        assert!(a.check_csrf(&a.csrf.clone()).is_ok());
        assert!(a.check_csrf(&b.csrf).is_err());
        assert!(a.check_csrf("").is_err());
        assert!(a.check_csrf(&a.csrf[..10]).is_err());
    }

    #[test]
    fn secrets_need_admin_and_other_changes_an_operator() {
        assert_eq!(needed_role(&Method::GET, "/secrets"), Role::ReadOnly);
        assert_eq!(needed_role(&Method::POST, "/secrets"), Role::Admin);
        assert_eq!(needed_role(&Method::POST, "/runs/x/cancel"), Role::Operator);
        assert_eq!(needed_role(&Method::POST, "/logout"), Role::ReadOnly);
    }
}
