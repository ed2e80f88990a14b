//! The HTTP API: the only module (with `ui`) that names axum and utoipa.
//!
//! JSON under `/api`, health at `/api/health`, Prometheus text at `/metrics`,
//! the OpenAPI document (generated from these handlers) at `/api/openapi.json`.
//! Components are uploaded as raw `.wasm` bodies, validated against the world
//! and stored by sha256; flow runs start on the embedded executor, which runs
//! guests on a runtime of its own so a busy guest cannot starve the API.
//! Every 4xx body says what was wrong: `{"error": "...", "message": "..."}`.
//!
//! The CLI talks to this router for everything that changes server state: over
//! HTTP when an API URL is configured, in-process (no socket) otherwise.

mod artifacts;
pub(crate) mod automations;
pub(crate) mod deployments;
pub mod drain;
pub(crate) mod events;
pub mod guard;
mod hosts;
pub mod housekeeping;
pub mod limits;
pub mod metrics;
pub(crate) mod objects;
pub(crate) mod runs;
pub mod schema;
pub mod wire;

use crate::dispatch::{DispatchError, Dispatcher};
use crate::store::{ComponentFileError, Store, StoreError};
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use guard::GuardResponses;
pub use objects::ensure_pool;
use schema::WireRules;

/// The largest `.wasm` accepted by `POST /api/components`.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;
/// The largest JSON body of any other request.
pub const MAX_JSON_BYTES: usize = 4 << 20;
/// A remote host's report: task inputs and outputs may each be as large as
/// the engine's payload cap (16 MiB), and a report carries at least one task.
pub const MAX_REPORT_BYTES: usize = 128 << 20;
/// Event streams followed at once; more get 503 until one closes.
pub const MAX_EVENT_STREAMS: usize = 256;
/// A request (other than an event stream) that takes longer gets 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What the handlers share.
pub struct ApiState {
    /// Creates, admits and hands over runs; stores components.
    pub dispatcher: Arc<Dispatcher>,
    /// For reads; every one runs on the blocking pool (see [`ApiState::blocking`]).
    pub store: Arc<Store>,
    /// The accepted API keys (hashed, with their roles); empty means no auth.
    api_keys: Vec<guard::ApiKey>,
    /// Open event streams.
    streams: Arc<tokio::sync::Semaphore>,
    /// Cancelled when the server stops: event streams end.
    pub shutdown: CancellationToken,
}

/// How to build an [`ApiState`].
pub struct ApiConfig {
    pub dispatcher: Arc<Dispatcher>,
    /// The accepted API keys ([`guard::parse_key_file`]); empty means no auth.
    pub api_keys: Vec<guard::ApiKey>,
    pub shutdown: CancellationToken,
}

impl ApiState {
    pub fn new(config: ApiConfig) -> Arc<Self> {
        metrics::install();
        Arc::new(Self {
            store: config.dispatcher.store().clone(),
            dispatcher: config.dispatcher,
            api_keys: config.api_keys,
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_EVENT_STREAMS)),
            shutdown: config.shutdown,
        })
    }

    /// Runs `work` on the blocking pool: SQLite reads and commits block, and
    /// the API's own thread must stay free for every other request.
    pub(crate) async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&ApiState) -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || work(&state))
            .await
            .map_err(ApiError::internal)?
    }

    fn now(&self) -> crate::model::TimestampMicros {
        self.dispatcher.control().now()
    }
}

/// The document's info; its paths come from the routes themselves
/// ([`documented_routes`]), and the modifiers run once they are in
/// ([`document`]).
#[derive(OpenApi)]
#[openapi(info(
    title = "Weir API",
    description = "Upload flow components, deploy and run them, and follow their runs. \
            Errors are `{\"error\": code, \"message\": sentence}` with a 4xx status. \
            When the server has API keys, every endpoint but /api/health and /api/ready needs `Authorization: Bearer <key>`; \
            read-only keys may only GET, operator keys may not write secrets or grant them to deployments. \
            Bodies must be sent with their Content-Type (`application/json`, or `application/wasm` for uploads).",
    license(name = "Apache-2.0")
))]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Whether the document has an operation `method` on a route that `path`
/// (`/api/deployments/etl`) is one of (`/api/deployments/{name}`).
fn is_operation(method: &axum::http::Method, path: &str) -> bool {
    static OPERATIONS: std::sync::LazyLock<Vec<(String, Vec<String>)>> =
        std::sync::LazyLock::new(|| {
            let doc = document();
            let mut operations = Vec::new();
            for (template, item) in &doc.paths.paths {
                for (method, operation) in [
                    ("GET", &item.get),
                    ("PUT", &item.put),
                    ("POST", &item.post),
                    ("DELETE", &item.delete),
                ] {
                    if operation.is_some() {
                        let segments = template.split('/').map(str::to_string).collect();
                        operations.push((method.to_string(), segments));
                    }
                }
            }
            operations
        });
    let segments: Vec<&str> = path.split('/').collect();
    OPERATIONS.iter().any(|(m, template)| {
        m == method.as_str()
            && template.len() == segments.len()
            && template
                .iter()
                .zip(&segments)
                .all(|(t, s)| t.starts_with('{') || t == s)
    })
}

