//! HTTP/2 on a connection with the site's own certificate (TLS ended in this worker).
//!
//! Static files, which are most requests, are answered straight from the h2 stream:
//! the same `static_files::serve` as HTTP/1.1, its response turned into an h2 one.
//! Everything else (CGI, FastCGI, apps, request bodies) goes to the HTTP/1.1 handler
//! over an in-process socketpair (see `http::h2`), so every handler speaks h2 without
//! knowing it. The direct path exists for speed: the relay re-encodes each request and
//! response as HTTP/1.1 and parses it again, three times the work of a static answer
//! (h2load, 10 connections x 10 streams: 39k req/s relayed, see bench/tls.sh).

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};

use super::conn::serve_boxed;
use super::response::{record_request, serves_host, site_headers};
use super::static_files::{self, RequestHeaders};
use super::{PeerChannel, SiteState, Tenant, access_log};
use crate::config::Handover;
use crate::http::SERVER_NAME;
use crate::http::h2::{self, Body};
use crate::ipc::Handoff;

pub(super) async fn serve(
    tenant: Arc<Tenant>,
    peer: Arc<PeerChannel>,
    handoff: Handoff,
    stream: super::stream::Stream,
) {
    let limits = tenant.limits;
    let relays = Arc::new(h2::Relays::default());
    let backend = move |req: Request<Incoming>| {
        let tenant = tenant.clone();
        let peer = peer.clone();
        let handoff = handoff.clone();
        let relays = relays.clone();
        async move {
            let Some(host) = h2::host_of(&req) else {
                return h2::error(StatusCode::BAD_REQUEST);
            };
            // The h2 connection serves its site's names only, as HTTP/1.1 does (421).
            let Some(site) = tenant
                .site_named(&handoff.site)
                .filter(|s| serves_host(s, &host))
                .cloned()
            else {
                return h2::error(StatusCode::MISDIRECTED_REQUEST);
            };
            if let Some(target) = static_target(&site, &req) {
                return serve_static(&tenant, &site, &req, &handoff, target).await;
            }
            let site = handoff.site.clone();
            let open = || async move {
                let unavailable = |_| StatusCode::SERVICE_UNAVAILABLE;
                let (mine, theirs) = std::os::unix::net::UnixStream::pair().map_err(unavailable)?;
                let local_handoff = Handoff {
                    handover: Handover::Proxy,
                    tls_handshake: false,
                    buffered: Vec::new(),
                    ..handoff
                };
                tokio::spawn(serve_boxed(
                    tenant,
                    peer,
                    local_handoff,
                    OwnedFd::from(theirs),
                ));
                mine.set_nonblocking(true).map_err(unavailable)?;
                let stream = tokio::net::UnixStream::from_std(mine).map_err(unavailable)?;
                // In-process: the relay lives exactly as long as this worker.
                let alive: h2::Liveness = Arc::new(|| true);
                Ok(h2::Relay { stream, alive })
            };
            relays.send(&site, req, &host, open).await
        }
    };
    h2::serve(stream, &limits, backend).await;
}

/// A bodiless GET or HEAD that no route of the site claims (or one refused by name):
/// the static handler's, with the path [`super::target::resolve`] chose for it.
fn static_target(site: &SiteState, req: &Request<Incoming>) -> Option<Result<(String, bool), u16>> {
    if !(req.method() == Method::GET || req.method() == Method::HEAD) || !req.body().is_end_stream()
    {
        return None;
    }
    // A script error page runs in the HTTP/1 pipeline the stream is bridged to.
    let script_page = |(_, page): &(u16, String)| {
        matches!(
            super::target::page(site, page),
            super::target::Target::Route(..)
        )
    };
    if site.config.error_pages.iter().any(script_page) {
        return None;
    }
    match super::target::resolve(site, req.uri().path()) {
        super::target::Target::Static { path, index } => Some(Ok((path, index))),
        super::target::Target::Refused(status) => Some(Err(status)),
        super::target::Target::Route(..) => None,
    }
}

struct H2Headers<'a>(&'a HeaderMap);

impl RequestHeaders for H2Headers<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.get(name).map(HeaderValue::as_bytes)
    }
}

