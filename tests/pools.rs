//! Tenant pools: scale to zero and back, recycling after worker_max_requests and above
//! worker_memory_max without losing a connection, workers_min, per-site max_clients
//! with its queue, request_timeout, and several dispatchers.

mod common;

use std::time::{Duration, Instant};

use common::*;

const SLEEP_CGI: &str =
    "#!/bin/sh\nsleep \"${QUERY_STRING:-3}\"\nprintf 'Content-Type: text/plain\\n\\nslept\\n'\n";

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Wait (bounded) until `cond` holds; false if it never did.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

#[test]
fn idle_tenant_scales_to_zero_and_back() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config_tenants("", "idle_timeout = \"1s\"", "");
    let condo = Condo::start(&config);
    let (body, ok) = curl(&["-H", "Host: a.test", &format!("http://{}/", condo.pass)]);
    assert!(ok && body == "site A\n", "{body}");
    let first = condo.wait_child("worker", Some("a"));
    // Tenant b keeps no process it never needed.
    assert!(condo.children("worker", Some("b")).is_empty());
    assert!(
        eventually(Duration::from_secs(5), || condo
            .children("worker", Some("a"))
            .is_empty()),
        "worker of a still running after its idle_timeout; log:\n{}",
        condo.log_text()
    );
    // The master logs the exit after it has removed the tenant's cgroup and saved the
    // usage ledger: moments after the process is gone.
    assert!(
        eventually(Duration::from_secs(5), || condo
            .log_text()
            .contains("worker left")),
        "{}",
        condo.log_text()
    );
    let log = condo.log_text();
    assert!(log.contains("idle_timeout"), "{log}");
    // The next request brings it back, on both hand-over paths.
    for addr in [condo.pass, condo.proxy()] {
        let (body, ok) = curl(&["-H", "Host: a.test", &format!("http://{addr}/")]);
        assert!(ok && body == "site A\n", "{addr}: {body}");
    }
    let second = condo.wait_child("worker", Some("a"));
    assert_ne!(first, second);
    // A worker that left on purpose is no crash: no backoff, no warning.
    assert_eq!(count(&condo.log_text(), "worker exited"), 0);
}

#[test]
fn worker_max_requests_recycles_without_dropping_a_keepalive_connection() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config_tenants("", "worker_max_requests = 5", "");
    let condo = Condo::start(&config);
    // One connection, 23 requests: the worker is replaced four times under it.
    let mut client = Client::connect(condo.pass);
    for i in 0..23 {
        let response = client.get("a.test", "/");
        assert_eq!(response.status, 200, "request {i}");
        assert_eq!(response.text(), "site A\n");
        // Give the replaced worker a moment to ask, so the hand-back path is taken.
        if i % 5 == 4 {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let log = condo.log_text();
    assert!(
        count(&log, "served 5 requests (worker_max_requests)") >= 3,
        "expected several recycles; log:\n{log}"
    );
    assert!(
        eventually(Duration::from_secs(5), || count(
            &condo.log_text(),
            "worker left"
        ) >= 3),
        "{}",
        condo.log_text()
    );
    // Many new connections through the proxy path: every one answered.
    for i in 0..30 {
        let (body, ok) = curl(&["-H", "Host: a.test", &format!("http://{}/", condo.proxy())]);
        assert!(ok && body == "site A\n", "proxy request {i}: {body}");
    }
    assert_eq!(count(&condo.log_text(), "worker exited"), 0);
}

#[test]
fn worker_above_memory_max_is_replaced() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    // Any worker is bigger than 1 MiB: it asks to be replaced at its first check.
    let config = t.config_tenants("", "worker_memory_max = \"1M\"", "");
    let condo = Condo::start(&config);
    let (body, ok) = curl(&["-H", "Host: a.test", &format!("http://{}/", condo.pass)]);
    assert!(ok && body == "site A\n", "{body}");
    assert!(
        eventually(Duration::from_secs(5), || condo
            .log_text()
            .contains("above worker_memory_max")),
        "{}",
        condo.log_text()
    );
    let (body, ok) = curl(&["-H", "Host: a.test", &format!("http://{}/", condo.pass)]);
    assert!(ok && body == "site A\n", "{body}");
}

