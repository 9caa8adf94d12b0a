//! Strict HTTP/1.x request-head parser.
//!
//! This runs on hostile bytes, in the dispatcher and in every tenant worker. Both, and
//! whatever a request is relayed to, must agree byte for byte on where a head ends and
//! how its body is framed; any leeway is room for request smuggling. So every line is
//! first checked here against the strict RFC 9112 grammar, and only then does `httparse`
//! tokenise the head: on its own it takes bare-LF line endings (also as leading empty
//! lines), '#' in the target and whitespace before the first header, and it knows
//! nothing of Host, Content-Length or Transfer-Encoding. Its result is cross-checked
//! against the scan here, so a disagreement is an error rather than a guess.
//!
//! Errors are reported as soon as they are certain: each line is judged when it is
//! complete, and a partial line as far as its bytes go, so junk (a TLS handshake on the
//! plain port, say) is refused at once instead of waiting for the header timeout. The
//! error reported is the one of the earliest byte that made the head invalid, so it
//! does not depend on how the stream was split into reads.

use std::fmt;
use std::net::Ipv6Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line, without its CRLF.
    pub max_request_line: usize,
    /// Longest head, from the first byte (leading empty lines included) to the final CRLF.
    pub max_head_bytes: usize,
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: 8192,
            max_head_bytes: 16384,
            max_headers: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// A line ended in LF without CR.
    BareLf,
    /// A CR not followed by LF.
    BareCr,
    /// Not `method SP target SP version`.
    MalformedRequestLine,
    InvalidMethod,
    /// A byte the target may not contain, or a target of no known form.
    InvalidTarget,
    /// `*` without OPTIONS, authority-form without CONNECT, CONNECT without authority-form.
    TargetFormNotAllowed,
    /// `HTTP/` followed by anything but `1.0` or `1.1`.
    UnsupportedVersion,
    RequestLineTooLong,
    HeadTooLarge,
    TooManyHeaders,
    /// A header line starting with whitespace: obsolete line folding, or whitespace
    /// before the first header.
    ObsFold,
    WhitespaceBeforeColon,
    MissingColon,
    InvalidHeaderName,
    /// NUL or another control character in a header value.
    InvalidHeaderValue,
    MissingHost,
    DuplicateHost,
    EmptyHost,
    InvalidHost,
    InvalidContentLength,
    ConflictingContentLength,
    ContentLengthWithTransferEncoding,
    TransferEncodingInHttp10,
    /// An empty or malformed element in Transfer-Encoding.
    InvalidTransferEncoding,
    ChunkedNotFinal,
    DuplicateChunked,
    /// A transfer coding other than chunked (e.g. `gzip, chunked`).
    UnsupportedTransferCoding,
    /// httparse read the head differently from the strict scan.
    TokenizerMismatch,
}

impl HeadError {
    /// The HTTP status to answer with (then close the connection).
    pub fn status(&self) -> u16 {
        match self {
            HeadError::RequestLineTooLong => 414,
            HeadError::HeadTooLarge | HeadError::TooManyHeaders => 431,
            HeadError::UnsupportedTransferCoding => 501,
            HeadError::UnsupportedVersion => 505,
            _ => 400,
        }
    }
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeadError::BareLf => "line ending without CR",
            HeadError::BareCr => "CR not followed by LF",
            HeadError::MalformedRequestLine => "malformed request line",
            HeadError::InvalidMethod => "invalid method",
            HeadError::InvalidTarget => "invalid request target",
            HeadError::TargetFormNotAllowed => "request target form not allowed for this method",
            HeadError::UnsupportedVersion => "unsupported HTTP version",
            HeadError::RequestLineTooLong => "request line too long",
            HeadError::HeadTooLarge => "request head too large",
            HeadError::TooManyHeaders => "too many header fields",
            HeadError::ObsFold => "header line starts with whitespace (line folding)",
            HeadError::WhitespaceBeforeColon => "whitespace between header name and colon",
            HeadError::MissingColon => "header line without colon",
            HeadError::InvalidHeaderName => "invalid header name",
            HeadError::InvalidHeaderValue => "control character in header value",
            HeadError::MissingHost => "missing Host header",
            HeadError::DuplicateHost => "more than one Host header",
            HeadError::EmptyHost => "empty Host header",
            HeadError::InvalidHost => "invalid host",
            HeadError::InvalidContentLength => "invalid Content-Length",
            HeadError::ConflictingContentLength => "conflicting Content-Length values",
            HeadError::ContentLengthWithTransferEncoding => {
                "both Content-Length and Transfer-Encoding"
            }
            HeadError::TransferEncodingInHttp10 => "Transfer-Encoding in an HTTP/1.0 request",
            HeadError::InvalidTransferEncoding => "invalid Transfer-Encoding",
            HeadError::ChunkedNotFinal => "final transfer coding is not chunked",
            HeadError::DuplicateChunked => "chunked applied more than once",
            HeadError::UnsupportedTransferCoding => "unsupported transfer coding",
            HeadError::TokenizerMismatch => "ambiguous request head",
        })
    }
}

impl std::error::Error for HeadError {}

/// Request method; tokens are case-sensitive, so `get` is `Other("get")`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    Connect,
    Trace,
    Other(String),
}

impl Method {
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            "CONNECT" => Method::Connect,
            "TRACE" => Method::Trace,
            other => Method::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Patch => "PATCH",
            Method::Connect => "CONNECT",
            Method::Trace => "TRACE",
            Method::Other(token) => token,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    pub fn as_str(&self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }

