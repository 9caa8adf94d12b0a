//! Response compression of static files (issue 16, item 4): gzip and br on the fly for
//! text types above a floor, precompressed `.gz`/`.br` siblings, `Vary` and one ETag
//! per representation, and no compression where it would be wrong (ranges, small
//! bodies, binary types, clients that did not ask or refused with q=0). Real condo,
//! real sockets, real curl; bodies decoded here and compared byte for byte.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;

/// Text that compresses but is not trivially repetitive: `len` bytes of numbered lines.
fn text(len: usize, seed: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    let mut line = 0u32;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        line += 1;
        out.extend_from_slice(format!("line {line}: value {} of {seed}\n", x % 9973).as_bytes());
    }
    out.truncate(len);
    out
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("a valid gzip stream");
    out
}

fn unbrotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(data, 4096)
        .read_to_end(&mut out)
        .expect("a valid brotli stream");
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn brotli_of(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let params = brotli::enc::BrotliEncoderParams {
        quality: 11,
        ..Default::default()
    };
    brotli::BrotliCompress(&mut &data[..], &mut out, &params).unwrap();
    out
}

/// One request on a fresh connection with extra header lines.
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[&str]) -> Response {
    let mut c = Client::connect(addr);
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: a.test\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    c.send(req.as_bytes());
    c.read_response(method == "HEAD").expect("a response")
}

fn set_mtime(path: &Path, time: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(time)
        .unwrap();
}

/// The identity representation: no coding, the file's bytes as they are.
fn assert_identity(r: &Response, body: &[u8], what: &str) {
    assert_eq!(r.status, 200, "{what}");
    assert_eq!(
        r.header("content-encoding"),
        None,
        "{what}: {:?}",
        r.headers
    );
    assert!(r.body == body, "{what}: identity body differs");
}

