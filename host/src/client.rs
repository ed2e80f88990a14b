//! A blocking HTTP client for the Weir API: the only module that names ureq.
//!
//! It moves bytes and statuses; the CLI decides what they mean. It speaks
//! `http://` and `https://` (rustls, Mozilla's roots built in, or the CA
//! certificates of a PEM file: the `api.ca_file` setting).

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the Weir API at {url}: {message}. Is `host server start` running there? (api.url comes from {source_hint})"
    )]
    Unreachable {
        url: String,
        message: String,
        source_hint: String,
    },
    #[error("bad API URL '{0}': expected http://HOST:PORT or https://HOST[:PORT]")]
    BadUrl(String),
    #[error(
        "CA file {path}: {message}; give a PEM file with the CA certificate(s) that signed the server's"
    )]
    CaFile { path: String, message: String },
}

/// An agent that reports every status as a reply, trusting `roots` (or
/// Mozilla's) for https://.
fn agent(roots: Option<ureq::tls::RootCerts>) -> ureq::Agent {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(roots) = roots {
        tls = tls.root_certs(roots);
    }
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_global(Some(Duration::from_secs(300)))
        .tls_config(tls.build())
        .build()
        .into()
}

/// One API server.
pub struct Client {
    base: String,
    key: Option<String>,
    agent: ureq::Agent,
    /// Where the URL came from, for error messages.
    source_hint: String,
}

impl Client {
    pub fn new(
        url: &str,
        key: Option<String>,
        source_hint: impl Into<String>,
    ) -> Result<Client, ClientError> {
        let base = url.trim_end_matches('/').to_string();
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"))
            .unwrap_or_default();
        if rest.is_empty() {
            return Err(ClientError::BadUrl(url.to_string()));
        }
        Ok(Client {
            base,
            key,
            agent: agent(None),
            source_hint: source_hint.into(),
        })
    }

    /// Trusts only the CA certificates in the PEM file `path` for https://
    /// (instead of Mozilla's roots): a server with its own CA.
    pub fn with_ca_file(mut self, path: &std::path::Path) -> Result<Client, ClientError> {
        let ca_error = |message: String| ClientError::CaFile {
            path: path.display().to_string(),
            message,
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            match item.map_err(|e| ca_error(e.to_string()))? {
                ureq::tls::PemItem::Certificate(cert) => certs.push(cert),
                _ => continue,
            }
        }
        if certs.is_empty() {
            return Err(ca_error("no certificate in it".into()));
        }
        self.agent = agent(Some(ureq::tls::RootCerts::new_with_certs(&certs)));
        Ok(self)
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request; returns the status and the body, whatever the status.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |message: String| ClientError::Unreachable {
            url: self.base.clone(),
            message,
            source_hint: self.source_hint.clone(),
        };
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("content-type", content_type);
        if let Some(key) = &self.key {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        let request = builder
            .body(body.unwrap_or_default())
            .map_err(|e| ClientError::BadUrl(format!("{url} ({e})")))?;
        // A pooled connection the server has since closed fails at once; a
        // GET is safe to send again on a fresh one.
        let retry = (method == "GET").then(|| request.clone());
        let mut response = match (self.agent.run(request), retry) {
            (Ok(r), _) => r,
            (Err(ureq::Error::Io(_)), Some(again)) => self
                .agent
                .run(again)
                .map_err(|e| unreachable(e.to_string()))?,
            (Err(e), _) => return Err(unreachable(e.to_string())),
        };
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_vec()
            .map_err(|e| unreachable(e.to_string()))?;
        Ok((status, bytes))
    }
}

/// Why a webhook could not be delivered (the receiver's status is not an
/// error here: the caller judges it).
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("bad request to {url}: {detail}")]
    BadRequest { url: String, detail: String },
    #[error("{0}")]
    Send(String),
}

/// POSTs an automation's webhook body as JSON; the status it answered, or why
/// it could not be sent. Blocks for at most `timeout`. Only `http://` (no
/// TLS is built in: reach an `https://` receiver through a local proxy).
pub fn post_webhook(
    url: &str,
    headers: &[(String, String)],
    body: &str,
    timeout: Duration,
) -> Result<u16, WebhookError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let mut builder = ureq::http::Request::builder()
        .method("POST")
        .uri(url)
        .header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let request = builder
        .body(body.as_bytes().to_vec())
        .map_err(|e| WebhookError::BadRequest {
            url: url.to_string(),
            detail: e.to_string(),
        })?;
    let response = agent
        .run(request)
        .map_err(|e| WebhookError::Send(e.to_string()))?;
    Ok(response.status().as_u16())
}
