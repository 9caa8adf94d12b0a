//! The worker's request pipeline as real PHP sites meet it (issues 16 and 22): the
//! front-controller `fallback`, `max_body` for Content-Length and chunked bodies,
//! `error_pages` (a file or a PHP script), `no_scripts` for upload directories, and
//! the CGI variables Apache gives (REQUEST_SCHEME). Real php-cgi, real sockets.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// What the front controller and the error page scripts report, one `KEY=value` a line.
const REPORT: &str = r#"<?php
header('Content-Type: text/plain');
foreach (['REQUEST_URI', 'QUERY_STRING', 'SCRIPT_NAME', 'SCRIPT_FILENAME', 'PATH_INFO',
          'REQUEST_METHOD', 'REQUEST_SCHEME', 'REDIRECT_STATUS', 'REDIRECT_URL',
          'REDIRECT_QUERY_STRING', 'CONTEXT_DOCUMENT_ROOT', 'SERVER_NAME'] as $k) {
    echo $k, '=', $_SERVER[$k] ?? 'unset', "\n";
}
echo 'x=', $_GET['x'] ?? 'unset', "\n";
echo 'post=', $_POST['p'] ?? 'unset', "\n";
"#;

/// Counts and hashes its input; leaves a marker so a test sees it ran at all.
const UPLOAD: &str = r#"<?php
file_put_contents(__DIR__ . '/../ran/' . getmypid() . '-' . mt_rand(), 'x');
$body = file_get_contents('php://input');
echo strlen($body), ' ', md5($body);
"#;

fn php_route(home: &Path, timeout: &str) -> String {
    format!(
        "[[site.route]]\nsuffix = \".php\"\nhandler = \"fastcgi\"\n\
         command = [\"php-cgi\", \"-d\", \"session.save_path={}\"]\n\
         processes_max = 2\nidle_timeout = \"5s\"\ntimeout = \"{timeout}\"\n",
        home.display()
    )
}

/// Two tenants with PHP; `a_keys`/`b_keys` are site keys for a.test and b.test (they
/// go before the route table). Each docroot has `REPORT` as index.php, `UPLOAD` as
/// upload.php, a style.css, and a `ran/` directory beside it for markers.
fn setup(a_keys: &str, b_keys: &str, timeout: &str) -> (TwoTenants, std::path::PathBuf) {
    let t = TwoTenants::new();
    let config = t.config("");
    for (name, root, user, keys) in [
        ("a", &t.root_a, &t.a, a_keys),
        ("b", &t.root_b, &t.b, b_keys),
    ] {
        let home = root.parent().unwrap().to_path_buf();
        write_owned(&root.join("index.php"), REPORT.as_bytes(), user, 0o644);
        write_owned(&root.join("upload.php"), UPLOAD.as_bytes(), user, 0o644);
        write_owned(&root.join("style.css"), b"body{}\n", user, 0o644);
        let ran = home.join("ran");
        std::fs::create_dir_all(&ran).unwrap();
        chown(&ran, user, 0o700);
        t.append_site(name, &format!("{keys}\n{}", php_route(&home, timeout)));
    }
    (t, config)
}

fn field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        .to_string()
}

fn markers(root: &Path) -> usize {
    std::fs::read_dir(root.parent().unwrap().join("ran"))
        .unwrap()
        .count()
}

fn md5_hex(data: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)[..32].to_string()
}

