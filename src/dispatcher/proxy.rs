//! Proxy hand-over: each request is relayed to the site's worker over a unix stream
//! that belongs to this one client connection, and the response is relayed back.
//!
//! The worker speaks plain HTTP/1.1 on that stream; the relay is framing-aware in both
//! directions so the client connection stays usable for the next request, whichever
//! tenant it goes to.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::http::io::SendTimeout;

/// The client connection as the relay writes to it: with the send timeout.
pub type Client = SendTimeout<super::client::ClientConn>;
use tracing::debug;

use super::workers::Workers;
use crate::config::{ClientLimits, Handover};
use crate::http::head::{BodyFraming, RequestHead};
use crate::http::io::{client_fault, relay_body};
use crate::http::response::{ResponseBody, ResponseHead, parse_response_head};
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
    /// The client connection is HTTPS.
    pub secure: bool,
}

struct Upstream {
    stream: UnixStream,
    buf: BytesMut,
    alive: crate::http::h2::Liveness,
}

/// The streams this client connection has opened to workers, one per site.
#[derive(Default)]
pub struct Upstreams {
    by_site: HashMap<String, Upstream>,
}

impl Upstreams {
    /// Relay one request and its response. `Ok(true)`: the client connection may carry
    /// another request; `Err(status)`: answer the client with that status and close.
    pub async fn forward(
        &mut self,
        workers: &Arc<Workers>,
        client: &mut Client,
        client_buf: &mut BytesMut,
        req: Request<'_>,
    ) -> Result<bool, u16> {
        let site = req.route.site.clone();
        // A worker that left (retired, or crashed) since the last request closed its end
        // between requests: open a new stream, which reaches the tenant's current worker.
        if self
            .by_site
            .get(&site)
            .is_some_and(|up| !up.buf.is_empty() || !(up.alive)() || upstream_closed(&up.stream))
        {
            self.by_site.remove(&site);
        }
        let reused = self.by_site.contains_key(&site);
        if !reused {
            let upstream = open(workers, &req).await?;
            self.by_site.insert(site.clone(), upstream);
        }
        // A kept relay can close (its worker retiring or dying) just as the next
        // request goes out on it. A request without a body whose method is safe to
        // repeat is then sent once more, on a fresh relay; nothing reached the client
        // yet (the relay answers 502 only before the response head).
        let retry_head =
            (reused && req.head.is_retriable()).then(|| client_buf[..req.head.head_len].to_vec());
        let upstream = self.by_site.get_mut(&site).expect("inserted above");
        let mut result = relay(upstream, client, client_buf, &req).await;
        if let (Err(502), Some(head)) = (result, retry_head) {
            self.by_site.remove(&site);
            let mut fresh = open(workers, &req).await?;
            let rest = client_buf.split();
            client_buf.extend_from_slice(&head);
            client_buf.unsplit(rest);
            result = relay(&mut fresh, client, client_buf, &req).await;
            self.by_site.insert(site.clone(), fresh);
        }
        if !matches!(result, Ok(true)) {
            self.by_site.remove(&site);
        }
        result
    }
}