#[test]
fn gzip_and_br_are_byte_exact_with_vary_and_an_etag_each() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    let page = text(100 * 1024, 1);
    write_owned(&t.root_a.join("page.html"), &page, &t.a, 0o644);
    let condo = Condo::start(&config);
    let addr = condo.pass;

    let identity = request(addr, "GET", "/page.html", &[]);
    assert_identity(&identity, &page, "no Accept-Encoding");
    assert_eq!(identity.header("vary"), Some("Accept-Encoding"));
    assert_eq!(identity.header("accept-ranges"), Some("bytes"));

    let gz = request(addr, "GET", "/page.html", &["Accept-Encoding: gzip"]);
    assert_eq!(gz.status, 200, "{}", condo.log_text());
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(gz.header("vary"), Some("Accept-Encoding"));
    assert!(gz.body.len() < page.len() / 2, "gzip saved little");
    assert!(
        gunzip(&gz.body) == page,
        "gzip body does not decode to the file"
    );

    let br = request(
        addr,
        "GET",
        "/page.html",
        &["Accept-Encoding: gzip, deflate, br"],
    );
    assert_eq!(br.status, 200);
    assert_eq!(br.header("content-encoding"), Some("br"));
    assert_eq!(br.header("vary"), Some("Accept-Encoding"));
    assert!(
        unbrotli(&br.body) == page,
        "br body does not decode to the file"
    );

    // One entity-tag per representation, and each one's 304 only for itself.
    let tags: Vec<String> = [&identity, &gz, &br]
        .iter()
        .map(|r| r.header("etag").expect("an ETag").to_string())
        .collect();
    assert_ne!(tags[0], tags[1]);
    assert_ne!(tags[0], tags[2]);
    assert_ne!(tags[1], tags[2]);
    for (tag, accept) in tags.iter().zip(["", "gzip", "br"]) {
        let inm = format!("If-None-Match: {tag}");
        let ae = format!("Accept-Encoding: {accept}");
        let headers: Vec<&str> = if accept.is_empty() {
            vec![&inm]
        } else {
            vec![&inm, &ae]
        };
        let r = request(addr, "GET", "/page.html", &headers);
        assert_eq!(r.status, 304, "{tag} with {accept:?}");
        assert_eq!(r.header("etag"), Some(tag.as_str()));
        assert_eq!(r.header("vary"), Some("Accept-Encoding"));
        assert!(r.body.is_empty());
    }
    // The gzip tag does not validate the br representation, nor the identity one.
    let inm = format!("If-None-Match: {}", tags[1]);
    let r = request(addr, "GET", "/page.html", &[&inm, "Accept-Encoding: br"]);
    assert_eq!(r.status, 200);
    assert!(unbrotli(&r.body) == page);
    let r = request(addr, "GET", "/page.html", &[&inm]);
    assert_identity(&r, &page, "gzip tag, no Accept-Encoding");

    // HEAD: the GET's headers, the compressed length, no body.
    let head = request(addr, "HEAD", "/page.html", &["Accept-Encoding: gzip"]);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-encoding"), Some("gzip"));
    assert_eq!(head.header("etag"), gz.header("etag"));
    assert_eq!(head.header("vary"), Some("Accept-Encoding"));
    assert_eq!(
        head.header("content-length"),
        Some(gz.body.len().to_string().as_str())
    );

    // Keep-alive: the compressed body is framed right, so the next response parses.
    let mut c = Client::connect(addr);
    for _ in 0..3 {
        c.send(b"GET /page.html HTTP/1.1\r\nHost: a.test\r\nAccept-Encoding: br\r\n\r\n");
        let r = c
            .read_response(false)
            .expect("response on the same connection");
        assert!(unbrotli(&r.body) == page);
    }

    // Compressed bodies are kept, but never across a change of the file: rewritten in
    // place (same inode, same length), the next answer decodes to the new text.
    let changed = text(100 * 1024, 9);
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(t.root_a.join("page.html"), &changed).unwrap();
    for accept in ["gzip", "br"] {
        let ae = format!("Accept-Encoding: {accept}");
        let r = request(addr, "GET", "/page.html", &[&ae]);
        let decoded = if accept == "gzip" {
            gunzip(&r.body)
        } else {
            unbrotli(&r.body)
        };
        assert!(
            decoded == changed,
            "{accept}: a stale compressed body was served"
        );
        assert_ne!(
            r.header("etag"),
            Some(tags[if accept == "gzip" { 1 } else { 2 }].as_str())
        );
    }
    std::fs::write(t.root_a.join("page.html"), &page).unwrap();

    // curl, as a browser would ask, over HTTP/1.1 and h2c, for each coding it decodes.
    let url = format!("http://{addr}/page.html");
    let out = t.dir.path().join("curl.out");
    let out_s = out.to_str().unwrap();
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        for accept in ["gzip", "br"] {
            let ae = format!("Accept-Encoding: {accept}");
            let (written, ok) = curl(&[
                proto,
                "--compressed",
                "-H",
                "Host: a.test",
                "-H",
                &ae,
                "-o",
                out_s,
                "-w",
                "%{http_code} %{size_download}",
                &url,
            ]);
            assert!(ok, "curl {proto} {accept} failed");
            let (code, downloaded) = written.split_once(' ').unwrap();
            assert_eq!(code, "200", "curl {proto} {accept}");
            let downloaded: usize = downloaded.parse().unwrap();
            assert!(
                downloaded < page.len() / 2,
                "curl {proto} {accept}: {downloaded} bytes on the wire, not compressed"
            );
            assert!(
                std::fs::read(&out).unwrap() == page,
                "curl {proto} {accept}: decoded body differs"
            );
        }
    }
}

