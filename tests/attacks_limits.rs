//! Attack matrix, "safe limits by default" (issue 15, item 8): a tenant whose admin
//! wrote no limits at all still runs under a process and a memory cap, so its fork
//! bomb stops in its own cgroup and the other tenant keeps being served.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

/// The tenant group's file for `controller` (cgroup v1 or v2), from the worker's
/// /proc/PID/cgroup.
fn group_file(worker: u32, controller: &str, file: &str) -> PathBuf {
    let cgroups = std::fs::read_to_string(format!("/proc/{worker}/cgroup")).unwrap();
    let v1 = cgroups
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
            list.split(',')
                .any(|c| c == controller)
                .then(|| PathBuf::from(format!("/sys/fs/cgroup/{controller}{path}/{file}")))
        })
        .filter(|p| p.exists());
    v1.or_else(|| {
        let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
        Some(PathBuf::from(format!("/sys/fs/cgroup{path}/{file}"))).filter(|p| p.exists())
    })
    .unwrap_or_else(|| panic!("no {controller} group with {file} in:\n{cgroups}"))
}

fn field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in:\n{text}"))
        .to_string()
}

#[test]
fn a_fork_bomb_of_a_tenant_without_limits_stops_at_the_default_pids_max() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    // No limit keys anywhere: neither [defaults] nor [tenant.a] says a word.
    let config = t.config("");
    t.append_site(
        "a",
        "[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"\ntimeout = \"30s\"",
    );
    // Bounded: at most 2000 forks and 10 s; each child sleeps then exits by itself, and
    // the parent kills those it made before answering.
    t.script(
        "a",
        "cgi-bin/bomb.py",
        "#!/usr/bin/python3\nimport os, time\npids = []\nerr = None\nstart = time.time()\nwhile len(pids) < 2000 and time.time() - start < 10:\n    try:\n        pid = os.fork()\n    except OSError as e:\n        err = e.errno\n        break\n    if pid == 0:\n        time.sleep(15)\n        os._exit(0)\n    pids.append(pid)\nprint('Content-Type: text/plain\\n')\nprint(f'forked={len(pids)}')\nprint(f'errno={err}')\nfor p in pids:\n    os.kill(p, 9)\nfor p in pids:\n    os.waitpid(p, 0)\n",
    );
    let condo = Condo::start(&config);
    let (body, ok) = curl(&["-H", "Host: a.test", &format!("http://{}/", condo.pass)]);
    assert!(ok && body == "site A\n", "{body}");
    let worker = condo.wait_child("worker", Some("a"));
    let pids_max = std::fs::read_to_string(group_file(worker, "pids", "pids.max")).unwrap();
    assert_eq!(
        pids_max.trim(),
        "512",
        "the default pids_max is not applied"
    );
    let bomb = {
        let url = format!("http://{}/cgi-bin/bomb.py", condo.pass);
        std::thread::spawn(move || curl(&["--max-time", "40", "-H", "Host: a.test", &url]))
    };
    // While a's processes are at their cap, b is served as usual, and quickly.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut served = 0;
    while !bomb.is_finished() && started.elapsed() < Duration::from_secs(30) {
        let t0 = Instant::now();
        let (body, ok) = curl(&["-H", "Host: b.test", &format!("http://{}/", condo.pass)]);
        slowest = slowest.max(t0.elapsed());
        assert!(
            ok && body == "site B\n",
            "b not served during a's fork bomb: {body}"
        );
        served += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let (out, ok) = bomb.join().unwrap();
    assert!(ok, "{out}");
    let forked: usize = field(&out, "forked").parse().unwrap();
    assert!(forked < 512, "{out}");
    assert_eq!(field(&out, "errno"), "11", "EAGAIN expected: {out}");
    assert!(served >= 1, "b was never asked during the bomb");
    assert!(slowest < Duration::from_secs(2), "b took {slowest:?}");
    eprintln!("a forked {forked} before EAGAIN; b served {served} times, slowest {slowest:?}");
    // And a recovers once its bomb is gone.
    let (body, ok) = curl(&["-H", "Host: a.test", &format!("http://{}/", condo.pass)]);
    assert!(ok && body == "site A\n", "{body}");
}

#[test]
fn check_warns_about_a_tenant_left_explicitly_unlimited() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config_tenants("", "memory_max = \"max\"\npids_max = \"max\"", "");
    let out = std::process::Command::new(CONDO)
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "a warning is not an error: {text}");
    for key in ["tenant.a.memory_max", "tenant.a.pids_max"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("warning: ") && l.contains(key)),
            "no warning for {key}:\n{text}"
        );
    }
    assert!(!text.contains("tenant.b."), "b has the defaults:\n{text}");
}
