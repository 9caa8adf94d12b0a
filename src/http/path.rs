//! Turning a request path into the one path condo will look up on disk.
//!
//! Decoding happens before dot-segment removal on purpose: the file system sees the
//! decoded bytes, so `%2e%2e` must count as `..` here or it would slip past the check.
//! Decoding happens exactly once: `%252e` becomes the literal name `%2e`, which the
//! file system never interprets.

use std::fmt;

/// Why a request path was refused. Every variant means 400 Bad Request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/` (e.g. `*` or an absolute URI).
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// A control byte (below 0x20, or 0x7f), raw or percent-encoded, NUL included.
    ControlByte,
    /// `%2F`: no file name can hold a `/`, and decoding it into a separator would
    /// let a client smuggle segments past the dot-segment check.
    EncodedSlash,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
    /// A `..` would climb above the site root.
    AboveRoot,
}

impl PathError {
    pub fn status(&self) -> u16 {
        400
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "request path does not start with '/'",
            PathError::BadEscape => "invalid percent-escape in request path",
            PathError::ControlByte => "control character in request path",
            PathError::EncodedSlash => "encoded '/' (%2F) in request path",
            PathError::NotUtf8 => "request path is not UTF-8",
            PathError::AboveRoot => "request path climbs above the root",
        })
    }
}

impl std::error::Error for PathError {}

