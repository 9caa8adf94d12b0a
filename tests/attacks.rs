//! The tenant attack matrix (issue 6), first rows: tenant A's own code (a CGI script
//! running as A) attacks tenant B and the server. Each row is a real attempt; each
//! asserts that it failed and that B is still served. Rows that need the "cage"
//! (private /tmp, pid namespace) are not here yet.

mod common;

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
}
print("Content-Type: text/plain\n")
print("%s: %s" % (row, attempt(rows[row])))
"#;

struct Matrix {
    t: TwoTenants,
    condo: Condo,
}

impl Matrix {
    fn new() -> Self {
        let t = TwoTenants::new();
        let config = t.config("");
        for name in ["a", "b"] {
            t.script(name, "cgi-bin/attack.py", ATTACK);
            t.append_site(
                name,
                "[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"",
            );
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
        assert_eq!(
            curl(&["-H", "Host: b.test", &format!("http://{}/", condo.pass)]).0,
            "site B\n"
        );
        Self { t, condo }
    }

    /// Run attack `row` with `arg` as tenant a; the outcome after "row: ".
    fn attack(&self, row: &str, arg: &str) -> String {
        let url = format!(
            "http://{}/cgi-bin/attack.py?row={row}&arg={}",
            self.condo.pass,
            percent(arg)
        );
        let (out, ok) = curl(&["-H", "Host: a.test", &url]);
        assert!(ok, "{row}: curl failed: {out}");
        out.trim()
            .strip_prefix(&format!("{row}: "))
            .unwrap_or_else(|| panic!("{row}: unexpected output {out:?}"))
            .to_string()
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
    let denied = ["EACCES", "EPERM", "ESRCH", "ENOENT"];
    let rows: Vec<(&str, &str, &str)> = vec![
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
    let env = m.attack("own_env", "");
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
    assert!(
        failures.is_empty(),
        "attacks that worked:\n{}",
        failures.join("\n")
    );
    std::thread::sleep(Duration::from_millis(100));
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
