//! Parser for the header block a CGI script writes on stdout (RFC 3875 §6).
//!
//! FastCGI responders write the same format on their stdout stream, so this
//! parser is shared by both. It is incremental in the simplest way: call it
//! with everything read so far; `Ok(None)` means "read more and call again".

use std::fmt;

/// The parsed head of a CGI response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgiHead {
    /// From `Status: NNN reason`; else 302 for a client redirect; else 200.
    pub status: u16,
    /// The reason phrase from `Status`, reduced to printable ASCII.
    pub reason: Option<String>,
    pub location: Option<Location>,
    /// From a valid `Content-Length`; never also present in `headers`.
    pub content_length: Option<u64>,
    /// Every other header in order, name as written. Excludes `Status`,
    /// `Location`, `Content-Length`, hop-by-hop headers, `Server` and `Date`.
    pub headers: Vec<(String, String)>,
    /// Bytes of the input taken by the head, including the blank line.
    pub head_len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// Starts with a single '/': a local redirect (RFC 3875 §6.2.2) that the
    /// server may serve internally instead of telling the client.
    Local(String),
    /// An absolute URI with a scheme, e.g. `https://example.com/x`.
    Client(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgiHeadError {
    /// No blank line within the first `max` bytes.
    TooLarge {
        max: usize,
    },
    NoColon {
        line: String,
    },
    BadName {
        name: String,
    },
    BadValue {
        name: String,
    },
    ObsFold {
        line: String,
    },
    BadStatus {
        value: String,
    },
    DuplicateStatus,
    BadLocation {
        value: String,
    },
    DuplicateLocation,
    BadContentLength {
        value: String,
    },
    ConflictingContentLength {
        first: u64,
        second: u64,
    },
    /// RFC 3875 §6.2 requires at least one of these.
    NoContentTypeLocationOrStatus,
}

impl fmt::Display for CgiHeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { max } => write!(f, "head larger than {max} bytes"),
            Self::NoColon { line } => write!(f, "header line without a colon: {line}"),
            Self::BadName { name } => write!(f, "invalid header name: {name}"),
            Self::BadValue { name } => {
                write!(f, "control character in value of header {name}")
            }
            Self::ObsFold { line } => {
                write!(f, "folded header line (obs-fold) not allowed: {line}")
            }
            Self::BadStatus { value } => write!(f, "bad Status line: {value}"),
            Self::DuplicateStatus => f.write_str("more than one Status header"),
            Self::BadLocation { value } => write!(
                f,
                "Location is neither a local path nor an absolute URI: {value}"
            ),
            Self::DuplicateLocation => f.write_str("more than one Location header"),
            Self::BadContentLength { value } => write!(f, "bad Content-Length: {value}"),
            Self::ConflictingContentLength { first, second } => {
                write!(f, "conflicting Content-Length values: {first} and {second}")
            }
            Self::NoContentTypeLocationOrStatus => {
                f.write_str("no Content-Type, Location or Status")
            }
        }
    }
}

impl std::error::Error for CgiHeadError {}

/// Parses the CGI response head at the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete and `buf.len() <=
/// max_head`; a head (including its blank line) longer than `max_head` is an
/// error. Errors in lines that are already complete are reported at once, so
/// a script emitting garbage is rejected without waiting for `max_head`
/// bytes; a strict prefix of a valid head never yields an error.
pub fn parse_cgi_head(buf: &[u8], max_head: usize) -> Result<Option<CgiHead>, CgiHeadError> {
    // Only the first max_head bytes may belong to the head; looking further
    // would accept a head that exceeds the limit.
    let window = &buf[..buf.len().min(max_head)];
    let mut builder = Builder::default();
    let mut pos = 0;
    loop {
        let Some(nl) = window[pos..].iter().position(|&b| b == b'\n') else {
            return if buf.len() > max_head {
                Err(CgiHeadError::TooLarge { max: max_head })
            } else {
                Ok(None)
            };
        };
        let mut line = &window[pos..pos + nl];
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        pos += nl + 1;
        if line.is_empty() {
            return builder.finish(pos).map(Some);
        }
        builder.line(line)?;
    }
}

/// Headers a script must not set: they describe the client connection, which
/// the server owns, or are values the server itself supplies.
const DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "server",
    "date",
];

#[derive(Default)]
struct Builder {
    status: Option<(u16, Option<String>)>,
    location: Option<Location>,
    content_length: Option<u64>,
    saw_content_type: bool,
    headers: Vec<(String, String)>,
}

