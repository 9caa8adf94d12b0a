//! The soak (issue 8): 20 tenants under mixed load — static files, CGI, FastCGI (PHP),
//! app servers, over pass, proxy and TLS listeners — while config reloads and worker
//! kills happen, for `SOAK_SECS` seconds (60 in CI; the documented long run is
//! `SOAK_SECS=600 sudo cargo test --release --test soak -- --nocapture`).
//!
//! Asserts: zero failed requests on every tenant that is not being killed (reloads
//! included), a killed tenant loses at most the requests in flight at each kill, and
//! between the end of the warm-up and the end of the run the number of condo's
//! processes, the master's and dispatcher's open fds and their memory do not grow.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

const TENANTS: usize = 20;
/// The tenant whose worker is SIGKILLed; the others only see reloads.
const VICTIM: usize = TENANTS - 1;

const CGI: &str = "#!/usr/bin/python3\nprint(\"Content-Type: text/plain\\n\\ncgi ok\")\n";
const PHP: &str = "<?php echo 'php ok';";

fn soak_secs() -> u64 {
    std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
        .max(30)
}

/// What a tenant's site offers, by index: every site has a static file and a CGI
/// script; the first half also PHP, the next quarter an app.
fn paths(i: usize) -> Vec<&'static str> {
    let mut p = vec!["/index.html", "/cgi-bin/hello.py"];
    if i < TENANTS / 2 {
        p.push("/i.php");
    } else if i < TENANTS * 3 / 4 {
        p.push("/app/");
    }
    p
}

fn site_file(i: usize, root: &Path, generation: u32) -> String {
    let mut s = format!(
        "[[site]]\nname = \"t{i}.test\"\naliases = [\"t{i}.soak.test\"]\ntenant = \"t{i}\"\nroot = \"{}\"\n\
         [site.env]\nSOAK_GENERATION = \"{generation}\"\n\
         [[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"\n",
        root.display()
    );
    if i < TENANTS / 2 {
        s.push_str("[[site.route]]\nsuffix = \".php\"\nhandler = \"fastcgi\"\ncommand = [\"php-cgi\"]\nprocesses_max = 2\n");
    } else if i < TENANTS * 3 / 4 {
        s.push_str(&format!(
            "[[site.route]]\npath = \"/app/\"\nhandler = \"app\"\nworkdir = \"{}\"\ncommand = [\"python3\", \"app.py\"]\n",
            root.display()
        ));
    }
    s
}

/// A wrk Lua script cycling through every (tenant, path) but the victim's.
fn wrk_script(dir: &Path) -> std::path::PathBuf {
    let mut lua = String::from("local list = {\n");
    for i in (0..TENANTS).filter(|&i| i != VICTIM) {
        for p in paths(i) {
            lua.push_str(&format!("  {{\"t{i}.test\", \"{p}\"}},\n"));
        }
    }
    lua.push_str(
        "}\nlocal reqs = {}\nlocal n = 0\n\
         init = function(args)\n  for i, e in ipairs(list) do reqs[i] = wrk.format(\"GET\", e[2], {Host = e[1]}) end\nend\n\
         request = function()\n  n = n % #reqs + 1\n  return reqs[n]\nend\n\
         done = function(s, latency, requests)\n  io.write(string.format(\"SOAK requests=%d connect=%d read=%d write=%d status=%d timeout=%d p99_ms=%.1f\\n\", s.requests, s.errors.connect, s.errors.read, s.errors.write, s.errors.status, s.errors.timeout, latency:percentile(99) / 1000))\nend\n",
    );
    let path = dir.join("soak.lua");
    std::fs::write(&path, lua).unwrap();
    path
}

fn get_once(addr: SocketAddr, host: &str, path: &str) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out.lines().next().unwrap_or("").to_string())
}

/// One process below the master, as seen in /proc.
#[derive(Debug, Clone)]
#[allow(
    dead_code,
    reason = "every field is printed as evidence when an assertion fails"
)]
struct Proc {
    pid: u32,
    ppid: u32,
    uid: u32,
    /// Seconds since it started.
    age_s: f64,
    cmdline: String,
}

