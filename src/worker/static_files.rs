//! Serving one site's static files, inside the tenant's worker and with the tenant's
//! own permissions.
//!
//! Every lookup goes through `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` on the
//! site root, so the kernel, not string checks, keeps a request (or a symlink planted
//! by the tenant) from reaching anything outside the root. Everything about a file is
//! then learned from the opened descriptor, never from its path again, so a rename
//! between the check and the use cannot swap in another file.
//!
//! The caller writes the status line, `Date`, `Server`, `Content-Length` (from
//! [`Response::content_length`]) and `Connection`; a [`Response`] carries every other
//! header.

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, utf8_percent_encode};
use rustix::fs::{Dir, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use crate::http::path;

/// Files up to this size are read into memory so the writer can send head and body in
/// one write; larger ones go out with sendfile.
const SMALL_FILE: u64 = 16 * 1024;

/// Bodies smaller than this are never compressed (nor looked for as `.gz`/`.br`
/// siblings): the saving would be a few bytes, the cost a syscall or a compressor.
pub const COMPRESS_MIN: u64 = 1024;

/// On-the-fly compression reads the whole file into memory; a larger file goes out
/// as it is (with sendfile) unless it has a precompressed sibling.
pub const COMPRESS_MAX: u64 = 4 * 1024 * 1024;

/// More ranges than this in one request are not honoured (see [`parse_ranges`]).
const MAX_RANGES: usize = 16;

/// The latest moment `httpdate` can format (9999-12-31T23:59:59Z); it panics past it.
const MAX_HTTP_DATE_SECS: i64 = 253_402_300_799;

/// One site's document root and directory settings.
pub struct SiteFiles {
    /// The document root, opened `O_PATH | O_DIRECTORY` by the caller.
    pub root: OwnedFd,
    /// File names tried, in order, for a request ending in `/`.
    pub index: Vec<String>,
    /// List a directory that has none of the index files.
    pub autoindex: bool,
    /// Names the site refuses (`deny_hidden`, `deny_backup`): left out of listings,
    /// where they could only be links to a 404 that still give their names away.
    pub deny: path::Deny,
    /// Compress text files on the fly (site key `compress`); precompressed siblings
    /// are served whatever this says.
    pub compress: bool,
}

/// A content-coding condo can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Br,
    Gzip,
}

impl Encoding {
    /// The token in `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Br => "br",
            Encoding::Gzip => "gzip",
        }
    }

    /// The name suffix of a precompressed sibling.
    fn file_suffix(self) -> &'static str {
        match self {
            Encoding::Br => ".br",
            Encoding::Gzip => ".gz",
        }
    }

    /// Appended to the identity entity-tag's opaque part: each representation needs
    /// its own tag (RFC 9110 §8.8.3), or a cache could answer a conditional request
    /// for one with the other.
    fn etag_suffix(self) -> &'static str {
        match self {
            Encoding::Br => "-br",
            Encoding::Gzip => "-gz",
        }
    }
}

/// Compression still to be done on a response's body (a `Body::File` of the whole
/// identity file), off the async runtime: see [`finish`].
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    pub encoding: Encoding,
    /// The file version the body is, for the cache of compressed bodies.
    key: CacheKey,
    /// A HEAD: only the compressed length is wanted, for `Content-Length`.
    pub head: bool,
}

/// The request's header fields, looked up by case-insensitive name.
pub trait RequestHeaders {
    fn header(&self, name: &str) -> Option<&[u8]>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Other,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Every header but `Date`, `Server`, `Content-Length` and `Connection`.
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
    /// Set on responses to HEAD only: `body` is then [`Body::Empty`] and this is the
    /// length the body of the same GET would have had, which is what HEAD's
    /// `Content-Length` must announce. Use [`Response::content_length`] rather than
    /// reading it directly.
    pub head_length: Option<u64>,
    /// Set when the body must still be compressed ([`finish`]) before it is sent;
    /// the headers already describe the compressed representation.
    pub pending: Option<Pending>,
}

impl Response {
    /// The value for `Content-Length`: the body's length, or for HEAD the length the
    /// GET's body would have had. (The caller omits the field on 304 and 204.)
    pub fn content_length(&self) -> u64 {
        self.head_length.unwrap_or_else(|| self.body.len())
    }

