//! Attack-matrix rows on tenants' cgroups and the master's time (issue 15, items 6 and
//! 11): a tenant that leaves a process behind in its group must not stall the root
//! master (whose single event loop starts every tenant's workers), and two condo
//! instances on one host must never share tenant groups.
//!
//! v1 on this machine and CI (the v2 paths are the same code with `cgroup.kill`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A CGI that double-forks a long-lived `sleep` into a session of its own (out of reach
/// of the worker's parent-death signal and process-group kills), with every fd
/// closed so the request completes, and prints its pid.
const LEAVE_BEHIND: &str = "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\n( setsid sleep 300 </dev/null >/dev/null 2>&1 & echo \"left=$!\" )\n";

fn alive(pid: u32) -> bool {
    // A zombie nobody reaped yet has exited: it counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// The path of `pid`'s group in the v1 `pids` hierarchy, e.g. `/condo/a`.
fn pids_group(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.split_once(":pids:").map(|(_, p)| p.to_string()))
        .unwrap_or_else(|| panic!("no pids group for {pid}: {text:?}"))
}

/// Processes this test made (and condo should have killed) are SIGKILLed, and the
/// cgroup parents it made removed, on drop: also when an assertion failed.
#[derive(Default)]
struct Cleanup {
    pids: Vec<u32>,
    parents: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for &pid in &self.pids {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        for parent in &self.parents {
            for hierarchy in glob::glob(&format!("{CGROUP_ROOT}/*/{parent}"))
                .unwrap()
                .flatten()
            {
                if let Ok(entries) = std::fs::read_dir(&hierarchy) {
                    for e in entries.flatten().filter(|e| e.path().is_dir()) {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
                let _ = std::fs::remove_dir(&hierarchy);
            }
        }
    }
}

fn cgroup_parent(config: &Path) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("cgroup_parent = \""))
        .map(|v| v.trim_end_matches('"').to_string())
        .expect("the test config names a cgroup_parent")
}

/// The test config without its `cgroup_parent` line: condo's default applies.
fn default_cgroup_parent(config: &Path) {
    let text = std::fs::read_to_string(config).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("cgroup_parent"))
        .collect();
    std::fs::write(config, kept.join("\n") + "\n").unwrap();
}

fn get_ok(addr: std::net::SocketAddr, host: &str, path: &str) -> (Duration, String) {
    let started = Instant::now();
    let mut c = Client::connect(addr);
    let r = c.get(host, path);
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{host}{path}: {}", r.text());
    (took, r.text())
}

