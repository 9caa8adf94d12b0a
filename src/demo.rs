//! `condo demo`: two isolated tenants on 127.0.0.1, set up from nothing.
//!
//! As root it creates the system users `condo-demo` (dispatcher), `condo-demo-a` and
//! `condo-demo-b` (tenants) and a tree under /var/lib/condo-demo; `condo demo --clean`
//! removes both. Without root it runs everything as the invoking user, says so, and
//! shows routing only: tenants are then not isolated from each other.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::config::resolve_user;

const DISPATCHER_USER: &str = "condo-demo";
const TENANTS: [(&str, &str); 2] = [("a", "condo-demo-a"), ("b", "condo-demo-b")];
const ROOT_BASE: &str = "/var/lib/condo-demo";

fn privileged() -> bool {
    rustix::process::geteuid().is_root()
}

fn base_dir() -> PathBuf {
    if privileged() {
        PathBuf::from(ROOT_BASE)
    } else {
        std::env::temp_dir().join(format!(
            "condo-demo-{}",
            rustix::process::geteuid().as_raw()
        ))
    }
}

pub fn run(port: u16) -> anyhow::Result<()> {
    let base = base_dir();
    let config = if privileged() {
        for user in std::iter::once(DISPATCHER_USER).chain(TENANTS.iter().map(|t| t.1)) {
            ensure_system_user(user)?;
        }
        write_tree(&base, port, true)?
    } else {
        eprintln!(
            "condo demo: not running as root, so condo cannot switch uids or create the demo users.\n\
             condo demo: running single-uid instead: every tenant is served as you ({}); routing and\n\
             condo demo: static serving work, but tenants are NOT isolated. Run as root for the real thing.\n",
            whoami()
        );
        write_tree(&base, port, false)?
    };
    print_instructions(port, &base);
    crate::master::serve(&config)
}

pub fn clean() -> anyhow::Result<()> {
    let base = base_dir();
    if base.exists() {
        fs::remove_dir_all(&base).with_context(|| format!("removing {}", base.display()))?;
        println!("removed {}", base.display());
    }
    if privileged() {
        for user in TENANTS
            .iter()
            .map(|t| t.1)
            .chain(std::iter::once(DISPATCHER_USER))
        {
            if resolve_user(user).is_ok() {
                let status = Command::new("userdel")
                    .arg(user)
                    .status()
                    .context("running userdel")?;
                if !status.success() {
                    bail!("userdel {user} failed ({status})");
                }
                println!("removed user {user}");
            }
        }
    }
    Ok(())
}

fn whoami() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map_or_else(
            || format!("uid {}", rustix::process::geteuid().as_raw()),
            |u| u.name,
        )
}

fn ensure_system_user(name: &str) -> anyhow::Result<()> {
    if resolve_user(name).is_ok() {
        return Ok(());
    }
    let status = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .status()
        .context("running useradd (package `passwd`)")?;
    if !status.success() {
        bail!("useradd {name} failed ({status})");
    }
    println!("created system user {name}");
    Ok(())
}

