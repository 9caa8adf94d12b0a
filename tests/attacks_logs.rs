//! Attack matrix, "tenant text is escaped and bounded before any log" (issue 15,
//! item 5): a tenant's config key holding a newline must not forge a line of root's
//! error log, a multi-megabyte key must not grow the log or the master's memory by
//! megabytes on every worker start, and a script flooding its stderr with escape
//! sequences gets bounded, escaped lines in its site's log while the other tenant is
//! served.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const FORGED: &str = "2026-01-01T00:00:00Z ERROR forged";

fn vm_rss_kib(pid: u32) -> u64 {
    status_field(&proc_status(pid), "VmRSS")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[test]
fn a_tenants_config_key_cannot_forge_or_flood_the_servers_log() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let home_a = t.root_a.parent().unwrap().to_path_buf();
    let layer = home_a.join("condo-user.toml");
    let config = t.config_tenants("", &format!("user_config = \"{}\"", layer.display()), "");
    // A key that carries a whole forged line, and a 400 KB key with a 400 KB value
    // (under the 1 MiB a worker reads of a tenant's config file at all: a larger one
    // is refused whole, before any of it can reach a log).
    let huge = "k".repeat(400 << 10);
    let text = format!(
        "[[site]]\nname = \"a.test\"\n\"x\\n{FORGED} by tenant a\" = 1\n\"{huge}\" = \"{huge}\"\n"
    );
    write_owned(&layer, text.as_bytes(), &t.a, 0o600);
    drop(huge);
    let error_log = t.dir.path().join("log/error.log");
    let condo = Condo::start(&config);
    let rss_before = vm_rss_kib(condo.pid());
    let get = |host: &str| {
        curl(&[
            "-H",
            &format!("Host: {host}"),
            &format!("http://{}/", condo.pass),
        ])
        .0
    };
    let applied = |log: &str| log.matches("was not applied").count();
    let mut sizes = vec![file_len(&error_log)];
    for start in 1..=3 {
        if start > 1 {
            let out = Command::new(CONDO)
                .args(["restart-tenant", "a", "-c"])
                .arg(&config)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The new worker read the file once it serves a.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert_eq!(get("a.test"), "site A\n");
            let log = std::fs::read_to_string(&error_log).unwrap_or_default();
            if applied(&log) >= start {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "worker start {start} not logged:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_millis(300));
        sizes.push(file_len(&error_log));
        assert_eq!(get("b.test"), "site B\n");
    }
    let rss_after = vm_rss_kib(condo.pid());
    let log = std::fs::read_to_string(&error_log).unwrap();
    let forged: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with(FORGED) || l.contains(&format!("] {FORGED}")))
        .collect();
    assert!(forged.is_empty(), "forged lines in error.log: {forged:?}");
    assert!(
        log.contains(&format!("\\x0a{FORGED} by tenant a")),
        "the key is in the log, escaped: {}",
        &log[..log.len().min(4000)]
    );
    if let Some(line) = log.lines().find(|l| l.contains(FORGED)) {
        eprintln!(
            "the key's line in error.log: {}",
            &line[..line.len().min(400)]
        );
    }
    for pair in sizes.windows(2) {
        let grown = pair[1] - pair[0];
        assert!(
            grown < 64 * 1024,
            "error.log grew {grown} bytes in one worker start"
        );
    }
    assert!(
        log.lines().all(|l| l.len() <= 8 * 1024),
        "a line of {} bytes",
        log.lines().map(str::len).max().unwrap_or(0)
    );
    eprintln!("error.log sizes {sizes:?}; master VmRSS {rss_before} kB -> {rss_after} kB");
    assert!(
        rss_after < rss_before + 16 * 1024,
        "the master's RSS grew from {rss_before} kB to {rss_after} kB"
    );
}

#[test]
fn a_script_flooding_stderr_gets_bounded_escaped_lines_and_b_is_served() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    t.append_site(
        "a",
        "[[site.route]]\npath = \"/cgi-bin/\"\nhandler = \"cgi\"",
    );
    // 50 MB: lines that try to forge log lines and drive a terminal, and one 10 MB
    // line without a newline.
    t.script(
        "a",
        "cgi-bin/flood.py",
        "#!/usr/bin/python3\nimport sys\nline = b'\\x1b[2J\\x1b]0;owned\\x07\\r2026-01-01T00:00:00Z ERROR forged ' + b'x' * 1000 + b'\\n'\nfor i in range(40 * 1024 * 1024 // len(line)):\n    sys.stderr.buffer.write(line)\nsys.stderr.buffer.write(b'y' * (10 << 20))\nsys.stderr.flush()\nsys.stdout.write('Content-Type: text/plain\\n\\nflooded\\n')\n",
    );
    let condo = Condo::start(&config);
    let site_log = t.dir.path().join("log/a.test.error.log");
    let rss_before = vm_rss_kib(condo.pid());
    let flood = {
        let url = format!("http://{}/cgi-bin/flood.py", condo.pass);
        std::thread::spawn(move || curl(&["--max-time", "60", "-H", "Host: a.test", &url]))
    };
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut served = 0;
    while !flood.is_finished() && started.elapsed() < Duration::from_secs(60) {
        let t0 = Instant::now();
        let (body, ok) = curl(&["-H", "Host: b.test", &format!("http://{}/", condo.pass)]);
        slowest = slowest.max(t0.elapsed());
        assert!(
            ok && body == "site B\n",
            "b not served during the flood: {body}"
        );
        served += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let (out, ok) = flood.join().unwrap();
    assert!(ok && out == "flooded\n", "{out}");
    std::thread::sleep(Duration::from_millis(300));
    let bytes = std::fs::read(&site_log).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    eprintln!(
        "flood took {:?}; site log {} bytes; b served {served} times, slowest {slowest:?}; master VmRSS {rss_before} -> {} kB",
        started.elapsed(),
        bytes.len(),
        vm_rss_kib(condo.pid())
    );
    assert!(
        bytes.len() < 2 << 20,
        "the site log took {} bytes",
        bytes.len()
    );
    assert!(!bytes.contains(&0x1b) && !bytes.contains(&b'\r') && !bytes.contains(&0x07));
    assert!(
        !text.lines().any(|l| l.starts_with(FORGED)),
        "a forged line in the site log"
    );
    assert!(
        text.contains("\\x1b[2J"),
        "{}",
        &text[..text.len().min(2000)]
    );
    assert!(text.lines().all(|l| l.len() <= 8 * 1024));
    assert!(text.contains("suppressed"), "no note of what was dropped");
    assert!(slowest < Duration::from_secs(2), "b took {slowest:?}");
    // The master never saw any of it.
    assert!(!condo.log_text().contains(FORGED));
}