impl Proc {
    fn read(pid: u32, uptime_s: f64, ticks: f64) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            return None;
        }
        let ppid = fields.get(1)?.parse().ok()?;
        // Field 22 of stat is the start time; `rest` begins at field 3.
        let start: f64 = fields.get(19)?.parse().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let uid = status_field(&status, "Uid")
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        Some(Self {
            pid,
            ppid,
            uid,
            age_s: uptime_s - start / ticks,
            cmdline: cmdline.trim().to_string(),
        })
    }

    /// Started by a request and gone with it: not part of any steady state.
    fn transient(&self) -> bool {
        self.cmdline.contains("cgi-bin/")
    }
}

/// Every process below the master (not the master itself).
fn census(master: u32) -> Vec<Proc> {
    let uptime_s: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let all: Vec<Proc> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter_map(|pid| Proc::read(pid, uptime_s, ticks))
        .collect();
    let mut found: Vec<Proc> = Vec::new();
    let mut frontier = vec![master];
    while let Some(parent) = frontier.pop() {
        for p in all.iter().filter(|p| p.ppid == parent) {
            frontier.push(p.pid);
            found.push(p.clone());
        }
    }
    found
}

/// What a steady state looks like once the load and the chaos have stopped and
/// retirements have finished: one dispatcher; per tenant exactly one worker, and below
/// it at most the processes its routes may keep (PHP: `processes_max = 2`; an app: one
/// process); nothing of a retired or killed worker left anywhere. Returns what breaks it.
fn steady_state_violations(master: u32, tenant_uids: &[u32]) -> Vec<String> {
    let procs = census(master);
    let mut wrong = Vec::new();
    let dispatchers = procs
        .iter()
        .filter(|p| p.ppid == master && p.cmdline.split(' ').nth(1) == Some("dispatcher"))
        .count();
    if dispatchers != 1 {
        wrong.push(format!("{dispatchers} dispatchers"));
    }
    for (i, &uid) in tenant_uids.iter().enumerate() {
        let tenant = format!("t{i}");
        let workers: Vec<&Proc> = procs
            .iter()
            .filter(|p| {
                p.ppid == master
                    && (p.cmdline.contains(&format!(" --tenant {tenant} "))
                        || p.cmdline.ends_with(&format!(" --tenant {tenant}")))
            })
            .collect();
        if workers.len() != 1 {
            wrong.push(format!("{tenant}: {} workers: {workers:?}", workers.len()));
            continue;
        }
        let worker = workers[0].pid;
        let owned: Vec<&Proc> = procs
            .iter()
            .filter(|p| p.uid == uid && p.pid != worker && !p.transient())
            .collect();
        let allowed = if i < TENANTS / 2 {
            2
        } else if i < TENANTS * 3 / 4 {
            1
        } else {
            0
        };
        if owned.len() > allowed || owned.iter().any(|p| p.ppid != worker) {
            wrong.push(format!(
                "{tenant} (worker {worker}, may keep {allowed}): {owned:?}"
            ));
        }
    }
    // Anything else below the master: neither a tenant's nor a dispatcher or worker.
    for p in &procs {
        let ours = p.ppid == master || tenant_uids.contains(&p.uid) || p.transient();
        if !ours {
            wrong.push(format!("unaccounted: {p:?}"));
        }
    }
    wrong
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn rss_kib(pid: u32) -> u64 {
    status_field(&proc_status(pid), "VmRSS")
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap_or(0)
}

#[derive(Debug)]
#[allow(
    dead_code,
    reason = "printed in the per-minute log and in assertion messages"
)]
struct Sample {
    /// Long-lived processes below the master (CGI scripts excluded), by role.
    processes: usize,
    workers: usize,
    php_cgi: usize,
    apps: usize,
    /// Tenants with more than one worker (one retiring): "tN: ages of its workers".
    retiring: Vec<String>,
    /// Master's and dispatcher's together (each also in `fds_each`).
    fds: usize,
    fds_each: (usize, usize),
    rss_kib: u64,
}

