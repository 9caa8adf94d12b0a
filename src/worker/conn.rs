//! Serving one connection in a worker: keep-alive and pipelined requests for this
//! tenant's sites, and a hand-back to the dispatcher when a request is for another.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tracing::{debug, warn};

use super::response::{Framing, record_request, response_head, serves_host, site_headers};
use super::static_files::{self, Body, Method, RequestHeaders, Response};
use super::stream::Stream;
use super::target::Target;
use super::{PeerChannel, SiteState, Tenant, access_log, app, cgi, fastcgi};
use crate::config::Handler;
use crate::config::Handover;
use crate::http;
use crate::http::head::{self, BodyFraming, RequestHead};
use crate::http::io::{HeadRead, close_gracefully, read_head, relay_body, respond_and_close};
use crate::ipc::{Handoff, WorkerToDispatcher};

/// A request body this small is read and discarded to keep the connection; a larger
/// one (to a static site, which takes none) ends the connection after the response.
const MAX_DISCARDED_BODY: u64 = 64 * 1024;
/// Local redirects (CGI `Location: /path`) followed for one request.
const MAX_LOCAL_REDIRECTS: u32 = 5;

pub async fn serve(tenant: Arc<Tenant>, peer: Arc<PeerChannel>, handoff: Handoff, fd: OwnedFd) {
    let send_timeout = tenant.limits.send_timeout;
    let _held = tenant.lifecycle.connection();
    let stream = match handoff.handover {
        _ if handoff.tls_handshake => tls_handshake(&tenant, &handoff, fd).await,
        Handover::Pass => Stream::tcp(fd, send_timeout),
        Handover::Proxy => Stream::unix(fd, send_timeout),
    };
    let mut stream = match stream {
        Ok(s) => s,
        Err(e) => {
            debug!("taking over a connection: {e}");
            return;
        }
    };
    if stream.is_h2() {
        super::h2::serve(tenant, peer, handoff, stream).await;
        return;
    }
    let limits = tenant.limits;
    let mut buf = if handoff.tls_handshake {
        BytesMut::new()
    } else {
        BytesMut::from(&handoff.buffered[..])
    };
    let mut site_hint = Some(handoff.site.as_str());
    let mut idle = limits.header_timeout;
    let mut slot: Option<ConnectionSlot> = None;
    let mut served_one = false;
    loop {
        let read = read_head(&mut stream, &mut buf, &limits, idle);
        let read = if handoff.handover == Handover::Pass && !handoff.tls_handshake {
            // A retiring worker gives connections that wait for their next request back
            // to the dispatcher, which passes them to the tenant's new worker. A head
            // already buffered is still served here (`biased`).
            tokio::select! {
                biased;
                read = read => read,
                _ = tenant.lifecycle.retired() => {
                    hand_back(stream, buf, &handoff, &peer).await;
                    return;
                }
            }
        } else if handoff.handover == Handover::Proxy && served_one {
            // A relay stream idle between requests is closed once no dispatcher sends
            // this worker anything more: the dispatcher sees it closed before its next
            // request and opens one to the tenant's new worker, and this worker is not
            // kept alive by a relay with nothing to do. (A new relay always has its
            // first request on the way, so it is served.)
            tokio::select! {
                biased;
                read = read => read,
                _ = tenant.lifecycle.released() => return,
            }
        } else {
            read.await
        };
        let head = match read {
            HeadRead::Head(h) => h,
            HeadRead::Closed | HeadRead::Io(_) => return,
            HeadRead::TimedOut => {
                respond_and_close(&mut stream, &http::error_response(408, false, false)).await;
                return;
            }
            HeadRead::Invalid(e) => {
                debug!("bad request head: {e}");
                respond_and_close(&mut stream, &http::error_response(e.status(), false, false))
                    .await;
                return;
            }
        };
        idle = limits.keepalive_timeout;
        let site = match handoff.handover {
            // An HTTPS connection with the site's own certificate serves that site's
            // names only (RFC 9110 §15.5.20: anything else is 421, below).
            _ if handoff.tls_handshake => tenant
                .site_named(&handoff.site)
                .filter(|s| head.host.as_deref().is_some_and(|h| serves_host(s, h))),
            // The relay stream belongs to one site: the dispatcher routed it.
            Handover::Proxy => tenant.site_named(&handoff.site),
            Handover::Pass => match site_hint.take() {
                Some(name) => tenant.site_named(name),
                None => tenant.sites.exact(head.host.as_deref()),
            },
        };
        let Some(site) = site.cloned() else {
            if handoff.handover == Handover::Pass && !handoff.tls_handshake {
                hand_back(stream, buf, &handoff, &peer).await;
            } else {
                respond_and_close(
                    &mut stream,
                    &http::error_response(421, false, head.is_head()),
                )
                .await;
            }
            return;
        };
        // Past this point the head is ours: the bytes after it are the body or the
        // next request. (A hand-back above keeps the head in `buf` for the dispatcher.)
        buf.advance(head.head_len);
        // Client connections only: a proxy relay is the dispatcher's, reused across
        // clients, and idles in its pool between requests.
        if handoff.handover != Handover::Proxy
            && slot.as_ref().is_none_or(|s| !Arc::ptr_eq(&s.0, &site))
        {
            // Let go of the previous site's slot before taking this one's.
            drop(slot.take());
            slot = ConnectionSlot::take(&site);
            if slot.is_none() {
                refuse_connection(&tenant, &site, &mut stream, &head, &handoff).await;
                return;
            }
        }
        match respond(&tenant, &site, &mut stream, &mut buf, &head, &handoff).await {
            Ok(true) => {
                served_one = true;
                continue;
            }
            Ok(false) => {
                if !buf.is_empty() {
                    // Unread pipelined bytes: a plain close would answer them with a
                    // reset that can destroy the response still in flight.
                    close_gracefully(&mut stream).await;
                }
                return;
            }
            Err(e) => {
                debug!("connection ended: {e}");
                return;
            }
        }
    }
}

