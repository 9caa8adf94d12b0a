//! The foundation's end-to-end tests: the real binary, as root, with throw-away users.

mod common;

use std::os::unix::fs::symlink;
use std::time::Duration;

use common::*;

fn groups_of(user: &TestUser) -> Vec<u32> {
    let name = std::ffi::CString::new(user.name.clone()).unwrap();
    let mut groups: Vec<u32> =
        nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(user.gid))
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
    groups.sort();
    groups
}

fn ids(field: &str) -> Vec<u32> {
    field
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

#[test]
fn workers_run_as_their_tenant_and_the_dispatcher_unprivileged() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let condo = Condo::start(&t.config(""));
    // Files of mode 0600 can only be read by their owner: serving them proves the uid.
    for (host, body) in [("a.test", "site A\n"), ("b.test", "site B\n")] {
        let mut c = Client::connect(condo.pass);
        let r = c.get(host, "/");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, body),
            "{}",
            condo.log_text()
        );
    }
    for (tenant, user) in [("a", &t.a), ("b", &t.b)] {
        let pid = condo.wait_child("worker", Some(tenant));
        let status = proc_status(pid);
        assert_eq!(
            ids(&status_field(&status, "Uid")),
            vec![user.uid; 4],
            "worker {tenant} uid"
        );
        assert_eq!(
            ids(&status_field(&status, "Gid")),
            vec![user.gid; 4],
            "worker {tenant} gid"
        );
        let mut groups = ids(&status_field(&status, "Groups"));
        groups.sort();
        assert_eq!(
            groups,
            groups_of(user),
            "worker {tenant} supplementary groups"
        );
        assert_eq!(status_field(&status, "CapEff"), "0000000000000000");
        assert_eq!(status_field(&status, "NoNewPrivs"), "1");
        // Non-dumpable: /proc/PID/environ etc. belong to root, not to the tenant.
        let meta = std::fs::metadata(format!("/proc/{pid}/environ")).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&meta),
            0,
            "worker {tenant} must be non-dumpable"
        );
        // Environment cleared, no fds but its own: stdin/out/err and its sockets.
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let vars: Vec<&[u8]> = environ
            .split(|&b| b == 0)
            .filter(|v| !v.is_empty())
            .collect();
        assert!(
            vars.iter().all(|v| v.starts_with(b"RUST_LOG=")),
            "worker env: {:?}",
            String::from_utf8_lossy(&environ)
        );
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
        {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            let target = target.to_string_lossy();
            assert!(
                target.starts_with("socket:")
                    || target.starts_with("anon_inode:")
                    || target.starts_with("pipe:")
                    || target == "/dev/null"
                    || target.ends_with(&format!("/log/{tenant}.test.access.log"))
                    || target.ends_with(&format!("/log/{tenant}.test.error.log"))
                    || target.ends_with(&format!("/{tenant}/www"))
                    // Its own group's OOM counter, opened read-only by the master (so
                    // a script killed at memory_max is reported as such).
                    || (target.starts_with("/sys/fs/cgroup/")
                        && (target.ends_with("/memory.oom_control")
                            || target.ends_with("/memory.events"))
                        && fd_read_only(pid, &fd.file_name().to_string_lossy())),
                "worker {tenant} holds an unexpected fd: {target}"
            );
        }
    }
    let d = condo.wait_child("dispatcher", None);
    let status = proc_status(d);
    assert_eq!(
        ids(&status_field(&status, "Uid")),
        vec![t.dispatcher.uid; 4]
    );
    assert_ne!(t.dispatcher.uid, 0);
    assert_eq!(status_field(&status, "CapEff"), "0000000000000000");
    assert_eq!(status_field(&status, "CapPrm"), "0000000000000000");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    assert_eq!(
        ids(&status_field(&status, "Groups")),
        vec![t.dispatcher.gid]
    );
}

