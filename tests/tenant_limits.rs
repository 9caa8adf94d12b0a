//! What a tenant sees when its site meets one of its limits, with real cgroups (v1 on
//! this machine and CI), real python CGI scripts and real php-cgi: a script the kernel
//! kills at `memory_max` gives 503 with Retry-After and a site-log line naming the
//! limit (a script killed by SIGKILL for another reason does not); a spawn at
//! `pids_max` gives 503 naming it; static files are served while scripts hold every
//! `max_clients` slot; the access log counts the body bytes of condo's own pages; a
//! traceback with quotes stays readable in the site's error log.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

/// Tenant a with `limits` and a CGI route (plus `site` lines), in a scratch group.
fn setup(limits: &str, site: &str) -> (TwoTenants, ScratchParent, PathBuf) {
    let t = TwoTenants::new();
    let parent = ScratchParent::new();
    let config = t.config_tenants(
        &format!("cgroup = \"v1\"\ncgroup_parent = \"{}\"", parent.0),
        limits,
        "",
    );
    t.append_site(
        "a",
        &format!(
            "{site}\n[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"\ntimeout = \"30s\""
        ),
    );
    (t, parent, config)
}

/// Grows past any small memory_max, 8 MiB at a time (each page touched).
const HOG: &str = "#!/usr/bin/python3\nchunks = []\nfor i in range(64):\n    chunks.append(bytearray(8 << 20))\n    for j in range(0, 8 << 20, 4096):\n        chunks[-1][j] = 1\nprint('Content-Type: text/plain\\n')\nprint('survived', len(chunks) * 8, 'MiB')\n";

/// An HTTP server on the socket condo passes as fd 3; /app/hog grows past any small
/// memory_max.
const APP_HOG: &str = r#"import http.server, socket
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def log_message(self, *a):
        pass
    def do_GET(self):
        chunks = []
        if self.path == '/app/hog':
            for i in range(64):
                chunks.append(bytearray(8 << 20))
                for j in range(0, 8 << 20, 4096):
                    chunks[-1][j] = 1
        body = b'app ok'
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
server = http.server.HTTPServer(('127.0.0.1', 0), H, bind_and_activate=False)
server.socket = socket.socket(fileno=3)
server.server_address = ('app', 0)
server.serve_forever()
"#;

/// GET with a generous read timeout (an OOM kill under a busy machine takes a while).
fn get(addr: std::net::SocketAddr, path: &str) -> Response {
    let mut c = Client::connect(addr);
    c.stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    c.get("a.test", path)
}

/// The site log, once it has a line containing `needle` (or the deadline passed).
fn site_log_with(t: &TwoTenants, site: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = t.error_log(site);
        if log.contains(needle) || Instant::now() > deadline {
            return log;
        }
    }
}

/// The bytes field of the access log line for `path` with `status`.
fn access_bytes(t: &TwoTenants, path: &str, status: u16) -> u64 {
    let file = t.dir.path().join("log/a.test.access.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let needle = format!(" {path} HTTP/1.1\" {status} ");
        if let Some(line) = text.lines().find(|l| l.contains(&needle)) {
            let after = &line[line.find(&needle).unwrap() + needle.len()..];
            return after
                .split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no bytes in {line}"));
        }
        assert!(
            Instant::now() < deadline,
            "no access line for {path} {status}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_script_killed_at_memory_max_gets_503_and_the_site_log_names_the_limit() {
    if !require_root() || !require_cgroup_v1() {
        return;
    }
    let (t, _parent, config) = setup("memory_max = \"96M\"", "");
    t.script("a", "cgi-bin/hog.py", HOG);
    let condo = Condo::start(&config);
    let r = get(condo.pass, "/cgi-bin/hog.py");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("Retry-After"), Some("5"), "{:?}", r.headers);
    let log = site_log_with(&t, "a.test", "memory limit");
    assert!(
        log.contains("GET /cgi-bin/hog.py: killed: memory limit 96M reached"),
        "{log}"
    );
    assert!(log.contains("memory_max"), "{log}");
    assert!(!log.contains("without a complete response head"), "{log}");
    // The access log counts the page's body as sent.
    assert_eq!(
        access_bytes(&t, "/cgi-bin/hog.py", 503),
        r.body.len() as u64
    );
    assert!(!r.body.is_empty());
    // The tenant's other pages and the other tenant are served as before.
    assert_eq!(get(condo.pass, "/").text(), "site A\n");
    let (body, ok) = curl(&["-H", "Host: b.test", &format!("http://{}/", condo.pass)]);
    assert!(ok && body == "site B\n", "{body}");
}

