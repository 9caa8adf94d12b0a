//! Attack matrix rows (issue 15, items 2 and 3): a tenant turns a path the master
//! acts on as root into a symbolic link, or races its own fresh worker for the
//! worker's channel to the master.
//!
//! - Site root or TLS certificate replaced by a link to `/` or to another tenant's
//!   root, then a worker restart: the master used to build the new worker's Landlock
//!   rules (and, in a cage, its bind mounts) from those links, as root, and the
//!   tenant's code read what it liked. Now the worker is refused, naming the path.
//! - A worker used to be dumpable from its exec until its first instructions ran:
//!   the tenant's own code could take the worker's fds with pidfd_getfd.
//!
//! Each row runs the real attack as tenant A (its own uid, from outside condo where the
//! attacker needs no CGI) and asserts that it failed and that B kept serving.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Reads the file named by `?arg=` as the tenant: `read: SUCCEEDED <text>` or the errno.
const READ: &str = r#"#!/usr/bin/python3
import errno, os, urllib.parse
q = urllib.parse.parse_qs(os.environ.get("QUERY_STRING", ""))
print("Content-Type: text/plain\n")
try:
    print("read: SUCCEEDED " + open(q["arg"][0]).read())
except OSError as e:
    print("read: " + errno.errorcode.get(e.errno, str(e.errno)))
"#;

const B_PUBLIC: &str = "B's world-readable file";
const B_PAGE: &str = "B's world-readable page";

/// Run `script` with `sh -c` as `user` (its uid and gid, no other groups).
fn as_tenant(user: &TestUser, script: &str) -> String {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--clear-groups")
        .args(["sh", "-c", script])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("setpriv");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "as {}: `{script}`: {said}", user.name);
    said
}

/// Tenant A with two sites: `a.test` (its CGI) and `a2.test`, whose root (or TLS
/// certificate) A turns into a link; tenant B with a world-readable root and a
/// world-readable file outside the scratch tree.
struct Scene {
    // Dropped first: condo stops before the test users are deleted.
    condo: Condo,
    t: TwoTenants,
    config: PathBuf,
    a_home: PathBuf,
    b_public: PathBuf,
    _outside: Outside,
}

impl Scene {
    /// `extra_a`: lines in `[tenant.a]`; `a2_extra`: lines in site a2.test.
    fn new(extra_a: &str, a2_extra: &str) -> Self {
        Self::from_tenants(TwoTenants::new(), extra_a, a2_extra)
    }

    fn read_url(&self, path: &Path) -> String {
        format!("/cgi-bin/read.py?arg={}", path.display())
    }

    /// GET `path` from site `host` on the pass listener: (body, status).
    fn get(&self, host: &str, path: &str) -> (String, String) {
        self.condo.get(host, path)
    }

    fn b_still_served(&self) {
        let (body, code) = self.get("b.test", "/");
        assert_eq!(
            (body.as_str(), code.as_str()),
            ("site B\n", "200"),
            "B is down"
        );
    }

