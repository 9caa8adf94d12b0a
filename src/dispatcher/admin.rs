//! The admin listener (`server.admin_listen`, loopback only): `/metrics` for Prometheus
//! and `/health` for load balancers. The master renders the metrics into a file; the
//! dispatcher only serves it, so the root master never parses a request.
//!
//! Loopback is not a boundary on a shared host: every tenant's code can connect to it.
//! `/metrics` (every tenant's name, sites and usage) is served only to a request with
//! `Authorization: Bearer <token>` (the master's `admin_token_file`); `/health` tells
//! nothing about tenants and stays open.

use std::path::Path;

use bytes::BytesMut;
use tokio::net::TcpStream;

use crate::config::ClientLimits;
use crate::http::head::Method;
use crate::http::io::{HeadRead, read_head, respond_and_close};
use crate::http::{self, SERVER_NAME};

/// Answer one request and close: scrapers and health checks open a connection each.
pub async fn serve(
    mut stream: TcpStream,
    limits: ClientLimits,
    metrics_file: &Path,
    token: Option<&str>,
) {
    let mut buf = BytesMut::new();
    let head = match read_head(&mut stream, &mut buf, &limits, limits.header_timeout).await {
        HeadRead::Head(head) => head,
        HeadRead::Invalid(e) => {
            respond_and_close(&mut stream, &http::error_response(e.status(), false, false)).await;
            return;
        }
        _ => return,
    };
    let head_only = head.is_head();
    if !matches!(head.method, Method::Get | Method::Head) {
        respond_and_close(&mut stream, &http::error_response(405, false, head_only)).await;
        return;
    }
    let (content_type, body) = match head.path.as_str() {
        "/health" => ("text/plain", b"ok\n".to_vec()),
        "/metrics" if !authorized(head.header("authorization"), token) => {
            let response = http::error_response_with(
                401,
                false,
                head_only,
                "WWW-Authenticate: Bearer realm=\"condo metrics\"\r\n",
            );
            respond_and_close(&mut stream, &response).await;
            return;
        }
        "/metrics" => match tokio::fs::read(metrics_file).await {
            Ok(text) => ("text/plain; version=0.0.4", text),
            Err(e) => {
                tracing::warn!("reading {}: {e}", metrics_file.display());
                respond_and_close(&mut stream, &http::error_response(503, false, head_only)).await;
                return;
            }
        },
        _ => {
            respond_and_close(&mut stream, &http::error_response(404, false, head_only)).await;
            return;
        }
    };
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nServer: {SERVER_NAME}\r\nDate: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        http::http_date(),
        body.len()
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(&body);
    }
    respond_and_close(&mut stream, &response).await;
}

/// `Authorization: Bearer <token>` with the right token, compared in constant time.
/// Without a token configured, no one is.
fn authorized(header: Option<&[u8]>, token: Option<&str>) -> bool {
    let (Some(header), Some(token)) = (header, token) else {
        return false;
    };
    let Some(sent) = header
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
        .map(|_| header[7..].trim_ascii())
    else {
        return false;
    };
    let token = token.as_bytes();
    sent.len() == token.len() && sent.iter().zip(token).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::authorized;

    #[test]
    fn only_the_bearer_token_opens_metrics() {
        let t = Some("0123456789abcdef0123");
        assert!(authorized(Some(b"Bearer 0123456789abcdef0123"), t));
        assert!(authorized(Some(b"bearer  0123456789abcdef0123 "), t));
        assert!(!authorized(Some(b"Bearer 0123456789abcdef0124"), t));
        assert!(!authorized(Some(b"Bearer 0123456789abcdef012"), t));
        assert!(!authorized(Some(b"Basic 0123456789abcdef0123"), t));
        assert!(!authorized(Some(b"Bearer"), t));
        assert!(!authorized(None, t));
        assert!(!authorized(Some(b"Bearer "), None));
    }
}
