//! A host with thousands of tenants is served (issue 23): the routing table of 5,000
//! tenants and 10,000 sites is far past one IPC frame (128 KiB), which once left the
//! dispatcher without routes while the master said it was ready. Tenants are plain
//! passwd/group entries (the way a host's account database holds them), added here and
//! removed on drop; this is the only test in its binary, so no `useradd` of another test
//! runs beside the edit.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const TENANTS: u32 = 5_000;
/// Uids (and gids) of the generated accounts: TENANTS of them from here.
const FIRST_UID: u32 = 50_000;

/// Generated accounts in /etc/passwd and /etc/group, removed on drop.
struct Accounts {
    prefix: String,
}

impl Accounts {
    fn create(prefix: &str, home: impl Fn(u32) -> PathBuf) -> Self {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        let group = std::fs::read_to_string("/etc/group").unwrap();
        let taken = |text: &str, id: u32| {
            text.lines()
                .any(|l| l.split(':').nth(2) == Some(&id.to_string()))
        };
        for id in FIRST_UID..FIRST_UID + TENANTS {
            assert!(
                !taken(&passwd, id) && !taken(&group, id),
                "uid/gid {id} is taken: this test needs {FIRST_UID}..{} free",
                FIRST_UID + TENANTS
            );
        }
        let accounts = Self {
            prefix: prefix.to_string(),
        };
        let mut p = std::fs::OpenOptions::new()
            .append(true)
            .open("/etc/passwd")
            .unwrap();
        let mut g = std::fs::OpenOptions::new()
            .append(true)
            .open("/etc/group")
            .unwrap();
        let (mut plines, mut glines) = (String::new(), String::new());
        for i in 0..TENANTS {
            let id = FIRST_UID + i;
            let name = format!("{prefix}{i}");
            plines.push_str(&format!(
                "{name}:x:{id}:{id}::{}:/usr/sbin/nologin\n",
                home(i).display()
            ));
            glines.push_str(&format!("{name}:x:{id}:\n"));
        }
        p.write_all(plines.as_bytes()).unwrap();
        g.write_all(glines.as_bytes()).unwrap();
        accounts
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        for file in ["/etc/passwd", "/etc/group"] {
            let text = std::fs::read_to_string(file).unwrap();
            let kept: String = text
                .lines()
                .filter(|l| !l.starts_with(&self.prefix))
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(file, kept).unwrap();
        }
    }
}

fn get(addr: std::net::SocketAddr, host: &str) -> (String, bool) {
    curl(&[
        "-s",
        "--max-time",
        "10",
        "-H",
        &format!("Host: {host}"),
        &format!("http://{addr}/"),
    ])
}

#[test]
fn five_thousand_tenants_are_served() {
    if !require_root() {
        return;
    }
    let dir = scratch();
    let base = dir.path().to_path_buf();
    let prefix = format!("cs{}x", std::process::id() % 100_000);
    let home = |i: u32| base.join(format!("h/{i}"));
    let accounts = Accounts::create(&prefix, home);
    let dispatcher = TestUser::create("d");
    std::fs::create_dir_all(base.join("sites")).unwrap();
    let mut main = format!(
        "[server]\nlisten = [{{ addr = \"127.0.0.1:0\", handover = \"pass\" }}, {{ addr = \"127.0.0.1:0\", handover = \"proxy\" }}]\n\
         user = \"{}\"\nuid_range = [100, {}]\nlog_dir = \"{}\"\nrun_dir = \"{}\"\nstate_dir = \"{}\"\ncgroup_parent = \"condoscale{}\"\n",
        dispatcher.name,
        FIRST_UID + TENANTS,
        base.join("log").display(),
        base.join("run").display(),
        base.join("state").display(),
        std::process::id()
    );
    for i in 0..TENANTS {
        let root = home(i).join("www");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("index.html"), format!("tenant {i}\n")).unwrap();
        let id = FIRST_UID + i;
        for p in [home(i), root.clone(), root.join("index.html")] {
            std::os::unix::fs::chown(&p, Some(id), Some(id)).unwrap();
        }
        main.push_str(&format!("[tenant.t{i}]\nuser = \"{prefix}{i}\"\n"));
        std::fs::write(
            base.join(format!("sites/t{i}.toml")),
            format!(
                "[[site]]\nname = \"t{i}.test\"\ntenant = \"t{i}\"\nroot = \"{r}\"\n\
                 [[site]]\nname = \"t{i}-shop.test\"\naliases = [\"www.t{i}-shop.test\"]\ntenant = \"t{i}\"\nroot = \"{r}\"\n",
                r = root.display()
            ),
        )
        .unwrap();
    }
    let config = base.join("condo.toml");
    std::fs::write(&config, main).unwrap();

    let check = Instant::now();
    let out = Command::new(CONDO)
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    eprintln!("condo check of {TENANTS} tenants: {:?}", check.elapsed());
    assert!(
        out.status.success(),
        "check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let started = Instant::now();
    let condo = Condo::start(&config);
    let (body, ok) = get(condo.pass, &format!("t{}.test", TENANTS - 1));
    assert!(
        ok && body == format!("tenant {}\n", TENANTS - 1),
        "the last tenant is not served: {body:?}\n{}",
        condo.log_text()
    );
    eprintln!("first request served {:?} after start", started.elapsed());
    for i in [0, TENANTS / 2] {
        let (body, ok) = get(condo.proxy(), &format!("www.t{i}-shop.test"));
        assert!(ok && body == format!("tenant {i}\n"), "t{i}: {body:?}");
    }
    // A reload (here: one tenant's) delivers the whole table again.
    let reload = Instant::now();
    let out = Command::new(CONDO)
        .args(["reload", "-c"])
        .arg(&config)
        .args(["--tenant", "t7"])
        .output()
        .unwrap();
    eprintln!(
        "reload --tenant t7: {:?}: {}",
        reload.elapsed(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    assert!(
        out.status.success(),
        "reload --tenant: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, ok) = get(condo.pass, "t7.test");
    assert!(ok && body == "tenant 7\n", "t7 after reload: {body:?}");
    std::thread::sleep(Duration::from_millis(10));
    drop(condo);
    drop(dispatcher);
    drop(accounts);
}
