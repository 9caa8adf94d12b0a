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

/// The version of `condo status --json`'s shape. Control panels parse it, so it is
/// a contract: fields may be added within a version; a field removed, renamed or given
/// another meaning takes the next version.
pub const STATUS_SCHEMA: u32 = 1;

/// What `condo status` shows: PHP-FPM's status page, for every tenant.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    /// [`STATUS_SCHEMA`] of the master that answered.
    #[serde(default)]
    pub schema: u32,
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
    /// When the master last received the tenant's request counts (ms since the epoch;
    /// 0: not yet). Workers report every 2 s, so `requests` moves in steps: a rate is
    /// only right between two of these times.
    #[serde(default)]
    pub requests_at_ms: u64,
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

/// The rates `condo top` shows, carried from one screen to the next. CPU time is read
/// from the cgroup when the status is asked for, so its rate is taken between polls.
/// Request counts reach the master in the workers' reports (every 2 s): taken between
/// polls, a 1 s interval would alternate between twice the rate and 0. So a request
/// rate is taken between the tenant's last two reports, and kept until the next one.
#[derive(Default)]
pub struct TopRates {
    /// Per tenant: the count and report time of its last report, and the rate up to it.
    requests: std::collections::HashMap<String, (u64, u64, f64)>,
}

impl TopRates {
    /// Requests per second of `t` as of its last report.
    fn request_rate(&mut self, t: &TenantStatus) -> f64 {
        match self.requests.get_mut(&t.name) {
            Some((count, at_ms, rate)) => {
                if *at_ms == 0 {
                    // No report before this one: nothing to take a rate over yet.
                    (*count, *at_ms) = (t.requests, t.requests_at_ms);
                } else if t.requests_at_ms > *at_ms {
                    let secs = (t.requests_at_ms - *at_ms) as f64 / 1000.0;
                    *rate = t.requests.saturating_sub(*count) as f64 / secs;
                    (*count, *at_ms) = (t.requests, t.requests_at_ms);
                } else if t.requests < *count {
                    // The count went back (a new master): start over.
                    (*count, *at_ms, *rate) = (t.requests, t.requests_at_ms, 0.0);
                }
                *rate
            }
            None => {
                self.requests
                    .insert(t.name.clone(), (t.requests, t.requests_at_ms, 0.0));
                0.0
            }
        }
    }
}

/// One screen of `condo top`: CPU between two snapshots `elapsed` apart, requests as
/// `rates` keeps them.
pub fn render_top(
    before: &Status,
    now: &Status,
    elapsed: Duration,
    sort: SortBy,
    rates: &mut TopRates,
) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    let mut rows: Vec<(&TenantStatus, f64, f64)> = now
        .tenants
        .iter()
        .map(|t| {
            let prev = before.tenants.iter().find(|p| p.name == t.name);
            let cpu = prev.map_or(0.0, |p| {
                (t.cpu_seconds - p.cpu_seconds).max(0.0) / secs * 100.0
            });
            (t, cpu, rates.request_rate(t))
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

    fn reported(name: &str, cpu: f64, requests: u64, at_ms: u64) -> TenantStatus {
        TenantStatus {
            requests_at_ms: at_ms,
            ..tenant(name, cpu, requests, 0)
        }
    }

    #[test]
    fn top_sorts_by_rates_between_snapshots() {
        let before = Status {
            tenants: vec![
                TenantStatus {
                    requests_at_ms: 1_000,
                    ..tenant("a", 10.0, 100, 1 << 20)
                },
                TenantStatus {
                    requests_at_ms: 1_000,
                    ..tenant("b", 10.0, 100, 9 << 20)
                },
            ],
            ..Default::default()
        };
        let now = Status {
            tenants: vec![
                TenantStatus {
                    requests_at_ms: 3_000,
                    ..tenant("a", 12.0, 110, 1 << 20)
                },
                TenantStatus {
                    requests_at_ms: 3_000,
                    ..tenant("b", 10.5, 300, 9 << 20)
                },
            ],
            ..Default::default()
        };
        let two = Duration::from_secs(2);
        let screen = |sort| {
            let mut rates = TopRates::default();
            render_top(&before, &before, two, sort, &mut rates);
            render_top(&before, &now, two, sort, &mut rates)
        };
        let by_cpu = screen(SortBy::Cpu);
        let lines: Vec<&str> = by_cpu.lines().skip(3).collect();
        assert!(
            lines[0].starts_with("a ") && lines[0].contains("100.0"),
            "{by_cpu}"
        );
        let by_rps = screen(SortBy::Requests);
        assert!(by_rps.lines().nth(3).unwrap().starts_with("b "), "{by_rps}");
        assert!(by_rps.lines().nth(3).unwrap().contains("100.0"), "{by_rps}");
        let by_memory = screen(SortBy::Memory);
        assert!(
            by_memory.lines().nth(3).unwrap().starts_with("b "),
            "{by_memory}"
        );
    }

    /// Polled every second while reports come every 2 s, the request rate holds
    /// steady instead of alternating between twice the rate and 0.
    #[test]
    fn request_rates_follow_the_reports_not_the_polls() {
        let one = Duration::from_secs(1);
        let mut rates = TopRates::default();
        // 500 req/s; reports at t = 2, 4, 6 s (the first one holds what came before
        // the master's first report time, so it gives no rate); polls at 1.5 s, 2.5 s,
        // ... 6.5 s.
        let polls = [
            (0, 0),
            (700, 2_000),
            (700, 2_000),
            (1700, 4_000),
            (1700, 4_000),
            (2700, 6_000),
        ];
        let mut before = Status {
            tenants: vec![reported("a", 0.0, 0, 0)],
            ..Default::default()
        };
        let mut shown = Vec::new();
        for (count, at) in polls {
            let now = Status {
                tenants: vec![reported("a", 0.0, count, at)],
                ..Default::default()
            };
            let screen = render_top(&before, &now, one, SortBy::Requests, &mut rates);
            let row = screen.lines().nth(3).unwrap().to_string();
            shown.push(row.split_whitespace().nth(3).unwrap().to_string());
            before = now;
        }
        assert_eq!(shown, ["0.0", "0.0", "0.0", "500.0", "500.0", "500.0"]);
    }
}
