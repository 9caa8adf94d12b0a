//! Attack matrix, "the admin endpoint is not reachable by tenants" (issue 15, item 7):
//! tenant code on the same host connects to the loopback admin listener and reads the
//! files the metrics come from; it gets none of every tenant's names, sites and usage.
//! The admin (with the token) still does, and the other tenant keeps being served.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// What tenant code sees of the admin listener: `path=status` per path.
const PROBE: &str = r#"#!/usr/bin/python3
import os, urllib.request, urllib.error
addr = os.environ["QUERY_STRING"]
out = []
for path, headers in [("/metrics", {}), ("/metrics", {"Authorization": "Bearer "}),
                      ("/metrics", {"Authorization": "Bearer guess"}), ("/health", {})]:
    try:
        req = urllib.request.Request(f"http://{addr}{path}", headers=headers)
        with urllib.request.urlopen(req, timeout=5) as r:
            body = r.read().decode(errors="replace")
            out.append(f"{path}={r.status} {body[:300]!r}")
    except urllib.error.HTTPError as e:
        out.append(f"{path}={e.code}")
    except Exception as e:
        out.append(f"{path}=error {e!r}")
print("Content-Type: text/plain\n")
print("\n".join(out))
"#;

/// Read `path` as `user` (its uid and gid, no other groups): the content or the error.
fn read_as(user: &TestUser, path: &Path) -> String {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--clear-groups")
        .args([
            "python3",
            "-c",
            "import sys\ntry:\n    print('READ', open(sys.argv[1]).read()[:200])\nexcept OSError as e:\n    print(type(e).__name__, e.errno)\n",
        ])
        .arg(path)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("setpriv python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The admin listener's address, from the master's log.
fn admin_addr(condo: &Condo) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(addr) = condo
            .log_text()
            .lines()
            .find_map(|l| l.split("admin listener on ").nth(1))
            .and_then(|r| r.split_whitespace().next())
        {
            return addr.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no admin listener:\n{}",
            condo.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn tenant_code_gets_nothing_of_metrics_and_the_admin_with_the_token_does() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("admin_listen = \"127.0.0.1:0\"");
    t.append_site(
        "a",
        "[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"",
    );
    t.script("a", "cgi-bin/probe.py", PROBE);
    let condo = Condo::start(&config);
    let admin = admin_addr(&condo);
    // Some traffic for both tenants, so the metrics name them.
    for host in ["a.test", "b.test"] {
        let (_, ok) = curl(&[
            "-H",
            &format!("Host: {host}"),
            &format!("http://{}/", condo.pass),
        ]);
        assert!(ok);
    }
    let run = t.dir.path().join("run");
    let metrics_file = run.join("metrics.prom");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !metrics_file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        metrics_file.exists(),
        "the master wrote no {}",
        metrics_file.display()
    );

    // 1. Tenant a's CGI asks the admin listener, with no token and with guesses.
    let (out, ok) = curl(&[
        "-H",
        "Host: a.test",
        &format!("http://{}/cgi-bin/probe.py?{admin}", condo.pass),
    ]);
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with('/')).collect();
    assert_eq!(lines.len(), 4, "{out}");
    for line in &lines[..3] {
        assert!(
            line.starts_with("/metrics=401") || line.starts_with("/metrics=error"),
            "tenant code read /metrics: {out}"
        );
    }
    assert!(lines[3].starts_with("/health=200"), "{out}");
    assert!(
        !out.contains("condo_"),
        "metrics leaked to tenant code: {out}"
    );

    // 2. The files behind it, as the tenant's uid (outside condo's sandbox, like a
    //    shell login): the metrics text and the token.
    for path in [metrics_file.clone(), t.dir.path().join("state/admin.token")] {
        let got = read_as(&t.a, &path);
        assert!(
            got.starts_with("PermissionError"),
            "tenant a read {}: {got}",
            path.display()
        );
    }
    let meta = std::fs::metadata(&metrics_file).unwrap();
    assert_eq!(meta.mode() & 0o007, 0, "metrics.prom is readable by others");
    assert_eq!(
        meta.gid(),
        t.dispatcher.gid,
        "metrics.prom's group is the dispatcher's"
    );
    let token_meta = std::fs::metadata(t.dir.path().join("state/admin.token")).unwrap();
    assert_eq!((token_meta.uid(), token_meta.mode() & 0o777), (0, 0o600));

    // 3. The admin, with the token: the metrics, every tenant in them.
    let token = std::fs::read_to_string(t.dir.path().join("state/admin.token")).unwrap();
    let bearer = format!("Authorization: Bearer {}", token.trim());
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut metrics = String::new();
    while Instant::now() < deadline {
        metrics = curl(&["-H", &bearer, &format!("http://{admin}/metrics")]).0;
        if metrics.contains("tenant=\"a\"") && metrics.contains("tenant=\"b\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        metrics.contains("condo_spawns_total{tenant=\"b\"}"),
        "the admin did not get the metrics: {metrics}"
    );
    // Without it, from the host too: 401.
    let (code, _) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{admin}/metrics"),
    ]);
    assert_eq!(code, "401");
    // b was served throughout.
    let (body, ok) = curl(&["-H", "Host: b.test", &format!("http://{}/", condo.pass)]);
    assert!(ok && body == "site B\n", "{body}");
}

#[test]
fn a_token_file_others_can_read_or_write_is_refused() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let token = t.dir.path().join("admin.token");
    let config = t.config(&format!(
        "admin_listen = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"",
        token.display()
    ));
    // Owned by the tenant: it could set the token itself.
    write_owned(&token, b"0123456789abcdef0123456789\n", &t.a, 0o600);
    // (Bounded: a condo that wrongly accepted the file would serve until killed.)
    let out = Command::new("timeout")
        .args(["20", CONDO, "serve", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "condo served with a tenant's token file"
    );
    assert!(
        said.contains("admin_token_file") && said.contains(&token.display().to_string()),
        "{said}"
    );
    // Root's but world-readable: refused too.
    std::os::unix::fs::lchown(&token, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    // (Bounded: a condo that wrongly accepted the file would serve until killed.)
    let out = Command::new("timeout")
        .args(["20", CONDO, "serve", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "condo served with a world-readable token file"
    );
    // 0640 root's: the admin's own token is used.
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let condo = Condo::start(&config);
    let admin = admin_addr(&condo);
    let (code, _) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Authorization: Bearer 0123456789abcdef0123456789",
        &format!("http://{admin}/metrics"),
    ]);
    // 200 once the master wrote the text, 503 before: never 401 with the right token.
    assert!(code == "200" || code == "503", "{code}");
}

#[test]
fn a_tenant_in_the_dispatchers_group_is_refused() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    // The dispatcher's group reads metrics.prom: a tenant running in it would too.
    let config = t.config_tenants(
        "admin_listen = \"127.0.0.1:0\"",
        &format!("group = \"{}\"", t.dispatcher.name),
        "",
    );
    let out = Command::new(CONDO)
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("tenant.a.user") && said.contains("dispatcher's user or in its group"),
        "{said}"
    );
}
