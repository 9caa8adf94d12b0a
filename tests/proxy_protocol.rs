//! PROXY protocol (v1 and v2) on a listener behind a trusted balancer: the client
//! address it names reaches CGI's REMOTE_ADDR and the access log; a connection from an
//! untrusted source is refused; curl's --haproxy-protocol works end to end.

mod common;

use std::process::Command;

use common::*;

/// Send `header` then a GET from source address `from` (python binds it), return what
/// came back ("" when the connection was closed unanswered).
fn raw_from(from: &str, to: std::net::SocketAddr, header: &[u8], path: &str) -> String {
    let script = r#"
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 0))
s.settimeout(5)
s.connect((sys.argv[2], int(sys.argv[3])))
s.sendall(bytes.fromhex(sys.argv[4]) + ("GET %s HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n" % sys.argv[5]).encode())
out = b""
try:
    while True:
        d = s.recv(65536)
        if not d:
            break
        out += d
except OSError:
    pass
sys.stdout.write(out.decode("latin-1"))
"#;
    let hex: String = header.iter().map(|b| format!("{b:02x}")).collect();
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            from,
            &to.ip().to_string(),
            &to.port().to_string(),
            &hex,
            path,
        ])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn proxy_headers_from_trusted_balancers_only() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("proxy_protocol_from = [\"127.0.0.2\"]");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen(
            "listen = [",
            "listen = [{ addr = \"127.0.0.1:0\", handover = \"pass\", proxy_protocol = true }, ",
            1,
        ),
    )
    .unwrap();
    t.script(
        "a",
        "cgi-bin/remote.sh",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nremote=%s\\n' \"$REMOTE_ADDR\"\n",
    );
    t.append_site(
        "a",
        "[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"",
    );
    let condo = Condo::start(&config);
    let pp = condo.proxy_protocol.expect("a PROXY listener");

    // v1 from the balancer: the script sees the client it names.
    let v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\n";
    let out = raw_from("127.0.0.2", pp, v1, "/cgi-bin/remote.sh");
    assert!(out.contains("\nremote=192.0.2.7\n"), "{out}");
    // v2 (binary), IPv6 client.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[0x21, 0x21, 0, 36]);
    v2.extend_from_slice(
        &"2001:db8::9"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    v2.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    v2.extend_from_slice(&[0x1f, 0x90, 0x00, 0x50]);
    let out = raw_from("127.0.0.2", pp, &v2, "/cgi-bin/remote.sh");
    assert!(out.contains("\nremote=2001:db8::9\n"), "{out}");
    // The same header from anyone else: refused, nothing answered.
    let out = raw_from("127.0.0.1", pp, v1, "/cgi-bin/remote.sh");
    assert_eq!(out, "");
    // From the balancer but without a header: refused too.
    let out = raw_from("127.0.0.2", pp, b"", "/");
    assert_eq!(out, "");
    // curl as a balancer.
    let (body, ok) = curl(&[
        "--interface",
        "127.0.0.2",
        "--haproxy-protocol",
        "-H",
        "Host: a.test",
        &format!("http://{pp}/cgi-bin/remote.sh"),
    ]);
    assert!(ok && body == "remote=127.0.0.2\n", "{body}");
    // The access log names the client from the header.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = std::fs::read_to_string(t.dir.path().join("log/a.test.access.log")).unwrap();
    assert!(log.lines().any(|l| l.starts_with("192.0.2.7 ")), "{log}");
    // The plain listeners are unaffected and do not take PROXY headers.
    let (body, ok) = curl(&[
        "-H",
        "Host: a.test",
        &format!("http://{}/cgi-bin/remote.sh", condo.pass),
    ]);
    assert!(ok && body == "remote=127.0.0.1\n", "{body}");
}