    /// `condo restart-tenant a`: the next request starts a new worker.
    fn restart_a(&self) {
        let out = Command::new(CONDO)
            .args(["restart-tenant", "a", "-c"])
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "restart-tenant: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// As A: replace `name` in A's home by a link to `target`, restart A's worker,
    /// then assert A reads and serves nothing of B's, is refused with the path named,
    /// and B keeps serving.
    fn attack(&self, name: &str, target: &Path, row: &str) {
        let script = format!(
            "cd '{home}' && mv '{name}' '{name}.real' && ln -s '{target}' '{name}'",
            home = self.a_home.display(),
            target = target.display()
        );
        as_tenant(&self.t.a, &script);
        self.restart_a();
        // The old worker drains; give the master a moment to see it go.
        std::thread::sleep(Duration::from_millis(300));
        let (cgi, cgi_code) = self.get("a.test", &self.read_url(&self.b_public));
        let (page, _) = self.get("a.test", &self.read_url(&self.t.root_b.join("page.txt")));
        let (served, _) = self.get("a2.test", &self.b_public.display().to_string());
        let (served_page, _) = self.get("a2.test", "/page.txt");
        eprintln!("{row}: A's CGI answered {cgi_code} {cgi:?}");
        for (what, body) in [
            ("A's CGI read B's file outside /tmp", &cgi),
            ("A's CGI read B's page", &page),
            ("A's site served B's file outside /tmp", &served),
            ("A's site served B's page", &served_page),
        ] {
            assert!(
                !body.contains(B_PUBLIC) && !body.contains(B_PAGE) && !body.contains("SUCCEEDED"),
                "{row}: {what}: {body}\ncondo's log:\n{}",
                self.condo.log_text()
            );
        }
        // The refused worker answers nothing: A's sites are unavailable, not open.
        assert_eq!(
            cgi_code, "503",
            "{row}: A's site with a refused worker: {cgi}"
        );
        let linked = self.a_home.join(name);
        let log = self.condo.log_text();
        let line = log.lines().find(|l| {
            l.contains("refusing")
                && l.contains(&*linked.to_string_lossy())
                && l.contains("symbolic link")
        });
        let line = line.unwrap_or_else(|| {
            panic!(
                "{row}: no log line names {} as a refused link:\n{log}",
                linked.display()
            )
        });
        eprintln!("{row}: {line}");
        // The check a service's start runs (`--skip-tenant-files`, the packaged unit's
        // ExecStartPre) says so too, without failing: a tenant must not be able to
        // fail it, and with it the host's start. (`condo reload` checks no tenant file.)
        let out = Command::new(CONDO)
            .args(["check", "--skip-tenant-files", "-c"])
            .arg(&self.config)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success()
                && said.lines().any(|l| l.starts_with("warning: ")
                    && l.contains(": tenant a: ")
                    && l.contains(&*linked.to_string_lossy())),
            "{row}: condo check --skip-tenant-files: {said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if name.starts_with("tls/") {
            // The admin's own `condo check` opens the site's certificate as the tenant
            // would, and reports the dead HTTPS at the key (never following the link
            // as root: the tenant's own rights refuse it).
            let out = Command::new(CONDO)
                .args(["check", "-c"])
                .arg(&self.config)
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(
                !out.status.success()
                    && said.contains("key `site.1.tls.cert`")
                    && said.contains("not a regular file"),
                "{row}: condo check: {said}"
            );
        }
        self.b_still_served();
    }
}

#[test]
fn attack_matrix_site_root_linked_to_slash() {
    if !require_root() {
        return;
    }
    let s = Scene::new("", "");
    s.attack("www2", Path::new("/"), "site root -> /");
}

#[test]
fn attack_matrix_site_root_linked_to_another_tenants_root() {
    if !require_root() {
        return;
    }
    let s = Scene::new("", "");
    let b_root = s.t.root_b.clone();
    s.attack("www2", &b_root, "site root -> B's root");
}

#[test]
fn attack_matrix_cage_site_root_linked_to_slash() {
    if !require_root() {
        return;
    }
    let s = Scene::new("isolation = \"cage\"\n", "");
    s.attack("www2", Path::new("/"), "cage: site root -> /");
}

/// In a cage the master used to bind-mount whatever the link named (here B's root)
/// into A's cage.
#[test]
fn attack_matrix_cage_site_root_linked_to_another_tenants_root() {
    if !require_root() {
        return;
    }
    let s = Scene::new("isolation = \"cage\"\n", "");
    let b_root = s.t.root_b.clone();
    s.attack("www2", &b_root, "cage: site root -> B's root");
}

/// The site's own certificate file (Landlock: read beneath it) made a link to `/`.
#[test]
fn attack_matrix_tls_certificate_linked_to_slash() {
    if !require_root() {
        return;
    }
    tls_certificate_linked_to_slash("");
}

/// The same in a cage, where the key files are also bind-mounted back into the cage's
/// own /tmp (files, not directories: those binds work too before the attack).
#[test]
fn attack_matrix_cage_tls_certificate_linked_to_slash() {
    if !require_root() {
        return;
    }
    tls_certificate_linked_to_slash("isolation = \"cage\"\n");
}

fn tls_certificate_linked_to_slash(extra_a: &str) {
    let t = TwoTenants::new();
    let a_home = t.root_a.parent().unwrap().to_path_buf();
    let tls = a_home.join("tls");
    // Placeholder PEM: the worker logs that it cannot use it and serves plain HTTP.
    write_owned(&tls.join("cert.pem"), b"not a certificate\n", &t.a, 0o644);
    write_owned(&tls.join("key.pem"), b"not a key\n", &t.a, 0o600);
    chown(&tls, &t.a, 0o700);
    let line = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        tls.join("cert.pem").display(),
        tls.join("key.pem").display()
    );
    let s = Scene::from_tenants(t, extra_a, &line);
    s.attack("tls/cert.pem", Path::new("/"), "TLS certificate -> /");
}

