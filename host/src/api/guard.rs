//! Who may call the API, from where, and with what body: the checks in front
//! of every handler.
//!
//! - **Host and Origin** (sockets only, see [`HostGuard`]): a web page the user
//!   opens may send requests to `127.0.0.1:4200`, and with a DNS-rebinding name
//!   (`evil.example` resolving to 127.0.0.1) it may even read the replies. The
//!   browser always names the host it thinks it talks to in `Host`, and the page
//!   it runs in in `Origin`, so a `Host` that is not one of ours and an `Origin`
//!   that is not this server are refused before any handler runs.
//! - **Content-Type** ([`require_body_type`]): a cross-site form or a `no-cors`
//!   fetch can only send `text/plain`, form or multipart bodies without a
//!   preflight. Insisting on `application/json` (and `application/wasm` for
//!   uploads) makes such a request fail even where `Origin` is not sent.
//! - **API keys and roles** ([`require_key`]): `read-only` keys may only read,
//!   `operator` keys may also run and deploy, `admin` keys may also write
//!   secrets and grant them to deployments.
//!
//! The decisions are pure functions, tested below; the middlewares only read
//! headers and answer with our error shape.

use super::{ApiError, ApiState};
use axum::body::HttpBody as _;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The shortest API key a server accepts: shorter ones can be guessed.
pub const MIN_KEY_CHARS: usize = 16;

/// Why the server cannot start as asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuardError {
    #[error(
        "refusing to serve {addr} without API keys: anyone who can reach it could run code and read results. Give --api-key-file FILE (or server.api_key_file), or --insecure-no-auth if the network is trusted"
    )]
    ExposedWithoutKeys { addr: SocketAddr },
    #[error(
        "line {line}: the API key is {chars} characters long; use at least {MIN_KEY_CHARS} (e.g. `openssl rand -hex 24`)"
    )]
    KeyTooShort { line: usize, chars: usize },
    #[error(
        "line {line}: unknown role '{role}'; write `admin: KEY`, `operator: KEY`, `read-only: KEY` or a bare KEY (admin)"
    )]
    UnknownRole { line: usize, role: String },
    #[error(
        "no API keys (one per line, optionally `ROLE: KEY`); without keys, leave out --api-key-file"
    )]
    NoKeys,
}

/// What a key may do. Ordered: each role may do everything the one before may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// GET (and follow events) only.
    ReadOnly,
    /// Also upload, deploy (without secrets), run, cancel, pause, set variables.
    Operator,
    /// Also write secrets and deploy flows that are granted secrets.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::ReadOnly, Role::Operator, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The role a request needs, judged by its method and path alone.
    pub fn needed_for(method: &Method, path: &str) -> Role {
        if method == Method::GET || method == Method::HEAD {
            Role::ReadOnly
        } else if path.starts_with("/api/secrets/")
            || path == "/api/secrets"
            // A claim hands over the run's secrets in clear.
            || path == "/api/hosts/claim"
            || path == "/api/hosts/claims"
            // A prune destroys history.
            || path == "/api/flow-runs/prune"
        {
            Role::Admin
        } else {
            Role::Operator
        }
    }

    /// A deployment whose runs may read secrets is as powerful as the secrets.
    pub fn may_grant_secrets(self, secrets: &[String]) -> Result<(), ApiError> {
        if secrets.is_empty() || self >= Role::Admin {
            return Ok(());
        }
        Err(forbidden(format!(
            "this API key has the {} role; a deployment granted secrets ({}) needs an admin key. Deploy it without `secrets:` or with an admin key",
            self.name(),
            secrets.join(", ")
        )))
    }
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// A key the server accepts: its role and the sha256 of its text.
#[derive(Clone, Debug)]
pub struct ApiKey {
    pub role: Role,
    hash: [u8; 32],
}

impl ApiKey {
    pub fn new(role: Role, key: &str) -> ApiKey {
        ApiKey {
            role,
            hash: hash_key(key),
        }
    }
}

/// sha256 of an API key, as the server keeps it.
fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.trim().as_bytes()).into()
}