#[test]
fn workers_min_keeps_a_warm_worker() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config_tenants("", "workers_min = 1\nidle_timeout = \"1s\"", "");
    let condo = Condo::start(&config);
    // Started with condo, before any request.
    let pid = condo.wait_child("worker", Some("a"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(condo.children("worker", Some("a")), vec![pid]);
    let (body, ok) = curl(&["-H", "Host: a.test", &format!("http://{}/", condo.pass)]);
    assert!(ok && body == "site A\n", "{body}");
    assert_eq!(condo.children("worker", Some("a")), vec![pid]);
}

#[test]
fn max_clients_caps_one_site_and_spares_the_others() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    t.script("a", "cgi-bin/sleep.sh", SLEEP_CGI);
    t.append_site(
        "a",
        "max_clients = 2\nqueue_max = 1\nqueue_timeout = \"1s\"\n\n[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"\ntimeout = \"20s\"",
    );
    let condo = Condo::start(&config);
    let url = format!("http://{}/cgi-bin/sleep.sh?4", condo.pass);
    // Two requests fill the cap (their scripts sleep 4 s).
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || curl(&["-H", "Host: a.test", &url]))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    // A third waits in the queue for 1 s and gets 503; a fourth finds the queue full
    // and gets 503 at once. Both carry Retry-After.
    let queued = {
        let url = url.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let out = curl(&["-i", "-H", "Host: a.test", &url]);
            (out, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let (full, _) = curl(&["-i", "-H", "Host: a.test", &url]);
    let full_took = started.elapsed();
    assert!(full.starts_with("HTTP/1.1 503"), "{full}");
    assert!(full.contains("Retry-After: 1"), "{full}");
    assert!(full_took < Duration::from_millis(800), "{full_took:?}");
    // Meanwhile the other tenant's site answers at once (max_clients counts the
    // script and app requests of its own site only).
    let started = Instant::now();
    let (body, ok) = curl(&["-H", "Host: b.test", &format!("http://{}/", condo.pass)]);
    assert!(ok && body == "site B\n", "{body}");
    assert!(started.elapsed() < Duration::from_secs(1));
    let ((queued, _), waited) = queued.join().unwrap();
    assert!(queued.starts_with("HTTP/1.1 503"), "{queued}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    for handle in busy {
        let (body, ok) = handle.join().unwrap();
        assert!(ok && body == "slept\n", "{body}");
    }
    // With the slots free again, a queued request is served after waiting its turn.
    let (body, ok) = curl(&["-H", "Host: a.test", &format!("http://{}/", condo.pass)]);
    assert!(ok && body == "site A\n", "{body}");
    let log = condo.log_text();
    assert_eq!(count(&log, "503: max_clients reached"), 2, "{log}");
    let access = std::fs::read_to_string(t.dir.path().join("log/a.test.access.log")).unwrap();
    assert_eq!(count(&access, "\" 503 "), 2, "{access}");
}

#[test]
fn queued_request_is_served_when_a_slot_frees() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    t.script("a", "cgi-bin/sleep.sh", SLEEP_CGI);
    t.append_site(
        "a",
        "max_clients = 1\nqueue_max = 4\nqueue_timeout = \"10s\"\n\n[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"",
    );
    let condo = Condo::start(&config);
    let url = format!("http://{}/cgi-bin/sleep.sh?1", condo.pass);
    let started = Instant::now();
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || curl(&["-H", "Host: a.test", &url]))
        })
        .collect();
    for h in handles {
        let (body, ok) = h.join().unwrap();
        assert!(ok && body == "slept\n", "{body}");
    }
    // One at a time: three 1 s scripts take about 3 s, not 1 s.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(2800), "{took:?}");
}