/// Write the demo's sites and config; returns the config file's path.
fn write_tree(base: &Path, port: u16, isolate: bool) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(base.join("sites"))
        .with_context(|| format!("creating {}", base.display()))?;
    fs::set_permissions(base, fs::Permissions::from_mode(0o755))?;
    let mut ids = Vec::new();
    let mut config = String::new();
    config.push_str(&format!(
        "# Written by `condo demo`.\n[server]\nlisten = [\n  {{ addr = \"127.0.0.1:{port}\", handover = \"pass\" }},\n  {{ addr = \"127.0.0.1:{}\", handover = \"proxy\" }},\n]\nuser = \"{}\"\nlog_dir = \"{}\"\nrun_dir = \"{}\"\nstate_dir = \"{}\"\ncgroup_parent = \"condo-demo\"\nadmin_listen = \"127.0.0.1:{}\"\n",
        port + 1,
        if isolate { DISPATCHER_USER.to_string() } else { whoami() },
        base.join("log").display(),
        base.join("run").display(),
        base.join("state").display(),
        port + 2,
    ));
    for (tenant, user) in TENANTS {
        let home = base.join(tenant);
        let www = home.join("www");
        fs::create_dir_all(&www)?;
        let page = format!(
            "<!DOCTYPE html>\n<title>tenant {tenant}</title>\n<h1>Hello from tenant {tenant}</h1>\n\
             <p>This file is mode 0600 and owned by <b>{user}</b>: only that uid can read it, so\n\
             the process that served it runs as {user}.</p>\n"
        );
        fs::write(www.join("index.html"), page)?;
        fs::write(
            www.join("secret.txt"),
            format!("tenant {tenant}'s secret: only {user} may read this\n"),
        )?;
        let _ = fs::remove_file(www.join("peek.txt"));
        let other = if tenant == "a" { "b" } else { "a" };
        // A symlink out of the site root, to the other tenant's secret: never served.
        symlink(
            base.join(other).join("www/secret.txt"),
            www.join("peek.txt"),
        )?;
        let tenant_user = if isolate { user.to_string() } else { whoami() };
        let creds = resolve_user(&tenant_user).map_err(anyhow::Error::msg)?;
        ids.push(creds.uid);
        ids.extend(&creds.groups);
        let owner = (creds.uid, creds.gid);
        for (path, mode) in [
            (&home, 0o700),
            (&www, 0o700),
            (&www.join("index.html"), 0o600),
            (&www.join("secret.txt"), 0o600),
        ] {
            if isolate {
                std::os::unix::fs::lchown(path, Some(owner.0), Some(owner.1))?;
            }
            fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        }
        config.push_str(&format!("\n[tenant.{tenant}]\nuser = \"{tenant_user}\"\n"));
        fs::write(
            base.join(format!("sites/{tenant}.toml")),
            format!(
                "[[site]]\nname = \"{tenant}.demo.test\"\naliases = [\"www.{tenant}.demo.test\"]\ntenant = \"{tenant}\"\nroot = \"{}\"\n",
                www.display()
            ),
        )?;
    }
    let (lo, hi) = (
        ids.iter().min().copied().unwrap_or(1).max(1),
        ids.iter().max().copied().unwrap_or(1).max(1),
    );
    config = config.replacen("user = ", &format!("uid_range = [{lo}, {hi}]\nuser = "), 1);
    let path = base.join("condo.toml");
    fs::write(&path, config)?;
    Ok(path)
}

/// How to run this same binary again: after `cargo run` condo is not on PATH, so the
/// commands printed name the binary that is running (quoted for a shell if it needs it).
fn this_binary() -> String {
    let path = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "condo".into());
    if path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
    {
        path
    } else {
        format!("'{}'", path.replace('\'', "'\\''"))
    }
}

fn print_instructions(port: u16, base: &Path) {
    let proxy = port + 1;
    let admin = port + 2;
    println!(
        "\ncondo demo: config in {base}/condo.toml, access logs in {base}/log\n\
         Try, from another terminal:\n\
         \n  curl -H 'Host: a.demo.test' http://127.0.0.1:{port}/            # tenant a's page, read as condo-demo-a\
         \n  curl -H 'Host: b.demo.test' http://127.0.0.1:{port}/            # tenant b's page, read as condo-demo-b\
         \n  curl -H 'Host: a.demo.test' http://127.0.0.1:{port}/peek.txt    # 404: a symlink from a's site to b's secret\
         \n  curl --path-as-is -H 'Host: a.demo.test' 'http://127.0.0.1:{port}/../b/www/secret.txt'   # 400: no way out of the site root\
         \n  curl -H 'Host: b.demo.test' http://127.0.0.1:{proxy}/           # the same through the proxy hand-over\
         \n  curl http://127.0.0.1:{port}/a.demo.test/ -H 'Host: nobody.test' # 404: unknown host\
         \n  ps -o user:20,pid,args -C condo                               # master root, dispatcher condo-demo, one worker per tenant\
         \n  curl -H \"Authorization: Bearer $(sudo cat {base}/state/admin.token)\" http://127.0.0.1:{admin}/metrics   # per-tenant usage (Prometheus, admin's token), refreshed every 2 s\
         \n  {condo} usage -c {base}/condo.toml                   # the billing table (also after Ctrl-C)\
         \n\nStop with Ctrl-C; remove the demo users and files with `{condo} demo --clean`.\n",
        base = base.display(),
        condo = this_binary(),
    );
}
