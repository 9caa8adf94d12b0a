//! The tenant attack matrix (issue 6): tenant A's own code (a CGI script running as A)
//! attacks tenant B and the server. Each row is a real attempt; each asserts that it
//! failed and that B is still served. Most rows run with the default isolation
//! ("standard": uid, cgroup, seccomp, Landlock); the rows on shared /tmp, /dev/shm,
//! SysV IPC and process visibility run with `isolation = "cage"`, which is what
//! defends against them (SECURITY.md). Fork bomb, memory and CPU exhaustion are rows
//! of tests/limits.rs.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// A Python CGI script that runs one attack, named by the query string, and prints
/// `<row>: <outcome>`; outcomes are error names (EACCES, EPERM, ...) or what was read.
const ATTACK: &str = r#"#!/usr/bin/python3
import ctypes, errno, os, signal, socket, sys, urllib.parse
q = urllib.parse.parse_qs(os.environ.get("QUERY_STRING", ""))
row = q["row"][0]
arg = q.get("arg", [""])[0]
def err(e):
    return errno.errorcode.get(e.errno, str(e.errno)) if isinstance(e, OSError) else type(e).__name__
def attempt(f):
    try:
        r = f()
        return "SUCCEEDED " + (r if isinstance(r, str) else repr(r))[:200]
    except Exception as e:
        return err(e)