#[test]
fn another_tenants_private_file_is_never_served() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let secret = t.root_b.join("secret.txt");
    write_owned(&secret, b"B's secret\n", &t.b, 0o600);
    // A's site gets every kind of path towards B's file.
    symlink(&secret, t.root_a.join("link-abs.txt")).unwrap();
    symlink("../../b/www/secret.txt", t.root_a.join("link-rel.txt")).unwrap();
    symlink(&t.root_b, t.root_a.join("bdir")).unwrap();
    symlink("../../b/www", t.root_a.join("bdir-rel")).unwrap();
    // A world-readable copy outside A's root: the root, not only permissions, stops it.
    let outside = t.dir.path().join("a/outside.txt");
    write_owned(&outside, b"outside A's root\n", &t.a, 0o644);
    symlink(&outside, t.root_a.join("out.txt")).unwrap();
    let condo = Condo::start(&t.config(""));
    for addr in [condo.pass, condo.proxy()] {
        for path in [
            "/link-abs.txt",
            "/link-rel.txt",
            "/bdir/secret.txt",
            "/bdir-rel/secret.txt",
            "/../b/www/secret.txt",
            "/../../b/www/secret.txt",
            "/%2e%2e/b/www/secret.txt",
            "/%2e%2e/%2e%2e/b/www/secret.txt",
            "/.%2e/.%2e/b/www/secret.txt",
            "/%252e%252e/%252e%252e/b/www/secret.txt",
            "/..%2fb/www/secret.txt",
            "/..\\..\\b\\www\\secret.txt",
            "/out.txt",
        ] {
            let mut c = Client::connect(addr);
            let r = c.get("a.test", path);
            assert!(
                (400..500).contains(&r.status)
                    && !r.text().contains("secret")
                    && !r.text().contains("outside"),
                "{addr} {path}: got {} {:?}",
                r.status,
                r.text()
            );
        }
        // And B's own site still serves it, so the file was really there to steal.
        let mut c = Client::connect(addr);
        assert_eq!(c.get("b.test", "/secret.txt").text(), "B's secret\n");
    }
}

fn alternating_hosts_on_one_connection(use_proxy: bool) {
    let t = TwoTenants::new();
    let condo = Condo::start(&t.config(""));
    let addr = if use_proxy { condo.proxy() } else { condo.pass };
    let mut c = Client::connect(addr);
    for i in 0..20 {
        let (host, body) = if i % 2 == 0 {
            ("a.test", "site A\n")
        } else {
            ("b.test", "site B\n")
        };
        let r = c.get(host, "/");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, body),
            "request {i} on one connection"
        );
        assert_ne!(r.header("connection"), Some("close"));
    }
    // curl agrees: six transfers alternating tenants (`--next` keeps curl's connection
    // cache; the Host header differs per transfer), one TCP connection in total.
    let url = format!("http://{addr}/");
    let mut args: Vec<String> = Vec::new();
    for i in 0..6 {
        if i > 0 {
            args.push("--next".into());
        }
        let host = if i % 2 == 0 { "a.test" } else { "b.test" };
        args.extend([
            "-s".into(),
            "-H".into(),
            format!("Host: {host}"),
            url.clone(),
        ]);
        args.extend([
            "-w".into(),
            "%{http_code} %{num_connects}\\n".into(),
            "-o".into(),
            "/dev/null".into(),
        ]);
    }
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (out, ok) = curl(&arg_refs);
    assert!(ok, "curl failed: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert!(lines.iter().all(|l| l.starts_with("200 ")), "{out}");
    let connects: u32 = lines
        .iter()
        .map(|l| l[4..].trim().parse::<u32>().unwrap())
        .sum();
    assert_eq!(
        connects, 1,
        "curl opened {connects} connections for 6 alternating requests"
    );
}

#[test]
fn one_connection_alternates_tenants_in_pass_mode() {
    if !require_root() {
        return;
    }
    alternating_hosts_on_one_connection(false);
}

#[test]
fn one_connection_alternates_tenants_in_proxy_mode() {
    if !require_root() {
        return;
    }
    alternating_hosts_on_one_connection(true);
}

#[test]
fn pipelined_requests_across_tenants_in_both_modes() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let condo = Condo::start(&t.config(""));
    for addr in [condo.pass, condo.proxy()] {
        let mut c = Client::connect(addr);
        let mut batch = Vec::new();
        let hosts = ["a.test", "a.test", "b.test", "a.test", "b.test", "b.test"];
        for host in hosts {
            batch.extend_from_slice(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        }
        batch.extend_from_slice(b"HEAD / HTTP/1.1\r\nHost: a.test\r\n\r\n");
        c.send(&batch);
        for host in hosts {
            let r = c.read_response(false).expect("pipelined response");
            let want = if host == "a.test" {
                "site A\n"
            } else {
                "site B\n"
            };
            assert_eq!(r.text(), want, "{addr}");
        }
        let r = c.read_response(true).expect("HEAD response");
        assert_eq!((r.status, r.header("content-length")), (200, Some("7")));
        assert!(r.body.is_empty());
    }
}

