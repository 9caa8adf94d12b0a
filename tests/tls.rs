//! HTTPS: a site's own certificate is used only in its tenant's worker (the dispatcher
//! cannot read the key and its memory never holds it); the host's wildcard certificate
//! is terminated in the dispatcher; SNI and Host must agree (421); an unknown name gets
//! no certificate. Real rustls on condo's side, real curl (OpenSSL) as the client, a CA
//! and certificates made with rcgen for each test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

struct Pki {
    ca_pem: PathBuf,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(dir: &Path) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "condo test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, cert.pem()).unwrap();
        Self {
            ca_pem,
            ca: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for `names`: (cert PEM, key PEM, key DER).
    fn issue(&self, names: &[&str]) -> (String, String, Vec<u8>) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        // A lifetime a public CA would give (sslyze's Mozilla check wants <= 398 days).
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(90);
        // What strict validators (sslyze's) require of a leaf.
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem(), key.serialize_der())
    }
}

fn https(condo: &Condo, ca: &Path, sni: &str, host: Option<&str>, path: &str) -> (String, bool) {
    let port = condo.tls.expect("a TLS listener").port();
    let mut args = vec![
        "-s".to_string(),
        "--cacert".into(),
        ca.display().to_string(),
        "--resolve".into(),
        format!("{sni}:{port}:127.0.0.1"),
        "-w".into(),
        "\n%{http_code}".into(),
    ];
    if let Some(h) = host {
        args.push("-H".into());
        args.push(format!("Host: {h}"));
    }
    args.push(format!("https://{sni}:{port}{path}"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&refs)
}

/// Does the memory of process `pid` contain `needle`? (Root reads /proc/PID/mem.)
fn memory_contains(pid: u32, needle: &[u8]) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let range = fields.next().unwrap();
        let perms = fields.next().unwrap();
        if !perms.starts_with('r') || line.contains("[vvar]") || line.contains("[vsyscall]") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        if end - start > 1 << 30 {
            continue;
        }
        let mut buf = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        if buf.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
    }
    false
}

/// Tenants a and b over HTTPS: a with its own certificate (in a's home, key 0600 a's)
/// for `a_names`, b as `b.hosting.test` (and `b.extra.test`) under the host's
/// certificate for `host_names`; a `/cgi-bin/https.sh` on both.
struct Setup {
    t: TwoTenants,
    pki: Pki,
    config: PathBuf,
    a_tls: PathBuf,
    host_tls: PathBuf,
    a_key: String,
    a_key_der: Vec<u8>,
}