/// The OpenAPI document, as served and as checked into `host/openapi.json`.
pub fn openapi_document() -> String {
    let mut text = document()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

/// Every documented route, each registered once: the router and the
/// OpenAPI document both come from this list (utoipa-axum's `routes!` reads
/// each handler's `#[utoipa::path]`). `keyed` are those behind the API key.
fn documented_routes() -> (OpenApiRouter<Arc<ApiState>>, OpenApiRouter<Arc<ApiState>>) {
    let open = OpenApiRouter::default()
        .routes(routes!(health))
        .routes(routes!(metrics::ready));
    let keyed = OpenApiRouter::default()
        .routes(routes!(openapi_json))
        .routes(routes!(metrics::metrics))
        .routes(
            routes!(runs::list_components, runs::upload_component)
                .layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES)),
        )
        .routes(routes!(runs::get_component))
        .routes(routes!(runs::download_component))
        .routes(routes!(runs::start_flow_run))
        .routes(routes!(runs::list_flows))
        .routes(routes!(runs::list_flow_runs))
        .routes(routes!(housekeeping::prune_flow_runs))
        .routes(routes!(runs::get_flow_run))
        .routes(routes!(runs::list_task_runs))
        .routes(routes!(runs::get_logs))
        .routes(routes!(events::flow_run_events))
        .routes(routes!(runs::cancel_flow_run))
        .routes(routes!(runs::retry_flow_run))
        .routes(routes!(runs::resume_flow_run))
        .routes(routes!(hosts::report).layer(DefaultBodyLimit::max(MAX_REPORT_BYTES)))
        .routes(routes!(runs::get_task_run))
        .routes(routes!(hosts::list_hosts))
        .routes(routes!(hosts::claim))
        .routes(routes!(hosts::claims))
        .routes(routes!(hosts::heartbeat))
        .routes(routes!(
            deployments::list_deployments,
            deployments::create_deployment
        ))
        .routes(routes!(
            deployments::get_deployment,
            deployments::put_deployment,
            deployments::delete_deployment
        ))
        .routes(routes!(deployments::pause_deployment))
        .routes(routes!(deployments::resume_deployment))
        .routes(routes!(deployments::run_deployment))
        .routes(routes!(deployments::list_deployment_versions))
        .routes(routes!(deployments::rollback_deployment))
        .routes(routes!(objects::list_work_pools, objects::create_work_pool))
        .routes(routes!(
            objects::get_work_pool,
            objects::put_work_pool,
            objects::delete_work_pool
        ))
        .routes(routes!(objects::pause_work_pool))
        .routes(routes!(objects::resume_work_pool))
        .routes(routes!(
            objects::list_work_queues,
            objects::create_work_queue
        ))
        .routes(routes!(objects::delete_work_queue))
        .routes(routes!(objects::list_secrets))
        .routes(routes!(objects::put_secret, objects::delete_secret))
        .routes(routes!(objects::list_variables))
        .routes(routes!(
            objects::get_variable,
            objects::put_variable,
            objects::delete_variable
        ))
        .routes(routes!(limits::list_limits))
        .routes(routes!(
            limits::get_limit,
            limits::put_limit,
            limits::delete_limit
        ))
        .routes(routes!(limits::take_slots))
        .routes(routes!(limits::release_slots))
        .routes(routes!(artifacts::list_artifacts))
        .routes(routes!(artifacts::get_artifact))
        .routes(routes!(automations::list_automations))
        .routes(routes!(
            automations::get_automation,
            automations::put_automation,
            automations::delete_automation
        ))
        .routes(routes!(automations::pause_automation))
        .routes(routes!(automations::resume_automation))
        .routes(routes!(automations::list_deliveries));
    (open, keyed)
}

