//! `condo reload` / SIGHUP: new routes at once, changed tenants' workers replaced
//! without losing a request, untouched tenants keep their workers, a broken config
//! keeps the running one.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

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

fn wrk(url: &str, host: &str, seconds: u32) -> std::thread::JoinHandle<String> {
    let url = url.to_string();
    let host = format!("Host: {host}");
    std::thread::spawn(move || {
        let out = Command::new("wrk")
            .args([
                "-t1",
                "-c4",
                &format!("-d{seconds}s"),
                "--timeout",
                "5s",
                "-H",
                &host,
            ])
            .arg(&url)
            .output()
            .expect("wrk is installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
}

#[test]
fn reload_applies_changes_without_losing_requests() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    // b's worker pid shows that a reload leaves an unchanged tenant alone (workers are
    // not replaced by request count unless worker_max_requests says so).
    let config = t.config("");
    let root_a2 = docroot(t.dir.path(), "a2", &t.a);
    write_owned(&root_a2.join("index.html"), b"site A2\n", &t.a, 0o600);
    let condo = Condo::start(&config);
    let get = |host: &str| {
        curl(&[
            "-H",
            &format!("Host: {host}"),
            &format!("http://{}/", condo.pass),
        ])
    };
    assert_eq!(get("a.test").0, "site A\n");
    assert_eq!(get("b.test").0, "site B\n");
    let worker_a = condo.wait_child("worker", Some("a"));
    let worker_b = condo.wait_child("worker", Some("b"));

    // Load on both tenants, on both listeners, across the reload.
    let loads = [
        wrk(&format!("http://{}/", condo.pass), "a.test", 4),
        wrk(&format!("http://{}/", condo.proxy()), "a.test", 4),
        wrk(&format!("http://{}/", condo.pass), "b.test", 4),
    ];
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(
        t.dir.path().join("sites/a.toml"),
        format!(
            "[[site]]\nname = \"a.test\"\naliases = [\"www.a.test\", \"new.a.test\"]\ntenant = \"a\"\nroot = \"{}\"\n",
            root_a2.display()
        ),
    )
    .unwrap();
    let out = Command::new(CONDO)
        .args(["reload", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for load in loads {
        let text = load.join().unwrap();
        assert!(text.contains("requests in"), "{text}");
        assert!(!text.contains("Socket errors"), "{text}");
        assert!(!text.contains("Non-2xx"), "{text}");
    }
    assert!(
        eventually(Duration::from_secs(5), || get("new.a.test").0
            == "site A2\n"),
        "{}",
        condo.log_text()
    );
    assert_eq!(get("a.test").0, "site A2\n");
    assert_eq!(get("b.test").0, "site B\n");
    let log = condo.log_text();
    assert!(log.contains("tenants changed: a"), "{log}");
    // b's worker was not touched; a's was replaced.
    assert!(condo.children("worker", Some("b")).contains(&worker_b));
    assert!(
        eventually(Duration::from_secs(10), || !condo
            .children("worker", Some("a"))
            .contains(&worker_a)),
        "old worker of a still running"
    );
    assert_eq!(log.matches("worker exited").count(), 0, "{log}");

    // A broken main file: `condo reload` refuses and says why; a bare SIGHUP keeps
    // the running config and logs it.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        good.replace("[server]", "[server]\nlisten_backlog = 5"),
    )
    .unwrap();
    let out = Command::new(CONDO)
        .args(["reload", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.listen_backlog") && err.contains("not told to reload"),
        "{err}"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(condo.pid() as i32).unwrap(),
        rustix::process::Signal::HUP,
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || condo
            .log_text()
            .contains("still running the previous config")),
        "{}",
        condo.log_text()
    );
    assert_eq!(get("new.a.test").0, "site A2\n");
    assert_eq!(get("b.test").0, "site B\n");
}

/// SIGUSR1 after logrotate moved the logs: new files by name, the next lines in them,
/// including what a running script writes to stderr.
#[test]
fn usr1_reopens_moved_logs() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    t.script(
        "a",
        "cgi-bin/noisy.sh",
        "#!/bin/sh\necho \"noisy $QUERY_STRING\" >&2\nprintf 'Content-Type: text/plain\\n\\nok\\n'\n",
    );
    t.append_site(
        "a",
        "[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"",
    );
    let condo = Condo::start(&config);
    let url = |q: &str| format!("http://{}/cgi-bin/noisy.sh?{q}", condo.pass);
    assert_eq!(curl(&["-H", "Host: a.test", &url("one")]).0, "ok\n");
    let log = t.dir.path().join("log");
    // The line is written after the response: wait for it before "rotating".
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(log.join("a.test.access.log"))
            .is_ok_and(|text| text.contains("noisy.sh?one"))
            && std::fs::read_to_string(log.join("a.test.error.log"))
                .is_ok_and(|text| text.contains("noisy one"))
    }));
    for name in ["a.test.access.log", "a.test.error.log", "error.log"] {
        std::fs::rename(log.join(name), log.join(format!("{name}.1"))).unwrap();
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(condo.pid() as i32).unwrap(),
        rustix::process::Signal::USR1,
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || log.join("error.log").exists()
            && std::fs::read_to_string(log.join("error.log"))
                .unwrap()
                .contains("logs reopened")),
        "{}",
        condo.log_text()
    );
    assert_eq!(curl(&["-H", "Host: a.test", &url("two")]).0, "ok\n");
    std::thread::sleep(Duration::from_millis(300));
    let read = |name: &str| std::fs::read_to_string(log.join(name)).unwrap_or_default();
    assert!(
        read("a.test.access.log.1").contains("noisy.sh?one"),
        "{}",
        read("a.test.access.log.1")
    );
    assert!(!read("a.test.access.log.1").contains("noisy.sh?two"));
    assert!(
        read("a.test.access.log").contains("noisy.sh?two"),
        "{}",
        read("a.test.access.log")
    );
    assert!(read("a.test.error.log.1").contains("noisy one"));
    assert!(
        read("a.test.error.log").contains("noisy two"),
        "{}",
        read("a.test.error.log")
    );
    // Still root:tenant 0640, like the first ones.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(log.join("a.test.access.log")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (0, t.a.gid, 0o640)
    );
}
