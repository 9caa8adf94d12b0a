//! The Debian package: built with cargo-deb from the test build, installed with dpkg on
//! this machine, its files checked (unit, man page, logrotate), the installed binary run
//! with the installed example config under a `$NOTIFY_SOCKET` this test listens on
//! (READY, RELOADING + READY on SIGHUP, STOPPING on SIGTERM), then purged.
//!
//! PID 1 here is not systemd, so `systemctl start condo` cannot be run; the unit is
//! checked with `systemd-analyze verify` and the notify protocol end to end instead.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn tool(name: &str, args: &[&str]) -> bool {
    let ok = Command::new(name)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "{name} is not installed (see .ci/run)"
        );
        eprintln!("skipping: {name} is not installed");
    }
    ok
}

/// `dpkg --purge condo` however the test ends.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "condo"])
            .stdout(Stdio::null())
            .status();
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The next notify message (states separated by newlines), within 10 s.
fn next_notice(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notify message within 10 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn the_deb_installs_serves_with_sd_notify_and_purges() {
    if !require_root()
        || !tool("cargo-deb", &["--version"])
        || !tool("dpkg", &["--version"])
        || !tool("systemd-analyze", &["--version"])
        || !tool("logrotate", &["--version"])
        || !tool("man", &["--version"])
    {
        return;
    }
    if Path::new("/usr/bin/condo").exists() {
        assert!(
            Command::new("dpkg")
                .args(["-s", "condo"])
                .output()
                .unwrap()
                .status
                .success(),
            "/usr/bin/condo exists and is not from the condo package: not touching it"
        );
    }
    let dir = scratch();
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // What packaging/build-deb.sh does, from the binary this test run built (no
    // second cargo build inside `cargo test`).
    for (section, file) in [("8", "target/condo.8"), ("5", "target/condo.toml.5")] {
        let man = Command::new(CONDO)
            .args(["man", "--section", section])
            .output()
            .unwrap();
        assert!(man.status.success());
        std::fs::write(manifest.join(file), &man.stdout).unwrap();
    }
    let deb = dir.path().join("condo.deb");
    run(Command::new("cargo")
        .args([
            "deb",
            "--no-build",
            "--no-strip",
            "--fast",
            "--profile",
            "dev",
            "-o",
        ])
        .arg(&deb)
        .current_dir(&manifest));
    let _installed = Installed;
    run(Command::new("dpkg").arg("-i").arg(&deb));

    // Files in place and sound.
    let version = run(Command::new("/usr/bin/condo").arg("--version"));
    assert!(version.starts_with("condo "), "{version}");
    let verify = Command::new("systemd-analyze")
        .args(["verify", "/lib/systemd/system/condo.service"])
        .output()
        .unwrap();
    let verify_text = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {verify_text}"
    );
    let page = run(Command::new("man")
        .args(["-l", "/usr/share/man/man8/condo.8.gz"])
        .env("MANWIDTH", "80"));
    for section in ["SYNOPSIS", "restart-tenant", "SIGNALS", "control.sock"] {
        assert!(page.contains(section), "man page lacks {section}:\n{page}");
    }
    // Rendered, not raw roff or stray control characters (form feeds where font
    // escapes were meant once read "BTERMR"), and no pages referred to that are not shipped.
    for wrong in ["BTERMR", "\\f", "condo-serve(8)", "\u{c}"] {
        assert!(!page.contains(wrong), "man page has {wrong:?}:\n{page}");
    }
    let keys = run(Command::new("man")
        .args(["-l", "/usr/share/man/man5/condo.toml.5.gz"])
        .env("MANWIDTH", "80"));
    for key in [
        "memory_max = ",
        "worker_queue_max = ",
        "deny_backup = ",
        "processes_max = ",
    ] {
        assert!(keys.contains(key), "condo.toml(5) lacks {key}:\n{keys}");
    }
    run(Command::new("logrotate").args(["-d", "/etc/logrotate.d/condo"]));
    assert!(
        nix::unistd::User::from_name("condo").unwrap().is_some(),
        "postinst made no condo user"
    );
    let log_dir = std::fs::metadata("/var/log/condo").unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&log_dir.permissions()) & 0o777,
        0o711
    );

    // The installed binary serves the installed example, adapted to this test, and
    // speaks systemd's notify protocol.
    let tenant = TestUser::create("p");
    let root = docroot(dir.path(), "t", &tenant);
    write_owned(&root.join("index.html"), b"packaged\n", &tenant, 0o644);
    let example = std::fs::read_to_string("/usr/share/doc/condo/examples/condo.toml").unwrap();
    let config = example
        .replace("0.0.0.0:80", "127.0.0.1:0")
        .replace(
            "/var/log/condo",
            &dir.path().join("log").display().to_string(),
        )
        .replace("/run/condo", &dir.path().join("run").display().to_string())
        .replace(
            "/var/lib/condo",
            &dir.path().join("state").display().to_string(),
        )
        .replace("uid_range = [1000, 60000]", "uid_range = [100, 65000]")
        .replacen(
            "[server]\n",
            &format!(
                "[server]\ncgroup_parent = \"condopkg{}\"\n",
                std::process::id()
            ),
            1,
        )
        + &format!("[tenant.t]\nuser = \"{}\"\n", tenant.name);
    std::fs::create_dir_all(dir.path().join("sites")).unwrap();
    std::fs::write(dir.path().join("condo.toml"), config).unwrap();
    std::fs::write(
        dir.path().join("sites/t.toml"),
        format!(
            "[[site]]\nname = \"t.test\"\ntenant = \"t\"\nroot = \"{}\"\n",
            root.display()
        ),
    )
    .unwrap();
    run(Command::new("/usr/bin/condo")
        .args(["check", "-c"])
        .arg(dir.path().join("condo.toml")));
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut server = Command::new("/usr/bin/condo")
        .args(["serve", "-c"])
        .arg(dir.path().join("condo.toml"))
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = rustix::process::Pid::from_raw(server.id() as i32).unwrap();
    let stop = |server: &mut std::process::Child| {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = server.kill();
        let _ = server.wait();
    };
    let ready = next_notice(&notify);
    if !ready.contains("READY=1") {
        stop(&mut server);
        panic!("first notice: {ready}");
    }
    assert!(
        ready.contains("STATUS=serving 1 tenants, 1 sites"),
        "{ready}"
    );
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    let reloading = next_notice(&notify);
    assert!(
        reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(next_notice(&notify).contains("READY=1"));
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(next_notice(&notify).contains("STOPPING=1"));
    stop(&mut server);
    drop(tenant);

    // Purged: the files and the dispatcher's account are gone.
    drop(_installed);
    assert!(!Path::new("/usr/bin/condo").exists());
    assert!(!Path::new("/lib/systemd/system/condo.service").exists());
    assert!(nix::unistd::User::from_name("condo").unwrap().is_none());
}