/// Between requests a worker sends nothing: readable means closed (or misbehaving).
fn upstream_closed(stream: &UnixStream) -> bool {
    let mut probe = [0u8; 1];
    !matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

async fn open(workers: &Arc<Workers>, req: &Request<'_>) -> Result<Upstream, u16> {
    let relay = open_relay(workers, req.route, req.peer, req.local, req.secure).await?;
    Ok(Upstream {
        stream: relay.stream,
        buf: BytesMut::with_capacity(16 * 1024),
        alive: relay.alive,
    })
}

/// A fresh stream to the worker of `route`'s tenant, which serves it as one client
/// connection of that site (HTTP/1.1). `Err`: the status to answer instead.
pub async fn open_relay(
    workers: &Arc<Workers>,
    route: &Route,
    peer: SocketAddr,
    local: SocketAddr,
    secure: bool,
) -> Result<crate::http::h2::Relay, u16> {
    let slot = workers.relay_slot(&route.tenant).ok_or(503u16)?;
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().map_err(|_| 503u16)?;
    let handoff = Handoff {
        handover: Handover::Proxy,
        peer,
        local,
        site: route.site.clone(),
        buffered: Vec::new(),
        tls_handshake: false,
        secure,
        seal: [0; 32],
    };
    // (A failure is logged by `hand_over`, rate-limited per tenant.)
    let alive = workers
        .hand_over(&route.tenant, &handoff, &OwnedFd::from(theirs))
        .await
        .map_err(|_| 503u16)?;
    mine.set_nonblocking(true).map_err(|_| 503u16)?;
    let stream = UnixStream::from_std(mine).map_err(|_| 503u16)?;
    // Whoever keeps the relay keeps its liveness check (a kept HTTP/1 upstream, an h2
    // connection's idle relays), so the check carries the slot: it is counted exactly
    // as long as the relay can still be used.
    let alive: crate::http::h2::Liveness = std::sync::Arc::new(move || {
        let _counted = &slot;
        alive()
    });
    Ok(crate::http::h2::Relay { stream, alive })
}

async fn relay(
    up: &mut Upstream,
    client: &mut Client,
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
    // The body goes up while the worker's answer is awaited: a worker may answer before
    // it read the body (a static file, a 413 for a chunk over the limit, a script that
    // does not read its input), and that answer is the client's at once. A body that
    // stops arriving is the client's fault, answered as such (408 after body_timeout),
    // never a 502: the backend did nothing wrong.
    let (response, body_left) = {
        let (mut up_read, mut up_write) = up.stream.split();
        let body = relay_body(
            client,
            client_buf,
            Some(&mut up_write),
            &head.body,
            req.limits.body_timeout,
        );
        let answer = read_final_head(&mut up_read, &mut up.buf, head.is_head());
        tokio::pin!(body, answer);
        let mut body_left = !matches!(head.body, BodyFraming::None);
        let mut relaying = body_left;
        // The worker's time to answer counts from the end of the body.
        let mut deadline = (!relaying).then(|| tokio::time::Instant::now() + UPSTREAM_TIMEOUT);
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            tokio::select! {
                relayed = &mut body, if relaying => {
                    relaying = false;
                    if let Err(e) = relayed {
                        if let Some(status) = client_fault(&e) {
                            debug!("request body: {e}");
                            return Err(status);
                        }
                        // The worker stopped reading: it may have answered (below); if
                        // it did not, reading its answer fails with 502. The rest of the
                        // body stays unread, so the connection ends after the answer.
                        debug!("relaying a request body to the worker: {e}");
                    } else {
                        body_left = false;
                    }
                    deadline = Some(tokio::time::Instant::now() + UPSTREAM_TIMEOUT);
                }
                answer = &mut answer => break (answer?, body_left),
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)) => return Err(504),
            }
        }
    };
    // The rest of the body is still in the client connection: it cannot carry another
    // request, so it ends after this response.
    let body_unread = body_left;
    if response.status == 101 && head.header("upgrade").is_none() {
        // Switching protocols the client never asked for would turn its connection
        // into a tunnel to this tenant for every later request.
        return Err(502);
    }
    // From here on the client may have seen part of the response: on failure the only
    // honest thing left is to close the connection.
    if let ResponseBody::Framed(BodyFraming::Length(n)) = response.body
        && response.status != 101
        && let Some(whole) = response.len.checked_add(n as usize)
        && whole <= up.buf.len()
    {
        // Head and body already here (a small file): one write, so one TLS record and
        // one send instead of two.
        let sent = client.write_all(&up.buf[..whole]).await;
        up.buf.advance(whole);
        if body_unread {
            // The client may still be sending: a plain close would answer its bytes
            // with a reset that can destroy the response in flight.
            crate::http::io::close_gracefully(client).await;
            return Ok(false);
        }
        return Ok(sent.is_ok() && head.keep_alive && !response.close);
    }
    if client.write_all(&up.buf[..response.len]).await.is_err() {
        return Ok(false);
    }
    up.buf.advance(response.len);
    if response.status == 101 {
        // The worker switched protocols (a tenant app's WebSocket): from now on the
        // bytes are opaque, both ways, until either side closes. Bytes already read
        // past the heads go first.
        let early_up = std::mem::take(&mut up.buf);
        let early_client = std::mem::take(client_buf);
        if client.write_all(&early_up).await.is_err()
            || up.stream.write_all(&early_client).await.is_err()
        {
            return Ok(false);
        }
        let _ = tokio::io::copy_bidirectional(client, &mut up.stream).await;
        return Ok(false);
    }
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
    if body_unread {
        crate::http::io::close_gracefully(client).await;
        return Ok(false);
    }
    Ok(head.keep_alive && !response.close)
}

/// The worker's final response head (interim 1xx other than 101 are skipped: the
/// client got the dispatcher's own 100 Continue). No deadline here: the caller's
/// starts when the request body is through.
async fn read_final_head(
    stream: &mut tokio::net::unix::ReadHalf<'_>,
    buf: &mut BytesMut,
    request_was_head: bool,
) -> Result<ResponseHead, u16> {
    loop {
        if let Some(head) = parse_response_head(buf, request_was_head)? {
            if (100..200).contains(&head.status) && head.status != 101 {
                buf.advance(head.len);
                continue;
            }
            return Ok(head);
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(502);
        }
        buf.reserve(16 * 1024);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(502),
            Ok(_) => {}
        }
    }
}
