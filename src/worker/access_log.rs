//! Access log lines: the combined log format, then the tenant name and the response
//! time in seconds:
//!
//! ```text
//! 127.0.0.1 - - [22/Nov/2026:07:46:43 +0000] "GET / HTTP/1.1" 200 13 "-" "curl/8.5.0" alice 0.000213
//! ```
//! Client-supplied fields are escaped so a request cannot forge log lines.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use time::OffsetDateTime;
use time::macros::format_description;

pub struct Entry<'a> {
    pub peer: IpAddr,
    pub method: &'a str,
    pub target: &'a str,
    pub version: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
    pub tenant: &'a str,
    pub elapsed: Duration,
}

pub fn format(e: &Entry<'_>) -> String {
    let mut line = String::with_capacity(160);
    let _ = write!(line, "{} - - [{}] \"", e.peer, clf_now());
    escape_into(&mut line, e.method.as_bytes());
    line.push(' ');
    escape_into(&mut line, e.target.as_bytes());
    line.push(' ');
    line.push_str(e.version);
    let _ = write!(line, "\" {} {} \"", e.status, e.bytes);
    escape_into(&mut line, e.referer.unwrap_or(b"-"));
    line.push_str("\" \"");
    escape_into(&mut line, e.user_agent.unwrap_or(b"-"));
    let _ = writeln!(line, "\" {} {:.6}", e.tenant, e.elapsed.as_secs_f64());
    line
}

/// Append one line with a single write, so lines from concurrent requests never mix
/// (O_APPEND writes are atomic for this size). A full disk loses the line, not service.
fn escape_into(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
}

/// `22/Nov/2026:07:46:43 +0000`, formatted at most once a second per thread.
fn clf_now() -> String {
    thread_local! {
        static CACHE: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let now = OffsetDateTime::now_utc();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != now.unix_timestamp() {
            let text = now
                .format(format_description!(
                    "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
                ))
                .unwrap_or_default();
            *c = (now.unix_timestamp(), text);
        }
        c.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_combined_format_with_escapes() {
        let line = format(&Entry {
            peer: "127.0.0.1".parse().unwrap(),
            method: "GET",
            target: "/a\"b",
            version: "HTTP/1.1",
            status: 200,
            bytes: 13,
            referer: None,
            user_agent: Some(b"evil\n127.0.0.1 - - fake"),
            tenant: "alice",
            elapsed: Duration::from_micros(250),
        });
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(line.contains("\"GET /a\\\"b HTTP/1.1\" 200 13 \"-\" \"evil\\x0a127.0.0.1 - - fake\" alice 0.000250\n"), "{line}");
        assert_eq!(line.matches('\n').count(), 1);
    }
}
