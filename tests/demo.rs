//! README's first command: `condo demo` sets up two isolated tenants and serves them.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs `condo demo --clean` when dropped, so users and files go even on failure.
struct CleanDemo;

impl Drop for CleanDemo {
    fn drop(&mut self) {
        let _ = Command::new(CONDO).args(["demo", "--clean"]).status();
    }
}

#[test]
fn demo_serves_two_tenants_each_as_its_own_user() {
    if !require_root() {
        return;
    }
    let _clean = CleanDemo;
    // The demo listens on port, port + 1 (proxy) and port + 2 (admin): three free
    // ports below the ephemeral range, where parallel tests' port-0 listeners live.
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let mut port = 20000 + (std::process::id() % 12000) as u16;
    while !(free(port) && free(port + 1) && free(port + 2)) {
        port = if port > 32000 { 20000 } else { port + 3 };
    }
    let mut child = Command::new(CONDO)
        .args(["demo", "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("dispatcher ready")) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("demo did not come up:\n{}", seen.join("\n"));
            }
        }
    }
    let pass = format!("127.0.0.1:{port}").parse().unwrap();
    let proxy = format!("127.0.0.1:{}", port + 1).parse().unwrap();
    for addr in [pass, proxy] {
        let mut c = Client::connect(addr);
        assert!(
            c.get("a.demo.test", "/")
                .text()
                .contains("Hello from tenant a")
        );
        assert!(
            c.get("b.demo.test", "/")
                .text()
                .contains("Hello from tenant b")
        );
        assert_eq!(c.get("a.demo.test", "/peek.txt").status, 404);
    }
    // The files are 0600 and owned by each demo user: only that uid could have read them.
    let meta = std::fs::metadata("/var/lib/condo-demo/a/www/index.html").unwrap();
    let owner = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(
        std::os::unix::fs::MetadataExt::uid(&meta),
    ))
    .unwrap()
    .unwrap();
    assert_eq!(owner.name, "condo-demo-a");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "demo did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The commands it printed run this binary (not on PATH after `cargo run`), and its
    // ps line shows whole user names (`condo-demo-a`, not `condo-d+`).
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    let exe = std::fs::canonicalize(CONDO).unwrap();
    assert!(
        out.contains(&format!("`{} demo --clean`", exe.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("{} usage -c ", exe.display())),
        "{out}"
    );
    assert!(out.contains("ps -o user:20,"), "{out}");
}
