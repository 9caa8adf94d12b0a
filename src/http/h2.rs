//! HTTP/2 in front, HTTP/1.1 behind. A client's h2 connection (TLS with ALPN `h2`, or
//! h2c with prior knowledge) is served with hyper's h2; each stream becomes one
//! HTTP/1.1 request on a fresh stream to the code that already serves HTTP/1.1 — a
//! tenant's worker over the proxy relay (in the dispatcher), or the worker's own
//! connection handler over a socketpair (for a site's own certificate). Every handler
//! (static, CGI, FastCGI, apps) thus speaks h2 without knowing it.
//!
//! Flood limits are set explicitly (see [`serve`]): rapid reset (CVE-2023-44487) is
//! bounded by `max_pending_accept_reset_streams` and `max_local_error_reset_streams`;
//! CONTINUATION floods and huge header lists by `max_header_list_size`; SETTINGS and
//! PING floods by the h2 crate's own caps on queued frames.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;
use tracing::debug;

use crate::config::ClientLimits;
use crate::http::SERVER_NAME;

/// A response body: hyper's own, or one condo makes (a static file read in chunks).
pub type Body = BoxBody<Bytes, BodyError>;
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The connection preface of h2c with prior knowledge (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Streams one client may have open at once.
const MAX_STREAMS: u32 = 128;

/// Serve one h2 connection, answering each request with `backend`.
pub async fn serve<IO, F, Fut>(io: IO, limits: &ClientLimits, backend: F)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let backend = backend.clone();
        async move { Ok::<_, Infallible>(backend(req).await) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .max_concurrent_streams(MAX_STREAMS)
        .max_pending_accept_reset_streams(Some(32))
        .max_local_error_reset_streams(Some(256))
        .max_header_list_size(limits.max_head_bytes as u32)
        .keep_alive_interval(Some(limits.keepalive_timeout / 2))
        .keep_alive_timeout(Duration::from_secs(20))
        .timer(hyper_util::rt::TokioTimer::new());
    if let Err(e) = builder.serve_connection(TokioIo::new(io), service).await {
        debug!("h2 connection ended: {e}");
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Incoming>;

/// Whether a relay's worker still takes requests (false once it is retiring): a kept
/// relay to a retiring worker is dropped instead of reused, so the worker sees it end
/// and can leave, and no request races its goodbye.
pub type Liveness = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

/// A stream to a worker and whether that worker still takes requests.
pub struct Relay {
    pub stream: UnixStream,
    pub alive: Liveness,
}

/// HTTP/1.1 connections to the backend, kept per site for the life of one h2
/// connection: an h2 stream reuses an idle one instead of opening a new stream to the
/// worker (and a new task there) for every request.
#[derive(Default)]
pub struct Relays {
    idle: std::sync::Mutex<std::collections::HashMap<String, Vec<(Sender, Liveness)>>>,
}

/// Idle backend connections kept per site and h2 connection.
const MAX_IDLE_RELAYS: usize = 32;

impl Relays {
    /// Send `req` as HTTP/1.1 to `site`'s backend, over a kept connection or one that
    /// `open` makes, and return its response.
    pub async fn send<F, Fut>(
        &self,
        site: &str,
        mut req: Request<Incoming>,
        host: &str,
        open: F,
    ) -> Response<Body>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Relay, StatusCode>>,
    {
        let kept = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let list = idle.entry(site.to_string()).or_default();
            list.retain(|(s, alive)| !s.is_closed() && alive());
            list.iter()
                .position(|(s, _)| s.is_ready())
                .map(|i| list.swap_remove(i))
        };
        // HTTP/1.1 wants origin-form and a Host header; h2 carries :authority instead.
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        *req.uri_mut() = path.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
        *req.version_mut() = http::Version::HTTP_11;
        if let Ok(value) = HeaderValue::from_str(host) {
            req.headers_mut().insert(header::HOST, value);
        }
        let mut open = Some(open);
        let reused = kept.is_some();
        let (mut sender, mut alive) = match kept {
            Some(s) => s,
            None => match new_sender(open.take()).await {
                Ok(s) => s,
                Err(status) => return error(status),
            },
        };
        let mut response = sender.try_send_request(req).await;
        // A kept relay can close (its worker retiring or dying) just before the
        // request goes out: hyper hands back a request it did not send, and it goes
        // out once more on a fresh relay, to the tenant's current worker.
        if reused
            && let Err(failed) = &mut response
            && let Some(unsent) = failed.take_message()
        {
            (sender, alive) = match new_sender(open.take()).await {
                Ok(s) => s,
                Err(status) => return error(status),
            };
            response = sender.try_send_request(unsent).await;
        }
        // Back to the pool: it is ready again once this response's body has been read.
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let list = idle.entry(site.to_string()).or_default();
            if list.len() < MAX_IDLE_RELAYS && !sender.is_closed() && alive() {
                list.push((sender, alive));
            }
        }
        match response {
            Ok(response) => response.map(|b| b.map_err(BodyError::from).boxed()),
            Err(e) => {
                debug!("h2 → http/1.1 request: {}", e.error());
                error(StatusCode::BAD_GATEWAY)
            }
        }
    }
}

/// A new HTTP/1.1 connection to a worker over the stream `open` makes.
async fn new_sender<F, Fut>(open: Option<F>) -> Result<(Sender, Liveness), StatusCode>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Relay, StatusCode>>,
{
    let open = open.ok_or(StatusCode::BAD_GATEWAY)?;
    let relay = open().await?;
    match hyper::client::conn::http1::handshake(TokioIo::new(relay.stream)).await {
        Ok((sender, conn)) => {
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!("h2 → http/1.1 connection: {e}");
                }
            });
            Ok((sender, relay.alive))
        }
        Err(e) => {
            debug!("h2 → http/1.1: {e}");
            Err(StatusCode::BAD_GATEWAY)
        }
    }
}

/// The Host of an h2 request: :authority, else a Host header; lowercased, without
/// port or trailing dot, as the HTTP/1.1 parser gives it.
pub fn host_of(req: &Request<Incoming>) -> Option<String> {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.rsplit_once(':').map_or(h, |(host, _)| host).to_string())
        })?;
    Some(crate::config::normalize_host(&raw))
}

/// A small response condo makes itself.
pub fn error(status: StatusCode) -> Response<Body> {
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>{code}</title></head><body><h1>{code}</h1><hr><p>condo</p></body></html>\n",
        code = status
    );
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    headers.insert(header::SERVER, HeaderValue::from_static(SERVER_NAME));
    response
}
