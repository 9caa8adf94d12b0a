//! Usage accounting, for billing and monitoring: what each tenant used, from two
//! sources. The request path (counted by the tenant's worker, per site): requests by
//! status class, bytes, requests refused at `max_clients`, timeouts. The tenant's
//! cgroup (read by the master): CPU time, memory now, peak and its time integral (for
//! GB-hours), OOM kills. The master counts worker starts.
//!
//! Kept in hourly buckets (daily after 31 days, dropped after 400) under
//! `state_dir/usage.json`, so `condo usage --since` works and nothing is lost when a
//! tenant scales to zero, on a reload or a restart.

pub mod ledger;
pub mod report;

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// What a worker counted for one site since its last report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteDelta {
    pub site: String,
    /// Requests by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub requests: [u64; 5],
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Requests answered 503 because the site was at `max_clients` with a full queue.
    pub capped: u64,
    /// Requests cancelled at their timeout (504).
    pub timeouts: u64,
}

impl SiteDelta {
    pub fn is_empty(&self) -> bool {
        self.requests.iter().all(|&n| n == 0) && self.bytes_in == 0 && self.bytes_out == 0
    }
}

/// What a site holds in a worker at one moment (gauges, not counts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteLoad {
    pub site: String,
    /// Client connections serving the site.
    pub connections: u64,
    /// Requests waiting at the site's `max_clients`.
    pub queued: u64,
}

/// A site's counters in the worker, updated on every request without a lock.
#[derive(Debug, Default)]
pub struct SiteCounters {
    requests: [AtomicU64; 5],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    capped: AtomicU64,
    timeouts: AtomicU64,
}

impl SiteCounters {
    /// One request answered with `status`; `bytes_in` and `bytes_out` as far as known.
    pub fn request(&self, status: u16, bytes_in: u64, bytes_out: u64) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.requests[class].fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        if status == 504 {
            self.timeouts.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn capped(&self) {
        self.capped.fetch_add(1, Ordering::Relaxed);
    }

    /// Everything counted since the last call, and start again from zero.
    pub fn take(&self, site: &str) -> SiteDelta {
        let take = |a: &AtomicU64| a.swap(0, Ordering::Relaxed);
        SiteDelta {
            site: site.to_string(),
            requests: [
                take(&self.requests[0]),
                take(&self.requests[1]),
                take(&self.requests[2]),
                take(&self.requests[3]),
                take(&self.requests[4]),
            ],
            bytes_in: take(&self.bytes_in),
            bytes_out: take(&self.bytes_out),
            capped: take(&self.capped),
            timeouts: take(&self.timeouts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_by_class_and_take_resets() {
        let c = SiteCounters::default();
        c.request(200, 10, 100);
        c.request(204, 10, 0);
        c.request(404, 5, 50);
        c.request(504, 5, 0);
        c.capped();
        let d = c.take("s");
        assert_eq!(d.requests, [0, 2, 0, 1, 1]);
        assert_eq!((d.bytes_in, d.bytes_out), (30, 150));
        assert_eq!((d.capped, d.timeouts), (1, 1));
        assert!(c.take("s").is_empty());
    }
}
