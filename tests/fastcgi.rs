//! `handler = "fastcgi"`: real php-cgi, run and pooled by each tenant's worker as the
//! tenant, or reached through a socket the tenant runs — never another tenant's.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const HELLO: &str = r#"<?php echo "hello ", posix_getpwuid(posix_geteuid())["name"];"#;
const SESSION: &str =
    "<?php session_start(); $_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1; echo $_SESSION['n'];";
const POST: &str =
    "<?php echo 'x=', $_POST['x'] ?? 'unset', ' path_info=', $_SERVER['PATH_INFO'] ?? 'unset';";
const SLEEP: &str = "<?php sleep(30); echo 'late';";

/// Two tenants whose sites have the PHP scripts above and `route` (a TOML route table
/// for the tenant's name and home) appended to their site file.
fn setup(route: impl Fn(&str, &Path) -> String) -> (TwoTenants, PathBuf) {
    let t = TwoTenants::new();
    let config = t.config("");
    for (name, root, user) in [("a", &t.root_a, &t.a), ("b", &t.root_b, &t.b)] {
        let home = root.parent().unwrap().to_path_buf();
        for (file, body) in [
            ("hello.php", HELLO),
            ("session.php", SESSION),
            ("post.php", POST),
            ("sleep.php", SLEEP),
        ] {
            write_owned(&root.join(file), body.as_bytes(), user, 0o644);
        }
        let sessions = home.join("sessions");
        std::fs::create_dir_all(&sessions).unwrap();
        chown(&sessions, user, 0o700);
        let mut site = std::fs::OpenOptions::new()
            .append(true)
            .open(t.dir.path().join(format!("sites/{name}.toml")))
            .unwrap();
        writeln!(site, "{}", route(name, &home)).unwrap();
    }
    (t, config)
}

fn pooled_route(_name: &str, home: &Path) -> String {
    format!(
        "[[site.route]]\nsuffix = \".php\"\nhandler = \"fastcgi\"\n\
         command = [\"php-cgi\", \"-d\", \"session.save_path={}\"]\n\
         processes_max = 2\nidle_timeout = \"2s\"\ntimeout = \"3s\"\n",
        home.join("sessions").display()
    )
}

#[test]
fn php_runs_as_each_tenant_on_both_handovers() {
    if !require_root() {
        return;
    }
    let (t, config) = setup(pooled_route);
    let condo = Condo::start(&config);
    for addr in [condo.pass, condo.proxy()] {
        for (host, user) in [("a.test", &t.a), ("b.test", &t.b)] {
            let mut c = Client::connect(addr);
            let r = c.get(host, "/hello.php");
            assert_eq!(r.status, 200, "{}\n{}", r.text(), condo.log_text());
            assert_eq!(r.text(), format!("hello {}", user.name));
            // Keep-alive works after a FastCGI response, and static files still do.
            assert_eq!(
                c.get(host, "/hello.php").text(),
                format!("hello {}", user.name)
            );
            assert_eq!(c.get(host, "/index.html").status, 200);
        }
    }
    // The app processes are the worker's children, run as the tenant.
    let worker = condo.wait_child("worker", Some("a"));
    let php = children_named(worker, "php-cgi");
    assert!(!php.is_empty() && php.len() <= 2, "{php:?}");
    for pid in php {
        let uid = status_field(&proc_status(pid), "Uid");
        assert_eq!(
            uid.split_whitespace().next(),
            Some(t.a.uid.to_string().as_str())
        );
    }
    // A file without the suffix is never given to the app; a missing script is 404.
    for path in ["/missing.php", "/index.html/x.php"] {
        let mut c = Client::connect(condo.pass);
        assert_eq!(c.get("a.test", path).status, 404, "{path}");
    }
}

