//! A worker that goes away takes everything it started with it (issue 21): killed, retired
//! by a reload, or recycled at `worker_max_requests`, its PHP and app processes are gone within
//! a bound, deterministically, while the other tenant keeps being served.

mod common;

use std::time::{Duration, Instant};

use common::*;

const PHP: &str = "<?php usleep(300000); echo 'php ok';";

/// Pids of the live (not zombie) processes whose real uid is `uid`.
fn processes_of(uid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                return false;
            };
            status_field(&status, "State")
                .starts_with('Z')
                .then_some(())
                .is_none()
                && status_field(&status, "Uid").split_whitespace().next() == Some(&uid.to_string())
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .is_ok_and(|s| !status_field(&s, "State").starts_with('Z'))
}

fn describe(pids: &[u32]) -> String {
    pids.iter()
        .map(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            format!("{p}: {}", String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Wait until none of `pids` is alive; panics with what is left after `bound`.
fn gone_within(pids: &[u32], bound: Duration, what: &str) {
    let start = Instant::now();
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() {
            eprintln!(
                "{what}: all {} gone after {:?}",
                pids.len(),
                start.elapsed()
            );
            return;
        }
        assert!(
            start.elapsed() < bound,
            "{what}: still alive after {bound:?}:\n{}",
            describe(&left)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Setup {
    condo: Condo,
    t: TwoTenants,
}

impl Setup {
    fn new(extra_a: &str) -> Self {
        let t = TwoTenants::new();
        let config = t.config_tenants("", extra_a, "");
        write_owned(&t.root_a.join("slow.php"), PHP.as_bytes(), &t.a, 0o644);
        write_owned(&t.root_a.join("app.py"), UNIX_APP.as_bytes(), &t.a, 0o644);
        t.append_site("a", &site_a(&t, 0));
        let condo = Condo::start(&config);
        Self { condo, t }
    }

    fn get(&self, host: &str, path: &str) -> String {
        let (out, ok) = curl(&[
            "-s",
            "-H",
            &format!("Host: {host}"),
            &format!("http://{}{path}", self.condo.pass),
        ]);
        assert!(ok, "{host}{path}: {out}\n{}", self.condo.log_text());
        out
    }

    /// Two PHP requests at once (two php-cgi processes) and one app request: returns
    /// every process of tenant a, the worker included; at least `min` of them.
    fn warm_a(&self, min: usize) -> Vec<u32> {
        let pass = self.condo.pass;
        let php: Vec<_> = (0..2)
            .map(|_| {
                std::thread::spawn(move || {
                    curl(&[
                        "-s",
                        "-H",
                        "Host: a.test",
                        &format!("http://{pass}/slow.php"),
                    ])
                })
            })
            .collect();
        for h in php {
            let (out, ok) = h.join().unwrap();
            assert!(
                ok && out == "php ok",
                "PHP: {out}\n{}",
                self.condo.log_text()
            );
        }
        assert_eq!(self.get("a.test", "/app/"), "app ok");
        let procs = processes_of(self.t.a.uid);
        assert!(
            procs.len() >= min,
            "tenant a runs only:\n{}",
            describe(&procs)
        );
        procs
    }

    fn b_served(&self) {
        assert_eq!(self.get("b.test", "/"), "site B\n");
    }
}

fn site_a(t: &TwoTenants, generation: u32) -> String {
    format!(
        "[site.env]\nGENERATION = \"{generation}\"\n\
         [[site.route]]\nsuffix = \".php\"\nhandler = \"fastcgi\"\ncommand = [\"php-cgi\"]\nprocesses_max = 2\n\
         [[site.route]]\npath = \"/app/\"\nhandler = \"app\"\nworkdir = \"{}\"\ncommand = [\"python3\", \"app.py\"]\n",
        t.root_a.display()
    )
}

#[test]
fn a_killed_worker_leaves_no_process() {
    if !require_root() {
        return;
    }
    let s = Setup::new("");
    // The worker, two php-cgi and the app (python3) at least.
    let before = s.warm_a(4);
    let worker = s.condo.wait_child("worker", Some("a"));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(worker as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    gone_within(&before, Duration::from_secs(3), "killed worker's processes");
    s.b_served();
    // And the tenant comes back whole.
    let again = s.warm_a(4);
    assert!(again.iter().all(|p| !before.contains(p)));
}

#[test]
fn a_worker_retired_by_a_reload_leaves_no_process() {
    if !require_root() {
        return;
    }
    let s = Setup::new("");
    // The worker, two php-cgi and the app (python3) at least.
    let before = s.warm_a(4);
    // A change to a's site: its worker is replaced; the old one retires.
    let site = s.t.dir.path().join("sites/a.toml");
    let text = std::fs::read_to_string(&site).unwrap();
    std::fs::write(
        &site,
        text.replace("GENERATION = \"0\"", "GENERATION = \"1\""),
    )
    .unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(s.condo.pid() as i32).unwrap(),
        rustix::process::Signal::HUP,
    )
    .unwrap();
    gone_within(
        &before,
        Duration::from_secs(10),
        "retired worker's processes",
    );
    s.b_served();
    let again = s.warm_a(4);
    assert!(again.iter().all(|p| !before.contains(p)));
}

#[test]
fn workers_recycled_at_worker_max_requests_leave_no_process() {
    if !require_root() {
        return;
    }
    // Every few requests the worker is replaced: each generation's processes must go.
    let s = Setup::new("worker_max_requests = 4\n");
    let mut seen: Vec<u32> = Vec::new();
    for _ in 0..4 {
        let procs = s.warm_a(2);
        seen.extend(
            procs
                .iter()
                .filter(|p| !seen.contains(p))
                .collect::<Vec<_>>(),
        );
        for _ in 0..4 {
            s.get("a.test", "/");
        }
    }
    // Whatever is alive now belongs to the current generation.
    let current = s.condo.wait_child("worker", Some("a"));
    let stale: Vec<u32> = seen
        .iter()
        .copied()
        .filter(|&p| p != current && !is_descendant(p, current))
        .collect();
    gone_within(
        &stale,
        Duration::from_secs(10),
        "recycled workers' processes",
    );
    s.b_served();
}

fn is_descendant(pid: u32, ancestor: u32) -> bool {
    let mut p = pid;
    for _ in 0..64 {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) else {
            return false;
        };
        let Ok(parent) = status_field(&status, "PPid").parse::<u32>() else {
            return false;
        };
        if parent == ancestor {
            return true;
        }
        if parent <= 1 {
            return false;
        }
        p = parent;
    }
    false
}
