//! Entry points for the fuzz targets in `fuzz/` and for `tests/fuzz_corpus.rs`, which
//! replays the committed corpora on stable. Each takes arbitrary bytes, runs one parser
//! that reads untrusted input, and asserts what must hold whatever the input.
//! Not an API: hidden from the docs, kept small.

use crate::http::head::{Limits, parse_request};

/// The dispatcher's and worker's request-head parser.
pub fn request_head(data: &[u8]) {
    let limits = Limits {
        max_request_line: 8192,
        max_head_bytes: 16384,
        max_headers: 100,
    };
    if let Ok(Some(head)) = parse_request(data, &limits) {
        assert!(head.head_len <= data.len());
        assert!(head.head_len <= limits.max_head_bytes);
        // A parsed head parses the same again on its own.
        let again = parse_request(&data[..head.head_len], &limits)
            .expect("a head that parsed once parses again")
            .expect("complete");
        assert_eq!(again.head_len, head.head_len);
        assert_eq!(again.host, head.host);
        if let Some(host) = &head.host {
            host_name(host.as_bytes());
        }
        path(head.path.as_bytes());
    }
}

/// Path normalisation: the result is absolute and has no dot segments.
pub fn path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(normal) = crate::http::path::normalize(raw) {
        assert!(normal.starts_with('/'), "{normal:?}");
        for segment in normal.split('/') {
            assert!(segment != ".." && segment != ".", "{raw:?} -> {normal:?}");
            // A backslash is an ordinary byte in a Linux file name, never a separator.
            assert!(!segment.contains('\0'), "{normal:?}");
        }
        // The exposure check takes any normalised path, and never lets a dotfile
        // through (but the one exception).
        let deny = crate::http::path::Deny {
            hidden: true,
            backup: true,
        };
        if !crate::http::path::denied(&normal, deny) {
            assert!(
                normal
                    .split('/')
                    .skip(2)
                    .all(|segment| !segment.starts_with('.')),
                "{normal:?}"
            );
        }
        // No idempotence check: the result is decoded, and decoding it again is the
        // double-decoding bug this function must not have (`%252e` stays `%2e`).
    }
}

/// Host normalisation for routing: lowercase, without the FQDN's trailing dot.
pub fn host_name(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let host = crate::config::normalize_host(raw);
    assert!(host.len() <= raw.len());
    assert!(!host.bytes().any(|b| b.is_ascii_uppercase()));
    // One trailing dot (an FQDN) is dropped; a name without one is a fixed point.
    if !host.ends_with('.') {
        assert_eq!(crate::config::normalize_host(&host), host);
    }
}

/// The chunked body decoder, fed in the pieces the first byte chooses.
pub fn chunked(data: &[u8]) {
    use crate::http::chunked::{ChunkedDecoder, Step};
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let piece = usize::from(step.max(1));
    // Odd first bytes also bound the body, as the CGI handler does.
    let limit = if step % 2 == 1 {
        u64::from(step) * 16
    } else {
        u64::MAX
    };
    let mut decoder = ChunkedDecoder::with_limit(limit);
    let mut offset = 0;
    let mut payload = 0usize;
    while offset < input.len() {
        let end = (offset + piece).min(input.len());
        let mut window = &input[offset..end];
        loop {
            match decoder.decode(window) {
                Err(_) => return,
                Ok((used, step)) => {
                    assert!(used <= window.len());
                    match step {
                        Step::Data { start, end } => {
                            assert!(start <= end && end == used);
                            payload += end - start;
                            assert!(payload as u64 <= limit);
                        }
                        Step::Done { consumed } => {
                            assert_eq!(consumed, used);
                            assert!(decoder.is_done());
                            assert!(payload <= input.len());
                            return;
                        }
                        Step::NeedMore => assert_eq!(used, window.len()),
                    }
                    window = &window[used..];
                    if window.is_empty() {
                        break;
                    }
                }
            }
        }
        offset = end;
    }
}

/// Messages from a less privileged process: the master decodes the dispatcher's and
/// workers'; a worker decodes the dispatcher's; every decode must fail cleanly.
pub fn ipc_message(data: &[u8]) {
    use crate::ipc::{
        DispatcherToMaster, DispatcherToWorker, MasterToDispatcher, MasterToWorker,
        WorkerToDispatcher, WorkerToMaster,
    };
    use crate::ipc::{MAX_SEALED_MESSAGE, parse_frame};
    // As received: a frame (tag, then the message or a sealed message's length) with
    // no fds; the ends that take sealed messages and those that do not.
    for sealed_max in [0, MAX_SEALED_MESSAGE] {
        let mut fds = Vec::new();
        let _ = parse_frame::<DispatcherToMaster>(data, &mut fds, sealed_max);
        let _ = parse_frame::<WorkerToMaster>(data, &mut fds, sealed_max);
        let _ = parse_frame::<DispatcherToWorker>(data, &mut fds, sealed_max);
        let _ = parse_frame::<WorkerToDispatcher>(data, &mut fds, sealed_max);
        let _ = parse_frame::<MasterToDispatcher>(data, &mut fds, sealed_max);
        let _ = parse_frame::<MasterToWorker>(data, &mut fds, sealed_max);
    }
}

/// The head a tenant's CGI script or FastCGI app writes.
pub fn cgi_head(data: &[u8]) {
    use crate::worker::cgi::response::parse_cgi_head;
    let max = 8192;
    let complete = parse_cgi_head(data, max);
    if let Ok(Some(_)) = &complete {
        // More bytes after a complete head never change that it is complete.
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"trailing body bytes\n");
        assert!(matches!(parse_cgi_head(&longer, max), Ok(Some(_))));
    }
    // A strict prefix of a valid head is never an error.
    if matches!(complete, Ok(Some(_))) {
        for cut in 0..data.len().min(64) {
            assert!(
                parse_cgi_head(&data[..cut], max).is_ok(),
                "prefix {cut} of a valid head was refused"
            );
        }
    }
}

/// FastCGI records from a tenant's app, and the response head of an upstream.
pub fn fastcgi_records(data: &[u8]) {
    use crate::worker::fastcgi::record::decode;
    let mut rest = data;
    while let Ok(Some((record, used))) = decode(rest) {
        assert!(used >= 8 && used <= rest.len());
        assert!(record.content.len() <= used - 8);
        let _ = record.end_request();
        rest = &rest[used..];
    }
    let _ = crate::http::response::parse_response_head(data, false);
    let _ = crate::http::response::parse_response_head(data, true);
}

/// The PROXY header parser (bytes from a load balancer, or anyone pretending).
pub fn proxy_header(data: &[u8]) {
    use crate::http::proxy_protocol::{MAX_HEADER, Parsed, parse};
    match parse(data) {
        Parsed::Header { len, .. } => assert!(len <= data.len() && len <= MAX_HEADER + 16),
        Parsed::Incomplete => assert!(data.len() < MAX_HEADER),
        Parsed::Invalid(_) => {}
    }
}

/// The ClientHello peek of the dispatcher (the first bytes of every TLS connection).
pub fn client_hello(data: &[u8]) {
    if let Ok(Some(hello)) = crate::tls::peek_client_hello(data)
        && let Some(sni) = hello.sni
    {
        assert!(!sni.bytes().any(|b| b.is_ascii_uppercase()));
    }
}