fn sample(condo: &Condo) -> Sample {
    let dispatcher = condo.wait_child("dispatcher", None);
    let procs: Vec<Proc> = census(condo.pid())
        .into_iter()
        .filter(|p| !p.transient())
        .collect();
    let workers: Vec<&Proc> = procs
        .iter()
        .filter(|p| p.ppid == condo.pid() && p.cmdline.contains(" --tenant "))
        .collect();
    let mut retiring = Vec::new();
    for i in 0..TENANTS {
        let tag = format!(" --tenant t{i} ");
        let ages: Vec<String> = workers
            .iter()
            .filter(|w| w.cmdline.contains(&tag))
            .map(|w| format!("{:.1}s", w.age_s))
            .collect();
        if ages.len() > 1 {
            retiring.push(format!("t{i}: {}", ages.join(" ")));
        }
    }
    Sample {
        processes: procs.len(),
        workers: workers.len(),
        php_cgi: procs
            .iter()
            .filter(|p| p.cmdline.starts_with("php-cgi"))
            .count(),
        apps: procs
            .iter()
            .filter(|p| p.cmdline.contains("app.py"))
            .count(),
        retiring,
        fds: fds(condo.pid()) + fds(dispatcher),
        fds_each: (fds(condo.pid()), fds(dispatcher)),
        rss_kib: rss_kib(condo.pid()) + rss_kib(dispatcher),
    }
}

