//! Binary upgrade (`condo upgrade`): a new master takes over the listening sockets,
//! the old processes drain and leave, and clients notice nothing.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn get_once(addr: SocketAddr, host: &str) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out.lines().next().unwrap_or("").to_string())
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

/// The new master is not this test's child: stop it by pid, whatever happens.
struct NewMaster(u32);

impl Drop for NewMaster {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.0 as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(self.0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

#[test]
fn upgrade_hands_the_sockets_over_and_drops_nothing() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("keepalive_timeout = \"3s\"");
    let condo = Condo::start(&config);
    let old_master = condo.pid();
    let old_dispatcher = condo.wait_child("dispatcher", None);
    let (pass, proxy) = (condo.pass, condo.proxy());
    for addr in [pass, proxy] {
        assert_eq!(get_once(addr, "a.test").unwrap(), "HTTP/1.1 200 OK");
    }
    // A new connection per request, on both listeners, all through the upgrade.
    let prober = std::thread::spawn(move || {
        let mut results = Vec::new();
        let end = Instant::now() + Duration::from_secs(8);
        while Instant::now() < end && results.len() < 50_000 {
            for (addr, host) in [(pass, "a.test"), (proxy, "b.test")] {
                results.push(get_once(addr, host));
            }
        }
        results
    });
    // Keep-alive load as well.
    let wrk = std::thread::spawn(move || {
        Command::new("wrk")
            .args(["-t", "1", "-c", "4", "-d", "7s", "-H", "Host: a.test"])
            .arg(format!("http://{pass}/"))
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(1500));
    let out = Command::new(CONDO)
        .args(["upgrade", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        condo.log_text()
    );
    let new_pid: u32 = said
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no new pid in {said}"));
    let _new = NewMaster(new_pid);
    eprintln!("{said}");
    assert_ne!(new_pid, old_master);
    let pid_file = std::fs::read_to_string(t.dir.path().join("run/condo.pid")).unwrap();
    assert_eq!(pid_file.trim(), new_pid.to_string());
    // The old master and its dispatcher drain and leave.
    let deadline = Instant::now() + Duration::from_secs(20);
    while (alive(old_master) || alive(old_dispatcher)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let results = prober.join().unwrap();
    let wrk = String::from_utf8_lossy(&wrk.join().unwrap().stdout).into_owned();
    let failed: Vec<_> = results
        .iter()
        .filter(|r| r.as_deref() != Ok("HTTP/1.1 200 OK"))
        .collect();
    eprintln!(
        "{} new-connection requests through the upgrade, {} failed {:?}\nwrk (keep-alive): {}",
        results.len(),
        failed.len(),
        &failed[..failed.len().min(5)],
        wrk.lines()
            .filter(|l| l.contains("requests in")
                || l.contains("Socket errors")
                || l.contains("Non-2xx"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    assert!(!alive(old_master), "the old master is still running");
    assert!(
        !alive(old_dispatcher),
        "the old dispatcher is still running"
    );
    assert!(
        failed.is_empty(),
        "{} requests failed across the upgrade, e.g. {:?}\n{}",
        failed.len(),
        &failed[..failed.len().min(3)],
        condo
            .log_text()
            .lines()
            .filter(|l| !l.contains(" INFO "))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!wrk.contains("Non-2xx"), "{wrk}");
    // An idle keep-alive connection of an old worker may be closed as it leaves
    // (as nginx's old workers do); at most one per wrk connection.
    if let Some(errors) = wrk.lines().find(|l| l.contains("Socket errors")) {
        let total: u32 = errors
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u32>().ok())
            .sum();
        assert!(total <= 4, "{errors}");
    }
    // The new master serves, and answers on the control socket.
    for addr in [pass, proxy] {
        assert_eq!(get_once(addr, "b.test").unwrap(), "HTTP/1.1 200 OK");
    }
    let status = Command::new(CONDO)
        .args(["status", "--json", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["pid"], new_pid);
}
