//! The control socket and what uses it: `condo status [--json]`, `condo top`,
//! `condo restart-tenant`, `condo reload --tenant`; and `condo check --json`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn status_json(config: &std::path::Path) -> serde_json::Value {
    let (out, ok) = condo_cmd(config, &["status", "--json"]);
    assert!(ok, "condo status --json: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn tenant<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tenant {name} in {status}"))
}

#[test]
fn status_top_and_restart_tenant() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    let condo = Condo::start(&config);
    for _ in 0..5 {
        curl(&["-H", "Host: a.test", &format!("http://{}/", condo.pass)]);
    }
    // Workers report every 2 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = status_json(&config);
    while tenant(&status, "a")["requests"].as_u64() < Some(5) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        status = status_json(&config);
    }
    let a = tenant(&status, "a");
    let worker_a = condo.wait_child("worker", Some("a"));
    assert_eq!(a["requests"], 5, "{status:#}");
    // The documented, versioned shape control panels rely on.
    assert_eq!(status["schema"], 1, "{status:#}");
    assert!(
        a["requests_at_ms"].as_u64().unwrap() > 1_700_000_000_000,
        "{status:#}"
    );
    for key in [
        "name",
        "user",
        "isolation",
        "sites",
        "workers",
        "connections",
        "queued",
        "requests",
        "requests_5xx",
        "memory_bytes",
        "memory_max",
        "cpu_seconds",
        "oom_kills",
        "crashes",
    ] {
        assert!(a.get(key).is_some(), "no {key} in {a}");
    }
    assert_eq!(a["workers"][0]["pid"], worker_a, "{status:#}");
    assert_eq!(a["workers"][0]["state"], "running");
    assert_eq!(a["isolation"], "standard");
    assert!(a["memory_bytes"].as_u64().unwrap() > 0, "{status:#}");
    assert_eq!(
        status["dispatchers"][0]["pid"],
        condo.wait_child("dispatcher", None)
    );
    // b never got a request: scaled to zero.
    assert_eq!(tenant(&status, "b")["workers"].as_array().unwrap().len(), 0);
    let (table, ok) = condo_cmd(&config, &["status"]);
    assert!(
        ok && table.contains("TENANT") && table.contains("idle (scaled to zero)"),
        "{table}"
    );
    eprintln!("{table}");
    let (screen, ok) = condo_cmd(
        &config,
        &[
            "top",
            "--iterations",
            "1",
            "--interval",
            "0.3",
            "--sort",
            "memory",
        ],
    );
    assert!(
        ok && screen.contains("condo top") && screen.contains("REQ/S"),
        "{screen}"
    );

    // restart-tenant under load: the old worker drains, a new one serves, no request
    // fails on either listener.
    // Every response that is not 200 is printed with its body, to show what failed.
    let lua = t.dir.path().join("report.lua");
    std::fs::write(
        &lua,
        "response = function(status, headers, body)\n  if status ~= 200 then io.write(\"status \", status, \" \", body, \"\\n\") end\nend\n",
    )
    .unwrap();
    let wrk = move |addr: std::net::SocketAddr, lua: std::path::PathBuf| {
        Command::new("wrk")
            .args(["-t", "1", "-c", "4", "-d", "3s", "-H", "Host: a.test", "-s"])
            .arg(lua)
            .arg(format!("http://{addr}/"))
            .output()
            .unwrap()
    };
    let (pass, proxy) = (condo.pass, condo.proxy());
    let lua2 = lua.clone();
    let load = std::thread::spawn(move || {
        let pass = std::thread::spawn(move || wrk(pass, lua2));
        let proxy = wrk(proxy, lua);
        (pass.join().unwrap(), proxy)
    });
    std::thread::sleep(Duration::from_millis(1000));
    let (said, ok) = condo_cmd(&config, &["restart-tenant", "a"]);
    assert!(ok && said.contains("draining"), "{said}");
    let (pass_out, proxy_out) = load.join().unwrap();
    for out in [pass_out, proxy_out] {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("Socket errors") && !text.contains("Non-2xx"),
            "errors across restart-tenant: {text}\n{}",
            condo
                .log_text()
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("worker"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    curl(&["-H", "Host: a.test", &format!("http://{}/", condo.pass)]);
    let new_a = condo.wait_child("worker", Some("a"));
    assert_ne!(new_a, worker_a, "a's worker was not replaced");
    let (said, ok) = condo_cmd(&config, &["restart-tenant", "nosuch"]);
    assert!(!ok && said.contains("no tenant `nosuch`"), "{said}");

    // Root's only: mode 0600, and another user cannot connect.
    let socket = t.dir.path().join("run/control.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let attempt = unix_connect_as(&t.a, &socket);
    assert!(attempt.starts_with("PermissionError"), "{attempt}");
}

#[test]
fn reload_of_one_tenant_applies_only_its_changes() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    let condo = Condo::start(&config);
    let get = |host: &str| {
        curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("Host: {host}"),
            &format!("http://{}/", condo.pass),
        ])
        .0
    };
    assert_eq!(get("b.test"), "200");
    let worker_b = condo.wait_child("worker", Some("b"));
    for name in ["a", "b"] {
        let path = t.dir.path().join(format!("sites/{name}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text
            .replacen(
                "aliases = [\"www.a.test\"]",
                "aliases = [\"www.a.test\", \"new.a.test\"]",
                1,
            )
            .replacen(
                "tenant = \"b\"",
                "tenant = \"b\"\naliases = [\"new.b.test\"]",
                1,
            );
        std::fs::write(&path, edited).unwrap();
    }
    let (said, ok) = condo_cmd(&config, &["reload", "--tenant", "a"]);
    assert!(ok && said.contains("tenants changed: a"), "{said}");
    assert_eq!(get("new.a.test"), "200", "a's change not applied");
    assert_ne!(
        get("new.b.test"),
        "200",
        "b's change applied by a reload of a"
    );
    // b's worker was not touched.
    assert_eq!(condo.wait_child("worker", Some("b")), worker_b);
    let (said, ok) = condo_cmd(&config, &["reload", "--tenant", "b"]);
    assert!(ok && said.contains("tenants changed: b"), "{said}");
    assert_eq!(get("new.b.test"), "200");
    // A tenant's new name that another tenant serves: refused, nothing applied.
    let path = t.dir.path().join("sites/b.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen("\"new.b.test\"", "\"new.b.test\", \"new.a.test\"", 1),
    )
    .unwrap();
    let (said, ok) = condo_cmd(&config, &["reload", "--tenant", "b"]);
    assert!(!ok, "{said}");
    assert_eq!(get("new.a.test"), "200");
}

#[test]
fn check_json_lists_every_error_with_its_place() {
    let dir = scratch();
    let config = dir.path().join("condo.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nuser = \"nobody\"\nheader_timeout = \"soon\"\nmax_headers = 1\n\n[tenant.A-B]\nuser = \"nobody\"\n",
    )
    .unwrap();
    let (out, ok) = condo_cmd(&config, &["check", "--json"]);
    assert!(!ok, "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["ok"], false);
    let errors = report["errors"].as_array().unwrap();
    eprintln!("{report:#}");
    assert!(errors.len() >= 3, "not every error: {report:#}");
    for key in ["server.header_timeout", "server.max_headers", "tenant.A-B"] {
        let e = errors
            .iter()
            .find(|e| e["key"] == key)
            .unwrap_or_else(|| panic!("no error for {key}: {report:#}"));
        assert!(e["line"].as_u64().unwrap() > 0 && e["column"].as_u64().unwrap() > 0);
        assert!(e["file"].as_str().unwrap().ends_with("condo.toml"));
    }
}
