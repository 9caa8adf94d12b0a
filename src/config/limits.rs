//! A tenant's resource limits: its cgroup (memory, CPU, pids, IO weight), rlimits and
//! nice. Set in `[defaults]`, overridden in `[tenant.NAME]`; applied by the master
//! before the tenant's worker runs a single instruction, and inherited by everything
//! the worker starts.

use serde::{Deserialize, Serialize};

use super::{Diagnostic, Source, parse_size};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Bytes of memory for all the tenant's processes together (cgroup).
    pub memory_max: Option<u64>,
    /// CPU time as a number of cores, e.g. 0.5 (cgroup CFS quota).
    pub cpu_max: Option<f64>,
    /// Processes and threads of the tenant together (cgroup).
    pub pids_max: Option<u64>,
    /// IO weight, 1..=10000 (cgroup v2 `io.weight`; v1 `blkio.weight` 10..=1000).
    pub io_weight: Option<u32>,
    /// Niceness 0..=19 of the worker and everything it starts.
    pub nice: Option<i32>,
    pub rlimits: Vec<(Rlimit, u64)>,
}

impl Eq for Limits {}

/// The per-process limits a tenant's processes get (setrlimit, soft = hard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rlimit {
    /// Open files.
    Nofile,
    /// Processes of the tenant's uid (a fork bomb stops here without cgroups).
    Nproc,
    /// Address space in bytes.
    As,
    /// Core file size in bytes (0: no core dumps).
    Core,
    /// CPU seconds per process.
    Cpu,
    /// Largest file a process may write, in bytes.
    Fsize,
}

impl Rlimit {
    pub const ALL: [(Rlimit, &'static str); 6] = [
        (Rlimit::Nofile, "rlimit_nofile"),
        (Rlimit::Nproc, "rlimit_nproc"),
        (Rlimit::As, "rlimit_as"),
        (Rlimit::Core, "rlimit_core"),
        (Rlimit::Cpu, "rlimit_cpu"),
        (Rlimit::Fsize, "rlimit_fsize"),
    ];

    /// Sizes take suffixes (K, M, G); counts and seconds are plain numbers.
    fn is_size(self) -> bool {
        matches!(self, Rlimit::As | Rlimit::Core | Rlimit::Fsize)
    }

    /// Limits the long-lived worker must not carry itself: RLIMIT_CPU counts its CPU
    /// since it started (it would be killed after that many seconds of serving) and
    /// RLIMIT_FSIZE applies to every file it writes, condo's access logs included (the
    /// first line past the size would kill it with SIGXFSZ). They bind the processes
    /// the worker starts (CGI scripts, php-cgi, apps), set in their pre_exec.
    pub fn only_for_started_processes(self) -> bool {
        matches!(self, Rlimit::Cpu | Rlimit::Fsize)
    }
}

/// The limit keys as written, in `[defaults]` or `[tenant.NAME]`.
#[derive(Debug, Default, Clone, Deserialize)]
pub(super) struct LimitKeys {
    pub memory_max: Option<String>,
    pub cpu_max: Option<f64>,
    pub pids_max: Option<toml::Value>,
    pub io_weight: Option<u32>,
    pub nice: Option<i32>,
    pub rlimit_nofile: Option<toml::Value>,
    pub rlimit_nproc: Option<toml::Value>,
    pub rlimit_as: Option<toml::Value>,
    pub rlimit_core: Option<toml::Value>,
    pub rlimit_cpu: Option<toml::Value>,
    pub rlimit_fsize: Option<toml::Value>,
}

impl LimitKeys {
    fn rlimit(&self, which: Rlimit) -> Option<&toml::Value> {
        match which {
            Rlimit::Nofile => self.rlimit_nofile.as_ref(),
            Rlimit::Nproc => self.rlimit_nproc.as_ref(),
            Rlimit::As => self.rlimit_as.as_ref(),
            Rlimit::Core => self.rlimit_core.as_ref(),
            Rlimit::Cpu => self.rlimit_cpu.as_ref(),
            Rlimit::Fsize => self.rlimit_fsize.as_ref(),
        }
    }
}

/// `memory_max` of a tenant that sets none: enough for a worker, a pool of php-cgi
/// processes and an app (a typical shared-hosting plan is 512M-2G), small enough that
/// a leak or a hog in one tenant stops in its own group long before the host swaps.
pub const DEFAULT_MEMORY_MAX: u64 = 1 << 30;
/// `pids_max` of a tenant that sets none: a worker (a few threads), `workers_max`
/// FastCGI processes and CGI scripts have ample room; a fork bomb stops here.
pub const DEFAULT_PIDS_MAX: u64 = 512;

impl Limits {
    /// What every tenant gets before `[defaults]` and its own section: a memory and a
    /// process cap, so a tenant whose admin wrote no limits still cannot take the
    /// host down. `memory_max = "max"` / `pids_max = "max"` lift them explicitly.
    pub fn safe_defaults() -> Limits {
        Limits {
            memory_max: Some(DEFAULT_MEMORY_MAX),
            pids_max: Some(DEFAULT_PIDS_MAX),
            ..Limits::default()
        }
    }

