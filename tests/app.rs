//! `handler = "app"`: the tenant's own HTTP server (real python3 apps), started by the
//! tenant's worker as the tenant on a unix socket condo made, proxied, restarted when
//! it dies, and unreachable for other tenants.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// A threaded HTTP/1.1 server on the socket condo passes as fd 3. GET and POST answer
/// with who it runs as and what condo told it; `/app/ws` is a one-frame WebSocket echo.
const APP: &str = r#"
import base64, hashlib, http.server, os, pwd, socket, socketserver, time

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, body):
        text = "user=%s xff=%s fwd=%s listen_pid=%s body=%s" % (
            pwd.getpwuid(os.getuid()).pw_name,
            self.headers.get("X-Forwarded-For"),
            self.headers.get("Forwarded"),
            os.environ.get("LISTEN_PID") == str(os.getpid()),
            body.decode(),
        )
        data = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/app/ws":
            return self.websocket()
        if self.path == "/app/unframed":
            # No length and no chunking: the body ends when the app closes.
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"until close")
            self.close_connection = True
            return
        if self.path == "/app/sleep":
            time.sleep(30)
        self.reply(b"")

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "42")
        self.end_headers()

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.reply(self.rfile.read(n))

    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        b0, b1 = self.rfile.read(2)
        length = b1 & 0x7F
        if length == 126:
            length = int.from_bytes(self.rfile.read(2), "big")
        elif length == 127:
            length = int.from_bytes(self.rfile.read(8), "big")
        mask = self.rfile.read(4) if b1 & 0x80 else b"\0\0\0\0"
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
        self.wfile.write(bytes([0x81, len(payload)]) + payload)
        self.wfile.flush()
        self.close_connection = True

class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

assert os.environ["LISTEN_FDS"] == "1"
server = Server("unused", Handler, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=3)
server.serve_forever()
"#;

fn setup() -> (TwoTenants, PathBuf) {
    setup_with("command = [\"python3\", \"app.py\"]\ntimeout = \"10s\"")
}

/// Both tenants get APP in ~/app and an app route at /app/ with `settings`.
fn setup_with(settings: &str) -> (TwoTenants, PathBuf) {
    let t = TwoTenants::new();
    let config = t.config("");
    for (name, root, user) in [("a", &t.root_a, &t.a), ("b", &t.root_b, &t.b)] {
        let home = root.parent().unwrap().to_path_buf();
        let appdir = home.join("app");
        write_owned(&appdir.join("app.py"), APP.as_bytes(), user, 0o644);
        chown(&appdir, user, 0o755);
        let mut site = std::fs::OpenOptions::new()
            .append(true)
            .open(t.dir.path().join(format!("sites/{name}.toml")))
            .unwrap();
        writeln!(
            site,
            "[[site.route]]\npath = \"/app/\"\nhandler = \"app\"\nworkdir = \"{}\"\n{settings}\n",
            appdir.display()
        )
        .unwrap();
    }
    (t, config)
}

#[test]
fn apps_run_as_each_tenant_behind_both_handovers() {
    if !require_root() {
        return;
    }
    let (t, config) = setup();
    let condo = Condo::start(&config);
    for addr in [condo.pass, condo.proxy()] {
        for (host, user) in [("a.test", &t.a), ("b.test", &t.b)] {
            let mut c = Client::connect(addr);
            c.send(
                format!("GET /app/x HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n\r\n")
                    .as_bytes(),
            );
            let r = c.read_response(false).expect("response");
            assert_eq!(r.status, 200, "{}\n{}", r.text(), condo.log_text());
            assert_eq!(
                r.text(),
                format!(
                    "user={} xff=127.0.0.1 fwd=for=127.0.0.1;proto=http listen_pid=True body=",
                    user.name
                )
            );
            // A body reaches the app, on the same keep-alive connection.
            c.send(
                format!("POST /app/form HTTP/1.1\r\nHost: {host}\r\nContent-Length: 11\r\n\r\nhello=world").as_bytes(),
            );
            let r = c.read_response(false).expect("response");
            assert!(r.text().ends_with("body=hello=world"), "{}", r.text());
            // And static files still come after it.
            assert_eq!(c.get(host, "/index.html").status, 200);
        }
    }
    // The app is the worker's child and runs as the tenant.
    let worker = condo.wait_child("worker", Some("a"));
    let apps = children_named(worker, "python3");
    assert_eq!(apps.len(), 1, "{apps:?}");
    let uid = status_field(&proc_status(apps[0]), "Uid");
    assert_eq!(
        uid.split_whitespace().next(),
        Some(t.a.uid.to_string().as_str())
    );
}