libc = ctypes.CDLL(None, use_errno=True)
def ptrace_attach(pid):
    if libc.ptrace(16, int(pid), None, None) != 0:  # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), "ptrace")
    return "attached"
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
def vm_read(pid):
    buf = ctypes.create_string_buffer(16)
    local = iovec(ctypes.cast(buf, ctypes.c_void_p), 16)
    remote = iovec(0x400000, 16)
    n = libc.process_vm_readv(int(pid), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if n < 0:
        raise OSError(ctypes.get_errno(), "process_vm_readv")
    return "read %d" % n
def connect(path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    return "connected"
def check(r, what):
    if r < 0:
        raise OSError(ctypes.get_errno(), what)
    return what
def plant(path):
    with open(path, "w") as f:
        f.write("B's planted secret\n")
    os.chmod(path, 0o644)
    return "planted"
def sysv(key, flags):
    r = libc.shmget(int(key, 0), 4096, flags)
    check(r, "shmget")
    return "segment %d" % r
def mkdirs(prefix):
    made = 0
    for n in range(64):
        try:
            os.mkdir("%s%d" % (prefix, n), 0o777)
            made += 1
        except FileExistsError:
            pass
    return "made %d" % made
rows = {
    "read": lambda: open(arg, "rb").read().decode(errors="replace"),
    "list": lambda: ",".join(os.listdir(arg)),
    "environ": lambda: open("/proc/%s/environ" % arg, "rb").read().decode(errors="replace"),
    "maps": lambda: open("/proc/%s/maps" % arg).read(),
    "fds": lambda: ",".join(os.listdir("/proc/%s/fd" % arg)),
    "mem": lambda: open("/proc/%s/mem" % arg, "rb").read(16).hex(),
    "kill": lambda: os.kill(int(arg), signal.SIGKILL) or "killed",
    "stop": lambda: os.kill(int(arg), signal.SIGSTOP) or "stopped",
    "ptrace": lambda: ptrace_attach(arg),
    "vm_read": lambda: vm_read(arg),
    "hardlink": lambda: os.link(arg, os.environ["DOCUMENT_ROOT"] + "/hl") or "linked",
    "connect": lambda: connect(arg),
    "write_log": lambda: open(arg, "a").write("forged line\n") and "written",
    "setuid": lambda: os.setuid(0) or "root",
    "own_fds": lambda: "fds=" + ",".join(sorted(os.listdir("/proc/self/fd"), key=int)),
    "own_fd_targets": lambda: ";".join("%s=%s" % (f, os.readlink("/proc/self/fd/" + f)) for f in os.listdir("/proc/self/fd") if os.path.exists("/proc/self/fd/" + f)),
    "own_env": lambda: "env=" + ",".join(sorted(os.environ)),
    "whoami": lambda: "uid=%d" % os.getuid(),
    "symlink": lambda: os.symlink(arg, os.environ["DOCUMENT_ROOT"] + "/" + q["name"][0]) or "linked",
    "abstract": lambda: connect("\0" + arg),
    "plant": lambda: plant(arg),
    "sysv_plant": lambda: sysv(arg, 0o1000 | 0o666),
    "sysv": lambda: sysv(arg, 0),
    "procs": lambda: "pids=" + ",".join(d for d in os.listdir("/proc") if d.isdigit()),
    "mkdirs": lambda: mkdirs(arg),
    "mount": lambda: check(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None), "mounted"),
    "userns": lambda: check(libc.unshare(0x10000000), "in a user namespace"),
    "bpf": lambda: check(libc.syscall(321, 0, None, 0), "bpf"),
    "keyctl": lambda: check(libc.syscall(250, 0, -3, 0, 0, 0), "keyring"),
    "userfaultfd": lambda: check(libc.syscall(323, 0), "userfaultfd"),
    "perf_event_open": lambda: check(libc.syscall(298, None, 0, -1, -1, 0), "perf event"),
}
print("Content-Type: text/plain\n")
print("%s: %s" % (row, attempt(rows[row])))
"#;

struct Matrix {
    // Dropped first: condo stops before the test users are deleted.
    condo: Condo,
    t: TwoTenants,
}

impl Matrix {
    fn new() -> Self {
        Self::with_tenants("", "")
    }

    /// Both tenants get the attack script; `extra_a`/`extra_b` go into their
    /// `[tenant]` sections, `site_b` into B's site file.
    fn with(extra_a: &str, extra_b: &str, site_b: &str) -> Self {
        let t = TwoTenants::new();
        let config = t.config_tenants("", extra_a, extra_b);
        for name in ["a", "b"] {
            t.script(name, "cgi-bin/attack.py", ATTACK);
            t.append_site(
                name,
                "[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"",
            );
        }
        if !site_b.is_empty() {
            t.append_site("b", site_b);
        }
        write_owned(&t.root_b.join("secret.txt"), b"B's secret\n", &t.b, 0o600);
        write_owned(
            &t.root_b.join("group.txt"),
            b"B's group file\n",
            &t.b,
            0o640,
        );
        let condo = Condo::start(&config);
        // B's worker must exist to be attacked.
        let (body, _) = curl(&["-H", "Host: b.test", &format!("http://{}/", condo.pass)]);
        assert_eq!(body, "site B\n", "condo's log:\n{}", condo.log_text());
        Self { condo, t }
    }

    fn with_tenants(extra_a: &str, extra_b: &str) -> Self {
        Self::with(extra_a, extra_b, "")
    }

    /// Run attack `row` with `arg` as tenant a; the outcome after "row: ".
    fn attack(&self, row: &str, arg: &str) -> String {
        self.run_as("a", row, arg, &[])
    }

    /// Run `row` as `tenant` with more query parameters or curl arguments.
    fn run_as(&self, tenant: &str, row: &str, arg: &str, extra: &[&str]) -> String {
        let mut url = format!(
            "http://{}/cgi-bin/attack.py?row={row}&arg={}",
            self.condo.pass,
            percent(arg)
        );
        let mut args = vec!["-H".to_string(), format!("Host: {tenant}.test")];
        for e in extra {
            match e.strip_prefix('&') {
                Some(query) => url.push_str(&format!("&{query}")),
                None => args.push(e.to_string()),
            }
        }
        args.push(url);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (out, ok) = curl(&args);
        assert!(ok, "{row}: curl failed: {out}");
        out.trim()
            .strip_prefix(&format!("{row}: "))
            .unwrap_or_else(|| panic!("{row}: unexpected output {out:?}"))
            .to_string()
    }

    /// GET `path` from site `host`: (body, status).
    fn get(&self, host: &str, path: &str) -> (String, String) {
        self.condo.get(host, path)
    }

    fn b_still_served(&self) {
        let (body, ok) = curl(&[
            "-H",
            "Host: b.test",
            &format!("http://{}/", self.condo.pass),
        ]);
        assert!(ok && body == "site B\n", "B is down: {body}");
    }
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'.' | b'-' | b'_' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn attack_matrix_files_processes_sockets_and_environment() {
    if !require_root() {
        return;
    }
    let m = Matrix::new();
    let worker_b = m.condo.wait_child("worker", Some("b")).to_string();
    let dispatcher = m.condo.wait_child("dispatcher", None).to_string();
    let master = m.condo.pid().to_string();
    let b_secret = m.t.root_b.join("secret.txt").display().to_string();
    let b_group = m.t.root_b.join("group.txt").display().to_string();
    let b_root = m.t.root_b.display().to_string();
    let b_log =
        m.t.dir
            .path()
            .join("log/b.test.access.log")
            .display()
            .to_string();
    let a_log =
        m.t.dir
            .path()
            .join("log/a.test.access.log")
            .display()
            .to_string();
    let log_dir = m.t.dir.path().join("log").display().to_string();
    let outside = Outside::new("/srv");
    let b_public = outside.0.join("b-public.txt");
    write_owned(&b_public, b"B's world-readable file\n", &m.t.b, 0o644);
    let b_public = b_public.display().to_string();
    let outside_dir = outside.0.display().to_string();
    // Someone's abstract unix socket (no file mode protects those).
    let abstract_name = format!("condo-attack-{}", std::process::id());
    let _abstract = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name).unwrap();
        std::os::unix::net::UnixListener::bind_addr(&addr).unwrap()
    };
    let denied = ["EACCES", "EPERM", "ESRCH", "ENOENT"];
    let rows: Vec<(&str, &str, &str)> = vec![
        (
            "read B's world-readable file outside /tmp",
            "read",
            &b_public,
        ),
        ("list a directory of other sites", "list", &outside_dir),
        ("list /home", "list", "/home"),
        (
            "connect to an abstract unix socket",
            "abstract",
            &abstract_name,
        ),
        ("mount a filesystem", "mount", ""),
        ("make a user namespace", "userns", ""),
        ("load a BPF program", "bpf", ""),
        ("use the kernel keyring", "keyctl", ""),
        ("userfaultfd (race helper)", "userfaultfd", ""),
        ("perf_event_open", "perf_event_open", ""),
        ("read B's 0600 file", "read", &b_secret),
        ("read B's 0640 file", "read", &b_group),
        ("list B's docroot", "list", &b_root),
        ("list the log directory", "list", &log_dir),
        ("write B's access log", "write_log", &b_log),
        ("rewrite its own access log", "write_log", &a_log),
        ("hardlink B's file into its docroot", "hardlink", &b_secret),
        ("B worker's environment", "environ", &worker_b),
        ("B worker's memory map", "maps", &worker_b),
        ("B worker's fds", "fds", &worker_b),
        ("B worker's memory", "mem", &worker_b),
        ("the dispatcher's environment", "environ", &dispatcher),
        ("the dispatcher's fds", "fds", &dispatcher),
        ("the master's environment", "environ", &master),
        ("kill B's worker", "kill", &worker_b),
        ("stop B's worker", "stop", &worker_b),
        ("kill the dispatcher", "kill", &dispatcher),
        ("kill the master", "kill", &master),
        ("ptrace B's worker", "ptrace", &worker_b),
        ("ptrace the dispatcher", "ptrace", &dispatcher),
        ("process_vm_readv B's worker", "vm_read", &worker_b),
        ("setuid(0)", "setuid", ""),
    ];
    let mut failures = Vec::new();
    // The fences themselves: no capabilities, no_new_privs, a seccomp filter, on the
    // dispatcher (allow-list) and on B's worker (deny-list).
    for (who, pid) in [("dispatcher", &dispatcher), ("B's worker", &worker_b)] {
        let status = proc_status(pid.parse().unwrap());
        for (key, want) in [
            ("CapEff", "0000000000000000"),
            ("NoNewPrivs", "1"),
            ("Seccomp", "2"),
        ] {
            let got = status_field(&status, key);
            eprintln!("{:<40} {key} {got}", format!("{who}'s status"));
            if got != want {
                failures.push(format!("{who}: {key} is {got}, not {want}"));
            }
        }
    }
    for (name, row, arg) in &rows {
        let outcome = m.attack(row, arg);
        let ok = denied.iter().any(|d| outcome == *d);
        eprintln!("{:<40} {}", name, outcome);
        if !ok {
            failures.push(format!("{name}: {outcome}"));
        }
        m.b_still_served();
    }
    // What a's code inherits: stdin/stdout/stderr and the fd of its own listing, no
    // listener, log, IPC socket or key; an environment without server secrets.
    eprintln!("fd targets: {}", m.attack("own_fd_targets", ""));
    let fds = m.attack("own_fds", "");
    eprintln!("{:<40} {}", "fds a script inherits", fds);
    if !fds.ends_with("fds=0,1,2,3") {
        failures.push(format!("inherited fds: {fds}"));
    }
    // httpoxy: a client's `Proxy:` header must not become the script's HTTP_PROXY.
    let env = m.run_as("a", "own_env", "", &["-H", "Proxy: http://127.0.0.1:9/"]);
    eprintln!("{:<40} {}", "environment a script gets", env);
    for forbidden in [
        "HTTP_PROXY",
        "RUST_LOG",
        "CONDO",
        "SUDO",
        "SSH_",
        "HOME=/root",
    ] {
        if env.contains(forbidden) {
            failures.push(format!("environment has {forbidden}: {env}"));
        }
    }
    // Symlinks a planted in its own docroot, served by the static handler: to B's
    // 0600 file, to B's world-readable file, and to B's whole docroot.
    let links = [
        ("link-secret.txt", b_secret.as_str(), "/link-secret.txt"),
        ("link-public.txt", b_public.as_str(), "/link-public.txt"),
        ("link-dir", b_root.as_str(), "/link-dir/secret.txt"),
    ];
    for (name, target, path) in links {
        let made = m.run_as("a", "symlink", target, &[&format!("&name={name}")]);
        assert!(made.starts_with("SUCCEEDED"), "{name}: {made}");
        let (body, code) = m.get("a.test", path);
        eprintln!("{:<40} {code}", format!("fetch {path} (symlink)"));
        if body.contains("B's") || code == "200" {
            failures.push(format!("{path} via symlink: {code} {body}"));
        }
        m.b_still_served();
    }
    assert!(
        failures.is_empty(),
        "attacks that worked:\n{}",
        failures.join("\n")
    );
    std::thread::sleep(Duration::from_millis(100));
    m.b_still_served();
}

