//! What the admin meets before anything serves: `condo check` (a site's own TLS files
//! as its tenant sees them, every mistake of a file with its place, a tenant's own
//! file, one Unix user in two tenants), and the command line itself.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A self-signed certificate for `names` and its key, PEM.
fn cert_for(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Tenant a's own certificate files in its home (`dir/a`, 0700), named in its site.
fn give_a_tls(t: &TwoTenants) -> (PathBuf, PathBuf) {
    let home = t.dir.path().join("a");
    let (cert, key) = (home.join("cert.pem"), home.join("key.pem"));
    let (c, k) = cert_for(&["a.test", "www.a.test"]);
    write_owned(&cert, c.as_bytes(), &t.a, 0o600);
    write_owned(&key, k.as_bytes(), &t.a, 0o600);
    t.append_site(
        "a",
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            cert.display(),
            key.display()
        ),
    );
    (cert, key)
}

#[test]
fn check_opens_a_sites_own_certificate_as_its_tenant() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    let (cert, key) = give_a_tls(&t);
    let site_file = t.dir.path().join("sites/a.toml");
    let place = format!("{}:6:", site_file.display());

    let (out, ok) = condo_cmd(&config, &["check"]);
    assert!(ok, "a good pair, readable by its tenant:\n{out}");

    // Readable by root but not by the tenant: the worker could not load it, so check
    // fails, at the site's tls.key (it read as the tenant, not as root).
    let (_, k) = cert_for(&["a.test", "www.a.test"]);
    std::fs::remove_file(&key).unwrap();
    std::fs::write(&key, k).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (out, ok) = condo_cmd(&config, &["check"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&place) && out.contains("`site.0.tls.key`") && out.contains("denied"),
        "{out}"
    );
    // A key the tenant can read, of another certificate.
    chown(&key, &t.a, 0o600);
    let (out, ok) = condo_cmd(&config, &["check"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("`site.0.tls.key`") && out.contains("does not go with"),
        "{out}"
    );

    // The tenant's link to a file only root may read: followed as the tenant, refused.
    std::fs::remove_file(&key).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", &key).unwrap();
    std::os::unix::fs::lchown(&key, Some(t.a.uid), Some(t.a.gid)).unwrap();
    let (out, ok) = condo_cmd(&config, &["check"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("`site.0.tls.key`") && out.contains("denied"),
        "{out}"
    );
    assert!(!out.contains("root:"), "shadow's content leaked:\n{out}");

    // A certificate without the alias; then no certificate at all.
    let (c, k) = cert_for(&["a.test"]);
    std::fs::remove_file(&key).unwrap();
    write_owned(&key, k.as_bytes(), &t.a, 0o600);
    write_owned(&cert, c.as_bytes(), &t.a, 0o600);
    let (out, ok) = condo_cmd(&config, &["check"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&place)
            && out.contains("`site.0.tls.cert`")
            && out.contains("does not cover www.a.test"),
        "{out}"
    );
    std::fs::remove_file(&cert).unwrap();
    let (out, ok) = condo_cmd(&config, &["check", "--json"]);
    assert!(!ok, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let errors = report["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["key"] == "site.0.tls.cert"
            && e["line"] == 6
            && e["message"].as_str().unwrap().contains("No such file")),
        "{out}"
    );
    // What a service's start runs: the tenant's files are not the host's to fail on.
    let (out, ok) = condo_cmd(&config, &["check", "--skip-tenant-files"]);
    assert!(ok, "{out}");
}

#[test]
fn help_lists_every_command_and_only_config_readers_take_c() {
    let help = Command::new(CONDO).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.lines().any(|l| l.trim_start().starts_with("man ")),
        "{help}"
    );
    let restart = Command::new(CONDO)
        .args(["restart-tenant", "--help"])
        .output()
        .unwrap();
    let restart = String::from_utf8_lossy(&restart.stdout);
    let tenant_line = restart
        .lines()
        .find(|l| l.contains("<TENANT>") && !l.contains("Usage"))
        .unwrap();
    assert!(tenant_line.contains("tenant's name"), "{restart}");
    for args in [
        &["demo", "-c", "/x.toml", "--clean"][..],
        &["import", "php-fpm", "-c", "/x.toml", "/dev/null"][..],
    ] {
        let out = Command::new(CONDO).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} accepted -c");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("unexpected argument '-c'"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn check_names_every_mistake_of_a_file_with_its_key_and_place() {
    let dir = scratch();
    let main = dir.path().join("condo.toml");
    std::fs::create_dir(dir.path().join("sites")).unwrap();
    std::fs::write(
        &main,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nuser = \"nobody\"\nuid_range = [1, 65534]\n\
         worker_threads = \"four\"\n\n[tenant.t1]\nuser = \"daemon\"\ncpu_max = \"half\"\n\
         memory_max = 5\npids_max = 64\n",
    )
    .unwrap();
    let sites = dir.path().join("sites/a.toml");
    std::fs::write(
        &sites,
        "[[site]]\nname = \"a.test\"\ntenant = \"t1\"\nroot = \"/srv/a\"\nmax_clients = \"many\"\n\n\
         [[site.route]]\npath = \"cgi-bin\"\nhandler = \"cgii\"\n\n\
         [[site]]\nname = \"b.test\"\ntenant = \"t1\"\n\n\
         [[site]]\nname = \"c test\"\ntenant = \"t1\"\nroot = \"relative\"\nautoindex = \"yes\"\n",
    )
    .unwrap();
    let (out, ok) = condo_cmd(&main, &["check"]);
    assert!(!ok, "{out}");
    let m = main.display();
    let s = sites.display();
    for expected in [
        format!("{m}:5:18: key `server.worker_threads`: invalid type: string \"four\""),
        format!("{m}:9:11: key `tenant.t1.cpu_max`: invalid type: string \"half\", expected f64"),
        format!("{m}:10:14: key `tenant.t1.memory_max`: invalid type: integer `5`"),
        format!("{s}:5:15: key `site.0.max_clients`: invalid type: string \"many\""),
        // A route's wrong path hides neither its wrong handler nor the other sites.
        format!("{s}:8:1: key `site.0.route.0.path`: must be a normalised absolute path"),
        format!("{s}:9:1: key `site.0.route.0.handler`: unknown handler `cgii`"),
        format!("{s}:11:1: key `site.1`: missing field `root`"),
        format!("{s}:16:1: key `site.2.name`: `c test` is not a valid host name"),
        format!("{s}:18:1: key `site.2.root`: must be an absolute path"),
        format!("{s}:19:13: key `site.2.autoindex`: invalid type: string \"yes\""),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
    }
    assert!(out.contains(": 10 errors"), "{out}");
}

