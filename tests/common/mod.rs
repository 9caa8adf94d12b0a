//! Test harness: throw-away system users, a scratch tree, and the real `condo` binary
//! started as root on 127.0.0.1 port 0. Everything is removed on drop, also when a
//! test fails.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CONDO: &str = env!("CARGO_BIN_EXE_condo");

/// True when the test can run. Without root it fails loudly under CI=true (a skipped
/// isolation test must never count as passed there) and skips with a note elsewhere.
pub fn require_root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("this test needs root (it creates users and switches uids) and CI=true");
    }
    eprintln!("SKIPPED: not root; run `sudo cargo test` for the isolation tests");
    false
}

/// True when `program` can be run. When it cannot, like [`require_root`]: fails
/// loudly under CI=true (.ci/run installs every tool the tests use), skips elsewhere.
pub fn require_tool(program: &str) -> bool {
    let runs = std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !runs {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("this test needs {program} (see .ci/run) and CI=true");
        }
        eprintln!("SKIPPED: {program} is not installed");
    }
    runs
}

/// A system user (and its group) that exists for the life of the value.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestUser {
    pub fn create(role: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("ct{}{}{}", std::process::id() % 100000, role, n);
        let status = Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(&name)
            .status()
            .expect("useradd");
        assert!(status.success(), "useradd {name} failed");
        let user = nix::unistd::User::from_name(&name).unwrap().unwrap();
        Self {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

/// A scratch directory that tenants can traverse (tempdirs are 0700 by default).
pub fn scratch() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("condo-test-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

pub fn write_owned(path: &Path, contents: &[u8], owner: &TestUser, mode: u32) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, contents).unwrap();
    chown(path, owner, mode);
}

pub fn chown(path: &Path, owner: &TestUser, mode: u32) {
    std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A site's docroot owned by `owner`, mode 0700 (only the owner can enter).
pub fn docroot(base: &Path, name: &str, owner: &TestUser) -> PathBuf {
    let home = base.join(name);
    let www = home.join("www");
    std::fs::create_dir_all(&www).unwrap();
    chown(&home, owner, 0o700);
    chown(&www, owner, 0o700);
    www
}

/// Two tenants `a` and `b` with sites `a.test` and `b.test`, and a dispatcher user.
pub struct TwoTenants {
    pub dir: tempfile::TempDir,
    pub a: TestUser,
    pub b: TestUser,
    pub dispatcher: TestUser,
    pub root_a: PathBuf,
    pub root_b: PathBuf,
}

impl TwoTenants {
    pub fn new() -> Self {
        let dir = scratch();
        let a = TestUser::create("a");
        let b = TestUser::create("b");
        let dispatcher = TestUser::create("d");
        let root_a = docroot(dir.path(), "a", &a);
        let root_b = docroot(dir.path(), "b", &b);
        write_owned(&root_a.join("index.html"), b"site A\n", &a, 0o600);
        write_owned(&root_b.join("index.html"), b"site B\n", &b, 0o600);
        Self {
            dir,
            a,
            b,
            dispatcher,
            root_a,
            root_b,
        }
    }

    /// The main config (listeners: pass and proxy on port 0) plus `extra_server` lines
    /// in [server], and one site file per tenant.
    pub fn config(&self, extra_server: &str) -> PathBuf {
        self.config_tenants(extra_server, "", "")
    }

    /// [`Self::config`] with more lines in `[tenant.a]` and `[tenant.b]`.
    pub fn config_tenants(&self, extra_server: &str, extra_a: &str, extra_b: &str) -> PathBuf {
        let base = self.dir.path();
        // Tests run in parallel, each with its own condo: each gets its own cgroup
        // parent (condo removes it when it stops), so they never share tenant groups.
        let cgroup = if extra_server.contains("cgroup_parent") {
            String::new()
        } else {
            format!(
                "cgroup_parent = \"condotest{}x{}\"\n",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::SeqCst)
            )
        };
        let state = base.join("state");
        let extra_server = format!(
            "{extra_server}\n{cgroup}state_dir = \"{}\"\n",
            state.display()
        );
        std::fs::create_dir_all(base.join("sites")).unwrap();
        let main = format!(
            "[server]\nlisten = [{{ addr = \"127.0.0.1:0\", handover = \"pass\" }}, {{ addr = \"127.0.0.1:0\", handover = \"proxy\" }}]\n\
             user = \"{d}\"\nuid_range = [100, 65000]\nlog_dir = \"{log}\"\nrun_dir = \"{run}\"\n{extra_server}\n\
             [tenant.a]\nuser = \"{a}\"\n{extra_a}\n[tenant.b]\nuser = \"{b}\"\n{extra_b}\n",
            d = self.dispatcher.name,
            a = self.a.name,
            b = self.b.name,
            log = base.join("log").display(),
            run = base.join("run").display(),
        );
        std::fs::write(base.join("condo.toml"), main).unwrap();
        std::fs::write(
            base.join("sites/a.toml"),
            format!("[[site]]\nname = \"a.test\"\naliases = [\"www.a.test\"]\ntenant = \"a\"\nroot = \"{}\"\n", self.root_a.display()),
        )
        .unwrap();
        std::fs::write(
            base.join("sites/b.toml"),
            format!(
                "[[site]]\nname = \"b.test\"\ntenant = \"b\"\nroot = \"{}\"\n",
                self.root_b.display()
            ),
        )
        .unwrap();
        base.join("condo.toml")
    }
}

/// A running `condo serve`, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Condo {
    child: Child,
    pub pass: SocketAddr,
    pub proxy: Option<SocketAddr>,
    /// The first TLS listener, if the config has one.
    pub tls: Option<SocketAddr>,
    /// The first listener that takes PROXY headers, if any.
    pub proxy_protocol: Option<SocketAddr>,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Condo {
    pub fn start(config: &Path) -> Self {
        let mut child = Command::new(CONDO)
            .args(["serve", "-c"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting condo");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let mut words = rest.split_whitespace();
                    let addr: SocketAddr = words.next().unwrap().parse().unwrap();
                    let kind = if rest.contains("proxy protocol") {
                        3
                    } else if rest.contains("(tls") {
                        2
                    } else {
                        u8::from(rest.contains("handover proxy"))
                    };
                    let _ = tx.send((addr, kind));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut pass = None;
        let mut proxy = None;
        let mut tls = None;
        let mut proxy_protocol = None;
        let wants_tls = std::fs::read_to_string(config).is_ok_and(|c| c.contains("tls_listen"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while pass.is_none() || proxy.is_none() || (wants_tls && tls.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((addr, 3)) => proxy_protocol = proxy_protocol.or(Some(addr)),
                Ok((addr, 2)) => tls = tls.or(Some(addr)),
                Ok((addr, 1)) => proxy = Some(addr),
                Ok((addr, _)) => pass = Some(addr),
                Err(_) => break,
            }
        }
        let mut condo = Self {
            child,
            pass: pass.unwrap_or_else(|| "0.0.0.0:0".parse().unwrap()),
            proxy,
            tls,
            proxy_protocol,
            log,
        };
        if pass.is_none() {
            let log = condo.log_text();
            let _ = condo.child.kill();
            panic!("condo did not start listening; its log:\n{log}");
        }
        condo
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn proxy(&self) -> SocketAddr {
        self.proxy.expect("config has a proxy listener")
    }

    /// GET `path` from site `host` on the pass listener: (body, status code).
    pub fn get(&self, host: &str, path: &str) -> (String, String) {
        let (out, _) = curl(&[
            "-s",
            "-w",
            "\n%{http_code}",
            "-H",
            &format!("Host: {host}"),
            &format!("http://{}{path}", self.pass),
        ]);
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        (body.to_string(), code.to_string())
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Pids of this master's children whose command line starts with `condo <role>`
    /// (and, for workers, `--tenant <tenant>`).
    pub fn children(&self, role: &str, tenant: Option<&str>) -> Vec<u32> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                continue;
            };
            if status_field(&status, "PPid") != self.pid().to_string() {
                continue;
            }
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.get(1).map(String::as_str) != Some(role) {
                continue;
            }
            if let Some(t) = tenant
                && !args.windows(2).any(|w| w[0] == "--tenant" && w[1] == t)
            {
                continue;
            }
            found.push(pid);
        }
        found
    }

    /// Wait until `children(role, tenant)` is non-empty.
    pub fn wait_child(&self, role: &str, tenant: Option<&str>) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(&pid) = self.children(role, tenant).first() {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "no {role} {tenant:?} child; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Condo {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Whatever assertion failed, condo's own account of it is the evidence.
            eprintln!(
                "--- condo's log ---\n{}\n--- end of condo's log ---",
                self.log_text()
            );
        }
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

pub fn proc_status(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap()
}

/// A parsed response read off a raw socket.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw client connection, to control exactly what goes on the wire.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn get(&mut self, host: &str, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        self.read_response(false).expect("response")
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Read one response (Content-Length framed; `head_request` for HEAD). `None` if
    /// the server closed the connection first.
    pub fn read_response(&mut self, head_request: bool) -> Option<Response> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill() {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| {
                l.split_once(':')
                    .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            })
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let no_body = head_request || status == 304 || status == 204;
        let chunked = headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        self.buf.drain(..end);
        if chunked && !no_body {
            let body = self.read_chunked()?;
            return Some(Response {
                status,
                headers,
                body,
            });
        }
        let length = if no_body { 0 } else { length };
        while self.buf.len() < length {
            if !self.fill() {
                return None;
            }
        }
        let body = self.buf[..length].to_vec();
        self.buf.drain(..length);
        Some(Response {
            status,
            headers,
            body,
        })
    }

    /// A chunked body (no trailers), strictly.
    fn read_chunked(&mut self) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                if !self.fill() {
                    return None;
                }
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&self.buf[..line_end]).ok()?, 16).ok()?;
            self.buf.drain(..line_end + 2);
            while self.buf.len() < size + 2 {
                if !self.fill() {
                    return None;
                }
            }
            assert_eq!(
                &self.buf[size..size + 2],
                b"\r\n",
                "chunk not followed by CRLF"
            );
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
            if size == 0 {
                return Some(body);
            }
        }
    }

    /// True when the server has closed the connection (EOF within the timeout).
    pub fn is_closed(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}