/// A symlink in a's docroot swapped between a's own file and B's world-readable file
/// as fast as the kernel allows while the file is fetched over and over: a check-then-
/// open server would sometimes serve B's file. condo opens as a's uid under a's
/// Landlock domain, so no interleaving reaches it.
#[test]
fn attack_matrix_symlink_race() {
    if !require_root() {
        return;
    }
    let m = Matrix::new();
    let outside = Outside::new("/srv");
    let b_public = outside.0.join("b-public.txt");
    write_owned(&b_public, b"B's world-readable file\n", &m.t.b, 0o644);
    let own = m.t.root_a.join("own.txt");
    write_owned(&own, b"a's own\n", &m.t.a, 0o644);
    let link = m.t.root_a.join("race.txt");
    let tmp = m.t.root_a.join(".race.tmp");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, link, tmp, a) = (
            stop.clone(),
            link.clone(),
            tmp.clone(),
            (m.t.a.uid, m.t.a.gid),
        );
        // Relative to a's own file (inside the root), absolute to B's.
        let targets = [PathBuf::from("own.txt"), b_public.clone()];
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < deadline
            {
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink(&targets[(swaps % 2) as usize], &tmp).unwrap();
                std::os::unix::fs::lchown(&tmp, Some(a.0), Some(a.1)).unwrap();
                std::fs::rename(&tmp, &link).unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let url = format!("http://{}/race.txt", m.condo.pass);
    let mut args = vec!["-s", "-H", "Host: a.test"];
    for _ in 0..300 {
        args.push(&url);
    }
    let (bodies, _) = curl(&args);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    let own_served = bodies.matches("a's own").count();
    eprintln!("300 fetches during {swaps} swaps: a's own file {own_served} times");
    assert!(swaps > 300, "the swapper barely ran: {swaps}");
    assert!(
        own_served > 0,
        "the race never even served a's file: {bodies:.200}"
    );
    assert!(
        !bodies.contains("B's"),
        "B's file was served: {bodies:.400}"
    );
    m.b_still_served();
}