    fn minor(self) -> u8 {
        match self {
            Version::Http10 => 0,
            Version::Http11 => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the buffer taken by the head: leading empty lines, request line,
    /// headers and the final CRLF. The body (or the next request) starts here.
    pub head_len: usize,
    pub method: Method,
    pub version: Version,
    /// The request-target as sent.
    pub target: String,
    /// Raw (not percent-decoded) path without the query: of the origin-form, or of the
    /// absolute-form URI ("/" if it has none). For `*` and the authority-form (which
    /// name no path) it is the target itself.
    pub path: String,
    /// Raw query, without the '?'.
    pub query: Option<String>,
    /// Routing key: the absolute-form's authority if any, else the Host header;
    /// lowercased, without port or one trailing dot; IPv6 literals keep their brackets.
    pub host: Option<String>,
    /// Names as sent; values without surrounding whitespace.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: BodyFraming,
    pub keep_alive: bool,
    /// `Expect: 100-continue` in an HTTP/1.1 request (RFC 9110 §10.1.1: ignored in 1.0).
    pub expect_continue: bool,
}

impl RequestHead {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub fn is_head(&self) -> bool {
        self.method == Method::Head
    }

    /// May be sent again after a connection closed under it (RFC 9110 §9.2.2: a safe
    /// method, and no body that would have to be kept).
    pub fn is_retriable(&self) -> bool {
        matches!(self.method, Method::Get | Method::Head | Method::Options)
            && matches!(self.body, BodyFraming::None)
            && !self.expect_continue
    }
}

/// Parse the request head at the start of `buf`.
///
/// `Ok(None)`: the head is not complete yet, and what there is of it is valid and within
/// `limits`. `Ok(Some(head))`: bytes after `head.head_len` are not looked at.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<RequestHead>, HeadError> {
    scan(buf, limits).map_err(|error| first_error(buf, limits, error))
}

/// The error of the shortest failing prefix of `buf`, which fails with `error`.
///
/// A longer buffer can fail for a reason that was not yet certain at a shorter one (a
/// line with a bad byte that also turns out too long: 400 or 414?). Reporting the error
/// as of the earliest byte that made the head invalid keeps the answer independent of
/// how the stream was split into reads. Failure is monotonic (a failing prefix cannot be
/// repaired by more bytes), so a binary search finds that prefix in a few scans.
fn first_error(buf: &[u8], limits: &Limits, mut error: HeadError) -> HeadError {
    let (mut ok, mut failing) = (0, buf.len());
    while failing - ok > 1 {
        let mid = ok + (failing - ok) / 2;
        match scan(&buf[..mid], limits) {
            Err(e) => (failing, error) = (mid, e),
            Ok(_) => ok = mid,
        }
    }
    error
}

fn scan(buf: &[u8], limits: &Limits) -> Result<Option<RequestHead>, HeadError> {
    let mut pos = 0;
    // RFC 9112 §2.2: empty lines before the request line are skipped, as some clients
    // send a CRLF after a POST body. A lone CR at the end falls through to the partial
    // line below, where it may still become CRLF.
    while buf.get(pos) == Some(&b'\r') {
        match buf.get(pos + 1) {
            Some(b'\n') => pos += 2,
            Some(_) => return Err(HeadError::BareCr),
            None => break,
        }
    }
    let start = pos;
    let mut request: Option<RequestLine> = None;
    let mut fields = Fields::default();
    let mut lines: Vec<Field<'_>> = Vec::new();
    loop {
        let rest = &buf[pos..];
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            return check_partial_line(buf, rest, request.is_some(), lines.len(), limits);
        };
        if lf == 0 || rest[lf - 1] != b'\r' {
            return Err(HeadError::BareLf);
        }
        let line = &rest[..lf - 1];
        if line.contains(&b'\r') {
            return Err(HeadError::BareCr);
        }
        let next = pos + lf + 1;
        match &request {
            None => {
                if line.len() > limits.max_request_line {
                    return Err(HeadError::RequestLineTooLong);
                }
                if next > limits.max_head_bytes {
                    return Err(HeadError::HeadTooLarge);
                }
                request = Some(request_line(line)?);
            }
            Some(req) if line.is_empty() => {
                if next > limits.max_head_bytes {
                    return Err(HeadError::HeadTooLarge);
                }
                return finish(&buf[start..next], next, req, &fields, &lines).map(Some);
            }
            Some(req) => {
                if next > limits.max_head_bytes {
                    return Err(HeadError::HeadTooLarge);
                }
                if lines.len() >= limits.max_headers {
                    return Err(HeadError::TooManyHeaders);
                }
                let (name, value) = field_line(line, true)?.ok_or(HeadError::MissingColon)?;
                fields.add(name, value, req)?;
                lines.push((name, value));
            }
        }
        pos = next;
    }
}

/// Judge the unterminated last line `rest` as far as it goes: only what no further
/// bytes could make valid is an error here.
fn check_partial_line(
    buf: &[u8],
    rest: &[u8],
    in_headers: bool,
    headers: usize,
    limits: &Limits,
) -> Result<Option<RequestHead>, HeadError> {
    let partial = rest.strip_suffix(b"\r").unwrap_or(rest);
    if partial.contains(&b'\r') {
        return Err(HeadError::BareCr);
    }
    if !in_headers && partial.len() > limits.max_request_line {
        return Err(HeadError::RequestLineTooLong);
    }
    // The head needs at least one more byte, so it will be longer than the limit.
    if buf.len() >= limits.max_head_bytes {
        return Err(HeadError::HeadTooLarge);
    }
    if !in_headers {
        lex_request_line(partial, false)?;
    } else if !partial.is_empty() {
        if headers >= limits.max_headers {
            return Err(HeadError::TooManyHeaders);
        }
        field_line(partial, false)?;
    }
    Ok(None)
}

struct RequestLine {
    method: Method,
    version: Version,
    target: String,
    path: String,
    query: Option<String>,
    /// Normalised host of an absolute-form target.
    authority: Option<String>,
}

fn request_line(line: &[u8]) -> Result<RequestLine, HeadError> {
    let (method, target, version) =
        lex_request_line(line, true)?.ok_or(HeadError::MalformedRequestLine)?;
    // Checked before the target, so the HTTP/2 preface ("PRI * HTTP/2.0") gets a 505.
    let version = match version {
        b"HTTP/1.1" => Version::Http11,
        b"HTTP/1.0" => Version::Http10,
        _ => return Err(HeadError::UnsupportedVersion),
    };
    let method = std::str::from_utf8(method).map_err(|_| HeadError::InvalidMethod)?;
    let method = Method::from_token(method);
    let target = std::str::from_utf8(target).map_err(|_| HeadError::InvalidTarget)?;
    let (path, query, authority) = analyse_target(&method, target)?;
    Ok(RequestLine {
        method,
        version,
        target: target.to_owned(),
        path,
        query,
        authority,
    })
}

/// Method, target and version of a request line, as slices of the buffer.
type LineParts<'a> = (&'a [u8], &'a [u8], &'a [u8]);

/// Split `method SP target SP version`, checking the bytes of each part. With
/// `complete == false` the line may stop anywhere, and only what is there is judged.
fn lex_request_line(line: &[u8], complete: bool) -> Result<Option<LineParts<'_>>, HeadError> {
    let unfinished = |complete: bool| {
        if complete {
            Err(HeadError::MalformedRequestLine)
        } else {
            Ok(None)
        }
    };
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    if !method.iter().all(|&b| is_tchar(b)) {
        return Err(HeadError::InvalidMethod);
    }
    let Some(target) = parts.next() else {
        return unfinished(complete);
    };
    if method.is_empty() {
        return Err(HeadError::MalformedRequestLine);
    }
    if !target.iter().all(|&b| is_target_byte(b)) {
        return Err(HeadError::InvalidTarget);
    }
    let Some(version) = parts.next() else {
        return unfinished(complete);
    };
    // An empty target means two spaces in a row; a space in the version, a third part.
    if target.is_empty() || !version.iter().all(u8::is_ascii_graphic) {
        return Err(HeadError::MalformedRequestLine);
    }
    let n = version.len().min(5);
    if version[..n] != b"HTTP/"[..n] || (complete && n < 5) {
        return Err(HeadError::MalformedRequestLine);
    }
    Ok(Some((method, target, version)))
}

