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
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
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
                "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nhttps=%s\\n' \"${HTTPS:-off}\"\n",
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
        assert!(ok && out == "https=on\n\n200", "{sni}: {out}");
    }
    let (out, _) = curl(&[
        "-H",
        "Host: b.test",
        &format!("http://{}/cgi-bin/https.sh", condo.pass),
    ]);
    assert_eq!(out, "https=off\n");
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
        assert!(ok && out == "https=on\n\n2 200", "{sni}: {out}");
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
        assert!(ok && out == "https=off\n\n2 200", "{addr}: {out}");
    }
}