#[test]
fn soak_twenty_tenants_mixed_traffic_reloads_and_kills() {
    if !require_root() {
        return;
    }
    if Command::new("wrk").arg("--version").output().is_err() {
        assert!(std::env::var("CI").is_err(), "wrk is not installed");
        eprintln!("skipping: wrk is not installed");
        return;
    }
    let secs = soak_secs();
    let dir = scratch();
    let base = dir.path();
    let dispatcher = TestUser::create("d");
    let users: Vec<TestUser> = (0..TENANTS).map(|_| TestUser::create("s")).collect();
    std::fs::create_dir_all(base.join("sites")).unwrap();
    let mut roots = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let root = docroot(base, &format!("t{i}"), user);
        write_owned(
            &root.join("index.html"),
            format!("site {i}\n").as_bytes(),
            user,
            0o644,
        );
        write_owned(&root.join("cgi-bin/hello.py"), CGI.as_bytes(), user, 0o755);
        chown(&root.join("cgi-bin"), user, 0o755);
        write_owned(&root.join("i.php"), PHP.as_bytes(), user, 0o644);
        write_owned(&root.join("app.py"), UNIX_APP.as_bytes(), user, 0o644);
        std::fs::write(
            base.join(format!("sites/t{i}.toml")),
            site_file(i, &root, 0),
        )
        .unwrap();
        roots.push(root);
    }
    // The host's wildcard certificate for *.soak.test: the dispatcher terminates TLS.
    let (cert, key) = {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["*.soak.test".to_string()]).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    };
    std::fs::write(base.join("wild.pem"), cert).unwrap();
    std::fs::write(base.join("wild.key"), key).unwrap();
    let mut main = format!(
        "[server]\nlisten = [{{ addr = \"127.0.0.1:0\", handover = \"pass\" }}, {{ addr = \"127.0.0.1:0\", handover = \"proxy\" }}]\n\
         tls_listen = [\"127.0.0.1:0\"]\nuser = \"{}\"\nuid_range = [100, 65000]\nlog_dir = \"{}\"\nrun_dir = \"{}\"\nstate_dir = \"{}\"\n\
         cgroup_parent = \"condosoak{}\"\n[defaults]\nidle_timeout = \"10m\"\nmemory_max = \"512M\"\nworker_max_requests = 10000\n",
        dispatcher.name,
        base.join("log").display(),
        base.join("run").display(),
        base.join("state").display(),
        std::process::id()
    );
    for (i, user) in users.iter().enumerate() {
        main.push_str(&format!("[tenant.t{i}]\nuser = \"{}\"\n", user.name));
    }
    main.push_str(&format!(
        "[[certificate]]\nnames = [\"*.soak.test\"]\ncert = \"{}\"\nkey = \"{}\"\ndefault = true\n",
        base.join("wild.pem").display(),
        base.join("wild.key").display()
    ));
    let config = base.join("condo.toml");
    std::fs::write(&config, main).unwrap();
    let condo = Condo::start(&config);
    // Every (tenant, path) answers before the load starts.
    for i in 0..TENANTS {
        for p in paths(i) {
            let status = get_once(condo.pass, &format!("t{i}.test"), p);
            assert_eq!(
                status.as_deref(),
                Ok("HTTP/1.1 200 OK"),
                "t{i}{p}: {}",
                condo.log_text()
            );
        }
    }
    // Quiet, every tenant's worker up: the baseline for the master's and dispatcher's fds.
    let quiet_before = sample(&condo);
    let tenant_uids: Vec<u32> = users.iter().map(|u| u.uid).collect();
    let script = wrk_script(base);
    let wrk = |addr: SocketAddr, connections: &str| {
        Command::new("wrk")
            .args(["-t", "1", "-c", connections, "--timeout", "10s", "-d"])
            .arg(format!("{secs}s"))
            .arg("-s")
            .arg(&script)
            .arg(format!("http://{addr}/"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    let wrk_pass = wrk(condo.pass, "8");
    let wrk_proxy = wrk(condo.proxy(), "4");
    let stop = Arc::new(AtomicBool::new(false));
    // TLS: curl over the provider certificate, five tenants per connection.
    let tls = {
        let (stop, port) = (stop.clone(), condo.tls.unwrap().port());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0usize, Vec::new());
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) && round < 100_000 {
                let mut args = vec!["-s".to_string(), "-k".into()];
                let mut urls = Vec::new();
                for k in 0..5 {
                    let i = (round * 5 + k) % (TENANTS - 1);
                    args.push("--resolve".into());
                    args.push(format!("t{i}.soak.test:{port}:127.0.0.1"));
                    urls.push(format!("https://t{i}.soak.test:{port}/index.html"));
                }
                args.extend(["-w".to_string(), "%{http_code}\\n".to_string()]);
                for u in urls {
                    args.extend(["-o".to_string(), "/dev/null".to_string(), u]);
                }
                let out = Command::new("curl").args(&args).output().unwrap();
                for code in String::from_utf8_lossy(&out.stdout).lines() {
                    if code == "200" {
                        ok += 1;
                    } else {
                        failed.push(code.to_string());
                    }
                }
                round += 1;
            }
            (ok, failed)
        })
    };
    // The victim: requests every 50 ms while its worker is killed now and then.
    let victim = {
        let (stop, addr) = (stop.clone(), condo.pass);
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match get_once(addr, &format!("t{VICTIM}.test"), "/index.html") {
                    Ok(s) if s == "HTTP/1.1 200 OK" => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (ok, failed)
        })
    };
    // Warm-up, then the first sample; chaos every 5 s: a reload changing one tenant,
    // or a kill of the victim's worker.
    std::thread::sleep(Duration::from_secs(12));
    // Under load the process count is not a steady state: workers retire at
    // `worker_max_requests` (set to 10,000 here, so the soak keeps crossing
    // recycles) and after reloads, each with its PHP processes until it has drained
    // (issue 21: a sample taken then counted a retiring worker and its two php-cgi
    // processes as growth). Counts are compared only once everything is quiet (below);
    // this sample is the memory baseline and a line of the per-minute log.
    let first = sample(&condo);
    eprintln!("t={:>5.0}s {first:?}", started.elapsed().as_secs_f64());
    // SOAK_LOG_SECS: how often a sample is printed (the chaos steps are 5 s apart).
    let log_every = Duration::from_secs(
        std::env::var("SOAK_LOG_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let mut logged = Instant::now();
    let (mut reloads, mut kills, mut step) = (0u32, 0u32, 0u32);
    while Instant::now() + Duration::from_secs(8) < end {
        std::thread::sleep(Duration::from_secs(5));
        if logged.elapsed() >= log_every {
            logged = Instant::now();
            eprintln!(
                "t={:>5.0}s {:?}",
                started.elapsed().as_secs_f64(),
                sample(&condo)
            );
        }
        step += 1;
        if step % 2 == 1 {
            let i = (step as usize / 2) % (TENANTS - 1);
            std::fs::write(
                base.join(format!("sites/t{i}.toml")),
                site_file(i, &roots[i], step),
            )
            .unwrap();
            rustix::process::kill_process(
                rustix::process::Pid::from_raw(condo.pid() as i32).unwrap(),
                rustix::process::Signal::HUP,
            )
            .unwrap();
            reloads += 1;
        } else if let Some(&w) = condo
            .children("worker", Some(&format!("t{VICTIM}")))
            .first()
        {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(w as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
            kills += 1;
        }
    }
    let wrk_out = |child: std::process::Child| {
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let pass_out = wrk_out(wrk_pass);
    let proxy_out = wrk_out(wrk_proxy);
    stop.store(true, Ordering::Relaxed);
    let (tls_ok, tls_failed) = tls.join().unwrap();
    let (victim_ok, victim_failed) = victim.join().unwrap();
    // Quiet now: what retires drains and exits. Whatever is still there after this bound
    // outlived what it belonged to.
    let quiet_from = Instant::now();
    let mut violations = steady_state_violations(condo.pid(), &tenant_uids);
    while !violations.is_empty() && quiet_from.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(250));
        violations = steady_state_violations(condo.pid(), &tenant_uids);
    }
    let settled_after = quiet_from.elapsed();
    let last = sample(&condo);
    let summary = |out: &str| -> String {
        out.lines()
            .find(|l| l.starts_with("SOAK "))
            .unwrap_or("no summary")
            .to_string()
    };
    eprintln!("soak of {secs} s, {TENANTS} tenants, {reloads} reloads, {kills} worker kills");
    eprintln!("pass  wrk: {}", summary(&pass_out));
    eprintln!("proxy wrk: {}", summary(&proxy_out));
    eprintln!(
        "tls curl: {tls_ok} ok, {} failed {:?}",
        tls_failed.len(),
        &tls_failed[..tls_failed.len().min(5)]
    );
    eprintln!(
        "victim: {victim_ok} ok, {} failed {victim_failed:?}",
        victim_failed.len()
    );
    eprintln!(
        "quiet before {quiet_before:?}\nunder load   {first:?}\nquiet after  {last:?} (settled in {settled_after:?})"
    );
    for (name, out) in [("pass", &pass_out), ("proxy", &proxy_out)] {
        let line = summary(out);
        assert!(line.starts_with("SOAK requests="), "{name}: {out}");
        for clean in ["connect=0", "read=0", "write=0", "status=0", "timeout=0"] {
            assert!(
                line.contains(clean),
                "{name} had errors: {line}\n{}",
                condo.log_text()
            );
        }
    }
    assert!(
        tls_ok > 100 && tls_failed.is_empty(),
        "TLS: {tls_ok} ok, {tls_failed:?}"
    );
    assert!(
        reloads >= 2 && kills >= 2,
        "{reloads} reloads, {kills} kills"
    );
    // A kill costs the victim at most the request in flight (it makes one at a time).
    assert!(
        victim_failed.len() <= kills as usize,
        "victim lost {} requests in {kills} kills: {victim_failed:?}",
        victim_failed.len()
    );
    assert!(
        violations.is_empty(),
        "20 s after the load stopped, processes outlived what they belong to:\n{}\nall processes: {:#?}",
        violations.join("\n"),
        census(condo.pid())
    );
    // Both samples are quiet with one worker per tenant: the same links, pipes and
    // sockets, so a leak per reload or kill shows as growth.
    assert!(
        last.fds <= quiet_before.fds + 4,
        "fds grew: {quiet_before:?} -> {last:?}"
    );
    assert!(
        last.rss_kib <= first.rss_kib + first.rss_kib / 4 + 8 * 1024,
        "memory grew: {first:?} -> {last:?}"
    );
    drop(condo);
    drop(users);
}