#[test]
fn websocket_echo_on_both_handovers() {
    if !require_root() {
        return;
    }
    let (_t, config) = setup();
    let condo = Condo::start(&config);
    for addr in [condo.pass, condo.proxy()] {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            b"GET /app/ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).unwrap(), 1, "{}", condo.log_text());
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        // RFC 6455's own example key and answer.
        assert!(
            head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{head}"
        );
        let payload = b"hello over ws";
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![0x81, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        s.write_all(&frame).unwrap();
        let mut echo = vec![0u8; 2 + payload.len()];
        s.read_exact(&mut echo).unwrap();
        assert_eq!(&echo[..2], &[0x81, payload.len() as u8]);
        assert_eq!(&echo[2..], payload);
    }
}

#[test]
fn a_killed_app_is_restarted_by_the_next_request() {
    if !require_root() {
        return;
    }
    let (_t, config) = setup();
    let condo = Condo::start(&config);
    let mut c = Client::connect(condo.pass);
    assert_eq!(c.get("a.test", "/app/").status, 200, "{}", condo.log_text());
    let worker = condo.wait_child("worker", Some("a"));
    let apps = children_named(worker, "python3");
    assert_eq!(apps.len(), 1, "{apps:?}");
    let pid = rustix::process::Pid::from_raw(apps[0] as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut c = Client::connect(condo.pass);
    let r = c.get("a.test", "/app/");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), condo.log_text());
    let now = children_named(worker, "python3");
    assert!(now.len() == 1 && now[0] != apps[0], "{now:?}");
}

#[test]
fn another_tenant_cannot_connect_to_the_app_socket() {
    if !require_root() {
        return;
    }
    let (t, config) = setup();
    let condo = Condo::start(&config);
    let mut c = Client::connect(condo.pass);
    assert_eq!(c.get("a.test", "/app/").status, 200, "{}", condo.log_text());
    let worker = condo.wait_child("worker", Some("a"));
    let app = children_named(worker, "python3")[0];
    let environ = std::fs::read(format!("/proc/{app}/environ")).unwrap();
    let socket = environ
        .split(|&b| b == 0)
        .find_map(|v| v.strip_prefix(b"CONDO_SOCKET="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .expect("CONDO_SOCKET in the app's environment");
    assert!(std::path::Path::new(&socket).exists(), "{socket}");
    assert_eq!(
        unix_connect_as(&t.b, std::path::Path::new(&socket)),
        "PermissionError 13"
    );
    // The tenant itself can: the refusal is the directory's mode, not a broken socket.
    assert_eq!(
        unix_connect_as(&t.a, std::path::Path::new(&socket)),
        "connected"
    );
}

#[test]
fn unframed_and_head_responses_keep_the_connection() {
    if !require_root() {
        return;
    }
    let (_t, config) = setup();
    let condo = Condo::start(&config);
    for addr in [condo.pass, condo.proxy()] {
        let mut c = Client::connect(addr);
        let r = c.get("a.test", "/app/unframed");
        assert_eq!(r.status, 200, "{}", condo.log_text());
        // Re-framed as chunked for the HTTP/1.1 client, so the connection goes on.
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        assert_eq!(r.text(), "until close");
        c.send(b"HEAD /app/x HTTP/1.1\r\nHost: a.test\r\n\r\n");
        let r = c.read_response(true).expect("HEAD response");
        assert_eq!((r.status, r.header("content-length")), (200, Some("42")));
        assert_eq!(c.get("a.test", "/app/x").status, 200);
    }
}

#[test]
fn an_idle_app_is_stopped_and_started_again() {
    if !require_root() {
        return;
    }
    let (_t, config) = setup_with("command = [\"python3\", \"app.py\"]\nidle_timeout = \"1s\"");
    let condo = Condo::start(&config);
    let mut c = Client::connect(condo.pass);
    assert_eq!(c.get("a.test", "/app/").status, 200, "{}", condo.log_text());
    let worker = condo.wait_child("worker", Some("a"));
    assert_eq!(children_named(worker, "python3").len(), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !children_named(worker, "python3").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle app was not stopped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.get("a.test", "/app/").status, 200);
    assert_eq!(children_named(worker, "python3").len(), 1);
}

#[test]
fn a_crashing_app_is_restarted_with_backoff() {
    if !require_root() {
        return;
    }
    let (t, config) = setup_with(
        "command = [\"python3\", \"-c\", \"import sys; sys.exit(3)\"]\ntimeout = \"5s\"",
    );
    let condo = Condo::start(&config);
    let statuses: Vec<u16> = (0..3)
        .map(|_| {
            let status = Client::connect(condo.pass).get("a.test", "/app/").status;
            // Time for the app to exit, so the next request sees it dead.
            std::thread::sleep(Duration::from_millis(500));
            status
        })
        .collect();
    // Started, died: 502. The first restart is immediate: 502 again. Then a delay,
    // during which requests get 503 instead of starting it again.
    assert_eq!(statuses, [502, 502, 503], "{}", condo.log_text());
    let log = t.error_log("a.test");
    assert!(log.contains("exit status: 3"), "{log}");
    assert!(log.contains("keeps exiting"), "{log}");
}

#[test]
fn a_hanging_app_gets_504() {
    if !require_root() {
        return;
    }
    let (t, config) = setup_with("command = [\"python3\", \"app.py\"]\ntimeout = \"1s\"");
    let condo = Condo::start(&config);
    let started = std::time::Instant::now();
    let mut c = Client::connect(condo.pass);
    assert_eq!(c.get("a.test", "/app/sleep").status, 504);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(t.error_log("a.test").contains("no response from the app"));
    // The app itself still serves.
    assert_eq!(
        Client::connect(condo.pass).get("a.test", "/app/").status,
        200
    );
}