impl Setup {
    fn new(a_names: &[&str], host_names: &[&str]) -> Self {
        let t = TwoTenants::new();
        let pki = Pki::new(t.dir.path());
        let a_tls = t.root_a.parent().unwrap().join("tls");
        std::fs::create_dir(&a_tls).unwrap();
        chown(&a_tls, &t.a, 0o700);
        let host_tls = t.dir.path().join("host-tls");
        std::fs::create_dir(&host_tls).unwrap();
        let config = t.config("tls_listen = [\"127.0.0.1:0\"]");
        let main = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            format!(
                "{main}\n[[certificate]]\nnames = [\"*.hosting.test\", \"*.extra.test\"]\ncert = \"{}\"\nkey = \"{}\"\n",
                host_tls.join("wild.pem").display(),
                host_tls.join("wild.key").display()
            ),
        )
        .unwrap();
        let edit = |file: &str, from: &str, to: &str| {
            let path = t.dir.path().join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        };
        edit(
            "sites/a.toml",
            "aliases = [\"www.a.test\"]\n",
            &format!(
                "aliases = [\"www.a.test\", \"new.a.test\"]\ntls = {{ cert = \"{}\", key = \"{}\" }}\nhttps_redirect = true\nhsts = \"max-age=600\"\n",
                a_tls.join("cert.pem").display(),
                a_tls.join("key.pem").display()
            ),
        );
        edit(
            "sites/b.toml",
            "name = \"b.test\"\n",
            "name = \"b.test\"\naliases = [\"b.hosting.test\", \"b.extra.test\"]\n",
        );
        for name in ["a", "b"] {
            t.script(
                name,
                "cgi-bin/https.sh",
                "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nhttps=%s %s\\n' \"${HTTPS:-off}\" \"$REQUEST_SCHEME\"\n",
            );
            t.append_site(
                name,
                "[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"",
            );
        }
        let mut setup = Self {
            t,
            pki,
            config,
            a_tls,
            host_tls,
            a_key: String::new(),
            a_key_der: Vec::new(),
        };
        setup.write_certs(a_names, host_names);
        setup
    }

    /// (Re)issue a's own certificate and the host's, in place.
    fn write_certs(&mut self, a_names: &[&str], host_names: &[&str]) {
        let (a_cert, a_key, a_key_der) = self.pki.issue(a_names);
        write_owned(
            &self.a_tls.join("cert.pem"),
            a_cert.as_bytes(),
            &self.t.a,
            0o644,
        );
        write_owned(
            &self.a_tls.join("key.pem"),
            a_key.as_bytes(),
            &self.t.a,
            0o600,
        );
        let (w_cert, w_key, _) = self.pki.issue(host_names);
        std::fs::write(self.host_tls.join("wild.pem"), w_cert).unwrap();
        std::fs::write(self.host_tls.join("wild.key"), w_key).unwrap();
        std::fs::set_permissions(
            self.host_tls.join("wild.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        self.a_key = a_key;
        self.a_key_der = a_key_der;
    }
}

#[test]
fn own_and_provider_certificates_sni_and_host() {
    if !require_root() {
        return;
    }
    let s = Setup::new(&["a.test", "www.a.test"], &["*.hosting.test"]);
    let (t, pki, config, a_tls) = (&s.t, &s.pki, &s.config, &s.a_tls);
    let (a_key, a_key_der) = (&s.a_key, &s.a_key_der);
    let condo = Condo::start(config);
    let ca = &pki.ca_pem;
    // Scripts know the request came over HTTPS, on both paths, and plain HTTP is not.
    for sni in ["a.test", "b.hosting.test"] {
        let (out, ok) = https(&condo, ca, sni, None, "/cgi-bin/https.sh");
        assert!(ok && out == "https=on https\n\n200", "{sni}: {out}");
    }
    let (out, _) = curl(&[
        "-H",
        "Host: b.test",
        &format!("http://{}/cgi-bin/https.sh", condo.pass),
    ]);
    assert_eq!(out, "https=off http\n");
    // a redirects plain HTTP to HTTPS and sends HSTS over HTTPS only.
    for addr in [condo.pass, condo.proxy()] {
        let (head, _) = curl(&["-si", "-H", "Host: a.test", &format!("http://{addr}/x?y=1")]);
        assert!(head.starts_with("HTTP/1.1 301"), "{head}");
        assert!(
            head.contains("Location: https://a.test/x?y=1\r\n"),
            "{head}"
        );
        assert!(!head.contains("Strict-Transport-Security"), "{head}");
        let (head, _) = curl(&[
            "-si",
            "-X",
            "POST",
            "-H",
            "Host: a.test",
            &format!("http://{addr}/form"),
        ]);
        assert!(head.starts_with("HTTP/1.1 308"), "{head}");
    }
    let port = condo.tls.unwrap().port();
    for path in ["/", "/cgi-bin/https.sh", "/missing"] {
        let (head, _) = curl(&[
            "-si",
            "--cacert",
            &ca.display().to_string(),
            "--resolve",
            &format!("a.test:{port}:127.0.0.1"),
            &format!("https://a.test:{port}{path}"),
        ]);
        // curl speaks h2 here (lowercase header names).
        assert!(
            head.to_ascii_lowercase()
                .contains("strict-transport-security: max-age=600\r\n"),
            "{path}: {head}"
        );
    }

    // a's own certificate, verified by curl for a.test and www.a.test.
    let (out, ok) = https(&condo, ca, "a.test", None, "/");
    assert!(ok && out == "site A\n\n200", "{out}\n{}", condo.log_text());
    let (out, ok) = https(&condo, ca, "www.a.test", None, "/");
    assert!(ok && out == "site A\n\n200", "{out}");
    // b through the host's wildcard, terminated in the dispatcher.
    let (out, ok) = https(&condo, ca, "b.hosting.test", None, "/");
    assert!(ok && out == "site B\n\n200", "{out}\n{}", condo.log_text());
    // Keep-alive over both paths: two requests on one connection.
    let port = condo.tls.unwrap().port();
    for sni in ["a.test", "b.hosting.test"] {
        let (out, ok) = curl(&[
            "--cacert",
            &ca.display().to_string(),
            "--resolve",
            &format!("{sni}:{port}:127.0.0.1"),
            &format!("https://{sni}:{port}/"),
            &format!("https://{sni}:{port}/"),
        ]);
        assert!(ok && out.matches("site").count() == 2, "{sni}: {out}");
    }

    // SNI and Host must agree: a's connection cannot reach b, nor b's reach a.
    let (out, _) = https(&condo, ca, "a.test", Some("b.test"), "/");
    assert!(out.ends_with("\n421"), "{out}");
    let (out, _) = https(&condo, ca, "b.hosting.test", Some("a.test"), "/");
    assert!(out.ends_with("\n421"), "{out}");
    // A name no certificate covers (and no default): no handshake.
    let (out, ok) = https(&condo, ca, "nobody.test", None, "/");
    assert!(!ok, "{out}");

    // The dispatcher cannot read a's key, and its memory does not hold it; the worker
    // of a, which did the handshakes, does (so the scan can find it).
    let dispatcher = condo.wait_child("dispatcher", None);
    let worker_a = condo.wait_child("worker", Some("a"));
    let out = Command::new("setpriv")
        .arg(format!("--reuid={}", t.dispatcher.uid))
        .arg(format!("--regid={}", t.dispatcher.gid))
        .arg("--clear-groups")
        .args(["cat"])
        .arg(a_tls.join("key.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "the dispatcher user read a's key");
    // The private scalar (PKCS#8 ECDSA: after INTEGER 1, OCTET STRING of 32 bytes) and a
    // line of the PEM text the worker read.
    let at = a_key_der
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("an EC private key")
        + 5;
    let scalar = &a_key_der[at..at + 32];
    let pem_line = a_key.lines().nth(2).expect("a PEM body line").as_bytes();
    assert!(
        memory_contains(worker_a, scalar) || memory_contains(worker_a, pem_line),
        "the scan found a's key nowhere, not even in a's worker"
    );
    for needle in [scalar, pem_line] {
        assert!(
            !memory_contains(dispatcher, needle),
            "a's private key is in the dispatcher's memory"
        );
    }
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{dispatcher}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    assert!(!fds.iter().any(|f| f.contains("key.pem")), "{fds:?}");
}

/// `condo reload` reads every certificate again: the host's in the dispatcher, a site's
/// own in the tenant's next worker. Names the new certificates add work after it.
#[test]
fn certificates_are_read_again_at_reload() {
    if !require_root() {
        return;
    }
    let mut s = Setup::new(&["a.test", "www.a.test"], &["*.hosting.test"]);
    let condo = Condo::start(&s.config);
    let ca = s.pki.ca_pem.clone();
    assert!(https(&condo, &ca, "b.hosting.test", None, "/").1);
    assert!(https(&condo, &ca, "a.test", None, "/").1);
    // Not covered yet: curl refuses both.
    assert!(!https(&condo, &ca, "b.extra.test", None, "/").1);
    assert!(!https(&condo, &ca, "new.a.test", None, "/").1);
    s.write_certs(
        &["a.test", "www.a.test", "new.a.test"],
        &["*.hosting.test", "*.extra.test"],
    );
    let out = Command::new(CONDO)
        .args(["reload", "-c"])
        .arg(&s.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let b = https(&condo, &ca, "b.extra.test", None, "/");
        let a = https(&condo, &ca, "new.a.test", None, "/");
        if b.1 && a.1 {
            assert_eq!(b.0, "site B\n\n200");
            assert_eq!(a.0, "site A\n\n200");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{b:?} {a:?}\n{}",
            condo.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// HTTP/2: ALPN h2 on both certificate paths (the worker's own handshake and the
/// dispatcher's), h2c with prior knowledge on the plain listeners, 421 across names.
#[test]
fn http2_over_tls_and_h2c() {
    if !require_root() {
        return;
    }
    let s = Setup::new(&["a.test", "www.a.test"], &["*.hosting.test"]);
    let condo = Condo::start(&s.config);
    let ca = s.pki.ca_pem.display().to_string();
    let port = condo.tls.unwrap().port();
    let h2 = |sni: &str, host: Option<&str>, path: &str| {
        let mut args = vec![
            "--http2".to_string(),
            "--cacert".into(),
            ca.clone(),
            "--resolve".into(),
            format!("{sni}:{port}:127.0.0.1"),
            "-w".into(),
            "\n%{http_version} %{http_code}".into(),
        ];
        if let Some(h) = host {
            args.extend(["-H".into(), format!("Host: {h}")]);
        }
        args.push(format!("https://{sni}:{port}{path}"));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&refs)
    };
    let (out, ok) = h2("a.test", None, "/");
    assert!(
        ok && out == "site A\n\n2 200",
        "{out}\n{}",
        condo.log_text()
    );
    let (out, ok) = h2("b.hosting.test", None, "/");
    assert!(
        ok && out == "site B\n\n2 200",
        "{out}\n{}",
        condo.log_text()
    );
    // Scripts through h2 on both paths, with a request body.
    for sni in ["a.test", "b.hosting.test"] {
        let (out, ok) = h2(sni, None, "/cgi-bin/https.sh");
        assert!(ok && out == "https=on https\n\n2 200", "{sni}: {out}");
    }
    let (out, _) = h2("a.test", Some("b.test"), "/");
    assert!(out.ends_with("2 421"), "{out}");
    let (out, _) = h2("b.hosting.test", Some("a.test"), "/");
    assert!(out.ends_with("2 421"), "{out}");
    // Several requests multiplexed on one connection.
    let url = |p: &str| format!("https://b.hosting.test:{port}{p}");
    let (out, ok) = curl(&[
        "--http2",
        "--cacert",
        &ca,
        "--resolve",
        &format!("b.hosting.test:{port}:127.0.0.1"),
        "--parallel",
        &url("/"),
        &url("/"),
        &url("/cgi-bin/https.sh"),
    ]);
    assert!(
        ok && out.matches("site B").count() == 2 && out.contains("https=on"),
        "{out}"
    );
    // h2c with prior knowledge on both plain listeners.
    for addr in [condo.pass, condo.proxy()] {
        let (out, ok) = curl(&[
            "--http2-prior-knowledge",
            "-H",
            "Host: b.test",
            "-w",
            "\n%{http_version} %{http_code}",
            &format!("http://{addr}/cgi-bin/https.sh"),
        ]);
        assert!(ok && out == "https=off http\n\n2 200", "{addr}: {out}");
    }
}

/// h2 with the site's own certificate answers static files from the h2 stream itself
/// (not through the HTTP/1.1 relay): whole files larger than one read, HEAD, ranges,
/// conditional requests, and the access log line, all as HTTP/1.1 gives them.
#[test]
fn own_certificate_h2_static_files() {
    if !require_root() {
        return;
    }
    let s = Setup::new(&["a.test", "www.a.test"], &["*.hosting.test"]);
    // 300 KiB of varying bytes: several 64 KiB reads, and a wrong offset would show.
    let big: Vec<u8> = (0..300 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    write_owned(&s.t.root_a.join("big.bin"), &big, &s.t.a, 0o600);
    let condo = Condo::start(&s.config);
    let ca = s.pki.ca_pem.display().to_string();
    let port = condo.tls.unwrap().port();
    let resolve = format!("a.test:{port}:127.0.0.1");
    let url = format!("https://a.test:{port}/big.bin");
    let h2 = |extra: &[&str]| {
        let mut args = vec!["--http2", "--cacert", &ca, "--resolve", &resolve];
        args.extend_from_slice(extra);
        args.push(&url);
        Command::new("curl")
            .args(["-s", "--max-time", "10"])
            .args(&args)
            .output()
            .expect("curl is installed")
    };
    let whole = h2(&[]);
    assert!(whole.status.success(), "{}", condo.log_text());
    assert!(
        whole.stdout == big,
        "the file came back changed ({} bytes)",
        whole.stdout.len()
    );

    let head = String::from_utf8_lossy(&h2(&["-I"]).stdout).to_lowercase();
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", big.len())),
        "{head}"
    );
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .expect("an ETag")
        .trim()
        .to_string();

    let range = h2(&["-r", "100000-100099", "-w", "\n%{http_code}"]);
    let (body, code) = range.stdout.split_at(range.stdout.len() - 4);
    assert_eq!(code, b"\n206");
    assert_eq!(body, &big[100_000..100_100]);

    let multi = String::from_utf8_lossy(&h2(&["-r", "0-1,10-11", "-i"]).stdout).to_string();
    assert!(
        multi.starts_with("HTTP/2 206") && multi.contains("multipart/byteranges"),
        "{multi}"
    );

    let cached = h2(&[
        "-H",
        &format!("If-None-Match: {etag}"),
        "-w",
        "%{http_code}",
    ]);
    assert_eq!(String::from_utf8_lossy(&cached.stdout), "304");

    let log = s.config.parent().unwrap().join("log/a.test.access.log");
    let mut text = String::new();
    for _ in 0..50 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 5 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        text.contains("\"GET /big.bin HTTP/2.0\" 200 307200")
            && text.contains("\"HEAD /big.bin HTTP/2.0\" 200 0")
            && text.contains("\"GET /big.bin HTTP/2.0\" 206 100")
            && text.contains("\"GET /big.bin HTTP/2.0\" 304 0"),
        "{text}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `openssl s_client` over TLS 1.2, saving or reusing a session; true if it was reused.
fn s_client(port: u16, sni: &str, ca: &Path, sess: &Path, reuse: bool) -> bool {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-tls1_2",
        "-connect",
        &format!("127.0.0.1:{port}"),
    ])
    .args(["-servername", sni, "-CAfile"])
    .arg(ca)
    .arg(if reuse { "-sess_in" } else { "-sess_out" })
    .arg(sess)
    .stdin(std::process::Stdio::null());
    let out = cmd.output().expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Reused,") || text.contains("New,"),
        "no handshake with {sni}:\n{text}"
    );
    text.contains("Reused,")
}

/// TLS session resumption never crosses tenants: a's ticket works for a again, not for
/// b (another process, another ticket key) — nor does the host's for a.
#[test]
fn resumption_never_crosses_tenants() {
    if !require_root() {
        return;
    }
    let s = Setup::new(&["a.test", "www.a.test"], &["*.hosting.test"]);
    let condo = Condo::start(&s.config);
    let port = condo.tls.unwrap().port();
    let ca = &s.pki.ca_pem;
    let a_sess = s.t.dir.path().join("a.sess");
    let b_sess = s.t.dir.path().join("b.sess");
    assert!(!s_client(port, "a.test", ca, &a_sess, false));
    assert!(
        s_client(port, "a.test", ca, &a_sess, true),
        "a's own session not resumed"
    );
    assert!(
        !s_client(port, "b.hosting.test", ca, &a_sess, true),
        "a's ticket resumed for b"
    );
    assert!(!s_client(port, "b.hosting.test", ca, &b_sess, false));
    assert!(s_client(port, "b.hosting.test", ca, &b_sess, true));
    assert!(
        !s_client(port, "a.test", ca, &b_sess, true),
        "the host's ticket resumed for a"
    );
}

/// HAProxy in front, speaking PROXY v2 to condo and health-checking its /health: the
/// client address condo sees is the one HAProxy saw.
#[test]
fn behind_haproxy_with_proxy_v2() {
    if !require_root() {
        return;
    }
    if Command::new("haproxy").arg("-v").output().is_err() {
        assert!(std::env::var("CI").is_err(), "haproxy is not installed");
        eprintln!("skipping: haproxy is not installed");
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("proxy_protocol_from = [\"127.0.0.1\"]\nadmin_listen = \"127.0.0.1:0\"");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen(
            "listen = [",
            "listen = [{ addr = \"127.0.0.1:0\", handover = \"pass\", proxy_protocol = true }, ",
            1,
        ),
    )
    .unwrap();
    t.script(
        "a",
        "cgi-bin/remote.sh",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nremote=%s\\n' \"$REMOTE_ADDR\"\n",
    );
    t.append_site(
        "a",
        "[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"",
    );
    let condo = Condo::start(&config);
    let pp = condo.proxy_protocol.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let admin = loop {
        if let Some(a) = condo
            .log_text()
            .lines()
            .find_map(|l| l.split("admin listener on ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string)
        {
            break a;
        }
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let front = free_port();
    let admin_port = admin.rsplit(':').next().unwrap();
    let cfg = t.dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 100\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
             frontend web\n  bind 127.0.0.1:{front}\n  default_backend condo\n\
             backend condo\n  option httpchk GET /health\n  server node1 {pp} send-proxy-v2 check port {admin_port} inter 200ms\n"
        ),
    )
    .unwrap();
    let mut haproxy = Command::new("haproxy")
        .arg("-f")
        .arg(&cfg)
        .arg("-db")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let result = std::panic::catch_unwind(|| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (body, ok) = curl(&[
                "--interface",
                "127.0.0.3",
                "-H",
                "Host: a.test",
                &format!("http://127.0.0.1:{front}/cgi-bin/remote.sh"),
            ]);
            if ok && body == "remote=127.0.0.3\n" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "through haproxy: {body:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    });
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// An h2 rapid-reset flood (HEADERS then RST_STREAM, thousands of times) from the
/// Python `h2` package: the flooding connection is cut, memory stays bounded, and the
/// other tenant is served throughout.
#[test]
fn h2_rapid_reset_flood_spares_the_others() {
    if !require_root() {
        return;
    }
    let has_h2 = Command::new("/usr/bin/python3")
        .args(["-c", "import h2"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_h2 {
        assert!(std::env::var("CI").is_err(), "python3-h2 is not installed");
        eprintln!("skipping: python3-h2 is not installed");
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    let condo = Condo::start(&config);
    let flood = r#"
import socket, sys, time
import h2.connection, h2.config, h2.events
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.settimeout(2)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
c.initiate_connection()
s.sendall(c.data_to_send())
sent = 0
end = time.time() + 5
try:
    while sent < 20000 and time.time() < end:
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "a.test")])
        c.reset_stream(sid)
        s.sendall(c.data_to_send())
        sent += 1
    print("sent", sent, "not cut")
except (OSError, Exception) as e:
    print("sent", sent, "cut", type(e).__name__)
"#;
    let addr = condo.pass;
    let flooder = std::thread::spawn(move || {
        let out = Command::new("/usr/bin/python3")
            .args([
                "-c",
                flood,
                &addr.ip().to_string(),
                &addr.port().to_string(),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    for i in 0..20 {
        let (body, ok) = curl(&["-H", "Host: b.test", &format!("http://{}/", condo.pass)]);
        assert!(
            ok && body == "site B\n",
            "request {i} during the flood: {body}"
        );
    }
    let result = flooder.join().unwrap();
    eprintln!("flood: {result}");
    assert!(
        result.contains("cut"),
        "the flooding connection was never cut: {result}"
    );
    let dispatcher = condo.wait_child("dispatcher", None);
    let rss: u64 = status_field(&proc_status(dispatcher), "VmRSS")
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    assert!(rss < 100 * 1024, "dispatcher RSS {rss} KiB after the flood");
    let (body, ok) = curl(&["-H", "Host: a.test", &format!("http://{}/", condo.pass)]);
    assert!(ok && body == "site A\n", "{body}");
}

/// h2load over h2 (TLS, both certificate kinds) and h2c: every request answered.
#[test]
fn h2load_over_h2_and_h2c() {
    if !require_root() {
        return;
    }
    if Command::new("h2load").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "h2load (nghttp2-client) is not installed"
        );
        eprintln!("skipping: h2load is not installed");
        return;
    }
    let s = Setup::new(&["a.test", "www.a.test"], &["*.hosting.test"]);
    let condo = Condo::start(&s.config);
    let port = condo.tls.unwrap().port();
    for url in [
        format!("https://a.test:{port}/"),
        format!("https://b.hosting.test:{port}/"),
        format!("http://b.test:{}/", condo.pass.port()),
    ] {
        let out = Command::new("h2load")
            .args(["-n", "2000", "-c", "4", "-m", "10"])
            .arg(format!(
                "--connect-to=127.0.0.1:{}",
                url.rsplit(':').next().unwrap().trim_end_matches('/')
            ))
            .arg(&url)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("2000 succeeded, 0 failed, 0 errored"),
            "{url}:\n{text}"
        );
        assert!(text.contains("status codes: 2000 2xx"), "{url}:\n{text}");
    }
}

/// sslyze (PyPI) against both certificate paths: Mozilla's "intermediate" configuration.
#[test]
fn sslyze_mozilla_intermediate() {
    if !require_root() {
        return;
    }
    let has = Command::new("python3")
        .args(["-m", "sslyze", "--help"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        assert!(
            std::env::var("CI").is_err(),
            "sslyze is not installed (pip install sslyze)"
        );
        eprintln!("skipping: sslyze is not installed");
        return;
    }
    let s = Setup::new(&["a.test", "www.a.test"], &["*.hosting.test"]);
    // sslyze also connects without SNI: the wildcard answers those.
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, format!("{text}default = true\n")).unwrap();
    let condo = Condo::start(&s.config);
    let port = condo.tls.unwrap().port();
    let out = Command::new("python3")
        .args([
            "-m",
            "sslyze",
            "--mozilla_config=intermediate",
            "--certinfo_ca_file",
        ])
        .arg(&s.pki.ca_pem)
        .arg(format!("a.test:{port}{{127.0.0.1}}"))
        .arg(format!("b.hosting.test:{port}{{127.0.0.1}}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches(": OK - Compliant.").count(), 2, "{text}");
    assert!(!text.contains("Not compliant"), "{text}");
}
