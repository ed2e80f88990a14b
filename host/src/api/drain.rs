//! Refusals that reach the client: the unread rest of a request body is read
//! and dropped before the server answers.
//!
//! A request refused early (too large by its `Content-Length`, no key, a
//! foreign `Host`, a role that may not) leaves its body unread. The server
//! then cannot read the connection's next request, so it closes it: with
//! bytes still unread the kernel sends a reset and a client still writing
//! its upload loses the reply (it sees "connection reset" instead of the 413
//! that says what the limit is), and a client that pooled the connection
//! sends its next request into a closed socket. So every body goes through
//! a handle this layer keeps, and what the handlers left of it is read (not
//! kept) up to [`DRAIN_MAX_BYTES`] and [`DRAIN_TIME`] before the reply goes
//! out. Past either bound the reply says `Connection: close`.

use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// The most of a refused body the server reads and drops: twice the largest
/// upload it accepts, so a client that overshoots a limit hears why.
pub const DRAIN_MAX_BYTES: u64 = 2 * super::MAX_REPORT_BYTES as u64;

/// The longest the server spends reading a refused body.
pub const DRAIN_TIME: Duration = Duration::from_secs(10);

/// The environment variable that lowers [`DRAIN_MAX_BYTES`] for tests, so
/// that going past the bound does not take sending 256 MiB. Nothing else
/// should set it.
pub const TEST_ONLY_DRAIN_MAX_BYTES_ENV: &str = "WEIR_TEST_ONLY_DRAIN_MAX_BYTES";

/// [`DRAIN_MAX_BYTES`], or the test-only bound; read once.
fn drain_max_bytes() -> u64 {
    static BOUND: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BOUND.get_or_init(|| {
        std::env::var(TEST_ONLY_DRAIN_MAX_BYTES_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DRAIN_MAX_BYTES)
    })
}

/// The layer: see the module's comment.
pub(super) async fn drain_unread_bodies(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = request.headers().contains_key(header::TRANSFER_ENCODING);
    if !chunked && declared.is_none_or(|n| n == 0) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let rest = Arc::new(Mutex::new(Some(body.into_data_stream())));
    let request = Request::from_parts(parts, Body::from_stream(Shared(rest.clone())));
    let mut response = next.run(request).await;
    let left = rest.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(left) = left
        && !drain(left).await
    {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Reads and drops what is left; true when the body ended within bounds.
async fn drain(mut left: BodyDataStream) -> bool {
    let reading = async {
        let mut read = 0u64;
        while let Some(chunk) = left.next().await {
            let Ok(chunk) = chunk else { return false };
            read += chunk.len() as u64;
            if read > drain_max_bytes() {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIME, reading)
        .await
        .unwrap_or(false)
}

/// The body as the handlers see it, while this layer keeps the stream.
struct Shared(Arc<Mutex<Option<BodyDataStream>>>);

impl Stream for Shared {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut stream = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match stream.as_mut() {
            Some(stream) => stream.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }
}