#[test]
fn sessions_and_post_bodies() {
    if !require_root() {
        return;
    }
    let (_t, config) = setup(pooled_route);
    let condo = Condo::start(&config);
    let mut c = Client::connect(condo.pass);
    let r = c.get("a.test", "/session.php");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "1"),
        "{}",
        condo.log_text()
    );
    let cookie = r
        .header("set-cookie")
        .expect("a session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    c.send(
        format!("GET /session.php HTTP/1.1\r\nHost: a.test\r\nCookie: {cookie}\r\n\r\n").as_bytes(),
    );
    assert_eq!(c.read_response(false).unwrap().text(), "2");

    for addr in [condo.pass, condo.proxy()] {
        let mut c = Client::connect(addr);
        let body = "x=posted%21";
        c.send(format!(
            "POST /post.php/more/info HTTP/1.1\r\nHost: b.test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ).as_bytes());
        let r = c.read_response(false).unwrap();
        assert_eq!(r.text(), "x=posted! path_info=/more/info");
        // Chunked bodies too, on the same connection.
        c.send(b"POST /post.php HTTP/1.1\r\nHost: b.test\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nx=a\r\n2\r\nbc\r\n0\r\n\r\n");
        assert_eq!(
            c.read_response(false).unwrap().text(),
            "x=abc path_info=unset"
        );
    }
}

#[test]
fn a_killed_app_process_is_replaced_and_idle_ones_stop() {
    if !require_root() {
        return;
    }
    let (_t, config) = setup(pooled_route);
    let condo = Condo::start(&config);
    let mut c = Client::connect(condo.pass);
    assert_eq!(c.get("a.test", "/hello.php").status, 200);
    let worker = condo.wait_child("worker", Some("a"));
    let php = children_named(worker, "php-cgi");
    assert_eq!(php.len(), 1, "{php:?}");
    let pid = rustix::process::Pid::from_raw(php[0] as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let r = c.get("a.test", "/hello.php");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), condo.log_text());
    let now = children_named(worker, "php-cgi");
    assert!(!now.is_empty() && !now.contains(&php[0]), "{now:?}");
    // idle_timeout = 2s: with no requests, the pool scales to zero.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !children_named(worker, "php-cgi").is_empty() {
        assert!(
            Instant::now() < deadline,
            "idle php-cgi processes were not stopped"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // And the next request starts one again.
    assert_eq!(c.get("a.test", "/hello.php").status, 200);
}

#[test]
fn a_hanging_script_gets_504_and_its_process_is_killed() {
    if !require_root() {
        return;
    }
    let (t, config) = setup(pooled_route);
    let condo = Condo::start(&config);
    let started = Instant::now();
    let mut c = Client::connect(condo.pass);
    assert_eq!(c.get("a.test", "/sleep.php").status, 504);
    assert!(started.elapsed() < Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let worker = condo.wait_child("worker", Some("a"));
    assert!(children_named(worker, "php-cgi").is_empty());
    let mut c = Client::connect(condo.pass);
    assert_eq!(
        c.get("a.test", "/hello.php").text(),
        format!("hello {}", t.a.name)
    );
    assert!(t.error_log("a.test").contains("route timeout"));
}

/// `php-cgi -b SOCKET` run as `user`, stopped (by pid) on drop.
struct OwnApp(Child);

impl OwnApp {
    fn start(user: &TestUser, socket: &Path) -> Self {
        let child = Command::new("setpriv")
            .arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .arg("--clear-groups")
            .args(["php-cgi", "-b"])
            .arg(socket)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("PHP_FCGI_CHILDREN", "0")
            .stdin(Stdio::null())
            .spawn()
            .expect("setpriv php-cgi -b");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "php-cgi -b did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }
}

impl Drop for OwnApp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_socket_is_used_only_when_its_app_runs_as_the_tenant() {
    if !require_root() {
        return;
    }
    // Both sites point at B's socket: right for B, another tenant's pool for A.
    let socket_holder = std::sync::OnceLock::<PathBuf>::new();
    let (t, config) = setup(|_name, home| {
        let sock = socket_holder
            .get_or_init(|| home.parent().unwrap().join("shared-run/php.sock"))
            .clone();
        format!(
            "[[site.route]]\nsuffix = \".php\"\nhandler = \"fastcgi\"\nsocket = \"{}\"\ntimeout = \"3s\"\n",
            sock.display()
        )
    });
    let socket = socket_holder.get().unwrap().clone();
    // A directory everyone may enter, so only the peer check stands between A and B's app.
    let run = socket.parent().unwrap();
    std::fs::create_dir_all(run).unwrap();
    chown(run, &t.b, 0o755);
    let _app = OwnApp::start(&t.b, &socket);
    let _ = std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o777));
    let condo = Condo::start(&config);
    let mut c = Client::connect(condo.pass);
    let r = c.get("b.test", "/hello.php");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), condo.log_text());
    assert_eq!(r.text(), format!("hello {}", t.b.name));
    let mut c = Client::connect(condo.pass);
    let r = c.get("a.test", "/hello.php");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(!r.text().contains("hello"));
    let log = t.error_log("a.test");
    assert!(log.contains("not as this tenant"), "{log}");
}