impl Builder {
    fn line(&mut self, line: &[u8]) -> Result<(), CgiHeadError> {
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return Err(CgiHeadError::ObsFold {
                line: excerpt(line),
            });
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(CgiHeadError::NoColon {
                line: excerpt(line),
            });
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(CgiHeadError::BadName {
                name: excerpt(name),
            });
        }
        // Checked as a token above, so this is ASCII.
        let name = String::from_utf8_lossy(name).into_owned();
        let raw = trim_ows(&line[colon + 1..]);
        // CR and NUL would allow response splitting or truncation downstream;
        // other controls are invalid in HTTP field values anyway.
        if raw.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(CgiHeadError::BadValue { name });
        }
        // Non-ASCII bytes (obs-text) are tolerated rather than failing the
        // whole response; lossy conversion keeps the output valid HTTP.
        let value = String::from_utf8_lossy(raw).into_owned();

        if name.eq_ignore_ascii_case("status") {
            if self.status.is_some() {
                return Err(CgiHeadError::DuplicateStatus);
            }
            self.status = Some(parse_status(&value)?);
        } else if name.eq_ignore_ascii_case("location") {
            if self.location.is_some() {
                return Err(CgiHeadError::DuplicateLocation);
            }
            self.location = Some(parse_location(value)?);
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(&value)?;
            match self.content_length {
                Some(first) if first != n => {
                    return Err(CgiHeadError::ConflictingContentLength { first, second: n });
                }
                _ => self.content_length = Some(n),
            }
        } else if DROPPED.iter().any(|d| name.eq_ignore_ascii_case(d)) {
            // Silently dropped: many scripts emit these out of habit, and
            // failing the response would punish harmless output.
        } else {
            if name.eq_ignore_ascii_case("content-type") {
                self.saw_content_type = true;
            }
            self.headers.push((name, value));
        }
        Ok(())
    }

    fn finish(self, head_len: usize) -> Result<CgiHead, CgiHeadError> {
        if !self.saw_content_type && self.location.is_none() && self.status.is_none() {
            return Err(CgiHeadError::NoContentTypeLocationOrStatus);
        }
        let (status, reason) = match self.status {
            Some(s) => s,
            None if matches!(self.location, Some(Location::Client(_))) => (302, None),
            None => (200, None),
        };
        Ok(CgiHead {
            status,
            reason,
            location: self.location,
            content_length: self.content_length,
            headers: self.headers,
            head_len,
        })
    }
}

fn parse_status(value: &str) -> Result<(u16, Option<String>), CgiHeadError> {
    let bad = || CgiHeadError::BadStatus {
        value: excerpt(value.as_bytes()),
    };
    let bytes = value.as_bytes();
    if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    if bytes.len() > 3 && !matches!(bytes[3], b' ' | b'\t') {
        return Err(bad());
    }
    let code: u16 = value[..3].parse().map_err(|_| bad())?;
    if !(100..=599).contains(&code) {
        return Err(bad());
    }
    // The reason goes verbatim into our status line, so anything that is not
    // printable ASCII is removed rather than trusted.
    let reason: String = value[3..]
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .collect();
    let reason = reason.trim();
    let reason = (!reason.is_empty()).then(|| reason.to_owned());
    Ok((code, reason))
}

fn parse_location(value: String) -> Result<Location, CgiHeadError> {
    let bytes = value.as_bytes();
    // "//host/x" is a network-path reference: treating it as local would let
    // a caller that echoes local paths to the client emit an open redirect.
    if bytes.first() == Some(&b'/') && bytes.get(1) != Some(&b'/') {
        return Ok(Location::Local(value));
    }
    if has_scheme(bytes) {
        return Ok(Location::Client(value));
    }
    Err(CgiHeadError::BadLocation {
        value: excerpt(bytes),
    })
}

/// `scheme ":"` per RFC 3986 §3.1.
fn has_scheme(bytes: &[u8]) -> bool {
    let Some(colon) = bytes.iter().position(|&b| b == b':') else {
        return false;
    };
    let scheme = &bytes[..colon];
    match scheme.split_first() {
        Some((first, rest)) => {
            first.is_ascii_alphabetic()
                && rest
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        }
        None => false,
    }
}

fn parse_content_length(value: &str) -> Result<u64, CgiHeadError> {
    // u64::from_str accepts a leading '+', which HTTP does not.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CgiHeadError::BadContentLength {
            value: excerpt(value.as_bytes()),
        });
    }
    value.parse().map_err(|_| CgiHeadError::BadContentLength {
        value: excerpt(value.as_bytes()),
    })
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
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

