//! CGI meta-variables (RFC 3875 §4.1) for one request.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// Everything about one request that the script's environment is built from.
#[derive(Debug, Clone)]
pub struct CgiRequest<'a> {
    pub method: &'a str,
    /// Raw request target as received.
    pub request_uri: &'a str,
    /// Raw query, without the '?'.
    pub query: Option<&'a str>,
    /// E.g. "HTTP/1.1".
    pub protocol: &'a str,
    /// Request headers as received: name as sent, value bytes.
    pub headers: &'a [(String, Vec<u8>)],
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// The site's name.
    pub server_name: &'a str,
    pub https: bool,
    pub document_root: &'a Path,
    /// URL path of the script, e.g. "/cgi-bin/env.pl".
    pub script_name: &'a str,
    /// Absolute path of the script file.
    pub script_filename: &'a Path,
    /// Decoded extra path after the script; "" if none. The caller must have
    /// normalised it: it is appended to `document_root` verbatim.
    pub path_info: &'a str,
    /// Length of the body the script reads on stdin (after de-chunking).
    pub content_length: Option<u64>,
    /// Admin-configured per-site variables.
    pub site_env: &'a [(String, String)],
    /// Set when the script serves an error page for another request.
    pub redirect: Option<Redirect<'a>>,
}

/// The failed request an error page answers, for its `REDIRECT_*` variables (what
/// Apache sets for an ErrorDocument).
#[derive(Debug, Clone)]
pub struct Redirect<'a> {
    /// The failed request's status: `REDIRECT_STATUS`.
    pub status: u16,
    /// Its path, without the query: `REDIRECT_URL`.
    pub url: &'a str,
    /// Its query: `REDIRECT_QUERY_STRING`.
    pub query: Option<&'a str>,
    /// Its method: `REDIRECT_REQUEST_METHOD`.
    pub method: &'a str,
}

/// Names the server owns, whether or not a given request sets them, so that
/// a site variable cannot make one appear for some requests and not others
/// (e.g. a configured `HTTPS=on` on plain-HTTP requests).
const RESERVED: &[&str] = &[
    "AUTH_TYPE",
    "CONTENT_LENGTH",
    "CONTENT_TYPE",
    "CONTEXT_DOCUMENT_ROOT",
    "CONTEXT_PREFIX",
    "DOCUMENT_ROOT",
    "GATEWAY_INTERFACE",
    "HTTPS",
    "PATH_INFO",
    "PATH_TRANSLATED",
    "QUERY_STRING",
    "REDIRECT_QUERY_STRING",
    "REDIRECT_REQUEST_METHOD",
    "REDIRECT_STATUS",
    "REDIRECT_URL",
    "REMOTE_ADDR",
    "REMOTE_HOST",
    "REMOTE_IDENT",
    "REMOTE_PORT",
    "REMOTE_USER",
    "REQUEST_METHOD",
    "REQUEST_SCHEME",
    "REQUEST_URI",
    "SCRIPT_FILENAME",
    "SCRIPT_NAME",
    "SERVER_ADDR",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "SERVER_SOFTWARE",
];

use crate::worker::DEFAULT_PATH;

