//! Per-tenant limits with real cgroups (v1 on this machine and CI): the worker and
//! everything it starts sit in the tenant's group; a fork bomb stops at pids_max, a
//! memory hog is OOM-killed, a CPU spinner is throttled — and the other tenant keeps
//! being served. rlimits and nice reach the tenant's processes.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

fn setup(tenant_a: &str) -> (TwoTenants, ScratchParent, PathBuf) {
    let t = TwoTenants::new();
    let parent = ScratchParent::new();
    let config = t.config_tenants(
        &format!("cgroup = \"v1\"\ncgroup_parent = \"{}\"", parent.0),
        tenant_a,
        "",
    );
    t.append_site(
        "a",
        "[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"\ntimeout = \"20s\"",
    );
    (t, parent, config)
}

fn field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in:\n{text}"))
        .to_string()
}

/// Median of `n` GETs of b's index.
fn b_median(addr: std::net::SocketAddr, n: usize) -> Duration {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let started = Instant::now();
            let mut c = Client::connect(addr);
            assert_eq!(c.get("b.test", "/").status, 200);
            started.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

#[test]
fn worker_and_scripts_run_inside_the_tenants_limits() {
    if !require_root() || !require_cgroup_v1() {
        return;
    }
    let (t, parent, config) = setup(
        "memory_max = \"256M\"\ncpu_max = 0.5\npids_max = 64\nio_weight = 500\nnice = 5\nrlimit_nofile = 1000\nrlimit_core = 0",
    );
    // The site's own nice, above the tenant's, for its scripts.
    let site_file = t.dir.path().join("sites/a.toml");
    let text = std::fs::read_to_string(&site_file).unwrap();
    std::fs::write(
        &site_file,
        text.replacen("tenant = \"a\"\n", "tenant = \"a\"\nnice = 7\n", 1),
    )
    .unwrap();
    t.script(
        "a",
        "cgi-bin/self.sh",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\necho \"nofile=$(ulimit -n)\"\necho \"core=$(ulimit -c)\"\necho \"nice=$(cut -d' ' -f19 /proc/self/stat)\"\necho \"memcg=$(grep ':memory:' /proc/self/cgroup | cut -d: -f3)\"\necho \"pidscg=$(grep ':pids:' /proc/self/cgroup | cut -d: -f3)\"\n",
    );
    let condo = Condo::start(&config);
    let (out, ok) = curl(&[
        "-H",
        "Host: a.test",
        &format!("http://{}/cgi-bin/self.sh", condo.pass),
    ]);
    assert!(ok, "{out}");
    assert_eq!(field(&out, "nofile"), "1000");
    assert_eq!(field(&out, "core"), "0");
    assert_eq!(field(&out, "nice"), "7");
    assert_eq!(field(&out, "memcg"), format!("/{}/a", parent.0));
    assert_eq!(field(&out, "pidscg"), format!("/{}/a", parent.0));
    // The worker itself too, and the limits are written.
    let worker = condo.wait_child("worker", Some("a"));
    let cgroups = std::fs::read_to_string(format!("/proc/{worker}/cgroup")).unwrap();
    assert!(
        cgroups.contains(&format!(":memory:/{}/a", parent.0)),
        "{cgroups}"
    );
    assert_eq!(
        parent.tenant_file("memory", "a", "memory.limit_in_bytes"),
        (256u64 << 20).to_string()
    );
    assert_eq!(parent.tenant_file("cpu", "a", "cpu.cfs_quota_us"), "50000");
    assert_eq!(
        parent.tenant_file("cpu", "a", "cpu.cfs_period_us"),
        "100000"
    );
    assert_eq!(parent.tenant_file("pids", "a", "pids.max"), "64");
    // The worker itself runs at the tenant's nice.
    let stat = std::fs::read_to_string(format!("/proc/{worker}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    assert_eq!(after_comm.split(' ').nth(16), Some("5"), "{stat}");
    let limits = std::fs::read_to_string(format!("/proc/{worker}/limits")).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 1000 ")),
        "{limits}"
    );
    // Tenant b sets no limits and has no group until it runs; then one with the safe
    // defaults (pids_max 512, memory_max 1G).
    let (body, _) = curl(&["-H", "Host: b.test", &format!("http://{}/", condo.pass)]);
    assert_eq!(body, "site B\n");
    assert_eq!(parent.tenant_file("pids", "b", "pids.max"), "512");
    assert_eq!(
        parent.tenant_file("memory", "b", "memory.limit_in_bytes"),
        (1u64 << 30).to_string()
    );
    // Stopping condo removes the tenants' groups and condo's parent group.
    drop(condo);
    for dir in parent.dirs() {
        assert!(
            !dir.join("a").exists(),
            "{} left behind",
            dir.join("a").display()
        );
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn a_fork_bomb_stops_at_pids_max_and_b_keeps_serving() {
    if !require_root() || !require_cgroup_v1() {
        return;
    }
    let (t, _parent, config) = setup("pids_max = 40");
    t.script(
        "a",
        "cgi-bin/bomb.py",
        "#!/usr/bin/python3\nimport os, time\npids = []\nerr = None\nfor i in range(500):\n    try:\n        pid = os.fork()\n    except OSError as e:\n        err = e.errno\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    pids.append(pid)\nprint('Content-Type: text/plain\\n')\nprint(f'forked={len(pids)}')\nprint(f'errno={err}')\nfor p in pids:\n    os.kill(p, 9)\n",
    );
    let condo = Condo::start(&config);
    let bomb = {
        let url = format!("http://{}/cgi-bin/bomb.py", condo.pass);
        std::thread::spawn(move || curl(&["-H", "Host: a.test", &url]))
    };
    // While a's processes are at their cap, b is served as usual.
    for _ in 0..20 {
        let (body, ok) = curl(&["-H", "Host: b.test", &format!("http://{}/", condo.pass)]);
        assert!(ok && body == "site B\n", "{body}");
    }
    let (out, ok) = bomb.join().unwrap();
    assert!(ok, "{out}");
    let forked: usize = field(&out, "forked").parse().unwrap();
    assert!(forked < 40, "{out}");
    assert_eq!(field(&out, "errno"), "11", "EAGAIN expected: {out}");
    // And a recovers once its bomb is gone.
    let (body, ok) = curl(&["-H", "Host: a.test", &format!("http://{}/", condo.pass)]);
    assert!(ok && body == "site A\n", "{body}");
}

#[test]
fn a_memory_hog_is_oom_killed_and_b_is_unaffected() {
    if !require_root() || !require_cgroup_v1() {
        return;
    }
    let (t, parent, config) = setup("memory_max = \"96M\"");
    t.script(
        "a",
        "cgi-bin/hog.py",
        "#!/usr/bin/python3\nimport sys\nchunks = []\nfor i in range(64):\n    chunks.append(bytearray(8 << 20))\n    for j in range(0, 8 << 20, 4096):\n        chunks[-1][j] = 1\nprint('Content-Type: text/plain\\n')\nprint('survived', len(chunks) * 8, 'MiB')\n",
    );
    let condo = Condo::start(&config);
    let (out, _) = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Host: a.test",
        &format!("http://{}/cgi-bin/hog.py", condo.pass),
    ]);
    assert_ne!(out, "200", "the hog got its 512 MiB");
    let oom = parent.tenant_file("memory", "a", "memory.oom_control");
    let kills: u64 = oom
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(kills >= 1, "{oom}");
    // The worker itself survived (the hog was the biggest process) or came back.
    let (body, ok) = curl(&["-H", "Host: a.test", &format!("http://{}/", condo.pass)]);
    assert!(ok && body == "site A\n", "{body}");
    let (body, ok) = curl(&["-H", "Host: b.test", &format!("http://{}/", condo.pass)]);
    assert!(ok && body == "site B\n", "{body}");
    let oom_line = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = condo
                .log_text()
                .lines()
                .find(|l| l.contains("OOM kill"))
                .map(str::to_string)
            {
                break l;
            }
            assert!(
                Instant::now() < deadline,
                "no OOM line:\n{}",
                condo.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    assert!(oom_line.contains("tenant=\"a\""), "{oom_line}");
    // And it is billed: `condo usage` counts the kill for a, none for b.
    drop(condo);
    let out = std::process::Command::new(CONDO)
        .args(["usage", "--csv", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&out.stdout);
    let oom_of = |tenant: &str| -> u64 {
        csv.lines()
            .find(|l| l.starts_with(&format!("{tenant},")))
            .and_then(|l| l.split(',').nth(14))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {tenant} row in:\n{csv}"))
    };
    assert!(oom_of("a") >= 1, "{csv}");
    assert_eq!(oom_of("b"), 0, "{csv}");
}

#[test]
fn a_cpu_spinner_is_throttled_and_b_stays_fast() {
    if !require_root() || !require_cgroup_v1() {
        return;
    }
    let (t, parent, config) = setup("cpu_max = 0.2");
    t.script(
        "a",
        "cgi-bin/spin.py",
        "#!/usr/bin/python3\nimport time\nend = time.time() + 4\nn = 0\nwhile time.time() < end:\n    n += 1\nprint('Content-Type: text/plain\\n')\nprint('spun', n)\n",
    );
    let condo = Condo::start(&config);
    let _ = b_median(condo.pass, 20);
    let idle = b_median(condo.pass, 100);
    let spinners: Vec<_> = (0..4)
        .map(|_| {
            let url = format!("http://{}/cgi-bin/spin.py", condo.pass);
            std::thread::spawn(move || curl(&["-H", "Host: a.test", &url]))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let busy = b_median(condo.pass, 100);
    for s in spinners {
        let (out, ok) = s.join().unwrap();
        assert!(ok && out.contains("spun"), "{out}");
    }
    let stat = parent.tenant_file("cpu", "a", "cpu.stat");
    let throttled: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(throttled > 0, "{stat}");
    eprintln!("b median idle {idle:?}, with a spinning 4 processes at cpu_max 0.2: {busy:?}");
    // 2x of idle, with 1 ms as the floor: sub-millisecond medians are scheduler noise.
    let bound = idle.max(Duration::from_millis(1)) * 2;
    assert!(
        busy <= bound,
        "b's median {busy:?} > {bound:?} (idle {idle:?})"
    );
}

#[test]
fn rlimit_fsize_binds_scripts_but_never_kills_the_worker_on_its_logs() {
    if !require_root() || !require_cgroup_v1() {
        return;
    }
    let (t, _parent, config) = setup("rlimit_fsize = \"1M\"");
    // The site's access log is already past the tenant's file size limit (logs are
    // condo's files, written by the worker): the limit is for the tenant's own files.
    let log = t.dir.path().join("log/a.test.access.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::File::create(&log)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    t.script(
        "a",
        "cgi-bin/big.sh",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nf=$(mktemp)\nif head -c 2097152 /dev/zero > \"$f\" 2>/dev/null; then echo wrote=yes; else echo wrote=no; fi\necho size=$(stat -c %s \"$f\")\nrm -f \"$f\"\n",
    );
    let condo = Condo::start(&config);
    let get = || curl(&["-H", "Host: a.test", &format!("http://{}/", condo.pass)]);
    let (body, ok) = get();
    assert!(ok && body == "site A\n", "{body}");
    let worker = condo.wait_child("worker", Some("a"));
    for _ in 0..3 {
        let (body, ok) = get();
        assert!(ok && body == "site A\n", "{body}");
    }
    // The tenant's script is bound by it.
    let (out, ok) = curl(&[
        "-H",
        "Host: a.test",
        &format!("http://{}/cgi-bin/big.sh", condo.pass),
    ]);
    assert!(ok, "{out}");
    assert_eq!(field(&out, "wrote"), "no", "{out}");
    assert_eq!(field(&out, "size"), (1u64 << 20).to_string(), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        condo.children("worker", Some("a")),
        vec![worker],
        "a's worker died writing its access log; log:\n{}",
        condo.log_text()
    );
    // And the lines reached the log.
    let len = std::fs::metadata(&log).unwrap().len();
    assert!(len > 2 << 20, "access log not written: {len} bytes");
}

#[test]
fn changed_limits_reach_the_tenants_group_on_reload() {
    if !require_root() || !require_cgroup_v1() {
        return;
    }
    let (_t, parent, config) = setup("memory_max = \"96M\"\npids_max = 40");
    let condo = Condo::start(&config);
    let get = || curl(&["-H", "Host: a.test", &format!("http://{}/", condo.pass)]);
    let (body, ok) = get();
    assert!(ok && body == "site A\n", "{body}");
    let old = condo.wait_child("worker", Some("a"));
    assert_eq!(
        parent.tenant_file("memory", "a", "memory.limit_in_bytes"),
        (96u64 << 20).to_string()
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "memory_max = \"96M\"\npids_max = 40",
            "memory_max = \"256M\"\npids_max = 100",
        ),
    )
    .unwrap();
    let out = std::process::Command::new(CONDO)
        .args(["reload", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The tenant's new worker runs under the new limits (raising memory_max on v1
    // means raising memsw first where swap accounting is on).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (body, ok) = get();
        assert!(
            ok && body == "site A\n",
            "{body}\nlog:\n{}",
            condo.log_text()
        );
        if condo
            .children("worker", Some("a"))
            .iter()
            .any(|&p| p != old)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new worker for a:\n{}",
            condo.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        parent.tenant_file("memory", "a", "memory.limit_in_bytes"),
        (256u64 << 20).to_string()
    );
    assert_eq!(parent.tenant_file("pids", "a", "pids.max"), "100");
}