/// Reads an API key file: one key per line, `#` comments and blank lines
/// skipped; `ROLE: KEY` gives a role, a bare `KEY` is an admin key (as before
/// roles existed). Errors name the line, never the key.
pub fn parse_key_file(text: &str) -> Result<Vec<ApiKey>, GuardError> {
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (role, key) = match line.split_once(':').map(|(w, k)| (w.trim(), k)) {
            // A word before the colon is a role (an unknown one is refused,
            // so a misspelt role never becomes an admin key); anything else
            // (a key that happens to hold a colon) is a bare key.
            Some((word, key))
                if !word.is_empty()
                    && word.len() <= 16
                    && word
                        .chars()
                        .all(|c| c.is_ascii_alphabetic() || c == '-' || c == '_') =>
            {
                let word = word.to_ascii_lowercase();
                let role = Role::ALL
                    .into_iter()
                    .find(|r| r.name() == word || r.name().replace('-', "_") == word)
                    .ok_or(GuardError::UnknownRole {
                        line: line_no,
                        role: word,
                    })?;
                (role, key.trim())
            }
            _ => (Role::Admin, line),
        };
        let chars = key.chars().count();
        if chars < MIN_KEY_CHARS {
            return Err(GuardError::KeyTooShort {
                line: line_no,
                chars,
            });
        }
        keys.push(ApiKey::new(role, key));
    }
    if keys.is_empty() {
        return Err(GuardError::NoKeys);
    }
    Ok(keys)
}

/// A server reachable from other machines must ask for keys, unless told
/// the network is trusted.
pub fn check_exposure(
    addr: SocketAddr,
    has_keys: bool,
    insecure_no_auth: bool,
) -> Result<(), GuardError> {
    if addr.ip().is_loopback() || has_keys || insecure_no_auth {
        return Ok(());
    }
    Err(GuardError::ExposedWithoutKeys { addr })
}

/// `Authorization: Bearer KEY`, the scheme in any case.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, key) = value.split_once(char::is_whitespace)?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(key.trim())
        .filter(|k| !k.is_empty())
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ApiState {
    /// Whether callers must present a key (the web UI asks for one then).
    pub(crate) fn needs_keys(&self) -> bool {
        !self.api_keys.is_empty()
    }

    /// The role of a presented key, if the server accepts it.
    pub(crate) fn role_of_key(&self, presented: &str) -> Option<Role> {
        let hash = hash_key(presented);
        // Every key is compared, so the time taken does not tell which matched.
        self.api_keys.iter().fold(None, |found, key| {
            if constant_time_eq(&key.hash, &hash) {
                Some(key.role)
            } else {
                found
            }
        })
    }
}

/// Who made a request, as recorded beside what it changed (a deployment
/// version): the key's role and the start of its sha256, never the key.
#[derive(Clone, Debug)]
pub struct Caller(pub String);

impl Caller {
    fn of_key(role: Role, presented: &str) -> Caller {
        let hash = hash_key(presented);
        Caller(format!(
            "{} key sha256:{:02x}{:02x}{:02x}{:02x}",
            role.name(),
            hash[0],
            hash[1],
            hash[2],
            hash[3]
        ))
    }
}

/// The caller's role, from its key: `Admin` when the server has no keys.
/// Handlers that need more than the method tells (a deployment granting
/// secrets) read it from the request's extensions.
pub(super) async fn require_key(
    State(state): State<Arc<ApiState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let mut caller = Caller("anonymous (the server has no API keys)".into());
    let role = if state.api_keys.is_empty() {
        Role::Admin
    } else {
        let Some(presented) = bearer(request.headers()) else {
            return ApiError::unauthorized(
                "this server needs an API key: send `Authorization: Bearer <key>` (host config set api.key <KEY>)",
            )
            .into_response();
        };
        match state.role_of_key(presented) {
            Some(role) => {
                caller = Caller::of_key(role, presented);
                role
            }
            None => {
                return ApiError::unauthorized("the API key is not accepted by this server")
                    .into_response();
            }
        }
    };
    let needed = Role::needed_for(request.method(), request.uri().path());
    if role < needed {
        return forbidden(format!(
            "this API key has the {} role; {} {} needs an {} key",
            role.name(),
            request.method(),
            request.uri().path(),
            needed.name()
        ))
        .into_response();
    }
    request.extensions_mut().insert(role);
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// The media types a request body may have.
fn accepted_body_types(method: &Method, path: &str) -> &'static [&'static str] {
    if method == Method::POST && path == "/api/components" {
        &["application/wasm", "application/octet-stream"]
    } else {
        &["application/json"]
    }
}