#[test]
fn one_unix_user_in_two_tenants_is_refused_by_check_serve_and_reload() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    let good = std::fs::read_to_string(&config).unwrap();
    let doubled = format!("{good}\n[tenant.c]\nuser = \"{}\"\n", t.a.name);
    std::fs::write(&config, &doubled).unwrap();
    let line_a = good
        .lines()
        .position(|l| l == format!("user = \"{}\"", t.a.name))
        .unwrap()
        + 1;
    let (out, ok) = condo_cmd(&config, &["check"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("key `tenant.c.user`")
            && out.contains("already tenant a's")
            && out.contains(&format!("{}:{line_a}", config.display())),
        "{out}"
    );
    // serve refuses it too, at once.
    let serve = Command::new(CONDO)
        .args(["serve", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!serve.status.success());
    assert!(
        String::from_utf8_lossy(&serve.stderr).contains("already tenant a's")
            || String::from_utf8_lossy(&serve.stdout).contains("already tenant a's"),
        "{}",
        String::from_utf8_lossy(&serve.stderr)
    );
    // A running condo keeps its config: reload says why and changes nothing.
    std::fs::write(&config, &good).unwrap();
    let condo_run = Condo::start(&config);
    std::fs::write(&config, &doubled).unwrap();
    let (out, ok) = condo_cmd(&config, &["reload"]);
    assert!(!ok, "{out}");
    assert!(out.contains("already tenant a's"), "{out}");
    assert_eq!(condo_run.get("a.test", "/").1, "200");
}

#[test]
fn sigterm_removes_the_control_socket_and_the_metrics_file() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    let run = t.dir.path().join("run");
    let condo_run = Condo::start(&config);
    assert_eq!(condo_run.get("a.test", "/").1, "200");
    // The metrics file is written every few seconds: wait for the first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !run.join("metrics.prom").exists() {
        assert!(std::time::Instant::now() < deadline, "no metrics.prom");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(run.join("control.sock").exists());
    assert!(run.join("condo.pid").exists());
    drop(condo_run); // SIGTERM, and waits for the master to exit
    for name in ["control.sock", "metrics.prom", "condo.pid"] {
        assert!(
            !run.join(name).exists(),
            "{name} left behind in {}",
            run.display()
        );
    }
}

/// `condo ARGS... -c CONFIG` run as `user` (its uid and gid, no other groups):
/// (stdout + stderr, exit code).
fn condo_as(user: &TestUser, config: &Path, args: &[&str]) -> (String, i32) {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--clear-groups")
        .arg(CONDO)
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .unwrap();
    (
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        out.status.code().unwrap_or(-1),
    )
}