/// `serve` behind a named future type: serving an h2 stream calls `serve` from within
/// `serve`, and the compiler can only see such a cycle through a concrete type.
pub(super) fn serve_boxed(
    tenant: Arc<Tenant>,
    peer: Arc<PeerChannel>,
    handoff: Handoff,
    fd: OwnedFd,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(serve(tenant, peer, handoff, fd))
}

/// The handshake of an HTTPS connection for a site with its own certificate, with the
/// ClientHello the dispatcher read first.
async fn tls_handshake(tenant: &Tenant, handoff: &Handoff, fd: OwnedFd) -> std::io::Result<Stream> {
    let config = match tenant
        .site_named(&handoff.site)
        .and_then(|s| s.tls.as_ref())
    {
        Some(Ok(config)) => config.clone(),
        Some(Err(reason)) => return Err(std::io::Error::other(reason.clone())),
        None => return Err(std::io::Error::other("the site has no certificate here")),
    };
    let tcp = tokio::net::TcpStream::from_std(std::net::TcpStream::from(fd))?;
    let prefixed = crate::tls::Prefixed::new(handoff.buffered.clone(), tcp);
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(prefixed);
    let tls = tokio::time::timeout(tenant.limits.header_timeout, accept)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))??;
    Ok(Stream::tls(tls, tenant.limits.send_timeout))
}

/// The next request is another tenant's: give the socket and the unread bytes back to
/// the dispatcher that sent the connection. The client sees nothing of this.
async fn hand_back(stream: Stream, buf: BytesMut, from: &Handoff, peer: &PeerChannel) {
    let fd = match stream.into_fd() {
        Ok(fd) => fd,
        Err(e) => {
            warn!("detaching a connection to hand it back: {e}");
            return;
        }
    };
    // Everything as the dispatcher sent it, its seal too: the dispatcher resumes only
    // the connection it handed over, with the addresses it knew.
    let handoff = Handoff {
        handover: from.handover,
        peer: from.peer,
        local: from.local,
        site: from.site.clone(),
        buffered: buf.to_vec(),
        tls_handshake: from.tls_handshake,
        secure: from.secure,
        seal: from.seal,
    };
    if let Err(e) = peer
        .send(&WorkerToDispatcher::HandBack(handoff), &[fd.as_fd()])
        .await
    {
        warn!("handing a connection back failed, closing it: {e}");
    }
}