/// `Ok` when the body's type is one the endpoint reads. A request without a
/// body needs no type; a request that names one must name the right one (a
/// cross-site form sends its type even when empty).
fn check_body_type(
    method: &Method,
    path: &str,
    content_type: Option<&str>,
    has_body: bool,
) -> Result<(), String> {
    if method == Method::GET || method == Method::HEAD || method == Method::OPTIONS {
        return Ok(());
    }
    let accepted = accepted_body_types(method, path);
    let media_type = content_type.map(|t| {
        t.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    });
    match media_type {
        None if !has_body => Ok(()),
        Some(t) if accepted.contains(&t.as_str()) => Ok(()),
        got => Err(format!(
            "{method} {path} takes `Content-Type: {}`; the request {}",
            accepted.join("` or `"),
            match got {
                Some(t) => format!("sent `{t}`"),
                None => "sent a body without a Content-Type".to_string(),
            }
        )),
    }
}

/// Answers 415 when a body's type is not the endpoint's.
pub(super) async fn require_body_type(request: Request, next: Next) -> Response {
    // A method the route does not have is the router's to refuse (405 with
    // `Allow`), whatever body it came with.
    if !super::is_operation(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    let has_body = request.body().size_hint().exact() != Some(0);
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    if let Err(message) = check_body_type(
        request.method(),
        request.uri().path(),
        content_type,
        has_body,
    ) {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
        .into_response();
    }
    next.run(request).await
}

/// The host names a server answers to over a socket.
///
/// Allowed: `localhost`, loopback addresses, the address it is bound to (any
/// address of the machine when bound to 0.0.0.0 or ::), and names given with
/// `--allowed-host` / `server.allowed_hosts`. The port is not compared: a
/// rebinding page controls the name, not where the connection lands, and
/// port forwarding or a proxy legitimately changes it.
#[derive(Clone, Debug)]
pub struct HostGuard {
    bound: IpAddr,
    names: Vec<String>,
}

impl HostGuard {
    pub fn new(bound: SocketAddr, names: &[String]) -> HostGuard {
        HostGuard {
            bound: bound.ip(),
            names: names
                .iter()
                .map(|n| n.trim().to_ascii_lowercase())
                .filter(|n| !n.is_empty())
                .collect(),
        }
    }

    /// Whether a `Host` header value names this server.
    pub fn allows_host(&self, host: &str) -> bool {
        let Some((name, _port)) = split_authority(host) else {
            return false;
        };
        match name.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || ip == self.bound || self.bound.is_unspecified(),
            Err(_) => name == "localhost" || self.names.contains(&name),
        }
    }

    /// Why a request may not go on, or `None`.
    pub fn refusal(&self, host: Option<&str>, origin: Option<&str>) -> Option<ApiError> {
        let Some(host) = host.filter(|h| self.allows_host(h)) else {
            let shown = host.unwrap_or("(none)");
            let name = host
                .and_then(split_authority)
                .map(|(n, _)| n)
                .unwrap_or_else(|| "NAME".into());
            return Some(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_host",
                format!(
                    "this server does not answer to Host {shown}; use http://127.0.0.1 or http://localhost, or, if {name} is a name of this server, start it with --allowed-host {name} (or set server.allowed_hosts)"
                ),
            ));
        };
        match origin {
            Some(origin) if !same_origin(origin, host) => Some(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                format!(
                    "requests from pages of other sites are refused (Origin {origin}, this server is {host}); call the API from the CLI, curl or a page this server serves"
                ),
            )),
            _ => None,
        }
    }
}

