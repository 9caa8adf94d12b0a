//! The admin listener (`server.admin_listen`, loopback only): `/metrics` for Prometheus
//! and `/health` for load balancers. The master renders the metrics into a file; the
//! dispatcher only serves it, so the root master never parses a request.

use std::path::Path;

use bytes::BytesMut;
use tokio::net::TcpStream;

use crate::config::ClientLimits;
use crate::http::head::Method;
use crate::http::io::{HeadRead, read_head, respond_and_close};
use crate::http::{self, SERVER_NAME};

/// Answer one request and close: scrapers and health checks open a connection each.
pub async fn serve(mut stream: TcpStream, limits: ClientLimits, metrics_file: &Path) {
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