/// The OpenAPI document: [`ApiDoc`]'s info, the routes' paths, then the
/// modifiers (they read the paths).
fn document() -> utoipa::openapi::OpenApi {
    use utoipa::Modify;
    let (open, keyed) = documented_routes();
    let mut doc = ApiDoc::openapi();
    doc.merge(open.into_openapi());
    doc.merge(keyed.into_openapi());
    for modifier in [&BearerAuth as &dyn Modify, &GuardResponses, &WireRules] {
        modifier.modify(&mut doc);
    }
    doc
}

/// The routes.
pub fn router(state: Arc<ApiState>) -> Router {
    let json_limit = DefaultBodyLimit::max(MAX_JSON_BYTES);
    let (open, keyed) = documented_routes();
    let (open, _) = open.split_for_parts();
    let (keyed, _) = keyed.split_for_parts();
    let api = keyed
        .layer(axum::middleware::from_fn(guard::require_body_type))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::require_key,
        ));
    open.merge(api)
        // The web UI: its own guard (a cookie instead of a bearer key), the
        // same state, dispatcher and handlers.
        .merge(crate::ui::routes(state.clone()))
        .fallback(|request: Request| async move {
            let path = request.uri().path();
            if path.starts_with("/api/") || path == "/metrics" {
                ApiError::not_found(
                    "no such endpoint; the API is described at /api/openapi.json".to_string(),
                )
                .into_response()
            } else {
                // A person's mistyped address gets a page, not JSON.
                crate::ui::not_found(path)
            }
        })
        .layer(json_limit)
        .layer(axum::middleware::from_fn(time_limit))
        .with_state(state)
}

/// Gives the refusals axum writes itself (a query, path or JSON body that
/// does not parse: plain text) the API's error shape, so every 4xx a client
/// gets is the `ErrorBody` the document promises.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !status.is_client_error() || is_json {
        return response;
    }
    // Headers stay (a 405's `Allow`); the body becomes ours.
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .unwrap_or_default();
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        _ => "bad_request",
    };
    let mut message = String::from_utf8_lossy(&text).into_owned();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("refused").to_string();
    }
    let body = ErrorReply {
        error: error.to_string(),
        message,
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Json(body).into_response().into_body())
}

/// Ends a request that runs past [`REQUEST_TIMEOUT`] with 503 (event streams
/// are long by design and end with the server instead).
async fn time_limit(request: Request, next: Next) -> Response {
    if request.uri().path().ends_with("/events") {
        return next.run(request).await;
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::unavailable(format!(
            "the request took longer than {} s; the server is busy, try again",
            REQUEST_TIMEOUT.as_secs()
        ))
        .into_response(),
    }
}

/// Serves the API on `listener` until `shutdown` resolves. Requests must
/// name this server in `Host` (loopback, the bound address or one of
/// `allowed_hosts`) and come from no other site's page ([`guard::HostGuard`]).
pub async fn serve(
    state: Arc<ApiState>,
    listener: tokio::net::TcpListener,
    allowed_hosts: Vec<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let host_guard = Arc::new(guard::HostGuard::new(
        listener.local_addr()?,
        &allowed_hosts,
    ));
    let app = router(state)
        .layer(axum::middleware::from_fn_with_state(
            host_guard,
            guard::require_own_host,
        ))
        // Refusals on the UI's addresses (the guard's too) as pages.
        .layer(axum::middleware::from_fn(crate::ui::html_errors))
        // Outermost: every refusal above, the guard's too, reaches a client
        // that is still sending its body.
        .layer(axum::middleware::from_fn(drain::drain_unread_bodies));
    // With each client's address: the UI limits sign-in attempts per client.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The API without a socket: the CLI's local mode sends its requests through
/// the same router, so local and remote commands share handlers and errors.
pub struct InProcess {
    router: Router,
    pub state: Arc<ApiState>,
}

impl InProcess {
    pub fn new(state: Arc<ApiState>) -> InProcess {
        InProcess {
            router: router(state.clone()),
            state,
        }
    }

    /// Sends one request; returns the status and body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> (u16, Vec<u8>) {
        use tower::ServiceExt;
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, content_type)
            .body(body.map(axum::body::Body::from).unwrap_or_default());
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                let body = ErrorReply {
                    error: "bad_request".to_string(),
                    message: e.to_string(),
                };
                return (400, serde_json::to_vec(&body).unwrap_or_default());
            }
        };
        let response = match self.router.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default();
        (status, bytes)
    }
}