async fn serve_static(
    tenant: &Tenant,
    site: &SiteState,
    req: &Request<Incoming>,
    handoff: &Handoff,
    target: Result<(String, bool), u16>,
) -> Response<Body> {
    let started = Instant::now();
    let head_only = req.method() == Method::HEAD;
    // Static answers do not count against `max_clients` (see conn.rs); streams for
    // scripts are relayed to the HTTP/1.1 handler, which counts them there.
    let method = if head_only {
        static_files::Method::Head
    } else {
        static_files::Method::Get
    };
    let answer = match (&site.files, target) {
        (_, Err(status)) => static_files::error_response(status),
        (Ok(files), Ok((path, index))) => static_files::serve_path(
            files,
            method,
            &path,
            req.uri().query(),
            &H2Headers(req.headers()),
            index,
        ),
        (Err(_), _) => static_files::error_response(500),
    };
    let answer = static_files::finish(answer).await;
    let answer = if site.config.error_page(answer.status).is_some() {
        super::conn::static_error_page(site, answer.status, head_only)
    } else {
        answer
    };
    let status = answer.status;
    let length = answer.content_length();
    let mut response = Response::new(FileBody::from(answer.body).boxed());
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    headers.insert(header::SERVER, HeaderValue::from_static(SERVER_NAME));
    if let Ok(date) = HeaderValue::from_str(&crate::http::http_date()) {
        headers.insert(header::DATE, date);
    }
    let extra = site_headers(site, handoff.secure);
    for (name, value) in answer
        .headers
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .chain(extra)
    {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    if status != 304 && status != 204 {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    let sent = if head_only { 0 } else { length };
    log(tenant, site, req, handoff, status, sent, started);
    tenant.lifecycle.request_done();
    response
}

fn log(
    tenant: &Tenant,
    site: &SiteState,
    req: &Request<Incoming>,
    handoff: &Handoff,
    status: u16,
    sent: u64,
    started: Instant,
) {
    // Bytes in: the header fields as they decode (HPACK makes the wire size smaller).
    let received: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let header = |name| req.headers().get(name).map(HeaderValue::as_bytes);
    let entry = access_log::Entry {
        peer: handoff.peer.ip(),
        method: req.method().as_str(),
        target,
        version: "HTTP/2.0",
        status,
        bytes: sent,
        referer: header(header::REFERER),
        user_agent: header(header::USER_AGENT),
        tenant: &tenant.name,
        elapsed: started.elapsed(),
    };
    record_request(site, &entry, received as u64);
}

/// A static response body as h2 DATA frames: bytes in memory, and file ranges read as
/// the stream asks for them (h2 has no sendfile: TLS and framing need the bytes).
struct FileBody {
    file: Option<File>,
    segments: VecDeque<Segment>,
    remaining: u64,
}

enum Segment {
    Bytes(Bytes),
    Range { offset: u64, len: u64 },
}

/// Bytes read per DATA frame batch: hyper splits them to the peer's frame size.
const READ_CHUNK: u64 = 64 * 1024;

impl From<static_files::Body> for FileBody {
    fn from(body: static_files::Body) -> Self {
        let remaining = body.len();
        let (file, segments) = match body {
            static_files::Body::Empty => (None, VecDeque::new()),
            static_files::Body::Bytes(bytes) => {
                (None, VecDeque::from([Segment::Bytes(bytes.into())]))
            }
            static_files::Body::File { file, offset, len } => {
                (Some(file), VecDeque::from([Segment::Range { offset, len }]))
            }
            static_files::Body::Multipart {
                file,
                parts,
                trailer,
            } => {
                let mut segments = VecDeque::with_capacity(parts.len() * 2 + 1);
                for part in parts {
                    segments.push_back(Segment::Bytes(part.head.into()));
                    segments.push_back(Segment::Range {
                        offset: part.offset,
                        len: part.len,
                    });
                }
                segments.push_back(Segment::Bytes(trailer.into()));
                (Some(file), segments)
            }
        };
        Self {
            file,
            segments,
            remaining,
        }
    }
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            let chunk = match this.segments.front_mut() {
                None => return Poll::Ready(None),
                Some(Segment::Bytes(bytes)) => {
                    let bytes = std::mem::take(bytes);
                    this.segments.pop_front();
                    bytes
                }
                Some(Segment::Range { len: 0, .. }) => {
                    this.segments.pop_front();
                    continue;
                }
                Some(Segment::Range { offset, len }) => {
                    let Some(file) = &this.file else {
                        return Poll::Ready(Some(Err("a file range without a file".into())));
                    };
                    // A blocking read: static files come from the page cache, and a
                    // thread hop per 64 KiB would cost more than the read (nginx reads
                    // the same way unless told to use threads).
                    let mut buf = vec![0; (*len).min(READ_CHUNK) as usize];
                    let read = match file.read_at(&mut buf, *offset) {
                        Ok(0) => {
                            return Poll::Ready(Some(Err(
                                "the file shrank while it was being sent".into(),
                            )));
                        }
                        Ok(n) => n,
                        Err(e) => return Poll::Ready(Some(Err(e.into()))),
                    };
                    buf.truncate(read);
                    *offset += read as u64;
                    *len -= read as u64;
                    Bytes::from(buf)
                }
            };
            this.remaining = this.remaining.saturating_sub(chunk.len() as u64);
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