/// Run curl with `args`; returns (stdout, exit success).
pub fn curl(args: &[&str]) -> (String, bool) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is installed");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.success(),
    )
}

/// Pids of the live processes whose parent is `parent` and whose name is `comm`.
pub fn children_named(parent: u32, comm: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                return false;
            };
            status_field(&status, "PPid") == parent.to_string()
                && status_field(&status, "Name") == comm
                && status_field(&status, "State").starts_with(['R', 'S', 'D'])
        })
        .collect()
}

impl TwoTenants {
    /// Append TOML to the site file of tenant `name` ("a" or "b").
    pub fn append_site(&self, name: &str, toml: &str) {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join(format!("sites/{name}.toml")))
            .unwrap();
        writeln!(file, "{toml}").unwrap();
    }

    /// Write an executable script owned by tenant `name` at `rel` under its docroot.
    pub fn script(&self, name: &str, rel: &str, body: &str) {
        let (root, user) = match name {
            "a" => (&self.root_a, &self.a),
            _ => (&self.root_b, &self.b),
        };
        let path = root.join(rel);
        let dir = path.parent().unwrap();
        if !dir.exists() {
            std::fs::create_dir_all(dir).unwrap();
            chown(dir, user, 0o755);
        }
        write_owned(&path, body.as_bytes(), user, 0o755);
    }

    /// The site's error log, after a moment for the worker's writes to land.
    pub fn error_log(&self, site: &str) -> String {
        std::thread::sleep(Duration::from_millis(200));
        std::fs::read_to_string(self.dir.path().join(format!("log/{site}.error.log")))
            .unwrap_or_default()
    }
}