#[test]
fn a_script_killed_by_sigkill_for_another_reason_is_not_called_an_oom_kill() {
    if !require_root() || !require_cgroup_v1() {
        return;
    }
    let (t, _parent, config) = setup("memory_max = \"96M\"", "");
    t.script(
        "a",
        "cgi-bin/suicide.py",
        "#!/usr/bin/python3\nimport os\nos.kill(os.getpid(), 9)\n",
    );
    let condo = Condo::start(&config);
    let r = get(condo.pass, "/cgi-bin/suicide.py");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.header("Retry-After").is_none(), "{:?}", r.headers);
    let log = site_log_with(&t, "a.test", "suicide.py");
    assert!(
        log.contains("/cgi-bin/suicide.py: the script ended without a complete response head"),
        "{log}"
    );
    assert!(!log.contains("memory limit"), "{log}");
}

#[test]
fn php_killed_at_memory_max_gets_503_and_the_site_log_names_the_limit() {
    if !require_root() || !require_cgroup_v1() {
        return;
    }
    let (t, _parent, config) = setup(
        "memory_max = \"128M\"",
        "[[site.route]]\nsuffix = \".php\"\nhandler = \"fastcgi\"\ncommand = [\"php-cgi\"]\nprocesses_max = 2\ntimeout = \"30s\"",
    );
    // PHP's own memory_limit would stop it first (a PHP fatal error, not the kernel).
    write_owned(
        &t.root_a.join("hog.php"),
        b"<?php ini_set('memory_limit', '-1'); $a = []; for ($i = 0; $i < 64; $i++) { $a[] = str_repeat(chr(65 + $i % 26), 8 << 20); } echo count($a);\n",
        &t.a,
        0o644,
    );
    write_owned(
        &t.root_a.join("hello.php"),
        b"<?php echo 'hello';\n",
        &t.a,
        0o644,
    );
    let condo = Condo::start(&config);
    let r = get(condo.pass, "/hog.php");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("Retry-After"), Some("5"), "{:?}", r.headers);
    let log = site_log_with(&t, "a.test", "memory limit");
    assert!(
        log.contains("GET /hog.php: killed: memory limit 128M reached"),
        "{log}"
    );
    // The pool replaces the killed process.
    assert_eq!(get(condo.pass, "/hello.php").text(), "hello");
}