/// Builds the environment for a CGI script, sorted by name.
///
/// Precedence, highest first:
/// 1. Protocol variables (`GATEWAY_INTERFACE`, `SERVER_*`, `REQUEST_*`,
///    `SCRIPT_*`, `PATH_INFO`, `CONTENT_*`, `REMOTE_*`, `HTTPS`,
///    `REDIRECT_STATUS`, and the other RFC 3875 names such as `REMOTE_USER`)
///    can never come from the site configuration, even when this request
///    leaves them unset.
/// 2. `HTTP_*` variables from request headers: site variables whose name
///    starts with `HTTP_` are always ignored, so a script can tell that any
///    `HTTP_*` value came from the client.
/// 3. Site variables, which may set anything else, including `PATH` (whose
///    default is `/usr/local/bin:/usr/bin:/bin`). Names must match
///    `[A-Za-z_][A-Za-z0-9_]*`; among duplicates the last one wins.
///
/// Headers that are not exported as `HTTP_*`: those in [`NOT_EXPORTED`] (`Proxy`
/// for httpoxy, `Content-*` exported as `CONTENT_*`, hop-by-hop fields such as
/// `Transfer-Encoding`), and names containing anything
/// but ASCII letters, digits and '-' — in particular '_', since `X_Foo` would
/// otherwise be indistinguishable from `X-Foo` and could spoof headers set by
/// a trusted proxy. Values containing NUL cannot be passed through `execve`
/// and are dropped; so is any variable whose value would contain one.
pub fn meta_variables(req: &CgiRequest<'_>) -> Vec<(OsString, OsString)> {
    let mut vars: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut set = |name: &str, value: &[u8]| {
        if !value.contains(&0) {
            vars.insert(name.to_owned(), value.to_vec());
        }
    };

    set("GATEWAY_INTERFACE", b"CGI/1.1");
    set("SERVER_SOFTWARE", b"condo");
    set("SERVER_NAME", req.server_name.as_bytes());
    // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; scripts
    // expect the plain dotted form.
    set(
        "SERVER_ADDR",
        req.local.ip().to_canonical().to_string().as_bytes(),
    );
    set("SERVER_PORT", server_port(req).to_string().as_bytes());
    set("SERVER_PROTOCOL", req.protocol.as_bytes());
    set("REQUEST_METHOD", req.method.as_bytes());
    set("REQUEST_URI", req.request_uri.as_bytes());
    set("QUERY_STRING", req.query.unwrap_or("").as_bytes());
    set("SCRIPT_NAME", req.script_name.as_bytes());
    set(
        "SCRIPT_FILENAME",
        req.script_filename.as_os_str().as_bytes(),
    );
    set("DOCUMENT_ROOT", req.document_root.as_os_str().as_bytes());
    // Apache's (2.4) for the URL prefix a root is mapped at; a site's root is at "/".
    set("CONTEXT_PREFIX", b"");
    set(
        "CONTEXT_DOCUMENT_ROOT",
        req.document_root.as_os_str().as_bytes(),
    );
    if !req.path_info.is_empty() {
        set("PATH_INFO", req.path_info.as_bytes());
        set(
            "PATH_TRANSLATED",
            &translate(req.document_root, req.path_info),
        );
    }
    set(
        "REMOTE_ADDR",
        req.remote.ip().to_canonical().to_string().as_bytes(),
    );
    set("REMOTE_PORT", req.remote.port().to_string().as_bytes());
    if let Some(len) = req.content_length {
        set("CONTENT_LENGTH", len.to_string().as_bytes());
    }
    // A repeated Content-Type is malformed; the first one is what most
    // servers and frameworks act on.
    if let Some((_, v)) = req
        .headers
        .iter()
        .find(|(n, v)| n.eq_ignore_ascii_case("content-type") && !v.contains(&0))
    {
        set("CONTENT_TYPE", v);
    }
    if req.https {
        set("HTTPS", b"on");
    }
    // Apache 2.4 sets it; apps build absolute URLs from it.
    set("REQUEST_SCHEME", if req.https { b"https" } else { b"http" });
    match &req.redirect {
        Some(r) => {
            set("REDIRECT_STATUS", r.status.to_string().as_bytes());
            set("REDIRECT_URL", r.url.as_bytes());
            set("REDIRECT_REQUEST_METHOD", r.method.as_bytes());
            if let Some(q) = r.query {
                set("REDIRECT_QUERY_STRING", q.as_bytes());
            }
        }
        // php-cgi refuses to run without it when cgi.force_redirect is on.
        None => set("REDIRECT_STATUS", b"200"),
    }

    for (name, value) in http_variables(req.headers) {
        vars.entry(name).or_insert(value);
    }

    let mut site: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, value) in req.site_env {
        if is_env_name(name)
            && !name.starts_with("HTTP_")
            && !RESERVED.contains(&name.as_str())
            && !value.contains('\0')
        {
            site.insert(name, value);
        }
    }
    for (name, value) in site {
        vars.entry(name.to_owned())
            .or_insert_with(|| value.as_bytes().to_vec());
    }
    vars.entry("PATH".to_owned())
        .or_insert_with(|| DEFAULT_PATH.as_bytes().to_vec());

    vars.into_iter()
        .map(|(n, v)| (OsString::from(n), OsString::from_vec(v)))
        .collect()
}