/// One GET with a long read timeout: how long it took and the status, if any.
fn timed_get(addr: std::net::SocketAddr, host: &str) -> (Duration, Option<u16>) {
    let started = Instant::now();
    let mut c = Client::connect(addr);
    c.stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    c.send(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    let status = c.read_response(false).map(|r| r.status);
    (started.elapsed(), status)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Item 6. Tenant A's CGI leaves a setsid'd `sleep 300` in A's group, then A's worker
/// leaves (`condo restart-tenant a`) — ten times. Each time, right after A's worker is
/// gone (the master is tearing A's group down), B's worker is cold-started: B's start
/// must not wait for A's group (it took ~1 s each when the master retried the removal
/// inside its loop). And A's leftover process is killed within 5 s: nothing of a
/// tenant outlives its last worker.
#[test]
fn a_tenants_leftover_process_neither_stalls_the_master_nor_survives() {
    if !require_root() || !require_cgroup_v1() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    let parent = cgroup_parent(&config);
    let mut cleanup = Cleanup::default();
    cleanup.parents.push(parent.clone());
    t.append_site(
        "a",
        "[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"\ntimeout = \"5s\"",
    );
    t.script("a", "cgi-bin/leave.sh", LEAVE_BEHIND);
    let condo = Condo::start(&config);
    get_ok(condo.pass, "b.test", "/");

    // B made cold: its worker drains and leaves, the next request starts a new one.
    let make_b_cold = || {
        let (said, ok) = condo_cmd(&config, &["restart-tenant", "b"]);
        assert!(ok, "{said}");
        assert!(
            eventually(Duration::from_secs(5), || condo
                .children("worker", Some("b"))
                .is_empty()),
            "b's worker did not leave; log:\n{}",
            condo.log_text()
        );
    };
    let mut quiet = Vec::new();
    for _ in 0..5 {
        make_b_cold();
        quiet.push(get_ok(condo.pass, "b.test", "/").0);
    }

    let mut during = Vec::new();
    // (leftover pid, when A's worker was gone)
    let mut left: Vec<(u32, Instant)> = Vec::new();
    for round in 0..10 {
        make_b_cold();
        let (_, body) = get_ok(condo.pass, "a.test", "/cgi-bin/leave.sh");
        let pid: u32 = body
            .lines()
            .find_map(|l| l.strip_prefix("left="))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no left=PID in {body:?}"));
        cleanup.pids.push(pid);
        assert!(
            alive(pid),
            "round {round}: the leftover {pid} is not running"
        );
        let group = pids_group(pid);
        assert!(
            group.starts_with(&format!("/{parent}/a")),
            "round {round}: the leftover runs in {group}, not in a's group"
        );
        // (The CGI printed the pid at the fork: setsid and exec follow a moment later.)
        let detached = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let sid = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(3).map(str::to_string));
            sid == Some(pid.to_string()) && stat.contains("(sleep)")
        };
        assert!(
            eventually(Duration::from_secs(2), detached),
            "round {round}: {pid} is not a sleep leading its own session"
        );
        let worker = condo.wait_child("worker", Some("a"));
        let (said, ok) = condo_cmd(&config, &["restart-tenant", "a"]);
        assert!(ok, "{said}");
        assert!(
            eventually(Duration::from_secs(5), || !alive(worker)),
            "a's worker {worker} did not leave"
        );
        let gone = Instant::now();
        // The master now handles A's worker exit; B's cold start goes through the
        // same loop.
        during.push(get_ok(condo.pass, "b.test", "/").0);
        left.push((pid, gone));
    }

    let p50_quiet = median(quiet.clone());
    let p50 = median(during.clone());
    let max = during.iter().max().copied().unwrap();
    eprintln!(
        "b cold starts: quiet p50 {p50_quiet:?} {quiet:?}; while a's groups are torn down p50 {p50:?}, max {max:?}: {during:?}"
    );
    // 200 ms, or three times the quiet cold start on a machine loaded by other work;
    // never near the ~1 s each of A's exits cost when the loop waited.
    let bound = (p50_quiet * 3).clamp(Duration::from_millis(200), Duration::from_millis(600));
    assert!(
        p50 < bound,
        "b's cold starts wait for a's group: p50 {p50:?} ({during:?}); log:\n{}",
        condo.log_text()
    );

    for (pid, gone) in &left {
        let limit = Duration::from_secs(5).saturating_sub(gone.elapsed());
        let dead = eventually(limit, || !alive(*pid));
        assert!(
            dead,
            "a's leftover {pid} still runs {:?} after a's worker left; log:\n{}",
            gone.elapsed(),
            condo.log_text()
        );
    }
    // And none of A's processes at all is left once its worker is gone.
    let a_uid = t.a.uid.to_string();
    let of_a: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                status_field(&s, "Uid").split_whitespace().next() == Some(a_uid.as_str())
            }) && alive(*pid)
        })
        .collect();
    let worker_a = condo.children("worker", Some("a"));
    assert!(
        of_a.iter().all(|p| worker_a.contains(p)),
        "processes of a left: {of_a:?} (workers {worker_a:?})"
    );
    // B kept being served throughout, and still is.
    get_ok(condo.pass, "b.test", "/");
    drop(condo);
    // Condo removed every group it made when it stopped.
    let groups: Vec<PathBuf> = glob::glob(&format!("{CGROUP_ROOT}/*/{parent}"))
        .unwrap()
        .flatten()
        .collect();
    assert!(groups.is_empty(), "left behind: {groups:?}");
}

