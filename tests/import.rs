//! `condo import`: realistic Apache vhosts and PHP-FPM pools as Debian (mpm-itk +
//! mod_php), cPanel (suexec + PHP-FPM via proxy_fcgi, userdata includes, an HTTPS
//! vhost) and ISPConfig (suexec, a per-site FPM pool, a dynamic AssignUserIDExpr)
//! write them, turned into condo config that `condo check` accepts, with what could not
//! be translated listed by file:line.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Copy tests/import to `to`, naming the test users and the scratch root.
fn fixtures(to: &Path, users: [&TestUser; 3]) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/import");
    for entry in glob::glob(&format!("{}/**/*", from.display()))
        .unwrap()
        .flatten()
    {
        let rel = entry.strip_prefix(&from).unwrap();
        let dest = to.join(rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            continue;
        }
        let text = std::fs::read_to_string(&entry)
            .unwrap()
            .replace("@A@", &users[0].name)
            .replace("@B@", &users[1].name)
            .replace("@C@", &users[2].name)
            .replace("@ROOT@", &to.display().to_string());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(dest, text).unwrap();
    }
}

#[test]
fn apache_and_php_fpm_configs_become_condo_config_that_checks() {
    if !require_root() {
        return;
    }
    let dir = scratch();
    let base = dir.path();
    let (a, b, c) = (
        TestUser::create("i"),
        TestUser::create("i"),
        TestUser::create("i"),
    );
    let dispatcher = TestUser::create("d");
    fixtures(base, [&a, &b, &c]);
    let out = Command::new(CONDO)
        .args(["import", "apache"])
        .arg(base.join("debian/alice.example.conf"))
        .arg(base.join("cpanel/httpd.conf"))
        .arg(base.join("ispconfig/web1.vhost"))
        .arg("--fpm")
        .arg(base.join("cpanel/bob.conf"))
        .arg("--fpm")
        .arg(base.join("ispconfig/web1.conf"))
        .arg("--out")
        .arg(base.join("out"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let notes = String::from_utf8_lossy(&out.stderr);
    eprintln!("{said}{notes}");
    assert!(out.status.success(), "{notes}");
    assert!(said.contains("3 tenants, 3 site files"), "{said}");
    // What was not translated, each with its place.
    for (file_line, directive) in [
        ("alice.example.conf:15:", "AllowOverride"),
        ("alice.example.conf:22:", "ErrorLog"),
        ("custom.conf:2:", "Header"),
        ("httpd.conf:7:", "UseCanonicalName"),
        ("web1.vhost:12:", "AssignUserIDExpr"),
        ("web1.vhost:19:", "RewriteRule"),
        ("web1.conf:10:", "pm.start_servers"),
        ("web1.conf:12:", "chdir"),
    ] {
        assert!(
            notes
                .lines()
                .any(|l| l.contains(file_line) && l.contains(directive)),
            "no note for {directive} at {file_line}:\n{notes}"
        );
    }
    let tenants = std::fs::read_to_string(base.join("out/tenants.toml")).unwrap();
    let site = |u: &TestUser| {
        std::fs::read_to_string(base.join(format!("out/sites/{}.toml", u.name))).unwrap()
    };
    let (site_a, site_b, site_c) = (site(&a), site(&b), site(&c));
    for expected in [
        "workers_max = 5",
        "max_requests = 500",
        "idle_timeout = \"10s\"",
        "request_timeout = \"120s\"",
        "rlimit_nofile = 4096",
        "workers_max = 3",
        "workers_min = 1",
    ] {
        assert!(
            tenants.contains(expected),
            "tenants lack {expected}:\n{tenants}"
        );
    }
    for (text, expected) in [
        (&site_a, "aliases = [\"www.alice.example\"]"),
        (&site_a, "max_clients = 20"),
        (&site_a, "nice = 5"),
        (&site_a, "index = [\"index.php\", \"index.html\"]"),
        (&site_a, "\"upload_max_filesize=32M\""),
        (&site_b, "tls = { cert = "),
        (&site_b, "APP_ENV = \"production\""),
        (&site_b, "TMPDIR = \"/home/bob/tmp\""),
        (&site_b, "\"memory_limit=256M\""),
        (
            &site_c,
            "\"open_basedir=/var/www/clients/client1/web1/web:/tmp\"",
        ),
        (&site_c, "PATH = \"/usr/local/bin:/usr/bin:/bin\""),
    ] {
        assert!(text.contains(expected), "site lacks {expected}:\n{text}");
    }
    // The result is condo config: with a [server] section it passes `condo check`.
    let main = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nuser = \"{}\"\nuid_range = [100, 65000]\nsites = \"out/sites/*.toml\"\nlog_dir = \"{}\"\nrun_dir = \"{}\"\n{tenants}",
        dispatcher.name,
        base.join("log").display(),
        base.join("run").display()
    );
    std::fs::write(base.join("condo.toml"), main).unwrap();
    // The vhosts name certificate files this test does not make: the tenants' own
    // files are left out of this check (what import wrote is what is checked here).
    let check = Command::new(CONDO)
        .args(["check", "--skip-tenant-files", "-c"])
        .arg(base.join("condo.toml"))
        .output()
        .unwrap();
    let checked = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "condo check:\n{checked}\n{tenants}\n{site_a}\n{site_b}\n{site_c}"
    );
    assert!(checked.contains("ok (3 tenants, 3 sites)"), "{checked}");

    // php-fpm pools alone: tenants without sites.
    let out = Command::new(CONDO)
        .args(["import", "php-fpm"])
        .arg(base.join("cpanel/bob.conf"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains(&format!("[tenant.{}]", b.name)) && text.contains("workers_max = 5"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no vhost given uses this pool"));
}
