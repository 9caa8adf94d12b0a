//! Attack matrix, client rows (issue 15, item 10): a hostile client's protocol faults
//! are answered at once, as the client's faults — a chunk size past any limit (413 or
//! 400 before any data), a body that stops arriving (408 at body_timeout, never a 502
//! that blames the backend), TLS records rustls refuses (the alert is sent, and a TLS
//! 1.2 renegotiation does not hang) — and scripts never see the client's hop-by-hop
//! headers. Each row checks that the other tenant keeps serving.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const ENV_CGI: &str = "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nenv | sort\n";
const ECHO_CGI: &str = "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\ncat\n";

/// Tenants a (CGI scripts in /cgi-bin/) and b (static), body_timeout of 1 s.
fn setup(extra_server: &str) -> TwoTenants {
    let t = TwoTenants::new();
    t.config(&format!("body_timeout = \"1s\"\n{extra_server}"));
    t.script("a", "cgi-bin/env.sh", ENV_CGI);
    t.script("a", "cgi-bin/echo.sh", ECHO_CGI);
    t.append_site(
        "a",
        "[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"",
    );
    t
}

fn config_path(t: &TwoTenants) -> std::path::PathBuf {
    t.dir.path().join("condo.toml")
}

/// Send `bytes` on a fresh connection and read the status of the answer, with how
/// long it took; `None` if the connection closed without one.
fn status_after(addr: SocketAddr, bytes: &[u8]) -> (Option<u16>, Duration, Client) {
    let mut c = Client::connect(addr);
    let started = Instant::now();
    c.send(bytes);
    let status = c.read_response(false).map(|r| r.status);
    (status, started.elapsed(), c)
}

fn b_still_served(condo: &Condo) {
    for addr in [condo.pass, condo.proxy()] {
        let mut c = Client::connect(addr);
        let r = c.get("b.test", "/");
        assert_eq!(
            (r.status, r.text()),
            (200, "site B\n".to_string()),
            "{addr}"
        );
    }
}

#[test]
fn huge_chunk_sizes_are_answered_at_once() {
    if !require_root() {
        return;
    }
    let t = setup("");
    let condo = Condo::start(&config_path(&t));
    for addr in [condo.pass, condo.proxy()] {
        for (size, allowed) in [
            // Past any length a body can have: malformed (400), or over the site's
            // max_body (413) where that check comes first.
            ("ffffffffffffffff", &[400u16, 413][..]),
            ("10000000000000000", &[400, 413]),
            // A length, but past the site's max_body (default 64 MiB).
            ("fffffff", &[413]),
            ("4000001", &[413]),
        ] {
            let request = format!(
                "POST /cgi-bin/echo.sh HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\n"
            );
            let (status, took, mut c) = status_after(addr, request.as_bytes());
            let status = status.unwrap_or_else(|| {
                panic!(
                    "{addr} {size}: closed without an answer\n{}",
                    condo.log_text()
                )
            });
            assert!(allowed.contains(&status), "{addr} {size}: {status}");
            assert!(
                took < Duration::from_secs(2),
                "{addr} {size}: took {took:?}"
            );
            assert!(c.is_closed(), "{addr} {size}: connection left open");
        }
        // A chunked body within the limit still goes through.
        let (status, _, _) = status_after(
            addr,
            b"POST /cgi-bin/echo.sh HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        );
        assert_eq!(status, Some(200), "{addr}");
    }
    b_still_served(&condo);
}

#[test]
fn a_stalled_body_is_408_not_502() {
    if !require_root() {
        return;
    }
    let t = setup("");
    let condo = Condo::start(&config_path(&t));
    for addr in [condo.pass, condo.proxy()] {
        for (what, request) in [
            (
                "CGI, Content-Length",
                "POST /cgi-bin/echo.sh HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\nonly ten b",
            ),
            (
                "CGI, chunked",
                "POST /cgi-bin/echo.sh HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n64\r\nonly ten b",
            ),
            (
                "static, Content-Length",
                "POST / HTTP/1.1\r\nHost: b.test\r\nContent-Length: 100\r\n\r\nonly ten b",
            ),
        ] {
            let (status, took, mut c) = status_after(addr, request.as_bytes());
            assert_eq!(
                status,
                Some(408),
                "{addr} {what}: after {took:?}\n{}",
                condo.log_text()
            );
            // body_timeout is 1 s: answered then, not at some later timeout.
            assert!(
                took < Duration::from_secs(3),
                "{addr} {what}: took {took:?}"
            );
            assert!(c.is_closed(), "{addr} {what}: connection left open");
        }
    }
    b_still_served(&condo);
}

/// A worker that answers before the body arrived (a static site takes no body) is
/// heard at once on the proxy listener too, as on the pass one: the dispatcher does
/// not wait for a body nobody reads (then blaming the backend with a 502).
#[test]
fn an_early_answer_is_relayed_at_once() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    // The default body_timeout (60 s): any wait for the body would show.
    let condo = Condo::start(&t.config(""));
    for addr in [condo.pass, condo.proxy()] {
        for (request, expected) in [
            (
                "POST / HTTP/1.1\r\nHost: b.test\r\nContent-Length: 10000000\r\n\r\nsome",
                405,
            ),
            (
                "PUT /x HTTP/1.1\r\nHost: b.test\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\nsome",
                405,
            ),
        ] {
            let (status, took, mut c) = status_after(addr, request.as_bytes());
            assert_eq!(status, Some(expected), "{addr} {request:?} after {took:?}");
            assert!(took < Duration::from_secs(5), "{addr}: took {took:?}");
            assert!(c.is_closed(), "{addr}: connection left open");
        }
    }
    b_still_served(&condo);
}