#[test]
fn request_timeout_from_the_tenant_gives_504_and_kills_the_script() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config_tenants("", "request_timeout = \"1s\"", "");
    t.script("a", "cgi-bin/sleep.sh", SLEEP_CGI);
    // No `timeout` on the route: the tenant's request_timeout applies.
    t.append_site(
        "a",
        "[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"",
    );
    let condo = Condo::start(&config);
    let started = Instant::now();
    let (head, _) = curl(&[
        "-i",
        "-H",
        "Host: a.test",
        &format!("http://{}/cgi-bin/sleep.sh?30", condo.pass),
    ]);
    let took = started.elapsed();
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let worker = condo.wait_child("worker", Some("a"));
    // The script (and its `sleep`) are gone.
    assert!(
        eventually(Duration::from_secs(3), || children_named(worker, "sh")
            .is_empty()),
        "script still running"
    );
    let log = condo.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("504: request ran past its timeout"))
        .unwrap_or_else(|| panic!("no timeout line in:\n{log}"));
    assert!(
        line.contains("a.test") && line.contains("/cgi-bin/sleep.sh?30") && line.contains("tenant"),
        "{line}"
    );
}

#[test]
fn several_dispatchers_share_the_load_and_survive_each_other() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("dispatchers = 2");
    let condo = Condo::start(&config);
    assert!(
        eventually(Duration::from_secs(5), || condo
            .children("dispatcher", None)
            .len()
            == 2),
        "{}",
        condo.log_text()
    );
    for i in 0..40 {
        let (host, want) = if i % 2 == 0 {
            ("a.test", "site A\n")
        } else {
            ("b.test", "site B\n")
        };
        let (body, ok) = curl(&[
            "-H",
            &format!("Host: {host}"),
            &format!("http://{}/", condo.pass),
        ]);
        assert!(ok && body == want, "request {i}: {body}");
    }
    // Each dispatcher asked for its own link to the same single worker per tenant.
    assert_eq!(condo.children("worker", Some("a")).len(), 1);
    let victim = condo.children("dispatcher", None)[0];
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(victim as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    // While one restarts, the other keeps serving; then both run again.
    for i in 0..20 {
        let (body, ok) = curl(&["-H", "Host: a.test", &format!("http://{}/", condo.pass)]);
        assert!(
            ok && body == "site A\n",
            "request {i} after the kill: {body}"
        );
    }
    assert!(
        eventually(Duration::from_secs(5), || {
            let now = condo.children("dispatcher", None);
            now.len() == 2 && !now.contains(&victim)
        }),
        "{}",
        condo.log_text()
    );
}

/// wrk over keep-alive connections while the worker is recycled every 200 requests,
/// on both hand-over paths: not one socket error, not one non-2xx answer.
#[test]
fn recycling_under_load_loses_nothing() {
    if !require_root() {
        return;
    }
    if std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(std::env::var("CI").is_err(), "wrk is not installed");
        eprintln!("skipping: wrk is not installed");
        return;
    }
    let t = TwoTenants::new();
    let config = t.config_tenants("", "worker_max_requests = 200", "");
    let condo = Condo::start(&config);
    for addr in [condo.pass, condo.proxy()] {
        let out = std::process::Command::new("wrk")
            .args([
                "-t1",
                "-c8",
                "-d3s",
                "--timeout",
                "5s",
                "-H",
                "Host: a.test",
            ])
            .arg(format!("http://{addr}/"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}");
        let requests: u64 = text
            .lines()
            .find_map(|l| {
                l.trim()
                    .split_once(" requests in ")
                    .map(|(n, _)| n.to_string())
            })
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no request count in:\n{text}"));
        assert!(requests > 1000, "{text}");
        assert!(!text.contains("Socket errors"), "{addr}:\n{text}");
        assert!(!text.contains("Non-2xx"), "{addr}:\n{text}");
    }
    let log = condo.log_text();
    assert!(count(&log, "(worker_max_requests)") >= 5, "{log}");
    assert_eq!(count(&log, "worker exited"), 0, "{log}");
}

