//! CGI scripts run as the tenant: real perl and sh scripts, both hand-over modes.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const ENV_SCRIPT: &str = r#"#!/usr/bin/perl
my $body = '';
read(STDIN, $body, $ENV{CONTENT_LENGTH} || 0);
print "Content-Type: text/plain\r\n\r\n";
print "user=" . getpwuid($<) . "\n";
print "path_info=" . ($ENV{PATH_INFO} // "unset") . "\n";
print "script_name=$ENV{SCRIPT_NAME}\n";
print "query=$ENV{QUERY_STRING}\n";
print "method=$ENV{REQUEST_METHOD}\n";
print "body=$body\n";
print "proxy=" . ($ENV{HTTP_PROXY} // "unset") . "\n";
print "site_var=" . ($ENV{SITE_VAR} // "unset") . "\n";
print "remote=$ENV{REMOTE_ADDR}\n";
print STDERR "env.pl was here\n";
"#;

fn script(dir: &Path, name: &str, body: &str, owner: &TestUser, mode: u32) {
    let path = dir.join(name);
    write_owned(&path, body.as_bytes(), owner, mode);
}

/// Two tenants, each with /cgi-bin/ as a CGI route (timeout 2 s) and the same scripts.
fn setup() -> (TwoTenants, std::path::PathBuf) {
    let t = TwoTenants::new();
    let config = t.config("");
    for (name, root, user) in [("a", &t.root_a, &t.a), ("b", &t.root_b, &t.b)] {
        let bin = root.join("cgi-bin");
        std::fs::create_dir_all(&bin).unwrap();
        chown(&bin, user, 0o755);
        script(&bin, "env.pl", ENV_SCRIPT, user, 0o755);
        script(
            &bin,
            "sleep.sh",
            "#!/bin/sh\nsleep 30\necho 'Content-Type: text/plain'\necho\necho late\n",
            user,
            0o755,
        );
        script(
            &bin,
            "redirect.sh",
            "#!/bin/sh\nprintf 'Location: /index.html\\n\\n'\n",
            user,
            0o755,
        );
        script(
            &bin,
            "writable.sh",
            "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nran\\n'\n",
            user,
            0o775,
        );
        script(
            &bin,
            "big.sh",
            "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nhead -c 300000 /dev/zero | tr '\\0' x\n",
            user,
            0o755,
        );
        let mut site = std::fs::OpenOptions::new()
            .append(true)
            .open(t.dir.path().join(format!("sites/{name}.toml")))
            .unwrap();
        writeln!(site, "[site.env]\nSITE_VAR = \"from-{name}\"\n\n[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"\ntimeout = \"2s\"").unwrap();
    }
    (t, config)
}

fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or("<missing>")
}

#[test]
fn the_same_script_runs_as_each_tenant_with_cgi_meta_variables() {
    if !require_root() {
        return;
    }
    let (t, config) = setup();
    let condo = Condo::start(&config);
    for addr in [condo.pass, condo.proxy()] {
        for (host, user, var) in [("a.test", &t.a, "from-a"), ("b.test", &t.b, "from-b")] {
            let mut c = Client::connect(addr);
            c.send(
                format!("POST /cgi-bin/env.pl/extra/info?x=1 HTTP/1.1\r\nHost: {host}\r\nProxy: http://evil.test/\r\nContent-Length: 5\r\n\r\nhello")
                    .as_bytes(),
            );
            let r = c.read_response(false).expect("response");
            let text = r.text();
            assert_eq!(r.status, 200, "{text}\n{}", condo.log_text());
            assert_eq!(field(&text, "user"), user.name, "{text}");
            assert_eq!(field(&text, "path_info"), "/extra/info");
            assert_eq!(field(&text, "script_name"), "/cgi-bin/env.pl");
            assert_eq!(field(&text, "query"), "x=1");
            assert_eq!(field(&text, "method"), "POST");
            assert_eq!(field(&text, "body"), "hello");
            assert_eq!(
                field(&text, "proxy"),
                "unset",
                "httpoxy: HTTP_PROXY must never be set"
            );
            assert_eq!(field(&text, "site_var"), var);
            assert_eq!(field(&text, "remote"), "127.0.0.1");
            // The connection stays usable: a chunked POST to the script, then a static file.
            c.send(format!("POST /cgi-bin/env.pl HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").as_bytes());
            let r = c.read_response(false).expect("second response");
            assert_eq!(field(&r.text(), "body"), "abcde");
            let r = c.get(host, "/index.html");
            assert_eq!(r.status, 200);
        }
    }
    // stderr went to the site's error log, readable by the tenant's group.
    std::thread::sleep(Duration::from_millis(200));
    let log = std::fs::read_to_string(t.dir.path().join("log/a.test.error.log")).unwrap();
    assert!(log.contains("env.pl was here"), "{log}");
}

#[test]
fn scripts_others_could_change_are_refused_and_the_reason_logged() {
    if !require_root() {
        return;
    }
    let (t, config) = setup();
    // A script owned by root in A's tree: A's worker must not run it.
    let bin = t.root_a.join("cgi-bin");
    std::fs::write(
        bin.join("roots.sh"),
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nroot\\n'\n",
    )
    .unwrap();
    std::fs::set_permissions(
        bin.join("roots.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let condo = Condo::start(&config);
    for path in ["/cgi-bin/writable.sh", "/cgi-bin/roots.sh"] {
        let mut c = Client::connect(condo.pass);
        let r = c.get("a.test", path);
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert!(!r.text().contains("ran") && !r.text().contains("root\n"));
    }
    let mut c = Client::connect(condo.pass);
    assert_eq!(c.get("a.test", "/cgi-bin/missing.pl").status, 404);
    std::thread::sleep(Duration::from_millis(200));
    let log = std::fs::read_to_string(t.dir.path().join("log/a.test.error.log")).unwrap();
    assert!(log.contains("writable by group or others"), "{log}");
    assert!(log.contains("not by this tenant"), "{log}");
}

#[test]
fn a_hanging_script_gets_504_at_the_route_timeout_and_is_killed() {
    if !require_root() {
        return;
    }
    let (t, config) = setup();
    let condo = Condo::start(&config);
    let started = Instant::now();
    let mut c = Client::connect(condo.pass);
    let r = c.get("a.test", "/cgi-bin/sleep.sh");
    assert_eq!(r.status, 504);
    assert!(started.elapsed() < Duration::from_secs(10));
    // No `sleep 30` of tenant A is left running.
    std::thread::sleep(Duration::from_millis(300));
    let leftover = std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            return false;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        status_field(&status, "Uid").split_whitespace().next() == Some(&t.a.uid.to_string())
            && cmd.starts_with(b"sleep")
    });
    assert!(!leftover, "the timed-out script's process group survived");
    // B was served meanwhile and still is.
    let mut c = Client::connect(condo.pass);
    assert_eq!(c.get("b.test", "/").text(), "site B\n");
}

#[test]
fn local_redirects_and_streamed_chunked_output() {
    if !require_root() {
        return;
    }
    let (_t, config) = setup();
    let condo = Condo::start(&config);
    for addr in [condo.pass, condo.proxy()] {
        let mut c = Client::connect(addr);
        let r = c.get("a.test", "/cgi-bin/redirect.sh");
        assert_eq!((r.status, r.text().as_str()), (200, "site A\n"));
        // No Content-Length from the script: chunked to an HTTP/1.1 client, and curl
        // reassembles it exactly.
        let (body, ok) = curl(&[
            "-H",
            "Host: a.test",
            &format!("http://{addr}/cgi-bin/big.sh"),
        ]);
        assert!(ok);
        assert_eq!(body.len(), 300000);
        assert!(body.bytes().all(|b| b == b'x'));
    }
}