    /// The first header of that (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
pub enum Body {
    /// No body: 304, and every response to HEAD (see [`Response::head_length`]).
    Empty,
    /// Generated pages, and whole files of at most 16 KiB.
    Bytes(Vec<u8>),
    /// `file[offset..offset + len]`, to be sent with sendfile.
    File { file: File, offset: u64, len: u64 },
    /// multipart/byteranges: for each part its `head` bytes then
    /// `file[offset..offset + len]`, and after the last part the `trailer` bytes.
    Multipart {
        file: File,
        parts: Vec<Part>,
        trailer: Vec<u8>,
    },
}

/// One part of a multipart/byteranges body.
#[derive(Debug)]
pub struct Part {
    /// The delimiter and the part's header fields, up to and including the blank line.
    pub head: Vec<u8>,
    pub offset: u64,
    pub len: u64,
}

impl Body {
    /// The number of bytes the body puts on the wire.
    pub fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(bytes) => bytes.len() as u64,
            Body::File { len, .. } => *len,
            Body::Multipart { parts, trailer, .. } => {
                parts
                    .iter()
                    .map(|p| p.head.len() as u64 + p.len)
                    .sum::<u64>()
                    + trailer.len() as u64
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Answer a GET or HEAD for `raw_path` (percent-encoded, without the query) of `site`.
pub fn serve(
    site: &SiteFiles,
    method: Method,
    raw_path: &str,
    query: Option<&str>,
    headers: &dyn RequestHeaders,
) -> Response {
    let path = path::normalize(raw_path);
    let path = path.as_deref().map_err(|_| 400);
    answer(site, method, path, query, headers, true)
}

/// [`serve`] for a path already normalised (decoded: it is never decoded again).
/// `index`: a directory's index files are still to be looked for; `false` when the
/// caller looked already ([`find_index`]) and found none, so the directory is listed
/// or refused — an index file that appeared since is not served without its route.
pub fn serve_path(
    site: &SiteFiles,
    method: Method,
    path: &str,
    query: Option<&str>,
    headers: &dyn RequestHeaders,
    index: bool,
) -> Response {
    answer(site, method, Ok(path), query, headers, index)
}

/// `path`: normalised, or the status that refuses it.
fn answer(
    site: &SiteFiles,
    method: Method,
    path: Result<&str, u16>,
    query: Option<&str>,
    headers: &dyn RequestHeaders,
    index: bool,
) -> Response {
    match method {
        Method::Get => serve_get(site, method, path, query, headers, index),
        // HEAD is computed as the GET it mirrors (minus Range), so its headers cannot
        // drift from GET's; only then is the body dropped.
        Method::Head => {
            let mut response = serve_get(site, method, path, query, headers, index);
            // A body still to be compressed stays for [`finish`], which needs it to
            // learn the length and then drops it.
            if response.pending.is_none() {
                response.head_length = Some(response.body.len());
                response.body = Body::Empty;
            }
            response
        }
        Method::Other => {
            let mut response = error_response(405);
            response.headers.push(("Allow", "GET, HEAD".to_string()));
            response
        }
    }
}

/// A small HTML page for an error (or any other status without content of its own).
pub fn error_response(status: u16) -> Response {
    let reason = reason(status);
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>{status} {reason}</title></head>\
         <body><h1>{status} {reason}</h1><hr><p>condo</p></body></html>\n"
    );
    Response {
        status,
        headers: vec![
            ("Content-Type", "text/html; charset=utf-8".to_string()),
            ("X-Content-Type-Options", "nosniff".to_string()),
        ],
        body: Body::Bytes(body.into_bytes()),
        head_length: None,
        pending: None,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        412 => "Precondition Failed",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn serve_get(
    site: &SiteFiles,
    method: Method,
    path: Result<&str, u16>,
    query: Option<&str>,
    headers: &dyn RequestHeaders,
    index: bool,
) -> Response {
    let path = match path {
        Ok(path) => path,
        Err(status) => return error_response(status),
    };
    let (fd, meta) = match open_target(&site.root, path) {
        Ok(target) => target,
        Err(status) => return error_response(status),
    };
    match meta.kind {
        FileType::RegularFile => serve_file(site, fd, &meta, path, method, headers),
        FileType::Directory if !path.ends_with('/') => redirect_to_dir(path, query),
        FileType::Directory => serve_directory(site, fd, path, method, headers, index),
        // FIFOs, sockets and devices: nothing a web server should read from.
        _ => error_response(403),
    }
}

/// The facts about an opened file that responses are built from.
struct Meta {
    kind: FileType,
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: u32,
}

// `Stat`'s field types differ between architectures (`st_mtime_nsec` is u32 on 32-bit
// targets, u64 on 64-bit ones), so on some targets these conversions are identities.
#[allow(clippy::useless_conversion)]
fn meta_of(stat: &Stat) -> Meta {
    Meta {
        kind: FileType::from_raw_mode(stat.st_mode),
        dev: u64::from(stat.st_dev),
        ino: u64::from(stat.st_ino),
        size: u64::try_from(stat.st_size).unwrap_or(0),
        mtime: i64::from(stat.st_mtime),
        mtime_nsec: u32::try_from(stat.st_mtime_nsec).unwrap_or(0),
    }
}

/// `path` (normalized, starting with `/`) as the relative name openat2 wants. A
/// trailing slash is kept so that the kernel answers ENOTDIR for `/file/`.
fn relative(path: &str) -> &str {
    match &path[1..] {
        "" => ".",
        rel => rel,
    }
}

fn openat2_beneath(root: &OwnedFd, path: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(
            root,
            relative(path),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            // EAGAIN: a concurrent rename elsewhere on the system kept the kernel from
            // proving that a ".." stayed beneath the root; the lookup may simply be
            // repeated.
            Err(Errno::AGAIN | Errno::INTR) if tries < 8 => tries += 1,
            other => return other,
        }
    }
}

/// Open what `path` names beneath `root`, or say which status answers the request.
fn open_target(root: &OwnedFd, path: &str) -> Result<(OwnedFd, Meta), u16> {
    // NONBLOCK so that opening a FIFO cannot hang the worker; NOCTTY so that a
    // terminal device can never become the worker's controlling terminal.
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = match openat2_beneath(root, path, flags) {
        Ok(fd) => fd,
        // A directory the tenant may search but not read (execute without read
        // permission) must still serve its index file; only its listing is forbidden.
        Err(Errno::ACCESS) => {
            openat2_beneath(root, path, OFlags::PATH | OFlags::DIRECTORY).map_err(|_| 403u16)?
        }
        Err(e) => return Err(errno_status(e)),
    };
    let stat = rustix::fs::fstat(&fd).map_err(errno_status)?;
    Ok((fd, meta_of(&stat)))
}

fn errno_status(e: Errno) -> u16 {
    match e {
        Errno::NOENT | Errno::NOTDIR | Errno::NAMETOOLONG => 404,
        Errno::ACCESS | Errno::PERM => 403,
        // Escape attempts (a ".." or a symlink leading out, a magic link) look like a
        // missing file, so a probe learns nothing about what lies outside the root.
        Errno::XDEV | Errno::LOOP => 404,
        // A socket, or a device without a driver: it exists but is no file to serve.
        Errno::NXIO | Errno::NODEV => 403,
        // Out of descriptors or memory, or a lease held by another process: transient.
        Errno::MFILE | Errno::NFILE | Errno::NOMEM | Errno::AGAIN => 503,
        _ => 500,
    }
}

/// Bytes escaped in a `Location` path rebuilt from a decoded path: `%` must be escaped
/// again, and so must `\`, which browsers read as `/` (so `/\host` would become a
/// redirect to another site).
const LOCATION_PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// The query is still encoded (its `%` escapes stay); only bytes that could never be
/// sent in a header value or a URI are escaped.
const LOCATION_QUERY: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'`');

fn redirect_to_dir(path: &str, query: Option<&str>) -> Response {
    let mut location = utf8_percent_encode(path, LOCATION_PATH).to_string();
    location.push('/');
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        location.push('?');
        location.extend(utf8_percent_encode(q, LOCATION_QUERY));
    }
    let mut response = error_response(301);
    response.headers.push(("Location", location));
    response
}

/// The index file a request for directory `path` (normalised, ending in `/`) names:
/// the first of the site's index names that exists and is not a directory (a FIFO or
/// an unreadable file counts: serving it answers with its error). `None`: there is
/// none, or `path` is no directory.
/// Whether `path` is missing from the tree, so that a front controller (`fallback`)
/// answers it. Only a missing name counts: whatever exists (a file, a directory, a
/// file with more path after it, or a name refused for its permissions or where it
/// leads) is the handler's to answer, as Apache's `!-f`/`!-d` decide. `O_PATH`: no
/// file is opened, so no FIFO can block.
pub fn is_missing(site: &SiteFiles, path: &str) -> bool {
    matches!(
        openat2_beneath(&site.root, path, OFlags::PATH),
        Err(Errno::NOENT)
    )
}

pub fn find_index(site: &SiteFiles, path: &str) -> Option<String> {
    site.index.iter().find_map(|name| {
        let candidate = format!("{path}{name}");
        match open_target(&site.root, &candidate) {
            Ok((_, meta)) if meta.kind == FileType::Directory => None,
            Err(404) => None,
            _ => Some(candidate),
        }
    })
}

fn serve_directory(
    site: &SiteFiles,
    dir: OwnedFd,
    path: &str,
    method: Method,
    headers: &dyn RequestHeaders,
    index: bool,
) -> Response {
    let names: &[String] = if index { &site.index } else { &[] };
    for name in names {
        let candidate = format!("{path}{name}");
        match open_target(&site.root, &candidate) {
            Ok((fd, meta)) => match meta.kind {
                FileType::RegularFile => {
                    return serve_file(site, fd, &meta, &candidate, method, headers);
                }
                // A directory called "index.html" is not an index file.
                FileType::Directory => continue,
                _ => return error_response(403),
            },
            Err(404) => continue,
            Err(status) => return error_response(status),
        }
    }
    if !site.autoindex {
        return error_response(403);
    }
    match listing(&site.root, &dir, path, site.deny) {
        Ok(html) => Response {
            status: 200,
            headers: vec![
                ("Content-Type", "text/html; charset=utf-8".to_string()),
                ("X-Content-Type-Options", "nosniff".to_string()),
            ],
            body: Body::Bytes(html),
            head_length: None,
            pending: None,
        },
        Err(status) => error_response(status),
    }
}

struct Entry {
    name: String,
    is_dir: bool,
    size: u64,
    mtime: i64,
}

/// Bytes escaped in a listing's hrefs: all but RFC 3986's unreserved ones, `:` included,
/// so that a file called `javascript:alert(1)` cannot become a link with a scheme.
const HREF: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The HTML listing of directory `dir`, found at `path` (ending in `/`).
///
/// Shown are only entries a request could fetch: names starting with `.` are left out
/// (as nginx does: `.git`, `.htaccess` and the like are rarely meant to be browsed),
/// and so are names that are not UTF-8 or hold control bytes (no request path can
/// name them), symlinks that do not resolve beneath the root, and anything but
/// directories and regular files.
fn listing(root: &OwnedFd, dir: &OwnedFd, path: &str, deny: path::Deny) -> Result<Vec<u8>, u16> {
    // `dir` may be an O_PATH descriptor (see `open_target`); reading entries needs a
    // real one, and opening "." relative to it follows no link.
    let readable = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno_status)?;
    let mut entries = Vec::new();
    for entry in Dir::new(readable).map_err(errno_status)? {
        let entry = entry.map_err(errno_status)?;
        let Ok(name) = std::str::from_utf8(entry.file_name().to_bytes()) else {
            continue;
        };
        if name.starts_with('.')
            || name.bytes().any(|b| b < 0x20 || b == 0x7f)
            || (deny.backup && path::is_backup_name(name))
        {
            continue;
        }
        let Ok(fd) = openat2_beneath(root, &format!("{path}{name}"), OFlags::PATH) else {
            continue;
        };
        let Ok(stat) = rustix::fs::fstat(&fd) else {
            continue;
        };
        let meta = meta_of(&stat);
        let is_dir = match meta.kind {
            FileType::Directory => true,
            FileType::RegularFile => false,
            _ => continue,
        };
        entries.push(Entry {
            name: name.to_string(),
            is_dir,
            size: meta.size,
            mtime: meta.mtime,
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));

    let title = html_escape(path);
    let mut html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n\
         <body><h1>Index of {title}</h1><hr>\n<table>\n\
         <tr><th>Name</th><th>Last modified</th><th>Size</th></tr>\n"
    );
    if path != "/" {
        html.push_str("<tr><td><a href=\"../\">../</a></td><td></td><td></td></tr>\n");
    }
    for e in &entries {
        let slash = if e.is_dir { "/" } else { "" };
        let size = if e.is_dir {
            "-".to_string()
        } else {
            e.size.to_string()
        };
        let mtime = http_date(e.mtime).unwrap_or_else(|| "-".to_string());
        html.push_str(&format!(
            "<tr><td><a href=\"{href}{slash}\">{name}{slash}</a></td><td>{mtime}</td><td>{size}</td></tr>\n",
            href = utf8_percent_encode(&e.name, HREF),
            name = html_escape(&e.name),
        ));
    }
    html.push_str("</table><hr></body></html>\n");
    Ok(html.into_bytes())
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `secs` since the epoch as an HTTP date, if `httpdate` can represent it (it panics
/// before 1970 and after 9999).
fn http_date(secs: i64) -> Option<String> {
    let secs = u64::try_from(secs)
        .ok()
        .filter(|&s| s <= MAX_HTTP_DATE_SECS as u64)?;
    Some(httpdate::fmt_http_date(
        UNIX_EPOCH + Duration::from_secs(secs),
    ))
}

fn parse_http_date(value: &[u8]) -> Option<u64> {
    let date = httpdate::parse_http_date(std::str::from_utf8(value).ok()?.trim()).ok()?;
    Some(date.duration_since(UNIX_EPOCH).ok()?.as_secs())
}

/// A file's validators, as sent and as compared.
struct Validators {
    /// The entity-tag's opaque part, without quotes.
    etag: String,
    /// Last-Modified in seconds since the epoch; `None` when the file has no date an
    /// HTTP date can express.
    modified: Option<u64>,
    /// Whether `modified` may serve as a strong validator (RFC 9110 §8.8.2.2): only
    /// if the file was last changed at least a second ago, so that a later change
    /// cannot share its second.
    modified_is_strong: bool,
}

impl Validators {
    fn of(meta: &Meta, now: SystemTime) -> Validators {
        let mtime_ns = i128::from(meta.mtime) * 1_000_000_000 + i128::from(meta.mtime_nsec);
        let now_ns = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX));
        let now_secs = u64::try_from(now_ns / 1_000_000_000).unwrap_or(0);
        // RFC 9110 §8.8.2.1: a date in the future is replaced by the current time.
        let modified = u64::try_from(meta.mtime)
            .ok()
            .map(|m| m.min(now_secs))
            .filter(|&m| m <= MAX_HTTP_DATE_SECS as u64);
        Validators {
            etag: format!("{:x}-{:x}-{:x}", meta.ino, meta.size, mtime_ns),
            modified,
            modified_is_strong: now_ns - mtime_ns >= 1_000_000_000,
        }
    }

    /// The validators of an encoded representation of the same file.
    fn with_suffix(mut self, suffix: &str) -> Validators {
        self.etag.push_str(suffix);
        self
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![("ETag", format!("\"{}\"", self.etag))];
        if let Some(date) = self.modified.and_then(|m| http_date(m as i64)) {
            headers.push(("Last-Modified", date));
        }
        headers
    }
}

/// An entity-tag as received: (weak, opaque part without quotes).
type EntityTag<'a> = (bool, &'a [u8]);

enum EntityTags<'a> {
    Any,
    List(Vec<EntityTag<'a>>),
}

/// Parse `"*"` or a comma-separated list of entity-tags. Commas may appear inside an
/// opaque tag, so the list is scanned rather than split.
fn parse_entity_tags(value: &[u8]) -> Option<EntityTags<'_>> {
    let value = value.trim_ascii();
    if value == b"*" {
        return Some(EntityTags::Any);
    }
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_ascii_start();
        while let Some(r) = rest.strip_prefix(b",") {
            rest = r.trim_ascii_start();
        }
        if rest.is_empty() {
            break;
        }
        let (tag, r) = parse_entity_tag(rest)?;
        tags.push(tag);
        rest = r.trim_ascii_start();
        if !(rest.is_empty() || rest.starts_with(b",")) {
            return None;
        }
    }
    Some(EntityTags::List(tags))
}

