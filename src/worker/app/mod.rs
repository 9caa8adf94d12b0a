//! `handler = "app"`: the tenant's own long-running HTTP server (a Python, Node or
//! Go app), run by the tenant's worker as the tenant ([`process`]) and reached over
//! the unix socket condo made for it. Requests are relayed as HTTP/1.1, one app
//! connection per request; a WebSocket upgrade becomes a byte tunnel.
//!
//! The client's `X-Forwarded-*` and `Forwarded` headers are removed and condo's own
//! put in their place: the app can trust them, because only condo can connect.

pub mod process;

use std::io;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

use super::cgi::{CgiCall, copy_chunked, copy_until_eof};
use super::response::{Framing, response_head};
use super::stream::Stream;
use crate::http::head::{BodyFraming, RequestHead, Version};
use crate::http::io::{relay_body, relay_body_max};
use crate::http::response::{ResponseBody, parse_response_head, response_fields};
use process::App;

const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A site's apps, one per app route (same index as routes).
pub fn apps_for(site: &crate::config::Site) -> Vec<Option<Arc<App>>> {
    site.routes
        .iter()
        .map(|r| r.app.clone().map(App::new))
        .collect()
}

/// What went wrong before any byte of the response went out.
struct Refusal {
    status: u16,
    reason: String,
}

fn refuse(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
    }
}

