//! The ledger for people and programs: `condo usage` (table, JSON, CSV) and the
//! Prometheus text of the admin listener.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::ledger::{Ledger, Usage};

/// One row of `condo usage --json` / `--csv`.
#[derive(Debug, Serialize)]
pub struct Row<'a> {
    pub tenant: &'a str,
    pub requests: u64,
    pub requests_1xx: u64,
    pub requests_2xx: u64,
    pub requests_3xx: u64,
    pub requests_4xx: u64,
    pub requests_5xx: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub capped_503: u64,
    pub timeouts: u64,
    pub cpu_seconds: f64,
    pub memory_peak_bytes: u64,
    pub memory_gb_hours: f64,
    pub oom_kills: u64,
    pub spawns: u64,
}

pub fn rows(totals: &BTreeMap<String, Usage>) -> Vec<Row<'_>> {
    totals
        .iter()
        .map(|(tenant, u)| Row {
            tenant,
            requests: u.total_requests(),
            requests_1xx: u.requests[0],
            requests_2xx: u.requests[1],
            requests_3xx: u.requests[2],
            requests_4xx: u.requests[3],
            requests_5xx: u.requests[4],
            bytes_in: u.bytes_in,
            bytes_out: u.bytes_out,
            capped_503: u.capped,
            timeouts: u.timeouts,
            cpu_seconds: u.cpu_usec as f64 / 1e6,
            memory_peak_bytes: u.memory_peak_bytes,
            memory_gb_hours: u.gb_hours(),
            oom_kills: u.oom_kills,
            spawns: u.spawns,
        })
        .collect()
}

pub fn json(rows: &[Row<'_>]) -> String {
    serde_json::to_string_pretty(rows).unwrap_or_else(|_| "[]".into())
}

pub fn csv(rows: &[Row<'_>]) -> String {
    let mut out = String::from(
        "tenant,requests,requests_1xx,requests_2xx,requests_3xx,requests_4xx,requests_5xx,bytes_in,bytes_out,capped_503,timeouts,cpu_seconds,memory_peak_bytes,memory_gb_hours,oom_kills,spawns\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{:.3},{},{:.6},{},{}",
            r.tenant,
            r.requests,
            r.requests_1xx,
            r.requests_2xx,
            r.requests_3xx,
            r.requests_4xx,
            r.requests_5xx,
            r.bytes_in,
            r.bytes_out,
            r.capped_503,
            r.timeouts,
            r.cpu_seconds,
            r.memory_peak_bytes,
            r.memory_gb_hours,
            r.oom_kills,
            r.spawns
        );
    }
    out
}

pub fn table(rows: &[Row<'_>]) -> String {
    let mut out = format!(
        "{:<20} {:>10} {:>8} {:>8} {:>8} {:>12} {:>12} {:>7} {:>8} {:>10} {:>10} {:>10} {:>5} {:>7}\n",
        "TENANT",
        "REQUESTS",
        "2XX",
        "4XX",
        "5XX",
        "BYTES_IN",
        "BYTES_OUT",
        "503CAP",
        "TIMEOUT",
        "CPU_S",
        "MEM_PEAK",
        "GB_HOURS",
        "OOM",
        "SPAWNS"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<20} {:>10} {:>8} {:>8} {:>8} {:>12} {:>12} {:>7} {:>8} {:>10.2} {:>10} {:>10.4} {:>5} {:>7}",
            r.tenant,
            r.requests,
            r.requests_2xx,
            r.requests_4xx,
            r.requests_5xx,
            r.bytes_in,
            r.bytes_out,
            r.capped_503,
            r.timeouts,
            r.cpu_seconds,
            human_bytes(r.memory_peak_bytes),
            r.memory_gb_hours,
            r.oom_kills,
            r.spawns
        );
    }
    out
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1}G", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1}M", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1}K", n as f64 / 1024.0),
        n => n.to_string(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabels {
    tenant: String,
    site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    tenant: String,
    site: String,
    status_class: String,
}

/// The Prometheus text format of everything the ledger knows, with the number of
/// running workers per tenant.
/// The Prometheus text; `workers` holds every configured tenant with its running
/// worker count (0 when scaled to zero).
pub fn prometheus(ledger: &Ledger, workers: &HashMap<String, usize>) -> String {
    let mut registry = Registry::with_prefix("condo");
    let requests = Family::<RequestLabels, Counter>::default();
    let bytes_in = Family::<SiteLabels, Counter>::default();
    let bytes_out = Family::<SiteLabels, Counter>::default();
    let capped = Family::<SiteLabels, Counter>::default();
    let timeouts = Family::<SiteLabels, Counter>::default();
    for (tenant, sites) in ledger.sites() {
        for (site, t) in sites {
            for (i, n) in t.requests.iter().enumerate() {
                let labels = RequestLabels {
                    tenant: tenant.clone(),
                    site: site.clone(),
                    status_class: format!("{}xx", i + 1),
                };
                requests.get_or_create(&labels).inc_by(*n);
            }
            let labels = SiteLabels {
                tenant: tenant.clone(),
                site: site.clone(),
            };
            bytes_in.get_or_create(&labels).inc_by(t.bytes_in);
            bytes_out.get_or_create(&labels).inc_by(t.bytes_out);
            capped.get_or_create(&labels).inc_by(t.capped);
            timeouts.get_or_create(&labels).inc_by(t.timeouts);
        }
    }
    registry.register("requests", "Requests answered, by status class", requests);
    registry.register(
        "request_bytes",
        "Request bytes read (heads and declared bodies)",
        bytes_in,
    );
    registry.register("response_bytes", "Response body bytes sent", bytes_out);
    registry.register("capped", "Requests refused with 503 at max_clients", capped);
    registry.register(
        "timeouts",
        "Requests cancelled at their timeout (504)",
        timeouts,
    );

    let cpu = Family::<TenantLabel, Counter<f64>>::default();
    let byte_seconds = Family::<TenantLabel, Counter<f64>>::default();
    let ooms = Family::<TenantLabel, Counter>::default();
    let spawns = Family::<TenantLabel, Counter>::default();
    let memory = Family::<TenantLabel, Gauge>::default();
    let running = Family::<TenantLabel, Gauge>::default();
    let mut totals = ledger.totals(None);
    // Every tenant the master runs has its series from the first scrape (at 0), so
    // rates and alerts do not start with a gap.
    for tenant in workers.keys() {
        totals.entry(tenant.clone()).or_default();
    }
    for (tenant, u) in totals {
        let label = TenantLabel {
            tenant: tenant.clone(),
        };
        cpu.get_or_create(&label).inc_by(u.cpu_usec as f64 / 1e6);
        byte_seconds
            .get_or_create(&label)
            .inc_by(u.memory_byte_seconds);
        ooms.get_or_create(&label).inc_by(u.oom_kills);
        spawns.get_or_create(&label).inc_by(u.spawns);
        memory
            .get_or_create(&label)
            .set(ledger.memory_now(&tenant).min(i64::MAX as u64) as i64);
        running
            .get_or_create(&label)
            .set(workers.get(&tenant).copied().unwrap_or(0) as i64);
    }
    registry.register(
        "cpu_seconds",
        "CPU time of the tenant's processes (cgroup)",
        cpu,
    );
    registry.register(
        "memory_byte_seconds",
        "Memory use integrated over time (cgroup)",
        byte_seconds,
    );
    registry.register("oom_kills", "Processes killed at memory_max", ooms);
    registry.register("spawns", "Worker starts", spawns);
    registry.register("memory_bytes", "Memory in use now (cgroup)", memory);
    registry.register("workers", "Worker processes running", running);
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        text.clear();
    }
    text
}

