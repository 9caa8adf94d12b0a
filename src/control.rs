//! The control socket's protocol and its client side: `condo status`, `condo top`,
//! `condo restart-tenant`, `condo reload --tenant`.
//!
//! One JSON request per connection, one JSON response. The socket is root's (mode
//! 0600, and the master checks the peer's uid with SO_PEERCRED before reading), so the
//! root master only ever parses bytes root wrote.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The socket's name in `run_dir`.
pub const SOCKET: &str = "control.sock";
/// Requests are small; anything longer is not ours.
pub const MAX_REQUEST: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Status,
    /// Drain the tenant's workers and start fresh ones (no request is lost).
    RestartTenant {
        tenant: String,
    },
    /// Read the config again and apply only this tenant's part of it.
    ReloadTenant {
        tenant: String,
    },
    /// Binary upgrade: start condo's binary (as it is on disk now) as a new master
    /// that takes over the listening sockets; this one drains and leaves.
    Upgrade,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Self {
        Self {
            ok: true,
            message: Some(message.into()),
            status: None,
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: Some(message.into()),
            status: None,
        }
    }
}

/// What `condo status` shows: PHP-FPM's status page, for every tenant.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub version: String,
    pub config: PathBuf,
    pub uptime_secs: u64,
    pub dispatchers: Vec<Process>,
    pub tenants: Vec<TenantStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    /// "running", or "draining" (finishing its connections before it leaves).
    pub state: String,
    pub uptime_secs: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TenantStatus {
    pub name: String,
    pub user: String,
    pub isolation: String,
    pub sites: usize,
    /// None running: scaled to zero.
    pub workers: Vec<Process>,
    /// Client connections the workers hold now.
    pub connections: u64,
    /// Requests waiting at a site's `max_clients` now.
    pub queued: u64,
    /// Requests answered since accounting began, and how many of them were 5xx.
    pub requests: u64,
    pub requests_5xx: u64,
    /// From the tenant's cgroup; 0 without one.
    pub memory_bytes: u64,
    pub memory_max: Option<u64>,
    pub cpu_seconds: f64,
    pub oom_kills: u64,
    /// Quick worker deaths in a row (a crash loop is backing off when > 1).
    pub crashes: u32,
}