    /// What `condo check` warns about: the caps this tenant runs without.
    pub fn unlimited(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.memory_max.is_none() {
            missing.push("memory_max");
        }
        if self.pids_max.is_none() {
            missing.push("pids_max");
        }
        missing
    }

    /// The rlimits of the tenant's worker (and, inherited, of everything it starts).
    pub fn worker_rlimits(&self) -> Vec<(Rlimit, u64)> {
        self.rlimits
            .iter()
            .copied()
            .filter(|(w, _)| !w.only_for_started_processes())
            .collect()
    }

    /// The rlimits the worker sets on each process it starts, on top of its own.
    pub fn started_process_rlimits(&self) -> Vec<(Rlimit, u64)> {
        self.rlimits
            .iter()
            .copied()
            .filter(|(w, _)| w.only_for_started_processes())
            .collect()
    }

    /// `base` with the keys of `keys` (found under `table` in `source`) applied.
    pub(super) fn apply(
        base: &Limits,
        keys: &LimitKeys,
        source: &Source,
        table: &str,
        diags: &mut Vec<Diagnostic>,
    ) -> Limits {
        let key = |k: &str| format!("{table}.{k}");
        let mut limits = base.clone();
        if let Some(text) = &keys.memory_max {
            match parse_size(text) {
                // "max": explicitly unlimited (and `condo check` says so).
                Some(u64::MAX) => limits.memory_max = None,
                Some(n) if n >= 4 << 20 => limits.memory_max = Some(n),
                Some(_) => diags.push(source.error(
                    &key("memory_max"),
                    "must be at least 4M: a worker needs a few MiB to run at all",
                )),
                None => diags.push(source.error(
                    &key("memory_max"),
                    format!("`{text}` is not a size; write e.g. \"512M\" or \"2G\" (or \"max\": no limit)"),
                )),
            }
        }
        if let Some(cores) = keys.cpu_max {
            if cores.is_finite() && (0.01..=1024.0).contains(&cores) {
                limits.cpu_max = Some(cores);
            } else {
                diags.push(source.error(
                    &key("cpu_max"),
                    "must be a number of cores between 0.01 and 1024, e.g. 0.5 or 2",
                ));
            }
        }
        match &keys.pids_max {
            None => {}
            Some(toml::Value::String(s)) if s == "max" => limits.pids_max = None,
            Some(toml::Value::Integer(n)) if *n >= 8 => limits.pids_max = Some(*n as u64),
            Some(toml::Value::Integer(_)) => diags.push(source.error(
                &key("pids_max"),
                "must be at least 8: a worker alone runs a few threads",
            )),
            Some(_) => diags.push(source.error(
                &key("pids_max"),
                "must be a whole number (at least 8) or \"max\" (no limit)",
            )),
        }
        if let Some(w) = keys.io_weight {
            if (1..=10_000).contains(&w) {
                limits.io_weight = Some(w);
            } else {
                diags.push(source.error(&key("io_weight"), "must be between 1 and 10000"));
            }
        }
        if let Some(n) = keys.nice {
            if (0..=19).contains(&n) {
                limits.nice = Some(n);
            } else {
                diags.push(source.error(
                    &key("nice"),
                    "must be between 0 and 19: tenants never get more than normal priority",
                ));
            }
        }
        for (which, name) in Rlimit::ALL {
            let Some(value) = keys.rlimit(which) else {
                continue;
            };
            let parsed = match value {
                toml::Value::Integer(n) if *n >= 0 => Some(*n as u64),
                toml::Value::String(s) if which.is_size() => parse_size(s),
                toml::Value::String(s) if s == "max" => Some(u64::MAX),
                _ => None,
            };
            match parsed {
                Some(n) => {
                    limits.rlimits.retain(|(w, _)| *w != which);
                    limits.rlimits.push((which, n));
                }
                None => diags.push(source.error(
                    &key(name),
                    if which.is_size() {
                        "must be a size (e.g. \"1G\" or 1073741824) or \"max\""
                    } else {
                        "must be a whole number or \"max\""
                    },
                )),
            }
        }
        limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(text: &str) -> (Limits, Vec<Diagnostic>) {
        let source = Source::from_text(std::path::Path::new("t.toml"), text.to_string());
        let keys: LimitKeys = toml::from_str(text).unwrap();
        let mut diags = Vec::new();
        let limits = Limits::apply(&Limits::default(), &keys, &source, "tenant.a", &mut diags);
        (limits, diags)
    }

    #[test]
    fn every_key() {
        let (l, diags) = apply(
            "memory_max = \"512M\"\ncpu_max = 0.5\npids_max = 64\nio_weight = 200\nnice = 5\nrlimit_nofile = 4096\nrlimit_as = \"2G\"\nrlimit_core = 0\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(l.memory_max, Some(512 << 20));
        assert_eq!(l.cpu_max, Some(0.5));
        assert_eq!(l.pids_max, Some(64));
        assert_eq!(l.io_weight, Some(200));
        assert_eq!(l.nice, Some(5));
        assert_eq!(
            l.rlimits,
            vec![
                (Rlimit::Nofile, 4096),
                (Rlimit::As, 2 << 30),
                (Rlimit::Core, 0)
            ]
        );
    }

    #[test]
    fn cpu_and_fsize_bind_started_processes_only() {
        let (l, _) = apply("rlimit_nofile = 100\nrlimit_cpu = 60\nrlimit_fsize = \"1M\"\n");
        assert_eq!(l.worker_rlimits(), vec![(Rlimit::Nofile, 100)]);
        assert_eq!(
            l.started_process_rlimits(),
            vec![(Rlimit::Cpu, 60), (Rlimit::Fsize, 1 << 20)]
        );
    }

    #[test]
    fn bad_values_are_named() {
        let (_, diags) = apply(
            "memory_max = \"1K\"\ncpu_max = 0.0\npids_max = 2\nio_weight = 0\nnice = -5\nrlimit_nofile = \"lots\"\n",
        );
        let keys: Vec<&str> = diags.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tenant.a.memory_max",
                "tenant.a.cpu_max",
                "tenant.a.pids_max",
                "tenant.a.io_weight",
                "tenant.a.nice",
                "tenant.a.rlimit_nofile"
            ]
        );
    }

