//! A tenant's own config layer (`user_config`): applied for the tenant's own sites,
//! read by the tenant's worker (never by root: strace of the master shows it), admin
//! keys and other tenants' sites refused with file:line, and a broken file keeps the
//! last good version serving.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const GOOD: &str = "[[site]]\nname = \"a.test\"\nindex = [\"home.html\"]\n\n[site.env]\nMODE = \"tenant\"\n\n[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"\n";

const BAD: &str = "[[site]]\nname = \"a.test\"\nroot = \"/\"\nindex = [\"other.html\"]\n\n[[site]]\nname = \"b.test\"\nindex = [\"x\"]\n\n[server]\nuser = \"root\"\n";

const SCRIPT: &str = "#!/usr/bin/python3\nimport os\nprint(\"Content-Type: text/plain\\n\\nMODE=\" + os.environ.get(\"MODE\", \"-\"))\n";

#[test]
fn a_tenants_layer_applies_to_its_sites_only_and_a_broken_one_changes_nothing() {
    if !require_root() {
        return;
    }
    let has_strace = Command::new("strace").arg("-V").output().is_ok();
    if !has_strace {
        assert!(std::env::var("CI").is_err(), "strace is not installed");
        eprintln!("skipping: strace is not installed");
        return;
    }
    let t = TwoTenants::new();
    let home_a = t.root_a.parent().unwrap().to_path_buf();
    let layer = home_a.join("condo-user.toml");
    let config = t.config_tenants("", &format!("user_config = \"{}\"", layer.display()), "");
    write_owned(&layer, GOOD.as_bytes(), &t.a, 0o600);
    write_owned(&t.root_a.join("home.html"), b"a's home page\n", &t.a, 0o644);
    t.script("a", "cgi-bin/env.py", SCRIPT);
    let condo = Condo::start(&config);
    let get = |host: &str, path: &str| {
        curl(&[
            "-H",
            &format!("Host: {host}"),
            &format!("http://{}{path}", condo.pass),
        ])
        .0
    };
    assert_eq!(
        get("a.test", "/"),
        "a's home page\n",
        "{}",
        condo.log_text()
    );
    assert_eq!(get("a.test", "/cgi-bin/env.py"), "MODE=tenant\n");
    assert_eq!(get("b.test", "/"), "site B\n");

    // The tenant breaks its file, then asks for it to be applied, while the master
    // is traced: root never opens the tenant's file, and nothing of it applies.
    write_owned(&layer, BAD.as_bytes(), &t.a, 0o600);
    let trace = t.dir.path().join("master.strace");
    let mut strace = Command::new("strace")
        .args(["-e", "trace=open,openat,openat2", "-o"])
        .arg(&trace)
        .arg("-p")
        .arg(condo.pid().to_string())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new(CONDO)
        .args(["reload", "--tenant", "a", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    // Applied, with the tenant's own file rejected: exit 2, each mistake named.
    assert!(
        out.status.code() == Some(2)
            && said.contains("is rejected (3 mistakes)")
            && said.contains("key `site.0.root`"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The new worker has read the file once it serves.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condo.log_text().contains("was not applied") && Instant::now() < deadline {
        get("a.test", "/");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = strace.kill();
    let _ = strace.wait();
    let traced = std::fs::read_to_string(&trace).unwrap();
    assert!(traced.contains("openat"), "strace saw nothing: {traced}");
    assert!(
        !traced.contains("condo-user.toml"),
        "the master opened the tenant's file:\n{traced}"
    );
    // The last good layer keeps serving; b is untouched.
    assert_eq!(get("a.test", "/"), "a's home page\n");
    assert_eq!(get("a.test", "/cgi-bin/env.py"), "MODE=tenant\n");
    assert_eq!(get("b.test", "/"), "site B\n");
    // Every mistake, with its place, in the server's log and in a's own error log.
    let site_log = t.error_log("a.test");
    for (needle, place) in [
        ("site.0.root", ":3:"),
        ("not one of this tenant's sites", ":7:"),
        ("`server", ":10:"),
    ] {
        for (which, text) in [
            ("server log", condo.log_text()),
            ("a's error log", site_log.clone()),
        ] {
            assert!(
                text.lines()
                    .any(|l| l.contains(needle) && l.contains(place)),
                "{which} lacks {needle} at {place}:\n{text}"
            );
        }
    }
    assert!(!get("b.test", "/").contains('x'));
}