/// Send one request to the master listening in `run_dir`.
pub fn request(run_dir: &Path, request: &Request) -> anyhow::Result<Response> {
    let path = run_dir.join(SOCKET);
    let mut stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "connecting to {} (is condo running, and are you root?)",
            path.display()
        )
    })?;
    // An upgrade answers once the new master serves (at most a minute).
    stream.set_read_timeout(Some(Duration::from_secs(90)))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .context("reading the master's answer")?;
    if answer.is_empty() {
        bail!("the master closed the control connection without an answer");
    }
    serde_json::from_str(&answer).context("the master's answer is not valid JSON")
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// `condo status` as a table.
pub fn render_status(s: &Status) -> String {
    let mut out = format!(
        "condo {} (pid {}), up {}s, config {}\ndispatchers: {}\n\n",
        s.version,
        s.pid,
        s.uptime_secs,
        s.config.display(),
        s.dispatchers
            .iter()
            .map(|d| format!("{} ({}, {}s)", d.pid, d.state, d.uptime_secs))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out.push_str(&format!(
        "{:<16} {:<9} {:>5} {:<24} {:>6} {:>6} {:>10} {:>6} {:>9} {:>9} {:>8} {:>4}\n",
        "TENANT",
        "ISOLATION",
        "SITES",
        "WORKERS",
        "CONNS",
        "QUEUE",
        "REQUESTS",
        "5XX",
        "MEMORY",
        "MAX",
        "CPU s",
        "OOM"
    ));
    for t in &s.tenants {
        let workers = if t.workers.is_empty() {
            "idle (scaled to zero)".to_string()
        } else {
            t.workers
                .iter()
                .map(|w| {
                    if w.state == "running" {
                        w.pid.to_string()
                    } else {
                        format!("{}({})", w.pid, w.state)
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        out.push_str(&format!(
            "{:<16} {:<9} {:>5} {:<24} {:>6} {:>6} {:>10} {:>6} {:>9} {:>9} {:>8.1} {:>4}\n",
            t.name,
            t.isolation,
            t.sites,
            workers,
            t.connections,
            t.queued,
            t.requests,
            t.requests_5xx,
            human_bytes(t.memory_bytes),
            t.memory_max.map_or("-".to_string(), human_bytes),
            t.cpu_seconds,
            t.oom_kills
        ));
    }
    out
}

/// What `condo top` sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    Cpu,
    Memory,
    Requests,
    Connections,
}

/// One screen of `condo top`: rates between two snapshots `interval` apart.
pub fn render_top(before: &Status, now: &Status, interval: Duration, sort: SortBy) -> String {
    let secs = interval.as_secs_f64().max(0.001);
    let mut rows: Vec<(&TenantStatus, f64, f64)> = now
        .tenants
        .iter()
        .map(|t| {
            let prev = before.tenants.iter().find(|p| p.name == t.name);
            let cpu = prev.map_or(0.0, |p| {
                (t.cpu_seconds - p.cpu_seconds).max(0.0) / secs * 100.0
            });
            let rps = prev.map_or(0.0, |p| t.requests.saturating_sub(p.requests) as f64 / secs);
            (t, cpu, rps)
        })
        .collect();
    rows.sort_by(|a, b| match sort {
        SortBy::Cpu => b.1.total_cmp(&a.1),
        SortBy::Requests => b.2.total_cmp(&a.2),
        SortBy::Memory => b.0.memory_bytes.cmp(&a.0.memory_bytes),
        SortBy::Connections => b.0.connections.cmp(&a.0.connections),
    });
    let total_cpu: f64 = rows.iter().map(|r| r.1).sum();
    let total_rps: f64 = rows.iter().map(|r| r.2).sum();
    let mut out = format!(
        "condo top - pid {}, up {}s, {} tenants ({} running), {:.0}% CPU, {:.1} req/s, sorted by {:?}\n\n",
        now.pid,
        now.uptime_secs,
        now.tenants.len(),
        now.tenants.iter().filter(|t| !t.workers.is_empty()).count(),
        total_cpu,
        total_rps,
        sort
    );
    out.push_str(&format!(
        "{:<16} {:>7} {:>9} {:>9} {:>6} {:>6} {:>8} {:>10}\n",
        "TENANT", "CPU%", "MEMORY", "REQ/S", "CONNS", "QUEUE", "WORKERS", "REQUESTS"
    ));
    for (t, cpu, rps) in rows {
        out.push_str(&format!(
            "{:<16} {:>7.1} {:>9} {:>9.1} {:>6} {:>6} {:>8} {:>10}\n",
            t.name,
            cpu,
            human_bytes(t.memory_bytes),
            rps,
            t.connections,
            t.queued,
            t.workers.len(),
            t.requests
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str, cpu: f64, requests: u64, memory: u64) -> TenantStatus {
        TenantStatus {
            name: name.into(),
            cpu_seconds: cpu,
            requests,
            memory_bytes: memory,
            ..Default::default()
        }
    }

    #[test]
    fn requests_round_trip_as_json() {
        for r in [
            Request::Status,
            Request::RestartTenant { tenant: "a".into() },
            Request::ReloadTenant { tenant: "b".into() },
            Request::Upgrade,
        ] {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        }
        assert_eq!(
            serde_json::to_string(&Request::RestartTenant { tenant: "a".into() }).unwrap(),
            r#"{"command":"restart-tenant","tenant":"a"}"#
        );
    }

    #[test]
    fn top_sorts_by_rates_between_snapshots() {
        let before = Status {
            tenants: vec![
                tenant("a", 10.0, 100, 1 << 20),
                tenant("b", 10.0, 100, 9 << 20),
            ],
            ..Default::default()
        };
        let now = Status {
            tenants: vec![
                tenant("a", 12.0, 110, 1 << 20),
                tenant("b", 10.5, 300, 9 << 20),
            ],
            ..Default::default()
        };
        let by_cpu = render_top(&before, &now, Duration::from_secs(2), SortBy::Cpu);
        let lines: Vec<&str> = by_cpu.lines().skip(3).collect();
        assert!(
            lines[0].starts_with("a ") && lines[0].contains("100.0"),
            "{by_cpu}"
        );
        let by_rps = render_top(&before, &now, Duration::from_secs(2), SortBy::Requests);
        assert!(by_rps.lines().nth(3).unwrap().starts_with("b "), "{by_rps}");
        assert!(by_rps.lines().nth(3).unwrap().contains("100.0"), "{by_rps}");
        let by_memory = render_top(&before, &now, Duration::from_secs(2), SortBy::Memory);
        assert!(
            by_memory.lines().nth(3).unwrap().starts_with("b "),
            "{by_memory}"
        );
    }
}