#[test]
fn malformed_heads_get_400_and_a_close_in_both_modes() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let condo = Condo::start(&t.config(""));
    let cases: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Fold: a\r\n  b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Nul: a\0b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.test\r\nBad Header: x\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a.test\n\n",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
    ];
    for addr in [condo.pass, condo.proxy()] {
        for case in cases {
            let mut c = Client::connect(addr);
            c.send(case);
            let r = c
                .read_response(false)
                .unwrap_or_else(|| panic!("no response to {:?}", String::from_utf8_lossy(case)));
            assert_eq!(r.status, 400, "{addr} {:?}", String::from_utf8_lossy(case));
            assert_eq!(r.header("connection"), Some("close"));
            assert!(c.is_closed(), "connection left open after 400");
        }
        // Bad chunk framing in a body: the request head is fine, the body is not.
        let mut c = Client::connect(addr);
        c.send(b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n");
        if let Some(r) = c.read_response(false) {
            assert!(
                r.status == 400 || r.header("connection") == Some("close"),
                "{addr}: {r:?}"
            );
        }
        assert!(
            c.is_closed(),
            "{addr}: connection left open after a bad chunked body"
        );
        // A head over the size limit gets 431.
        let mut c = Client::connect(addr);
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n",
            "x".repeat(20000)
        );
        c.send(big.as_bytes());
        assert_eq!(c.read_response(false).map(|r| r.status), Some(431));
    }
}

#[test]
fn unknown_hosts_get_404_or_421_as_configured_and_a_default_site_catches_them() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let condo = Condo::start(&t.config(""));
    let mut c = Client::connect(condo.pass);
    assert_eq!(c.get("nobody.test", "/").status, 404);
    // Host matching: case, port, trailing dot, aliases, absolute-form wins.
    for host in ["A.TEST", "a.test:8080", "a.test.", "www.a.test"] {
        let mut c = Client::connect(condo.pass);
        assert_eq!(c.get(host, "/").text(), "site A\n", "{host}");
    }
    let mut c = Client::connect(condo.pass);
    c.send(b"GET http://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!(c.read_response(false).unwrap().text(), "site B\n");
    drop(condo);

    let condo = Condo::start(&t.config("unknown_host = 421"));
    let mut c = Client::connect(condo.proxy());
    assert_eq!(c.get("nobody.test", "/").status, 421);
    drop(condo);

    let condo = Condo::start(&t.config("default_site = \"b.test\""));
    let mut c = Client::connect(condo.pass);
    assert_eq!(c.get("nobody.test", "/").text(), "site B\n");
    let mut c = Client::connect(condo.pass);
    c.send(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_response(false).unwrap().text(), "site B\n");
}

#[test]
fn a_killed_worker_is_replaced_by_the_next_request() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let condo = Condo::start(&t.config(""));
    let mut c = Client::connect(condo.pass);
    assert_eq!(c.get("a.test", "/").status, 200);
    let first = condo.wait_child("worker", Some("a"));
    let pid = rustix::process::Pid::from_raw(first as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    for addr in [condo.pass, condo.proxy()] {
        let mut c = Client::connect(addr);
        let r = c.get("a.test", "/");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "site A\n"),
            "{}",
            condo.log_text()
        );
    }
    let second = condo.wait_child("worker", Some("a"));
    assert_ne!(first, second);
    // B was never affected.
    let mut c = Client::connect(condo.pass);
    assert_eq!(c.get("b.test", "/").text(), "site B\n");
}