/// Item 11. Two instances with the default `cgroup_parent` (each its own run_dir,
/// log_dir, ports and users, the same tenant names): their tenants' groups are
/// distinct and the second starts at once (it waited 2 s per group of the first's
/// when both used `condo/<tenant>`). An instance configured with the same
/// `cgroup_parent` as a running one is refused with a clear error, and the running
/// one keeps serving.
#[test]
fn two_instances_never_share_tenant_groups() {
    if !require_root() || !require_cgroup_v1() {
        return;
    }
    let mut cleanup = Cleanup::default();
    let one = TwoTenants::new();
    let config_one = one.config("");
    default_cgroup_parent(&config_one);
    let two = TwoTenants::new();
    let config_two = two.config("");
    default_cgroup_parent(&config_two);

    let first = Condo::start(&config_one);
    get_ok(first.pass, "a.test", "/");
    get_ok(first.pass, "b.test", "/");
    let first_a = first.wait_child("worker", Some("a"));
    let first_b = first.wait_child("worker", Some("b"));
    let group_one = pids_group(first_a);
    let parent_one = group_one
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap()
        .to_string();
    cleanup.parents.push(parent_one.clone());

    let started = Instant::now();
    let second = Condo::start(&config_two);
    let (first_request, status) = timed_get(second.pass, "a.test");
    let took = started.elapsed();
    eprintln!("the second instance answered {status:?} {took:?} after it was started");
    assert_eq!(status, Some(200), "log:\n{}", second.log_text());
    get_ok(second.pass, "b.test", "/");
    let second_a = second.wait_child("worker", Some("a"));
    let group_two = pids_group(second_a);
    let parent_two = group_two
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap()
        .to_string();
    cleanup.parents.push(parent_two.clone());
    eprintln!(
        "first instance's a in {group_one}, second's in {group_two}; the second served its first request {took:?} after it was started (that request {first_request:?})"
    );
    assert_ne!(group_one, group_two, "two instances share a tenant group");
    assert_ne!(parent_one, parent_two);
    assert_ne!(
        pids_group(first_b),
        pids_group(second.wait_child("worker", Some("b")))
    );
    assert!(
        took < Duration::from_secs(1),
        "the second instance took {took:?} to serve; log:\n{}",
        second.log_text()
    );
    // Both serve; the first instance's workers never moved.
    get_ok(first.pass, "a.test", "/");
    get_ok(second.pass, "b.test", "/");
    assert_eq!(pids_group(first_a), group_one);
    drop(second);

    // The same explicit cgroup_parent as the running first instance: refused.
    let text = std::fs::read_to_string(&config_two).unwrap();
    std::fs::write(
        &config_two,
        text.replacen(
            "[server]\n",
            &format!("[server]\ncgroup_parent = \"{parent_one}\"\n"),
            1,
        ),
    )
    .unwrap();
    let third = Command::new(CONDO)
        .args(["serve", "-c"])
        .arg(&config_two)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let refused_at = Instant::now();
    let (status, said) = wait_exit(third, Duration::from_secs(10));
    eprintln!(
        "third instance ({:?} after start): {status:?}: {said}",
        refused_at.elapsed()
    );
    assert!(
        status.is_some_and(|s| !s.success()),
        "a second instance on cgroup_parent {parent_one} was not refused: {status:?}\n{said}"
    );
    assert!(
        said.contains(&parent_one) && said.contains("cgroup_parent"),
        "the refusal does not name the cgroup parent: {said}"
    );
    assert!(
        refused_at.elapsed() < Duration::from_secs(2),
        "refused only after {:?}",
        refused_at.elapsed()
    );
    // The first instance kept serving, in its own groups.
    get_ok(first.pass, "a.test", "/");
    get_ok(first.pass, "b.test", "/");
    assert!(alive(first_a) && alive(first_b));
    assert_eq!(pids_group(first_a), group_one);
    drop(first);
    for parent in [&parent_one, &parent_two] {
        let groups: Vec<PathBuf> = glob::glob(&format!("{CGROUP_ROOT}/*/{parent}"))
            .unwrap()
            .flatten()
            .collect();
        assert!(groups.is_empty(), "left behind: {groups:?}");
    }
}