#[test]
fn a_spawn_at_pids_max_gets_503_and_the_site_log_names_the_limit() {
    if !require_root() || !require_cgroup_v1() {
        return;
    }
    let (t, parent, config) = setup(
        "pids_max = 60",
        "[[site.route]]\nsuffix = \".php\"\nhandler = \"fastcgi\"\ncommand = [\"php-cgi\"]\ntimeout = \"30s\"",
    );
    write_owned(
        &t.root_a.join("hello.php"),
        b"<?php echo 'php';\n",
        &t.a,
        0o644,
    );
    // Takes every process the group has left, holds them until a file appears (or
    // 20 s), then lets them go.
    let release = t.root_a.join("cgi-bin/release");
    t.script(
        "a",
        "cgi-bin/hold.py",
        &format!(
            "#!/usr/bin/python3\nimport os, time\npids = []\nwhile True:\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    pids.append(pid)\nend = time.time() + 20\nwhile time.time() < end and not os.path.exists('{}'):\n    time.sleep(0.05)\nfor p in pids:\n    os.kill(p, 9)\nprint('Content-Type: text/plain\\n')\nprint('held', len(pids))\n",
            release.display()
        ),
    );
    t.script(
        "a",
        "cgi-bin/hello.sh",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nhello\\n'\n",
    );
    let condo = Condo::start(&config);
    assert_eq!(get(condo.pass, "/cgi-bin/hello.sh").text(), "hello\n");
    let hold = {
        let addr = condo.pass;
        std::thread::spawn(move || get(addr, "/cgi-bin/hold.py"))
    };
    // Wait until the group is at its cap.
    let deadline = Instant::now() + Duration::from_secs(20);
    while parent
        .try_tenant_file("pids", "a", "pids.current")
        .as_deref()
        != Some("60")
    {
        assert!(
            Instant::now() < deadline,
            "the group never reached pids_max"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = get(condo.pass, "/cgi-bin/hello.sh");
    // php-cgi has no process yet: starting one fails the same way.
    let php = get(condo.pass, "/hello.php");
    std::fs::write(&release, b"").unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(php.status, 503, "{}", php.text());
    assert_eq!(php.header("Retry-After"), Some("5"), "{:?}", php.headers);
    assert_eq!(r.header("Retry-After"), Some("5"), "{:?}", r.headers);
    let log = site_log_with(&t, "a.test", "pids_max");
    assert!(
        log.contains("GET /cgi-bin/hello.sh: cannot start /cgi-bin/hello.sh: process limit reached (the tenant's pids_max 60)"),
        "{log}"
    );
    assert!(
        log.contains("GET /hello.php: FastCGI app: cannot start a process: process limit reached (the tenant's pids_max 60)"),
        "{log}"
    );
    let held = hold.join().unwrap();
    assert_eq!(held.status, 200, "{}", held.text());
    // With the processes gone, scripts run again.
    assert_eq!(get(condo.pass, "/cgi-bin/hello.sh").text(), "hello\n");
    assert_eq!(get(condo.pass, "/hello.php").text(), "php");
}

#[test]
fn static_files_are_served_while_scripts_hold_every_max_clients_slot() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    t.script(
        "a",
        "cgi-bin/sleep.sh",
        "#!/bin/sh\nsleep \"$QUERY_STRING\"\nprintf 'Content-Type: text/plain\\n\\nslept\\n'\n",
    );
    t.append_site(
        "a",
        "max_clients = 1\nqueue_max = 1\nqueue_timeout = \"100ms\"\n\n[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"\ntimeout = \"30s\"",
    );
    let condo = Condo::start(&config);
    let url = format!("http://{}/cgi-bin/sleep.sh?6", condo.pass);
    let busy = std::thread::spawn(move || curl(&["-H", "Host: a.test", &url]));
    // Wait until the script holds the one slot: a second script request is refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        let r = get(condo.pass, "/cgi-bin/sleep.sh?0");
        if r.status == 503 {
            break r;
        }
        assert!(Instant::now() < deadline, "the slot was never taken");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(refused.header("Retry-After").is_some());
    // Static files are served at once all the same, over and over.
    for _ in 0..10 {
        let started = Instant::now();
        let r = get(condo.pass, "/");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "site A\n");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    // A missing file is condo's own 404, not a 503.
    assert_eq!(get(condo.pass, "/nothing-here").status, 404);
    // The same over h2 (h2c here): static from the h2 path, the script stream
    // through the HTTP/1 pipeline, where it is counted.
    let h2 = |path: &str| {
        curl(&[
            "--http2-prior-knowledge",
            "-H",
            "Host: a.test",
            "-w",
            "\n%{http_version} %{http_code}",
            &format!("http://{}{path}", condo.pass),
        ])
    };
    let (out, ok) = h2("/");
    assert!(ok && out == "site A\n\n2 200", "{out}");
    let (out, ok) = h2("/cgi-bin/sleep.sh?0");
    assert!(ok && out.ends_with("\n2 503"), "{out}");
    let (body, ok) = busy.join().unwrap();
    assert!(ok && body == "slept\n", "{body}");
    // The 503 (condo's own page) counts its body bytes in the access log.
    assert_eq!(
        access_bytes(&t, "/cgi-bin/sleep.sh?0", 503),
        refused.body.len() as u64
    );
}

#[test]
fn a_script_error_page_counts_its_bytes_and_a_traceback_stays_readable() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    t.script(
        "a",
        "cgi-bin/crash.py",
        "#!/usr/bin/python3\ndef parse(s):\n    raise ValueError(f\"can't parse \\\"{s}\\\" as a 'number'\")\nparse('x\\\\y')\n",
    );
    t.append_site(
        "a",
        "[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"\ntimeout = \"30s\"",
    );
    let condo = Condo::start(&config);
    let r = get(condo.pass, "/cgi-bin/crash.py");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(!r.body.is_empty());
    assert_eq!(
        access_bytes(&t, "/cgi-bin/crash.py", 502),
        r.body.len() as u64
    );
    let log = site_log_with(&t, "a.test", "ValueError");
    // Each traceback line is a line of its own, quotes and backslashes as written.
    assert!(
        log.contains("/cgi-bin/crash.py: Traceback (most recent call last):"),
        "{log}"
    );
    assert!(
        log.contains("/cgi-bin/crash.py: ValueError: can't parse \"x\\y\" as a 'number'"),
        "{log}"
    );
    assert!(log.contains("    raise ValueError("), "{log}");
}