/// Error messages end up in logs; keep script output short and escaped.
fn excerpt(bytes: &[u8]) -> String {
    const MAX: usize = 80;
    let mut s = bytes[..bytes.len().min(MAX)].escape_ascii().to_string();
    if bytes.len() > MAX {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: usize = 64 * 1024;

    fn ok(buf: &[u8]) -> CgiHead {
        parse_cgi_head(buf, BIG)
            .expect("parse error")
            .expect("incomplete")
    }

    fn err(buf: &[u8]) -> CgiHeadError {
        parse_cgi_head(buf, BIG).expect_err("expected an error")
    }

    fn hdrs(h: &CgiHead) -> Vec<(&str, &str)> {
        h.headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn lf_head() {
        let h = ok(b"Content-Type: text/html\nX-A: 1\n\nbody");
        assert_eq!(h.status, 200);
        assert_eq!(h.reason, None);
        assert_eq!(h.location, None);
        assert_eq!(h.content_length, None);
        assert_eq!(hdrs(&h), [("Content-Type", "text/html"), ("X-A", "1")]);
        assert_eq!(h.head_len, 32);
    }

    #[test]
    fn crlf_head() {
        let buf = b"Content-Type: text/plain\r\nX-A: 1\r\n\r\nbody";
        let h = ok(buf);
        assert_eq!(hdrs(&h), [("Content-Type", "text/plain"), ("X-A", "1")]);
        assert_eq!(&buf[h.head_len..], b"body");
    }

    #[test]
    fn mixed_line_endings() {
        let buf = b"Content-Type: a/b\r\nX-A: 1\n\r\nrest";
        let h = ok(buf);
        assert_eq!(&buf[h.head_len..], b"rest");
        let buf = b"Content-Type: a/b\n\nrest";
        assert_eq!(&buf[ok(buf).head_len..], b"rest");
    }

    #[test]
    fn head_len_excludes_body_even_if_body_looks_like_headers() {
        let buf = b"Status: 200\n\nX-B: 2\n\nmore";
        let h = ok(buf);
        assert_eq!(h.head_len, 13);
        assert!(h.headers.is_empty());
    }

    #[test]
    fn status_with_reason() {
        let h = ok(b"Status: 404 Not Found\n\n");
        assert_eq!(h.status, 404);
        assert_eq!(h.reason.as_deref(), Some("Not Found"));
        assert!(h.headers.is_empty());
    }

    #[test]
    fn status_without_reason_and_tab_separator() {
        assert_eq!(ok(b"Status: 204\n\n").reason, None);
        let h = ok(b"status:\t500\tOops  \n\n");
        assert_eq!((h.status, h.reason.as_deref()), (500, Some("Oops")));
        assert_eq!(ok(b"Status: 201   \n\n").reason, None);
    }

    #[test]
    fn status_reason_sanitised() {
        let h = ok("Status: 403 Verboten \u{e9}t\u{e9}\tok\n\n".as_bytes());
        assert_eq!(h.reason.as_deref(), Some("Verboten tok"));
        let h = ok("Status: 403 \u{e9}\n\n".as_bytes());
        assert_eq!(h.reason, None);
    }

    #[test]
    fn bad_status_lines() {
        for line in [
            "Status:",
            "Status: 20",
            "Status: 2000",
            "Status: 200OK",
            "Status: 099",
            "Status: 600",
            "Status: abc",
            "Status: +20",
            "Status: OK 200",
        ] {
            let e = err(format!("{line}\n\n").as_bytes());
            assert!(matches!(e, CgiHeadError::BadStatus { .. }), "{line}: {e}");
            assert!(e.to_string().starts_with("bad Status line"));
        }
        for code in [100, 599] {
            assert_eq!(ok(format!("Status: {code}\n\n").as_bytes()).status, code);
        }
    }

    #[test]
    fn duplicate_status_rejected() {
        assert_eq!(
            err(b"Status: 200\nStatus: 404\n\n"),
            CgiHeadError::DuplicateStatus
        );
    }

    #[test]
    fn client_redirect_defaults_to_302() {
        let h = ok(b"Location: https://example.com/x?y=1\n\n");
        assert_eq!(h.status, 302);
        assert_eq!(
            h.location,
            Some(Location::Client("https://example.com/x?y=1".into()))
        );
        assert!(h.headers.is_empty());
    }

    #[test]
    fn client_redirect_with_explicit_status() {
        let h = ok(b"Status: 301 Moved\nLocation: http://a/\nContent-Type: text/html\n\n");
        assert_eq!(h.status, 301);
        assert_eq!(h.location, Some(Location::Client("http://a/".into())));
        assert_eq!(hdrs(&h), [("Content-Type", "text/html")]);
    }

    #[test]
    fn local_redirect() {
        let h = ok(b"Location: /other/page?q=1\n\n");
        assert_eq!(h.status, 200);
        assert_eq!(h.location, Some(Location::Local("/other/page?q=1".into())));
    }

    #[test]
    fn other_schemes_are_client_redirects() {
        for loc in ["mailto:a@b", "x-app+v1.2:thing", "HTTPS://X/"] {
            let h = ok(format!("Location: {loc}\n\n").as_bytes());
            assert_eq!(h.location, Some(Location::Client(loc.into())));
        }
    }

    #[test]
    fn bad_locations() {
        for loc in [
            "",
            "relative/path",
            "//evil.example/x",
            ":nothing",
            "1http://x",
            "ht tp://x",
            "?q",
        ] {
            let e = err(format!("Location: {loc}\n\n").as_bytes());
            assert!(
                matches!(e, CgiHeadError::BadLocation { .. }),
                "{loc:?}: {e}"
            );
        }
    }

    #[test]
    fn duplicate_location_rejected() {
        assert_eq!(
            err(b"Location: /a\nLocation: /b\n\n"),
            CgiHeadError::DuplicateLocation
        );
    }

    #[test]
    fn content_length_extracted() {
        let h = ok(b"Content-Type: a/b\nContent-Length: 42\n\n");
        assert_eq!(h.content_length, Some(42));
        assert_eq!(hdrs(&h), [("Content-Type", "a/b")]);
        let h = ok(b"Content-Type: a/b\ncontent-length: 0\nCONTENT-LENGTH: 0\n\n");
        assert_eq!(h.content_length, Some(0));
        let h = ok(b"Content-Type: a/b\nContent-Length: 18446744073709551615\n\n");
        assert_eq!(h.content_length, Some(u64::MAX));
    }

    #[test]
    fn bad_content_length() {
        for v in [
            "",
            "-1",
            "+1",
            "1.0",
            "0x10",
            "1 2",
            "12a",
            "18446744073709551616",
        ] {
            let e = err(format!("Content-Type: a/b\nContent-Length: {v}\n\n").as_bytes());
            assert!(
                matches!(e, CgiHeadError::BadContentLength { .. }),
                "{v:?}: {e}"
            );
        }
    }

    #[test]
    fn conflicting_content_length() {
        assert_eq!(
            err(b"Content-Type: a/b\nContent-Length: 1\nContent-Length: 2\n\n"),
            CgiHeadError::ConflictingContentLength {
                first: 1,
                second: 2
            }
        );
    }

    #[test]
    fn requires_content_type_location_or_status() {
        let e = err(b"X-A: 1\n\n");
        assert_eq!(e, CgiHeadError::NoContentTypeLocationOrStatus);
        assert_eq!(e.to_string(), "no Content-Type, Location or Status");
        assert_eq!(err(b"\n"), CgiHeadError::NoContentTypeLocationOrStatus);
        assert_eq!(
            err(b"\r\nbody"),
            CgiHeadError::NoContentTypeLocationOrStatus
        );
        // Content-Length alone is not enough.
        assert_eq!(
            err(b"Content-Length: 3\n\nabc"),
            CgiHeadError::NoContentTypeLocationOrStatus
        );
        assert_eq!(ok(b"content-type: x/y\n\n").status, 200);
    }

    #[test]
    fn missing_colon() {
        let e = err(b"Content-Type: a/b\nJust some text\n\n");
        assert!(matches!(e, CgiHeadError::NoColon { .. }));
        assert_eq!(e.to_string(), "header line without a colon: Just some text");
    }

    #[test]
    fn bad_header_names() {
        for name in [
            "",
            "Bad Name",
            "Bad\"",
            "X(y)",
            "Caf\u{e9}",
            "X\tY",
            "Content-Type ",
        ] {
            let e = err(format!("Content-Type: a/b\n{name}: v\n\n").as_bytes());
            assert!(matches!(e, CgiHeadError::BadName { .. }), "{name:?}: {e}");
        }
        let h = ok(b"Content-Type: a/b\nX!#$%&'*+-.^_`|~09az: v\n\n");
        assert_eq!(h.headers[1].0, "X!#$%&'*+-.^_`|~09az");
    }

    #[test]
    fn bad_header_values() {
        for bad in [
            &b"a\0b"[..],
            b"a\rb",
            b"a\r\r",
            b"a\x01",
            b"a\x7f",
            b"a\x1bb",
        ] {
            let mut buf = b"Content-Type: a/b\nX-A: ".to_vec();
            buf.extend_from_slice(bad);
            buf.extend_from_slice(b"\n\n");
            let e = err(&buf);
            assert_eq!(e, CgiHeadError::BadValue { name: "X-A".into() }, "{bad:?}");
        }
        // A bare CR just before CRLF is still a bare CR.
        assert!(matches!(
            err(b"Content-Type: a/b\r\r\n\r\n"),
            CgiHeadError::BadValue { .. }
        ));
    }

    #[test]
    fn tab_and_obs_text_allowed_in_values() {
        let h = ok(b"Content-Type: a/b\nX-A: a\tb\nX-B: caf\xe9\n\n");
        assert_eq!(h.headers[1].1, "a\tb");
        assert_eq!(h.headers[2].1, "caf\u{fffd}");
    }

    #[test]
    fn whitespace_trimmed() {
        let h = ok(b"Content-Type:text/html\nX-A:  \t v  w \t \r\nX-B:\n\n");
        assert_eq!(
            hdrs(&h),
            [("Content-Type", "text/html"), ("X-A", "v  w"), ("X-B", "")]
        );
    }

    #[test]
    fn obs_fold_rejected() {
        for fold in [" more", "\tmore"] {
            let e = err(format!("Content-Type: a/b\nX-A: 1\n{fold}\n\n").as_bytes());
            assert!(matches!(e, CgiHeadError::ObsFold { .. }), "{fold:?}");
        }
        // Leading whitespace on the first line is the same mistake.
        assert!(matches!(
            err(b" Content-Type: a/b\n\n"),
            CgiHeadError::ObsFold { .. }
        ));
    }

    #[test]
    fn hop_by_hop_server_and_date_dropped() {
        let h = ok(b"Content-Type: a/b\n\
            Connection: close\n\
            keep-alive: timeout=5\n\
            Transfer-Encoding: chunked\n\
            TE: trailers\n\
            Trailer: X\n\
            UPGRADE: h2c\n\
            Proxy-Connection: keep-alive\n\
            Server: Apache\n\
            date: Thu, 01 Jan 1970 00:00:00 GMT\n\
            X-Kept: yes\n\
            Set-Cookie: a=1\n\
            Set-Cookie: b=2\n\n");
        assert_eq!(
            hdrs(&h),
            [
                ("Content-Type", "a/b"),
                ("X-Kept", "yes"),
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
            ]
        );
    }

    #[test]
    fn dropped_headers_are_still_validated() {
        assert!(matches!(
            err(b"Content-Type: a/b\nConnection: a\rb\n\n"),
            CgiHeadError::BadValue { .. }
        ));
    }

    #[test]
    fn names_keep_their_spelling() {
        let h = ok(b"CONTENT-type: a/b\nx-MiXeD: 1\n\n");
        assert_eq!(hdrs(&h), [("CONTENT-type", "a/b"), ("x-MiXeD", "1")]);
    }

    #[test]
    fn incomplete_is_none() {
        for buf in [
            &b""[..],
            b"Content-Type: a/b",
            b"Content-Type: a/b\n",
            b"Content-Type: a/b\r\n\r",
            b"X-A: 1\n",
        ] {
            assert_eq!(parse_cgi_head(buf, BIG), Ok(None), "{buf:?}");
        }
    }

    #[test]
    fn complete_line_errors_reported_before_head_ends() {
        assert!(matches!(
            parse_cgi_head(b"garbage\nmore", BIG),
            Err(CgiHeadError::NoColon { .. })
        ));
    }

    const VALID: &[&[u8]] = &[
        b"Content-Type: text/html\r\nX-A: 1\r\n\r\n<html>",
        b"Status: 404 Not Found\nContent-Type: text/plain\nContent-Length: 3\n\nabc",
        b"Location: https://example.com/\r\nStatus: 303 See Other\r\n\r\n",
        b"Location: /x\n\n",
        b"Content-Type: a/b\nConnection: close\nX-E:\n\r\n\n\n",
    ];

    #[test]
    fn every_strict_prefix_is_incomplete() {
        for buf in VALID {
            let full = ok(buf);
            for i in 0..full.head_len {
                assert_eq!(
                    parse_cgi_head(&buf[..i], BIG),
                    Ok(None),
                    "prefix {i} of {buf:?}"
                );
                // The limit is inclusive, so the tightest limit that admits
                // the head must also treat its prefixes as incomplete.
                assert_eq!(parse_cgi_head(&buf[..i], full.head_len), Ok(None));
            }
        }
    }

    #[test]
    fn split_reads_give_the_same_result() {
        for buf in VALID {
            let whole = ok(buf);
            for chunk in 1..=7 {
                let mut acc = Vec::new();
                let mut result = None;
                for piece in buf.chunks(chunk) {
                    acc.extend_from_slice(piece);
                    if let Some(h) = parse_cgi_head(&acc, BIG).unwrap() {
                        result = Some(h);
                        break;
                    }
                }
                assert_eq!(result.as_ref(), Some(&whole), "chunk {chunk}");
            }
        }
    }

    #[test]
    fn max_head_limit() {
        let buf = b"Content-Type: a/b\n\nbody";
        let len = ok(buf).head_len;
        // Exactly at the limit is fine, even with body bytes beyond it.
        assert_eq!(parse_cgi_head(buf, len).unwrap().unwrap().head_len, len);
        assert_eq!(
            parse_cgi_head(buf, len - 1),
            Err(CgiHeadError::TooLarge { max: len - 1 })
        );
        assert_eq!(parse_cgi_head(&buf[..len - 1], len - 1), Ok(None));
        assert_eq!(
            parse_cgi_head(b"X-A: 1", 5).unwrap_err().to_string(),
            "head larger than 5 bytes"
        );
        assert_eq!(parse_cgi_head(b"", 0), Ok(None));
        assert_eq!(
            parse_cgi_head(b"\n", 0),
            Err(CgiHeadError::TooLarge { max: 0 })
        );
    }

    #[test]
    fn error_messages_escape_and_truncate_script_output() {
        let mut buf = b"Content-Type: a/b\n\x1b[31m".to_vec();
        buf.extend(std::iter::repeat_n(b'x', 500));
        buf.extend_from_slice(b"\n\n");
        let msg = err(&buf).to_string();
        assert!(msg.starts_with("header line without a colon: \\x1b[31m"));
        assert!(msg.ends_with("..."));
        assert!(msg.len() < 200);
    }

    #[test]
    fn error_is_std_error() {
        let e: Box<dyn std::error::Error> = Box::new(CgiHeadError::DuplicateStatus);
        assert_eq!(e.to_string(), "more than one Status header");
    }

    struct XorShift(u64);

    impl XorShift {
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
    fn mutations_never_panic_and_results_are_consistent() {
        const INTERESTING: &[u8] = b"\r\n\0: \t/:0123456789aZ\x7f\xff";
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let mut buf = VALID[rng.below(VALID.len())].to_vec();
            for _ in 0..=rng.below(4) {
                let at = rng.below(buf.len() + 1);
                let byte = if rng.below(2) == 0 {
                    INTERESTING[rng.below(INTERESTING.len())]
                } else {
                    rng.next() as u8
                };
                match rng.below(4) {
                    0 if at < buf.len() => buf[at] = byte,
                    1 if at < buf.len() => {
                        buf.remove(at);
                    }
                    2 => buf.truncate(at),
                    _ => buf.insert(at, byte),
                }
            }
            let max = if rng.below(4) == 0 {
                rng.below(buf.len() + 2)
            } else {
                BIG
            };
            match parse_cgi_head(&buf, max) {
                Ok(Some(h)) => {
                    assert!(h.head_len <= buf.len() && h.head_len <= max);
                    assert!((100..=599).contains(&h.status));
                    assert_eq!(buf[h.head_len - 1], b'\n');
                    for (n, v) in &h.headers {
                        assert!(!n.is_empty() && n.bytes().all(is_tchar));
                        assert!(!v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0));
                    }
                    if let Some(r) = &h.reason {
                        assert!(r.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
                    }
                    // Bytes after the head must not influence it.
                    let mut longer = buf[..h.head_len].to_vec();
                    longer.extend_from_slice(b"\0\r\n:junk");
                    assert_eq!(parse_cgi_head(&longer, max), Ok(Some(h)));
                }
                Ok(None) => assert!(buf.len() <= max),
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
    }
}