fn parse_entity_tag(value: &[u8]) -> Option<(EntityTag<'_>, &[u8])> {
    let (weak, rest) = match value.strip_prefix(b"W/") {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let rest = rest.strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let opaque = &rest[..end];
    if opaque.iter().any(|&b| b < 0x21 || b == 0x7f) {
        return None;
    }
    Some(((weak, opaque), &rest[end + 1..]))
}

/// Whether the header's tags match ours, the strong way (If-Match, If-Range: both
/// strong and equal) or the weak way (If-None-Match: equal opaque parts). A header
/// that does not parse matches nothing.
fn tags_match(value: &[u8], ours: &str, strong: bool) -> bool {
    match parse_entity_tags(value) {
        Some(EntityTags::Any) => true,
        Some(EntityTags::List(tags)) => tags
            .iter()
            .any(|&(weak, opaque)| opaque == ours.as_bytes() && !(strong && weak)),
        None => false,
    }
}

enum Precondition {
    Proceed,
    Failed,
    NotModified,
}

/// RFC 9110 §13.2.2, steps 1 to 4, for GET and HEAD.
fn evaluate_preconditions(headers: &dyn RequestHeaders, v: &Validators) -> Precondition {
    if let Some(value) = headers.header("if-match") {
        if !tags_match(value, &v.etag, true) {
            return Precondition::Failed;
        }
    } else if let (Some(since), Some(modified)) = (
        headers
            .header("if-unmodified-since")
            .and_then(parse_http_date),
        v.modified,
    ) && modified > since
    {
        return Precondition::Failed;
    }
    if let Some(value) = headers.header("if-none-match") {
        if tags_match(value, &v.etag, false) {
            return Precondition::NotModified;
        }
    } else if let (Some(since), Some(modified)) = (
        headers
            .header("if-modified-since")
            .and_then(parse_http_date),
        v.modified,
    ) && modified <= since
    {
        return Precondition::NotModified;
    }
    Precondition::Proceed
}

/// RFC 9110 §13.1.5: whether the Range may be honoured. A date only matches an exact,
/// strong Last-Modified; an entity-tag only a strong, equal one.
fn if_range_matches(value: &[u8], v: &Validators) -> bool {
    let value = value.trim_ascii();
    if value.starts_with(b"\"") || value.starts_with(b"W/") {
        return match parse_entity_tag(value) {
            Some(((weak, opaque), rest)) => !weak && rest.is_empty() && opaque == v.etag.as_bytes(),
            None => false,
        };
    }
    match (parse_http_date(value), v.modified) {
        (Some(date), Some(modified)) => v.modified_is_strong && date == modified,
        _ => false,
    }
}

fn content_type(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    match mime_guess::from_path(name).first() {
        Some(mime) => {
            let essence = mime.essence_str();
            let textual = mime.type_() == mime_guess::mime::TEXT
                || essence == "application/javascript"
                || essence == "application/json";
            if textual {
                format!("{essence}; charset=utf-8")
            } else {
                essence.to_string()
            }
        }
        None => "application/octet-stream".to_string(),
    }
}

/// Whether a type is worth compressing: text, and the structured text formats that
/// are not labelled `text/*`. Already-compressed formats (images, archives, fonts in
/// WOFF) would only cost CPU.
fn compressible(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.starts_with("text/")
        || matches!(
            essence,
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "application/xhtml+xml"
                | "application/rss+xml"
                | "application/atom+xml"
                | "application/manifest+json"
                | "application/wasm"
                | "image/svg+xml"
                | "image/x-icon"
                | "image/vnd.microsoft.icon"
                | "font/ttf"
                | "font/otf"
        )
}

/// The codings condo can send that `Accept-Encoding` allows, best first (RFC 9110
/// §12.5.3): by q-value, `*` standing for a coding not named, `q=0` refusing it; on a
/// tie br, which compresses text better. An empty or unparsable value allows none.
fn accepted_encodings(value: &[u8]) -> [Option<Encoding>; 2] {
    let (mut br, mut gzip, mut star) = (None, None, None);
    for element in value.split(|&b| b == b',') {
        let mut params = element.split(|&b| b == b';');
        let coding = params.next().unwrap_or_default().trim_ascii();
        let mut q = Some(1000u16);
        for param in params {
            let param = param.trim_ascii();
            if let Some(v) = param
                .strip_prefix(b"q=")
                .or_else(|| param.strip_prefix(b"Q="))
            {
                q = parse_qvalue(v.trim_ascii());
            }
        }
        // A q-value that does not parse refuses rather than guesses.
        let q = q.unwrap_or(0);
        let slot = if coding.eq_ignore_ascii_case(b"br") {
            &mut br
        } else if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip") {
            &mut gzip
        } else if coding == b"*" {
            &mut star
        } else {
            continue;
        };
        // The same coding twice: the most favourable mention wins.
        *slot = Some(slot.map_or(q, |old: u16| old.max(q)));
    }
    let br = br.or(star).unwrap_or(0);
    let gzip = gzip.or(star).unwrap_or(0);
    let br = (br > 0).then_some((br, Encoding::Br));
    let gzip = (gzip > 0).then_some((gzip, Encoding::Gzip));
    match (br, gzip) {
        (Some(b), Some(g)) if g.0 > b.0 => [Some(g.1), Some(b.1)],
        (b, g) => {
            let mut out = [b.map(|b| b.1), g.map(|g| g.1)];
            if out[0].is_none() {
                out.swap(0, 1);
            }
            out
        }
    }
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
fn parse_qvalue(v: &[u8]) -> Option<u16> {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(dot) => (&v[..dot], &v[dot + 1..]),
        None => (v, &b""[..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths = 0u16;
    for i in 0..3 {
        thousandths = thousandths * 10 + frac.get(i).map_or(0, |d| u16::from(d - b'0'));
    }
    match int {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The representation a request for a compressible file gets.
enum Variant {
    Identity,
    /// A precompressed `FILE.br` / `FILE.gz`, opened and checked.
    Sibling(OwnedFd, Meta, Encoding),
    /// Compressed by [`finish`].
    OnTheFly(Encoding),
}

/// Choose the representation: a sibling in the client's order of preference, else
/// compression on the fly with its favourite coding when the site allows it.
fn choose_variant(
    site: &SiteFiles,
    meta: &Meta,
    path: &str,
    headers: &dyn RequestHeaders,
) -> Variant {
    // Ranges are served on the identity representation only: a range of a
    // compression nobody stores could not be honoured consistently, and If-Range
    // keeps comparing the identity validators.
    if headers.header("range").is_some() {
        return Variant::Identity;
    }
    let Some(accept) = headers.header("accept-encoding") else {
        return Variant::Identity;
    };
    let encodings = accepted_encodings(accept);
    for encoding in encodings.into_iter().flatten() {
        let sibling = format!("{path}{}", encoding.file_suffix());
        // The same openat2 beneath the root as the file itself: a sibling that is a
        // symlink leading out, a FIFO or a directory is no sibling.
        if let Ok((fd, sib)) = open_target(&site.root, &sibling)
            && sib.kind == FileType::RegularFile
            // Older than the file: written for a previous version of it.
            && (sib.mtime, sib.mtime_nsec) >= (meta.mtime, meta.mtime_nsec)
        {
            return Variant::Sibling(fd, sib, encoding);
        }
    }
    match encodings[0] {
        Some(encoding) if site.compress && meta.size <= COMPRESS_MAX => Variant::OnTheFly(encoding),
        _ => Variant::Identity,
    }
}

fn serve_file(
    site: &SiteFiles,
    fd: OwnedFd,
    meta: &Meta,
    path: &str,
    method: Method,
    headers: &dyn RequestHeaders,
) -> Response {
    // Checked in this order, and on mime_guess's static string, so that the small
    // files of the fast path pay nothing (no allocation) for it.
    let compressible = meta.size >= COMPRESS_MIN
        && mime_guess::from_path(path.rsplit('/').next().unwrap_or(path))
            .first_raw()
            .is_some_and(compressible);
    let variant = if compressible {
        choose_variant(site, meta, path, headers)
    } else {
        Variant::Identity
    };
    let now = SystemTime::now();
    let (validators, encoding) = match &variant {
        Variant::Identity => (Validators::of(meta, now), None),
        Variant::Sibling(_, sib, encoding) => (Validators::of(sib, now), Some(*encoding)),
        Variant::OnTheFly(encoding) => (Validators::of(meta, now), Some(*encoding)),
    };
    let validators = match encoding {
        Some(encoding) => validators.with_suffix(encoding.etag_suffix()),
        None => validators,
    };
    // The response differs with Accept-Encoding whichever representation this one
    // is, so every response of a compressible file says so, or a shared cache could
    // hand a gzip body to a client that cannot decode it.
    let vary = || ("Vary", "Accept-Encoding".to_string());
    match evaluate_preconditions(headers, &validators) {
        Precondition::Proceed => {}
        Precondition::Failed => return error_response(412),
        Precondition::NotModified => {
            let mut out = validators.headers();
            if compressible {
                out.push(vary());
            }
            return Response {
                status: 304,
                headers: out,
                body: Body::Empty,
                head_length: None,
                pending: None,
            };
        }
    }
    let content_type = content_type(path);
    let mut out = vec![
        ("Content-Type", content_type.clone()),
        ("X-Content-Type-Options", "nosniff".to_string()),
    ];
    match encoding {
        // Byte ranges are offered on the identity representation only.
        None => out.push(("Accept-Ranges", "bytes".to_string())),
        Some(encoding) => out.push(("Content-Encoding", encoding.token().to_string())),
    }
    if compressible {
        out.push(vary());
    }
    out.extend(validators.headers());
    let (fd, size) = match variant {
        Variant::Identity => (fd, meta.size),
        Variant::Sibling(sib_fd, sib, _) => (sib_fd, sib.size),
        Variant::OnTheFly(encoding) => {
            let pending = Pending {
                encoding,
                key: CacheKey {
                    dev: meta.dev,
                    ino: meta.ino,
                    size: meta.size,
                    mtime: meta.mtime,
                    mtime_nsec: meta.mtime_nsec,
                    encoding,
                },
                head: method == Method::Head,
            };
            let body = Body::File {
                file: File::from(fd),
                offset: 0,
                len: meta.size,
            };
            return Response {
                status: 200,
                headers: out,
                body,
                head_length: None,
                pending: Some(pending),
            };
        }
    };
    let file = File::from(fd);

    let range = match (method, headers.header("range")) {
        (Method::Get, Some(range))
            if headers
                .header("if-range")
                .is_none_or(|v| if_range_matches(v, &validators)) =>
        {
            parse_ranges(range, size)
        }
        _ => Ranges::Ignore,
    };
    match range {
        Ranges::Ignore => {}
        Ranges::Unsatisfiable => {
            let mut response = error_response(416);
            response
                .headers
                .push(("Content-Range", format!("bytes */{size}")));
            return response;
        }
        Ranges::Satisfiable(ranges) => {
            let body = if let [(offset, len)] = ranges[..] {
                out.push(("Content-Range", content_range(offset, len, size)));
                Body::File { file, offset, len }
            } else {
                let boundary = boundary(meta);
                out[0].1 = format!("multipart/byteranges; boundary={boundary}");
                multipart(file, &ranges, size, &content_type, &boundary)
            };
            return Response {
                status: 206,
                headers: out,
                body,
                head_length: None,
                pending: None,
            };
        }
    }

    let body = if method == Method::Get && size <= SMALL_FILE {
        let mut bytes = vec![0; size as usize];
        match file.read_exact_at(&mut bytes, 0) {
            Ok(()) => Body::Bytes(bytes),
            // The file shrank since fstat: the headers above describe a version that
            // no longer exists, so ask the client to come back.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return error_response(503),
            Err(_) => return error_response(500),
        }
    } else {
        Body::File {
            file,
            offset: 0,
            len: size,
        }
    };
    Response {
        status: 200,
        headers: out,
        body,
        head_length: None,
        pending: None,
    }
}

/// Compressions running at once in this worker (this tenant): the rest wait, so a
/// burst of requests for large text files queues instead of taking every core and
/// holding a copy of each file in memory.
static COMPRESSING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Do the compression a response still owes ([`Response::pending`]) on a blocking
/// thread; any other response is returned as it is, without a hop.
pub async fn finish(response: Response) -> Response {
    let Some(pending) = response.pending else {
        return response;
    };
    if let Some(hit) = cache_get(&pending.key) {
        return with_compressed(response, &hit);
    }
    let Ok(_permit) = COMPRESSING.acquire().await else {
        return error_response(503);
    };
    tokio::task::spawn_blocking(move || compress_now(response))
        .await
        .unwrap_or_else(|_| error_response(500))
}

/// gzip level 6 and brotli quality 5: most of the saving for a small part of the
/// CPU of the highest levels, which are for siblings made ahead of time.
const GZIP_LEVEL: u32 = 6;
const BROTLI_QUALITY: i32 = 5;

/// [`finish`]'s blocking part: read the file, compress it, make it the body (or, for
/// HEAD, only its length).
pub fn compress_now(mut response: Response) -> Response {
    let Some(pending) = response.pending.take() else {
        return response;
    };
    let Body::File { file, offset, len } = std::mem::replace(&mut response.body, Body::Empty)
    else {
        return error_response(500);
    };
    let mut input = vec![0; len as usize];
    match file.read_exact_at(&mut input, offset) {
        Ok(()) => {}
        // Shrunk since fstat, as in serve_file.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return error_response(503),
        Err(_) => return error_response(500),
    }
    let compressed = match compress_bytes(&input, pending.encoding) {
        Ok(bytes) => bytes,
        Err(_) => return error_response(500),
    };
    cache_put(pending.key, &compressed);
    response.pending = Some(pending);
    with_compressed(response, &compressed)
}

/// `response` with its pending compression done: `compressed` as its body, or for a
/// HEAD only as its length.
fn with_compressed(mut response: Response, compressed: &[u8]) -> Response {
    let Some(pending) = response.pending.take() else {
        return response;
    };
    if pending.head {
        response.head_length = Some(compressed.len() as u64);
        response.body = Body::Empty;
    } else {
        response.body = Body::Bytes(compressed.to_vec());
    }
    response
}

/// A version of a file, as far as the ETag can tell versions apart, in one coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CacheKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: u32,
    encoding: Encoding,
}

/// Compressed bodies kept per worker (per tenant): a popular stylesheet is compressed
/// once, not on every request. Entries are found only through a descriptor the request
/// opened itself (same device, inode, size and mtime, as the ETag says), so a cached
/// body is never served for a file the request could not open, nor after a change.
const CACHE_BYTES: usize = 8 * 1024 * 1024;

struct Cache {
    map: std::collections::HashMap<CacheKey, std::sync::Arc<[u8]>>,
    /// Insertion order, oldest first: the first to go when the cache is full.
    order: std::collections::VecDeque<CacheKey>,
    bytes: usize,
}

static CACHE: std::sync::LazyLock<std::sync::Mutex<Cache>> = std::sync::LazyLock::new(|| {
    std::sync::Mutex::new(Cache {
        map: std::collections::HashMap::new(),
        order: std::collections::VecDeque::new(),
        bytes: 0,
    })
});

fn cache_get(key: &CacheKey) -> Option<std::sync::Arc<[u8]>> {
    let cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache.map.get(key).cloned()
}

fn cache_put(key: CacheKey, compressed: &[u8]) {
    // One body may take a quarter of the cache at most, so a few large files cannot
    // keep every other one out.
    if compressed.len() > CACHE_BYTES / 4 {
        return;
    }
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if cache.map.contains_key(&key) {
        return;
    }
    while cache.bytes + compressed.len() > CACHE_BYTES {
        let Some(old) = cache.order.pop_front() else {
            break;
        };
        if let Some(gone) = cache.map.remove(&old) {
            cache.bytes -= gone.len();
        }
    }
    cache.bytes += compressed.len();
    cache.order.push_back(key);
    cache.map.insert(key, std::sync::Arc::from(compressed));
}

fn compress_bytes(input: &[u8], encoding: Encoding) -> io::Result<Vec<u8>> {
    use std::io::Write;
    let capacity = input.len() / 3 + 64;
    match encoding {
        Encoding::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(capacity),
                flate2::Compression::new(GZIP_LEVEL),
            );
            encoder.write_all(input)?;
            encoder.finish()
        }
        Encoding::Br => {
            let mut out = Vec::with_capacity(capacity);
            let params = brotli::enc::BrotliEncoderParams {
                quality: BROTLI_QUALITY,
                lgwin: 22,
                ..Default::default()
            };
            brotli::BrotliCompress(&mut &input[..], &mut out, &params)?;
            Ok(out)
        }
    }
}

fn content_range(offset: u64, len: u64, size: u64) -> String {
    format!("bytes {}-{}/{size}", offset, offset + len - 1)
}

enum Ranges {
    /// No Range, or one to ignore: answer 200 with the whole file.
    Ignore,
    Unsatisfiable,
    /// (offset, length) pairs, in the order the client asked for them.
    Satisfiable(Vec<(u64, u64)>),
}

/// Parse a `Range` value against a file of `size` bytes (RFC 9110 §14.1.2).
///
/// A value that does not parse is ignored, as RFC 9110 allows. So, as a defence
/// against requests that make the server do or send far more than the file (the
/// "Apache killer", CVE-2011-3192, asked for the same bytes hundreds of times), is a
/// value with more than 16 ranges, with ranges that overlap, or whose lengths add up
/// to more than twice the file: the whole file is sent instead, which costs no more
/// than a plain GET. Refusing with 416 was the alternative, but a client that merely
/// asked clumsily would then get nothing. (Ranges that do not overlap can never add up
/// to more than the file; the length check is kept so the bound does not rest on the
/// overlap check alone.)
fn parse_ranges(value: &[u8], size: u64) -> Ranges {
    let Ok(value) = std::str::from_utf8(value) else {
        return Ranges::Ignore;
    };
    let Some((unit, set)) = value.trim().split_once('=') else {
        return Ranges::Ignore;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ranges::Ignore;
    }
    let specs: Vec<&str> = set
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if specs.is_empty() || specs.len() > MAX_RANGES {
        return Ranges::Ignore;
    }
    let mut ranges = Vec::with_capacity(specs.len());
    for spec in specs {
        let Some((first, last)) = spec.split_once('-') else {
            return Ranges::Ignore;
        };
        let range = if first.is_empty() {
            let Some(suffix) = parse_digits(last) else {
                return Ranges::Ignore;
            };
            (suffix > 0 && size > 0).then(|| {
                let len = suffix.min(size);
                (size - len, len)
            })
        } else {
            let Some(first) = parse_digits(first) else {
                return Ranges::Ignore;
            };
            let last = if last.is_empty() {
                u64::MAX
            } else {
                match parse_digits(last) {
                    Some(last) if last >= first => last,
                    _ => return Ranges::Ignore,
                }
            };
            (first < size).then(|| (first, last.min(size - 1) - first + 1))
        };
        ranges.extend(range);
    }
    if ranges.is_empty() {
        return Ranges::Unsatisfiable;
    }
    let total = ranges
        .iter()
        .fold(0u64, |sum, &(_, len)| sum.saturating_add(len));
    if total > size.saturating_mul(2) {
        return Ranges::Ignore;
    }
    let mut sorted = ranges.clone();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
        return Ranges::Ignore;
    }
    Ranges::Satisfiable(ranges)
}

/// Decimal digits only (no sign, no spaces); a number too large for u64 saturates,
/// which gives the right answer for a last position or suffix length past any file.
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

fn multipart(
    file: File,
    ranges: &[(u64, u64)],
    size: u64,
    content_type: &str,
    boundary: &str,
) -> Body {
    let parts = ranges
        .iter()
        .enumerate()
        .map(|(i, &(offset, len))| {
            // The CRLF before a delimiter belongs to the delimiter (RFC 2046 §5.1.1);
            // the first one needs none since the body starts with it.
            let lead = if i == 0 { "" } else { "\r\n" };
            let head = format!(
                "{lead}--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: {}\r\n\r\n",
                content_range(offset, len, size)
            );
            Part {
                head: head.into_bytes(),
                offset,
                len,
            }
        })
        .collect();
    Body::Multipart {
        file,
        parts,
        trailer: format!("\r\n--{boundary}--\r\n").into_bytes(),
    }
}

/// A boundary no file is likely to contain. `RandomState` is keyed randomly per
/// process, so mixing the time, the inode and a counter through it gives values that
/// a client cannot predict, without a dependency on a random number crate.
fn boundary(meta: &Meta) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let state = RandomState::new();
    let mut halves = [0u64; 2];
    for (salt, half) in halves.iter_mut().enumerate() {
        let mut hasher = state.build_hasher();
        hasher.write_usize(salt);
        hasher.write_u128(now);
        hasher.write_u64(meta.ino);
        hasher.write_u64(count);
        hasher.write_u32(std::process::id());
        *half = hasher.finish();
    }
    format!("condo-{:016x}{:016x}", halves[0], halves[1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::sync::mpsc;

    /// A site root and, beside it, a directory a request must never reach.
    struct Fixture {
        base: PathBuf,
        site: SiteFiles,
    }

    const SECRET: &[u8] = b"TOP SECRET outside the root";

    impl Fixture {
        fn new(tag: &str) -> Fixture {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let base = std::env::temp_dir().join(format!(
                "condo-static-{}-{}-{tag}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&base);
            std::fs::create_dir_all(base.join("site")).unwrap();
            std::fs::create_dir_all(base.join("outside")).unwrap();
            std::fs::write(base.join("outside/secret.txt"), SECRET).unwrap();
            let root = rustix::fs::open(
                base.join("site"),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .unwrap();
            Fixture {
                base,
                site: SiteFiles {
                    root,
                    index: vec!["index.html".to_string(), "index.htm".to_string()],
                    autoindex: false,
                    deny: path::Deny {
                        hidden: true,
                        backup: true,
                    },
                    compress: true,
                },
            }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.base.join("site").join(rel)
        }

        fn write(&self, rel: &str, contents: &[u8]) -> &Self {
            let path = self.path(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
            self
        }

        fn mkdir(&self, rel: &str) -> &Self {
            std::fs::create_dir_all(self.path(rel)).unwrap();
            self
        }

        fn symlink(&self, target: impl AsRef<Path>, rel: &str) -> &Self {
            std::os::unix::fs::symlink(target, self.path(rel)).unwrap();
            self
        }

        fn set_mtime(&self, rel: &str, secs: i64, nsecs: i64) {
            let ts = rustix::fs::Timespec {
                tv_sec: secs,
                tv_nsec: nsecs as _,
            };
            rustix::fs::utimensat(
                rustix::fs::CWD,
                self.path(rel),
                &rustix::fs::Timestamps {
                    last_access: ts,
                    last_modification: ts,
                },
                rustix::fs::AtFlags::empty(),
            )
            .unwrap();
        }

        fn request(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Response {
            serve(&self.site, method, path, None, &Headers::new(headers))
        }

        fn get(&self, path: &str) -> Response {
            self.request(Method::Get, path, &[])
        }

        fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Response {
            self.request(Method::Get, path, headers)
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            // Tests take permissions away; give them back first, or a failed test (as
            // a non-root user) would leave a directory nobody can remove.
            fn make_removable(dir: &Path) {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
                for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        make_removable(&entry.path());
                    }
                }
            }
            make_removable(&self.base);
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }

    struct Headers(Vec<(String, Vec<u8>)>);

    impl Headers {
        fn new(list: &[(&str, &str)]) -> Headers {
            Headers(
                list.iter()
                    .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                    .collect(),
            )
        }
    }

    impl RequestHeaders for Headers {
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.0
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_slice())
        }
    }

    fn read_range(file: &File, offset: u64, len: u64) -> Vec<u8> {
        let mut buf = vec![0; len as usize];
        file.read_exact_at(&mut buf, offset).unwrap();
        buf
    }

    /// The bytes a writer would put on the wire for this body.
    fn wire(response: &Response) -> Vec<u8> {
        let bytes = match &response.body {
            Body::Empty => Vec::new(),
            Body::Bytes(b) => b.clone(),
            Body::File { file, offset, len } => read_range(file, *offset, *len),
            Body::Multipart {
                file,
                parts,
                trailer,
            } => {
                let mut out = Vec::new();
                for p in parts {
                    out.extend_from_slice(&p.head);
                    out.extend(read_range(file, p.offset, p.len));
                }
                out.extend_from_slice(trailer);
                out
            }
        };
        assert_eq!(bytes.len() as u64, response.body.len());
        bytes
    }

    fn body_text(response: &Response) -> String {
        String::from_utf8(wire(response)).unwrap()
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn assert_no_secret(response: &Response) {
        let body = wire(response);
        assert!(
            !body.windows(SECRET.len()).any(|w| w == SECRET),
            "served the outside file"
        );
        assert!(
            !body.windows(5).any(|w| w == b"root:"),
            "served /etc/passwd"
        );
    }

    #[test]
    fn small_file_is_read_into_memory_with_all_headers() {
        let f = Fixture::new("small");
        f.write("hello.txt", b"hello, world\n");
        let r = f.get("/hello.txt");
        assert_eq!(r.status, 200);
        assert!(matches!(r.body, Body::Bytes(_)));
        assert_eq!(wire(&r), b"hello, world\n");
        assert_eq!(r.content_length(), 13);
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
        assert_eq!(r.header("Accept-Ranges"), Some("bytes"));
        let etag = r.header("ETag").unwrap();
        assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2);
        assert!(httpdate::parse_http_date(r.header("Last-Modified").unwrap()).is_ok());
        // Headers the caller writes are not duplicated here.
        for name in ["Content-Length", "Date", "Server", "Connection"] {
            assert!(r.header(name).is_none(), "{name}");
        }
    }

    #[test]
    fn sixteen_kib_is_the_limit_for_reading_into_memory() {
        let f = Fixture::new("limit");
        f.write("exact.bin", &pattern(16 * 1024));
        f.write("over.bin", &pattern(16 * 1024 + 1));
        let r = f.get("/exact.bin");
        assert!(matches!(r.body, Body::Bytes(_)));
        assert_eq!(wire(&r), pattern(16 * 1024));
        let r = f.get("/over.bin");
        assert_eq!(r.status, 200);
        match &r.body {
            Body::File { offset, len, .. } => assert_eq!((*offset, *len), (0, 16 * 1024 + 1)),
            other => panic!("expected Body::File, got {other:?}"),
        }
        assert_eq!(wire(&r), pattern(16 * 1024 + 1));
        assert_eq!(r.content_length(), 16 * 1024 + 1);
    }

    #[test]
    fn head_has_the_headers_and_length_of_get_without_a_body() {
        let f = Fixture::new("head");
        f.write("small.css", b"body{}");
        f.write("big.bin", &pattern(100_000));
        f.mkdir("dir");
        for path in ["/small.css", "/big.bin", "/missing", "/dir", "/%zz"] {
            let get = f.get(path);
            let head = f.request(Method::Head, path, &[]);
            assert_eq!(head.status, get.status, "{path}");
            assert_eq!(head.headers, get.headers, "{path}");
            assert!(matches!(head.body, Body::Empty), "{path}");
            assert_eq!(head.head_length, Some(get.body.len()), "{path}");
            assert_eq!(head.content_length(), get.content_length(), "{path}");
        }
        assert_eq!(
            f.request(Method::Head, "/big.bin", &[]).content_length(),
            100_000
        );
    }

    #[test]
    fn other_methods_get_405_with_allow() {
        let f = Fixture::new("405");
        f.write("a.txt", b"a");
        for path in ["/a.txt", "/missing", "/%zz"] {
            let r = f.request(Method::Other, path, &[]);
            assert_eq!(r.status, 405);
            assert_eq!(r.header("Allow"), Some("GET, HEAD"));
            assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
        }
    }

    #[test]
    fn bad_paths_get_400() {
        let f = Fixture::new("400");
        for path in [
            "/%zz",
            "/a%2fb",
            "/../outside/secret.txt",
            "/%00",
            "no-slash",
            "/%ff",
        ] {
            assert_eq!(f.get(path).status, 400, "{path}");
        }
    }

    #[test]
    fn missing_files_get_404() {
        let f = Fixture::new("404");
        f.write("file.txt", b"x");
        for path in [
            "/missing",
            "/file.txt/",
            "/file.txt/x",
            "/no/such/dir/",
            "/file.txtx",
        ] {
            let r = f.get(path);
            assert_eq!(r.status, 404, "{path}");
            assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
        }
        let long = format!("/{}", "a".repeat(300));
        assert_eq!(f.get(&long).status, 404);
    }

    #[test]
    fn symlinks_leading_out_of_the_root_are_404() {
        let f = Fixture::new("symlinks");
        let outside = f.base.join("outside");
        f.mkdir("sub");
        f.symlink("/etc/passwd", "passwd");
        f.symlink(outside.join("secret.txt"), "abs-secret.txt");
        f.symlink("../outside/secret.txt", "rel-secret.txt");
        f.symlink("../../outside/secret.txt", "sub/deep-secret.txt");
        f.symlink("../../outside", "sub/outside-dir");
        f.symlink(&outside, "abs-dir");
        f.symlink("../outside", "rel-dir");
        f.symlink("/proc/self/root/etc/passwd", "magic");
        for path in [
            "/passwd",
            "/abs-secret.txt",
            "/rel-secret.txt",
            "/sub/deep-secret.txt",
            "/sub/outside-dir/secret.txt",
            "/sub/outside-dir/",
            "/abs-dir/secret.txt",
            "/abs-dir/",
            "/rel-dir/secret.txt",
            "/rel-dir",
            "/magic",
        ] {
            let r = f.get(path);
            assert_eq!(r.status, 404, "{path}");
            assert_no_secret(&r);
        }
    }

    #[test]
    fn symlinks_that_stay_inside_the_root_are_followed() {
        let f = Fixture::new("inside");
        f.write("real/page.txt", b"inside");
        f.symlink("real/page.txt", "alias.txt");
        f.symlink("real", "alias-dir");
        f.mkdir("other");
        f.symlink("../real/page.txt", "other/up.txt");
        for path in ["/alias.txt", "/alias-dir/page.txt", "/other/up.txt"] {
            let r = f.get(path);
            assert_eq!(r.status, 200, "{path}");
            assert_eq!(wire(&r), b"inside");
        }
    }

    #[test]
    fn traversal_never_serves_the_outside_file() {
        let f = Fixture::new("traversal");
        f.write("sub/x.txt", b"x");
        for path in [
            "/../outside/secret.txt",
            "/sub/../../outside/secret.txt",
            "/%2e%2e/outside/secret.txt",
            "/sub/%2E%2E/%2e%2e/outside/secret.txt",
            "/%252e%252e/outside/secret.txt",
            "/..%2foutside%2fsecret.txt",
            "/..\\..\\outside\\secret.txt",
            "/sub/..\\..\\outside/secret.txt",
        ] {
            let r = f.get(path);
            assert!(r.status == 400 || r.status == 404, "{path}: {}", r.status);
            assert_no_secret(&r);
        }
        assert_eq!(f.get("/../outside/secret.txt").status, 400);
        assert_eq!(f.get("/%2e%2e/outside/secret.txt").status, 400);
        assert_eq!(f.get("/%252e%252e/outside/secret.txt").status, 404);
    }

    #[test]
    fn double_encoded_dots_name_a_literal_directory() {
        let f = Fixture::new("literal");
        f.write("%2e%2e/outside/secret.txt", b"decoy inside the root");
        let r = f.get("/%252e%252e/outside/secret.txt");
        assert_eq!(r.status, 200);
        assert_eq!(wire(&r), b"decoy inside the root");
    }

    #[test]
    fn backslashes_are_part_of_a_file_name() {
        let f = Fixture::new("backslash");
        f.write("..\\..\\etc", b"odd name");
        let r = f.get("/..\\..\\etc");
        assert_eq!(r.status, 200);
        assert_eq!(wire(&r), b"odd name");
    }

    #[test]
    fn fifo_is_403_without_hanging() {
        let f = Fixture::new("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            f.path("pipe"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let site = SiteFiles {
            root: f.site.root.try_clone().unwrap(),
            index: vec!["pipe".to_string()],
            autoindex: false,
            deny: path::Deny {
                hidden: true,
                backup: true,
            },
            compress: true,
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let plain = serve(&site, Method::Get, "/pipe", None, &Headers::new(&[])).status;
            let index = serve(&site, Method::Get, "/", None, &Headers::new(&[])).status;
            let _ = tx.send((plain, index));
        });
        let statuses = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("serving a FIFO hung");
        assert_eq!(statuses, (403, 403));
    }

    #[test]
    fn socket_is_403() {
        let f = Fixture::new("socket");
        let _listener = std::os::unix::net::UnixListener::bind(f.path("sock")).unwrap();
        assert_eq!(f.get("/sock").status, 403);
    }

    #[test]
    fn device_is_403() {
        let f = Fixture::new("device");
        // Creating a device node needs CAP_MKNOD; a symlink to one is refused earlier.
        let made = rustix::fs::mknodat(
            rustix::fs::CWD,
            f.path("null"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        );
        if made.is_ok() {
            assert_eq!(f.get("/null").status, 403);
        }
        f.symlink("/dev/null", "devnull");
        assert_eq!(f.get("/devnull").status, 404);
    }

    #[test]
    fn directory_without_slash_redirects() {
        let f = Fixture::new("redirect");
        f.mkdir("docs");
        f.mkdir("my dir");
        f.mkdir("100%");
        f.mkdir("a\\b");
        let cases: [(&str, Option<&str>, &str); 7] = [
            ("/docs", None, "/docs/"),
            ("/docs", Some("a=1&b=%20"), "/docs/?a=1&b=%20"),
            ("/docs", Some(""), "/docs/"),
            ("/my%20dir", None, "/my%20dir/"),
            ("/100%25", None, "/100%25/"),
            ("//docs//", None, "/docs/"),
            ("/a%5cb", None, "/a%5Cb/"),
        ];
        for (path, query, location) in cases {
            let r = serve(&f.site, Method::Get, path, query, &Headers::new(&[]));
            if path.ends_with('/') {
                assert_ne!(r.status, 301, "{path}");
                continue;
            }
            assert_eq!(r.status, 301, "{path}");
            assert_eq!(r.header("Location"), Some(location), "{path}");
        }
        // Through a dot-segment, the redirect names the normalized directory.
        let r = f.get("/docs/../docs");
        assert_eq!(r.header("Location"), Some("/docs/"));
    }

    #[test]
    fn index_files_are_served_in_order() {
        let f = Fixture::new("index");
        f.write("index.html", b"<p>root</p>");
        f.write("a/index.htm", b"second candidate");
        f.write("b/index.html/inner.txt", b"a directory called index.html");
        f.write("b/index.htm", b"b's index");
        f.mkdir("empty");
        let r = f.get("/");
        assert_eq!(r.status, 200);
        assert_eq!(wire(&r), b"<p>root</p>");
        assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
        assert!(r.header("ETag").is_some());
        assert_eq!(wire(&f.get("/a/")), b"second candidate");
        assert_eq!(wire(&f.get("/b/")), b"b's index");
        assert_eq!(f.get("/empty/").status, 403);
    }

    #[test]
    fn index_symlink_leading_out_counts_as_missing() {
        let f = Fixture::new("index-escape");
        f.mkdir("d");
        f.symlink("../../outside/secret.txt", "d/index.html");
        let r = f.get("/d/");
        assert_eq!(r.status, 403);
        assert_no_secret(&r);
    }

    #[test]
    fn autoindex_lists_escaped_sorted_entries() {
        let mut f = Fixture::new("autoindex");
        f.site.autoindex = true;
        f.write("list/<script>alert(1)<.txt", b"12345");
        f.write("list/a&b\"c'.txt", b"x");
        f.write("list/javascript:alert(1)", b"x");
        f.write("list/zeta.txt", b"x");
        f.write("list/.hidden", b"x");
        f.write("list/wp-config.php.bak", b"x");
        f.write("list/notes.txt~", b"x");
        f.write("list/caf\u{e9} ok.txt", b"x");
        f.mkdir("list/subdir");
        f.symlink("../../outside/secret.txt", "list/escape.txt");
        f.symlink("../../outside", "list/escape-dir");
        f.write("list/via-link-target.txt", b"x");
        f.symlink("via-link-target.txt", "list/via-link.txt");
        let r = f.get("/list/");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
        let html = body_text(&r);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;.txt"), "{html}");
        assert!(
            html.contains("href=\"%3Cscript%3Ealert%281%29%3C.txt\""),
            "{html}"
        );
        assert!(html.contains("a&amp;b&quot;c&#39;.txt"), "{html}");
        assert!(html.contains("href=\"a%26b%22c%27.txt\""), "{html}");
        assert!(
            html.contains("href=\"javascript%3Aalert%281%29\""),
            "{html}"
        );
        assert!(!html.contains("href=\"javascript:"), "{html}");
        assert!(html.contains("href=\"caf%C3%A9%20ok.txt\""), "{html}");
        assert!(html.contains("href=\"subdir/\">subdir/</a>"), "{html}");
        assert!(html.contains("href=\"../\""), "{html}");
        assert!(html.contains(">5<"), "size of the script file: {html}");
        assert!(!html.contains("hidden"), "{html}");
        // Backups are left out as the site refuses them (deny_backup).
        assert!(
            !html.contains("wp-config") && !html.contains("notes"),
            "{html}"
        );
        assert!(!html.contains("escape"), "{html}");
        assert!(html.contains("via-link.txt"), "{html}");
        assert!(!html.contains("href=\".\"") && !html.contains("href=\"./\""));
        let mtime = httpdate::fmt_http_date(
            std::fs::metadata(f.path("list/zeta.txt"))
                .unwrap()
                .modified()
                .unwrap(),
        );
        assert!(html.contains(&mtime), "{html}");
        let order: Vec<usize> = [
            "%3Cscript",
            "a%26b",
            "caf%C3",
            "javascript%3A",
            "subdir/",
            "via-link.txt",
            "zeta.txt",
        ]
        .iter()
        .map(|needle| html.find(needle).unwrap())
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "not sorted: {html}");

        let root = body_text(&f.get("/"));
        assert!(!root.contains("href=\"../\""), "{root}");
        assert!(root.contains("href=\"list/\""), "{root}");
        assert!(!root.contains("outside"), "{root}");
    }

    #[test]
    fn autoindex_prefers_the_index_file() {
        let mut f = Fixture::new("autoindex-index");
        f.site.autoindex = true;
        f.write("d/index.html", b"index wins");
        assert_eq!(wire(&f.get("/d/")), b"index wins");
    }

    #[test]
    fn etag_is_strong_and_tracks_inode_size_and_mtime() {
        let f = Fixture::new("etag");
        f.write("a.txt", b"one");
        f.set_mtime("a.txt", 1_600_000_000, 123_456_789);
        let first = f.get("/a.txt");
        let etag = first.header("ETag").unwrap().to_string();
        assert!(!etag.starts_with("W/"));
        assert!(
            etag.trim_matches('"')
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == '-'),
            "{etag}"
        );
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(f.path("a.txt")).unwrap());
        let ns = 1_600_000_000_123_456_789u64;
        assert_eq!(etag, format!("\"{ino:x}-3-{ns:x}\""));
        assert_eq!(
            first.header("Last-Modified"),
            Some("Sun, 13 Sep 2020 12:26:40 GMT")
        );
        assert_eq!(f.get("/a.txt").header("ETag"), Some(etag.as_str()));

        f.set_mtime("a.txt", 1_600_000_000, 123_456_790);
        let touched = f.get("/a.txt");
        assert_ne!(
            touched.header("ETag"),
            Some(etag.as_str()),
            "nanoseconds count"
        );
        f.write("a.txt", b"four");
        f.set_mtime("a.txt", 1_600_000_000, 123_456_789);
        assert_ne!(
            f.get("/a.txt").header("ETag"),
            Some(etag.as_str()),
            "size counts"
        );
    }

    #[test]
    fn odd_mtimes_do_not_break_dates() {
        let f = Fixture::new("mtimes");
        f.write("old.txt", b"old");
        f.set_mtime("old.txt", -86_400, 0);
        let r = f.get("/old.txt");
        assert_eq!(r.status, 200);
        assert!(r.header("Last-Modified").is_none());
        assert!(r.header("ETag").is_some());
        // Without a Last-Modified, the date conditions cannot apply.
        let ims = f.get_with(
            "/old.txt",
            &[("If-Modified-Since", "Sun, 13 Sep 2020 12:26:40 GMT")],
        );
        assert_eq!(ims.status, 200);

        f.write("future.txt", b"future");
        let future = 4_102_444_800; // 2100-01-01
        f.set_mtime("future.txt", future, 0);
        let r = f.get("/future.txt");
        let lm = httpdate::parse_http_date(r.header("Last-Modified").unwrap()).unwrap();
        assert!(lm <= SystemTime::now());

        f.write("far.txt", b"far");
        f.set_mtime("far.txt", 300_000_000_000, 0);
        assert_eq!(f.get("/far.txt").status, 200);

        let mut f = f;
        f.site.autoindex = true;
        let listing = body_text(&f.get("/"));
        assert!(listing.contains("old.txt"));
    }

    #[test]
    fn if_match() {
        let f = Fixture::new("if-match");
        f.write("a.txt", b"abc");
        let etag = f.get("/a.txt").header("ETag").unwrap().to_string();
        let status = |v: &str| f.get_with("/a.txt", &[("If-Match", v)]).status;
        assert_eq!(status(&etag), 200);
        assert_eq!(status("*"), 200);
        assert_eq!(status(&format!("\"nope\", {etag}")), 200);
        assert_eq!(status(&format!("\"x,y\",{etag} ,")), 200);
        assert_eq!(status("\"nope\""), 412);
        assert_eq!(
            status(&format!("W/{etag}")),
            412,
            "If-Match compares strongly"
        );
        assert_eq!(status("garbage"), 412);
        let r = f.get_with("/a.txt", &[("If-Match", "\"nope\"")]);
        assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
        assert_eq!(
            f.request(Method::Head, "/a.txt", &[("If-Match", "\"nope\"")])
                .status,
            412
        );
    }

    #[test]
    fn if_unmodified_since() {
        let f = Fixture::new("ius");
        f.write("a.txt", b"abc");
        f.set_mtime("a.txt", 1_600_000_000, 0);
        let etag = f.get("/a.txt").header("ETag").unwrap().to_string();
        let status = |h: &[(&str, &str)]| f.get_with("/a.txt", h).status;
        assert_eq!(
            status(&[("If-Unmodified-Since", "Sun, 13 Sep 2020 12:26:39 GMT")]),
            412
        );
        assert_eq!(
            status(&[("If-Unmodified-Since", "Sun, 13 Sep 2020 12:26:40 GMT")]),
            200
        );
        assert_eq!(
            status(&[("If-Unmodified-Since", "Mon, 14 Sep 2020 00:00:00 GMT")]),
            200
        );
        assert_eq!(status(&[("If-Unmodified-Since", "yesterday")]), 200);
        // If-Match, when present, replaces it.
        assert_eq!(
            status(&[
                ("If-Match", &etag),
                ("If-Unmodified-Since", "Sun, 13 Sep 2020 12:26:39 GMT")
            ]),
            200
        );
    }

    #[test]
    fn if_none_match() {
        let f = Fixture::new("inm");
        f.write("a.txt", b"abc");
        let etag = f.get("/a.txt").header("ETag").unwrap().to_string();
        let lm = f.get("/a.txt").header("Last-Modified").unwrap().to_string();
        for value in [
            etag.clone(),
            format!("W/{etag}"),
            "*".to_string(),
            format!("\"x\", W/\"y\", {etag}"),
        ] {
            for method in [Method::Get, Method::Head] {
                let r = f.request(method, "/a.txt", &[("If-None-Match", &value)]);
                assert_eq!(r.status, 304, "{value}");
                assert!(matches!(r.body, Body::Empty));
                assert_eq!(r.header("ETag"), Some(etag.as_str()));
                assert_eq!(r.header("Last-Modified"), Some(lm.as_str()));
            }
        }
        assert_eq!(
            f.get_with("/a.txt", &[("If-None-Match", "\"other\"")])
                .status,
            200
        );
        assert_eq!(
            f.get_with("/a.txt", &[("If-None-Match", "junk")]).status,
            200
        );
    }

    #[test]
    fn if_modified_since() {
        let f = Fixture::new("ims");
        f.write("a.txt", b"abc");
        f.set_mtime("a.txt", 1_600_000_000, 500_000_000);
        let status = |h: &[(&str, &str)]| f.get_with("/a.txt", h).status;
        assert_eq!(
            status(&[("If-Modified-Since", "Sun, 13 Sep 2020 12:26:40 GMT")]),
            304
        );
        assert_eq!(
            status(&[("If-Modified-Since", "Sunday, 13-Sep-20 12:26:41 GMT")]),
            304
        );
        assert_eq!(
            status(&[("If-Modified-Since", "Sun Sep 13 12:26:41 2020")]),
            304
        );
        assert_eq!(
            status(&[("If-Modified-Since", "Sun, 13 Sep 2020 12:26:39 GMT")]),
            200
        );
        assert_eq!(status(&[("If-Modified-Since", "not a date")]), 200);
        // Ignored when If-None-Match is present, even if that does not match.
        assert_eq!(
            status(&[
                ("If-None-Match", "\"other\""),
                ("If-Modified-Since", "Mon, 14 Sep 2020 00:00:00 GMT")
            ]),
            200
        );
        let r = f.request(
            Method::Head,
            "/a.txt",
            &[("If-Modified-Since", "Mon, 14 Sep 2020 00:00:00 GMT")],
        );
        assert_eq!(r.status, 304);
    }

    #[test]
    fn precondition_precedence() {
        let f = Fixture::new("precedence");
        f.write("a.txt", b"abc");
        let etag = f.get("/a.txt").header("ETag").unwrap().to_string();
        let r = f.get_with(
            "/a.txt",
            &[("If-Match", "\"nope\""), ("If-None-Match", &etag)],
        );
        assert_eq!(r.status, 412);
        let r = f.get_with(
            "/a.txt",
            &[
                ("If-Unmodified-Since", "Thu, 01 Jan 1970 00:00:01 GMT"),
                ("If-None-Match", &etag),
            ],
        );
        assert_eq!(r.status, 412);
        // A precondition failure beats a Range.
        let r = f.get_with(
            "/a.txt",
            &[("If-Match", "\"nope\""), ("Range", "bytes=0-0")],
        );
        assert_eq!(r.status, 412);
        // So does a 304.
        let r = f.get_with(
            "/a.txt",
            &[("If-None-Match", &etag), ("Range", "bytes=0-0")],
        );
        assert_eq!(r.status, 304);
    }

    fn single_range(f: &Fixture, range: &str) -> (u16, Option<String>, Vec<u8>) {
        let r = f.get_with("/data.bin", &[("Range", range)]);
        if r.status == 206 {
            assert!(matches!(r.body, Body::File { .. }), "{range}");
            assert_eq!(r.header("Content-Type"), Some("application/octet-stream"));
            assert_eq!(r.header("Accept-Ranges"), Some("bytes"));
            assert!(r.header("ETag").is_some());
        }
        (
            r.status,
            r.header("Content-Range").map(str::to_string),
            wire(&r),
        )
    }

    #[test]
    fn single_ranges() {
        let f = Fixture::new("range");
        let data = pattern(10_000);
        f.write("data.bin", &data);
        let cases: [(&str, u64, u64); 7] = [
            ("bytes=0-9", 0, 9),
            ("bytes=-500", 9500, 9999),
            ("bytes=9500-", 9500, 9999),
            ("bytes=9990-20000", 9990, 9999),
            ("bytes=-20000", 0, 9999),
            ("BYTES = 5-5", 5, 5),
            ("bytes=0-99999999999999999999999999", 0, 9999),
        ];
        for (range, first, last) in cases {
            let (status, content_range, body) = single_range(&f, range);
            assert_eq!(status, 206, "{range}");
            assert_eq!(
                content_range,
                Some(format!("bytes {first}-{last}/10000")),
                "{range}"
            );
            assert_eq!(body, &data[first as usize..=last as usize], "{range}");
        }
        // Unsatisfiable parts among satisfiable ones are dropped.
        let (status, content_range, _) = single_range(&f, "bytes=20000-, 1-2");
        assert_eq!(
            (status, content_range.as_deref()),
            (206, Some("bytes 1-2/10000"))
        );

        f.write("small.txt", b"0123456789");
        let r = f.get_with("/small.txt", &[("Range", "bytes=2-4")]);
        assert_eq!(r.status, 206);
        assert_eq!(wire(&r), b"234");
        assert_eq!(r.content_length(), 3);
    }

    #[test]
    fn range_is_ignored_for_head_and_on_syntax_errors() {
        let f = Fixture::new("range-ignore");
        f.write("data.bin", &pattern(10_000));
        let r = f.request(Method::Head, "/data.bin", &[("Range", "bytes=0-9")]);
        assert_eq!((r.status, r.content_length()), (200, 10_000));
        assert!(r.header("Content-Range").is_none());
        for range in [
            "bytes=abc",
            "bytes=5-2",
            "items=0-1",
            "bytes=",
            "bytes=,",
            "bytes=1-2-3",
            "bytes=-",
            "bytes=+1-2",
            "bytes=1 -2",
            "bytes 0-1",
            "0-1",
            "bytes=0-1,x",
        ] {
            let r = f.get_with("/data.bin", &[("Range", range)]);
            assert_eq!(r.status, 200, "{range}");
            assert!(r.header("Content-Range").is_none(), "{range}");
            assert_eq!(r.content_length(), 10_000, "{range}");
        }
    }

    #[test]
    fn unsatisfiable_ranges_get_416() {
        let f = Fixture::new("416");
        f.write("data.bin", &pattern(10_000));
        f.write("empty.txt", b"");
        for range in [
            "bytes=10000-",
            "bytes=20000-30000",
            "bytes=-0",
            "bytes=10000-, -0",
        ] {
            let r = f.get_with("/data.bin", &[("Range", range)]);
            assert_eq!(r.status, 416, "{range}");
            assert_eq!(r.header("Content-Range"), Some("bytes */10000"), "{range}");
            assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
        }
        let r = f.get_with("/empty.txt", &[("Range", "bytes=0-")]);
        assert_eq!(r.status, 416);
        assert_eq!(r.header("Content-Range"), Some("bytes */0"));
        assert_eq!(f.get("/empty.txt").status, 200);
    }

    /// Split a multipart/byteranges body into (Content-Type, Content-Range, bytes) parts.
    fn parse_multipart(body: &[u8], boundary: &str) -> Vec<(String, String, Vec<u8>)> {
        let delimiter = format!("--{boundary}");
        let close = format!("\r\n--{boundary}--\r\n");
        assert!(
            body.starts_with(delimiter.as_bytes()),
            "body starts with the delimiter"
        );
        assert!(
            body.ends_with(close.as_bytes()),
            "body ends with the close delimiter"
        );
        let mut parts = Vec::new();
        let mut rest = &body[delimiter.len()..];
        loop {
            if rest.starts_with(b"--\r\n") {
                assert_eq!(rest.len(), 4, "nothing after the close delimiter");
                return parts;
            }
            rest = rest.strip_prefix(b"\r\n").expect("CRLF after a delimiter");
            let head_end = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            let head = std::str::from_utf8(&rest[..head_end]).unwrap();
            let mut content_type = String::new();
            let mut content_range = String::new();
            for line in head.split("\r\n") {
                let (name, value) = line.split_once(": ").unwrap();
                match name {
                    "Content-Type" => content_type = value.to_string(),
                    "Content-Range" => content_range = value.to_string(),
                    other => panic!("unexpected part header {other}"),
                }
            }
            rest = &rest[head_end + 4..];
            // The part's length comes from its Content-Range, as a client reads it.
            let (span, _) = content_range
                .strip_prefix("bytes ")
                .unwrap()
                .split_once('/')
                .unwrap();
            let (first, last) = span.split_once('-').unwrap();
            let len = last.parse::<usize>().unwrap() - first.parse::<usize>().unwrap() + 1;
            parts.push((content_type, content_range, rest[..len].to_vec()));
            rest = &rest[len..];
            let next = format!("\r\n{delimiter}");
            rest = rest
                .strip_prefix(next.as_bytes())
                .expect("delimiter after a part");
        }
    }

    #[test]
    fn multiple_ranges_make_multipart_byteranges() {
        let f = Fixture::new("multipart");
        let data = pattern(10_000);
        f.write("page.html", &data);
        let r = f.get_with("/page.html", &[("Range", "bytes=0-9, 100-199,-5")]);
        assert_eq!(r.status, 206);
        assert!(r.header("Content-Range").is_none());
        let content_type = r.header("Content-Type").unwrap();
        let boundary = content_type
            .strip_prefix("multipart/byteranges; boundary=")
            .unwrap();
        assert!(
            boundary.len() >= 16
                && boundary
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        );
        let body = wire(&r);
        assert_eq!(body.len() as u64, r.content_length());
        let parts = parse_multipart(&body, boundary);
        let expected = [
            ("bytes 0-9/10000", &data[0..10]),
            ("bytes 100-199/10000", &data[100..200]),
            ("bytes 9995-9999/10000", &data[9995..]),
        ];
        assert_eq!(parts.len(), expected.len());
        for ((ct, cr, bytes), (range, slice)) in parts.iter().zip(expected) {
            assert_eq!(ct, "text/html; charset=utf-8");
            assert_eq!(cr, range);
            assert_eq!(bytes.as_slice(), slice);
        }
        match &r.body {
            Body::Multipart { parts, .. } => {
                assert_eq!(
                    parts.iter().map(|p| (p.offset, p.len)).collect::<Vec<_>>(),
                    [(0, 10), (100, 100), (9995, 5)]
                );
            }
            other => panic!("expected multipart, got {other:?}"),
        }
        // Boundaries are not reused.
        let again = f.get_with("/page.html", &[("Range", "bytes=0-9, 100-199,-5")]);
        assert_ne!(again.header("Content-Type"), Some(content_type));
        // Adjacent ranges do not overlap.
        assert_eq!(
            f.get_with("/page.html", &[("Range", "bytes=0-9,10-19")])
                .status,
            206
        );
    }

    #[test]
    fn abusive_range_sets_get_the_whole_file() {
        let f = Fixture::new("killer");
        f.write("data.bin", &pattern(100_000));
        let sixteen: Vec<String> = (0..16)
            .map(|i| format!("{}-{}", i * 10, i * 10 + 4))
            .collect();
        let seventeen: Vec<String> = (0..17)
            .map(|i| format!("{}-{}", i * 10, i * 10 + 4))
            .collect();
        let many = format!("bytes={}", sixteen.join(","));
        assert_eq!(f.get_with("/data.bin", &[("Range", &many)]).status, 206);
        let too_many = format!("bytes={}", seventeen.join(","));
        let killer = format!(
            "bytes=0-,{}",
            (1..1300)
                .map(|i| format!("5-{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        for range in [
            too_many.as_str(),
            "bytes=0-100,50-150",
            "bytes=0-,0-,0-",
            "bytes=-60000,0-50000",
            "bytes=0-0,0-0",
            killer.as_str(),
        ] {
            let r = f.get_with("/data.bin", &[("Range", range)]);
            assert_eq!(r.status, 200, "{range}");
            assert_eq!(r.content_length(), 100_000);
            assert!(matches!(
                r.body,
                Body::File {
                    offset: 0,
                    len: 100_000,
                    ..
                }
            ));
        }
    }

    #[test]
    fn if_range_gates_the_range() {
        let f = Fixture::new("if-range");
        f.write("data.bin", &pattern(10_000));
        f.set_mtime("data.bin", 1_600_000_000, 0);
        let etag = f.get("/data.bin").header("ETag").unwrap().to_string();
        let lm = f
            .get("/data.bin")
            .header("Last-Modified")
            .unwrap()
            .to_string();
        let status = |if_range: &str| {
            f.get_with(
                "/data.bin",
                &[("Range", "bytes=0-9"), ("If-Range", if_range)],
            )
            .status
        };
        assert_eq!(status(&etag), 206);
        assert_eq!(status(&lm), 206);
        assert_eq!(status("\"stale\""), 200);
        assert_eq!(status(&format!("W/{etag}")), 200, "weak tags never match");
        assert_eq!(
            status(&format!("{etag}, \"x\"")),
            200,
            "a list is not a validator"
        );
        assert_eq!(status("Sun, 13 Sep 2020 12:26:41 GMT"), 200);
        assert_eq!(status("garbage"), 200);
        let r = f.get_with(
            "/data.bin",
            &[("Range", "bytes=0-9"), ("If-Range", "\"stale\"")],
        );
        assert_eq!(wire(&r), pattern(10_000));
        // A date matches only a Last-Modified at least a second older than now.
        f.write("fresh.txt", b"just written");
        let fresh_lm = f
            .get("/fresh.txt")
            .header("Last-Modified")
            .unwrap()
            .to_string();
        let r = f.get_with(
            "/fresh.txt",
            &[("Range", "bytes=0-3"), ("If-Range", &fresh_lm)],
        );
        assert_eq!(r.status, 200);
    }

    #[test]
    fn content_types() {
        let f = Fixture::new("types");
        let cases = [
            ("a.html", "text/html; charset=utf-8"),
            ("a.css", "text/css; charset=utf-8"),
            ("a.js", "text/javascript; charset=utf-8"),
            ("a.mjs", "application/javascript; charset=utf-8"),
            ("a.json", "application/json; charset=utf-8"),
            ("a.png", "image/png"),
            ("a.svg", "image/svg+xml"),
            ("a.PNG", "image/png"),
            ("noext", "application/octet-stream"),
            ("a.unknownext", "application/octet-stream"),
            (".bashrc", "application/octet-stream"),
        ];
        for (name, expected) in cases {
            f.write(name, b"x");
            let r = f.get(&format!("/{name}"));
            assert_eq!(r.status, 200, "{name}");
            assert_eq!(r.header("Content-Type"), Some(expected), "{name}");
            assert_eq!(
                r.header("X-Content-Type-Options"),
                Some("nosniff"),
                "{name}"
            );
        }
    }

    #[test]
    fn error_pages() {
        for status in [400, 403, 404, 405, 412, 416, 500, 503] {
            let r = error_response(status);
            assert_eq!(r.status, status);
            assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
            assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
            let html = body_text(&r);
            assert!(
                html.contains(&format!("<title>{status} {}</title>", reason(status))),
                "{html}"
            );
            assert_ne!(reason(status), "Error");
            assert_eq!(r.content_length(), html.len() as u64);
        }
    }

    #[test]
    fn body_lengths() {
        assert_eq!(Body::Empty.len(), 0);
        assert!(Body::Empty.is_empty());
        assert_eq!(Body::Bytes(vec![1, 2, 3]).len(), 3);
        let f = Fixture::new("lengths");
        f.write("x", b"0123456789");
        let file = File::open(f.path("x")).unwrap();
        let body = Body::Multipart {
            file,
            parts: vec![
                Part {
                    head: b"head".to_vec(),
                    offset: 0,
                    len: 2,
                },
                Part {
                    head: b"h2".to_vec(),
                    offset: 5,
                    len: 5,
                },
            ],
            trailer: b"end".to_vec(),
        };
        assert_eq!(body.len(), 4 + 2 + 2 + 5 + 3);
    }

    /// Run `body` as an unprivileged user: as root, by re-running this one test in a
    /// child process under uid 65534, since root would bypass every permission check.
    fn unprivileged(test_name: &str, body: impl FnOnce()) {
        use std::os::unix::process::CommandExt;
        const MARK: &str = "CONDO_STATIC_TEST_UNPRIVILEGED";
        // /proc/self belongs to the effective uid.
        let euid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
        if euid != 0 {
            body();
            return;
        }
        if std::env::var_os(MARK).is_some() {
            panic!("still root in the unprivileged child");
        }
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test_name, "--test-threads=1", "--nocapture"])
            .env(MARK, "1")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "unprivileged run failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    fn permission_denied_is_403() {
        unprivileged(
            "worker::static_files::tests::permission_denied_is_403",
            || {
                use std::os::unix::fs::PermissionsExt;
                let mut f = Fixture::new("perms");
                f.site.autoindex = true;
                f.write("locked.txt", b"no");
                f.write("traverse-only/index.html", b"index of a 0111 directory");
                f.write("traverse-only/file.txt", b"reachable");
                f.write("listable/a.txt", b"a");
                f.write("sealed/inner.txt", b"sealed");
                f.write("locked-index/index.html", b"locked");
                let mode = |rel: &str, mode: u32| {
                    std::fs::set_permissions(f.path(rel), std::fs::Permissions::from_mode(mode))
                        .unwrap();
                };
                mode("locked.txt", 0o000);
                // Search permission only, even for the owner: no listing.
                mode("traverse-only", 0o111);
                mode("sealed", 0o000);
                mode("locked-index/index.html", 0o000);
                let status = |p: &str| f.get(p).status;
                assert_eq!(status("/locked.txt"), 403);
                assert_eq!(status("/sealed/inner.txt"), 403);
                assert_eq!(status("/sealed/"), 403);
                assert_eq!(status("/locked-index/"), 403);
                assert_eq!(
                    wire(&f.get("/traverse-only/")),
                    b"index of a 0111 directory"
                );
                assert_eq!(wire(&f.get("/traverse-only/file.txt")), b"reachable");
                assert_eq!(status("/traverse-only"), 301);
                // Without the index, the listing is what the missing read permission forbids.
                mode("traverse-only", 0o311);
                std::fs::remove_file(f.path("traverse-only/index.html")).unwrap();
                assert_eq!(status("/traverse-only/"), 403);
                assert_eq!(status("/listable/"), 200);
            },
        );
    }

    #[test]
    fn accept_encoding_q_values() {
        use Encoding::{Br, Gzip};
        for (value, expect) in [
            ("", [None, None]),
            ("identity", [None, None]),
            ("gzip", [Some(Gzip), None]),
            ("gzip, br", [Some(Br), Some(Gzip)]),
            ("gzip;q=0.9, br;q=0.8", [Some(Gzip), Some(Br)]),
            ("br;q=0", [None, None]),
            ("br;q=0, gzip;q=0.001", [Some(Gzip), None]),
            ("*", [Some(Br), Some(Gzip)]),
            ("*;q=0", [None, None]),
            ("gzip;q=0, *", [Some(Br), None]),
            ("br;q=1.001", [None, None]),
            ("br;q=.5", [None, None]),
            ("br;q=0.5;level=1, x-gzip ; Q=1.0", [Some(Gzip), Some(Br)]),
            ("gzip;q=0, gzip", [Some(Gzip), None]),
        ] {
            assert_eq!(accepted_encodings(value.as_bytes()), expect, "{value:?}");
        }
        assert_eq!(parse_qvalue(b"1.000"), Some(1000));
        assert_eq!(parse_qvalue(b"0.25"), Some(250));
        assert_eq!(parse_qvalue(b"0."), Some(0));
        assert_eq!(parse_qvalue(b"0.1234"), None);
        assert_eq!(parse_qvalue(b"2"), None);
    }

    fn decode(encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
        use std::io::Read;
        let mut out = Vec::new();
        match encoding {
            None => out.extend_from_slice(body),
            Some("gzip") => {
                flate2::read::GzDecoder::new(body)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Some("br") => {
                brotli::Decompressor::new(body, 4096)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Some(other) => panic!("unexpected coding {other}"),
        }
        out
    }

    #[test]
    fn compressed_on_the_fly_only_where_it_applies() {
        let f = Fixture::new("compress");
        let css: Vec<u8> = (0..4000u32)
            .flat_map(|i| format!("a{} {{ color: #{:06x} }}\n", i, i * 7919).into_bytes())
            .collect();
        f.write("style.css", &css)
            .write("tiny.css", b"a{}\n")
            .write("blob.bin", &css);
        for (accept, coding) in [("gzip", "gzip"), ("br, gzip", "br")] {
            let pending = f.get_with("/style.css", &[("accept-encoding", accept)]);
            assert_eq!(pending.header("Content-Encoding"), Some(coding));
            assert_eq!(pending.header("Vary"), Some("Accept-Encoding"));
            assert_eq!(pending.header("Accept-Ranges"), None);
            assert!(pending.pending.is_some());
            let done = compress_now(pending);
            assert!(done.pending.is_none());
            let Body::Bytes(bytes) = &done.body else {
                panic!("not compressed: {:?}", done.body);
            };
            assert!(bytes.len() < css.len() / 2);
            assert_eq!(decode(Some(coding), bytes), css);
            assert_eq!(done.content_length(), bytes.len() as u64);
            // HEAD: the same headers and the compressed length, no body.
            let head =
                compress_now(f.request(Method::Head, "/style.css", &[("accept-encoding", accept)]));
            assert_eq!(head.headers, done.headers);
            assert!(matches!(head.body, Body::Empty));
            assert_eq!(head.content_length(), bytes.len() as u64);
        }
        let identity = f.get("/style.css");
        assert!(identity.pending.is_none());
        assert_eq!(identity.header("Vary"), Some("Accept-Encoding"));
        assert_eq!(identity.header("Content-Encoding"), None);
        for (path, headers) in [
            (
                "/style.css",
                &[("accept-encoding", "gzip"), ("range", "bytes=0-9")][..],
            ),
            ("/tiny.css", &[("accept-encoding", "gzip")][..]),
            ("/blob.bin", &[("accept-encoding", "gzip")][..]),
            ("/style.css", &[("accept-encoding", "gzip;q=0")][..]),
        ] {
            let r = f.get_with(path, headers);
            assert!(r.pending.is_none(), "{path} {headers:?}");
            assert_eq!(r.header("Content-Encoding"), None, "{path} {headers:?}");
        }
    }
}