/// Refuses requests whose `Host` (or absolute URI) is not ours, or whose
/// `Origin` is another site. Only on sockets: the in-process API has neither.
pub(super) async fn require_own_host(
    State(guard): State<Arc<HostGuard>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let text = |name| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("(not text)"))
    };
    let host = text(header::HOST);
    // A request line in absolute form names the host too; it must agree.
    let uri_host = request.uri().authority().map(|a| a.as_str());
    let refusal = match uri_host {
        Some(authority) if host.is_some_and(|h| !h.eq_ignore_ascii_case(authority)) => {
            guard.refusal(Some(authority), None)
        }
        _ => None,
    }
    .or_else(|| guard.refusal(host.or(uri_host), text(header::ORIGIN)));
    match refusal {
        Some(error) => error.into_response(),
        None => next.run(request).await,
    }
}

/// Documents what the guards answer on every operation: 401 and 403 (key,
/// role, Host, Origin) everywhere but `/api/health`, 415 wherever a body is read.
pub(super) struct GuardResponses;

impl utoipa::Modify for GuardResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
        let error = |description: &str| -> RefOr<utoipa::openapi::Response> {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                    )
                    .build(),
            )
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                responses.entry("403".into()).or_insert_with(|| {
                    error(
                        "`forbidden_host`: Host is not a name of this server; `forbidden_origin`: sent from another site's page; `forbidden`: the API key's role may not do this",
                    )
                });
                if path != "/api/health" && path != "/api/ready" {
                    responses.entry("401".into()).or_insert_with(|| {
                        error("The server has API keys and none (or an unknown one) was sent")
                    });
                }
                if operation.request_body.is_some() {
                    responses.entry("415".into()).or_insert_with(|| {
                        error("The body's Content-Type is not the one the operation reads")
                    });
                    responses
                        .entry("413".into())
                        .or_insert_with(|| error("The body is larger than the operation reads"));
                }
                // Any path segment, query or body can fail to parse, before
                // a handler sees it (`super::json_errors` gives it our shape).
                if path != "/api/health" && path != "/api/ready" {
                    responses.entry("400".into()).or_insert_with(|| {
                        error("A path segment, query parameter or body did not parse or is not allowed; the message says which")
                    });
                }
                if !path.ends_with("/events") && path != "/api/health" {
                    responses.entry("503".into()).or_insert_with(|| {
                        error("The request took longer than the server allows (60 s); try again")
                    });
                }
            }
        }
    }
}

/// `host[:port]` (IPv6 in brackets) → lower-cased host (brackets removed) and port.
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    let authority = authority.trim();
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some((host.to_ascii_lowercase(), port))
}

