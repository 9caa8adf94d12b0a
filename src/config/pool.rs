//! How a tenant's processes are started, kept, recycled and bounded in time: the
//! PHP-FPM pool settings (`pm.*`, `request_terminate_timeout`) for every tenant at once.
//!
//! Each key may be set in `[defaults]` and overridden in `[tenant.NAME]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Diagnostic, Source, parse_duration};

/// One tenant's pool settings, with the defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// Processes kept warm. Above zero, the tenant's worker is started with condo and
    /// never stopped for idleness, and each FastCGI route keeps this many processes
    /// (at most its `processes_max`) running.
    pub workers_min: usize,
    /// The default `processes_max` of the tenant's FastCGI routes (PHP-FPM's
    /// `pm.max_children`).
    pub workers_max: usize,
    /// A worker without a connection for this long exits (scale to zero); also the
    /// default `idle_timeout` of FastCGI and app processes.
    pub idle_timeout: Duration,
    /// The default `max_requests` of FastCGI processes: a php-cgi is replaced after
    /// serving this many (leaky applications are why the key exists).
    pub max_requests: u64,
    /// condo's own worker is replaced after serving this many requests; `None` (the
    /// default): never by count. Replacing it hands every open connection over and
    /// costs a fork and exec: at the old default of 10,000 a busy static site paid a
    /// quarter of its throughput for it, and condo's worker does not leak like an
    /// application can (`worker_memory_max` still replaces one that grows).
    pub worker_max_requests: Option<u64>,
    /// The default route `timeout`: a request running longer is cancelled, its process
    /// killed, the client gets 504.
    pub request_timeout: Duration,
    /// A worker whose resident memory exceeds this is replaced like at `max_requests`.
    pub worker_memory_max: Option<u64>,
}

impl Default for Pool {
    fn default() -> Self {
        Self {
            workers_min: 0,
            workers_max: 4,
            idle_timeout: Duration::from_secs(60),
            // High by default: every replacement is a fresh php-cgi start (~15 ms of
            // CPU); at 500, PHP-FPM's usual setting, a 10k req/s site spent a third of
            // its time on it.
            max_requests: 10_000,
            worker_max_requests: None,
            request_timeout: Duration::from_secs(300),
            worker_memory_max: None,
        }
    }
}

/// The pool keys as written, in `[defaults]` or `[tenant.NAME]`.
#[derive(Debug, Default, Clone, Deserialize)]
pub(super) struct PoolKeys {
    pub workers_min: Option<usize>,
    pub workers_max: Option<usize>,
    pub idle_timeout: Option<String>,
    pub max_requests: Option<u64>,
    pub worker_max_requests: Option<u64>,
    pub request_timeout: Option<String>,
    pub worker_memory_max: Option<String>,
}

impl Pool {
    /// `base` with the keys of `keys` (found under `table` in `source`) applied.
    pub(super) fn apply(
        base: &Pool,
        keys: &PoolKeys,
        source: &Source,
        table: &str,
        diags: &mut Vec<Diagnostic>,
    ) -> Pool {
        let key = |k: &str| format!("{table}.{k}");
        let mut pool = base.clone();
        if let Some(n) = keys.workers_max {
            if (1..=256).contains(&n) {
                pool.workers_max = n;
            } else {
                diags.push(source.error(&key("workers_max"), "must be between 1 and 256"));
            }
        }
        if let Some(n) = keys.workers_min {
            if n <= 256 {
                pool.workers_min = n;
            } else {
                diags.push(source.error(&key("workers_min"), "must be between 0 and 256"));
            }
        }
        if pool.workers_min > pool.workers_max {
            diags.push(source.error(
                &key(if keys.workers_min.is_some() {
                    "workers_min"
                } else {
                    "workers_max"
                }),
                format!(
                    "workers_min ({}) is above workers_max ({})",
                    pool.workers_min, pool.workers_max
                ),
            ));
        }
        if let Some(n) = keys.max_requests {
            if n >= 1 {
                pool.max_requests = n;
            } else {
                diags.push(source.error(&key("max_requests"), "must be at least 1"));
            }
        }
        if let Some(n) = keys.worker_max_requests {
            if n >= 1 {
                pool.worker_max_requests = Some(n);
            } else {
                diags.push(source.error(
                    &key("worker_max_requests"),
                    "must be at least 1 (leave it out to never replace the worker by count)",
                ));
            }
        }
        pool.idle_timeout = parse_duration(
            source,
            &key("idle_timeout"),
            keys.idle_timeout.as_deref(),
            pool.idle_timeout,
            diags,
        );
        pool.request_timeout = parse_duration(
            source,
            &key("request_timeout"),
            keys.request_timeout.as_deref(),
            pool.request_timeout,
            diags,
        );
        if let Some(text) = &keys.worker_memory_max {
            match parse_size(text) {
                Some(n) if n >= 1 << 20 => pool.worker_memory_max = Some(n),
                Some(_) => diags.push(source.error(
                    &key("worker_memory_max"),
                    "must be at least 1M: a worker needs a few MiB to run at all",
                )),
                None => diags.push(source.error(
                    &key("worker_memory_max"),
                    format!("`{text}` is not a size; write e.g. \"256M\" or \"1G\""),
                )),
            }
        }
        pool
    }
}

/// A byte count as admins write it: a number with an optional K, M, G or T suffix
/// (powers of 1024, as in systemd and cgroup files), or "max" for no limit (`u64::MAX`).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("max") {
        return Some(u64::MAX);
    }
    let (digits, shift) = match text.as_bytes().last()?.to_ascii_uppercase() {
        b'K' => (&text[..text.len() - 1], 10),
        b'M' => (&text[..text.len() - 1], 20),
        b'G' => (&text[..text.len() - 1], 30),
        b'T' => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    let n: u64 = digits.trim().parse().ok()?;
    n.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("4K"), Some(4096));
        assert_eq!(parse_size("256m"), Some(256 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("max"), Some(u64::MAX));
        assert_eq!(parse_size("1.5G"), None);
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999T"), None);
    }

    fn apply(text: &str) -> (Pool, Vec<Diagnostic>) {
        let source = Source::from_text(std::path::Path::new("t.toml"), text.to_string());
        let keys: PoolKeys = toml::from_str(text).unwrap();
        let mut diags = Vec::new();
        let pool = Pool::apply(&Pool::default(), &keys, &source, "defaults", &mut diags);
        (pool, diags)
    }

    #[test]
    fn keys_override_the_base() {
        let (pool, diags) = apply(
            "workers_min = 1\nworkers_max = 8\nidle_timeout = \"5s\"\nmax_requests = 3\nrequest_timeout = \"2s\"\nworker_memory_max = \"64M\"\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(pool.workers_min, 1);
        assert_eq!(pool.workers_max, 8);
        assert_eq!(pool.idle_timeout, Duration::from_secs(5));
        assert_eq!(pool.max_requests, 3);
        assert_eq!(pool.request_timeout, Duration::from_secs(2));
        assert_eq!(pool.worker_memory_max, Some(64 << 20));
    }

    #[test]
    fn bad_values_are_named() {
        let (_, diags) = apply(
            "workers_min = 9\nworkers_max = 2\nmax_requests = 0\nworker_memory_max = \"lots\"\nidle_timeout = \"soon\"\n",
        );
        let keys: Vec<&str> = diags.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "defaults.workers_min",
                "defaults.max_requests",
                "defaults.idle_timeout",
                "defaults.worker_memory_max"
            ],
            "{diags:?}"
        );
    }
}
