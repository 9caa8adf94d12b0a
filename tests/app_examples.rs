//! The minimal app servers README's "App servers" section shows, each run as written
//! there behind `handler = "app"`: Python's http.server, a WSGI app on wsgiref, and
//! Node's http module — each takes its listening socket as fd 3.

mod common;

use std::io::Write;

use common::*;

const PYTHON_HTTP_SERVER: &str = r#"import http.server, socket

class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from http.server\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

server = http.server.HTTPServer(("", 0), Hello, bind_and_activate=False)
server.socket = socket.socket(fileno=3)  # condo's listening socket
server.serve_forever()
"#;

const PYTHON_WSGI: &str = r#"import socket
from wsgiref.simple_server import WSGIServer, WSGIRequestHandler

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from wsgi, " + environ["PATH_INFO"].encode() + b"\n"]

server = WSGIServer(("", 0), WSGIRequestHandler, bind_and_activate=False)
server.socket = socket.socket(fileno=3)  # condo's listening socket
server.server_name, server.server_port = "localhost", 80  # what bind would have set
server.setup_environ()
server.set_app(app)
server.serve_forever()
"#;

const NODE_HTTP: &str = r#"require("http")
  .createServer((req, res) => {
    res.writeHead(200, { "Content-Type": "text/plain" });
    res.end("hello from node\n");
  })
  .listen({ fd: 3 }); // condo's listening socket
"#;

fn site_with_app(t: &TwoTenants, file: &str, source: &str, command: &str) {
    let home = t.root_a.parent().unwrap().to_path_buf();
    let appdir = home.join(format!("app-{file}"));
    write_owned(&appdir.join(file), source.as_bytes(), &t.a, 0o644);
    chown(&appdir, &t.a, 0o755);
    let mut site = std::fs::OpenOptions::new()
        .append(true)
        .open(t.dir.path().join("sites/a.toml"))
        .unwrap();
    let prefix = file.replace('.', "-");
    writeln!(
        site,
        "[[site.route]]\npath = \"/{prefix}/\"\nhandler = \"app\"\ncommand = {command}\nworkdir = \"{}\"\ntimeout = \"20s\"\n",
        appdir.display()
    )
    .unwrap();
}

#[test]
fn the_readme_app_examples_serve_as_written() {
    if !require_root() || !require_tool("node") {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    site_with_app(
        &t,
        "server.py",
        PYTHON_HTTP_SERVER,
        "[\"python3\", \"server.py\"]",
    );
    site_with_app(&t, "wsgi.py", PYTHON_WSGI, "[\"python3\", \"wsgi.py\"]");
    site_with_app(&t, "server.js", NODE_HTTP, "[\"node\", \"server.js\"]");
    let condo = Condo::start(&config);
    for addr in [condo.pass, condo.proxy()] {
        for (path, expected) in [
            ("/server-py/x", "hello from http.server\n"),
            ("/wsgi-py/y", "hello from wsgi, /wsgi-py/y\n"),
            ("/server-js/z", "hello from node\n"),
        ] {
            let mut c = Client::connect(addr);
            let r = c.get("a.test", path);
            assert_eq!(
                (r.status, r.text()),
                (200, expected.to_string()),
                "{path}: {}\n{}",
                t.error_log("a.test"),
                condo.log_text()
            );
        }
    }
}