#[test]
fn an_app_killed_at_memory_max_gets_503_and_the_site_log_names_the_limit() {
    if !require_root() || !require_cgroup_v1() {
        return;
    }
    let (t, _parent, config) = setup("memory_max = \"96M\"", "");
    let appdir = t.root_a.parent().unwrap().join("app");
    write_owned(&appdir.join("app.py"), APP_HOG.as_bytes(), &t.a, 0o644);
    chown(&appdir, &t.a, 0o755);
    t.append_site(
        "a",
        &format!(
            "[[site.route]]\npath = \"/app/\"\nhandler = \"app\"\nworkdir = \"{}\"\ncommand = [\"python3\", \"app.py\"]\ntimeout = \"30s\"",
            appdir.display()
        ),
    );
    let condo = Condo::start(&config);
    assert_eq!(get(condo.pass, "/app/ok").text(), "app ok");
    let r = get(condo.pass, "/app/hog");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("Retry-After"), Some("5"), "{:?}", r.headers);
    let log = site_log_with(&t, "a.test", "memory limit");
    assert!(
        log.contains("GET /app/hog: the app") && log.contains("killed: memory limit 96M reached"),
        "{log}"
    );
    // The app is started again for the next request.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = get(condo.pass, "/app/ok");
        if r.status == 200 {
            assert_eq!(r.text(), "app ok");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the app never came back: {}",
            r.status
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn static_files_over_the_sites_own_h2_are_served_while_max_clients_is_full() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("tls_listen = [\"127.0.0.1:0\"]");
    // a's own certificate: its HTTPS connections (and h2) end in a's worker.
    let tls = t.root_a.parent().unwrap().join("tls");
    std::fs::create_dir(&tls).unwrap();
    chown(&tls, &t.a, 0o700);
    let certified = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
    write_owned(
        &tls.join("cert.pem"),
        certified.cert.pem().as_bytes(),
        &t.a,
        0o644,
    );
    write_owned(
        &tls.join("key.pem"),
        certified.signing_key.serialize_pem().as_bytes(),
        &t.a,
        0o600,
    );
    t.script(
        "a",
        "cgi-bin/sleep.sh",
        "#!/bin/sh\nsleep \"$QUERY_STRING\"\nprintf 'Content-Type: text/plain\\n\\nslept\\n'\n",
    );
    t.append_site(
        "a",
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}\nmax_clients = 1\nqueue_max = 1\nqueue_timeout = \"100ms\"\n\n[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"\ntimeout = \"30s\"",
            tls.join("cert.pem").display(),
            tls.join("key.pem").display()
        ),
    );
    let condo = Condo::start(&config);
    let port = condo.tls.expect("a TLS listener").port();
    let resolve = format!("a.test:{port}:127.0.0.1");
    let h2 = |path: &str| {
        curl(&[
            "--http2",
            "-k",
            "--max-time",
            "20",
            "--resolve",
            &resolve,
            "-w",
            "\n%{http_version} %{http_code}",
            &format!("https://a.test:{port}{path}"),
        ])
    };
    let (out, ok) = h2("/");
    assert!(
        ok && out == "site A\n\n2 200",
        "{out}\n{}",
        condo.log_text()
    );
    let url = format!("http://{}/cgi-bin/sleep.sh?6", condo.pass);
    let busy = std::thread::spawn(move || curl(&["-H", "Host: a.test", &url]));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (out, ok) = h2("/cgi-bin/sleep.sh?0");
        assert!(ok, "{out}");
        if out.ends_with("\n2 503") {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never taken: {out}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..5 {
        let (out, ok) = h2("/");
        assert!(ok && out == "site A\n\n2 200", "{out}");
    }
    let (body, ok) = busy.join().unwrap();
    assert!(ok && body == "slept\n", "{body}");
}