/// An API error: a status, a short code and a sentence for people.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error,
            message: message.into(),
        }
    }
    fn bad_request(error: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, message)
    }
    fn unprocessable(error: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, error, message)
    }
    fn not_found(message: String) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    fn conflict(message: String) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    fn unavailable(message: String) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        // The details go to the server's log, not to the client.
        tracing::error!("internal error: {e}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

impl ApiError {
    /// The HTTP status (the web UI shows errors as pages of its own).
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The sentence for people.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}

/// Every 4xx and 5xx body.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = ErrorBody)]
pub struct ErrorReply {
    /// A short code: `bad_json`, `invalid_params`, `invalid_component`, `not_found`, ...
    pub error: String,
    /// What was wrong and what to do, for people.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorReply {
            error: self.error.to_string(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

/// The one place dispatcher errors become statuses.
impl From<DispatchError> for ApiError {
    fn from(e: DispatchError) -> Self {
        use DispatchError as D;
        let message = e.to_string();
        match e {
            D::UnknownComponent(_) | D::UnknownDeployment(_) | D::UnknownRun(_) => {
                ApiError::not_found(message)
            }
            D::UnknownFlow { .. } => ApiError::unprocessable("unknown_flow", message),
            D::ParamsNotObject => ApiError::bad_request("invalid_params", message),
            D::BadClaimSize { .. } => ApiError::bad_request("bad_max_runs", message),
            D::InvalidParams(_) => ApiError::unprocessable("invalid_params", message),
            D::InvalidResumeInput { .. } => ApiError::unprocessable("invalid_input", message),
            D::DeploymentPaused(_)
            | D::SecretNotSet { .. }
            | D::WrongState { .. }
            | D::NoHostAllows { .. } => ApiError::conflict(message),
            D::InvalidComponent(_) => ApiError::bad_request("invalid_component", message),
            D::Store(e) => e.into(),
            D::ComponentFile(e) => e.into(),
            // A full disk is said as such; other file errors are the server's.
            D::Files(e) if full_disk(&e) => e.into(),
            D::Engine(_) | D::Files(_) | D::Corrupt { .. } | D::Control(_) | D::Join(_) => {
                ApiError::internal(message)
            }
            // A remote host's own errors; a server never answers with them.
            D::ClaimFailed(_) | D::NoClaimEndpoint { .. } => ApiError::internal(message),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ApiError::not_found(e.to_string()),
            StoreError::Conflict { .. }
            | StoreError::LeaseLost { .. }
            | StoreError::VersionTaken { .. }
            | StoreError::NoSlot { .. } => ApiError::conflict(e.to_string()),
            StoreError::Full(_) => {
                tracing::error!("{e}");
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "disk_full", e.to_string())
            }
            other => ApiError::internal(other),
        }
    }
}

fn full_disk(e: &ComponentFileError) -> bool {
    matches!(e, ComponentFileError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull)
}

impl From<ComponentFileError> for ApiError {
    fn from(e: ComponentFileError) -> Self {
        match e {
            ComponentFileError::Missing { .. } => ApiError::not_found(e.to_string()),
            // The server's copy is bad, not the request; the message says how to repair it.
            ComponentFileError::Damaged { .. } => {
                tracing::error!("{e}");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "component_damaged",
                    e.to_string(),
                )
            }
            ComponentFileError::Io { .. } if full_disk(&e) => {
                tracing::error!("{e}");
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "disk_full",
                    format!("{e}; free disk space on the server, then upload again"),
                )
            }
            ComponentFileError::Io { .. } => ApiError::internal(e),
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Parses a JSON body by hand so that a bad one gets our error shape.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], expected: &str) -> ApiResult<T> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "empty_body",
            format!("send a JSON body: {expected}"),
        ));
    }
    // Serde reads a struct from an array of its fields too; every body
    // here is an object (or null), as the document says.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::bad_request(
            "bad_json",
            format!("the body is an array; send a JSON object: {expected}"),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("the body is not {expected}: {e}")))
}

/// Liveness and version.
#[utoipa::path(get, path = "/api/health", tag = "server",
    responses((status = 200, body = wire::Health)))]
async fn health() -> Json<wire::Health> {
    Json(wire::Health {
        status: "ok".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "server",
    responses((status = 200, description = "The OpenAPI 3 document", content_type = "application/json")))]
async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi_document(),
    )
        .into_response()
}
