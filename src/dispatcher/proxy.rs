//! Proxy hand-over: each request is relayed to the site's worker over a unix stream
//! that belongs to this one client connection, and the response is relayed back.
//!
//! The worker speaks plain HTTP/1.1 on that stream; the relay is framing-aware in both
//! directions so the client connection stays usable for the next request, whichever
//! tenant it goes to.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tracing::debug;

use super::workers::Workers;
use crate::config::{ClientLimits, Handover};
use crate::http::head::{BodyFraming, RequestHead};
use crate::http::io::relay_body;
use crate::ipc::{Handoff, Route};

/// How long the dispatcher waits for a worker's response head.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

pub struct Request<'a> {
    pub head: &'a RequestHead,
    pub route: &'a Route,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub limits: &'a ClientLimits,
}

struct Upstream {
    stream: UnixStream,
    buf: BytesMut,
}

/// The streams this client connection has opened to workers, one per site.
#[derive(Default)]
pub struct Upstreams {
    by_site: HashMap<String, Upstream>,
}

enum ResponseBody {
    Framed(BodyFraming),
    UntilClose,
}

struct ResponseHead {
    len: usize,
    status: u16,
    body: ResponseBody,
    close: bool,
}

impl Upstreams {
    /// Relay one request and its response. `Ok(true)`: the client connection may carry
    /// another request; `Err(status)`: answer the client with that status and close.
    pub async fn forward(
        &mut self,
        workers: &Workers,
        client: &mut TcpStream,
        client_buf: &mut BytesMut,
        req: Request<'_>,
    ) -> Result<bool, u16> {
        let site = req.route.site.clone();
        if !self.by_site.contains_key(&site) {
            let upstream = open(workers, &req).await?;
            self.by_site.insert(site.clone(), upstream);
        }
        let upstream = self.by_site.get_mut(&site).expect("inserted above");
        let result = relay(upstream, client, client_buf, &req).await;
        if !matches!(result, Ok(true)) {
            self.by_site.remove(&site);
        }
        result
    }
}

async fn open(workers: &Workers, req: &Request<'_>) -> Result<Upstream, u16> {
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().map_err(|_| 503u16)?;
    let handoff = Handoff {
        handover: Handover::Proxy,
        peer: req.peer,
        local: req.local,
        site: req.route.site.clone(),
        buffered: Vec::new(),
    };
    if let Err(reason) = workers
        .hand_over(&req.route.tenant, &handoff, &OwnedFd::from(theirs))
        .await
    {
        tracing::warn!(tenant = req.route.tenant, site = req.route.site, "{reason}");
        return Err(503);
    }
    mine.set_nonblocking(true).map_err(|_| 503u16)?;
    let stream = UnixStream::from_std(mine).map_err(|_| 503u16)?;
    Ok(Upstream {
        stream,
        buf: BytesMut::with_capacity(16 * 1024),
    })
}

async fn relay(
    up: &mut Upstream,
    client: &mut TcpStream,
    client_buf: &mut BytesMut,
    req: &Request<'_>,
) -> Result<bool, u16> {
    let head = req.head;
    let head_bytes = client_buf.split_to(head.head_len);
    if head.expect_continue && !matches!(head.body, BodyFraming::None) {
        // The worker would answer 100 itself, but only after reading our copy of the
        // head; answering here lets the client start sending at once.
        client
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| 400u16)?;
    }
    up.stream.write_all(&head_bytes).await.map_err(|_| 502u16)?;
    relay_body(
        client,
        client_buf,
        Some(&mut up.stream),
        &head.body,
        req.limits.header_timeout,
    )
    .await
    .map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            400u16
        } else {
            502
        }
    })?;

    let response = loop {
        let response = read_response_head(up, head.is_head()).await?;
        if (100..200).contains(&response.status) && response.status != 101 {
            // Interim responses were already covered by our own 100 Continue.
            up.buf.advance(response.len);
            continue;
        }
        break response;
    };
    // From here on the client may have seen part of the response: on failure the only
    // honest thing left is to close the connection.
    if client.write_all(&up.buf[..response.len]).await.is_err() {
        return Ok(false);
    }
    up.buf.advance(response.len);
    match response.body {
        ResponseBody::Framed(framing) => {
            if let Err(e) = relay_body(
                &mut up.stream,
                &mut up.buf,
                Some(client),
                &framing,
                UPSTREAM_TIMEOUT,
            )
            .await
            {
                debug!("relaying a response body: {e}");
                return Ok(false);
            }
        }
        ResponseBody::UntilClose => {
            let _ = client.write_all(&up.buf).await;
            up.buf.clear();
            let _ = tokio::io::copy(&mut up.stream, client).await;
            return Ok(false);
        }
    }
    Ok(head.keep_alive && !response.close)
}

async fn read_response_head(
    up: &mut Upstream,
    request_was_head: bool,
) -> Result<ResponseHead, u16> {
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    loop {
        if let Some(head) = parse_response_head(&up.buf, request_was_head)? {
            return Ok(head);
        }
        if up.buf.len() > MAX_RESPONSE_HEAD {
            return Err(502);
        }
        up.buf.reserve(16 * 1024);
        match tokio::time::timeout_at(deadline, up.stream.read_buf(&mut up.buf)).await {
            Err(_) => return Err(504),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(502),
            Ok(Ok(_)) => {}
        }
    }
}

/// Parse a worker's response head. Strict: anything odd is the worker's fault (502).
fn parse_response_head(buf: &[u8], request_was_head: bool) -> Result<Option<ResponseHead>, u16> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(502),
    };
    let status = response.code.ok_or(502u16)?;
    let mut length = None;
    let mut chunked = false;
    let mut close = false;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(h.value).map_err(|_| 502u16)?.trim();
            let n: u64 = value.parse().map_err(|_| 502u16)?;
            if length.is_some_and(|l| l != n) {
                return Err(502);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    let no_body =
        request_was_head || (100..200).contains(&status) || status == 204 || status == 304;
    let body = match (no_body, chunked, length) {
        (true, _, _) => ResponseBody::Framed(BodyFraming::None),
        (false, true, Some(_)) => return Err(502),
        (false, true, None) => ResponseBody::Framed(BodyFraming::Chunked),
        (false, false, Some(n)) => ResponseBody::Framed(BodyFraming::Length(n)),
        (false, false, None) => ResponseBody::UntilClose,
    };
    Ok(Some(ResponseHead {
        len,
        status,
        body,
        close,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_framing() {
        let r = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false)
            .unwrap()
            .unwrap();
        assert!(matches!(
            r.body,
            ResponseBody::Framed(BodyFraming::Length(5))
        ));
        assert_eq!(r.len, 38);
        let r = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert!(matches!(r.body, ResponseBody::Framed(BodyFraming::None)));
        let r = parse_response_head(
            b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(r.close && matches!(r.body, ResponseBody::Framed(BodyFraming::None)));
        assert!(
            parse_response_head(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                false
            )
            .is_err()
        );
        assert!(
            parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Le", false)
                .unwrap()
                .is_none()
        );
    }
}