const PHP_ROUTE: &str = "[[site.route]]\nsuffix = \".php\"\nhandler = \"fastcgi\"\ncommand = [\"php-cgi\"]\nprocesses_max = 1\n";
const WHO_PHP: &[u8] = b"<?php echo 'php of B as ', posix_getuid(), \"\\n\";";

/// B's PHP runs in a FastCGI pool on a unix socket. a cannot connect to that socket,
/// and cannot squat the directory B's next php-cgi will use: B starts it elsewhere.
#[test]
fn attack_matrix_fastcgi_socket() {
    if !require_root() {
        return;
    }
    let m = Matrix::with("", "", PHP_ROUTE);
    write_owned(&m.t.root_b.join("who.php"), WHO_PHP, &m.t.b, 0o644);
    let (body, code) = m.get("b.test", "/who.php");
    assert_eq!(code, "200", "B's PHP: {body}");
    let sockets = |uid: u32| -> Vec<PathBuf> {
        glob::glob(&format!("/tmp/condo-fcgi-{uid}-*/fcgi.sock"))
            .unwrap()
            .flatten()
            .collect()
    };
    let before = sockets(m.t.b.uid);
    assert!(!before.is_empty(), "B's FastCGI socket not found");
    let socket = before[0].display().to_string();
    let outcome = m.attack("connect", &socket);
    eprintln!("{:<40} {outcome}", "connect to B's FastCGI socket");
    assert!(matches!(outcome.as_str(), "EACCES" | "EPERM"), "{outcome}");
    // Squat: the names B's worker would use next, made by a first.
    let worker_b = m.condo.wait_child("worker", Some("b"));
    let prefix = format!("/tmp/condo-fcgi-{}-{worker_b}-", m.t.b.uid);
    let made = m.attack("mkdirs", &prefix);
    eprintln!("{:<40} {made}", "squat B's next socket directories");
    for php in children_named(worker_b, "php-cgi") {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(php as i32).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let (body, code) = m.get("b.test", "/who.php");
    assert_eq!(code, "200", "B's PHP after the squat: {body}");
    assert!(body.contains(&format!("as {}", m.t.b.uid)), "{body}");
    for socket in sockets(m.t.b.uid) {
        let dir = socket.parent().unwrap();
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir).unwrap());
        assert_eq!(
            owner,
            m.t.b.uid,
            "B's socket in a's directory {}",
            dir.display()
        );
    }
    for entry in glob::glob(&format!("{prefix}*")).unwrap().flatten() {
        let _ = std::fs::remove_dir(entry);
    }
    m.b_still_served();
}

