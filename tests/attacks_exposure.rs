//! Attack matrix, exposure rows (issue 15, item 9): what a site is not meant to serve —
//! a PHP script's source, `.env`, `.git/`, `.htaccess`, an editor's backup of
//! `wp-config.php` — is not served, on every path a request can take: HTTP/1.1 on both
//! hand-overs, h2c through the dispatcher, h2 answered in the tenant's worker (own
//! certificate), percent-encoded names, PATH_INFO tails and directory index files.
//! Real php-cgi behind the README's own `.php` FastCGI route, real curl.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::*;

const INDEX_PHP: &str =
    r#"<?php echo "php ran ", 6 * 7, " ", $_SERVER["SCRIPT_NAME"], " ", $_SERVER["REQUEST_URI"];"#;
const ADMIN_PHP: &str = r#"<?php echo "admin ran ", $_SERVER["SCRIPT_NAME"];"#;

/// Files a's site must never send, each holding a marker its response must not show.
const SECRETS: &[&str] = &[
    ".htaccess",
    ".env",
    ".git/config",
    "wp-config.php.bak",
    "index.php~",
    ".index.php.swp",
    "#x#",
    "sub/.htpasswd",
    "wp-config.php.old",
    "wp-config.php.orig",
    "wp-config.php.save",
];

/// Requests for them (and their encoded and PATH_INFO forms, and names that do not
/// exist, which must get the same answer).
const DENIED: &[&str] = &[
    "/.htaccess",
    "/.env",
    "/.git/config",
    "/.git/",
    "/wp-config.php.bak",
    "/wp-config.php.BAK",
    "/index.php~",
    "/.index.php.swp",
    "/%23x%23",
    "/%2eenv",
    "/%2Egit/config",
    "/sub/.htpasswd",
    "/sub/%2ehtpasswd",
    "/wp-config.php.old",
    "/wp-config.php.orig",
    "/wp-config.php.save",
    "/index.php/.env",
    "/index.php/x/.git/config",
    "/.well-known/../.env",
    "/.nothing-here",
    "/nothing-here.bak",
];

fn secret(name: &str) -> String {
    format!("SECRET-{}", name.replace('/', "_"))
}

/// Status and body of a GET sent verbatim (no client-side normalisation).
fn get(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let mut c = Client::connect(addr);
    let r = c.get(host, path);
    (r.status, r.text())
}

fn curl_h2(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-k", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.parse().unwrap_or(0), body.to_string())
}

fn own_certificate(dir: &Path, t: &TwoTenants) -> (String, String) {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    chown(&tls, &t.a, 0o700);
    let issued = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
    let cert = tls.join("cert.pem");
    let key = tls.join("key.pem");
    write_owned(&cert, issued.cert.pem().as_bytes(), &t.a, 0o644);
    write_owned(
        &key,
        issued.signing_key.serialize_pem().as_bytes(),
        &t.a,
        0o600,
    );
    (cert.display().to_string(), key.display().to_string())
}

#[test]
fn index_files_run_and_secrets_are_denied_on_every_path() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("tls_listen = [\"127.0.0.1:0\"]");
    let home_a = t.root_a.parent().unwrap().to_path_buf();
    let (cert, key) = own_certificate(&home_a, &t);
    // The README's PHP site: index.php first, a .php FastCGI route, php-cgi.
    t.append_site(
        "a",
        &format!(
            "index = [\"index.php\", \"index.html\"]\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}\n\
             [[site.route]]\nsuffix = \".php\"\nhandler = \"fastcgi\"\ncommand = [\"php-cgi\"]\n"
        ),
    );
    write_owned(
        &t.root_a.join("index.php"),
        INDEX_PHP.as_bytes(),
        &t.a,
        0o644,
    );
    let admin = t.root_a.join("wp-admin");
    std::fs::create_dir(&admin).unwrap();
    chown(&admin, &t.a, 0o755);
    write_owned(&admin.join("index.php"), ADMIN_PHP.as_bytes(), &t.a, 0o644);
    for name in SECRETS {
        let path = t.root_a.join(name);
        let dir = path.parent().unwrap();
        if !dir.exists() {
            std::fs::create_dir_all(dir).unwrap();
            chown(dir, &t.a, 0o755);
        }
        write_owned(&path, secret(name).as_bytes(), &t.a, 0o644);
    }
    let acme = t.root_a.join(".well-known/acme-challenge");
    std::fs::create_dir_all(&acme).unwrap();
    chown(acme.parent().unwrap(), &t.a, 0o755);
    chown(&acme, &t.a, 0o755);
    write_owned(&acme.join("x"), b"acme token", &t.a, 0o644);

    let condo = Condo::start(&config);
    let log = || condo.log_text();
    for addr in [condo.pass, condo.proxy()] {
        // The index file runs through the route its name matches.
        let (status, body) = get(addr, "a.test", "/");
        assert_eq!(status, 200, "{addr} /: {body}\n{}", log());
        assert_eq!(body, "php ran 42 /index.php /", "{addr} /");
        let (status, body) = get(addr, "a.test", "/wp-admin/");
        assert_eq!(status, 200, "{addr} /wp-admin/: {body}");
        assert_eq!(body, "admin ran /wp-admin/index.php", "{addr}");
        assert_eq!(
            get(addr, "a.test", "/?x=1").1,
            "php ran 42 /index.php /?x=1"
        );
        for path in DENIED {
            let (status, body) = get(addr, "a.test", path);
            assert_eq!(status, 404, "{addr} {path}: {body}");
            assert!(
                !body.contains("SECRET") && !body.contains("<?php"),
                "{addr} {path}: {body}"
            );
        }
        // A POST or HEAD is refused the same way.
        let mut c = Client::connect(addr);
        c.send(b"POST /.env HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!(c.read_response(false).unwrap().status, 404);
        c.send(b"HEAD /.git/config HTTP/1.1\r\nHost: a.test\r\n\r\n");
        assert_eq!(c.read_response(true).unwrap().status, 404);
        // RFC 8615's prefix stays served.
        assert_eq!(
            get(addr, "a.test", "/.well-known/acme-challenge/x"),
            (200, "acme token".to_string())
        );
        // The other tenant keeps serving.
        assert_eq!(get(addr, "b.test", "/"), (200, "site B\n".to_string()));
    }

    // h2 answered in a's own worker (its own certificate, static files straight from
    // the stream) and h2c through the dispatcher.
    let port = condo.tls.unwrap().port();
    let resolve = format!("a.test:{port}:127.0.0.1");
    let tls = |path: &str| {
        curl_h2(&[
            "--http2",
            "--path-as-is",
            "--resolve",
            &resolve,
            &format!("https://a.test:{port}{path}"),
        ])
    };
    let h2c = |path: &str| {
        curl_h2(&[
            "--http2-prior-knowledge",
            "--path-as-is",
            "-H",
            "Host: a.test",
            &format!("http://{}{path}", condo.pass),
        ])
    };
    for (name, fetch) in [
        ("h2", &tls as &dyn Fn(&str) -> (u16, String)),
        ("h2c", &h2c),
    ] {
        assert_eq!(
            fetch("/"),
            (200, "php ran 42 /index.php /".to_string()),
            "{name}\n{}",
            log()
        );
        assert_eq!(
            fetch("/wp-admin/"),
            (200, "admin ran /wp-admin/index.php".to_string()),
            "{name}"
        );
        for path in DENIED {
            let (status, body) = fetch(path);
            assert_eq!(status, 404, "{name} {path}: {body}");
            assert!(!body.contains("SECRET"), "{name} {path}: {body}");
        }
        assert_eq!(
            fetch("/.well-known/acme-challenge/x"),
            (200, "acme token".to_string()),
            "{name}"
        );
    }
    assert_eq!(
        get(condo.pass, "b.test", "/"),
        (200, "site B\n".to_string())
    );
}