/// Try to connect to a unix socket as `user` (a real process with that uid, gid and no
/// supplementary groups): "connected", or the error's class and errno.
pub fn unix_connect_as(user: &TestUser, socket: &Path) -> String {
    let script = "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1])\n    print('connected')\nexcept OSError as e:\n    print(type(e).__name__, e.errno)\n";
    let out = Command::new("setpriv")
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--clear-groups")
        .args(["python3", "-c", script])
        .arg(socket)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("setpriv python3");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// A directory outside the scratch tree (which lives under /tmp, where every tenant
/// may write): where a careless host keeps sites, world-readable. Removed on drop.
pub struct Outside(pub PathBuf);

impl Outside {
    pub fn new(base: &str) -> Self {
        let dir = PathBuf::from(format!(
            "{base}/condo-outside-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self(dir)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A minimal HTTP/1.1 app server for `handler = "app"`: Python's http.server on the
/// listening unix socket condo passes as fd 3; answers "app ok".
pub const UNIX_APP: &str = r#"
import socket, socketserver, http.server
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"app ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
server = Server("unused", Handler, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=3)
server.serve_forever()
"#;

/// Where the tests find cgroup hierarchies (v1 on this machine and CI).
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// True when the v1 `memory` and `pids` hierarchies are mounted. Like
/// [`require_root`]: fails loudly under CI=true, skips elsewhere.
pub fn require_cgroup_v1() -> bool {
    let present = Path::new(CGROUP_ROOT).join("pids/cgroup.procs").exists()
        && Path::new(CGROUP_ROOT).join("memory/cgroup.procs").exists();
    if !present {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true but no cgroup v1 memory/pids hierarchies under {CGROUP_ROOT}"
        );
        eprintln!("skipping: no cgroup v1 hierarchies");
    }
    present
}

/// A scratch `cgroup_parent` (v1), removed (with any tenant groups left) on drop.
pub struct ScratchParent(pub String);

impl ScratchParent {
    pub fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        Self(format!(
            "condotest{}y{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ))
    }

    /// `<root>/<controller>/<parent>` for each v1 controller condo uses.
    pub fn dirs(&self) -> Vec<PathBuf> {
        ["memory", "cpu", "cpuacct", "pids", "blkio"]
            .iter()
            .map(|c| Path::new(CGROUP_ROOT).join(c).join(&self.0))
            .collect()
    }

    /// A file of `tenant`'s group, trimmed; `None` while it does not exist.
    pub fn try_tenant_file(&self, controller: &str, tenant: &str, file: &str) -> Option<String> {
        let path = Path::new(CGROUP_ROOT)
            .join(controller)
            .join(&self.0)
            .join(tenant)
            .join(file);
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// [`Self::try_tenant_file`] of a file that must exist.
    pub fn tenant_file(&self, controller: &str, tenant: &str, file: &str) -> String {
        self.try_tenant_file(controller, tenant, file)
            .unwrap_or_else(|| panic!("{controller}/{}/{tenant}/{file} does not exist", self.0))
    }
}

impl Drop for ScratchParent {
    fn drop(&mut self) {
        for dir in self.dirs() {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten().filter(|e| e.path().is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// `condo ARGS... -c CONFIG`: (stdout and stderr together, success).
pub fn condo_cmd(config: &Path, args: &[&str]) -> (String, bool) {
    let out = Command::new(CONDO)
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .unwrap();
    (
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        out.status.success(),
    )
}