/// The master is SIGKILLed while tenant A has a setsid'd process in its group (its
/// workers die with the master; that process does not). The next start of the same
/// instance serves at once (it waited 2 s per hierarchy and group that still had
/// processes, then left them), kills A's leftover and removes the stale group.
#[test]
fn a_killed_masters_leftovers_are_killed_at_the_next_start_without_waiting() {
    if !require_root() || !require_cgroup_v1() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    let parent = cgroup_parent(&config);
    let mut cleanup = Cleanup::default();
    cleanup.parents.push(parent.clone());
    t.append_site(
        "a",
        "[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"\ntimeout = \"5s\"",
    );
    t.script("a", "cgi-bin/leave.sh", LEAVE_BEHIND);
    let condo = Condo::start(&config);
    let (_, body) = get_ok(condo.pass, "a.test", "/cgi-bin/leave.sh");
    let pid: u32 = body
        .lines()
        .find_map(|l| l.strip_prefix("left="))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no left=PID in {body:?}"));
    cleanup.pids.push(pid);
    let worker = condo.wait_child("worker", Some("a"));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(condo.pid() as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(5), || !alive(worker)));
    assert!(alive(pid), "the leftover died with the master already");
    assert_eq!(pids_group(pid), format!("/{parent}/a"));
    drop(condo);

    let started = Instant::now();
    let condo = Condo::start(&config);
    let (status_took, status) = timed_get(condo.pass, "b.test");
    let took = started.elapsed();
    eprintln!("restarted; b served {took:?} after the start ({status_took:?} for the request)");
    assert_eq!(status, Some(200));
    assert!(
        took < Duration::from_secs(1),
        "the restart waited {took:?} for the stale group; log:\n{}",
        condo.log_text()
    );
    assert!(
        eventually(Duration::from_secs(5), || !alive(pid)),
        "the leftover {pid} of the killed master's run still runs; log:\n{}",
        condo.log_text()
    );
    assert!(
        eventually(Duration::from_secs(5), || condo
            .log_text()
            .contains("removed the stale cgroup a")),
        "{}",
        condo.log_text()
    );
    // A is served again, in a group of its own.
    get_ok(condo.pass, "a.test", "/");
    let worker = condo.wait_child("worker", Some("a"));
    assert!(pids_group(worker).starts_with(&format!("/{parent}/a")));
}

/// A binary upgrade hands the cgroup parent's lock to the new master: once the old
/// master has left, a second instance on the same parent is still refused.
#[test]
fn an_upgraded_master_keeps_its_cgroup_parent_locked() {
    if !require_root() || !require_cgroup_v1() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("keepalive_timeout = \"1s\"");
    let parent = cgroup_parent(&config);
    let mut cleanup = Cleanup::default();
    cleanup.parents.push(parent.clone());
    let condo = Condo::start(&config);
    get_ok(condo.pass, "a.test", "/");
    let old_master = condo.pid();
    let (said, ok) = condo_cmd(&config, &["upgrade"]);
    assert!(ok, "{said}\n{}", condo.log_text());
    let new_pid: u32 = said
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no new pid in {said}"));
    cleanup.pids.push(new_pid);
    assert!(
        eventually(Duration::from_secs(20), || !alive(old_master)),
        "the old master did not leave"
    );
    get_ok(condo.pass, "a.test", "/");

    let other = TwoTenants::new();
    let other_config = other.config(&format!("cgroup_parent = \"{parent}\""));
    let out = Command::new(CONDO)
        .args(["serve", "-c"])
        .arg(&other_config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let refused = wait_exit(out, Duration::from_secs(10));
    eprintln!("second instance after the upgrade: {refused:?}");
    let (status, said) = refused;
    assert!(
        status.is_some_and(|s| !s.success()),
        "not refused: {status:?}\n{said}"
    );
    assert!(
        said.contains("in use by another running condo") && said.contains(&parent),
        "{said}"
    );
    get_ok(condo.pass, "b.test", "/");
    // The new master stops as any master does: its groups and parent go.
    let pid = rustix::process::Pid::from_raw(new_pid as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(eventually(Duration::from_secs(15), || !alive(new_pid)));
    let groups: Vec<PathBuf> = glob::glob(&format!("{CGROUP_ROOT}/*/{parent}"))
        .unwrap()
        .flatten()
        .collect();
    assert!(groups.is_empty(), "left behind: {groups:?}");
}

/// Wait up to `limit` for `child` to exit (killed by pid after it): its status, if it
/// exited, and its stderr.
fn wait_exit(
    mut child: std::process::Child,
    limit: Duration,
) -> (Option<std::process::ExitStatus>, String) {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut said = String::new();
    use std::io::Read as _;
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut said);
    }
    (status, said)
}

