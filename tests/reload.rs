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
    // b must not be recycled by max_requests under the load below: its worker pid
    // shows that a reload leaves an unchanged tenant alone.
    let config = t.config_tenants("", "", "max_requests = 100000000");
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
