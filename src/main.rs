// The binary only parses arguments and calls the library; no unsafe code here.
#![forbid(unsafe_code)]

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// condo: a web server for shared hosting. Every site's files are read, and its code
/// run, as the site owner's own uid.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `-c`, on the commands that read the admin's config (and only those: `demo` writes
/// its own, `import` reads other servers' files).
#[derive(clap::Args)]
struct ConfigArg {
    /// The admin's config file.
    #[arg(short = 'c', long = "config", default_value = "/etc/condo/condo.toml")]
    config: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ImportFrom {
    Apache,
    PhpFpm,
}

#[derive(Subcommand)]
enum Command {
    /// Run in the foreground (as root, for tenant isolation) until SIGTERM or SIGINT.
    Serve {
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Validate the config and every site file; print every mistake with
    /// file:line:column.
    Check {
        #[command(flatten)]
        cfg: ConfigArg,
        /// Check a tenant's own file (its `user_config`) as its worker would, before it
        /// applies: runnable by the tenant itself (needs --tenant).
        #[arg(long, value_name = "FILE", requires = "tenant")]
        user_config: Option<PathBuf>,
        /// The tenant whose file --user-config is.
        #[arg(long, requires = "user_config")]
        tenant: Option<String>,
        /// Do not look at the tenants' own files (their sites' certificates and keys,
        /// checked as each tenant): for a service's start, which a tenant must not be
        /// able to block by deleting its own key.
        #[arg(long)]
        skip_tenant_files: bool,
        /// One JSON object (`ok`, `tenants`, `sites`, `errors` with file, line, column,
        /// key and message each), for control panels.
        #[arg(long)]
        json: bool,
    },
    /// Check the config, then tell the running master to reload it (SIGHUP).
    Reload {
        #[command(flatten)]
        cfg: ConfigArg,
        /// Apply only this tenant's section and sites (through the control socket;
        /// prints what was applied or why nothing was).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Tenants, workers, connections, queues, requests, memory (root; control socket).
    Status {
        #[command(flatten)]
        cfg: ConfigArg,
        /// The whole status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A live view of the tenants, like top (q or Ctrl-C quits).
    Top {
        #[command(flatten)]
        cfg: ConfigArg,
        /// Order of the rows.
        #[arg(long, value_enum, default_value = "cpu")]
        sort: condo::control::SortBy,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// Stop after this many refreshes (default: until interrupted).
        #[arg(long)]
        iterations: Option<u64>,
    },
    /// Drain a tenant's workers and start fresh ones, losing no request.
    RestartTenant {
        #[command(flatten)]
        cfg: ConfigArg,
        /// The tenant's name (its `[tenant.NAME]` section).
        tenant: String,
    },
    /// Binary upgrade: start condo's binary as it is on disk now as a new master that
    /// takes over the listening sockets; the old processes drain and leave.
    Upgrade {
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Print each tenant's usage for billing, from the ledger in state_dir.
    Usage {
        #[command(flatten)]
        cfg: ConfigArg,
        /// Only usage from this time on: RFC 3339 ("2026-11-01T00:00:00Z") or a span
        /// back from now ("24h", "7d").
        #[arg(long)]
        since: Option<String>,
        /// JSON instead of a table.
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// CSV instead of a table.
        #[arg(long)]
        csv: bool,
        /// Only this tenant (a control panel's view of one customer).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Run a demo: two isolated tenants on 127.0.0.1 (creates system users as root).
    Demo {
        /// Remove the demo's users and files instead.
        #[arg(long)]
        clean: bool,
        /// Port on 127.0.0.1 for the pass-mode listener (proxy mode uses the next one).
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Translate Apache vhosts (mpm-itk, suexec) and PHP-FPM pools into condo config;
    /// what cannot be translated is listed on stderr with file:line.
    Import {
        /// What the files are.
        #[arg(value_enum)]
        from: ImportFrom,
        /// Apache vhost files (`apache`) or pool files (`php-fpm`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// With `apache`: the PHP-FPM pool files the vhosts' sockets belong to.
        #[arg(long)]
        fpm: Vec<PathBuf>,
        /// Write DIR/tenants.toml (sections for the main file) and DIR/sites/*.toml
        /// instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print a manual page (roff): `condo man > condo.8`, `condo man --section 5 > condo.toml.5`.
    Man {
        /// 8: the commands (condo(8)); 5: every config key (condo.toml(5)).
        #[arg(long, default_value = "8", value_parser = ["8", "5"])]
        section: String,
    },
    /// Internal: `condo check`'s look at a tenant's own files, run as the tenant.
    #[command(hide = true)]
    CheckAsTenant,
    /// Internal: the dispatcher process, started by the master.
    #[command(hide = true)]
    Dispatcher {
        #[arg(long)]
        ipc_fd: RawFd,
        #[arg(long = "listener-fd")]
        listener_fds: Vec<RawFd>,
        /// Where the master writes the metrics file (the one path it may read).
        #[arg(long)]
        run_dir: PathBuf,
    },
    /// Internal: a tenant's worker process, started by the master.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        ipc_fd: RawFd,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { cfg } => condo::master::serve(&cfg.config),
        Command::Check {
            cfg,
            user_config: Some(file),
            tenant: Some(tenant),
            json,
            ..
        } => return check_user_config(&cfg.config, &file, &tenant, json),
        Command::Check {
            cfg,
            json,
            skip_tenant_files,
            ..
        } => return check(&cfg.config, json, !skip_tenant_files),
        Command::CheckAsTenant => condo::check::serve_stdin(),
        Command::Reload { cfg, tenant: None } => condo::master::signal_reload(&cfg.config),
        Command::Reload {
            cfg,
            tenant: Some(tenant),
        } => return reload_tenant(&cfg.config, &tenant),
        Command::RestartTenant { cfg, tenant } => control(
            &cfg.config,
            condo::control::Request::RestartTenant { tenant },
        ),
        Command::Man { section } => man(&section),
        Command::Import {
            from,
            files,
            fpm,
            out,
        } => import(from, &files, &fpm, out.as_deref()),
        Command::Status { cfg, json } => status(&cfg.config, json),
        Command::Upgrade { cfg } => control(&cfg.config, condo::control::Request::Upgrade),
        Command::Top {
            cfg,
            sort,
            interval,
            iterations,
        } => top(&cfg.config, sort, interval, iterations),
        Command::Usage {
            cfg,
            since,
            json,
            csv,
            tenant,
        } => usage(&cfg.config, since.as_deref(), tenant.as_deref(), json, csv),
        Command::Demo { clean: true, .. } => condo::demo::clean(),
        Command::Demo { clean: false, port } => condo::demo::run(port),
        Command::Dispatcher {
            ipc_fd,
            listener_fds,
            run_dir,
        } => condo::dispatcher::run(ipc_fd, &listener_fds, &run_dir),
        Command::Worker {
            tenant,
            ipc_fd,
            threads,
        } => condo::worker::run(&tenant, ipc_fd, threads),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("condo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn import(
    from: ImportFrom,
    files: &[PathBuf],
    fpm: &[PathBuf],
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let imported = match from {
        ImportFrom::Apache => condo::import::import(files, fpm),
        ImportFrom::PhpFpm => condo::import::import(&[], files),
    };
    match out {
        Some(dir) => {
            condo::import::write_out(dir, &imported)?;
            println!(
                "condo import: {} tenants, {} site files in {}",
                imported.tenants.matches("[tenant.").count(),
                imported.sites.len(),
                dir.display()
            );
        }
        None => {
            print!("{}", imported.tenants);
            for (tenant, text) in &imported.sites {
                println!("\n# ---- sites/{tenant}.toml ----\n{text}");
            }
        }
    }
    if !imported.notes.is_empty() {
        eprintln!("condo import: not translated ({}):", imported.notes.len());
        for note in &imported.notes {
            eprintln!("  {note}");
        }
    }
    Ok(())
}

/// A manual page, generated from the binary's own command and key definitions.
fn man(section: &str) -> anyhow::Result<()> {
    use clap::CommandFactory;
    use std::io::Write as _;
    let page = match section {
        "5" => condo::config::keys::man_page(env!("CARGO_PKG_VERSION")),
        _ => condo::manual::condo_8(&Cli::command()),
    };
    std::io::stdout().write_all(page.as_bytes())?;
    Ok(())
}

/// The control socket of the master running `config`.
fn run_dir(config: &std::path::Path) -> anyhow::Result<PathBuf> {
    // The main file's run_dir alone: no site file is read (at 10,000 sites that took
    // a second and a half per command).
    condo::config::run_dir_of(config)
        .map_err(|e| anyhow::anyhow!("{e}; cannot find the control socket"))
}

fn control(config: &std::path::Path, request: condo::control::Request) -> anyhow::Result<()> {
    let response = condo::control::request(&run_dir(config)?, &request)?;
    let message = response.message.unwrap_or_default();
    if response.ok {
        println!("condo: {message}");
        Ok(())
    } else {
        anyhow::bail!("{message}")
    }
}

/// `condo reload --tenant NAME`: apply, then say whether the tenant's own file (which
/// its new worker reads) will be taken or rejected, with every mistake. Exit 1: nothing
/// applied; 2: applied, but the tenant's own file is rejected (its last good version,
/// or the admin's settings alone, keep applying).
fn reload_tenant(config: &std::path::Path, tenant: &str) -> ExitCode {
    if let Err(e) = control(
        config,
        condo::control::Request::ReloadTenant {
            tenant: tenant.to_string(),
        },
    ) {
        eprintln!("condo: {e:#}");
        return ExitCode::FAILURE;
    }
    // The whole config is read only for a tenant with a file of its own to check.
    if !condo::config::has_user_config(config, tenant) {
        return ExitCode::SUCCESS;
    }
    let loaded = condo::config::load(config);
    let Some(c) = loaded.config else {
        return ExitCode::SUCCESS;
    };
    let Some(t) = c.tenants.get(tenant) else {
        return ExitCode::SUCCESS;
    };
    let Some(path) = &t.user_config else {
        return ExitCode::SUCCESS;
    };
    let credentials = match condo::config::resolve_tenant(t, c.server.uid_range) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("condo: tenant {tenant}'s own file not checked: {e}");
            return ExitCode::SUCCESS;
        }
    };
    let file = match path.strip_prefix("~/") {
        Some(rest) => credentials.home.join(rest),
        None => PathBuf::from(path),
    };
    let request = condo::check::Request {
        sites: Vec::new(),
        user_config: Some(file.clone()),
    };
    // As the tenant, as its worker reads it (root never opens it).
    let text = if rustix::process::geteuid().is_root() {
        condo::check::run_as(&credentials, &request).map_err(|e| format!("{e:#}"))
    } else {
        Ok(condo::check::run_here(&request))
    }
    .and_then(|r| r.user_config.unwrap_or_else(|| Err("no answer".into())));
    let sites: Vec<condo::config::Site> = c.tenant_sites(tenant).cloned().collect();
    let result = match text {
        // No file is no layer, as for the worker: the admin's settings apply alone.
        Err(e) if e.contains("No such file") => {
            println!(
                "condo: tenant {tenant}'s own file {} does not exist: the admin's settings apply alone",
                file.display()
            );
            return ExitCode::SUCCESS;
        }
        Err(e) => Err(vec![diagnostic(&file, e)]),
        Ok(text) => condo::config::user::parse(&file, text, &sites, &t.user_config_locked, &t.pool),
    };
    match result {
        Ok(layers) => {
            println!(
                "condo: tenant {tenant}'s own file {}: applies ({} sites set)",
                file.display(),
                layers.len()
            );
            ExitCode::SUCCESS
        }
        Err(diags) => {
            println!(
                "condo: tenant {tenant}'s own file {} is rejected ({} mistake{}); its last good version, or else the admin's settings alone, keep applying:",
                file.display(),
                diags.len(),
                if diags.len() == 1 { "" } else { "s" }
            );
            print!("{}", condo::config::user::report(&diags));
            println!();
            ExitCode::from(2)
        }
    }
}

fn fetch_status(run_dir: &std::path::Path) -> anyhow::Result<condo::control::Status> {
    let response = condo::control::request(run_dir, &condo::control::Request::Status)?;
    match response.status {
        Some(s) if response.ok => Ok(s),
        _ => anyhow::bail!("{}", response.message.unwrap_or_default()),
    }
}

fn status(config: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let status = fetch_status(&run_dir(config)?)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", condo::control::render_status(&status));
    }
    Ok(())
}

fn top(
    config: &std::path::Path,
    sort: condo::control::SortBy,
    interval: f64,
    iterations: Option<u64>,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let dir = run_dir(config)?;
    let interval = std::time::Duration::from_secs_f64(interval.clamp(0.2, 3600.0));
    let mut before = fetch_status(&dir)?;
    let mut taken = std::time::Instant::now();
    let mut rates = condo::control::TopRates::default();
    condo::control::render_top(&before, &before, interval, sort, &mut rates);
    let mut shown = 0;
    while iterations.is_none_or(|n| shown < n) {
        std::thread::sleep(interval);
        let now = fetch_status(&dir)?;
        let elapsed = taken.elapsed();
        taken = std::time::Instant::now();
        // Clear the screen and go home, as top does.
        print!(
            "\x1b[H\x1b[2J{}",
            condo::control::render_top(&before, &now, elapsed, sort, &mut rates)
        );
        std::io::stdout().flush()?;
        before = now;
        shown += 1;
    }
    Ok(())
}

fn check(path: &std::path::Path, json: bool, tenant_files: bool) -> ExitCode {
    let mut loaded = condo::config::load(path);
    if tenant_files && let Some(c) = &loaded.config {
        let found = condo::check::site_tls_diagnostics(c, &loaded.site_origins);
        loaded.diagnostics.extend(found);
    }
    // Not errors: a tenant must not be able to fail the admin's check (and with it a
    // reload) by what it does to its own paths.
    let warnings = loaded
        .config
        .as_ref()
        .map(|c| {
            let mut w = c.warnings();
            w.extend(
                condo::sandbox::refused_tenant_paths(c)
                    .into_iter()
                    .map(|message| condo::config::Diagnostic {
                        file: c.file.clone(),
                        line: 0,
                        column: 0,
                        key: String::new(),
                        message,
                    }),
            );
            w
        })
        .unwrap_or_default();
    if json {
        let report = serde_json::json!({
            "ok": loaded.config.is_some() && loaded.diagnostics.is_empty(),
            "config": path,
            "tenants": loaded.config.as_ref().map_or(0, |c| c.tenants.len()),
            "sites": loaded.config.as_ref().map_or(0, |c| c.sites.len()),
            "errors": loaded.diagnostics,
            "warnings": warnings,
        });
        println!("{report:#}");
        return if report["ok"] == true {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    for d in &loaded.diagnostics {
        println!("{d}");
    }
    for w in &warnings {
        println!("warning: {w}");
    }
    match (&loaded.config, loaded.diagnostics.len()) {
        (Some(c), 0) => {
            println!(
                "{}: ok ({} tenants, {} sites)",
                path.display(),
                c.tenants.len(),
                c.sites.len()
            );
            ExitCode::SUCCESS
        }
        (_, n) => {
            println!(
                "{}: {n} error{}",
                path.display(),
                if n == 1 { "" } else { "s" }
            );
            ExitCode::FAILURE
        }
    }
}

fn usage(
    config: &std::path::Path,
    since: Option<&str>,
    tenant: Option<&str>,
    json: bool,
    csv: bool,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use condo::accounting::{ledger::Ledger, report};
    let loaded = condo::config::load(config);
    let Some(config) = loaded.config else {
        for d in &loaded.diagnostics {
            eprintln!("condo: {d}");
        }
        anyhow::bail!("{}: the main config has errors", config.display());
    };
    let since = since
        .map(|t| report::parse_since(t, std::time::SystemTime::now()))
        .transpose()?;
    let path = config.server.state_dir.join("usage.json");
    if !path.exists() {
        anyhow::bail!(
            "no usage recorded yet: {} does not exist (condo writes it while serving)",
            path.display()
        );
    }
    let ledger = Ledger::load(&path).context("reading the usage ledger")?;
    let mut totals = ledger.totals(since);
    if let Some(tenant) = tenant {
        if !config.tenants.contains_key(tenant) && !totals.contains_key(tenant) {
            anyhow::bail!("no tenant named {tenant:?} in the config or the usage ledger");
        }
        // A configured tenant with nothing recorded yet gets its row of zeros.
        let own = totals.remove(tenant).unwrap_or_default();
        totals = std::iter::once((tenant.to_string(), own)).collect();
    }
    let rows = report::rows(&totals);
    let out = if json {
        report::json(&rows)
    } else if csv {
        report::csv(&rows)
    } else {
        report::table(&rows)
    };
    print!("{out}");
    if json {
        println!();
    }
    Ok(())
}

/// `condo check --user-config FILE --tenant NAME`: what the tenant's worker would make
/// of FILE. Run by the tenant itself, it reads FILE as the tenant; the admin's config
/// is used when the tenant can read it (its sites, the keys the admin locks), and when
/// it cannot, the file is checked against the rules for every tenant's file, and the
/// report says what could not be checked. Run as root, FILE is read as the tenant.
fn check_user_config(
    config_path: &std::path::Path,
    file: &std::path::Path,
    tenant: &str,
    json: bool,
) -> ExitCode {
    use condo::config::{Pool, user};
    let mut notes: Vec<String> = Vec::new();
    let mut fatal: Option<String> = None;
    let root = rustix::process::geteuid().is_root();
    // The admin's view of this tenant, if this user may read it.
    let admin = match std::fs::File::open(config_path) {
        Err(e) => {
            notes.push(format!(
                "{}: {e}: checked by the rules for every tenant's file only; not checked: that each [[site]] is one of {tenant}'s, and the keys the admin locks",
                config_path.display()
            ));
            None
        }
        Ok(_) => {
            let loaded = condo::config::load(config_path);
            match loaded.config {
                None => {
                    notes.push(format!(
                        "{}: the admin's config has errors (see `condo check`); checked by the rules for every tenant's file only",
                        config_path.display()
                    ));
                    None
                }
                Some(c) => match c.tenants.get(tenant) {
                    None => {
                        fatal = Some(format!("{}: no tenant `{tenant}`", config_path.display()));
                        None
                    }
                    Some(t) => {
                        let unreadable = loaded
                            .diagnostics
                            .iter()
                            .any(|d| d.line == 0 && d.message.starts_with("cannot read file"));
                        if unreadable {
                            notes.push(
                                "some of the admin's site files are not readable: not checked that each [[site]] is one of yours"
                                    .into(),
                            );
                        }
                        let sites: Vec<condo::config::Site> =
                            c.tenant_sites(tenant).cloned().collect();
                        Some((t.clone(), sites, !unreadable, c.server.uid_range))
                    }
                },
            }
        }
    };
    let credentials = admin
        .as_ref()
        .and_then(|(t, _, _, range)| condo::config::resolve_tenant(t, *range).ok());
    if fatal.is_none()
        && !root
        && let Some(c) = &credentials
        && c.uid != rustix::process::geteuid().as_raw()
    {
        notes.push(format!(
            "you are not {}: the worker reads the file as {}, who may see it differently",
            c.user, c.user
        ));
    }
    if let Some((t, _, _, _)) = &admin
        && t.user_config.is_none()
    {
        notes.push(format!(
            "tenant {tenant} has no user_config in the admin's config: no file of the tenant's applies yet"
        ));
    }
    // Read as the worker would: as the tenant.
    let text: Result<String, String> = if fatal.is_some() {
        Err(String::new())
    } else if root {
        match &credentials {
            None => Err(format!(
                "as root, the file is read as the tenant: tenant `{tenant}` must be in a readable {} with a valid user",
                config_path.display()
            )),
            Some(c) => condo::check::run_as(
                c,
                &condo::check::Request {
                    sites: Vec::new(),
                    user_config: Some(file.to_path_buf()),
                },
            )
            .map_err(|e| format!("{e:#}"))
            .and_then(|r| r.user_config.unwrap_or_else(|| Err("no answer".into()))),
        }
    } else {
        condo::check::run_here(&condo::check::Request {
            sites: Vec::new(),
            user_config: Some(file.to_path_buf()),
        })
        .user_config
        .unwrap_or_else(|| Err("no answer".into()))
    };
    let result = match (fatal, text) {
        (Some(f), _) => Err(vec![diagnostic(file, f)]),
        (None, Err(e)) => Err(vec![diagnostic(file, e)]),
        (None, Ok(text)) => match &admin {
            Some((t, sites, true, _)) => {
                user::parse(file, text, sites, &t.user_config_locked, &t.pool)
            }
            Some((t, _, false, _)) => user::parse_unscoped(file, text, &t.pool),
            None => user::parse_unscoped(file, text, &Pool::default()),
        },
    };
    if json {
        let report = serde_json::json!({
            "ok": result.is_ok(),
            "file": file,
            "tenant": tenant,
            "sites": result.as_ref().map_or(0, |l| l.len()),
            "errors": result.as_ref().err().cloned().unwrap_or_default(),
            "notes": notes,
        });
        println!("{report:#}");
    } else {
        for n in &notes {
            println!("note: {n}");
        }
        match &result {
            Ok(layers) => println!(
                "{}: ok ({} of {tenant}'s sites set)",
                file.display(),
                layers.len()
            ),
            Err(diags) => {
                for d in diags {
                    println!("{d}");
                }
                println!(
                    "{}: {} error{}; a file with any error is not applied (the last good version keeps applying)",
                    file.display(),
                    diags.len(),
                    if diags.len() == 1 { "" } else { "s" }
                );
            }
        }
    }
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn diagnostic(file: &std::path::Path, message: String) -> condo::config::Diagnostic {
    condo::config::Diagnostic {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        key: String::new(),
        message,
    }
}
