//! The master's record of every tenant's usage, in time buckets, saved to disk.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::SiteDelta;

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;
/// Hourly buckets are merged into daily ones after this long.
const HOURLY_FOR: u64 = 31 * DAY;
/// Buckets older than this are dropped.
const KEEP_FOR: u64 = 400 * DAY;

/// A tenant's usage over some time span.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// By status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub requests: [u64; 5],
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub capped: u64,
    pub timeouts: u64,
    pub cpu_usec: u64,
    /// The highest memory use seen in the span.
    pub memory_peak_bytes: u64,
    /// Memory use integrated over time: divide by 2^30 * 3600 for GB-hours.
    pub memory_byte_seconds: f64,
    pub oom_kills: u64,
    /// Worker starts (cold starts).
    pub spawns: u64,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        for (a, b) in self.requests.iter_mut().zip(other.requests) {
            *a = a.saturating_add(b);
        }
        self.bytes_in = self.bytes_in.saturating_add(other.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(other.bytes_out);
        self.capped = self.capped.saturating_add(other.capped);
        self.timeouts = self.timeouts.saturating_add(other.timeouts);
        self.cpu_usec = self.cpu_usec.saturating_add(other.cpu_usec);
        self.memory_peak_bytes = self.memory_peak_bytes.max(other.memory_peak_bytes);
        self.memory_byte_seconds += other.memory_byte_seconds;
        self.oom_kills = self.oom_kills.saturating_add(other.oom_kills);
        self.spawns = self.spawns.saturating_add(other.spawns);
    }

    pub fn total_requests(&self) -> u64 {
        self.requests.iter().sum()
    }

    pub fn gb_hours(&self) -> f64 {
        self.memory_byte_seconds / (1u64 << 30) as f64 / HOUR as f64
    }
}

/// One reading of a tenant's cgroup counters (cumulative since the group was made).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupSample {
    pub cpu_usec: u64,
    pub memory_bytes: u64,
    pub memory_peak_bytes: u64,
    pub oom_kills: u64,
}

/// A site's request counters since accounting began (for Prometheus).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SiteTotals {
    pub requests: [u64; 5],
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub capped: u64,
    pub timeouts: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Ledger {
    /// Tenant → bucket start (seconds since the epoch) → usage in that bucket.
    tenants: BTreeMap<String, BTreeMap<u64, Usage>>,
    /// Tenant → site → totals.
    sites: BTreeMap<String, BTreeMap<String, SiteTotals>>,
    /// The last cgroup reading per tenant and when it was taken: usage is the growth
    /// between readings.
    #[serde(skip)]
    last: HashMap<String, (CgroupSample, u64)>,
}

