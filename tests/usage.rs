//! Usage accounting end to end: exact request counts per tenant in `condo usage`,
//! kept across a tenant scaling to zero, a reload and a restart; the Prometheus text on
//! the admin listener; CPU and memory from the tenant's cgroup.

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
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

fn get(addr: std::net::SocketAddr, host: &str, path: &str) -> String {
    curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &format!("Host: {host}"),
        &format!("http://{addr}{path}"),
    ])
    .0
}

fn usage_json(config: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(CONDO)
        .args(["usage", "-c"])
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn row<'a>(rows: &'a serde_json::Value, tenant: &str) -> &'a serde_json::Value {
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["tenant"] == tenant)
        .unwrap_or_else(|| panic!("no row for {tenant} in {rows}"))
}

#[test]
fn usage_counts_survive_scale_to_zero_reload_and_restart() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config_tenants(
        "admin_listen = \"127.0.0.1:0\"",
        "idle_timeout = \"1s\"",
        "",
    );
    let mut condo = Condo::start(&config);
    for _ in 0..3 {
        assert_eq!(get(condo.pass, "a.test", "/"), "200");
    }
    assert_eq!(get(condo.proxy(), "a.test", "/missing"), "404");
    // a scales to zero; its counts went to the master on the way out.
    assert!(eventually(Duration::from_secs(8), || condo
        .children("worker", Some("a"))
        .is_empty()));
    for _ in 0..2 {
        assert_eq!(get(condo.pass, "a.test", "/"), "200");
    }
    let out = Command::new(CONDO)
        .args(["reload", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    for _ in 0..3 {
        assert_eq!(get(condo.pass, "b.test", "/"), "200");
    }
    // The admin listener shows it (the master rewrites the text every few seconds).
    let admin = condo
        .log_text()
        .lines()
        .find_map(|l| l.split("admin listener on ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_string)
        .expect("admin listener");
    // /metrics asks for the bearer token the master generated in state_dir.
    let token = std::fs::read_to_string(t.dir.path().join("state/admin.token")).unwrap();
    let bearer = format!("Authorization: Bearer {}", token.trim());
    let scrape = || curl(&["-H", &bearer, &format!("http://{admin}/metrics")]).0;
    let want = r#"condo_requests_total{tenant="a",site="a.test",status_class="2xx"} 5"#;
    assert!(
        eventually(Duration::from_secs(15), || scrape().contains(want)),
        "{}",
        scrape()
    );
    let metrics = scrape();
    assert!(
        metrics.contains(r#"condo_requests_total{tenant="a",site="a.test",status_class="4xx"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"condo_cpu_seconds_total{tenant="a"}"#),
        "{metrics}"
    );

    // A restart: the ledger is read back and counting goes on.
    drop(condo);
    condo = Condo::start(&config);
    assert_eq!(get(condo.pass, "a.test", "/"), "200");
    drop(condo);

    let rows = usage_json(&config, &["--json"]);
    let a = row(&rows, "a");
    assert_eq!(a["requests"], 7, "{a}");
    assert_eq!(a["requests_2xx"], 6, "{a}");
    assert_eq!(a["requests_4xx"], 1, "{a}");
    assert!(a["spawns"].as_u64().unwrap() >= 3, "{a}");
    assert!(a["bytes_out"].as_u64().unwrap() >= 6 * 7, "{a}");
    let b = row(&rows, "b");
    assert_eq!(b["requests"], 3, "{b}");
    assert_eq!(b["requests_2xx"], 3, "{b}");
    // From the cgroups: the workers used some CPU and memory (plausible, not exact).
    for r in [a, b] {
        let cpu = r["cpu_seconds"].as_f64().unwrap();
        assert!(cpu > 0.0 && cpu < 30.0, "{r}");
        let peak = r["memory_peak_bytes"].as_u64().unwrap();
        assert!(peak > 100_000 && peak < 1 << 30, "{r}");
    }
    // --since in the future: nothing; CSV has a header and one line per tenant.
    let future = usage_json(&config, &["--json", "--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(row(&future, "a")["requests"], 0);
    let out = Command::new(CONDO)
        .args(["usage", "--csv", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(csv.starts_with("tenant,requests,"), "{csv}");
    assert!(
        csv.lines().any(|l| l.starts_with("a,7,0,6,0,1,0,")),
        "{csv}"
    );
    // One tenant's view, for a control panel: its row alone; a name that is no
    // tenant is an error that names it.
    let only_b = usage_json(&config, &["--json", "--tenant", "b"]);
    assert_eq!(only_b.as_array().unwrap().len(), 1, "{only_b}");
    assert_eq!(row(&only_b, "b")["requests"], 3, "{only_b}");
    let unknown = Command::new(CONDO)
        .args(["usage", "--tenant", "nosuch", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("\"nosuch\""),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    let bad = Command::new(CONDO)
        .args(["usage", "--since", "yesterday-ish", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since"));
}

/// The admin's live views: `/metrics` lists every tenant from the master's first
/// write (not only once a tenant has traffic), and `condo top --interval 1` shows a
/// steady request rate under steady load (workers report every 2 s: rates taken
/// between polls alternated between twice the rate and 0).
#[test]
fn metrics_list_every_tenant_at_once_and_top_rates_hold_steady() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("admin_listen = \"127.0.0.1:0\"");
    let condo = Condo::start(&config);
    let admin_in_log = || {
        condo
            .log_text()
            .lines()
            .find_map(|l| l.split("admin listener on ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string)
    };
    assert!(eventually(Duration::from_secs(5), || admin_in_log().is_some()));
    let admin = admin_in_log().unwrap();
    let token = std::fs::read_to_string(t.dir.path().join("state/admin.token")).unwrap();
    let bearer = format!("Authorization: Bearer {}", token.trim());
    let scrape = || curl(&["-s", "-H", &bearer, &format!("http://{admin}/metrics")]).0;
    for tenant in ["a", "b"] {
        let series = format!("condo_workers{{tenant=\"{tenant}\"}}");
        assert!(
            eventually(Duration::from_secs(3), || scrape().contains(&series)),
            "no {series} 3 s after start: {}",
            scrape()
        );
    }

    // Steady load on a for about 8 s (bounded in time and count), top polled every 1 s.
    let addr = condo.pass;
    let load = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(8);
        let mut client = Client::connect(addr);
        let mut sent = 0u32;
        while Instant::now() < end && sent < 200_000 {
            let r = client.get("a.test", "/");
            assert_eq!(r.status, 200);
            sent += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new(CONDO)
        .args([
            "top",
            "--interval",
            "1",
            "--iterations",
            "6",
            "--sort",
            "requests",
            "-c",
        ])
        .arg(&config)
        .output()
        .unwrap();
    let sent = load.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let rates: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("a "))
        .map(|l| l.split_whitespace().nth(3).unwrap().parse().unwrap())
        .collect();
    assert_eq!(rates.len(), 6, "{text}");
    // The first screens may come before two reports; from the fourth on (3.5 s of
    // load, at least one full report window) every screen shows the load.
    assert!(
        rates[3..].iter().all(|r| *r > 0.0),
        "request rates {rates:?} while {sent} requests were sent over 8 s:\n{text}"
    );
}