#[test]
fn scripts_get_no_hop_by_hop_headers() {
    if !require_root() {
        return;
    }
    let t = setup("");
    let condo = Condo::start(&config_path(&t));
    for addr in [condo.pass, condo.proxy()] {
        let (status, _, _) = status_after(addr, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
        assert_eq!(status, Some(200));
        let mut c = Client::connect(addr);
        c.send(
            b"POST /cgi-bin/env.sh HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\
              Connection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
              Proxy-Connection: keep-alive\r\nProxy: http://127.0.0.1:9/\r\nX-Kept: yes\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
        );
        let r = c.read_response(false).expect("a response");
        let env = r.text();
        assert_eq!(r.status, 200, "{addr}: {env}");
        assert!(env.contains("CONTENT_LENGTH=5\n"), "{addr}: {env}");
        assert!(env.contains("HTTP_X_KEPT=yes\n"), "{addr}: {env}");
        for name in [
            "HTTP_TRANSFER_ENCODING",
            "HTTP_CONNECTION",
            "HTTP_KEEP_ALIVE",
            "HTTP_TE=",
            "HTTP_PROXY_CONNECTION",
            "HTTP_PROXY=",
        ] {
            assert!(!env.contains(name), "{addr}: {name} in\n{env}");
        }
    }
    b_still_served(&condo);
}

// ---- TLS ----

/// A provider certificate for `*.hosting.test` (default), self-signed; b answers as
/// `b.hosting.test`.
fn tls_setup() -> TwoTenants {
    let t = setup("tls_listen = [\"127.0.0.1:0\"]");
    let dir = t.dir.path().join("host-tls");
    std::fs::create_dir(&dir).unwrap();
    let issued = rcgen::generate_simple_self_signed(vec!["*.hosting.test".to_string()]).unwrap();
    std::fs::write(dir.join("c.pem"), issued.cert.pem()).unwrap();
    std::fs::write(dir.join("k.pem"), issued.signing_key.serialize_pem()).unwrap();
    let config = config_path(&t);
    let main = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "{main}\n[[certificate]]\nnames = [\"*.hosting.test\"]\ncert = \"{}\"\nkey = \"{}\"\ndefault = true\n",
            dir.join("c.pem").display(),
            dir.join("k.pem").display()
        ),
    )
    .unwrap();
    // a has its own certificate: its worker does the handshake.
    let own = t.root_a.parent().unwrap().join("tls");
    std::fs::create_dir(&own).unwrap();
    chown(&own, &t.a, 0o700);
    let issued = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
    write_owned(
        &own.join("c.pem"),
        issued.cert.pem().as_bytes(),
        &t.a,
        0o644,
    );
    write_owned(
        &own.join("k.pem"),
        issued.signing_key.serialize_pem().as_bytes(),
        &t.a,
        0o600,
    );
    let site = t.dir.path().join("sites/a.toml");
    let text = std::fs::read_to_string(&site).unwrap();
    std::fs::write(
        &site,
        text.replacen(
            "tenant = \"a\"\n",
            &format!(
                "tenant = \"a\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
                own.join("c.pem").display(),
                own.join("k.pem").display()
            ),
            1,
        ),
    )
    .unwrap();
    let site = t.dir.path().join("sites/b.toml");
    let text = std::fs::read_to_string(&site).unwrap();
    std::fs::write(
        &site,
        text.replacen(
            "name = \"b.test\"\n",
            "name = \"b.test\"\naliases = [\"b.hosting.test\"]\n",
            1,
        ),
    )
    .unwrap();
    t
}

/// A TLS 1.2/1.3 ClientHello whose extension `ext_type` carries `ext_body`.
fn client_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x42; 32]);
    body.push(0);
    // TLS_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    // TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    body.extend_from_slice(&[0x00, 0x06, 0x13, 0x01, 0xc0, 0x2f, 0xc0, 0x2b]);
    body.extend_from_slice(&[0x01, 0x00]);
    let mut exts = Vec::new();
    for (kind, data) in extensions {
        exts.extend_from_slice(&kind.to_be_bytes());
        exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
        exts.extend_from_slice(data);
    }
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// What the server sends back within 2 s (until it closes).
fn answer_to(addr: SocketAddr, bytes: &[u8]) -> (Vec<u8>, Duration) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let started = Instant::now();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
    (out, started.elapsed())
}