#[test]
fn another_tenants_code_cannot_reach_a_php_pool_socket() {
    if !require_root() {
        return;
    }
    let (t, config) = setup(pooled_route);
    let condo = Condo::start(&config);
    let mut c = Client::connect(condo.pass);
    assert_eq!(c.get("a.test", "/hello.php").status, 200);
    // A's pool sockets live in directories named after A's uid and worker pid.
    let worker = condo.wait_child("worker", Some("a"));
    let prefix = format!("condo-fcgi-{}-{worker}-", t.a.uid);
    let dir = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .expect("A's FastCGI socket directory")
        .path();
    let socket = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .next()
        .expect("a socket")
        .path();
    assert_eq!(
        unix_connect_as(&t.b, &socket),
        "PermissionError 13",
        "B reached A's php-cgi at {}",
        socket.display()
    );
    // A itself can: the refusal is the directory's mode, not a dead socket.
    assert_eq!(unix_connect_as(&t.a, &socket), "connected");
}

#[test]
fn killing_php_under_load_fails_only_the_requests_in_flight() {
    if !require_root() {
        return;
    }
    let (_t, config) = setup(pooled_route);
    let condo = Condo::start(&config);
    let addr = condo.pass;
    let mut warm = Client::connect(addr);
    assert_eq!(warm.get("a.test", "/hello.php").status, 200);
    let worker = condo.wait_child("worker", Some("a"));
    // Four clients loop for about three seconds (bounded by time and count); halfway,
    // every php-cgi of tenant A is killed.
    let stop_at = Instant::now() + Duration::from_secs(3);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut failures = 0u32;
                let mut last_ok = false;
                let mut client = Client::connect(addr);
                for _ in 0..20_000 {
                    if Instant::now() >= stop_at {
                        break;
                    }
                    client.send(b"GET /hello.php HTTP/1.1\r\nHost: a.test\r\n\r\n");
                    match client.read_response(false) {
                        Some(r) if r.status == 200 && r.header("connection") != Some("close") => {
                            last_ok = true
                        }
                        _ => {
                            failures += 1;
                            last_ok = false;
                            client = Client::connect(addr);
                        }
                    }
                }
                (failures, last_ok)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let killed = children_named(worker, "php-cgi");
    assert!(!killed.is_empty());
    for pid in &killed {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(*pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
    let results: Vec<(u32, bool)> = clients.into_iter().map(|h| h.join().unwrap()).collect();
    let failures: u32 = results.iter().map(|r| r.0).sum();
    eprintln!(
        "killed {} php-cgi processes under load: {failures} requests failed",
        killed.len()
    );
    // processes_max = 2: at most two requests were inside php-cgi when it died.
    assert!(
        failures <= killed.len() as u32,
        "{failures} failures for {} killed processes: {results:?}",
        killed.len()
    );
    assert!(
        results.iter().all(|r| r.1),
        "a client's last request failed: {results:?}"
    );
    let mut c = Client::connect(addr);
    assert_eq!(c.get("b.test", "/hello.php").status, 200);
}