/// Tenant A's CGI stops A's own worker (SIGSTOP: same uid), so the worker reads
/// nothing the master sends; then the master has many messages for it (log reopens:
/// two per site each). The master's sends never wait on the loop: B's first request
/// (a cold start, through the master) is served at once — it hung for ever once the
/// worker's channel was full (278 messages) — and the stopped worker is killed.
#[test]
fn a_stopped_worker_never_stalls_the_master() {
    if !require_root() || !require_cgroup_v1() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    let mut cleanup = Cleanup::default();
    cleanup.parents.push(cgroup_parent(&config));
    t.append_site(
        "a",
        "[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"\ntimeout = \"5s\"",
    );
    // It stops the worker once the test has its response (the flag file), up to 30 s.
    let flag = t.root_a.join("stop-now");
    t.script(
        "a",
        "cgi-bin/stop.sh",
        &format!(
            "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\necho \"worker=$PPID\"\nW=$PPID\n\
             ( i=0; while [ ! -e {flag} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; kill -STOP \"$W\" ) </dev/null >/dev/null 2>&1 &\n",
            flag = flag.display()
        ),
    );
    let condo = Condo::start(&config);
    let (_, body) = get_ok(condo.pass, "a.test", "/cgi-bin/stop.sh");
    let worker = condo.wait_child("worker", Some("a"));
    cleanup.pids.push(worker);
    assert!(body.contains(&format!("worker={worker}")), "{body}");
    std::fs::write(&flag, "").unwrap();
    let stopped = || {
        std::fs::read_to_string(format!("/proc/{worker}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('T'))
        })
    };
    assert!(
        eventually(Duration::from_secs(5), stopped),
        "a's worker was not stopped"
    );
    let since = Instant::now();
    let master = rustix::process::Pid::from_raw(condo.pid() as i32).unwrap();
    for _ in 0..160 {
        rustix::process::kill_process(master, rustix::process::Signal::USR1).unwrap();
        std::thread::sleep(Duration::from_millis(15));
    }
    let (took, status) = timed_get(condo.pass, "b.test");
    eprintln!("b's cold start after 320 messages for a's stopped worker: {status:?} in {took:?}");
    assert_eq!(status, Some(200), "log:\n{}", condo.log_text());
    assert!(took < Duration::from_secs(1), "b waited {took:?}");
    assert!(
        eventually(Duration::from_secs(20), || !alive(worker)),
        "a's stopped worker still there {:?} later; log:\n{}",
        since.elapsed(),
        condo.log_text()
    );
    eprintln!(
        "a's stopped worker killed {:?} after the first reopen",
        since.elapsed()
    );
    assert!(condo.log_text().contains("unread"), "{}", condo.log_text());
    // A request sent between the kill and the master's handling of the exit may go to
    // the dead worker's link and be lost with it (the tenant stopped its own worker);
    // once the master has seen the exit, a's next request starts a new worker.
    assert!(
        eventually(Duration::from_secs(10), || condo
            .log_text()
            .contains("worker exited (signal: 9")),
        "the master never saw a's worker exit; log:\n{}",
        condo.log_text()
    );
    get_ok(condo.pass, "a.test", "/");
}