struct Headers<'a>(&'a RequestHead);

impl RequestHeaders for Headers<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.header(name)
    }
}

/// Answer one request. `Ok(true)`: the connection can carry another.
async fn respond(
    tenant: &Tenant,
    site: &SiteState,
    stream: &mut Stream,
    buf: &mut BytesMut,
    head: &RequestHead,
    handoff: &Handoff,
) -> std::io::Result<bool> {
    let started = Instant::now();
    if let Some(port) = site.config.https_redirect
        && !handoff.secure
    {
        return redirect_to_https(tenant, site, stream, head, handoff, port, started).await;
    }
    if let BodyFraming::Length(n) = head.body
        && n > site.config.max_body
    {
        // 413 at once, whatever would handle it: none of the body is read, no script
        // starts, and the connection ends (the unread body is still on it).
        cgi::log_site(
            site,
            &format!(
                "{} {}: 413: Content-Length {n} over the site's max_body of {} bytes",
                head.method.as_str(),
                head.path,
                site.config.max_body
            ),
        );
        let (status, sent, _) =
            error_page(tenant, site, stream, buf, head, handoff, 413, false).await?;
        log_access(tenant, site, head, handoff, status, sent, started);
        tenant.lifecycle.request_done();
        return Ok(false);
    }
    // `max_clients` counts the requests a script or an app answers: they hold the
    // processes and memory the cap is for. Static files (sendfile, no process) and
    // condo's own answers are served whatever the scripts hold, as most hosts do.
    let mut slot = None;
    let mut request = std::borrow::Cow::Borrowed(head);
    let mut redirects = 0;
    let (status, sent, keep_alive) = loop {
        let target = super::target::resolve(site, &request.path);
        if let (Target::Route(..), None, Some(gate)) = (&target, &slot, &site.gate) {
            match gate.enter().await {
                Ok(permit) => slot = Some(permit),
                Err(refused) => {
                    return refuse_busy(tenant, site, stream, head, handoff, gate, refused).await;
                }
            }
        }
        match target {
            Target::Route(route, path) if route.handler == Handler::App => {
                let call = cgi::CgiCall {
                    tenant,
                    site,
                    route,
                    head: &request,
                    path: &path,
                    peer: handoff.peer,
                    local: handoff.local,
                    secure: handoff.secure,
                    error: None,
                };
                break app::serve(call, stream, buf).await?;
            }
            Target::Route(route, path) => {
                let call = cgi::CgiCall {
                    tenant,
                    site,
                    route,
                    head: &request,
                    path: &path,
                    peer: handoff.peer,
                    local: handoff.local,
                    secure: handoff.secure,
                    error: None,
                };
                let outcome = if route.handler == Handler::FastCgi {
                    fastcgi::serve(call, stream, buf).await?
                } else {
                    cgi::serve(call, stream, buf).await?
                };
                match outcome {
                    cgi::CgiOutcome::Responded {
                        status,
                        sent,
                        keep_alive,
                    } => break (status, sent, keep_alive),
                    cgi::CgiOutcome::Failed(status) => {
                        break error_page(
                            tenant, site, stream, buf, &request, handoff, status, false,
                        )
                        .await?;
                    }
                    cgi::CgiOutcome::LocalRedirect(target) if redirects < MAX_LOCAL_REDIRECTS => {
                        // RFC 3875 §6.2.2: serve the new location as a GET, body already consumed.
                        redirects += 1;
                        let mut next = request.into_owned();
                        let (path, query) = match target.split_once('?') {
                            Some((p, q)) => (p.to_string(), Some(q.to_string())),
                            None => (target, None),
                        };
                        next.method = head::Method::Get;
                        next.path = path;
                        next.query = query;
                        next.body = BodyFraming::None;
                        request = std::borrow::Cow::Owned(next);
                    }
                    cgi::CgiOutcome::LocalRedirect(target) => {
                        warn!(site = site.config.name, "local redirect loop at {target}");
                        break error_page(tenant, site, stream, buf, &request, handoff, 500, false)
                            .await?;
                    }
                }
            }
            Target::Static { path, index } => {
                let target = Ok((path.as_str(), index));
                break serve_static(tenant, site, stream, buf, &request, target, handoff).await?;
            }
            Target::Refused(status) => {
                break serve_static(tenant, site, stream, buf, &request, Err(status), handoff)
                    .await?;
            }
        }
    };
    drop(slot);
    log_access(tenant, site, head, handoff, status, sent, started);
    tenant.lifecycle.request_done();
    Ok(keep_alive)
}