/// A site that opts out serves its dotfiles and backups; its index files still run
/// through their route (here a CGI one).
#[test]
fn a_site_that_opts_out_serves_dotfiles() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let config = t.config("");
    t.append_site(
        "b",
        "index = [\"index.cgi\", \"index.html\"]\ndeny_hidden = false\ndeny_backup = false\n\
         [[site.route]]\nsuffix = \".cgi\"\nhandler = \"cgi\"\n",
    );
    write_owned(&t.root_b.join(".env"), b"B=1\n", &t.b, 0o644);
    write_owned(&t.root_b.join("x.bak"), b"old\n", &t.b, 0o644);
    write_owned(&t.root_a.join(".env"), b"SECRET-a\n", &t.a, 0o644);
    t.script(
        "b",
        "app/index.cgi",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\ncgi %s %s' \"$SCRIPT_NAME\" \"${PATH_INFO:-none}\"\n",
    );
    let condo = Condo::start(&config);
    for addr in [condo.pass, condo.proxy()] {
        assert_eq!(get(addr, "b.test", "/.env"), (200, "B=1\n".to_string()));
        assert_eq!(get(addr, "b.test", "/x.bak"), (200, "old\n".to_string()));
        assert_eq!(
            get(addr, "b.test", "/app/"),
            (200, "cgi /app/index.cgi none".to_string()),
            "{}",
            condo.log_text()
        );
        assert_eq!(get(addr, "b.test", "/"), (200, "site B\n".to_string()));
        // The other site keeps its default.
        assert_eq!(get(addr, "a.test", "/.env").0, 404);
    }
}

/// The keys are checked like every other: a wrong type is an error with its place, and
/// so is an index file name the site would refuse.
#[test]
fn deny_keys_are_checked() {
    let dir = scratch();
    let sites = dir.path().join("sites");
    std::fs::create_dir(&sites).unwrap();
    std::fs::write(
        dir.path().join("condo.toml"),
        "[server]\nlisten = [\"127.0.0.1:0\"]\nuser = \"nobody\"\n\n[tenant.a]\nuser = \"nobody\"\n",
    )
    .unwrap();
    std::fs::write(
        sites.join("a.toml"),
        "[[site]]\nname = \"a.test\"\ntenant = \"a\"\nroot = \"/tmp\"\ndeny_hidden = \"no\"\n",
    )
    .unwrap();
    std::fs::write(
        sites.join("b.toml"),
        "[[site]]\nname = \"b.test\"\ntenant = \"a\"\nroot = \"/tmp\"\nindex = [\"index.php\", \"index.php.bak\"]\n",
    )
    .unwrap();
    let out = Command::new(CONDO)
        .args(["check", "-c"])
        .arg(dir.path().join("condo.toml"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("a.toml:5:") && text.contains("expected a boolean"),
        "{text}"
    );
    // An index file the site would refuse to serve is a mistake, said at its place.
    assert!(
        text.lines().any(|l| l.contains("b.toml:5:")
            && l.contains("site.0.index.1")
            && l.contains("refuses")),
        "{text}"
    );
}