/// A leftover that SIGKILL cannot end in time (here: frozen by the v1 freezer, as a
/// process stuck in the kernel would be): A's old group cannot be removed. A's next
/// worker starts at once in a fresh group (`a.1`), nothing waits, the failure is
/// logged and retried; when condo stops, the group goes too.
#[test]
fn a_group_that_cannot_be_emptied_does_not_block_the_tenants_next_worker() {
    if !require_root() || !require_cgroup_v1() {
        return;
    }
    let freezer_root = Path::new(CGROUP_ROOT).join("freezer");
    if !freezer_root.join("cgroup.procs").exists() {
        assert!(std::env::var("CI").is_err(), "CI=true but no v1 freezer");
        eprintln!("skipping: no v1 freezer hierarchy");
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    let parent = cgroup_parent(&config);
    let mut cleanup = Cleanup::default();
    cleanup.parents.push(parent.clone());
    t.append_site(
        "a",
        "[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"\ntimeout = \"5s\"",
    );
    t.script("a", "cgi-bin/leave.sh", LEAVE_BEHIND);
    let condo = Condo::start(&config);
    let (_, body) = get_ok(condo.pass, "a.test", "/cgi-bin/leave.sh");
    let pid: u32 = body
        .lines()
        .find_map(|l| l.strip_prefix("left="))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no left=PID in {body:?}"));
    cleanup.pids.push(pid);
    // The test's own freezer group (condo does not use the freezer).
    struct Frozen(PathBuf);
    impl Drop for Frozen {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
            std::thread::sleep(Duration::from_millis(100));
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let frozen = Frozen(freezer_root.join(format!("condotestfrz{}", std::process::id())));
    std::fs::create_dir(&frozen.0).unwrap();
    std::fs::write(frozen.0.join("cgroup.procs"), pid.to_string()).unwrap();
    std::fs::write(frozen.0.join("freezer.state"), "FROZEN").unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(frozen.0.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
    }));

    let worker = condo.wait_child("worker", Some("a"));
    assert_eq!(pids_group(worker), format!("/{parent}/a"));
    let (said, ok) = condo_cmd(&config, &["restart-tenant", "a"]);
    assert!(ok, "{said}");
    assert!(eventually(Duration::from_secs(5), || !alive(worker)));
    let (took_a, _) = get_ok(condo.pass, "a.test", "/");
    let (took_b, _) = get_ok(condo.pass, "b.test", "/");
    let next = condo.wait_child("worker", Some("a"));
    eprintln!(
        "a's next worker in {} ({took_a:?}); b's cold start {took_b:?}",
        pids_group(next)
    );
    assert_eq!(pids_group(next), format!("/{parent}/a.1"));
    assert!(took_a < Duration::from_secs(1) && took_b < Duration::from_secs(1));
    // The removal gives up after its deadline, says so, and will try again.
    assert!(
        eventually(Duration::from_secs(10), || condo
            .log_text()
            .contains("removing the cgroup a:")),
        "{}",
        condo.log_text()
    );
    assert!(alive(pid), "the frozen leftover died");
    get_ok(condo.pass, "a.test", "/");
    // Thawed, it dies of the SIGKILL it has pending; condo's stop removes both groups.
    drop(frozen);
    assert!(eventually(Duration::from_secs(5), || !alive(pid)));
    drop(condo);
    let groups: Vec<PathBuf> = glob::glob(&format!("{CGROUP_ROOT}/*/{parent}"))
        .unwrap()
        .flatten()
        .collect();
    assert!(groups.is_empty(), "left behind: {groups:?}");
}