impl Scene {
    fn from_tenants(t: TwoTenants, extra_a: &str, a2_extra: &str) -> Self {
        let config = t.config_tenants("", extra_a, "");
        let a_home = t.root_a.parent().unwrap().to_path_buf();
        chown(t.root_b.parent().unwrap(), &t.b, 0o755);
        chown(&t.root_b, &t.b, 0o755);
        write_owned(&t.root_b.join("page.txt"), B_PAGE.as_bytes(), &t.b, 0o644);
        let outside = Outside::new("/srv");
        let b_public = outside.0.join("b-public.txt");
        write_owned(&b_public, B_PUBLIC.as_bytes(), &t.b, 0o644);
        let www2 = a_home.join("www2");
        write_owned(&www2.join("index.html"), b"site A2\n", &t.a, 0o644);
        chown(&www2, &t.a, 0o755);
        t.script("a", "cgi-bin/read.py", READ);
        t.append_site(
            "a",
            "[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"",
        );
        t.append_site(
            "a",
            &format!(
                "[[site]]\nname = \"a2.test\"\ntenant = \"a\"\nroot = \"{}\"\n{a2_extra}",
                www2.display()
            ),
        );
        let condo = Condo::start(&config);
        let scene = Self {
            condo,
            t,
            config,
            a_home,
            b_public,
            _outside: outside,
        };
        let (body, code) = scene.get("a.test", &scene.read_url(&scene.b_public));
        assert_eq!(code, "200", "A's CGI before the attack: {body}");
        assert_eq!(body.trim(), "read: EACCES", "before the attack");
        assert_eq!(scene.get("a2.test", "/").0, "site A2\n");
        scene.b_still_served();
        scene
    }
}

/// Watches /proc for new processes and, for each, spins on pidfd_getfd for its first
/// fds for a while: any fd it gets from a condo process is printed `GOT`. Also takes
/// an fd of a dumpable process of its own (`CONTROL ok`), so the technique is shown
/// to work. Ends when `stop` exists or after 20 s.
const RACER: &str = r#"
import ctypes, os, sys, time, subprocess
stop = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
def pidfd_open(pid):
    return libc.syscall(434, pid, 0)
def getfd(pidfd, fd):
    return libc.syscall(438, pidfd, fd, 0)
def pids():
    return set(int(p) for p in os.listdir("/proc") if p.isdigit())
control = subprocess.Popen(["sleep", "30"])
time.sleep(0.1)
cfd = pidfd_open(control.pid)
got = getfd(cfd, 1)
print("CONTROL ok" if got >= 0 else "CONTROL failed errno %d" % ctypes.get_errno(), flush=True)
seen = pids()
workers, tries = 0, 0
deadline = time.time() + 20
while time.time() < deadline and not os.path.exists(stop):
    for pid in pids() - seen:
        seen.add(pid)
        pidfd = pidfd_open(pid)
        if pidfd < 0:
            continue
        end = time.time() + 0.3
        was_worker = False
        while time.time() < end:
            try:
                cmd = open("/proc/%d/cmdline" % pid, "rb").read()
            except OSError:
                break
            if b"worker" in cmd:
                was_worker = True
            elif cmd and b"condo" not in cmd:
                break  # someone else's process: not a target
            for fd in range(0, 16):
                tries += 1
                new = getfd(pidfd, fd)
                if new >= 0:
                    try:
                        what = os.readlink("/proc/self/fd/%d" % new)
                    except OSError:
                        what = "?"
                    print("GOT pid %d fd %d (%s) cmdline %r" % (pid, fd, what, cmd[:60]), flush=True)
                    os.close(new)
        if was_worker:
            workers += 1
        os.close(pidfd)
    time.sleep(0.0005)
control.kill()
print("DONE workers %d tries %d" % (workers, tries), flush=True)
"#;

