use std::os::fd::RawFd;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// condo: a web server for shared hosting. Every site's files are read, and its code
/// run, as the site owner's own uid.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The admin's config file.
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        default_value = "/etc/condo/condo.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run in the foreground (as root, for tenant isolation) until SIGTERM or SIGINT.
    Serve,
    /// Validate the config and every site file; print each mistake with file:line.
    Check,
    /// Check the config, then tell the running master to reload it (SIGHUP).
    Reload,
    /// Print each tenant's usage for billing, from the ledger in state_dir.
    Usage {
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
        Command::Serve => condo::master::serve(&cli.config),
        Command::Check => return check(&cli.config),
        Command::Reload => condo::master::signal_reload(&cli.config),
        Command::Usage { since, json, csv } => usage(&cli.config, since.as_deref(), json, csv),
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

fn check(path: &std::path::Path) -> ExitCode {
    let loaded = condo::config::load(path);
    for d in &loaded.diagnostics {
        println!("{d}");
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
    let totals = ledger.totals(since);
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