#[test]
fn precompressed_siblings_are_served_and_stale_or_escaping_ones_ignored() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    // b.test: compress = false, siblings only.
    t.append_site("b", "compress = false");
    let script = text(8 * 1024, 2);
    // The siblings hold a different text, so the test can tell which one it got.
    let from_sibling = text(8 * 1024, 3);
    let js = t.root_a.join("app.js");
    write_owned(&js, &script, &t.a, 0o644);
    write_owned(
        &t.root_a.join("app.js.gz"),
        &gzip(&from_sibling),
        &t.a,
        0o644,
    );
    write_owned(
        &t.root_a.join("app.js.br"),
        &brotli_of(&from_sibling),
        &t.a,
        0o644,
    );
    write_owned(&t.root_b.join("app.js"), &script, &t.b, 0o644);
    write_owned(
        &t.root_b.join("app.js.gz"),
        &gzip(&from_sibling),
        &t.b,
        0o644,
    );
    write_owned(&t.root_b.join("plain.css"), &script, &t.b, 0o644);
    // A sibling that is a symlink to the other tenant's file is no sibling.
    write_owned(&t.root_a.join("linked.css"), &script, &t.a, 0o644);
    std::os::unix::fs::symlink(t.root_b.join("app.js.gz"), t.root_a.join("linked.css.gz")).unwrap();
    let condo = Condo::start(&config);
    let addr = condo.pass;

    let r = request(addr, "GET", "/app.js", &["Accept-Encoding: gzip"]);
    assert_eq!(r.status, 200, "{}", condo.log_text());
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert!(
        gunzip(&r.body) == from_sibling,
        "the .gz sibling was not served"
    );
    let gz_tag = r.header("etag").unwrap().to_string();
    assert!(gz_tag.ends_with("-gz\""), "{gz_tag}");
    let inm = format!("If-None-Match: {gz_tag}");
    let r304 = request(addr, "GET", "/app.js", &["Accept-Encoding: gzip", &inm]);
    assert_eq!(r304.status, 304);
    assert_eq!(r304.header("etag"), Some(gz_tag.as_str()));

    let r = request(
        addr,
        "GET",
        "/app.js",
        &["Accept-Encoding: br;q=1, gzip;q=0.5"],
    );
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert!(
        unbrotli(&r.body) == from_sibling,
        "the .br sibling was not served"
    );
    let br_tag = r.header("etag").unwrap().to_string();
    assert_ne!(br_tag, gz_tag);
    assert!(br_tag.ends_with("-br\""), "{br_tag}");

    // HEAD of a sibling: its length, its headers.
    let head = request(addr, "HEAD", "/app.js", &["Accept-Encoding: br"]);
    assert_eq!(head.header("etag"), Some(br_tag.as_str()));
    assert_eq!(
        head.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );

    // A sibling older than the file was made for an earlier version: ignored, and
    // the file compressed on the fly instead.
    let old = SystemTime::now() - Duration::from_secs(3600);
    set_mtime(&t.root_a.join("app.js.gz"), old);
    set_mtime(&t.root_a.join("app.js.br"), old);
    let r = request(addr, "GET", "/app.js", &["Accept-Encoding: gzip"]);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(gunzip(&r.body) == script, "a stale .gz sibling was served");
    let r = request(addr, "GET", "/app.js", &["Accept-Encoding: br"]);
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert!(
        unbrotli(&r.body) == script,
        "a stale .br sibling was served"
    );

    // A symlinked sibling leading out of the root: the file itself, compressed here.
    let r = request(addr, "GET", "/linked.css", &["Accept-Encoding: gzip"]);
    assert_eq!(r.status, 200);
    assert!(
        gunzip(&r.body) == script,
        "a sibling outside the root was served"
    );

    // compress = false: the sibling still, but nothing compressed on the fly.
    let addr_b = condo.pass;
    let get_b = |path: &str| {
        let mut c = Client::connect(addr_b);
        c.send(
            format!("GET {path} HTTP/1.1\r\nHost: b.test\r\nAccept-Encoding: gzip, br\r\n\r\n")
                .as_bytes(),
        );
        c.read_response(false).unwrap()
    };
    let r = get_b("/app.js");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(gunzip(&r.body) == from_sibling);
    let r = get_b("/plain.css");
    assert_identity(&r, &script, "compress = false");
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
}