/// 503 with Retry-After for a request over the site's `max_clients` and queue. The
/// connection closes: its body, if any, was not read.
/// One of a site's `max_connections`, held while a connection serves that site.
struct ConnectionSlot(Arc<SiteState>);

impl ConnectionSlot {
    fn take(site: &Arc<SiteState>) -> Option<Self> {
        let open = site.open_connections.fetch_add(1, Ordering::AcqRel);
        if site.config.max_connections.is_some_and(|max| open >= max) {
            site.open_connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(site.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A new connection for a site at its `max_connections`: 503, logged, closed.
async fn refuse_connection(
    tenant: &Tenant,
    site: &SiteState,
    stream: &mut Stream,
    head: &RequestHead,
    handoff: &Handoff,
) {
    let started = Instant::now();
    warn!(
        tenant = tenant.name,
        site = site.config.name,
        "503: max_connections reached"
    );
    site.counters.capped();
    let page = http::error_response_with(503, false, head.is_head(), "Retry-After: 5\r\n");
    respond_and_close(stream, &page).await;
    let sent = http::error_body_len(503, head.is_head());
    log_access(tenant, site, head, handoff, 503, sent, started);
}

async fn refuse_busy(
    tenant: &Tenant,
    site: &SiteState,
    stream: &mut Stream,
    head: &RequestHead,
    handoff: &Handoff,
    gate: &super::gate::Gate,
    refused: super::gate::Refused,
) -> std::io::Result<bool> {
    let started = Instant::now();
    warn!(
        tenant = tenant.name,
        site = site.config.name,
        uri = head.target,
        "503: max_clients reached ({refused:?})"
    );
    site.counters.capped();
    let retry = format!("Retry-After: {}\r\n", gate.retry_after());
    let page = http::error_response_with(503, false, head.is_head(), &retry);
    stream.write_all(&page).await?;
    let sent = http::error_body_len(503, head.is_head());
    log_access(tenant, site, head, handoff, 503, sent, started);
    Ok(false)
}

/// A plain-HTTP request for a site with `https_redirect`: 301 to the same URL over
/// HTTPS (308 for methods other than GET and HEAD, so the method is kept).
async fn redirect_to_https(
    tenant: &Tenant,
    site: &SiteState,
    stream: &mut Stream,
    head: &RequestHead,
    handoff: &Handoff,
    port: u16,
    started: Instant,
) -> std::io::Result<bool> {
    let host = head.host.as_deref().unwrap_or(&site.config.name);
    let authority = if port == 443 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    let status = if head.is_head() || head.method == head::Method::Get {
        301
    } else {
        308
    };
    let location = format!("Location: https://{authority}{}\r\n", head.target);
    // The body, if any, was not read: the connection ends after the answer.
    let keep_alive = head.keep_alive && matches!(head.body, BodyFraming::None);
    let page = http::error_response_with(status, keep_alive, head.is_head(), &location);
    stream.write_all(&page).await?;
    let sent = http::error_body_len(status, head.is_head());
    log_access(tenant, site, head, handoff, status, sent, started);
    Ok(keep_alive)
}

fn log_access(
    tenant: &Tenant,
    site: &SiteState,
    head: &RequestHead,
    handoff: &Handoff,
    status: u16,
    sent: u64,
    started: Instant,
) {
    // Bytes in: the head and the body it declared (a chunked body counts as its head).
    let declared = match head.body {
        BodyFraming::Length(n) => n,
        _ => 0,
    };
    let entry = access_log::Entry {
        peer: handoff.peer.ip(),
        method: head.method.as_str(),
        target: &head.target,
        version: head.version.as_str(),
        status,
        bytes: sent,
        referer: head.header("referer"),
        user_agent: head.header("user-agent"),
        tenant: &tenant.name,
        elapsed: started.elapsed(),
    };
    record_request(site, &entry, head.head_len as u64 + declared);
}

/// The static handler, for `target`: the normalised path and whether it still has to
/// look for an index file (see [`super::target`]), or the status that refuses the
/// request before any file is looked at.
async fn serve_static(
    tenant: &Tenant,
    site: &SiteState,
    stream: &mut Stream,
    buf: &mut BytesMut,
    head: &RequestHead,
    target: Result<(&str, bool), u16>,
    handoff: &Handoff,
) -> std::io::Result<(u16, u64, bool)> {
    let secure = handoff.secure;
    let mut keep_alive = head.keep_alive;
    // Consume the request's body first, so the bytes after it are the next request.
    match head.body {
        BodyFraming::None => {}
        BodyFraming::Length(n) if n <= MAX_DISCARDED_BODY && !head.expect_continue => {
            let discarded = relay_body(
                stream,
                buf,
                None::<&mut Stream>,
                &head.body,
                tenant.limits.body_timeout,
            )
            .await;
            if let Err(e) = discarded {
                // A body that stalls or breaks off is the client's fault, and said so
                // (408, 400) before the connection closes.
                let Some(status) = crate::http::io::client_fault(&e) else {
                    return Err(e);
                };
                let page = http::error_response(status, false, head.is_head());
                stream.write_all(&page).await?;
                return Ok((status, http::error_body_len(status, head.is_head()), false));
            }
        }
        _ => keep_alive = false,
    }
    let method = match head.method {
        head::Method::Get => Method::Get,
        head::Method::Head => Method::Head,
        _ => Method::Other,
    };
    let response = match (&site.files, target) {
        (_, Err(status)) => static_files::error_response(status),
        (Ok(files), Ok((path, index))) => static_files::serve_path(
            files,
            method,
            path,
            head.query.as_deref(),
            &Headers(head),
            index,
        ),
        (Err(_), _) => static_files::error_response(500),
    };
    let response = static_files::finish(response).await;
    if response.status >= 400 && site.config.error_page(response.status).is_some() {
        let status = response.status;
        return error_page(tenant, site, stream, buf, head, handoff, status, keep_alive).await;
    }
    let status = response.status;
    let sent = write_response(
        stream,
        response,
        head,
        keep_alive,
        site_headers(site, secure),
    )
    .await?;
    Ok((status, sent, keep_alive))
}

/// No request headers: an error page is sent whole, whatever the failed request's
/// conditions or ranges asked of the URL it failed on.
struct NoHeaders;

impl RequestHeaders for NoHeaders {
    fn header(&self, _: &str) -> Option<&[u8]> {
        None
    }
}

/// The answer to a failure with `status` when the site's page for it is a file (or
/// there is none): that file with the status, or condo's plain page.
pub(super) fn static_error_page(site: &SiteState, status: u16, head_only: bool) -> Response {
    let (Some(page), Ok(files)) = (site.config.error_page(status), &site.files) else {
        return static_files::error_response(status);
    };
    let method = if head_only { Method::Head } else { Method::Get };
    let mut response = static_files::serve_path(files, method, page, None, &NoHeaders, false);
    if response.status != 200 {
        cgi::log_site(
            site,
            &format!(
                "error page {page} for {status} answered {}; sent the plain page",
                response.status
            ),
        );
        return static_files::error_response(status);
    }
    response.status = status;
    // The page's own validators would let a cache store it as the failed URL's.
    response
        .headers
        .retain(|(n, _)| !matches!(*n, "ETag" | "Last-Modified" | "Accept-Ranges"));
    response
}

/// Answer a request that failed with `status` by the site's page for it
/// (`error_pages`), keeping that status, or by condo's plain page when the site has
/// none or the page fails itself (never another error page: no loops). A script page
/// runs as a GET (HEAD stays HEAD) without the body, with Apache's `REDIRECT_*`
/// variables and the original `REQUEST_URI`.
#[allow(clippy::too_many_arguments)]
async fn error_page(
    tenant: &Tenant,
    site: &SiteState,
    stream: &mut Stream,
    buf: &mut BytesMut,
    head: &RequestHead,
    handoff: &Handoff,
    status: u16,
    keep_alive: bool,
) -> std::io::Result<(u16, u64, bool)> {
    let page = site.config.error_page(status);
    let target = page.map(|page| super::target::page(site, page));
    match target {
        Some(Target::Static { .. }) => {
            let response = static_error_page(site, status, head.is_head());
            let site_header = site_headers(site, handoff.secure);
            let sent = write_response(stream, response, head, keep_alive, site_header).await?;
            return Ok((status, sent, keep_alive));
        }
        Some(Target::Route(route, path)) if route.handler != Handler::App => {
            let mut request = head.clone();
            if !head.is_head() {
                request.method = head::Method::Get;
            }
            request.query = None;
            request.body = BodyFraming::None;
            request.expect_continue = false;
            request.keep_alive = head.keep_alive && keep_alive;
            let call = cgi::CgiCall {
                tenant,
                site,
                route,
                head: &request,
                path: &path,
                peer: handoff.peer,
                local: handoff.local,
                secure: handoff.secure,
                error: Some(cgi::env::Redirect {
                    status,
                    url: &head.path,
                    query: head.query.as_deref(),
                    method: head.method.as_str(),
                }),
            };
            let outcome = if route.handler == Handler::FastCgi {
                fastcgi::serve(call, stream, buf).await?
            } else {
                cgi::serve(call, stream, buf).await?
            };
            match outcome {
                cgi::CgiOutcome::Responded {
                    status,
                    sent,
                    keep_alive: kept,
                } => return Ok((status, sent, kept && keep_alive)),
                // Not followed from an error page: a redirect could lead to another.
                other => {
                    let what = match other {
                        cgi::CgiOutcome::LocalRedirect(to) => format!("redirected to {to}"),
                        _ => "failed".to_string(),
                    };
                    cgi::log_site(
                        site,
                        &format!("error page {path} for {status} {what}; sent the plain page"),
                    );
                }
            }
        }
        _ => {}
    }
    let sent = write_response(
        stream,
        static_files::error_response(status),
        head,
        keep_alive,
        site_headers(site, handoff.secure),
    )
    .await?;
    Ok((status, sent, keep_alive))
}

/// Write status line, headers and body; returns the body bytes sent.
async fn write_response(
    stream: &mut Stream,
    response: Response,
    head: &RequestHead,
    keep_alive: bool,
    site_header: Option<(&'static str, &str)>,
) -> std::io::Result<u64> {
    let status = response.status;
    let length = response.content_length();
    let mut headers: Vec<(&str, &str)> = response
        .headers
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .collect();
    headers.extend(site_header);
    let framing = if head.is_head() {
        Framing::HeadOnly(Some(length))
    } else {
        Framing::Length(length)
    };
    let mut out = response_head(
        status,
        http::reason(status),
        &headers,
        framing,
        keep_alive,
        head.version,
    );
    if head.is_head() {
        stream.write_all(&out).await?;
        return Ok(0);
    }
    match response.body {
        Body::Empty => stream.write_all(&out).await?,
        Body::Bytes(bytes) => {
            // Head and small body in one write: one packet for small files.
            out.extend_from_slice(&bytes);
            stream.write_all(&out).await?;
        }
        Body::File { file, offset, len } => {
            stream.write_all(&out).await?;
            stream.sendfile(&file, offset, len).await?;
        }
        Body::Multipart {
            file,
            parts,
            trailer,
        } => {
            stream.write_all(&out).await?;
            for part in &parts {
                stream.write_all(&part.head).await?;
                stream.sendfile(&file, part.offset, part.len).await?;
            }
            stream.write_all(&trailer).await?;
        }
    }
    Ok(length)
}