#[test]
fn malformed_client_hellos_get_their_alert() {
    if !require_root() {
        return;
    }
    let t = tls_setup();
    let condo = Condo::start(&config_path(&t));
    let tls = condo.tls.expect("a TLS listener");
    // server_name: the list claims 255 bytes and holds 9.
    let bad_sni = {
        let mut data = vec![0x00, 0xff, 0x00, 0x00, 0x06];
        data.extend_from_slice(b"a.test");
        data
    };
    // ALPN: the list claims 3 bytes, the one protocol inside claims 200.
    let bad_alpn = vec![0x00, 0x03, 200, b'h', b'2'];
    for (what, hello) in [
        ("SNI", client_hello(&[(0x0000, bad_sni)])),
        ("ALPN", client_hello(&[(0x0010, bad_alpn)])),
    ] {
        let (out, took) = answer_to(tls, &hello);
        // An alert record: type 21, then level fatal (2) and decode_error (50).
        assert!(
            out.len() >= 7 && out[0] == 0x15 && out[5] == 2 && out[6] == 50,
            "{what}: got {out:02x?} after {took:?}"
        );
        assert!(took < Duration::from_secs(2), "{what}: {took:?}");
    }
    b_over_tls(&condo, &t);
    b_still_served(&condo);
}

/// A real TLS 1.2-only ClientHello for `sni`, from rustls's own client.
fn real_client_hello(sni: &str) -> Vec<u8> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut client = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    hello
}

/// A second ClientHello where the server waits for the key exchange: rustls answers
/// unexpected_message, and that alert must reach the client before the close — on the
/// dispatcher's handshake (host certificate) and the worker's (own certificate).
#[test]
fn an_unexpected_message_gets_its_alert() {
    if !require_root() {
        return;
    }
    let t = tls_setup();
    let condo = Condo::start(&config_path(&t));
    let tls = condo.tls.expect("a TLS listener");
    for sni in ["b.hosting.test", "a.test"] {
        let hello = real_client_hello(sni);
        let twice = [hello.clone(), hello].concat();
        let (out, took) = answer_to(tls, &twice);
        let alert = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 10];
        assert!(
            out.windows(alert.len()).any(|w| w == alert),
            "{sni}: no unexpected_message alert in {} bytes after {took:?}: {:02x?}",
            out.len(),
            &out[out.len().saturating_sub(16)..]
        );
        assert!(took < Duration::from_secs(2), "{sni}: {took:?}");
    }
    b_over_tls(&condo, &t);
    b_still_served(&condo);
}

fn b_over_tls(condo: &Condo, _t: &TwoTenants) {
    let port = condo.tls.unwrap().port();
    let (body, ok) = curl(&[
        "-k",
        "--resolve",
        &format!("b.hosting.test:{port}:127.0.0.1"),
        &format!("https://b.hosting.test:{port}/"),
    ]);
    assert!(ok && body == "site B\n", "{body:?}\n{}", condo.log_text());
}

/// `openssl s_client -tls1_2`, then "R" (renegotiate) on stdin: rustls refuses with a
/// no_renegotiation alert, which must reach the client — not sit in a buffer while
/// the client waits for a ServerHello until some timeout.
fn renegotiate(port: u16, sni: &str) -> (String, Duration) {
    let mut child = Command::new("openssl")
        .args(["s_client", "-tls1_2", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", sni])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    let mut stdin = child.stdin.take().unwrap();
    // Let the handshake finish first, then ask to renegotiate; stdin stays open, so
    // s_client ends only because of what the server sends.
    std::thread::sleep(Duration::from_millis(700));
    let started = Instant::now();
    stdin.write_all(b"R\n").unwrap();
    let deadline = started + Duration::from_secs(8);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    let _ = child.kill();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        took,
    )
}

#[test]
fn tls12_renegotiation_gets_its_alert_and_does_not_hang() {
    if !require_root() {
        return;
    }
    let t = tls_setup();
    let condo = Condo::start(&config_path(&t));
    let port = condo.tls.unwrap().port();
    // Terminated in the dispatcher (the host's certificate), and in a's worker (its
    // own certificate).
    for sni in ["b.hosting.test", "a.test"] {
        let (out, took) = renegotiate(port, sni);
        assert!(
            out.contains("RENEGOTIATING") && out.to_lowercase().contains("no renegotiation"),
            "{sni}: {out}\n{}",
            condo.log_text()
        );
        assert!(
            took < Duration::from_secs(3),
            "{sni}: took {took:?}:\n{out}"
        );
    }
    b_over_tls(&condo, &t);
    b_still_served(&condo);
}