/// A worker is non-dumpable from its exec on: tenant code racing each new worker with
/// pidfd_getfd (the master's channel is one of its first fds) gets nothing, while the
/// same code does take an fd of its own dumpable process.
#[test]
fn attack_matrix_new_worker_fds_cannot_be_taken() {
    if !require_root() {
        return;
    }
    // isolation = "uid": nothing but the uid between the tenant and its worker.
    let t = TwoTenants::new();
    let config = t.config_tenants("", "isolation = \"uid\"\n", "");
    let condo = Condo::start(&config);
    let get = |host: &str| {
        curl(&[
            "-H",
            &format!("Host: {host}"),
            &format!("http://{}/", condo.pass),
        ])
        .0
    };
    assert_eq!(get("a.test"), "site A\n");
    // The kernel shows a non-dumpable process's /proc entries (but /proc/PID itself)
    // as root's.
    for (role, tenant, uid) in [
        ("worker", Some("a"), t.a.uid),
        ("dispatcher", None, t.dispatcher.uid),
    ] {
        use std::os::unix::fs::MetadataExt;
        let pid = condo.wait_child(role, tenant);
        let status = proc_status(pid);
        assert!(
            status_field(&status, "Uid").starts_with(&uid.to_string()),
            "{role}: {status}"
        );
        let owner = std::fs::metadata(format!("/proc/{pid}/fd")).unwrap().uid();
        assert_eq!(
            owner, 0,
            "the {role} is dumpable: /proc/{pid}/fd is uid {owner}'s"
        );
    }
    let stop = t.dir.path().join("stop-racer");
    let racer_path = t.dir.path().join("racer.py");
    std::fs::write(&racer_path, RACER).unwrap();
    std::fs::set_permissions(&racer_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let racer = Command::new("setpriv")
        .arg(format!("--reuid={}", t.a.uid))
        .arg(format!("--regid={}", t.a.gid))
        .arg("--clear-groups")
        .arg("python3")
        .arg(&racer_path)
        .arg(&stop)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv python3");
    // Let it take its control fd first.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let mut restarts = 0;
    while restarts < 20 && started.elapsed() < Duration::from_secs(15) {
        let out = Command::new(CONDO)
            .args(["restart-tenant", "a", "-c"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(out.status.success(), "restart-tenant");
        assert_eq!(get("a.test"), "site A\n", "A after restart {restarts}");
        restarts += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(&stop, "").unwrap();
    let out = racer.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "{restarts} restarts; the racer said:\n{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("CONTROL ok"),
        "the racer's technique failed on its own process: {said}"
    );
    let workers: usize = said
        .lines()
        .find_map(|l| l.strip_prefix("DONE workers "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the racer did not finish: {said}"));
    assert!(
        workers >= restarts / 2,
        "the racer saw only {workers} of {restarts} new workers"
    );
    assert!(
        !said.contains("GOT"),
        "tenant code took a worker's fd: {said}"
    );
    assert_eq!(get("b.test"), "site B\n");
}

/// The tenant flips its site root between its real directory and a link to `/` as
/// fast as it can while its worker is restarted over and over: each start either
/// opens the real directory or is refused; no interleaving grants `/`.
#[test]
fn attack_matrix_site_root_swapped_during_restarts() {
    if !require_root() {
        return;
    }
    let s = Scene::new("", "");
    let home = s.a_home.display().to_string();
    // As A, for at most 15 s: a link to / renamed over the root, then the real
    // directory renamed back (rename is atomic: the name is always one or the other).
    let swapper = Command::new("setpriv")
        .arg(format!("--reuid={}", s.t.a.uid))
        .arg(format!("--regid={}", s.t.a.gid))
        .arg("--clear-groups")
        .args([
            "python3",
            "-c",
            "import os, sys, time\n\
             os.chdir(sys.argv[1])\n\
             os.rename('www2', 'www2.real')\n\
             n, end = 0, time.time() + 15\n\
             while time.time() < end and not os.path.exists('stop'):\n\
             \x20   os.symlink('/', 'link.tmp')\n\
             \x20   os.rename('link.tmp', 'www2')\n\
             \x20   os.rename('www2.real', 'www2.tmp')\n\
             \x20   os.unlink('www2')\n\
             \x20   os.rename('www2.tmp', 'www2')\n\
             \x20   os.rename('www2', 'www2.real')\n\
             \x20   n += 1\n\
             os.rename('www2.real', 'www2') if not os.path.lexists('www2') else None\n\
             print(n)\n",
            &home,
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv python3");
    let (mut refused, mut served) = (0, 0);
    let started = Instant::now();
    while refused + served < 30 && started.elapsed() < Duration::from_secs(12) {
        s.restart_a();
        let (body, code) = s.get("a.test", &s.read_url(&s.b_public));
        assert!(
            !body.contains("SUCCEEDED") && !body.contains(B_PUBLIC),
            "a start during the swaps granted more than A's own: {body}"
        );
        match code.as_str() {
            "503" => refused += 1,
            "200" => served += 1,
            other => panic!("unexpected {other}: {body}"),
        }
        s.b_still_served();
    }
    std::fs::write(s.a_home.join("stop"), "").unwrap();
    let out = swapper.wait_with_output().unwrap();
    let swaps = String::from_utf8_lossy(&out.stdout).trim().to_string();
    eprintln!("{swaps} swaps; worker starts: {served} served, {refused} refused");
    assert!(
        swaps.parse::<u64>().unwrap_or(0) > 100,
        "the swapper barely ran: {swaps}"
    );
    assert!(
        refused + served >= 10,
        "too few starts: {refused} + {served}"
    );
}