#[test]
fn front_controller_fallback_serves_pretty_urls_with_the_original_request() {
    if !require_root() {
        return;
    }
    let (t, config) = setup(
        "index = [\"index.php\"]\nfallback = \"/index.php\"",
        "index = [\"index.php\"]",
        "10s",
    );
    let condo = Condo::start(&config);
    for addr in [condo.pass, condo.proxy()] {
        let mut c = Client::connect(addr);
        let r = c.get("a.test", "/some/pretty/url?x=1");
        let text = r.text();
        assert_eq!(r.status, 200, "{text}\n{}", condo.log_text());
        assert_eq!(field(&text, "REQUEST_URI"), "/some/pretty/url?x=1");
        assert_eq!(field(&text, "QUERY_STRING"), "x=1");
        assert_eq!(field(&text, "x"), "1");
        assert_eq!(field(&text, "SCRIPT_NAME"), "/index.php");
        assert_eq!(
            field(&text, "SCRIPT_FILENAME"),
            t.root_a.join("index.php").display().to_string()
        );
        assert_eq!(field(&text, "PATH_INFO"), "unset");
        assert_eq!(field(&text, "REQUEST_SCHEME"), "http");
        assert_eq!(field(&text, "REDIRECT_STATUS"), "200");
        // Any method, with its body.
        let body = "p=posted";
        c.send(
            format!(
                "POST /wp-json/wp/v2/posts HTTP/1.1\r\nHost: a.test\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        let r = c.read_response(false).unwrap();
        let text = r.text();
        assert_eq!(r.status, 200, "{text}");
        assert_eq!(field(&text, "REQUEST_METHOD"), "POST");
        assert_eq!(field(&text, "REQUEST_URI"), "/wp-json/wp/v2/posts");
        assert_eq!(field(&text, "post"), "posted");
        // A missing directory path and a missing .php go there too (Apache's
        // `!-f`/`!-d` rules in WordPress's .htaccess send them to index.php).
        for path in ["/feed/", "/gone.php"] {
            let r = c.get("a.test", path);
            assert_eq!(r.status, 200, "{path}");
            assert_eq!(field(&r.text(), "REQUEST_URI"), path);
        }
        // What exists is served as it is: a static file, the directory's index.
        let r = c.get("a.test", "/style.css");
        assert_eq!((r.status, r.text().as_str()), (200, "body{}\n"));
        let r = c.get("a.test", "/");
        assert_eq!(field(&r.text(), "REQUEST_URI"), "/");
        // The alias the client used is SERVER_NAME, as Apache's UseCanonicalName Off.
        let r = c.get("www.a.test", "/pretty");
        assert_eq!(field(&r.text(), "SERVER_NAME"), "www.a.test");
        // Names the site refuses stay refused, fallback or not.
        for path in ["/.env", "/wp-config.php.bak"] {
            assert_eq!(c.get("a.test", path).status, 404, "{path}");
        }
        // Without a fallback a missing path is still 404.
        let mut c = Client::connect(addr);
        assert_eq!(c.get("b.test", "/style.css").status, 200);
        for path in ["/some/pretty/url?x=1", "/gone.php"] {
            // (A script route's 404 ends the connection.)
            let r = Client::connect(addr).get("b.test", path);
            assert_eq!(r.status, 404, "{path}: {}", r.text());
        }
    }
}

/// Send a request head (and whatever `body` yields, from a thread) and read the
/// answer while the body may still be going out. Returns the response, the time from
/// the end of the head to the response, and the body bytes the thread got out.
fn send_racing(
    addr: std::net::SocketAddr,
    head: &str,
    body: impl FnOnce(&mut TcpStream) -> u64 + Send + 'static,
) -> (Response, Duration, u64) {
    let mut c = Client::connect(addr);
    c.stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    c.send(head.as_bytes());
    let started = Instant::now();
    let mut writer = c.stream.try_clone().unwrap();
    let thread = std::thread::spawn(move || body(&mut writer));
    let r = c.read_response(false).expect("a response before the close");
    let elapsed = started.elapsed();
    // The server closes after a 413; the writer then fails and stops.
    let _ = c.stream.shutdown(std::net::Shutdown::Both);
    let sent = thread.join().unwrap();
    (r, elapsed, sent)
}

#[test]
fn max_body_refuses_large_bodies_at_once_and_no_script_runs() {
    if !require_root() {
        return;
    }
    // a.test: the default max_body (64M); b.test: 2M.
    let (t, config) = setup("", "max_body = \"2M\"", "20s");
    let condo = Condo::start(&config);
    // 200 MB announced, nothing sent: 413 at once, no script started.
    let head = "POST /upload.php HTTP/1.1\r\nHost: a.test\r\nContent-Type: application/octet-stream\r\nContent-Length: 209715200\r\n\r\n";
    for addr in [condo.pass, condo.proxy()] {
        let (r, elapsed, _) = send_racing(addr, head, |_| 0);
        assert_eq!(r.status, 413, "{}", r.text());
        assert_eq!(r.header("connection"), Some("close"));
        eprintln!("413 for a 200 MB Content-Length via {addr} after {elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    }
    // The same while the client really streams it (bounded: at most 200 MB, and it
    // stops at the first failed write once condo closes).
    let (r, elapsed, sent) = send_racing(condo.pass, head, |w| {
        let chunk = vec![b'x'; 1 << 20];
        let mut sent = 0u64;
        while sent < 200 << 20 && w.write_all(&chunk).is_ok() {
            sent += chunk.len() as u64;
        }
        sent
    });
    assert_eq!(r.status, 413);
    eprintln!("413 for a streamed 200 MB upload after {elapsed:?}, {sent} bytes out");
    // A chunked body whose first chunk announces more than 64M: 413 at its size line.
    let chunked = "POST /upload.php HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    let (r, elapsed, _) = send_racing(condo.pass, chunked, |w| {
        let _ = w.write_all(b"4000001\r\n");
        0
    });
    assert_eq!(r.status, 413, "{}", r.text());
    eprintln!("413 for a 64M+1 chunk size after {elapsed:?}");
    // Crossing the limit chunk by chunk (b.test: 2M): 413 once it is crossed; the
    // client gets the answer while it still sends.
    let chunked_b = chunked.replace("a.test", "b.test");
    let (r, _, sent) = send_racing(condo.pass, &chunked_b, |w| {
        let mut sent = 0u64;
        let chunk = vec![b'y'; 256 << 10];
        while sent < 64 << 20 {
            let mut piece = format!("{:x}\r\n", chunk.len()).into_bytes();
            piece.extend_from_slice(&chunk);
            piece.extend_from_slice(b"\r\n");
            if w.write_all(&piece).is_err() {
                break;
            }
            sent += chunk.len() as u64;
        }
        sent
    });
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(sent < 64 << 20, "the whole body went out: {sent}");
    eprintln!("413 for a chunked body over 2M after {sent} payload bytes out");
    // Not one PHP process was started for any of these, nor did a script run.
    let worker = condo.wait_child("worker", Some("a"));
    assert!(children_named(worker, "php-cgi").is_empty());
    assert_eq!(markers(&t.root_a), 0);
    assert_eq!(markers(&t.root_b), 0);
    assert!(t.error_log("a.test").contains("max_body"));

    // Under the limit, both framings work; a chunked body past the in-memory part
    // (1 MiB) is spooled and arrives whole.
    let body: Vec<u8> = (0..(1536 << 10)).map(|i| (i % 251) as u8).collect();
    let want = format!("{} {}", body.len(), md5_hex(&body));
    for host in ["a.test", "b.test"] {
        let mut c = Client::connect(condo.pass);
        c.send(
            format!(
                "POST /upload.php HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        c.send(&body);
        let r = c.read_response(false).unwrap();
        assert_eq!((r.status, r.text()), (200, want.clone()), "{host}");
        c.send(
            format!(
                "POST /upload.php HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            .as_bytes(),
        );
        for piece in body.chunks(100_000) {
            c.send(format!("{:x}\r\n", piece.len()).as_bytes());
            c.send(piece);
            c.send(b"\r\n");
        }
        c.send(b"0\r\n\r\n");
        let r = c.read_response(false).unwrap();
        assert_eq!((r.status, r.text()), (200, want.clone()), "{host} chunked");
    }
}

#[test]
fn error_pages_are_served_from_a_file_or_a_php_script_keeping_the_status() {
    if !require_root() {
        return;
    }
    let (t, config) = setup(
        "no_scripts = [\"/uploads/\"]\n\
         error_pages = { 404 = \"/errors/404.html\", 403 = \"/errors/page.php\", 504 = \"/errors/page.php\" }",
        "error_pages = { 404 = \"/errors/missing.php\" }",
        "3s",
    );
    let errors = t.root_a.join("errors");
    std::fs::create_dir_all(&errors).unwrap();
    chown(&errors, &t.a, 0o755);
    write_owned(&errors.join("404.html"), b"<h1>our 404</h1>\n", &t.a, 0o644);
    write_owned(&errors.join("page.php"), REPORT.as_bytes(), &t.a, 0o644);
    write_owned(
        &t.root_a.join("sleep.php"),
        b"<?php sleep(30);",
        &t.a,
        0o644,
    );
    let uploads = t.root_a.join("uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    chown(&uploads, &t.a, 0o755);
    write_owned(
        &uploads.join("probe.php"),
        b"<?php echo 'RAN';",
        &t.a,
        0o644,
    );
    let condo = Condo::start(&config);
    let mut c = Client::connect(condo.pass);
    // A static page for a static 404, with the 404 kept, and on keep-alive.
    let r = c.get("a.test", "/nothing/here.html?q=1");
    assert_eq!((r.status, r.text().as_str()), (404, "<h1>our 404</h1>\n"));
    assert!(r.header("etag").is_none());
    c.send(b"HEAD /nothing HTTP/1.1\r\nHost: a.test\r\n\r\n");
    let r = c.read_response(true).unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-length"), Some("17"));
    // A script route's own 404 (no such script) gets the page too.
    let r = Client::connect(condo.pass).get("a.test", "/missing.php");
    assert_eq!((r.status, r.text().as_str()), (404, "<h1>our 404</h1>\n"));
    // A PHP page with Apache's REDIRECT_* variables, for a 403 (a script where none
    // may run) and for a 504 (a script past its timeout).
    let mut c = Client::connect(condo.pass);
    let r = c.get("a.test", "/uploads/probe.php?y=2");
    let text = r.text();
    assert_eq!(r.status, 403, "{text}\n{}", condo.log_text());
    assert_eq!(field(&text, "REDIRECT_STATUS"), "403");
    assert_eq!(field(&text, "REDIRECT_URL"), "/uploads/probe.php");
    assert_eq!(field(&text, "REDIRECT_QUERY_STRING"), "y=2");
    assert_eq!(field(&text, "REQUEST_URI"), "/uploads/probe.php?y=2");
    assert_eq!(field(&text, "SCRIPT_NAME"), "/errors/page.php");
    assert_eq!(field(&text, "REQUEST_METHOD"), "GET");
    assert!(!text.contains("RAN"));
    let mut c = Client::connect(condo.pass);
    let started = Instant::now();
    c.send(b"POST /sleep.php HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\np=1");
    let r = c.read_response(false).unwrap();
    let text = r.text();
    assert_eq!(r.status, 504, "{text}");
    assert_eq!(field(&text, "REDIRECT_STATUS"), "504");
    assert_eq!(field(&text, "REQUEST_METHOD"), "GET");
    eprintln!("504 page after {:?}", started.elapsed());
    // The same over h2 (h2c here): a static error straight from the h2 path, the
    // script page through the HTTP/1 pipeline its stream is bridged to.
    for (path, body, end) in [
        ("/nothing/here.html", "<h1>our 404</h1>", "\n2 404"),
        ("/uploads/probe.php", "REDIRECT_STATUS=403", "\n2 403"),
    ] {
        let (out, ok) = curl(&[
            "--http2-prior-knowledge",
            "-H",
            "Host: a.test",
            "-w",
            "\n%{http_version} %{http_code}",
            &format!("http://{}{path}", condo.pass),
        ]);
        assert!(
            ok && out.contains(body) && out.ends_with(end),
            "{path}: {out}"
        );
    }
    // An error page that fails itself gives condo's plain page, with the status of
    // the first error (no loop).
    let mut c = Client::connect(condo.pass);
    let r = c.get("b.test", "/nothing");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("404 Not Found") && r.text().contains("condo"));
    // Without an error page for the status, the plain page as before.
    let r = Client::connect(condo.pass).get("b.test", "/.htaccess");
    assert_eq!(r.status, 404);
}

#[test]
fn no_scripts_keeps_an_uploaded_php_file_from_running_or_being_read() {
    if !require_root() {
        return;
    }
    let (t, config) = setup(
        "index = [\"index.php\", \"index.html\"]\nfallback = \"/index.php\"\n\
         no_scripts = [\"/uploads/\", \"/wp-content/uploads/\"]",
        "",
        "10s",
    );
    let condo = Condo::start(&config);
    // The tenant's app takes an upload and stores it where uploads go, as it was sent.
    let uploads = t.root_a.join("wp-content/uploads/2026");
    std::fs::create_dir_all(&uploads).unwrap();
    for dir in [
        t.root_a.join("wp-content"),
        t.root_a.join("wp-content/uploads"),
        uploads.clone(),
    ] {
        chown(&dir, &t.a, 0o755);
    }
    let plain = t.root_a.join("uploads");
    std::fs::create_dir_all(&plain).unwrap();
    chown(&plain, &t.a, 0o755);
    let probe = b"<?php file_put_contents(__DIR__ . '/../ran/probe', 'x'); echo 'EXECUTED';";
    for dir in [&uploads, &plain] {
        write_owned(&dir.join("probe.php"), probe, &t.a, 0o644);
        write_owned(&dir.join("index.php"), probe, &t.a, 0o644);
        write_owned(&dir.join("photo.txt"), b"a photo\n", &t.a, 0o644);
    }
    for addr in [condo.pass, condo.proxy()] {
        let mut c = Client::connect(addr);
        for path in [
            "/uploads/probe.php",
            "/uploads/probe.php/x.jpg",
            "/uploads/",
            "/uploads/not-there.php",
            "/wp-content/uploads/2026/probe.php",
            "/wp-content/uploads/2026/probe.php?x=1",
            "/wp-content/uploads/2026/",
            "/wp-content/uploads/%32026/probe.php",
        ] {
            let r = c.get("a.test", path);
            let text = r.text();
            assert_eq!(r.status, 403, "{path}: {text}");
            assert!(
                !text.contains("EXECUTED") && !text.contains("<?php"),
                "{path}: {text}"
            );
        }
        // The other files there are served; scripts elsewhere still run.
        let r = c.get("a.test", "/wp-content/uploads/2026/photo.txt");
        assert_eq!((r.status, r.text().as_str()), (200, "a photo\n"));
        let r = c.get("a.test", "/upload.php");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        markers(&t.root_a),
        2,
        "only /upload.php ran, once per listener"
    );
    assert!(!t.root_a.parent().unwrap().join("ran/probe").exists());
}

/// The new keys are checked like every other, each mistake at its file and line.
#[test]
fn pipeline_keys_are_checked_with_their_place() {
    let dir = scratch();
    let sites = dir.path().join("sites");
    std::fs::create_dir(&sites).unwrap();
    std::fs::write(
        dir.path().join("condo.toml"),
        "[server]\nlisten = [\"127.0.0.1:0\"]\nuser = \"daemon\"\nuid_range = [100, 65534]\n\n\
         [tenant.a]\nuser = \"nobody\"\n",
    )
    .unwrap();
    let cases = [
        ("fallback = \"/.env.php\"", "site.0.fallback", "hidden"),
        (
            "fallback = \"index.php\"",
            "site.0.fallback",
            "below the site root",
        ),
        (
            "fallback = \"/a/../../x.php\"",
            "site.0.fallback",
            "below the site root",
        ),
        ("max_body = \"0\"", "site.0.max_body", "unlimited"),
        ("max_body = \"lots\"", "site.0.max_body", "not a size"),
        ("max_body = \"17G\"", "site.0.max_body", "not a size"),
        (
            "error_pages = { 200 = \"/ok.html\" }",
            "site.0.error_pages.200",
            "not an error status",
        ),
        (
            "error_pages = { 404 = \"/errors/\" }",
            "site.0.error_pages.404",
            "below the site root",
        ),
        (
            "no_scripts = [\"uploads\"]",
            "site.0.no_scripts.0",
            "ending in /",
        ),
        (
            "fallback = \"/app/index.php\"\nno_scripts = [\"/app/\"]\n\
             [[site.route]]\nsuffix = \".php\"\nhandler = \"cgi\"",
            "site.0.fallback",
            "where none may run",
        ),
    ];
    for (i, (line, _, _)) in cases.iter().enumerate() {
        std::fs::write(
            sites.join(format!("s{i}.toml")),
            format!("[[site]]\nname = \"s{i}.test\"\ntenant = \"a\"\nroot = \"/tmp\"\n{line}\n"),
        )
        .unwrap();
    }
    let out = Command::new(CONDO)
        .args(["check", "-c"])
        .arg(dir.path().join("condo.toml"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    for (i, (_, key, words)) in cases.iter().enumerate() {
        assert!(
            text.lines().any(|l| l.contains(&format!("s{i}.toml:5:"))
                && l.contains(key)
                && l.contains(words)),
            "case {i} ({key}): {text}"
        );
    }
    // A good set of keys is no mistake (the account checks may still fail here).
    for i in 0..cases.len() {
        std::fs::remove_file(sites.join(format!("s{i}.toml"))).unwrap();
    }
    std::fs::write(
        sites.join("ok.toml"),
        "[[site]]\nname = \"ok.test\"\ntenant = \"a\"\nroot = \"/tmp\"\nfallback = \"/index.php\"\n\
         max_body = \"16G\"\nerror_pages = { 404 = \"/e/404.html\", 500 = \"/e/500.php\" }\n\
         no_scripts = [\"/uploads/\"]\n",
    )
    .unwrap();
    let out = Command::new(CONDO)
        .args(["check", "-c"])
        .arg(dir.path().join("condo.toml"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
}

/// The CGI variables of the same requests on Apache 2.4.71 (Debian, mod_cgid,
/// `UseCanonicalName Off`, an `env | sort` script), recorded side by side with condo
/// on this machine: `{root}` is the document root, the host is renamed `a.test`.
/// Names condo leaves out on purpose: `SERVER_ADMIN` (condo has no admin address per
/// site), `SERVER_SIGNATURE` (a footer for Apache's own pages); values that differ on
/// purpose: `SERVER_SOFTWARE`, `PATH` (Apache passes its own), and condo's
/// `REDIRECT_STATUS=200`, which php-cgi needs.
const APACHE: [(&str, &[(&str, &str)]); 3] = [
    (
        "POST /cgi/env.cgi/extra/x%20y?a=1&b=%2F HTTP/1.1\r\nHost: a.test\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\np=1",
        &[
            ("CONTENT_LENGTH", "3"),
            ("CONTENT_TYPE", "application/x-www-form-urlencoded"),
            ("CONTEXT_DOCUMENT_ROOT", "{root}"),
            ("CONTEXT_PREFIX", ""),
            ("DOCUMENT_ROOT", "{root}"),
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("HTTP_HOST", "a.test"),
            ("PATH_INFO", "/extra/x y"),
            ("PATH_TRANSLATED", "{root}/extra/x y"),
            ("QUERY_STRING", "a=1&b=%2F"),
            ("REMOTE_ADDR", "127.0.0.1"),
            ("REQUEST_METHOD", "POST"),
            ("REQUEST_SCHEME", "http"),
            ("REQUEST_URI", "/cgi/env.cgi/extra/x%20y?a=1&b=%2F"),
            ("SCRIPT_FILENAME", "{root}/cgi/env.cgi"),
            ("SCRIPT_NAME", "/cgi/env.cgi"),
            ("SERVER_ADDR", "127.0.0.1"),
            ("SERVER_NAME", "a.test"),
            ("SERVER_PORT", "80"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
        ],
    ),
    (
        "GET /cgi/env.cgi/a%20b/c%3Fd/%C3%A9?q=%20x&r HTTP/1.1\r\nHost: a.test:8099\r\n\r\n",
        &[
            ("PATH_INFO", "/a b/c?d/é"),
            ("PATH_TRANSLATED", "{root}/a b/c?d/é"),
            ("QUERY_STRING", "q=%20x&r"),
            ("REQUEST_URI", "/cgi/env.cgi/a%20b/c%3Fd/%C3%A9?q=%20x&r"),
            ("SCRIPT_NAME", "/cgi/env.cgi"),
            ("SERVER_NAME", "a.test"),
            ("SERVER_PORT", "8099"),
            ("REQUEST_METHOD", "GET"),
        ],
    ),
    (
        "GET /cgi//env.cgi/x HTTP/1.1\r\nHost: www.a.test\r\n\r\n",
        &[
            ("PATH_INFO", "/x"),
            ("REQUEST_URI", "/cgi//env.cgi/x"),
            ("SCRIPT_NAME", "/cgi/env.cgi"),
            ("SERVER_NAME", "www.a.test"),
            ("QUERY_STRING", ""),
        ],
    ),
];

#[test]
fn cgi_variables_are_apaches() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    t.script(
        "a",
        "cgi/env.cgi",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nenv | sort\n",
    );
    t.append_site("a", "[[site.route]]\npath = \"/cgi/\"\nhandler = \"cgi\"\n");
    let condo = Condo::start(&config);
    let root = t.root_a.display().to_string();
    for (request, expected) in APACHE {
        let mut c = Client::connect(condo.pass);
        c.send(request.as_bytes());
        let r = c.read_response(false).unwrap();
        let text = r.text();
        assert_eq!(r.status, 200, "{request}: {text}");
        for (name, value) in expected {
            let value = value.replace("{root}", &root);
            assert_eq!(field(&text, name), value, "{name} for {request}");
        }
        // Every name Apache sets for these requests, but the two left out on purpose.
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(n, _)| n)
            .collect();
        for name in [
            "CONTEXT_DOCUMENT_ROOT",
            "CONTEXT_PREFIX",
            "DOCUMENT_ROOT",
            "GATEWAY_INTERFACE",
            "HTTP_HOST",
            "PATH",
            "QUERY_STRING",
            "REMOTE_ADDR",
            "REMOTE_PORT",
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
        ] {
            assert!(
                names.contains(&name),
                "{name} missing for {request}: {text}"
            );
        }
    }
}

/// A tenant's HTTP app that counts a POST body, chunked or with a length.
const COUNTING_APP: &str = r#"
import http.server, os, socket, socketserver

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        total = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                total += len(self.rfile.read(size))
                self.rfile.readline()
        else:
            total = len(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        data = str(total).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

server = Server("unused", Handler, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=3)
server.serve_forever()
"#;

#[test]
fn max_body_binds_the_app_proxy_too() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    let appdir = t.root_a.parent().unwrap().join("app");
    write_owned(&appdir.join("app.py"), COUNTING_APP.as_bytes(), &t.a, 0o644);
    chown(&appdir, &t.a, 0o755);
    t.append_site(
        "a",
        &format!(
            "max_body = \"1M\"\n[[site.route]]\npath = \"/app/\"\nhandler = \"app\"\n\
             workdir = \"{}\"\ncommand = [\"python3\", \"app.py\"]\ntimeout = \"20s\"\n",
            appdir.display()
        ),
    );
    let condo = Condo::start(&config);
    // Under the limit, both framings reach the app whole.
    let mut c = Client::connect(condo.pass);
    let body = vec![b'z'; 1 << 20];
    c.send(b"POST /app/up HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1048576\r\n\r\n");
    c.send(&body);
    let r = c.read_response(false).unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "1048576"),
        "{}",
        condo.log_text()
    );
    c.send(b"POST /app/up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n");
    for piece in body.chunks(300_000) {
        c.send(format!("{:x}\r\n", piece.len()).as_bytes());
        c.send(piece);
        c.send(b"\r\n");
    }
    c.send(b"0\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "1048576"));
    // One byte over: 413, at once for a length, at the crossing chunk for chunked.
    let head = "POST /app/up HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1048577\r\n\r\n";
    let (r, _, _) = send_racing(condo.pass, head, |_| 0);
    assert_eq!(r.status, 413);
    let head = "POST /app/up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    let (r, _, _) = send_racing(condo.pass, head, |w| {
        let mut piece = b"100000\r\n".to_vec();
        piece.extend_from_slice(&[b'z'; 1 << 20]);
        piece.extend_from_slice(b"\r\n1\r\n");
        let _ = w.write_all(&piece);
        0
    });
    assert_eq!(r.status, 413, "{}", r.text());
}

/// A chunked body past the 1 MiB kept in memory is spooled to an unnamed file, which
/// is the CGI script's stdin itself; under isolation "cage" too (a private /tmp).
#[test]
fn a_spooled_chunked_body_reaches_a_cgi_script_whole() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config_tenants("", "", "isolation = \"cage\"");
    for name in ["a", "b"] {
        t.script(
            name,
            "cgi/count.cgi",
            "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nmd5sum | cut -c1-32\n",
        );
        t.append_site(
            name,
            "max_body = \"3M\"\n[[site.route]]\npath = \"/cgi/\"\nhandler = \"cgi\"\n",
        );
    }
    let condo = Condo::start(&config);
    let body: Vec<u8> = (0..(2600 << 10)).map(|i| (i % 253) as u8).collect();
    let want = md5_hex(&body);
    for host in ["a.test", "b.test"] {
        let mut c = Client::connect(condo.pass);
        c.send(
            format!(
                "POST /cgi/count.cgi HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            .as_bytes(),
        );
        for piece in body.chunks(70_000) {
            c.send(format!("{:x}\r\n", piece.len()).as_bytes());
            c.send(piece);
            c.send(b"\r\n");
        }
        c.send(b"0\r\n\r\n");
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 200, "{host}: {}\n{}", r.text(), condo.log_text());
        assert_eq!(r.text().trim(), want, "{host}");
        // And on the same connection, the next request is served.
        assert_eq!(c.get(host, "/index.html").status, 200);
    }
}