/// `condo usage --since`, in seconds since the epoch: RFC 3339
/// ("2026-11-01T00:00:00Z"), a date alone (its midnight, UTC: billing periods are
/// usually given as dates), or a span back from `now` ("24h", "7d"). A time before
/// 1970 is 0: all of the ledger.
pub fn parse_since(text: &str, now: SystemTime) -> anyhow::Result<u64> {
    let date_only = text.len() == 10 && text.as_bytes().get(4) == Some(&b'-');
    let stamp = if date_only {
        format!("{text}T00:00:00Z")
    } else {
        text.to_string()
    };
    let at = match humantime::parse_rfc3339_weak(&stamp) {
        Ok(t) => t,
        Err(_) => {
            let span = humantime::parse_duration(text).map_err(|_| {
                anyhow::anyhow!(
                    "--since `{text}`: neither a time (2026-11-01T00:00:00Z), a date \
                     (2026-11-01) nor a span back from now (24h, 7d)"
                )
            })?;
            now.checked_sub(span).unwrap_or(UNIX_EPOCH)
        }
    };
    Ok(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::SiteDelta;

    #[test]
    fn prometheus_text_has_tenant_and_site_labels() {
        let mut l = Ledger::default();
        l.apply_report(
            "a",
            &["a.test"],
            &[SiteDelta {
                site: "a.test".into(),
                requests: [0, 7, 0, 2, 0],
                ..SiteDelta::default()
            }],
            3600,
        );
        l.spawned("a", 3600);
        let text = prometheus(&l, &HashMap::from([("a".to_string(), 1)]));
        assert!(
            text.contains(r#"condo_requests_total{tenant="a",site="a.test",status_class="2xx"} 7"#),
            "{text}"
        );
        assert!(
            text.contains(r#"condo_spawns_total{tenant="a"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"condo_workers{tenant="a"} 1"#), "{text}");
        let totals = l.totals(None);
        let rows = rows(&totals);
        assert!(
            csv(&rows)
                .lines()
                .nth(1)
                .unwrap()
                .starts_with("a,9,0,7,0,2,0,")
        );
        assert!(table(&rows).contains("a "));
    }

    #[test]
    fn since_takes_times_dates_and_spans() {
        let now = UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        let at = |t| parse_since(t, now).map_err(|e| e.to_string());
        assert_eq!(at("2026-11-01T00:00:00Z"), Ok(1_793_491_200));
        assert_eq!(at("2026-11-01"), Ok(1_793_491_200));
        assert_eq!(at("24h"), Ok(1_795_000_000 - 86_400));
        assert_eq!(at("7d"), Ok(1_795_000_000 - 7 * 86_400));
        for bad in ["yesterday", "2026-13-01", "", "-5h"] {
            let e = at(bad).unwrap_err();
            assert!(e.contains("--since"), "{bad}: {e}");
        }
        // Further back than accounting goes: everything.
        assert_eq!(at("100000d"), Ok(0));
    }
}
