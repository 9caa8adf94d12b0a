//! What every handler writes a response with: the status line and headers (with
//! condo's own), how the body is framed, the site's own headers, and the access-log
//! line. Kept apart from the connection loop (`conn`), which calls the handlers, so
//! the handlers need not import it back.

use super::{SiteState, access_log};
use crate::http::head::Version;
use crate::http::{self, SERVER_NAME};

/// Whether `host` (normalised) is the site's name or one of its aliases.
pub(super) fn serves_host(site: &SiteState, host: &str) -> bool {
    site.config.name == host || site.config.aliases.iter().any(|a| a == host)
}

/// Headers every response of the site gets: HSTS on HTTPS.
pub(super) fn site_headers(site: &SiteState, secure: bool) -> Option<(&'static str, &str)> {
    site.config
        .hsts
        .as_deref()
        .filter(|_| secure)
        .map(|v| ("Strict-Transport-Security", v))
}

/// Count a request for accounting and write its access log line.
pub(super) fn record_request(site: &SiteState, entry: &access_log::Entry<'_>, received: u64) {
    site.counters.request(entry.status, received, entry.bytes);
    if site.access_log.get().is_some() {
        site.access_log.write(access_log::format(entry).as_bytes());
    }
}

/// How a response body is delimited on the wire.
#[derive(Clone, Copy)]
pub(super) enum Framing {
    Length(u64),
    Chunked,
    /// HTTP/1.0 without a length: the end of the body is the end of the connection.
    UntilClose,
    /// No body follows (HEAD, 204, 304); the length a GET would have had, if known.
    HeadOnly(Option<u64>),
}

/// The status line and headers of a response, with condo's own headers added.
pub(super) fn response_head(
    status: u16,
    reason: &str,
    headers: &[(&str, &str)],
    framing: Framing,
    keep_alive: bool,
    version: Version,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {status} {reason}\r\nServer: {SERVER_NAME}\r\nDate: {}\r\n",
            http::http_date()
        )
        .as_bytes(),
    );
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) | Framing::HeadOnly(Some(n)) if status != 304 && status != 204 => {
            out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes())
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        _ => {}
    }
    match (keep_alive, version) {
        (false, _) => out.extend_from_slice(b"Connection: close\r\n"),
        (true, Version::Http10) => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        (true, Version::Http11) => {}
    }
    out.extend_from_slice(b"\r\n");
    out
}