impl Ledger {
    /// The ledger saved at `path`; empty if there is none yet. A file that cannot be
    /// read is an error, not silently an empty ledger: billing data must not vanish.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: not a usage ledger: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
    }

    /// Write atomically (temp file, fsync, rename, fsync of the directory), readable by
    /// root only.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(self)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path).map_err(|e| {
            anyhow::anyhow!("renaming {} to {}: {e}", tmp.display(), path.display())
        })?;
        // The rename is only durable once the directory is: without this a crash can
        // bring back the ledger of before the save.
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| anyhow::anyhow!("syncing {}: {e}", dir.display()))?;
        }
        Ok(())
    }

    fn bucket(&mut self, tenant: &str, now: u64) -> &mut Usage {
        self.tenants
            .entry(tenant.to_string())
            .or_default()
            .entry(now - now % HOUR)
            .or_default()
    }

    /// A worker's report. Only sites of `tenant` count: a worker runs as its tenant,
    /// so what it sends is believed for its own sites only.
    pub fn apply_report(
        &mut self,
        tenant: &str,
        own_sites: &[&str],
        deltas: &[SiteDelta],
        now: u64,
    ) {
        for d in deltas
            .iter()
            .filter(|d| own_sites.contains(&d.site.as_str()))
        {
            let bucket = self.bucket(tenant, now);
            for (a, b) in bucket.requests.iter_mut().zip(d.requests) {
                *a = a.saturating_add(b);
            }
            bucket.bytes_in = bucket.bytes_in.saturating_add(d.bytes_in);
            bucket.bytes_out = bucket.bytes_out.saturating_add(d.bytes_out);
            bucket.capped = bucket.capped.saturating_add(d.capped);
            bucket.timeouts = bucket.timeouts.saturating_add(d.timeouts);
            let site = self
                .sites
                .entry(tenant.to_string())
                .or_default()
                .entry(d.site.clone())
                .or_default();
            for (a, b) in site.requests.iter_mut().zip(d.requests) {
                *a = a.saturating_add(b);
            }
            site.bytes_in = site.bytes_in.saturating_add(d.bytes_in);
            site.bytes_out = site.bytes_out.saturating_add(d.bytes_out);
            site.capped = site.capped.saturating_add(d.capped);
            site.timeouts = site.timeouts.saturating_add(d.timeouts);
        }
    }

    pub fn spawned(&mut self, tenant: &str, now: u64) {
        self.bucket(tenant, now).spawns += 1;
    }

    /// The master has just made (or found) the tenant's group and read it: that
    /// reading is the baseline, counted as nothing. A fresh group reads zero; one that
    /// was left in place (its processes lingered when it was to be removed) or survived
    /// a master restart keeps its totals, which were already counted.
    pub fn group_started(&mut self, tenant: &str, sample: CgroupSample, now: u64) {
        self.last.insert(tenant.to_string(), (sample, now));
        let bucket = self.bucket(tenant, now);
        bucket.memory_peak_bytes = bucket.memory_peak_bytes.max(sample.memory_bytes);
    }

    /// A reading of the tenant's cgroup; the growth since the last one is usage.
    ///
    /// Counters only restart with a new group, and the master says so with
    /// [`Self::group_started`]. A counter lower than before in the same group is a
    /// failed read (the cgroup module reads 0 when a file cannot be read): it counts
    /// nothing and the baseline stays, so the next good reading is not billed again
    /// from zero. Without a baseline (a group whose start the ledger did not see) the
    /// first reading becomes one.
    pub fn sample(&mut self, tenant: &str, sample: CgroupSample, now: u64) {
        let Some((before, then)) = self.last.get(tenant).copied() else {
            self.group_started(tenant, sample, now);
            return;
        };
        let cpu = sample.cpu_usec.saturating_sub(before.cpu_usec);
        let ooms = sample.oom_kills.saturating_sub(before.oom_kills);
        let seconds = now.saturating_sub(then) as f64;
        let bucket = self.bucket(tenant, now);
        bucket.cpu_usec = bucket.cpu_usec.saturating_add(cpu);
        bucket.oom_kills = bucket.oom_kills.saturating_add(ooms);
        // The average of two readings times the time between them (trapezoids).
        bucket.memory_byte_seconds +=
            (before.memory_bytes as f64 + sample.memory_bytes as f64) / 2.0 * seconds;
        bucket.memory_peak_bytes = bucket
            .memory_peak_bytes
            .max(sample.memory_peak_bytes)
            .max(sample.memory_bytes);
        let kept = CgroupSample {
            cpu_usec: sample.cpu_usec.max(before.cpu_usec),
            oom_kills: sample.oom_kills.max(before.oom_kills),
            ..sample
        };
        self.last.insert(tenant.to_string(), (kept, now));
    }

    /// The tenant's group is gone (scaled to zero): its memory is zero from now on,
    /// and the next group starts with [`Self::group_started`].
    pub fn group_gone(&mut self, tenant: &str) {
        self.last.remove(tenant);
    }

    /// Memory in use now, from the last reading.
    pub fn memory_now(&self, tenant: &str) -> u64 {
        self.last.get(tenant).map_or(0, |(s, _)| s.memory_bytes)
    }

    /// Merge old hourly buckets into days; drop what is older than a year and a month.
    pub fn compact(&mut self, now: u64) {
        for buckets in self.tenants.values_mut() {
            let old: Vec<u64> = buckets
                .keys()
                .copied()
                .filter(|&t| t + HOURLY_FOR < now && t % DAY != 0)
                .collect();
            for t in old {
                if let Some(u) = buckets.remove(&t) {
                    buckets.entry(t - t % DAY).or_default().add(&u);
                }
            }
            buckets.retain(|&t, _| t + KEEP_FOR >= now);
        }
    }

    /// Each tenant's usage in buckets starting at or after `since` (all when `None`).
    pub fn totals(&self, since: Option<u64>) -> BTreeMap<String, Usage> {
        self.tenants
            .iter()
            .map(|(tenant, buckets)| {
                let mut total = Usage::default();
                let from = since.map_or(0, |s| s - s % HOUR);
                for (_, u) in buckets.range(from..) {
                    total.add(u);
                }
                (tenant.clone(), total)
            })
            .collect()
    }

    pub fn sites(&self) -> &BTreeMap<String, BTreeMap<String, SiteTotals>> {
        &self.sites
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(site: &str, ok: u64, notfound: u64) -> SiteDelta {
        SiteDelta {
            site: site.into(),
            requests: [0, ok, 0, notfound, 0],
            bytes_in: 10 * (ok + notfound),
            bytes_out: 100 * ok,
            ..SiteDelta::default()
        }
    }

    #[test]
    fn reports_count_for_own_sites_only() {
        let mut l = Ledger::default();
        l.apply_report(
            "a",
            &["a.test"],
            &[delta("a.test", 3, 1), delta("b.test", 50, 0)],
            7200,
        );
        let t = l.totals(None);
        assert_eq!(t["a"].requests, [0, 3, 0, 1, 0]);
        assert_eq!(t["a"].bytes_out, 300);
        assert_eq!(l.sites()["a"].len(), 1);
    }

    fn s(cpu: u64, mem: u64, ooms: u64) -> CgroupSample {
        CgroupSample {
            cpu_usec: cpu,
            memory_bytes: mem,
            memory_peak_bytes: mem,
            oom_kills: ooms,
        }
    }

    #[test]
    fn cgroup_samples_become_usage_and_survive_a_new_group() {
        let mut l = Ledger::default();
        l.group_started("a", s(0, 0, 0), 1000);
        l.sample("a", s(1_000, 1 << 30, 0), 1000);
        l.sample("a", s(5_000, 1 << 30, 1), 1000 + 3600);
        // Scaled to zero; the new group counts from zero again.
        l.group_gone("a");
        l.group_started("a", s(0, 0, 0), 10_000);
        l.sample("a", s(2_000, 0, 0), 10_002);
        let t = &l.totals(None)["a"];
        assert_eq!(t.cpu_usec, 1_000 + 4_000 + 2_000);
        assert_eq!(t.oom_kills, 1);
        assert!((t.gb_hours() - 1.0).abs() < 1e-9, "{}", t.gb_hours());
        assert_eq!(t.memory_peak_bytes, 1 << 30);
    }

    #[test]
    fn a_failed_read_is_not_a_reset() {
        let mut l = Ledger::default();
        l.group_started("a", s(0, 0, 0), 1000);
        l.sample("a", s(1_000_000, 100, 1), 1002);
        // cpu.stat and memory.events could not be read: the cgroup module gives 0.
        l.sample("a", s(0, 100, 0), 1004);
        l.sample("a", s(1_200_000, 100, 1), 1006);
        let t = &l.totals(None)["a"];
        assert_eq!(t.cpu_usec, 1_200_000);
        assert_eq!(t.oom_kills, 1);
    }

    #[test]
    fn a_group_left_in_place_is_not_billed_twice() {
        let mut l = Ledger::default();
        l.group_started("a", s(0, 0, 0), 1000);
        l.sample("a", s(3_000_000, 0, 2), 1002);
        l.group_gone("a");
        // Its processes lingered, so the group stayed and is used again with its
        // totals: they were counted already.
        l.group_started("a", s(3_000_000, 0, 2), 2000);
        l.sample("a", s(3_500_000, 0, 2), 2002);
        let t = &l.totals(None)["a"];
        assert_eq!(t.cpu_usec, 3_500_000);
        assert_eq!(t.oom_kills, 2);
    }

    #[test]
    fn a_group_seen_first_mid_life_is_a_baseline() {
        // A master restarted while the group lived on: what the group had counted was
        // in the ledger the last master saved.
        let mut l = Ledger::default();
        l.sample("a", s(9_000_000, 1 << 20, 3), 1000);
        l.sample("a", s(9_100_000, 1 << 20, 3), 1010);
        let t = &l.totals(None)["a"];
        assert_eq!(t.cpu_usec, 100_000);
        assert_eq!(t.oom_kills, 0);
        assert_eq!(t.memory_byte_seconds, (10u64 << 20) as f64);
    }

    #[test]
    fn since_persistence_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.json");
        let mut l = Ledger::default();
        let day0 = 100 * DAY;
        l.apply_report("a", &["a.test"], &[delta("a.test", 1, 0)], day0 + 5 * HOUR);
        l.apply_report("a", &["a.test"], &[delta("a.test", 2, 0)], day0 + 40 * DAY);
        l.spawned("a", day0 + 40 * DAY);
        l.save(&path).unwrap();
        let mut back = Ledger::load(&path).unwrap();
        assert_eq!(back.totals(None)["a"].total_requests(), 3);
        assert_eq!(back.totals(Some(day0 + 39 * DAY))["a"].total_requests(), 2);
        back.compact(day0 + 41 * DAY);
        // The old hour became its day, the total is the same.
        assert!(back.tenants["a"].contains_key(&day0));
        assert_eq!(back.totals(None)["a"].total_requests(), 3);
        assert_eq!(back.totals(None)["a"].spawns, 1);
        back.compact(day0 + 500 * DAY);
        assert_eq!(back.totals(None)["a"].total_requests(), 0);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(Ledger::load(&path).is_err());
    }
}