/// Whether a page at `origin` is this server as reached through `host`.
/// The scheme only gives the default port: `Host` does not say whether a TLS
/// proxy stands in front, and no other site can serve pages from our address.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false; // "null" and the like
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    let (Some((origin_name, origin_port)), Some((host_name, host_port))) =
        (split_authority(authority), split_authority(host))
    else {
        return false;
    };
    origin_name == host_name
        && origin_port.unwrap_or(default_port) == host_port.unwrap_or(default_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(bound: &str, names: &[&str]) -> HostGuard {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        HostGuard::new(bound.parse().unwrap(), &names)
    }

    #[test]
    fn only_our_host_names_are_answered() {
        let local = guard("127.0.0.1:4200", &["Weir.Example.com"]);
        for ok in [
            "127.0.0.1:4200",
            "localhost:4200",
            "LOCALHOST",
            "[::1]:4200",
            "127.0.0.1",
            "weir.example.com",
            "weir.example.com:443",
        ] {
            assert!(local.allows_host(ok), "{ok}");
        }
        for refused in [
            "evil.example:4200",
            "evil.example",
            "localhost.evil.example:4200",
            "127.0.0.1.nip.io:4200",
            "10.0.0.5:4200",
            "0.0.0.0:4200",
            "",
            "user@127.0.0.1:4200",
            "127.0.0.1:99999",
            "[::1",
        ] {
            assert!(!local.allows_host(refused), "{refused}");
        }
        // Bound to every address: any address of the machine, still no foreign names.
        let everywhere = guard("0.0.0.0:4200", &[]);
        assert!(everywhere.allows_host("192.168.1.20:4200"));
        assert!(everywhere.allows_host("[fe80::1]:4200"));
        assert!(!everywhere.allows_host("evil.example:4200"));
        let one = guard("192.168.1.20:4200", &[]);
        assert!(one.allows_host("192.168.1.20:4200"));
        assert!(!one.allows_host("192.168.1.21:4200"));
    }

    #[test]
    fn origins_must_be_this_server() {
        let g = guard("127.0.0.1:4200", &["weir.example.com"]);
        let refused = |host: &str, origin: Option<&str>| {
            g.refusal(Some(host), origin)
                .map(|e| (e.status.as_u16(), e.error))
        };
        assert_eq!(refused("127.0.0.1:4200", None), None);
        assert_eq!(
            refused("127.0.0.1:4200", Some("http://127.0.0.1:4200")),
            None
        );
        assert_eq!(
            refused("localhost:4200", Some("http://LOCALHOST:4200")),
            None
        );
        assert_eq!(
            refused("weir.example.com", Some("https://weir.example.com")),
            None
        );
        assert_eq!(
            refused("weir.example.com:80", Some("http://weir.example.com")),
            None
        );
        for origin in [
            "http://evil.example",
            "http://127.0.0.1:8080",
            "http://localhost:4200",
            "null",
            "file://",
            "http://127.0.0.1:4200.evil.example",
        ] {
            assert_eq!(
                refused("127.0.0.1:4200", Some(origin)),
                Some((403, "forbidden_origin")),
                "{origin}"
            );
        }
        assert_eq!(
            refused("evil.example:4200", None),
            Some((403, "forbidden_host"))
        );
        assert_eq!(
            g.refusal(None, None).map(|e| e.error),
            Some("forbidden_host"),
            "a request without Host is refused on a socket"
        );
    }

    #[test]
    fn bodies_must_have_the_endpoints_type() {
        let post = Method::POST;
        let ok = |m: &Method, path, ct, body| check_body_type(m, path, ct, body).is_ok();
        assert!(ok(
            &post,
            "/api/deployments",
            Some("application/json"),
            true
        ));
        assert!(ok(
            &post,
            "/api/deployments",
            Some("Application/JSON; charset=utf-8"),
            true
        ));
        assert!(ok(&post, "/api/flow-runs/x/cancel", None, false));
        assert!(ok(&post, "/api/components", Some("application/wasm"), true));
        assert!(ok(
            &post,
            "/api/components",
            Some("application/octet-stream"),
            true
        ));
        assert!(ok(&Method::GET, "/api/flow-runs", Some("text/plain"), true));
        assert!(ok(
            &Method::DELETE,
            "/api/deployments/x",
            Some("application/json"),
            false
        ));
        assert!(!ok(&post, "/api/deployments", Some("text/plain"), true));
        assert!(!ok(
            &post,
            "/api/deployments",
            Some("text/plain;charset=UTF-8"),
            true
        ));
        assert!(!ok(&post, "/api/deployments", None, true));
        assert!(!ok(
            &post,
            "/api/deployments/x/runs",
            Some("application/x-www-form-urlencoded"),
            false
        ));
        assert!(!ok(
            &Method::PUT,
            "/api/secrets/x",
            Some("multipart/form-data; boundary=x"),
            true
        ));
        assert!(!ok(&post, "/api/components", Some("text/plain"), true));
        assert!(!ok(
            &post,
            "/api/components",
            Some("application/json"),
            true
        ));
        assert!(!ok(
            &post,
            "/api/components",
            Some("application/wasmx"),
            true
        ));
        let message =
            check_body_type(&post, "/api/deployments", Some("text/plain"), true).unwrap_err();
        assert!(
            message.contains("Content-Type: application/json"),
            "{message}"
        );
    }

    #[test]
    fn key_files_give_roles_and_refuse_short_keys() {
        let keys = parse_key_file(
            "# keys\n\n0123456789abcdef0123\nread-only: ro-0123456789abcdef\n  Operator : op-0123456789abcdef\nadmin:ad-0123456789abcdef\nk-1:0123456789abcdef\n",
        )
        .unwrap();
        let roles: Vec<Role> = keys.iter().map(|k| k.role).collect();
        assert_eq!(
            roles,
            [
                Role::Admin,
                Role::ReadOnly,
                Role::Operator,
                Role::Admin,
                Role::Admin
            ]
        );
        assert!(constant_time_eq(
            &keys[1].hash,
            &hash_key("ro-0123456789abcdef")
        ));
        assert_eq!(
            parse_key_file("  Operator : op-0123456789abcdef").unwrap()[0].role,
            Role::Operator
        );
        assert_eq!(
            parse_key_file("# a\nabcde\n").unwrap_err(),
            GuardError::KeyTooShort { line: 2, chars: 5 }
        );
        assert_eq!(
            parse_key_file("read-only: short").unwrap_err(),
            GuardError::KeyTooShort { line: 1, chars: 5 }
        );
        assert_eq!(
            parse_key_file("reader: 0123456789abcdef0123").unwrap_err(),
            GuardError::UnknownRole {
                line: 1,
                role: "reader".into()
            }
        );
        assert_eq!(
            parse_key_file("# only a comment\n").unwrap_err(),
            GuardError::NoKeys
        );
        let message = parse_key_file("abcde").unwrap_err().to_string();
        assert!(
            !message.contains("abcde"),
            "errors never show the key: {message}"
        );
    }

    #[test]
    fn roles_by_method_and_path() {
        assert_eq!(
            Role::needed_for(&Method::GET, "/api/secrets"),
            Role::ReadOnly
        );
        assert_eq!(Role::needed_for(&Method::HEAD, "/metrics"), Role::ReadOnly);
        assert_eq!(
            Role::needed_for(&Method::POST, "/api/deployments/x/runs"),
            Role::Operator
        );
        assert_eq!(
            Role::needed_for(&Method::PUT, "/api/variables/x"),
            Role::Operator
        );
        assert_eq!(
            Role::needed_for(&Method::PUT, "/api/secrets/x"),
            Role::Admin
        );
        assert_eq!(
            Role::needed_for(&Method::DELETE, "/api/secrets/x"),
            Role::Admin
        );
        assert!(Role::Operator.may_grant_secrets(&[]).is_ok());
        assert!(Role::Operator.may_grant_secrets(&["db".into()]).is_err());
        assert!(Role::Admin.may_grant_secrets(&["db".into()]).is_ok());
    }

    #[test]
    fn bearer_is_read_in_any_case() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            bearer(&headers).map(str::to_string)
        };
        assert_eq!(with("Bearer k1").as_deref(), Some("k1"));
        assert_eq!(with("bearer k1").as_deref(), Some("k1"));
        assert_eq!(with("BEARER   k1 ").as_deref(), Some("k1"));
        assert_eq!(with("Basic k1"), None);
        assert_eq!(with("Bearer "), None);
        assert_eq!(with("Bearerk1"), None);
    }

    #[test]
    fn only_loopback_may_go_without_keys() {
        let addr = |a: &str| a.parse::<SocketAddr>().unwrap();
        assert!(check_exposure(addr("127.0.0.1:4200"), false, false).is_ok());
        assert!(check_exposure(addr("[::1]:4200"), false, false).is_ok());
        assert!(check_exposure(addr("0.0.0.0:4200"), true, false).is_ok());
        assert!(check_exposure(addr("0.0.0.0:4200"), false, true).is_ok());
        let refused = check_exposure(addr("0.0.0.0:4200"), false, false).unwrap_err();
        assert!(refused.to_string().contains("--api-key-file"), "{refused}");
        assert!(
            refused.to_string().contains("--insecure-no-auth"),
            "{refused}"
        );
        assert!(check_exposure(addr("192.168.1.20:4200"), false, false).is_err());
    }
}
