//! Outgoing HTTP for guests (`wasi:http/outgoing-handler`), behind the run's
//! allow-list.
//!
//! Every request a guest sends passes [`HttpGate::send_request`]: a host the
//! run's `capabilities.http` does not name, at the port it names, is refused
//! with `HTTP-request-denied` before any connection is made, and the run's
//! log says which host and how to grant it. Nothing is resolved to decide:
//! a grant of `127.0.0.1:8080` is that text, not whatever `localhost` or
//! `127.1` reach. Redirects are not followed (wasi:http hands the 3xx to the
//! guest, whose next request is checked like any other).
//!
//! A request lives inside its instance: the tasks that drive it belong to
//! the instance's resource table, which is dropped when the call ends, so a
//! server that never answers is cut off at the task's deadline with it.
//! Response bodies are capped at [`MAX_RESPONSE_BODY_BYTES`].
//!
//! The state is made when a guest first touches wasi:http, so the many
//! instances that never do pay nothing for it.

use super::GuestHost;
use crate::model::LogLevel;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::future::Future;
use std::sync::Arc;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpHooks,
};

/// The largest response body a guest may read (64 MiB): past it the body
/// stream fails with `HTTP-response-body-size`. The guest's own memory limit
/// bounds what it keeps; this bounds what the host reads for it.
pub const MAX_RESPONSE_BODY_BYTES: usize = 64 << 20;

/// The wasi:http state of one instance.
pub(super) struct HttpState {
    pub ctx: WasiHttpCtx,
    pub gate: HttpGate,
}

impl HttpState {
    pub fn new(host: Arc<dyn GuestHost>) -> Self {
        Self {
            ctx: WasiHttpCtx::new(),
            gate: HttpGate { host },
        }
    }
}

/// Sends what the run's allow-list grants and refuses the rest.
pub(super) struct HttpGate {
    /// Whose capabilities decide, and whose log hears of a refusal.
    host: Arc<dyn GuestHost>,
}

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
>;

impl WasiHttpHooks for HttpGate {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_done: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        if let Err(refusal) = self.check(request.uri()) {
            tracing::info!("{refusal}");
            self.host.log(LogLevel::Warn, &refusal);
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        Box::new(async move {
            let (response, connection) =
                wasmtime_wasi_http::default_send_request(request, options).await?;
            let response = response.map(|body| {
                Limited::new(body, MAX_RESPONSE_BODY_BYTES)
                    .map_err(|error| match error.downcast::<HttpError>() {
                        Ok(error) => *error,
                        Err(error) if error.is::<LengthLimitError>() => {
                            HttpError::HttpResponseBodySize(Some(MAX_RESPONSE_BODY_BYTES as u64))
                        }
                        Err(error) => HttpError::InternalError(Some(error.to_string())),
                    })
                    .boxed_unsync()
            });
            Ok((
                response,
                Box::new(connection) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

impl HttpGate {
    /// `Ok` when the run's allow-list names the request's host at its port;
    /// else the log line that says what to grant.
    fn check(&self, uri: &http::Uri) -> Result<(), String> {
        let default_port = match uri.scheme_str() {
            Some("http") => 80,
            Some("https") => 443,
            other => {
                return Err(format!(
                    "HTTP request to {uri} denied: the scheme {} is not http or https",
                    other.unwrap_or("(none)")
                ));
            }
        };
        let Some(authority) = uri.authority() else {
            return Err(format!("HTTP request to {uri} denied: it names no host"));
        };
        // `user@host` would make the text checked differ from where a
        // client connects; no grant is written that way, so none matches.
        if authority.as_str().contains('@') {
            return Err(format!(
                "HTTP request to {authority} denied: a URL with user info (`user@host`) is never granted"
            ));
        }
        let port = match (authority.port(), authority.port_u16()) {
            (None, _) => default_port,
            (Some(_), Some(port)) => port,
            (Some(port), None) => {
                return Err(format!(
                    "HTTP request to {authority} denied: '{port}' is not a port"
                ));
            }
        };
        let host = authority.host();
        if self
            .host
            .capabilities()
            .http_hosts()
            .any(|granted| granted.grants(host, port, default_port))
        {
            return Ok(());
        }
        let grant = if port == default_port {
            host.to_ascii_lowercase()
        } else {
            format!("{}:{port}", host.to_ascii_lowercase())
        };
        Err(format!(
            "HTTP request to {host}:{port} denied: it is not in this run's allow-list; add \"{grant}\" to the deployment's capabilities.http (and start its host with --allow-http {grant})"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::capabilities::Capabilities;

    struct Granting(Capabilities);

    impl GuestHost for Granting {
        fn capabilities(&self) -> &Capabilities {
            &self.0
        }
    }

    fn gate(hosts: &[&str]) -> HttpGate {
        HttpGate {
            host: Arc::new(Granting(Capabilities {
                http: hosts.iter().map(|h| h.to_string()).collect(),
                ..Capabilities::default()
            })),
        }
    }

    fn check(gate: &HttpGate, url: &str) -> Result<(), String> {
        gate.check(&url.parse().unwrap())
    }

    #[test]
    fn only_the_granted_host_at_the_granted_port_passes() {
        let gate = gate(&["127.0.0.1:8080", "api.example.com"]);
        assert!(check(&gate, "http://127.0.0.1:8080/x").is_ok());
        assert!(check(&gate, "https://API.example.com/x").is_ok());
        assert!(check(&gate, "http://api.example.com/x").is_ok());
        for denied in [
            "http://127.0.0.1:8081/",
            "http://127.0.0.1/",
            "http://localhost:8080/",
            "http://127.1:8080/",
            "http://[::1]:8080/",
            "http://user@127.0.0.1:8080/",
            "https://api.example.com:8443/",
            "https://api.example.com.evil.net/",
            "ftp://api.example.com/",
        ] {
            let refusal = check(&gate, denied).unwrap_err();
            assert!(refusal.contains("denied"), "{denied}: {refusal}");
        }
        let refusal = check(&gate, "http://Evil.net:81/").unwrap_err();
        assert!(
            refusal.contains("Evil.net:81") && refusal.contains("capabilities.http"),
            "{refusal}"
        );
        assert!(refusal.contains("--allow-http evil.net:81"), "{refusal}");
    }

    #[test]
    fn nothing_granted_denies_everything() {
        let gate = gate(&[]);
        assert!(check(&gate, "http://127.0.0.1:8080/").is_err());
        assert!(check(&gate, "https://api.example.com/").is_err());
    }
}