/// One client connection asks for a's site, then for B's: the second request is
/// served by B's worker as B, never by a's worker (which would run B's code as a, or
/// show a's code B's request).
#[test]
fn attack_matrix_host_switch_on_one_connection() {
    if !require_root() {
        return;
    }
    let m = Matrix::new();
    for listener in [m.condo.pass, m.condo.proxy()] {
        let url = format!("http://{listener}/cgi-bin/attack.py?row=whoami&arg=");
        let (out, ok) = curl(&[
            "-s",
            "-H",
            "Host: a.test",
            &url,
            "--next",
            "-s",
            "-H",
            "Host: b.test",
            &url,
        ]);
        assert!(ok, "{out}");
        let expected = format!(
            "whoami: SUCCEEDED uid={}\nwhoami: SUCCEEDED uid={}\n",
            m.t.a.uid, m.t.b.uid
        );
        assert_eq!(out, expected, "on {listener}");
    }
    m.b_still_served();
}

/// A tenant naming root, or a uid outside `uid_range`, is refused by `condo check`
/// with the reason, and by a reload, which keeps every other site serving.
#[test]
fn attack_matrix_tenant_as_root_or_outside_the_range() {
    if !require_root() {
        return;
    }
    let m = Matrix::new();
    let config = m.t.dir.path().join("condo.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    for (user, reason) in [("root", "uid 0"), ("nobody", "outside server.uid_range")] {
        std::fs::write(
            &config,
            format!("{good}\n[tenant.evil]\nuser = \"{user}\"\n"),
        )
        .unwrap();
        let out = std::process::Command::new(CONDO)
            .args(["check", "-c"])
            .arg(&config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!(
            "{:<40} {}",
            format!("tenant as {user}"),
            text.lines().next().unwrap_or("")
        );
        assert!(!out.status.success(), "{text}");
        assert!(
            text.contains("tenant.evil") && text.contains(reason),
            "{text}"
        );
        let reload = std::process::Command::new(CONDO)
            .args(["reload", "-c"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(!reload.status.success(), "reload took a root tenant");
        m.b_still_served();
    }
    std::fs::write(&config, good).unwrap();
}

/// The cage's rows: with `isolation = "cage"`, what B leaves in /tmp, /dev/shm and
/// SysV shared memory does not exist for a, and a sees no process but its own.
#[test]
fn attack_matrix_cage() {
    if !require_root() {
        return;
    }
    let cage = "isolation = \"cage\"\n";
    let m = Matrix::with(cage, cage, PHP_ROUTE);
    // PHP in a cage: php-cgi's socket lives in the cage's own /tmp.
    write_owned(&m.t.root_b.join("who.php"), WHO_PHP, &m.t.b, 0o644);
    let (body, code) = m.get("b.test", "/who.php");
    assert_eq!(code, "200", "B's PHP in a cage: {body}");
    assert!(body.contains(&format!("as {}", m.t.b.uid)), "{body}");
    let home = Outside::new("/home");
    write_owned(&home.0.join("b.txt"), b"B's home file\n", &m.t.b, 0o644);
    for (row, arg) in [
        ("plant", "/tmp/condo-b-plant"),
        ("plant", "/var/tmp/condo-b-plant"),
        ("plant", "/dev/shm/condo-b-plant"),
        ("sysv_plant", "0x0c0d0b0b"),
    ] {
        let outcome = m.run_as("b", row, arg, &[]);
        assert!(
            outcome.starts_with("SUCCEEDED"),
            "B could not {row} {arg}: {outcome}"
        );
    }
    let worker_b = m.condo.wait_child("worker", Some("b")).to_string();
    let dispatcher = m.condo.wait_child("dispatcher", None).to_string();
    let master = m.condo.pid().to_string();
    let home_dir = home.0.display().to_string();
    let home_file = home.0.join("b.txt").display().to_string();
    let mut failures = Vec::new();
    for (name, row, arg) in [
        ("read B's file in /tmp", "read", "/tmp/condo-b-plant"),
        (
            "read B's file in /var/tmp",
            "read",
            "/var/tmp/condo-b-plant",
        ),
        (
            "read B's file in /dev/shm",
            "read",
            "/dev/shm/condo-b-plant",
        ),
        ("attach B's SysV shared memory", "sysv", "0x0c0d0b0b"),
        ("list another home", "list", home_dir.as_str()),
        (
            "read a world-readable file in a home",
            "read",
            home_file.as_str(),
        ),
        ("B worker's /proc entry", "environ", worker_b.as_str()),
        ("the dispatcher's /proc entry", "fds", dispatcher.as_str()),
    ] {
        let outcome = m.attack(row, arg);
        eprintln!("{name:<40} {outcome}");
        if !matches!(outcome.as_str(), "ENOENT" | "EACCES" | "EPERM") {
            failures.push(format!("{name}: {outcome}"));
        }
        m.b_still_served();
    }
    let procs = m.attack("procs", "");
    eprintln!("{:<40} {procs}", "processes a can see");
    // a's own script is there: /proc works, it only shows a's own.
    assert!(procs.starts_with("SUCCEEDED pids="), "{procs}");
    for pid in [&worker_b, &dispatcher, &master] {
        if procs
            .trim_start_matches("SUCCEEDED pids=")
            .split(',')
            .any(|p| p == pid)
        {
            failures.push(format!("a sees pid {pid}: {procs}"));
        }
    }
    // B's own processes still see B's plants: the cage hides, it does not lose.
    assert!(
        m.run_as("b", "read", "/tmp/condo-b-plant", &[])
            .contains("planted secret")
    );
    assert!(
        failures.is_empty(),
        "attacks that worked:\n{}",
        failures.join("\n")
    );
    m.b_still_served();
}

/// Path traversal in every encoding: never B's file, never outside a's root.
#[test]
fn attack_matrix_path_traversal() {
    if !require_root() {
        return;
    }
    let m = Matrix::new();
    let b_dir =
        m.t.root_b
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
    let paths = [
        format!("/../{b_dir}/secret.txt"),
        format!("/%2e%2e/{b_dir}/secret.txt"),
        format!("/%2E%2E%2F{b_dir}%2Fsecret.txt"),
        format!("/%252e%252e/{b_dir}/secret.txt"),
        format!("/..%5c{b_dir}%5csecret.txt"),
        format!("/.%2e/.%2e/{b_dir}/secret.txt"),
        "/..%00/etc/passwd".to_string(),
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd".to_string(),
    ];
    for path in paths {
        let (out, _) = curl(&[
            "--path-as-is",
            "-s",
            "-w",
            "\n%{http_code}",
            "-H",
            "Host: a.test",
            &format!("http://{}{path}", m.condo.pass),
        ]);
        assert!(
            !out.contains("secret") && !out.contains("root:"),
            "{path} leaked: {out}"
        );
        let code = out.rsplit('\n').next().unwrap();
        assert!(matches!(code, "400" | "404"), "{path}: {code}");
    }
    m.b_still_served();
}

/// The files condo itself creates have the modes SECURITY.md documents: tenants can
/// read their own logs (group) but not write them or list the log directory; the
/// ledger is root's alone; a php-cgi socket directory is its tenant's alone.
#[test]
fn file_modes_condo_creates() {
    if !require_root() {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let m = Matrix::with("", "", PHP_ROUTE);
    write_owned(&m.t.root_b.join("who.php"), WHO_PHP, &m.t.b, 0o644);
    assert_eq!(m.get("b.test", "/who.php").1, "200");
    // Usage is saved every few seconds; wait for the first save.
    let state = m.t.dir.path().join("state");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !state.join("usage.json").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = m.t.dir.path().join("log");
    let run = m.t.dir.path().join("run");
    let fcgi = glob::glob(&format!("/tmp/condo-fcgi-{}-*", m.t.b.uid))
        .unwrap()
        .flatten()
        .next()
        .expect("B's php-cgi socket directory");
    let expected: Vec<(PathBuf, u32, u32, Option<u32>)> = vec![
        (log.clone(), 0o711, 0, Some(0)),
        (log.join("error.log"), 0o640, 0, Some(0)),
        (log.join("b.test.access.log"), 0o640, 0, Some(m.t.b.gid)),
        (log.join("b.test.error.log"), 0o640, 0, Some(m.t.b.gid)),
        (state.clone(), 0o700, 0, Some(0)),
        (state.join("usage.json"), 0o600, 0, Some(0)),
        (run.join("condo.pid"), 0o644, 0, Some(0)),
        (fcgi.clone(), 0o700, m.t.b.uid, None),
    ];
    let mut wrong = Vec::new();
    for (path, mode, uid, gid) in expected {
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let got = (meta.mode() & 0o7777, meta.uid(), meta.gid());
        eprintln!("{:<60} {:o} {}:{}", path.display(), got.0, got.1, got.2);
        if got.0 != mode || got.1 != uid || gid.is_some_and(|g| g != got.2) {
            wrong.push(format!(
                "{}: {:o} {}:{}",
                path.display(),
                got.0,
                got.1,
                got.2
            ));
        }
    }
    assert!(wrong.is_empty(), "unexpected modes:\n{}", wrong.join("\n"));
}