#[test]
fn static_files_conditional_and_range_requests_end_to_end() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    write_owned(&t.root_a.join("big.bin"), &data, &t.a, 0o600);
    let condo = Condo::start(&t.config(""));
    for addr in [condo.pass, condo.proxy()] {
        let mut c = Client::connect(addr);
        let r = c.get("a.test", "/big.bin");
        assert_eq!(r.status, 200);
        assert!(r.body == data, "sendfile body differs");
        let etag = r.header("etag").unwrap().to_string();
        let modified = r.header("last-modified").unwrap().to_string();
        c.send(
            format!("GET /big.bin HTTP/1.1\r\nHost: a.test\r\nIf-None-Match: {etag}\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(c.read_response(false).unwrap().status, 304);
        c.send(
            format!(
                "GET /big.bin HTTP/1.1\r\nHost: a.test\r\nIf-Modified-Since: {modified}\r\n\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(c.read_response(false).unwrap().status, 304);
        c.send(b"GET /big.bin HTTP/1.1\r\nHost: a.test\r\nRange: bytes=100-199\r\n\r\n");
        let r = c.read_response(false).unwrap();
        assert_eq!(
            (r.status, r.header("content-range")),
            (206, Some("bytes 100-199/200000"))
        );
        assert_eq!(r.body, &data[100..200]);
        c.send(b"GET /big.bin HTTP/1.1\r\nHost: a.test\r\nRange: bytes=0-9,-10\r\n\r\n");
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 206);
        assert!(
            r.header("content-type")
                .unwrap()
                .starts_with("multipart/byteranges")
        );
        c.send(b"GET /big.bin HTTP/1.1\r\nHost: a.test\r\nRange: bytes=300000-\r\n\r\n");
        assert_eq!(c.read_response(false).unwrap().status, 416);
        c.send(b"DELETE /big.bin HTTP/1.1\r\nHost: a.test\r\n\r\n");
        let r = c.read_response(false).unwrap();
        assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
        assert_eq!(c.get("a.test", "/missing").status, 404);
    }
    // Every request went to A's access log, with the tenant name.
    std::thread::sleep(Duration::from_millis(100));
    let log = std::fs::read_to_string(t.dir.path().join("log/a.test.access.log")).unwrap();
    assert!(log.lines().count() >= 16, "{log}");
    assert!(log.lines().all(|l| l.contains(" a ")), "{log}");
    let meta = std::fs::metadata(t.dir.path().join("log/a.test.access.log")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (0, t.a.gid, 0o640)
    );
}

#[test]
fn condo_check_reports_file_and_line_of_each_mistake() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    let base = t.dir.path();
    // A clean config passes.
    let out = std::process::Command::new(CONDO)
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let main = std::fs::read_to_string(&config).unwrap();
    let broken_main = main
        .replace(
            "uid_range = [100, 65000]",
            "uid_range = [100, 65000]\nlisten_backlog = 5",
        )
        .replace(
            &format!("user = \"{}\"\n\n[tenant.b]", t.a.name),
            "user = \"root\"\n\n[tenant.b]",
        );
    std::fs::write(&config, broken_main).unwrap();
    std::fs::write(
        base.join("sites/c.toml"),
        "[[site]]\nname = \"c.test\"\ntenant = \"nobody\"\nroot = \"relative/path\"\n",
    )
    .unwrap();
    std::fs::write(
        base.join("sites/d.toml"),
        "[[site]]\nname = \"a.test\"\ntenant = \"b\"\nroot = \"/srv\"\nindx = [\"x\"]\n",
    )
    .unwrap();
    std::fs::write(base.join("sites/e.toml"), "[[site]\nname = \"e.test\"\n").unwrap();
    let out = std::process::Command::new(CONDO)
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let main_path = config.display().to_string();
    let expect = [
        format!("{main_path}:5:1: key `server.listen_backlog`"),
        format!("{main_path}:13:1: key `tenant.a.user`"),
        format!("{}/sites/c.toml:3:1: key `site.0.tenant`", base.display()),
        format!("{}/sites/c.toml:4:1: key `site.0.root`", base.display()),
        format!("{}/sites/d.toml:5:1: key `site.0.indx`", base.display()),
        format!("{}/sites/e.toml:1:", base.display()),
    ];
    for e in &expect {
        assert!(text.contains(e.as_str()), "missing `{e}` in:\n{text}");
    }
}

#[test]
fn a_broken_site_file_does_not_take_down_the_others() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    std::fs::write(
        t.dir.path().join("sites/zz.toml"),
        "[[site]]\nname = \"zz.test\"\ntenant = \"b\"\nroot = 5\n",
    )
    .unwrap();
    let condo = Condo::start(&config);
    let mut c = Client::connect(condo.pass);
    assert_eq!(c.get("a.test", "/").text(), "site A\n");
    assert_eq!(c.get("zz.test", "/").status, 404);
    assert!(
        condo.log_text().contains("zz.toml:4"),
        "{}",
        condo.log_text()
    );
}

#[test]
fn a_killed_dispatcher_is_restarted_and_listeners_stay_open() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let condo = Condo::start(&t.config(""));
    let first = condo.wait_child("dispatcher", None);
    let pid = rustix::process::Pid::from_raw(first as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    // kill(2) returns before the process is gone; a connection it still accepted in
    // that moment dies with it. Wait until it is a zombie or reaped.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{first}/status"))
        .is_ok_and(|s| status_field(&s, "State") != "Z (zombie)")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "dispatcher did not die"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The master holds the listening sockets: a connection made while no dispatcher
    // runs waits in the backlog and is answered by the next one.
    if let Err(e) = std::net::TcpStream::connect(condo.pass) {
        panic!("connect: {e}\n{}", condo.log_text());
    }
    let mut c = Client::connect(condo.pass);
    let r = c.get("a.test", "/");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "site A\n"),
        "{}",
        condo.log_text()
    );
    let second = condo.wait_child("dispatcher", None);
    assert_ne!(first, second);
    let mut c = Client::connect(condo.proxy());
    assert_eq!(c.get("b.test", "/").text(), "site B\n");
}

/// Whether `pid`'s fd `fd` was opened read-only (O_ACCMODE of its flags is O_RDONLY).
fn fd_read_only(pid: u32, fd: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        })
        .is_some_and(|flags| flags & 0o3 == 0)
}