/// Request headers never exported as `HTTP_*`. `Proxy`: httpoxy (`HTTP_PROXY` is
/// read as a proxy setting by many HTTP clients). `Content-Type`, `Content-Length`:
/// exported as `CONTENT_*`. The hop-by-hop fields (RFC 9110 §7.6.1) describe the
/// client's connection to condo, not the request the script gets: its body arrives
/// de-chunked with `CONTENT_LENGTH`, so an `HTTP_TRANSFER_ENCODING=chunked` beside it
/// would be a second, false framing for a script or framework to trust.
const NOT_EXPORTED: &[&str] = &[
    "proxy",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

fn http_variables(headers: &[(String, Vec<u8>)]) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (name, value) in headers {
        let exported = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !NOT_EXPORTED.iter().any(|n| name.eq_ignore_ascii_case(n));
        if !exported || value.contains(&0) {
            continue;
        }
        let key = format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_"));
        match out.get_mut(&key) {
            Some(joined) => {
                // Cookie is the one header whose list separator is ';'
                // (RFC 6265 §5.4); scripts split it on that.
                let sep: &[u8] = if name.eq_ignore_ascii_case("cookie") {
                    b"; "
                } else {
                    b", "
                };
                joined.extend_from_slice(sep);
                joined.extend_from_slice(value);
            }
            None => {
                out.insert(key, value.clone());
            }
        }
    }
    out
}

/// `SERVER_PORT` as Apache 2.4 gives it (`UseCanonicalName Off`): the port the client
/// named (absolute-form target, else Host), else the scheme's default. Scripts build
/// their own URLs from it, so it is the port the client reached, which behind a port
/// mapping or a balancer is not the one condo listens on.
fn server_port(req: &CgiRequest<'_>) -> u16 {
    let absolute = ["http://", "https://"]
        .iter()
        .find_map(|scheme| req.request_uri.strip_prefix(scheme))
        .map(|rest| rest.split(['/', '?']).next().unwrap_or("").as_bytes());
    let host = absolute.or_else(|| {
        req.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.as_slice())
    });
    let port = host.and_then(|h| {
        // After the last ':' unless that is inside an IPv6 literal's brackets.
        let colon = h.iter().rposition(|&b| b == b':')?;
        let digits = &h[colon + 1..];
        (!h[colon..].contains(&b']') && !digits.is_empty())
            .then(|| std::str::from_utf8(digits).ok()?.parse::<u16>().ok())
            .flatten()
    });
    port.unwrap_or(if req.https { 443 } else { 80 })
}