#[test]
fn a_tenant_checks_its_own_file_as_itself_before_it_applies() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let home_b = t.dir.path().join("b");
    let own = home_b.join("condo.toml");
    let config = t.config_tenants("", "", &format!("user_config = \"{}\"", own.display()));
    let own_arg = own.to_str().unwrap();
    let args = ["check", "--user-config", own_arg, "--tenant", "b"];

    // A good file, the admin's config readable: checked against b's own sites.
    write_owned(
        &own,
        b"[[site]]\nname = \"b.test\"\nindex = [\"index.php\"]\n",
        &t.b,
        0o600,
    );
    let (out, code) = condo_as(&t.b, &config, &args);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (1 of b's sites set)"), "{out}");

    // Another tenant's site, an admin's key, a value of the wrong type: each named.
    write_owned(
        &own,
        b"[[site]]\nname = \"a.test\"\n\n[[site]]\nname = \"b.test\"\nroot = \"/\"\nautoindex = \"yes\"\n",
        &t.b,
        0o600,
    );
    let (out, code) = condo_as(&t.b, &config, &args);
    assert_eq!(code, 1, "{out}");
    for expected in [
        format!("{own_arg}:2:1: key `site.0.name`: `a.test` is not one of this tenant's sites"),
        format!("{own_arg}:6:1: key `site.1.root`: `root` may only be set by the admin"),
        format!("{own_arg}:7:13: key `site.1.autoindex`: invalid type"),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
    }

    // The admin's config closed to tenants: what can be checked still is, and it says
    // what was not.
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (out, code) = condo_as(&t.b, &config, &args);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("Permission denied") && out.contains("not checked"),
        "{out}"
    );
    assert!(
        out.contains("`site.1.root`") && out.contains("`site.1.autoindex`"),
        "{out}"
    );
    assert!(!out.contains("not one of this tenant's sites"), "{out}");

    // Another user cannot use it to read b's file.
    let (out, code) = condo_as(&t.a, &config, &args);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("Permission denied") && !out.contains("a.test\""),
        "{out}"
    );

    // Root reads it as b too: a link of b's to a file only root may read is refused.
    std::fs::remove_file(&own).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", &own).unwrap();
    std::os::unix::fs::lchown(&own, Some(t.b.uid), Some(t.b.gid)).unwrap();
    let (out, ok) = condo_cmd(&config, &args);
    assert!(!ok, "{out}");
    assert!(
        out.contains("Permission denied") && !out.contains("root:"),
        "{out}"
    );
}

#[test]
fn reload_of_one_tenant_says_what_it_applied_what_it_left_and_a_rejected_own_file() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let own = t.dir.path().join("b/condo.toml");
    let config = t.config_tenants("", "", &format!("user_config = \"{}\"", own.display()));
    give_a_tls(&t); // a has its own certificate
    let condo_run = Condo::start(&config);
    assert_eq!(condo_run.get("a.test", "/").1, "200");
    let worker_a = condo_run.wait_child("worker", Some("a"));

    // Nothing edited: nothing changed; a's worker is replaced only to read its own
    // certificate again, and says so.
    let (out, ok) = condo_cmd(&config, &["reload", "--tenant", "b"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("reloaded tenant b only") && out.contains("tenants changed: none"),
        "{out}"
    );
    assert!(!out.contains("certificates again"), "a is not b:\n{out}");
    assert!(
        out.contains("does not exist: the admin's settings apply alone"),
        "{out}"
    );
    assert_eq!(condo_run.wait_child("worker", Some("a")), worker_a);

    // Both edited, b reloaded: b applied, a left and named.
    for name in ["a", "b"] {
        t.append_site(name, "max_clients = 50\n");
    }
    let (out, ok) = condo_cmd(&config, &["reload", "--tenant", "b"]);
    assert!(ok, "{out}");
    assert!(out.contains("tenants changed: b;"), "{out}");
    assert!(out.contains("left for a full `condo reload`): a"), "{out}");
    assert_eq!(condo_run.wait_child("worker", Some("a")), worker_a);

    // A full reload with nothing edited since: a is not "changed".
    let (out, ok) = condo_cmd(&config, &["reload", "--tenant", "a"]);
    assert!(ok && out.contains("tenants changed: a"), "{out}");
    let (out, ok) = condo_cmd(&config, &["reload", "--tenant", "a"]);
    assert!(ok, "{out}");
    assert!(out.contains("tenants changed: none"), "{out}");
    assert!(
        out.contains("read their own certificates again: a"),
        "{out}"
    );

    // b's own file with a mistake: rejected, said, exit 2; b keeps serving.
    write_owned(
        &own,
        b"[[site]]\nname = \"b.test\"\nroot = \"/\"\n",
        &t.b,
        0o600,
    );
    let out = Command::new(CONDO)
        .args(["reload", "--tenant", "b", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("is rejected (1 mistake)") && text.contains(":3:1: key `site.0.root`"),
        "{text}"
    );
    assert_eq!(condo_run.get("b.test", "/").1, "200");
    write_owned(
        &own,
        b"[[site]]\nname = \"b.test\"\nautoindex = false\n",
        &t.b,
        0o600,
    );
    let (out, ok) = condo_cmd(&config, &["reload", "--tenant", "b"]);
    assert!(ok && out.contains("applies (1 sites set)"), "{out}");
    // A full reload (SIGHUP) with nothing edited: no tenant "changed", and a's
    // certificate re-read is said as what it is.
    let (out, ok) = condo_cmd(&config, &["reload"]);
    assert!(ok, "{out}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let line = loop {
        let log = condo_run.log_text();
        if let Some(l) = log
            .lines()
            .find(|l| l.contains("reloaded: ") && l.contains("tenants changed"))
        {
            break l.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reload line:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        line.contains("tenants changed: none")
            && line.contains("read their own certificates again: a"),
        "{line}"
    );
}