/// `workers_min` keeps FastCGI processes warm too: php-cgi runs before any request, and
/// the idle reaper leaves that many running.
#[test]
fn workers_min_prestarts_php_processes() {
    if !require_root() {
        return;
    }
    if std::process::Command::new("php-cgi")
        .arg("-v")
        .output()
        .is_err()
    {
        assert!(std::env::var("CI").is_err(), "php-cgi is not installed");
        eprintln!("skipping: php-cgi is not installed");
        return;
    }
    let t = TwoTenants::new();
    let config = t.config_tenants("", "workers_min = 2\nidle_timeout = \"1s\"", "");
    t.script("a", "hello.php", "<?php echo 'hello';");
    t.append_site(
        "a",
        "[[site.route]]\nsuffix = \".php\"\nhandler = \"fastcgi\"\ncommand = [\"php-cgi\"]\nprocesses_max = 4",
    );
    let condo = Condo::start(&config);
    let worker = condo.wait_child("worker", Some("a"));
    assert!(
        eventually(Duration::from_secs(5), || children_named(worker, "php-cgi")
            .len()
            == 2),
        "{:?}",
        children_named(worker, "php-cgi")
    );
    // A burst may grow the pool up to four; after idle_timeout it is back to two.
    let url = format!("http://{}/hello.php", condo.pass);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || curl(&["-H", "Host: a.test", &url]))
        })
        .collect();
    for h in handles {
        let (body, ok) = h.join().unwrap();
        assert!(ok && body == "hello", "{body}");
    }
    assert!(
        eventually(Duration::from_secs(6), || children_named(worker, "php-cgi")
            .len()
            == 2),
        "{:?}",
        children_named(worker, "php-cgi")
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(children_named(worker, "php-cgi").len(), 2);
}

/// The admin listener answers /health, refuses other paths, and a non-loopback
/// `admin_listen` is a config error.
#[test]
fn admin_listener_health_and_loopback_only() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("admin_listen = \"127.0.0.1:0\"");
    let condo = Condo::start(&config);
    let admin: std::net::SocketAddr = {
        eventually(Duration::from_secs(5), || {
            condo.log_text().contains("admin listener on ")
        });
        let log = condo.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("admin listener on "))
            .unwrap_or_else(|| panic!("no admin listener line in:\n{log}"));
        line.split("admin listener on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap()
    };
    let (body, ok) = curl(&[&format!("http://{admin}/health")]);
    assert!(ok && body == "ok\n", "{body}");
    let (head, _) = curl(&["-i", &format!("http://{admin}/")]);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    // Sites are not served there.
    let (head, _) = curl(&[
        "-i",
        "-H",
        "Host: a.test",
        &format!("http://{admin}/index.html"),
    ]);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    drop(condo);

    let bad = t.config("admin_listen = \"0.0.0.0:9180\"");
    let out = std::process::Command::new(CONDO)
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("key `server.admin_listen`") && text.contains("not a loopback address"),
        "{text}"
    );
}

/// condo's own worker is not replaced by request count unless `worker_max_requests`
/// says so: past the old default of 10,000 requests the worker is the same process.
#[test]
fn the_worker_is_not_recycled_by_request_count_by_default() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let condo = Condo::start(&t.config(""));
    assert_eq!(condo.get("a.test", "/").1, "200");
    let worker = condo.wait_child("worker", Some("a"));
    // wrk in bounded rounds (at most 6 of 3 s) until 10,001 requests were answered.
    let mut answered = 0u64;
    for _ in 0..6 {
        if answered > 10_000 {
            break;
        }
        let out = std::process::Command::new("wrk")
            .args(["-t1", "-c4", "-d3s", "-H", "Host: a.test"])
            .arg(format!("http://{}/", condo.pass))
            .output()
            .expect("wrk is installed (.ci/run installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        answered += text
            .lines()
            .find_map(|l| l.trim().split(" requests in ").next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no request count from wrk: {text}"));
        assert!(!text.contains("Non-2xx"), "{text}");
    }
    assert!(answered > 10_000, "only {answered} requests in 18 s");
    assert_eq!(condo.children("worker", Some("a")), vec![worker]);
    assert!(!condo.log_text().contains("worker_max_requests"));
}