/// `Path::join` would discard the root because `path_info` is absolute.
fn translate(root: &Path, path_info: &str) -> Vec<u8> {
    let mut out = root.as_os_str().as_bytes().to_vec();
    while out.len() > 1 && out.ends_with(b"/") {
        out.pop();
    }
    if out == b"/" {
        out.clear();
    }
    if !path_info.starts_with('/') {
        out.push(b'/');
    }
    out.extend_from_slice(path_info.as_bytes());
    out
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn base<'a>(
        headers: &'a [(String, Vec<u8>)],
        site_env: &'a [(String, String)],
    ) -> CgiRequest<'a> {
        CgiRequest {
            method: "POST",
            request_uri: "/cgi-bin/env.pl/extra/x%20y?a=1&b=%2F",
            query: Some("a=1&b=%2F"),
            protocol: "HTTP/1.1",
            headers,
            remote: "192.0.2.7:51234".parse().unwrap(),
            local: "198.51.100.1:8080".parse().unwrap(),
            server_name: "example.org",
            https: false,
            document_root: Path::new("/srv/example.org/htdocs"),
            script_name: "/cgi-bin/env.pl",
            script_filename: Path::new("/srv/example.org/htdocs/cgi-bin/env.pl"),
            path_info: "",
            content_length: Some(11),
            site_env,
            redirect: None,
        }
    }

    fn h(name: &str, value: &[u8]) -> (String, Vec<u8>) {
        (name.to_owned(), value.to_vec())
    }

    fn s(name: &str, value: &str) -> (String, String) {
        (name.to_owned(), value.to_owned())
    }

    fn env(req: &CgiRequest<'_>) -> BTreeMap<String, Vec<u8>> {
        meta_variables(req)
            .into_iter()
            .map(|(n, v)| (n.into_string().unwrap(), v.into_vec()))
            .collect()
    }

    fn get<'m>(m: &'m BTreeMap<String, Vec<u8>>, name: &str) -> Option<&'m str> {
        m.get(name).map(|v| std::str::from_utf8(v).unwrap())
    }

    #[test]
    fn protocol_variables() {
        let m = env(&base(&[], &[]));
        let expect = [
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("SERVER_SOFTWARE", "condo"),
            ("SERVER_NAME", "example.org"),
            ("SERVER_ADDR", "198.51.100.1"),
            // No Host port: the scheme's (Apache's UseCanonicalName Off).
            ("SERVER_PORT", "80"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REQUEST_METHOD", "POST"),
            ("REQUEST_URI", "/cgi-bin/env.pl/extra/x%20y?a=1&b=%2F"),
            ("QUERY_STRING", "a=1&b=%2F"),
            ("SCRIPT_NAME", "/cgi-bin/env.pl"),
            ("SCRIPT_FILENAME", "/srv/example.org/htdocs/cgi-bin/env.pl"),
            ("DOCUMENT_ROOT", "/srv/example.org/htdocs"),
            ("REMOTE_ADDR", "192.0.2.7"),
            ("REMOTE_PORT", "51234"),
            ("CONTENT_LENGTH", "11"),
            ("REDIRECT_STATUS", "200"),
            ("REQUEST_SCHEME", "http"),
            ("CONTEXT_PREFIX", ""),
            ("CONTEXT_DOCUMENT_ROOT", "/srv/example.org/htdocs"),
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ];
        for (name, value) in expect {
            assert_eq!(get(&m, name), Some(value), "{name}");
        }
        assert_eq!(m.len(), expect.len(), "{:?}", m.keys());
    }

    #[test]
    fn output_sorted_by_name() {
        let headers = [h("Zeta", b"1"), h("Accept", b"*/*")];
        let site = [s("AAA", "1"), s("zzz", "2")];
        let vars = meta_variables(&base(&headers, &site));
        let names: Vec<_> = vars.iter().map(|(n, _)| n.clone()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        sorted.dedup();
        assert_eq!(names.len(), sorted.len());
    }

    #[test]
    fn query_string_always_present() {
        let mut req = base(&[], &[]);
        req.query = None;
        assert_eq!(get(&env(&req), "QUERY_STRING"), Some(""));
        req.query = Some("");
        assert_eq!(get(&env(&req), "QUERY_STRING"), Some(""));
    }

    #[test]
    fn path_info_absent_when_empty() {
        let m = env(&base(&[], &[]));
        assert!(!m.contains_key("PATH_INFO"));
        assert!(!m.contains_key("PATH_TRANSLATED"));
    }

    #[test]
    fn path_info_and_translated() {
        let mut req = base(&[], &[]);
        req.path_info = "/extra/x y";
        let m = env(&req);
        assert_eq!(get(&m, "PATH_INFO"), Some("/extra/x y"));
        assert_eq!(
            get(&m, "PATH_TRANSLATED"),
            Some("/srv/example.org/htdocs/extra/x y")
        );
        req.document_root = Path::new("/srv/root/");
        assert_eq!(
            get(&env(&req), "PATH_TRANSLATED"),
            Some("/srv/root/extra/x y")
        );
        req.document_root = Path::new("/");
        assert_eq!(get(&env(&req), "PATH_TRANSLATED"), Some("/extra/x y"));
        req.document_root = Path::new("/srv/root");
        req.path_info = "rel";
        assert_eq!(get(&env(&req), "PATH_TRANSLATED"), Some("/srv/root/rel"));
    }

    #[test]
    fn content_length_only_when_known() {
        let mut req = base(&[], &[]);
        req.content_length = None;
        assert!(!env(&req).contains_key("CONTENT_LENGTH"));
        req.content_length = Some(0);
        assert_eq!(get(&env(&req), "CONTENT_LENGTH"), Some("0"));
        req.content_length = Some(u64::MAX);
        assert_eq!(
            get(&env(&req), "CONTENT_LENGTH"),
            Some("18446744073709551615")
        );
    }

    #[test]
    fn content_type_from_header_not_http_var() {
        let headers = [
            h("content-TYPE", b"application/x-www-form-urlencoded"),
            h("Content-Length", b"999"),
            h("Content-Type", b"text/plain"),
        ];
        let m = env(&base(&headers, &[]));
        assert_eq!(
            get(&m, "CONTENT_TYPE"),
            Some("application/x-www-form-urlencoded")
        );
        // The body length comes from the request, not the header.
        assert_eq!(get(&m, "CONTENT_LENGTH"), Some("11"));
        assert!(!m.contains_key("HTTP_CONTENT_TYPE"));
        assert!(!m.contains_key("HTTP_CONTENT_LENGTH"));
        assert!(!env(&base(&[], &[])).contains_key("CONTENT_TYPE"));
    }

    #[test]
    fn https_only_when_secure() {
        let mut req = base(&[], &[]);
        assert!(!env(&req).contains_key("HTTPS"));
        assert_eq!(get(&env(&req), "REQUEST_SCHEME"), Some("http"));
        req.https = true;
        assert_eq!(get(&env(&req), "HTTPS"), Some("on"));
        assert_eq!(get(&env(&req), "REQUEST_SCHEME"), Some("https"));
    }

    #[test]
    fn error_page_gets_apaches_redirect_variables() {
        let site = [s("REDIRECT_URL", "/forged")];
        let mut req = base(&[], &site);
        req.redirect = Some(Redirect {
            status: 404,
            url: "/missing/page",
            query: Some("x=1"),
            method: "POST",
        });
        let m = env(&req);
        assert_eq!(get(&m, "REDIRECT_STATUS"), Some("404"));
        assert_eq!(get(&m, "REDIRECT_URL"), Some("/missing/page"));
        assert_eq!(get(&m, "REDIRECT_QUERY_STRING"), Some("x=1"));
        assert_eq!(get(&m, "REDIRECT_REQUEST_METHOD"), Some("POST"));
        // Without a redirect, a site variable cannot fake one.
        req.redirect = None;
        assert!(!env(&req).contains_key("REDIRECT_URL"));
    }

    #[test]
    fn http_headers_exported() {
        let headers = [
            h("Host", b"example.org"),
            h("User-Agent", b"curl/8"),
            h("x-forwarded-for", b"10.0.0.1"),
            h("Authorization", b"Bearer t"),
            h("X-Empty", b""),
        ];
        let m = env(&base(&headers, &[]));
        assert_eq!(get(&m, "HTTP_HOST"), Some("example.org"));
        assert_eq!(get(&m, "HTTP_USER_AGENT"), Some("curl/8"));
        assert_eq!(get(&m, "HTTP_X_FORWARDED_FOR"), Some("10.0.0.1"));
        assert_eq!(get(&m, "HTTP_AUTHORIZATION"), Some("Bearer t"));
        assert_eq!(get(&m, "HTTP_X_EMPTY"), Some(""));
    }

    #[test]
    fn httpoxy_proxy_header_never_exported() {
        let headers = [h("Proxy", b"http://evil:3128"), h("PROXY", b"x")];
        let m = env(&base(&headers, &[]));
        assert!(!m.contains_key("HTTP_PROXY"));
        // Nor can the site configuration reintroduce it.
        let site = [s("HTTP_PROXY", "http://evil:3128")];
        assert!(!env(&base(&[], &site)).contains_key("HTTP_PROXY"));
    }

    #[test]
    fn hop_by_hop_headers_never_exported() {
        let headers = [
            h("Transfer-Encoding", b"chunked"),
            h("Connection", b"keep-alive, Upgrade"),
            h("Keep-Alive", b"timeout=5"),
            h("TE", b"trailers"),
            h("Trailer", b"X-Sum"),
            h("Upgrade", b"websocket"),
            h("Proxy-Connection", b"keep-alive"),
            h("X-Kept", b"yes"),
        ];
        let m = env(&base(&headers, &[]));
        for name in [
            "HTTP_TRANSFER_ENCODING",
            "HTTP_CONNECTION",
            "HTTP_KEEP_ALIVE",
            "HTTP_TE",
            "HTTP_TRAILER",
            "HTTP_UPGRADE",
            "HTTP_PROXY_CONNECTION",
        ] {
            assert!(!m.contains_key(name), "{name} exported");
        }
        assert_eq!(get(&m, "HTTP_X_KEPT"), Some("yes"));
        // The de-chunked length is the only framing the script sees.
        assert_eq!(get(&m, "CONTENT_LENGTH"), Some("11"));
    }

    #[test]
    fn underscore_and_odd_header_names_dropped() {
        let headers = [
            h("X-Remote-User", b"alice"),
            h("X_Remote_User", b"mallory"),
            h("X.Dot", b"1"),
            h("X Space", b"1"),
            h("X=Eq", b"1"),
            h("", b"1"),
            h("X-Caf\u{e9}", b"1"),
        ];
        let m = env(&base(&headers, &[]));
        assert_eq!(get(&m, "HTTP_X_REMOTE_USER"), Some("alice"));
        assert!(
            !m.keys()
                .any(|k| k.starts_with("HTTP_X_") && k != "HTTP_X_REMOTE_USER")
        );
        assert!(!m.contains_key("HTTP_"));
        // Order must not matter: the underscore spelling loses either way.
        let headers = [h("X_Remote_User", b"mallory"), h("X-Remote-User", b"alice")];
        assert_eq!(
            get(&env(&base(&headers, &[])), "HTTP_X_REMOTE_USER"),
            Some("alice")
        );
    }

    #[test]
    fn repeated_headers_joined() {
        let headers = [
            h("Accept", b"text/html"),
            h("Cookie", b"a=1"),
            h("X-Other", b"z"),
            h("accept", b"*/*"),
            h("cookie", b"b=2"),
            h("COOKIE", b"c=3"),
        ];
        let m = env(&base(&headers, &[]));
        assert_eq!(get(&m, "HTTP_ACCEPT"), Some("text/html, */*"));
        assert_eq!(get(&m, "HTTP_COOKIE"), Some("a=1; b=2; c=3"));
        assert_eq!(get(&m, "HTTP_X_OTHER"), Some("z"));
    }

    #[test]
    fn non_utf8_values_pass_through_and_nul_is_dropped() {
        let headers = [
            h("X-Latin", b"caf\xe9"),
            h("X-Nul", b"a\0b"),
            h("X-Rep", b"1"),
            h("X-Rep", b"2\0"),
            h("X-Rep", b"3"),
            h("Content-Type", b"text/\0plain"),
            h("Content-Type", b"text/html"),
        ];
        let vars = meta_variables(&base(&headers, &[]));
        let m: BTreeMap<_, _> = vars
            .into_iter()
            .map(|(n, v)| (n.into_string().unwrap(), v.into_vec()))
            .collect();
        assert_eq!(m["HTTP_X_LATIN"], b"caf\xe9");
        assert!(!m.contains_key("HTTP_X_NUL"));
        assert_eq!(m["HTTP_X_REP"], b"1, 3");
        assert_eq!(m["CONTENT_TYPE"], b"text/html");
    }

    #[test]
    fn nul_in_request_fields_drops_the_variable() {
        let mut req = base(&[], &[]);
        req.path_info = "/a\0b";
        let m = env(&req);
        assert!(!m.contains_key("PATH_INFO"));
        assert!(!m.contains_key("PATH_TRANSLATED"));
        assert!(m.values().all(|v| !v.contains(&0)));
    }

    #[test]
    fn ipv6_addresses_without_brackets() {
        let mut req = base(&[], &[]);
        req.remote = SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            4433,
        );
        req.local = "[::1]:443".parse().unwrap();
        let m = env(&req);
        assert_eq!(get(&m, "REMOTE_ADDR"), Some("2001:db8::1"));
        assert_eq!(get(&m, "REMOTE_PORT"), Some("4433"));
        assert_eq!(get(&m, "SERVER_ADDR"), Some("::1"));
    }

    #[test]
    fn server_port_is_the_one_the_client_named() {
        let cases: [(&[u8], bool, &str); 6] = [
            (b"example.org:8443", false, "8443"),
            (b"example.org", false, "80"),
            (b"example.org", true, "443"),
            (b"[2001:db8::1]", true, "443"),
            (b"[2001:db8::1]:8080", false, "8080"),
            (b"example.org:", false, "80"),
        ];
        for (host, https, port) in cases {
            let headers = [h("Host", host)];
            let mut req = base(&headers, &[]);
            req.https = https;
            assert_eq!(get(&env(&req), "SERVER_PORT"), Some(port), "{host:?}");
        }
        let headers = [h("Host", b"example.org")];
        let mut req = base(&headers, &[]);
        req.request_uri = "http://example.org:81/x?y";
        assert_eq!(get(&env(&req), "SERVER_PORT"), Some("81"));
    }

    #[test]
    fn ipv4_mapped_addresses_shown_as_ipv4() {
        let mut req = base(&[], &[]);
        req.remote = SocketAddr::new(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 9).to_ipv6_mapped()), 1);
        assert_eq!(get(&env(&req), "REMOTE_ADDR"), Some("192.0.2.9"));
    }

    #[test]
    fn site_env_added() {
        let site = [s("APP_ENV", "production"), s("_X", "1"), s("lower9", "ok")];
        let m = env(&base(&[], &site));
        assert_eq!(get(&m, "APP_ENV"), Some("production"));
        assert_eq!(get(&m, "_X"), Some("1"));
        assert_eq!(get(&m, "lower9"), Some("ok"));
    }

    #[test]
    fn site_env_invalid_names_skipped() {
        let site = [
            s("", "1"),
            s("9LIVES", "1"),
            s("A-B", "1"),
            s("A=B", "1"),
            s("A B", "1"),
            s("CAF\u{c9}", "1"),
            s("NUL_VALUE", "a\0b"),
        ];
        let with = env(&base(&[], &site));
        assert_eq!(with, env(&base(&[], &[])));
    }

    #[test]
    fn site_env_never_overrides_protocol_variables() {
        let site = [
            s("SERVER_NAME", "evil"),
            s("REMOTE_ADDR", "127.0.0.1"),
            s("GATEWAY_INTERFACE", "x"),
            s("REDIRECT_STATUS", "404"),
            s("CONTENT_LENGTH", "1"),
        ];
        let m = env(&base(&[], &site));
        assert_eq!(get(&m, "SERVER_NAME"), Some("example.org"));
        assert_eq!(get(&m, "REMOTE_ADDR"), Some("192.0.2.7"));
        assert_eq!(get(&m, "GATEWAY_INTERFACE"), Some("CGI/1.1"));
        assert_eq!(get(&m, "REDIRECT_STATUS"), Some("200"));
        assert_eq!(get(&m, "CONTENT_LENGTH"), Some("11"));
    }

    #[test]
    fn site_env_cannot_fill_in_absent_protocol_variables() {
        let site = [
            s("HTTPS", "on"),
            s("PATH_INFO", "/x"),
            s("CONTENT_TYPE", "a/b"),
            s("REMOTE_USER", "admin"),
        ];
        let mut req = base(&[], &site);
        req.content_length = None;
        let m = env(&req);
        for name in ["HTTPS", "PATH_INFO", "CONTENT_TYPE", "REMOTE_USER"] {
            assert!(!m.contains_key(name), "{name}");
        }
    }

    #[test]
    fn site_env_never_sets_http_variables() {
        let headers = [h("X-Real-Ip", b"203.0.113.5")];
        let site = [s("HTTP_X_REAL_IP", "10.0.0.1"), s("HTTP_X_ADMIN", "1")];
        let m = env(&base(&headers, &site));
        assert_eq!(get(&m, "HTTP_X_REAL_IP"), Some("203.0.113.5"));
        assert!(!m.contains_key("HTTP_X_ADMIN"));
    }

    #[test]
    fn site_env_may_set_path_and_last_duplicate_wins() {
        let site = [s("PATH", "/opt/php/bin:/usr/bin"), s("A", "1"), s("A", "2")];
        let m = env(&base(&[], &site));
        assert_eq!(get(&m, "PATH"), Some("/opt/php/bin:/usr/bin"));
        assert_eq!(get(&m, "A"), Some("2"));
    }

    #[test]
    fn non_utf8_paths_pass_through() {
        use std::ffi::OsStr;
        let root = Path::new(OsStr::from_bytes(b"/srv/r\xff"));
        let mut req = base(&[], &[]);
        req.document_root = root;
        req.path_info = "/p";
        let vars = meta_variables(&req);
        let find = |n: &str| {
            vars.iter()
                .find(|(k, _)| k == n)
                .unwrap()
                .1
                .as_bytes()
                .to_vec()
        };
        assert_eq!(find("DOCUMENT_ROOT"), b"/srv/r\xff");
        assert_eq!(find("PATH_TRANSLATED"), b"/srv/r\xff/p");
    }
}