/// Path, query and (for the absolute-form) normalised host of a target.
fn analyse_target(
    method: &Method,
    target: &str,
) -> Result<(String, Option<String>, Option<String>), HeadError> {
    // RFC 9112 §3.2.3: CONNECT takes the authority-form, with a port, and nothing else.
    if *method == Method::Connect {
        return match parse_authority(target.as_bytes()) {
            Ok((_, Some(_))) => Ok((target.to_owned(), None, None)),
            _ => Err(HeadError::TargetFormNotAllowed),
        };
    }
    if target.starts_with('/') {
        let (path, query) = split_query(target);
        return Ok((path, query, None));
    }
    if target == "*" {
        return if *method == Method::Options {
            Ok((target.to_owned(), None, None))
        } else {
            Err(HeadError::TargetFormNotAllowed)
        };
    }
    if let Some(rest) = strip_http_scheme(target) {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_query) = rest.split_at(end);
        let (host, _) = parse_authority(authority.as_bytes())?;
        let (mut path, query) = split_query(path_query);
        if path.is_empty() {
            path.push('/');
        }
        return Ok((path, query, Some(host)));
    }
    match parse_authority(target.as_bytes()) {
        Ok((_, Some(_))) => Err(HeadError::TargetFormNotAllowed),
        _ => Err(HeadError::InvalidTarget),
    }
}

fn split_query(s: &str) -> (String, Option<String>) {
    match s.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (s.to_owned(), None),
    }
}

/// The part after `http://` or `https://` (scheme case-insensitive, RFC 3986 §3.1).
fn strip_http_scheme(target: &str) -> Option<&str> {
    ["http://", "https://"].iter().find_map(|scheme| {
        let n = scheme.len();
        let head = target.as_bytes().get(..n)?;
        // The matched bytes are ASCII, so `n` is a char boundary.
        head.eq_ignore_ascii_case(scheme.as_bytes())
            .then(|| &target[n..])
    })
}

/// `host[:port]` as in a Host header or a URI authority, into the routing key and the
/// port (None if absent or empty). Hosts are restricted to what a DNS name or IP literal
/// can be: anything else (userinfo, percent-encoding, sub-delims) could make two
/// spellings of one name route differently.
fn parse_authority(raw: &[u8]) -> Result<(String, Option<u16>), HeadError> {
    let (host, port) = if raw.first() == Some(&b'[') {
        let close = raw
            .iter()
            .position(|&b| b == b']')
            .ok_or(HeadError::InvalidHost)?;
        let inner = std::str::from_utf8(&raw[1..close]).map_err(|_| HeadError::InvalidHost)?;
        inner
            .parse::<Ipv6Addr>()
            .map_err(|_| HeadError::InvalidHost)?;
        raw.split_at(close + 1)
    } else {
        let colon = raw.iter().position(|&b| b == b':').unwrap_or(raw.len());
        let (name, port) = raw.split_at(colon);
        let name = name.strip_suffix(b".").unwrap_or(name);
        let valid_label = |label: &[u8]| {
            !label.is_empty()
                && label
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !name.split(|&b| b == b'.').all(valid_label) {
            return Err(HeadError::InvalidHost);
        }
        (name, port)
    };
    let port = match port {
        [] | [b':'] => None,
        [b':', digits @ ..] if digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit) => {
            let n = digits
                .iter()
                .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
            Some(u16::try_from(n).map_err(|_| HeadError::InvalidHost)?)
        }
        _ => return Err(HeadError::InvalidHost),
    };
    let host = String::from_utf8(host.to_ascii_lowercase()).map_err(|_| HeadError::InvalidHost)?;
    Ok((host, port))
}

/// A header's name and trimmed value, as slices of the buffer.
type Field<'a> = (&'a [u8], &'a [u8]);

/// Check a header line (without CRLF) and split it into name and trimmed value. With
/// `complete == false` the line may stop anywhere; `Ok(None)` then means "fine so far".
fn field_line(line: &[u8], complete: bool) -> Result<Option<Field<'_>>, HeadError> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(HeadError::ObsFold);
    }
    let colon = line.iter().position(|&b| b == b':');
    let name = &line[..colon.unwrap_or(line.len())];
    if let Some(bad) = name.iter().position(|&b| !is_tchar(b)) {
        let only_space = name[bad..].iter().all(|&b| b == b' ' || b == b'\t');
        return match (only_space, colon) {
            (true, Some(_)) => Err(HeadError::WhitespaceBeforeColon),
            // Which error it is depends on the next byte; it is an error either way.
            (true, None) if !complete => Ok(None),
            _ => Err(HeadError::InvalidHeaderName),
        };
    }
    let Some(colon) = colon else {
        return if complete {
            Err(HeadError::MissingColon)
        } else {
            Ok(None)
        };
    };
    if colon == 0 {
        return Err(HeadError::InvalidHeaderName);
    }
    let value = &line[colon + 1..];
    // RFC 9110 §5.5: field-vchar, SP and HTAB only; CR and LF never reach here.
    if !value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
    {
        return Err(HeadError::InvalidHeaderValue);
    }
    Ok(complete.then(|| (name, trim_ows(value))))
}