    #[test]
    fn max_means_explicitly_unlimited() {
        let source_text = "memory_max = \"max\"\npids_max = \"max\"\n";
        let source = Source::from_text(std::path::Path::new("t.toml"), source_text.to_string());
        let keys: LimitKeys = toml::from_str(source_text).unwrap();
        let mut diags = Vec::new();
        let l = Limits::apply(
            &Limits::safe_defaults(),
            &keys,
            &source,
            "tenant.a",
            &mut diags,
        );
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!((l.memory_max, l.pids_max), (None, None));
        assert_eq!(l.unlimited(), ["memory_max", "pids_max"]);
        let (_, diags) = apply("pids_max = \"lots\"\n");
        assert!(diags[0].message.contains("\"max\""), "{diags:?}");
    }

    #[test]
    fn unset_limits_are_the_safe_defaults() {
        let source = Source::from_text(std::path::Path::new("t.toml"), String::new());
        let mut diags = Vec::new();
        let l = Limits::apply(
            &Limits::safe_defaults(),
            &LimitKeys::default(),
            &source,
            "tenant.a",
            &mut diags,
        );
        assert_eq!(l.memory_max, Some(DEFAULT_MEMORY_MAX));
        assert_eq!(l.pids_max, Some(DEFAULT_PIDS_MAX));
        assert!(l.unlimited().is_empty());
    }
}