/// Answer one request from the app: `(status, body bytes sent, keep-alive)`. `Err`:
/// the connection must end (the client went away, or part of a response is out).
pub async fn serve(
    call: CgiCall<'_>,
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> io::Result<(u16, u64, bool)> {
    match run(&call, stream, buf).await {
        Ok(done) => Ok(done),
        Err(Err(e)) => Err(e),
        Err(Ok(refusal)) => {
            process::log(
                call.site,
                &format!(
                    "{} {}: {}",
                    call.head.method.as_str(),
                    call.path,
                    refusal.reason
                ),
            );
            let head_only = call.head.is_head();
            let retry = if refusal.status == 503 {
                format!("Retry-After: {}\r\n", crate::worker::caps::RETRY_AFTER)
            } else {
                String::new()
            };
            let page = crate::http::error_response_with(refusal.status, false, head_only, &retry);
            stream.write_all(&page).await?;
            let sent = crate::http::error_body_len(refusal.status, head_only);
            Ok((refusal.status, sent, false))
        }
    }
}

type Outcome = Result<(u16, u64, bool), Result<Refusal, io::Error>>;

fn refused<T>(status: u16, reason: impl Into<String>) -> Result<T, Result<Refusal, io::Error>> {
    Err(Ok(refuse(status, reason)))
}

async fn run(call: &CgiCall<'_>, stream: &mut Stream, buf: &mut BytesMut) -> Outcome {
    let head = call.head;
    let Some(app) = call
        .site
        .config
        .routes
        .iter()
        .position(|r| std::ptr::eq(r, call.route))
        .and_then(|i| call.site.apps.get(i).cloned().flatten())
    else {
        return refused(500, "no app for this route");
    };
    let usage = match app.acquire(call.site, &call.tenant.caps) {
        Ok(u) => u,
        Err(e) => return refused(e.status, e.reason),
    };
    let oom_before = call.tenant.caps.oom_kills();
    let deadline = Instant::now() + call.route.timeout;
    let timed_out = || {
        refuse(
            504,
            format!("no response from the app within {:?}", call.route.timeout),
        )
    };
    let mut conn = match tokio::time::timeout_at(deadline, connect_named(&usage.socket)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return refused(502, format!("connecting to the app: {e}")),
        Err(_) => return Err(Ok(timed_out())),
    };
    let upgrade = wants_websocket(head);
    if head.expect_continue && !matches!(head.body, BodyFraming::None) {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(Err)?;
    }
    let request = request_head(call, upgrade);
    let (mut app_r, mut app_w) = conn.split();
    let mut abuf = BytesMut::with_capacity(16 * 1024);
    let idle = call.tenant.limits.body_timeout;
    let exchange = async {
        let feed = async {
            app_w.write_all(&request).await?;
            // A chunked body is counted against max_body as it passes (413 at the
            // chunk that crosses it); a Content-Length one was checked before.
            let max = call.site.config.max_body;
            relay_body_max(stream, buf, Some(&mut app_w), &head.body, idle, max).await
        };
        let read = read_head(&mut app_r, &mut abuf, head.is_head());
        tokio::pin!(feed, read);
        // Both run together (an app may answer before it read the body), but a
        // client's fault in the body ends the exchange at once: the app, still
        // waiting for the rest, would otherwise hold the request to its timeout.
        let mut fed = None;
        let response = loop {
            tokio::select! {
                f = &mut feed, if fed.is_none() => {
                    let fault = f.as_ref().err().and_then(crate::http::io::client_fault);
                    fed = Some(f);
                    if fault.is_some() {
                        break Err("the client's body failed".to_string());
                    }
                }
                r = &mut read => break r,
            }
        };
        let fed = match fed {
            Some(f) => f,
            None => feed.await,
        };
        (fed, response)
    };
    let (fed, response) = match tokio::time::timeout_at(deadline, exchange).await {
        Ok(r) => r,
        Err(_) => return Err(Ok(timed_out())),
    };
    // The app may answer without reading the whole body; then the rest of it is still
    // in the client connection, which therefore ends after this response.
    let mut keep_alive = head.keep_alive;
    if let Err(e) = fed {
        if let Some(status) = crate::http::io::client_fault(&e) {
            return refused(status, format!("reading the request body: {e}"));
        } else if app_closed(&e) {
            keep_alive = false;
        } else {
            return Err(Err(e));
        }
    }
    let response = match response {
        Ok(r) => r,
        Err(reason) => {
            let pid = app.pid().map(|p| format!(" (pid {p})")).unwrap_or_default();
            // The app (or a process of its own) went away before answering while the
            // kernel killed in the tenant's group at memory_max (the count rises
            // before the victim's sockets close): that is the cause to report.
            let caps = &call.tenant.caps;
            if oom_before.is_some_and(|before| caps.oom_kills().is_some_and(|now| now > before)) {
                return refused(503, format!("the app{pid}: {}", caps.oom_message()));
            }
            return refused(502, format!("the app{pid}: {reason}"));
        }
    };
    usage.answered();
    let Some((reason, fields)) = response_fields(&abuf[..response.len]) else {
        return refused(502, "the app sent an unreadable response head");
    };
    let reason = if reason.is_empty() {
        crate::http::reason(response.status).to_string()
    } else {
        reason
    };
    let tokens = connection_tokens(fields.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
    let mut headers: Vec<(String, String)> = fields
        .iter()
        .filter(|(n, _)| !hop_by_hop(n, &tokens) && !is_any(n, &["server", "date"]))
        .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    abuf.advance(response.len);

    if response.status == 101 {
        if !upgrade {
            return refused(502, "the app switched protocols without being asked to");
        }
        headers.push(("Connection".into(), "Upgrade".into()));
        headers.push(("Upgrade".into(), "websocket".into()));
        let mut out = format!("HTTP/1.1 101 {reason}\r\n").into_bytes();
        for (n, v) in &headers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        // Bytes either side sent right after its head go first, then the tunnel runs
        // until one side closes; the connection is not HTTP any more.
        out.extend_from_slice(&abuf);
        stream.write_all(&out).await.map_err(Err)?;
        conn.write_all(buf).await.map_err(Err)?;
        buf.clear();
        // `usage` is held through the tunnel: an open WebSocket keeps the app from
        // being stopped as idle.
        let copied = tokio::io::copy_bidirectional(stream, &mut conn).await;
        drop(usage);
        let sent = copied.map(|(_, to_client)| to_client).unwrap_or(0);
        return Ok((101, sent, false));
    }

    let framing = match (&response.body, head.version) {
        (ResponseBody::Framed(BodyFraming::None), _) => Framing::HeadOnly(content_length(&fields)),
        (ResponseBody::Framed(BodyFraming::Length(n)), _) => Framing::Length(*n),
        (ResponseBody::Framed(BodyFraming::Chunked), Version::Http11) => Framing::Chunked,
        (ResponseBody::Framed(BodyFraming::Chunked), Version::Http10) => {
            return refused(502, "the app sent a chunked body to an HTTP/1.0 request");
        }
        (ResponseBody::UntilClose, Version::Http11) => Framing::Chunked,
        (ResponseBody::UntilClose, Version::Http10) => Framing::UntilClose,
    };
    if matches!(framing, Framing::UntilClose) {
        keep_alive = false;
    }
    let mut pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    pairs.extend(crate::worker::response::site_headers(
        call.site,
        call.secure,
    ));
    let out = response_head(
        response.status,
        &reason,
        &pairs,
        framing,
        keep_alive,
        head.version,
    );
    stream.write_all(&out).await.map_err(Err)?;
    let body_idle = call.route.timeout;
    let sent = match (&response.body, framing) {
        (_, Framing::HeadOnly(_)) => 0,
        (ResponseBody::Framed(f), _) => {
            relay_body(&mut conn, &mut abuf, Some(stream), f, body_idle)
                .await
                .map_err(Err)?
        }
        (ResponseBody::UntilClose, Framing::Chunked) => copy_chunked(&mut abuf, &mut conn, stream)
            .await
            .map_err(Err)?,
        (ResponseBody::UntilClose, _) => copy_until_eof(&mut abuf, &mut conn, stream)
            .await
            .map_err(Err)?,
    };
    Ok((response.status, sent, keep_alive))
}

fn app_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// Read the app's final response head into `abuf` (interim 1xx other than 101 are
/// skipped: the client got condo's own 100 Continue).
async fn read_head<R: tokio::io::AsyncRead + Unpin>(
    app: &mut R,
    abuf: &mut BytesMut,
    request_was_head: bool,
) -> Result<crate::http::response::ResponseHead, String> {
    loop {
        match parse_response_head(abuf, request_was_head) {
            Ok(Some(r)) if (100..200).contains(&r.status) && r.status != 101 => {
                abuf.advance(r.len);
                continue;
            }
            Ok(Some(r)) => return Ok(r),
            Ok(None) => {}
            Err(_) => return Err("sent an invalid response head".into()),
        }
        if abuf.len() > MAX_RESPONSE_HEAD {
            return Err("sent a response head over 64 KiB".into());
        }
        abuf.reserve(16 * 1024);
        match app.read_buf(abuf).await {
            Ok(0) => return Err("closed the connection without a response".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading the response: {e}")),
        }
    }
}

fn is_any(name: &str, names: &[&str]) -> bool {
    names.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// Header names listed in `Connection` (RFC 9110 §7.6.1: meant for this hop only).
fn connection_tokens<'a>(headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<String> {
    headers
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| {
            v.split(|&b| b == b',')
                .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|t| !t.is_empty())
        .collect()
}

/// Connect to the app from a socket with a name of its own (autobind: the kernel picks
/// an unused abstract name, so none can be squatted). An unnamed peer has an empty
/// address, which breaks apps that log their client's: Python's http.server (and
/// wsgiref) read `client_address[0]` and fail every request with IndexError.
async fn connect_named(path: &std::path::Path) -> io::Result<UnixStream> {
    let socket = tokio::net::UnixSocket::new_stream()?;
    rustix::net::bind(&socket, &rustix::net::SocketAddrUnix::new_unnamed())?;
    socket.connect(path).await
}

/// Headers that describe one connection, not the message: never relayed as they are.
fn hop_by_hop(name: &str, tokens: &[String]) -> bool {
    is_any(
        name,
        &[
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "content-length",
            "upgrade",
        ],
    ) || tokens.iter().any(|t| name.eq_ignore_ascii_case(t))
}

fn content_length(fields: &[(String, Vec<u8>)]) -> Option<u64> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse().ok())
}

/// `Connection: upgrade` with `Upgrade: websocket` on an HTTP/1.1 request.
fn wants_websocket(head: &RequestHead) -> bool {
    let tokens = connection_tokens(head.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
    head.version == Version::Http11
        && tokens.iter().any(|t| t == "upgrade")
        && head.header("upgrade").is_some_and(|v| {
            v.split(|&b| b == b',')
                .any(|p| p.trim_ascii().eq_ignore_ascii_case(b"websocket"))
        })
}

/// The request head as the app gets it: the client's request line and end-to-end
/// headers, condo's `X-Forwarded-*`/`Forwarded` instead of any the client sent, and
/// `Connection: close` (one app connection per request) unless it is an upgrade.
fn request_head(call: &CgiCall<'_>, upgrade: bool) -> Vec<u8> {
    let head = call.head;
    let tokens = connection_tokens(head.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
    let mut out = Vec::with_capacity(1024);
    // An absolute-form target (routed by its authority already) becomes origin-form:
    // the app is an origin server, and the Host header names the site.
    let target = if head.target.starts_with('/') || head.target == "*" {
        head.target.clone()
    } else {
        match &head.query {
            Some(q) => format!("{}?{q}", head.path),
            None => head.path.clone(),
        }
    };
    out.extend_from_slice(
        format!(
            "{} {target} {}\r\n",
            head.method.as_str(),
            head.version.as_str()
        )
        .as_bytes(),
    );
    for (name, value) in &head.headers {
        let lower = name.to_ascii_lowercase();
        // The body's own framing is relayed verbatim, so its headers stay.
        let framing = is_any(name, &["content-length", "transfer-encoding"]);
        let keep = (framing || !hop_by_hop(name, &tokens))
            && lower != "expect"
            && lower != "forwarded"
            && !lower.starts_with("x-forwarded-");
        if keep {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
    let ip = call.peer.ip();
    let node = match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let proto = if call.secure { "https" } else { "http" };
    out.extend_from_slice(
        format!(
            "X-Forwarded-For: {ip}\r\nX-Forwarded-Proto: {proto}\r\nForwarded: for={node};proto={proto}\r\n"
        )
        .as_bytes(),
    );
    if upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n");
    } else {
        out.extend_from_slice(b"Connection: close\r\n\r\n");
    }
    out
}