/// Decode `raw_path` (percent-encoded, starting with `/`, without the query) and
/// remove its dot-segments (RFC 3986 §5.2.4). The result starts with `/`, has no
/// empty, `.` or `..` segments, and ends with `/` when the request's did, or when its
/// last segment was `.` or `..` (as RFC 3986 has it: `/a/b/..` is `/a/`).
///
/// Backslash is an ordinary byte: on Linux it is a valid file-name character, not a
/// separator, so `/..\..\etc` is a single segment.
pub fn normalize(raw_path: &str) -> Result<String, PathError> {
    let rest = raw_path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let mut segments: Vec<String> = Vec::new();
    // RFC 3986 leaves a final "." or ".." as a trailing slash: "/a/b/.." is "/a/".
    let mut ends_in_dot_segment = false;
    for raw_segment in rest.split('/') {
        let segment = decode_segment(raw_segment)?;
        ends_in_dot_segment = match segment.as_str() {
            "" => continue,
            "." => true,
            ".." => {
                segments.pop().ok_or(PathError::AboveRoot)?;
                true
            }
            _ => {
                segments.push(segment);
                false
            }
        };
    }
    let trailing_slash = ends_in_dot_segment || raw_path.ends_with('/');
    let mut out = String::with_capacity(raw_path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// What a site refuses to serve by name, whichever handler would serve it (see
/// [`denied`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deny {
    /// Names starting with `.` (`.git`, `.env`, `.htaccess`, editors' `.x.swp`), but
    /// `/.well-known/` at the root (RFC 8615: ACME challenges, security.txt).
    pub hidden: bool,
    /// Backup and editor leftovers ([`is_backup_name`]).
    pub backup: bool,
}

/// Suffixes of backup copies and editor swap files, compared without regard to case.
const BACKUP_SUFFIXES: &[&str] = &[".bak", ".orig", ".old", ".save", ".swp", ".swo", ".swx"];

/// A backup or editor file by its name: `x~` (Emacs, vim's backup, gedit), `#x#`
/// (Emacs autosave), and `x.bak`, `x.orig` (patch, merge), `x.old`, `x.save` (nano),
/// `x.swp`/`.swo`/`.swx` (vim). These hold a copy of a script's source (a
/// `wp-config.php.bak` is the database password), served as text because no script
/// route claims their name.
pub fn is_backup_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    if name.ends_with('~') || (bytes.len() >= 2 && name.starts_with('#') && name.ends_with('#')) {
        return true;
    }
    BACKUP_SUFFIXES.iter().any(|suffix| {
        bytes.len() > suffix.len()
            && bytes[bytes.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    })
}

/// Whether `path` (as [`normalize`] returns it) names something the site does not
/// serve: any segment, directories and a PATH_INFO tail included, that `deny` refuses.
/// Decided on the decoded name alone, before any file is looked up, so the answer is
/// the same whether the file exists or not.
pub fn denied(path: &str, deny: Deny) -> bool {
    path.split('/')
        .filter(|segment| !segment.is_empty())
        .enumerate()
        .any(|(i, segment)| {
            (deny.hidden && segment.starts_with('.') && !(i == 0 && segment == ".well-known"))
                || (deny.backup && is_backup_name(segment))
        })
}

fn decode_segment(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).and_then(|&b| hex_value(b));
            let lo = bytes.get(i + 2).and_then(|&b| hex_value(b));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::BadEscape);
            };
            i += 3;
            let decoded = hi << 4 | lo;
            if decoded == b'/' {
                return Err(PathError::EncodedSlash);
            }
            decoded
        } else {
            i += 1;
            bytes[i - 1]
        };
        if byte < 0x20 || byte == 0x7f {
            return Err(PathError::ControlByte);
        }
        out.push(byte);
    }
    String::from_utf8(out).map_err(|_| PathError::NotUtf8)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        normalize(raw).unwrap_or_else(|e| panic!("{raw:?} refused: {e}"))
    }

    fn err(raw: &str) -> PathError {
        match normalize(raw) {
            Ok(p) => panic!("{raw:?} accepted as {p:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn root_and_plain_paths() {
        assert_eq!(ok("/"), "/");
        assert_eq!(ok("/index.html"), "/index.html");
        assert_eq!(ok("/a/b/c.txt"), "/a/b/c.txt");
        assert_eq!(ok("/..."), "/...");
        assert_eq!(ok("/.hidden"), "/.hidden");
        assert_eq!(ok("/a..b/..c/d.."), "/a..b/..c/d..");
    }

    #[test]
    fn trailing_slash_is_kept() {
        assert_eq!(ok("/dir/"), "/dir/");
        assert_eq!(ok("/a/b/"), "/a/b/");
        assert_eq!(ok("/a/b"), "/a/b");
    }

    #[test]
    fn repeated_slashes_collapse() {
        assert_eq!(ok("//"), "/");
        assert_eq!(ok("///a//b///c"), "/a/b/c");
        assert_eq!(ok("/a//b//"), "/a/b/");
        // A leading "//" must not survive: as a Location it would be protocol-relative.
        assert_eq!(ok("//evil.example/x"), "/evil.example/x");
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(ok("/./a/./b"), "/a/b");
        assert_eq!(ok("/a/b/../c"), "/a/c");
        assert_eq!(ok("/a/b/c/../../d"), "/a/d");
        assert_eq!(ok("/a/.."), "/");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/."), "/a/");
        assert_eq!(ok("/."), "/");
        assert_eq!(ok("/a/../b/"), "/b/");
        assert_eq!(ok("/a/./"), "/a/");
    }

    #[test]
    fn climbing_above_root_is_refused() {
        assert_eq!(err("/.."), PathError::AboveRoot);
        assert_eq!(err("/../etc/passwd"), PathError::AboveRoot);
        assert_eq!(err("/a/../../etc/passwd"), PathError::AboveRoot);
        assert_eq!(err("/a/./../.."), PathError::AboveRoot);
        assert_eq!(err("//..//x"), PathError::AboveRoot);
    }

    #[test]
    fn encoded_dots_are_dot_segments() {
        assert_eq!(err("/%2e%2e/etc/passwd"), PathError::AboveRoot);
        assert_eq!(err("/%2E%2E/etc/passwd"), PathError::AboveRoot);
        assert_eq!(err("/.%2e/x"), PathError::AboveRoot);
        assert_eq!(ok("/a/%2e%2e/b"), "/b");
        assert_eq!(ok("/a/%2e/b"), "/a/b");
    }

    #[test]
    fn double_encoding_decodes_once_to_a_literal_name() {
        assert_eq!(ok("/%252e%252e/etc/passwd"), "/%2e%2e/etc/passwd");
        assert_eq!(ok("/%252e%252e"), "/%2e%2e");
        assert_eq!(ok("/a%2520b"), "/a%20b");
    }

    #[test]
    fn backslash_is_an_ordinary_byte() {
        assert_eq!(ok("/..\\..\\etc"), "/..\\..\\etc");
        assert_eq!(ok("/%5c..%5c..%5cetc"), "/\\..\\..\\etc");
        assert_eq!(ok("/a\\..\\b/"), "/a\\..\\b/");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(ok("/a%20b"), "/a b");
        assert_eq!(ok("/%41%62c"), "/Abc");
        assert_eq!(ok("/caf%C3%A9"), "/café");
        assert_eq!(ok("/café"), "/café");
        assert_eq!(ok("/a%3Fb%23c"), "/a?b#c");
        assert_eq!(ok("/100%25"), "/100%");
    }

    #[test]
    fn invalid_escapes_are_refused() {
        assert_eq!(err("/%"), PathError::BadEscape);
        assert_eq!(err("/%4"), PathError::BadEscape);
        assert_eq!(err("/%zz"), PathError::BadEscape);
        assert_eq!(err("/a%g1"), PathError::BadEscape);
        assert_eq!(err("/%%41"), PathError::BadEscape);
    }

    #[test]
    fn control_bytes_are_refused() {
        assert_eq!(err("/a%00b"), PathError::ControlByte);
        assert_eq!(err("/%0d%0aSet-Cookie:x"), PathError::ControlByte);
        assert_eq!(err("/%1f"), PathError::ControlByte);
        assert_eq!(err("/%7f"), PathError::ControlByte);
        assert_eq!(err("/a\u{0}b"), PathError::ControlByte);
        assert_eq!(err("/a\tb"), PathError::ControlByte);
        assert_eq!(err("/a\u{7f}"), PathError::ControlByte);
    }

    #[test]
    fn encoded_slash_is_refused() {
        assert_eq!(err("/a%2Fb"), PathError::EncodedSlash);
        assert_eq!(err("/a%2fb"), PathError::EncodedSlash);
        assert_eq!(err("/..%2f..%2fetc%2fpasswd"), PathError::EncodedSlash);
    }

    #[test]
    fn non_utf8_is_refused() {
        assert_eq!(err("/%ff"), PathError::NotUtf8);
        assert_eq!(err("/%c3"), PathError::NotUtf8);
        assert_eq!(err("/%c0%ae%c0%ae/x"), PathError::NotUtf8);
    }

    #[test]
    fn path_must_start_with_slash() {
        assert_eq!(err(""), PathError::NotAbsolute);
        assert_eq!(err("*"), PathError::NotAbsolute);
        assert_eq!(err("a/b"), PathError::NotAbsolute);
        assert_eq!(err("http://x/"), PathError::NotAbsolute);
    }

    #[test]
    fn hidden_and_backup_names_are_denied_anywhere_in_the_path() {
        let both = Deny {
            hidden: true,
            backup: true,
        };
        for path in [
            "/.env",
            "/.htaccess",
            "/.git/config",
            "/sub/.htpasswd",
            "/.index.php.swp",
            "/wp-config.php.bak",
            "/wp-config.php.BAK",
            "/index.php~",
            "/#x#",
            "/a.orig",
            "/a.old/x.html",
            "/nano.save",
            "/index.php/.env",
            "/.well-known/.git/config",
            "/x/.well-known/y",
            "/ünï.swo",
        ] {
            assert!(denied(path, both), "{path}");
        }
        for path in [
            "/",
            "/index.php",
            "/.well-known/acme-challenge/x",
            "/.well-known/",
            "/a.b/c",
            "/a~b",
            "/#x",
            "/x#",
            "/bak",
            "/café.old.html",
            "/ü",
        ] {
            assert!(!denied(path, both), "{path}");
        }
        // Each half can be turned off alone.
        let hidden_only = Deny {
            hidden: true,
            backup: false,
        };
        assert!(denied("/.env", hidden_only) && !denied("/x.bak", hidden_only));
        let backup_only = Deny {
            hidden: false,
            backup: true,
        };
        assert!(!denied("/.env", backup_only) && denied("/x.bak", backup_only));
        let none = Deny {
            hidden: false,
            backup: false,
        };
        assert!(!denied("/.git/x.bak~", none));
        // What reaches `denied` is decoded: %2e is a dot.
        assert!(denied(&ok("/%2eenv"), both));
        assert!(denied(&ok("/%23x%23"), both));
        assert!(denied(&ok("/a/%2Egit/config"), both));
    }

    #[test]
    fn errors_display_and_map_to_400() {
        for e in [
            PathError::NotAbsolute,
            PathError::BadEscape,
            PathError::ControlByte,
            PathError::EncodedSlash,
            PathError::NotUtf8,
            PathError::AboveRoot,
        ] {
            assert_eq!(e.status(), 400);
            assert!(!e.to_string().is_empty());
        }
    }
}