#[test]
fn no_compression_for_ranges_small_bodies_binary_types_or_refused_codings() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    let css = text(20 * 1024, 4);
    write_owned(&t.root_a.join("style.css"), &css, &t.a, 0o644);
    let small = b"body { color: red }\n".repeat(10); // 200 bytes, under the floor
    write_owned(&t.root_a.join("small.css"), &small, &t.a, 0o644);
    let binary = text(20 * 1024, 5);
    write_owned(&t.root_a.join("data.bin"), &binary, &t.a, 0o644);
    write_owned(&t.root_a.join("photo.png"), &binary, &t.a, 0o644);
    let condo = Condo::start(&config);
    let addr = condo.pass;

    // A Range is served from the identity representation, If-Range as before.
    let r = request(
        addr,
        "GET",
        "/style.css",
        &["Accept-Encoding: gzip, br", "Range: bytes=100-1099"],
    );
    assert_eq!(r.status, 206, "{}", condo.log_text());
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(
        r.header("content-range"),
        Some(&*format!("bytes 100-1099/{}", css.len()))
    );
    assert!(r.body == css[100..1100]);
    let identity_tag = request(addr, "GET", "/style.css", &[])
        .header("etag")
        .unwrap()
        .to_string();
    let if_range = format!("If-Range: {identity_tag}");
    let r = request(
        addr,
        "GET",
        "/style.css",
        &["Accept-Encoding: gzip", "Range: bytes=0-9", &if_range],
    );
    assert_eq!(r.status, 206);
    assert!(r.body == css[..10]);

    // Small bodies, non-text types: as they are, whatever the client accepts.
    let r = request(addr, "GET", "/small.css", &["Accept-Encoding: gzip, br"]);
    assert_identity(&r, &small, "small body");
    for path in ["/data.bin", "/photo.png"] {
        let r = request(addr, "GET", path, &["Accept-Encoding: gzip, br"]);
        assert_identity(&r, &binary, path);
        assert_eq!(r.header("vary"), None, "{path}");
    }

    // What the client accepts, q-values and all.
    for (accept, expect) in [
        (None, None),
        (Some(""), None),
        (Some("identity"), None),
        (Some("gzip;q=0"), None),
        (Some("gzip;q=0, br;q=0.000"), None),
        (Some("*;q=0"), None),
        (Some("*;q=0, identity"), None),
        (Some("br;q=0, *;q=0.5"), Some("gzip")),
        (Some("deflate, compress"), None),
        (Some("gzip;q=1.5"), None),
        (Some("GZIP"), Some("gzip")),
        (Some("x-gzip"), Some("gzip")),
        (Some("br;q=0.5, gzip;q=0.8"), Some("gzip")),
        (Some("gzip;q=0.8, br;q=0.9"), Some("br")),
        (Some("gzip, br"), Some("br")),
        (Some("*"), Some("br")),
    ] {
        let line = accept.map(|a| format!("Accept-Encoding: {a}"));
        let headers: Vec<&str> = line.iter().map(String::as_str).collect();
        let r = request(addr, "GET", "/style.css", &headers);
        assert_eq!(r.status, 200, "{accept:?}");
        assert_eq!(r.header("content-encoding"), expect, "{accept:?}");
        assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{accept:?}");
        let decoded = match expect {
            None => r.body.clone(),
            Some("gzip") => gunzip(&r.body),
            _ => unbrotli(&r.body),
        };
        assert!(decoded == css, "{accept:?}: body differs after decoding");
    }

    // curl without --compressed sends no Accept-Encoding: the file as it is.
    let url = format!("http://{addr}/style.css");
    let (body, ok) = curl(&["-H", "Host: a.test", &url]);
    assert!(ok);
    assert!(body.as_bytes() == css);
}