/// What the headers seen so far say; each problem is reported at the header that makes
/// it certain.
#[derive(Default)]
struct Fields {
    host_seen: bool,
    host: Option<String>,
    content_length: Option<u64>,
    /// One entry per transfer coding listed, true where it is exactly "chunked".
    codings: Vec<bool>,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

impl Fields {
    fn add(&mut self, name: &[u8], value: &[u8], req: &RequestLine) -> Result<(), HeadError> {
        if name.eq_ignore_ascii_case(b"host") {
            if self.host_seen {
                return Err(HeadError::DuplicateHost);
            }
            self.host_seen = true;
            if value.is_empty() {
                if req.authority.is_none() {
                    return Err(HeadError::EmptyHost);
                }
            } else {
                // Checked even when the absolute-form overrides it: junk is junk.
                let (host, _) = parse_authority(value)?;
                self.host = Some(host);
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            for item in list(value) {
                let n = parse_decimal(item).ok_or(HeadError::InvalidContentLength)?;
                // RFC 9110 §8.6: repeats of one value may be folded; anything else is fatal.
                if self.content_length.is_some_and(|prev| prev != n) {
                    return Err(HeadError::ConflictingContentLength);
                }
                self.content_length = Some(n);
            }
            if !self.codings.is_empty() {
                return Err(HeadError::ContentLengthWithTransferEncoding);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // RFC 9112 §6.1: a server may treat both together as smuggling, and a 1.0
            // request with Transfer-Encoding as faulty framing. Both are refused.
            if self.content_length.is_some() {
                return Err(HeadError::ContentLengthWithTransferEncoding);
            }
            if req.version == Version::Http10 {
                return Err(HeadError::TransferEncodingInHttp10);
            }
            for item in list(value) {
                if !is_transfer_coding(item) {
                    return Err(HeadError::InvalidTransferEncoding);
                }
                self.codings.push(item.eq_ignore_ascii_case(b"chunked"));
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for item in list(value) {
                self.close |= item.eq_ignore_ascii_case(b"close");
                self.keep_alive |= item.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            self.expect_continue |=
                list(value).any(|item| item.eq_ignore_ascii_case(b"100-continue"));
        }
        Ok(())
    }

    /// RFC 9112 §6.3: in a request, chunked must be the final coding, and once only.
    fn framing(&self) -> Result<BodyFraming, HeadError> {
        let Some((&last, before)) = self.codings.split_last() else {
            return Ok(self
                .content_length
                .map_or(BodyFraming::None, BodyFraming::Length));
        };
        if !last {
            return Err(HeadError::ChunkedNotFinal);
        }
        if before.iter().any(|&chunked| chunked) {
            return Err(HeadError::DuplicateChunked);
        }
        if !before.is_empty() {
            return Err(HeadError::UnsupportedTransferCoding);
        }
        Ok(BodyFraming::Chunked)
    }
}

/// The complete head `head` (from the request line to the final CRLF) whose lines the
/// scan accepted: last checks, then tokenise it with httparse.
fn finish(
    head: &[u8],
    head_len: usize,
    req: &RequestLine,
    fields: &Fields,
    lines: &[Field<'_>],
) -> Result<RequestHead, HeadError> {
    // RFC 9112 §3.2: even an absolute-form 1.1 request must carry Host.
    if req.version == Version::Http11 && !fields.host_seen {
        return Err(HeadError::MissingHost);
    }
    let body = fields.framing()?;

    let mut slots = vec![httparse::EMPTY_HEADER; lines.len()];
    let mut parsed = httparse::Request::new(&mut slots);
    // All of httparse's leniency flags stay off (the default); the scan has already
    // refused what they would let through, and the comparison below catches the rest.
    let status = httparse::ParserConfig::default().parse_request(&mut parsed, head);
    let agrees = status == Ok(httparse::Status::Complete(head.len()))
        && parsed.method == Some(req.method.as_str())
        && parsed.path == Some(req.target.as_str())
        && parsed.version == Some(req.version.minor())
        && parsed.headers.len() == lines.len()
        && parsed
            .headers
            .iter()
            .zip(lines)
            .all(|(h, &(name, value))| h.name.as_bytes() == name && h.value == value);
    if !agrees {
        return Err(HeadError::TokenizerMismatch);
    }
    let headers = parsed
        .headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect();

    let keep_alive = match req.version {
        Version::Http11 => !fields.close,
        Version::Http10 => fields.keep_alive && !fields.close,
    };
    Ok(RequestHead {
        head_len,
        method: req.method.clone(),
        version: req.version,
        target: req.target.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        host: req.authority.clone().or_else(|| fields.host.clone()),
        headers,
        body,
        keep_alive,
        expect_continue: fields.expect_continue && req.version == Version::Http11,
    })
}

/// Elements of a comma-separated list, without surrounding whitespace (empty ones kept,
/// so callers can refuse them).
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_ows)
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// `token *( OWS ";" OWS transfer-parameter )`; parameters are only checked for
/// plausible bytes, since any coding with them is refused later anyway.
fn is_transfer_coding(item: &[u8]) -> bool {
    let name_len = item.iter().take_while(|&&b| is_tchar(b)).count();
    if name_len == 0 {
        return false;
    }
    match trim_ows(&item[name_len..]) {
        [] => true,
        [b';', params @ ..] => params
            .iter()
            .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)),
        _ => false,
    }
}

/// RFC 9110 §5.6.2 tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Bytes a request-target may hold here: no whitespace or controls, no fragment.
/// Non-ASCII must be UTF-8, which is checked once the target is complete.
fn is_target_byte(b: u8) -> bool {
    b > 0x20 && b != 0x7f && b != b'#'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        parse_request(bytes, &Limits::default())
    }

    fn ok(text: &str) -> RequestHead {
        match parse(text.as_bytes()) {
            Ok(Some(head)) => head,
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    fn err(text: &str) -> HeadError {
        err_bytes(text.as_bytes())
    }

    fn err_bytes(bytes: &[u8]) -> HeadError {
        match parse(bytes) {
            Err(e) => e,
            other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    fn assert_rejects(text: &str, expected: HeadError, status: u16) {
        assert_eq!(err(text), expected, "{text:?}");
        assert_eq!(expected.status(), status, "{expected:?}");
    }

    const VALID: &[&str] = &[
        "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "GET http://Example.COM:8080/a/b?x=1&y=2 HTTP/1.1\r\nHost: other\r\n\r\n",
        "GET /many HTTP/1.1\r\nHost: a.test\r\nAccept: */*\r\nUser-Agent: t/1.0\r\n\
         Accept-Encoding: gzip, br\r\nX-Empty:\r\nX-Spaces:   padded value \t \r\n\
         Cookie: a=b; c=d\r\nReferer: http://a.test/\r\nX-Obs: caf\u{e9}\r\n\r\n",
        "POST /upload HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\
         Expect: 100-continue\r\n\r\n",
        "GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "\r\n\r\nGET /after-crlf HTTP/1.1\r\nHost: a.test\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n",
        "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
        "PUT /x HTTP/1.1\r\nHost: [::1]:8080\r\nContent-Length: 5\r\n\r\n",
    ];

    #[test]
    fn every_prefix_of_a_valid_head_is_incomplete() {
        for text in VALID {
            let head = text.as_bytes();
            for i in 0..head.len() {
                assert_eq!(parse(&head[..i]), Ok(None), "prefix {i} of {text:?}");
            }
            assert_eq!(ok(text).head_len, head.len(), "{text:?}");
            for tail in [
                &b"hello"[..],
                b"GET / HTTP/1.1\r\nHost: b\r\n\r\n",
                b"\r\n",
                b"\n",
            ] {
                let mut more = head.to_vec();
                more.extend_from_slice(tail);
                let parsed = parse(&more).unwrap().unwrap();
                assert_eq!(parsed.head_len, head.len(), "{text:?} + {tail:?}");
            }
        }
    }

    #[test]
    fn fields_of_a_simple_get() {
        let head = ok("GET /a%20b/c?q=1?2 HTTP/1.1\r\nHost: Example.com\r\nX-A:  v \r\n\r\n");
        assert_eq!(head.method, Method::Get);
        assert_eq!(head.version, Version::Http11);
        assert_eq!(head.target, "/a%20b/c?q=1?2");
        assert_eq!(head.path, "/a%20b/c");
        assert_eq!(head.query.as_deref(), Some("q=1?2"));
        assert_eq!(head.host.as_deref(), Some("example.com"));
        assert_eq!(head.header("x-a"), Some(&b"v"[..]));
        assert_eq!(head.header("HOST"), Some(&b"Example.com"[..]));
        assert_eq!(head.header("missing"), None);
        assert_eq!(head.headers[1].0, "X-A");
        assert_eq!(head.body, BodyFraming::None);
        assert!(head.keep_alive && !head.expect_continue && !head.is_head());
    }

    #[test]
    fn methods_are_case_sensitive_tokens() {
        let cases = [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("POST", Method::Post),
            ("PUT", Method::Put),
            ("DELETE", Method::Delete),
            ("OPTIONS", Method::Options),
            ("PATCH", Method::Patch),
            ("TRACE", Method::Trace),
            ("get", Method::Other("get".into())),
            ("PROPFIND", Method::Other("PROPFIND".into())),
        ];
        for (token, method) in cases {
            let head = ok(&format!("{token} / HTTP/1.1\r\nHost: a\r\n\r\n"));
            assert_eq!(head.method.as_str(), token);
            assert_eq!(head.method, method);
        }
        assert!(ok("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").is_head());
    }

    #[test]
    fn absolute_form_path_and_query() {
        let head = ok("GET http://a.test HTTP/1.1\r\nHost: a.test\r\n\r\n");
        assert_eq!((head.path.as_str(), head.query.as_deref()), ("/", None));
        let head = ok("GET HTTPS://a.test?x HTTP/1.1\r\nHost: a.test\r\n\r\n");
        assert_eq!(
            (head.path.as_str(), head.query.as_deref()),
            ("/", Some("x"))
        );
        let head = ok("GET http://a.test:81/p/q?r HTTP/1.1\r\nHost: a.test\r\n\r\n");
        assert_eq!(
            (head.path.as_str(), head.query.as_deref()),
            ("/p/q", Some("r"))
        );
        assert_eq!(head.target, "http://a.test:81/p/q?r");
    }

    #[test]
    fn host_normalisation() {
        let host = |text: &str| ok(text).host;
        let get = |h: &str| host(&format!("GET / HTTP/1.1\r\nHost: {h}\r\n\r\n"));
        assert_eq!(get("Example.COM").as_deref(), Some("example.com"));
        assert_eq!(get("example.com:8080").as_deref(), Some("example.com"));
        assert_eq!(get("example.com.").as_deref(), Some("example.com"));
        assert_eq!(get("example.com.:80").as_deref(), Some("example.com"));
        assert_eq!(get("example.com:").as_deref(), Some("example.com"));
        assert_eq!(get("127.0.0.1:80").as_deref(), Some("127.0.0.1"));
        assert_eq!(get("[::1]").as_deref(), Some("[::1]"));
        assert_eq!(get("[2001:DB8::1]:443").as_deref(), Some("[2001:db8::1]"));
        assert_eq!(get("under_score.test").as_deref(), Some("under_score.test"));
        // The absolute-form's authority wins, and even an empty Host is then fine.
        let text = "GET http://Abs.Test:8080/x HTTP/1.1\r\nHost: other.test\r\n\r\n";
        assert_eq!(host(text).as_deref(), Some("abs.test"));
        let text = "GET http://abs.test./x HTTP/1.1\r\nHost:\r\n\r\n";
        assert_eq!(host(text).as_deref(), Some("abs.test"));
        let text = "GET http://[::1]:80/ HTTP/1.0\r\n\r\n";
        assert_eq!(host(text).as_deref(), Some("[::1]"));
        // HTTP/1.0 may go without Host.
        assert_eq!(host("GET / HTTP/1.0\r\n\r\n"), None);
    }

    #[test]
    fn invalid_hosts() {
        for h in [
            "user@a.test",
            "a test",
            "a.test:80:80",
            "a.test:99999",
            "a.test:123456",
            "a.test:8o",
            ".",
            "a..test",
            ".a.test",
            "a.test..",
            "%61.test",
            "a,b",
            "[::1",
            "[::1]x",
            "[::1]:x",
            "[zz::1]",
            "[fe80::1%25eth0]",
            "caf\u{e9}.test",
        ] {
            let text = format!("GET / HTTP/1.1\r\nHost: {h}\r\n\r\n");
            assert_rejects(&text, HeadError::InvalidHost, 400);
        }
        for target in [
            "http://user@a.test/",
            "http:///x",
            "http://a.test:x/",
            "https://a b/",
        ] {
            let text = format!("GET {target} HTTP/1.1\r\nHost: a.test\r\n\r\n");
            let e = err(&text);
            assert!(
                matches!(e, HeadError::InvalidHost | HeadError::MalformedRequestLine),
                "{target}: {e:?}"
            );
        }
        assert_eq!(
            err("GET http://a.test/ HTTP/1.1\r\nHost: x@y\r\n\r\n"),
            HeadError::InvalidHost
        );
    }

    #[test]
    fn host_rules() {
        assert_rejects("GET / HTTP/1.1\r\n\r\n", HeadError::MissingHost, 400);
        assert_rejects(
            "GET http://a.test/ HTTP/1.1\r\n\r\n",
            HeadError::MissingHost,
            400,
        );
        assert_rejects(
            "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            HeadError::DuplicateHost,
            400,
        );
        assert_rejects(
            "GET / HTTP/1.0\r\nhost: a\r\nHOST: b\r\n\r\n",
            HeadError::DuplicateHost,
            400,
        );
        assert_rejects("GET / HTTP/1.1\r\nHost:\r\n\r\n", HeadError::EmptyHost, 400);
        assert_rejects(
            "GET / HTTP/1.1\r\nHost:  \t \r\n\r\n",
            HeadError::EmptyHost,
            400,
        );
        assert_rejects("GET / HTTP/1.0\r\nHost:\r\n\r\n", HeadError::EmptyHost, 400);
    }

    #[test]
    fn leading_empty_lines_count_in_head_len() {
        let head = ok("\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(head.head_len, 6 + 16 + 9 + 2);
        assert_eq!(head.path, "/");
        assert_eq!(parse(b"\r\n\r"), Ok(None));
        assert_rejects(
            "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            HeadError::BareLf,
            400,
        );
        assert_rejects(
            "\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            HeadError::BareLf,
            400,
        );
        assert_rejects(
            "\rGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            HeadError::BareCr,
            400,
        );
    }

    #[test]
    fn bare_lf_and_cr_are_rejected() {
        assert_rejects("GET / HTTP/1.1\nHost: a\r\n\r\n", HeadError::BareLf, 400);
        assert_rejects("GET / HTTP/1.1\r\nHost: a\n\r\n", HeadError::BareLf, 400);
        assert_rejects("GET / HTTP/1.1\r\nHost: a\r\n\n", HeadError::BareLf, 400);
        assert_rejects(
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\nb\r\n\r\n",
            HeadError::BareLf,
            400,
        );
        assert_rejects("GET / HTTP/1.1\rHost: a\r\n\r\n", HeadError::BareCr, 400);
        assert_rejects(
            "GET / HTTP/1.1\r\nX: a\rb\r\nHost: a\r\n\r\n",
            HeadError::BareCr,
            400,
        );
        assert_rejects(
            "GET / HTTP/1.1\r\nHost: a\r\n\r\r\n",
            HeadError::BareCr,
            400,
        );
        // Certain before the line ends.
        assert_eq!(err("GET /\rx"), HeadError::BareCr);
        assert_eq!(err("GET / HTTP/1.1\r\nX: a\rb"), HeadError::BareCr);
    }

    #[test]
    fn request_line_shape() {
        use HeadError::*;
        for (line, expected) in [
            ("GET  / HTTP/1.1", MalformedRequestLine),
            ("GET /  HTTP/1.1", MalformedRequestLine),
            (" GET / HTTP/1.1", MalformedRequestLine),
            ("GET / HTTP/1.1 ", MalformedRequestLine),
            ("GET / HTTP/1.1 x", MalformedRequestLine),
            ("GET /", MalformedRequestLine),
            ("GET / ", MalformedRequestLine),
            ("GET", MalformedRequestLine),
            ("GET\t/\tHTTP/1.1", InvalidMethod),
            ("GET / http/1.1", MalformedRequestLine),
            ("GET / HTTP", MalformedRequestLine),
            ("GET / FOO/1.1", MalformedRequestLine),
            ("G(T / HTTP/1.1", InvalidMethod),
            ("G\u{e9}T / HTTP/1.1", InvalidMethod),
        ] {
            assert_rejects(&format!("{line}\r\nHost: a\r\n\r\n"), expected, 400);
        }
    }

    #[test]
    fn unsupported_versions_get_505() {
        for v in [
            "HTTP/2.0",
            "HTTP/1.2",
            "HTTP/0.9",
            "HTTP/1.10",
            "HTTP/1.1x",
            "HTTP/3",
        ] {
            let text = format!("GET / {v}\r\nHost: a\r\n\r\n");
            assert_rejects(&text, HeadError::UnsupportedVersion, 505);
        }
        // The HTTP/2 preface says 505 rather than "bad target".
        assert_eq!(
            err("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            HeadError::UnsupportedVersion
        );
    }

    #[test]
    fn target_bytes() {
        for target in ["/a#b", "/a\x7fb", "/a\x01b", "/a\tb", "/\x00"] {
            let text = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_rejects(&text, HeadError::InvalidTarget, 400);
        }
        let mut bytes = b"GET /\xff\xfe HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        assert_eq!(err_bytes(&bytes), HeadError::InvalidTarget);
        // Raw UTF-8 is passed on as sent.
        bytes = "GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n".into();
        assert_eq!(parse(&bytes).unwrap().unwrap().path, "/caf\u{e9}");
    }

    #[test]
    fn target_forms() {
        use HeadError::*;
        assert_rejects(
            "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            TargetFormNotAllowed,
            400,
        );
        assert_rejects(
            "GET a.test:80 HTTP/1.1\r\nHost: a\r\n\r\n",
            TargetFormNotAllowed,
            400,
        );
        assert_rejects(
            "CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n",
            TargetFormNotAllowed,
            400,
        );
        assert_rejects(
            "CONNECT a.test HTTP/1.1\r\nHost: a\r\n\r\n",
            TargetFormNotAllowed,
            400,
        );
        assert_rejects(
            "CONNECT http://a.test:443/ HTTP/1.1\r\nHost: a\r\n\r\n",
            TargetFormNotAllowed,
            400,
        );
        assert_rejects(
            "GET ftp://a.test/ HTTP/1.1\r\nHost: a\r\n\r\n",
            InvalidTarget,
            400,
        );
        assert_rejects("GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget, 400);
        assert_rejects("GET ** HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget, 400);
        let head = ok("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!((head.path.as_str(), head.query), ("*", None));
        let head = ok("CONNECT a.test:443 HTTP/1.1\r\nHost: a.test\r\n\r\n");
        assert_eq!(head.method, Method::Connect);
        assert_eq!(head.path, "a.test:443");
    }

    #[test]
    fn header_line_syntax() {
        use HeadError::*;
        assert_rejects(
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            ObsFold,
            400,
        );
        assert_rejects(
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n",
            ObsFold,
            400,
        );
        assert_rejects("GET / HTTP/1.1\r\n Host: a\r\n\r\n", ObsFold, 400);
        assert_rejects(
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            WhitespaceBeforeColon,
            400,
        );
        assert_rejects(
            "GET / HTTP/1.1\r\nHost\t: a\r\n\r\n",
            WhitespaceBeforeColon,
            400,
        );
        assert_rejects(
            "GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
            MissingColon,
            400,
        );
        assert_rejects(
            "GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n",
            InvalidHeaderName,
            400,
        );
        assert_rejects(
            "GET / HTTP/1.1\r\nHost: a\r\nX Y: v\r\n\r\n",
            InvalidHeaderName,
            400,
        );
        assert_rejects(
            "GET / HTTP/1.1\r\nHost: a\r\nX(: v\r\n\r\n",
            InvalidHeaderName,
            400,
        );
        assert_rejects(
            "GET / HTTP/1.1\r\nHost: a\r\nX\"Y: v\r\n\r\n",
            InvalidHeaderName,
            400,
        );
        for value in ["a\0b", "\0", "a\x01", "a\x7f", "a\x0bb", "a\x1b"] {
            let text = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {value}\r\n\r\n");
            assert_rejects(&text, InvalidHeaderValue, 400);
        }
        // Non-ASCII and tabs inside values are fine, and values stay bytes.
        let head = parse(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\tb\xff\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.header("x"), Some(&b"a\tb\xff"[..]));
    }

    #[test]
    fn content_length() {
        use HeadError::*;
        let cl = |v: &str| {
            parse(format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {v}\r\n\r\n").as_bytes())
        };
        let length = |v: &str| cl(v).unwrap().unwrap().body;
        assert_eq!(length("0"), BodyFraming::Length(0));
        assert_eq!(length("42"), BodyFraming::Length(42));
        assert_eq!(length("007"), BodyFraming::Length(7));
        assert_eq!(length("5, 5 ,5"), BodyFraming::Length(5));
        assert_eq!(
            length("18446744073709551615"),
            BodyFraming::Length(u64::MAX)
        );
        for bad in [
            "",
            "+5",
            "-5",
            " 0x5",
            "5a",
            "5.0",
            "1 2",
            "18446744073709551616",
            "5,",
            ",5",
        ] {
            assert_eq!(cl(bad), Err(InvalidContentLength), "{bad:?}");
        }
        assert_eq!(cl("5, 6"), Err(ConflictingContentLength));
        assert_eq!(ConflictingContentLength.status(), 400);
        let two = |a: &str, b: &str| {
            parse(
                format!(
                    "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {a}\r\n\
                     content-length: {b}\r\n\r\n"
                )
                .as_bytes(),
            )
        };
        assert_eq!(two("3", "3").unwrap().unwrap().body, BodyFraming::Length(3));
        assert_eq!(two("3", "4"), Err(ConflictingContentLength));
        assert_eq!(two("3", "x"), Err(InvalidContentLength));
    }

    #[test]
    fn transfer_encoding() {
        use HeadError::*;
        let te = |v: &str| {
            parse(
                format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {v}\r\n\r\n").as_bytes(),
            )
        };
        for good in ["chunked", "Chunked", "CHUNKED", " chunked "] {
            assert_eq!(
                te(good).unwrap().unwrap().body,
                BodyFraming::Chunked,
                "{good:?}"
            );
        }
        for (v, expected) in [
            ("gzip, chunked", UnsupportedTransferCoding),
            ("gzip,chunked", UnsupportedTransferCoding),
            ("identity ,\tchunked", UnsupportedTransferCoding),
            ("gzip;q=1, chunked", UnsupportedTransferCoding),
            ("chunked;x=1", ChunkedNotFinal),
            ("gzip", ChunkedNotFinal),
            ("identity", ChunkedNotFinal),
            ("chunked, gzip", ChunkedNotFinal),
            ("chunked, chunked", DuplicateChunked),
            ("chunked,CHUNKED", DuplicateChunked),
            ("", InvalidTransferEncoding),
            ("chunked,", InvalidTransferEncoding),
            (", chunked", InvalidTransferEncoding),
            ("chun ked", InvalidTransferEncoding),
            ("\"chunked\"", InvalidTransferEncoding),
        ] {
            assert_eq!(te(v), Err(expected), "{v:?}");
        }
        assert_eq!(UnsupportedTransferCoding.status(), 501);
        // Codings add up across header lines.
        let split = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\
                     Transfer-Encoding: chunked\r\n\r\n";
        assert_rejects(split, UnsupportedTransferCoding, 501);
        let twice = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
                     Transfer-Encoding: chunked\r\n\r\n";
        assert_rejects(twice, DuplicateChunked, 400);
    }

    #[test]
    fn smuggling_combinations() {
        use HeadError::*;
        assert_rejects(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            ContentLengthWithTransferEncoding,
            400,
        );
        assert_rejects(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            ContentLengthWithTransferEncoding,
            400,
        );
        assert_rejects(
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            TransferEncodingInHttp10,
            400,
        );
    }

    #[test]
    fn connection_and_expect() {
        let head = ok;
        assert!(head("GET / HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(
            !head("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade , CLOSE\r\n\r\n").keep_alive
        );
        assert!(
            !head("GET / HTTP/1.1\r\nHost: a\r\nConnection: te\r\nConnection: close\r\n\r\n")
                .keep_alive
        );
        assert!(head("GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: foo,keep-alive\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);

        assert!(head("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n\r\n").expect_continue);
        assert!(!head("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n").expect_continue);
        assert!(!head("PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue);
    }

    #[test]
    fn limits() {
        let limits = Limits {
            max_request_line: 20,
            max_head_bytes: 64,
            max_headers: 2,
        };
        let p = |text: &str| parse_request(text.as_bytes(), &limits);
        // Exactly at each limit is fine.
        let line = format!("GET /{} HTTP/1.1", "a".repeat(6));
        assert_eq!(line.len(), 20);
        assert!(
            p(&format!("{line}\r\nHost: a\r\nX: b\r\n\r\n"))
                .unwrap()
                .is_some()
        );
        let base = "GET / HTTP/1.1\r\nHost: a\r\nX: \r\n\r\n".len();
        let padded =
            |n: usize| format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "b".repeat(n));
        let head = padded(64 - base);
        assert_eq!(head.len(), 64);
        assert!(p(&head).unwrap().is_some());
        for i in 0..head.len() {
            assert_eq!(parse_request(&head.as_bytes()[..i], &limits), Ok(None));
        }

        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(7));
        assert_eq!(p(&long), Err(HeadError::RequestLineTooLong));
        assert_eq!(HeadError::RequestLineTooLong.status(), 414);
        // Without CRLF yet: 21 bytes are already too many, 20 and a CR are not.
        assert_eq!(
            p(&format!("GET /{}", "a".repeat(16))),
            Err(HeadError::RequestLineTooLong)
        );
        assert_eq!(p(&format!("GET /{} HTTP/1.1\r", "a".repeat(6))), Ok(None));

        let big = padded(65 - base);
        assert_eq!(p(&big), Err(HeadError::HeadTooLarge));
        assert_eq!(HeadError::HeadTooLarge.status(), 431);
        // Unfinished and already at the limit: it can only grow past it.
        assert_eq!(p(&big[..64]), Err(HeadError::HeadTooLarge));
        assert_eq!(p(&big[..63]), Ok(None));
        // Leading empty lines count.
        assert_eq!(p(&"\r\n".repeat(40)), Err(HeadError::HeadTooLarge));

        let many = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        assert_eq!(p(many), Err(HeadError::TooManyHeaders));
        assert_eq!(HeadError::TooManyHeaders.status(), 431);
        assert_eq!(
            p("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB"),
            Err(HeadError::TooManyHeaders)
        );
        assert_eq!(p("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\n\r"), Ok(None));
    }

    #[test]
    fn default_limits() {
        let limits = Limits::default();
        assert_eq!(
            (
                limits.max_request_line,
                limits.max_head_bytes,
                limits.max_headers
            ),
            (8192, 16384, 100)
        );
        let mut text = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..99 {
            text.push_str(&format!("X-{i}: v\r\n"));
        }
        text.push_str("\r\n");
        assert!(parse(text.as_bytes()).unwrap().is_some());
        text.insert_str(text.len() - 2, "X-last: v\r\n");
        assert_eq!(parse(text.as_bytes()), Err(HeadError::TooManyHeaders));
        let line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(8192));
        assert_eq!(parse(line.as_bytes()), Err(HeadError::RequestLineTooLong));
    }

    #[test]
    fn garbage_is_refused_before_the_line_ends() {
        // A TLS ClientHello on the plain port.
        assert_eq!(
            err_bytes(b"\x16\x03\x01\x02\x00\x01"),
            HeadError::InvalidMethod
        );
        assert_eq!(err("GET /a b"), HeadError::MalformedRequestLine);
        assert_eq!(err("GET / XTTP"), HeadError::MalformedRequestLine);
        assert_eq!(err("GET /\x01"), HeadError::InvalidTarget);
        assert_eq!(err("GET / HTTP/1.1\r\nHost: a\r\n b"), HeadError::ObsFold);
        assert_eq!(
            err("GET / HTTP/1.1\r\nHost: a\r\nX\x01"),
            HeadError::InvalidHeaderName
        );
        assert_eq!(
            err("GET / HTTP/1.1\r\nHost: a\r\nX: \0"),
            HeadError::InvalidHeaderValue
        );
        // Header semantics are judged at the header that settles them.
        assert_eq!(
            err("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n"),
            HeadError::DuplicateHost
        );
        assert_eq!(
            err("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n"),
            HeadError::ConflictingContentLength
        );
        assert_eq!(err("GET * HTTP/1.1\r\n"), HeadError::TargetFormNotAllowed);
        // But whether Host is missing is only known at the end.
        assert_eq!(parse(b"GET / HTTP/1.1\r\nX: a\r\n"), Ok(None));
    }

    /// Feed `stream` in pieces of `size` bytes into a growing buffer, taking heads (and
    /// Content-Length bodies) off the front as they complete.
    fn split_reads(stream: &[u8], size: usize) -> Vec<RequestHead> {
        let mut buf = Vec::new();
        let mut heads = Vec::new();
        let mut body_left = 0u64;
        for piece in stream.chunks(size) {
            buf.extend_from_slice(piece);
            loop {
                if body_left > 0 {
                    let n = (buf.len() as u64).min(body_left) as usize;
                    buf.drain(..n);
                    body_left -= n as u64;
                    if body_left > 0 {
                        break;
                    }
                }
                match parse(&buf) {
                    Ok(Some(head)) => {
                        buf.drain(..head.head_len);
                        if let BodyFraming::Length(n) = head.body {
                            body_left = n;
                        }
                        heads.push(head);
                    }
                    Ok(None) => break,
                    Err(e) => panic!("size {size}: {e:?} at {:?}", String::from_utf8_lossy(&buf)),
                }
            }
        }
        assert!(
            buf.is_empty() && body_left == 0,
            "size {size}: left {buf:?}"
        );
        heads
    }

    #[test]
    fn split_reads_of_a_pipelined_stream() {
        let requests: [&str; 3] = [
            "GET /one HTTP/1.1\r\nHost: a.test\r\nAccept: */*\r\n\r\n",
            "POST /two?x HTTP/1.1\r\nHost: b.test\r\nContent-Length: 11\r\n\r\nhello world",
            "\r\nHEAD http://c.test/three HTTP/1.1\r\nHost: c.test\r\nConnection: close\r\n\r\n",
        ];
        let stream: Vec<u8> = requests.concat().into_bytes();
        let expected_len = [
            requests[0].len(),
            requests[1].len() - "hello world".len(),
            requests[2].len(),
        ];
        for size in 1..=17 {
            let heads = split_reads(&stream, size);
            assert_eq!(heads.len(), 3, "size {size}");
            let paths: Vec<&str> = heads.iter().map(|h| h.path.as_str()).collect();
            assert_eq!(paths, ["/one", "/two", "/three"], "size {size}");
            let lens: Vec<usize> = heads.iter().map(|h| h.head_len).collect();
            assert_eq!(lens, expected_len, "size {size}");
            assert_eq!(heads[1].body, BodyFraming::Length(11));
            assert_eq!(heads[2].host.as_deref(), Some("c.test"));
            assert!(heads[2].is_head() && !heads[2].keep_alive);
        }
    }

    /// xorshift64: enough randomness for mutation, with no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn no_panic_on_malformed_or_mutated_input() {
        let malformed: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: [\r\n\r\n",
            b"GET http://[::1 HTTP/1.1\r\n\r\n",
            b"GET http:// HTTP/1.1\r\nHost:\r\n\r\n",
            b"\r\r\n\n\r",
            b"GET \xe9\xff / HTTP/1.1\r\n\r\n",
            b"CONNECT [::1]:99999 HTTP/1.1\r\nHost: :\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ;\r\n\r\n",
        ];
        let tight = Limits {
            max_request_line: 16,
            max_head_bytes: 48,
            max_headers: 1,
        };
        for input in malformed
            .iter()
            .copied()
            .chain(VALID.iter().map(|s| s.as_bytes()))
        {
            for i in 0..=input.len() {
                let _ = parse(&input[..i]);
                let _ = parse_request(&input[..i], &tight);
            }
        }
        let interesting = b"\r\n :;,@[]./?#*\0\t\x7f\xff0123456789abcdefHTTP/1.";
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let mut input = VALID[rng.below(VALID.len())].as_bytes().to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(input.len() + 1);
                let byte = if rng.below(2) == 0 {
                    interesting[rng.below(interesting.len())]
                } else {
                    rng.next() as u8
                };
                match rng.below(4) {
                    0 if at < input.len() => input[at] = byte,
                    1 if at < input.len() => {
                        input.remove(at);
                    }
                    2 => input.truncate(at),
                    _ => input.insert(at, byte),
                }
            }
            for limits in [Limits::default(), tight] {
                let whole = parse_request(&input, &limits);
                let cut = rng.below(input.len() + 1);
                let prefix = parse_request(&input[..cut], &limits);
                match (&whole, prefix) {
                    (Ok(Some(head)), prefix) => {
                        assert!(head.head_len <= input.len());
                        let expected = if cut < head.head_len {
                            Ok(None)
                        } else {
                            Ok(Some(head.clone()))
                        };
                        assert_eq!(
                            prefix.map(|h| h.map(|h| h.head_len)),
                            expected.map(|h| h.map(|h| h.head_len)),
                            "{input:?} cut at {cut}"
                        );
                    }
                    // An error is final (more bytes cannot repair it), and the same
                    // however much of the stream had arrived.
                    (whole, Err(e)) => assert_eq!(whole, &Err(e), "{input:?} cut at {cut}"),
                    _ => {}
                }
            }
        }
    }
}
