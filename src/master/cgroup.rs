//! One cgroup per tenant, holding every process of that tenant (worker, CGI scripts,
//! FastCGI and app processes inherit it), with its memory, CPU, pids and IO limits,
//! and the counters accounting reads.
//!
//! Both kernels' interfaces: cgroup v2 (one unified hierarchy: `memory.max`,
//! `cpu.max`, ...) and v1 (one hierarchy per controller: `memory/…/memory.limit_in_bytes`,
//! `cpu/…/cpu.cfs_quota_us`, ...). Groups live under `<cgroup_root>/<cgroup_parent>/`
//! (per controller on v1), so tests can use a scratch parent. A child joins its
//! tenant's group between fork and exec by writing "0" to `cgroup.procs` files the
//! master opened before the fork, so no instruction of the tenant runs outside it.
//!
//! The master's loop never waits on a tenant's group: a group whose last worker left is
//! emptied (every process left in it killed: `cgroup.kill` on v2, SIGKILL through a
//! pidfd on v1) and removed on a blocking thread, within a deadline; one that could not
//! be removed is retried later, and the tenant's next worker starts in a fresh group
//! (`<tenant>.1`, ...) meanwhile. One condo instance per `cgroup_parent`: the master
//! holds an exclusive flock on its parent directory (per hierarchy) while it runs.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::{CgroupMode, Limits};

/// The counters of one tenant's group since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    pub cpu_usec: u64,
    pub memory_bytes: u64,
    pub memory_peak_bytes: u64,
    pub oom_kills: u64,
    pub pids: u64,
}

#[derive(Debug, Clone)]
enum Layout {
    /// The unified hierarchy: `<root>/<parent>/<tenant>/`.
    V2 { parent: PathBuf },
    /// One directory per controller: `<root>/<controller>/<parent>/<tenant>/`. `None`
    /// for a controller that is not mounted.
    V1 {
        memory: Option<PathBuf>,
        cpu: Option<PathBuf>,
        cpuacct: Option<PathBuf>,
        pids: Option<PathBuf>,
        blkio: Option<PathBuf>,
    },
}

#[derive(Debug)]
pub struct Cgroups {
    layout: Layout,
    /// The parent directories, each flocked (exclusive) for this master's life: no
    /// second instance runs on the same parent. Handed to the new master in a binary
    /// upgrade (the lock belongs to the open file, which both then hold).
    locks: Vec<OwnedFd>,
}

/// A tenant's group(s), ready for children to join.
#[derive(Debug, Clone)]
pub struct TenantGroup {
    /// The group's name under the parent: the tenant's name, or `<tenant>.<n>` while an
    /// earlier group of the tenant is still being emptied.
    name: String,
    /// The tenant's directory in each hierarchy (one on v2).
    dirs: Vec<PathBuf>,
    layout: Layout,
}

/// At most this many groups per tenant at once: the live one and those still being
/// emptied. A tenant whose processes survive SIGKILL (stuck in the kernel) gets no new
/// worker beyond it, rather than an ever-growing number of groups.
pub const GROUPS_PER_TENANT: usize = 4;

/// The name of a tenant's `n`th group: `a`, `a.1`, `a.2`, ... (a tenant's name never
/// holds a dot, so these never collide with another tenant's).
pub fn group_name(tenant: &str, n: usize) -> String {
    if n == 0 {
        tenant.to_string()
    } else {
        format!("{tenant}.{n}")
    }
}

/// The tenant a group name belongs to.
pub fn tenant_of(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

impl Cgroups {
    /// Find the cgroup interface (as `mode` allows), create condo's parent group and
    /// lock it. `Ok(None)`, with a log line naming the limits that are then not
    /// enforced, when there is none or it is switched off. `Err`: another running condo
    /// holds the parent (or it cannot be locked): this one must not start.
    /// `inherited`: lock fds an old master handed over in a binary upgrade.
    pub fn detect(
        mode: CgroupMode,
        root: &Path,
        parent: &str,
        inherited: Vec<OwnedFd>,
    ) -> Result<Option<Self>, String> {
        let Some(layout) = Self::layout(mode, root, parent) else {
            return Ok(None);
        };
        let mut cgroups = Self {
            layout,
            locks: Vec::new(),
        };
        for dir in cgroups.parents() {
            // Co-mounted v1 controllers (`cpu` and `cpuacct` linked to `cpu,cpuacct`)
            // are one directory: a second flock on it, through another open file,
            // would conflict with our own.
            let id = rustix::fs::stat(&dir).ok().map(|st| (st.st_dev, st.st_ino));
            let held = id.is_some()
                && cgroups
                    .locks
                    .iter()
                    .any(|l| rustix::fs::fstat(l).ok().map(|st| (st.st_dev, st.st_ino)) == id);
            if !held {
                cgroups.locks.push(lock_parent(&dir, parent, &inherited)?);
            }
        }
        Ok(Some(cgroups))
    }

    /// The fds of the parent locks, to hand to the new master of a binary upgrade.
    pub fn lock_fds(&self) -> Vec<RawFd> {
        self.locks.iter().map(|f| f.as_raw_fd()).collect()
    }

    fn layout(mode: CgroupMode, root: &Path, parent: &str) -> Option<Layout> {
        let unenforced = "memory_max, cpu_max, pids_max and io_weight are not enforced \
                          (rlimits and nice still are)";
        if mode == CgroupMode::Off {
            info!("cgroups off (server.cgroup = \"off\"): {unenforced}");
            return None;
        }
        let v2 = root.join("cgroup.controllers").exists();
        let v1 = ["memory", "cpu", "pids"]
            .iter()
            .any(|c| root.join(c).join("cgroup.procs").exists());
        let layout = match (mode, v2, v1) {
            (CgroupMode::V2 | CgroupMode::Auto, true, _) => {
                let parent = root.join(parent);
                if let Err(e) = make_dir(&parent) {
                    warn!("cgroup v2 at {}: {e}; {unenforced}", root.display());
                    return None;
                }
                enable_controllers(root);
                enable_controllers(&parent);
                Layout::V2 { parent }
            }
            (CgroupMode::V1 | CgroupMode::Auto, _, true) => {
                let make = |controller: &str| -> Option<PathBuf> {
                    let base = root.join(controller);
                    if !base.join("cgroup.procs").exists() {
                        return None;
                    }
                    let dir = base.join(parent);
                    match make_dir(&dir) {
                        Ok(()) => Some(dir),
                        Err(e) => {
                            warn!("cgroup v1 {controller}: {}: {e}", dir.display());
                            None
                        }
                    }
                };
                let layout = Layout::V1 {
                    memory: make("memory"),
                    cpu: make("cpu"),
                    cpuacct: make("cpuacct"),
                    pids: make("pids"),
                    blkio: make("blkio"),
                };
                if let Layout::V1 {
                    memory,
                    cpu,
                    pids,
                    blkio,
                    ..
                } = &layout
                {
                    for (name, present) in [
                        ("memory_max", memory.is_some()),
                        ("cpu_max", cpu.is_some()),
                        ("pids_max", pids.is_some()),
                        ("io_weight", blkio.is_some()),
                    ] {
                        if !present {
                            warn!("cgroup v1: no controller for {name}; it is not enforced");
                        }
                    }
                }
                layout
            }
            _ => {
                warn!(
                    "no cgroup {} hierarchy under {}: {unenforced}",
                    match mode {
                        CgroupMode::V1 => "v1",
                        CgroupMode::V2 => "v2",
                        _ => "v1 or v2",
                    },
                    root.display()
                );
                return None;
            }
        };
        info!(
            "cgroups: {} under {}",
            match layout {
                Layout::V2 { .. } => "v2",
                Layout::V1 { .. } => "v1",
            },
            root.display()
        );
        Some(layout)
    }

    /// The group `name` (see [`group_name`]) with `limits` written, created if needed.
    pub fn tenant(&self, name: &str, limits: &Limits) -> io::Result<TenantGroup> {
        let group = self.group(name);
        for dir in &group.dirs {
            make_dir(dir)?;
        }
        group.write_limits(limits)?;
        Ok(group)
    }

    /// The group `name`, as it is (not created).
    pub fn group(&self, name: &str) -> TenantGroup {
        TenantGroup {
            name: name.to_string(),
            dirs: self.tenant_dirs(name),
            layout: self.layout.clone(),
        }
    }

    fn tenant_dirs(&self, tenant: &str) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V2 { parent } => vec![parent.join(tenant)],
            Layout::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
                blkio,
            } => {
                let mut dirs: Vec<PathBuf> = [memory, cpu, cpuacct, pids, blkio]
                    .into_iter()
                    .flatten()
                    .map(|p| p.join(tenant))
                    .collect();
                // Co-mounted controllers (`cpu,cpuacct`) are one directory.
                let mut seen = Vec::new();
                dirs.retain(|d| {
                    let real = d
                        .parent()
                        .and_then(|p| p.canonicalize().ok())
                        .unwrap_or_else(|| d.clone());
                    let fresh = !seen.contains(&real);
                    seen.push(real);
                    fresh
                });
                dirs
            }
        }
    }

    /// The tenant groups a previous run of this instance left behind (it was killed
    /// before it could remove them): at start, before any worker runs, and only with
    /// the parent locked (so no live condo uses them). Empty ones are removed now; the
    /// names of those that still hold processes and that `ours` recognizes as a
    /// tenant's group are returned, for the master to empty (kill) and remove off its
    /// loop. Any other busy group is left alone: the parent may be shared with
    /// something that is not condo (a misconfigured `cgroup_parent`). Nothing here waits.
    pub fn remove_stale(&self, ours: impl Fn(&str) -> bool) -> Vec<String> {
        let mut busy: Vec<String> = Vec::new();
        for parent in self.parents() {
            let Ok(entries) = std::fs::read_dir(&parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let dir = entry.path();
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                match std::fs::remove_dir(&dir) {
                    Ok(()) => info!("removed the stale cgroup {}", dir.display()),
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if !ours(&name) {
                            warn!(
                                "cgroup {} (not a tenant's group) has processes; left alone",
                                dir.display()
                            );
                        } else if !busy.contains(&name) {
                            warn!(
                                "the stale cgroup {} still has processes of an earlier run; \
                                 killing them",
                                dir.display()
                            );
                            busy.push(name);
                        }
                    }
                    Err(e) => warn!("removing the stale cgroup {}: {e}", dir.display()),
                }
            }
        }
        busy
    }

    fn parents(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V2 { parent } => vec![parent.clone()],
            Layout::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
                blkio,
            } => [memory, cpu, cpuacct, pids, blkio]
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
        }
    }

    /// Remove condo's parent group(s) when condo stops (only if empty).
    pub fn remove_parent(&self) {
        let parents = self.parents();
        for dir in parents {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl TenantGroup {
    /// Open every `cgroup.procs` for the child to join by writing "0" to each.
    pub fn procs_files(&self) -> io::Result<Vec<File>> {
        self.dirs
            .iter()
            .map(|d| {
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(d.join("cgroup.procs"))
            })
            .collect()
    }

    fn file(&self, controller: &str, name: &str) -> Option<PathBuf> {
        match &self.layout {
            Layout::V2 { .. } => self.dirs.first().map(|d| d.join(name)),
            Layout::V1 { .. } => {
                let prefix = format!("{controller}.");
                self.dirs
                    .iter()
                    .map(|d| d.join(name))
                    .find(|p| p.exists() && name.starts_with(&prefix))
            }
        }
    }

    /// Write `limits` into the group: at creation, and again when the tenant's next
    /// worker starts in a group that already exists (a reload changed the limits while
    /// the draining worker still holds the group).
    pub fn write_limits(&self, limits: &Limits) -> io::Result<()> {
        let v2 = matches!(self.layout, Layout::V2 { .. });
        let memory = limits
            .memory_max
            .map_or("max".to_string(), |b| b.to_string());
        let pids = limits.pids_max.map_or("max".to_string(), |n| n.to_string());
        const PERIOD_US: u64 = 100_000;
        let quota = limits
            .cpu_max
            .map(|cores| ((cores * PERIOD_US as f64).round() as u64).max(1000));
        if v2 {
            self.write("memory", "memory.max", &memory)?;
            // Without swap limit a capped tenant would just swap instead of being
            // stopped.
            let _ = self.write("memory", "memory.swap.max", "0");
            self.write("pids", "pids.max", &pids)?;
            let cpu = quota.map_or(format!("max {PERIOD_US}"), |q| format!("{q} {PERIOD_US}"));
            self.write("cpu", "cpu.max", &cpu)?;
            if let Some(w) = limits.io_weight {
                self.write("io", "io.weight", &format!("default {w}"))?;
            }
        } else {
            let v1_memory = limits
                .memory_max
                .map_or("-1".to_string(), |b| b.to_string());
            // memsw (memory + swap) only exists with swap accounting on. The kernel
            // keeps memsw >= memory (EINVAL otherwise), so a group made with a lower
            // limit (before a reload, or left by an earlier master) is raised or
            // unlimited only after memsw is lifted.
            let _ = self.write("memory", "memory.memsw.limit_in_bytes", "-1");
            self.write("memory", "memory.limit_in_bytes", &v1_memory)?;
            if limits.memory_max.is_some() {
                let _ = self.write("memory", "memory.memsw.limit_in_bytes", &v1_memory);
            }
            self.write("pids", "pids.max", &pids)?;
            self.write("cpu", "cpu.cfs_period_us", &PERIOD_US.to_string())?;
            let v1_quota = quota.map_or("-1".to_string(), |q| q.to_string());
            self.write("cpu", "cpu.cfs_quota_us", &v1_quota)?;
            if let Some(w) = limits.io_weight {
                // v1 weights are 10..=1000 where v2's are 1..=10000 (100 = default).
                let v1 = (u64::from(w) * 1000 / 10_000).clamp(10, 1000).to_string();
                if self.write("blkio", "blkio.weight", &v1).is_err() {
                    let _ = self.write("blkio", "blkio.bfq.weight", &v1);
                }
            }
        }
        Ok(())
    }

    /// Write one control file; a controller that is absent is skipped (its absence was
    /// logged when condo started).
    fn write(&self, controller: &str, name: &str, value: &str) -> io::Result<()> {
        let Some(path) = self.file(controller, name) else {
            return Ok(());
        };
        let mut f = OpenOptions::new().write(true).open(&path)?;
        f.write_all(value.as_bytes())
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    fn read(&self, controller: &str, name: &str) -> Option<String> {
        std::fs::read_to_string(self.file(controller, name)?).ok()
    }

    fn read_u64(&self, controller: &str, name: &str) -> u64 {
        self.read(controller, name)
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The file that counts the group's OOM kills (`oom_kill`), opened read-only for
    /// the tenant's worker: with it the worker tells a script the kernel killed at
    /// `memory_max` from one killed for another reason, without any path to the
    /// cgroup tree (its cage has none).
    pub fn oom_counter(&self) -> Option<File> {
        let name = match self.layout {
            Layout::V2 { .. } => "memory.events",
            Layout::V1 { .. } => "memory.oom_control",
        };
        File::open(self.file("memory", name)?).ok()
    }

    /// The group's counters now.
    pub fn stats(&self) -> CgroupStats {
        match self.layout {
            Layout::V2 { .. } => CgroupStats {
                cpu_usec: self
                    .read("cpu", "cpu.stat")
                    .and_then(|s| keyed(&s, "usage_usec"))
                    .unwrap_or(0),
                memory_bytes: self.read_u64("memory", "memory.current"),
                memory_peak_bytes: self.read_u64("memory", "memory.peak"),
                oom_kills: self
                    .read("memory", "memory.events")
                    .and_then(|s| keyed(&s, "oom_kill"))
                    .unwrap_or(0),
                pids: self.read_u64("pids", "pids.current"),
            },
            Layout::V1 { .. } => CgroupStats {
                cpu_usec: self.read_u64("cpuacct", "cpuacct.usage") / 1000,
                memory_bytes: self.read_u64("memory", "memory.usage_in_bytes"),
                memory_peak_bytes: self.read_u64("memory", "memory.max_usage_in_bytes"),
                oom_kills: self
                    .read("memory", "memory.oom_control")
                    .and_then(|s| keyed(&s, "oom_kill"))
                    .unwrap_or(0),
                pids: self.read_u64("pids", "pids.current"),
            },
        }
    }

    /// Whether the group's directories are still there (someone may have removed
    /// them, e.g. an old master after a binary upgrade).
    pub fn exists(&self) -> bool {
        self.dirs.iter().all(|d| d.is_dir())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kill every process left in the group and remove it, trying until `deadline`.
    /// Blocking (it waits for the killed processes to be gone): run on a thread of its
    /// own, never on the master's loop. `stop`: give up at once (a binary upgrade
    /// handed the groups to a new master).
    pub fn empty_and_remove(&self, deadline: Instant, stop: &AtomicBool) -> Result<(), String> {
        loop {
            if stop.load(Ordering::Relaxed) {
                return Err("left to the new master".into());
            }
            self.kill_all();
            let mut left = None;
            for dir in &self.dirs {
                match std::fs::remove_dir(dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => left = Some(format!("{}: {e}", dir.display())),
                }
            }
            let Some(why) = left else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                let procs = self.pids().len();
                return Err(format!(
                    "{why} ({procs} process(es) left that did not die of SIGKILL)"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The processes in the group (every hierarchy: on v1 each lists them).
    fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILL every process in the group. v2 has `cgroup.kill` (Linux 5.14), which
    /// also catches processes being forked. Otherwise: each listed pid is pinned with a
    /// pidfd, the list is read again, and only a pinned process still listed is killed
    /// (so a pid that exited and was reused by a process elsewhere is never hit);
    /// rounds repeat for children forked meanwhile (pids_max bounds them).
    fn kill_all(&self) {
        if let Layout::V2 { .. } = self.layout
            && let Some(dir) = self.dirs.first()
            && dir.join("cgroup.kill").exists()
            && std::fs::write(dir.join("cgroup.kill"), "1").is_ok()
        {
            return;
        }
        for _round in 0..8 {
            let listed = self.pids();
            if listed.is_empty() {
                return;
            }
            let pinned: Vec<(i32, OwnedFd)> = listed
                .into_iter()
                .filter_map(|pid| {
                    let p = rustix::process::Pid::from_raw(pid)?;
                    let fd = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                        .ok()?;
                    Some((pid, fd))
                })
                .collect();
            let still = self.pids();
            for (pid, fd) in &pinned {
                if still.binary_search(pid).is_ok() {
                    let _ = rustix::process::pidfd_send_signal(
                        fd.as_fd(),
                        rustix::process::Signal::KILL,
                    );
                }
            }
        }
    }
}

/// Lock the parent directory `dir` so that no other condo instance uses it while this
/// one runs: an exclusive, non-blocking flock, or the lock an old master handed over
/// (the same directory among `inherited`).
fn lock_parent(dir: &Path, parent: &str, inherited: &[OwnedFd]) -> Result<OwnedFd, String> {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("opening the cgroup parent {}: {e}", dir.display()))?;
    let id = |fd: &OwnedFd| rustix::fs::fstat(fd).ok().map(|st| (st.st_dev, st.st_ino));
    let fd = match inherited
        .iter()
        .find(|i| id(i).is_some() && id(i) == id(&fd))
    {
        Some(handed) => handed
            .try_clone()
            .map_err(|e| format!("the inherited lock on {}: {e}", dir.display()))?,
        None => fd,
    };
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(fd),
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let holder = lock_holder(&fd)
                .map(|pid| format!(" (pid {pid})"))
                .unwrap_or_default();
            Err(format!(
                "server.cgroup_parent `{parent}`: {} is in use by another running condo{holder}; \
                 two instances must not share tenant groups: give this one its own \
                 cgroup_parent (or its own run_dir, from which the default is derived)",
                dir.display()
            ))
        }
        Err(e) => Err(format!("locking the cgroup parent {}: {e}", dir.display())),
    }
}

/// The pid holding the flock on `fd`'s inode, from /proc/locks (for the error only).
/// /proc/locks names the process that took the lock: after a binary upgrade that is
/// the old master, gone while its successor holds the lock; then none is named.
fn lock_holder(fd: &OwnedFd) -> Option<u32> {
    let st = rustix::fs::fstat(fd).ok()?;
    let want = format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(st.st_dev),
        rustix::fs::minor(st.st_dev),
        st.st_ino
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // `1: FLOCK  ADVISORY  WRITE 1234 00:23:5678 0 EOF`
            (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str()))
                .then(|| f.get(4)?.parse().ok())
                .flatten()
        })
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| !r.trim_start().starts_with('Z'))
            })
        })
}

/// Names the cgroup parent lock fds an old master hands a new one: `fd,fd,...`.
pub const LOCKS_ENV: &str = "CONDO_CGROUP_LOCKS";

/// The lock fds an old master handed over (binary upgrade); none when started normally.
pub fn inherited_locks() -> anyhow::Result<Vec<OwnedFd>> {
    let Ok(text) = std::env::var(LOCKS_ENV) else {
        return Ok(Vec::new());
    };
    text.split(',')
        .filter(|f| !f.is_empty())
        .map(|f| {
            let fd = f
                .parse()
                .map_err(|_| anyhow::anyhow!("{LOCKS_ENV}: `{f}` is not an fd"))?;
            Ok(crate::sandbox::inherited_fd(fd)?)
        })
        .collect()
}

/// A flag shared with the removal threads: set when they must stop touching groups.
pub type StopFlag = Arc<AtomicBool>;

/// `name value` lines (cpu.stat, memory.events, memory.oom_control).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn make_dir(dir: &Path) -> io::Result<()> {
    // create_dir_all: condo's parent group may have been removed under a running master
    // (by an admin, or a second condo sharing cgroup_parent on its way out).
    match std::fs::create_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
    }
}

/// v2: let `dir`'s children use the controllers condo sets (those the kernel offers).
fn enable_controllers(dir: &Path) {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<String> = ["memory", "cpu", "pids", "io"]
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if !wanted.is_empty()
        && let Err(e) = std::fs::write(dir.join("cgroup.subtree_control"), wanted.join(" "))
    {
        warn!("enabling {} in {}: {e}", wanted.join(" "), dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// v2's file formats, written into a scratch directory laid out like a cgroup2
    /// mount. (This machine and CI run v1; the v2 kernel interface itself is exercised
    /// only where v2 is mounted.)
    #[test]
    fn v2_files_in_a_scratch_tree() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu io memory pids").unwrap();
        std::fs::write(root.path().join("cgroup.subtree_control"), "").unwrap();
        let cgroups = Cgroups::detect(CgroupMode::Auto, root.path(), "condo", Vec::new())
            .unwrap()
            .unwrap();
        let parent = root.path().join("condo");
        // A real cgroup2 fs creates the control files; the scratch tree needs them.
        std::fs::write(parent.join("cgroup.controllers"), "cpu io memory pids").unwrap();
        let limits = Limits {
            memory_max: Some(256 << 20),
            cpu_max: Some(0.5),
            pids_max: Some(64),
            io_weight: Some(300),
            ..Limits::default()
        };
        std::fs::create_dir(parent.join("t")).unwrap();
        for f in [
            "memory.max",
            "cpu.max",
            "pids.max",
            "io.weight",
            "cgroup.procs",
        ] {
            std::fs::write(parent.join("t").join(f), "").unwrap();
        }
        let group = cgroups.tenant("t", &limits).unwrap();
        let read = |f: &str| std::fs::read_to_string(parent.join("t").join(f)).unwrap();
        assert_eq!(read("memory.max"), (256u64 << 20).to_string());
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("pids.max"), "64");
        assert_eq!(read("io.weight"), "default 300");
        assert_eq!(
            std::fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids +io"
        );
        std::fs::write(
            parent.join("t/cpu.stat"),
            "usage_usec 1234\nuser_usec 1000\n",
        )
        .unwrap();
        std::fs::write(parent.join("t/memory.current"), "4096\n").unwrap();
        std::fs::write(parent.join("t/memory.peak"), "8192\n").unwrap();
        std::fs::write(parent.join("t/memory.events"), "low 0\noom 1\noom_kill 2\n").unwrap();
        std::fs::write(parent.join("t/pids.current"), "3\n").unwrap();
        assert_eq!(
            group.stats(),
            CgroupStats {
                cpu_usec: 1234,
                memory_bytes: 4096,
                memory_peak_bytes: 8192,
                oom_kills: 2,
                pids: 3
            }
        );
    }

    /// Emptying and removing a group on the real kernel, with a process in it that is
    /// not a child of anyone who will stop it: v2 (`cgroup.kill`) on a cgroup2 mount
    /// (this machine's hybrid layout has one, without controllers, at
    /// /sys/fs/cgroup/unified), v1 (pidfds) on the v1 hierarchies.
    #[test]
    fn empty_and_remove_kills_what_is_left_in_the_group() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: not root");
            return;
        }
        let mut ran = Vec::new();
        for (mode, root) in [
            (CgroupMode::V2, "/sys/fs/cgroup/unified"),
            (CgroupMode::V2, "/sys/fs/cgroup"),
            (CgroupMode::V1, "/sys/fs/cgroup"),
        ] {
            let root = Path::new(root);
            let parent = format!("condounit{}", std::process::id());
            let Ok(Some(cgroups)) = Cgroups::detect(mode, root, &parent, Vec::new()) else {
                continue;
            };
            // A second instance on the same parent is refused while this one holds it.
            let refused = Cgroups::detect(mode, root, &parent, Vec::new()).unwrap_err();
            assert!(
                refused.contains("in use by another running condo"),
                "{refused}"
            );
            let group = cgroups.group("t.1");
            for d in &group.dirs {
                make_dir(d).unwrap();
            }
            let mut child = std::process::Command::new("sleep")
                .arg("300")
                .spawn()
                .unwrap();
            let pid = child.id();
            for f in group.procs_files().unwrap() {
                (&f).write_all(pid.to_string().as_bytes()).unwrap();
            }
            assert_eq!(group.pids(), vec![pid as i32]);
            let waiter = std::thread::spawn(move || child.wait().unwrap());
            let stop = AtomicBool::new(false);
            let started = Instant::now();
            let result = group.empty_and_remove(Instant::now() + Duration::from_secs(5), &stop);
            let status = waiter.join().unwrap();
            assert_eq!(result, Ok(()));
            assert!(!status.success(), "{status}");
            assert!(!group.exists());
            eprintln!(
                "{mode:?} at {}: emptied and removed in {:?}",
                root.display(),
                started.elapsed()
            );
            cgroups.remove_parent();
            ran.push(mode);
        }
        assert!(
            ran.contains(&CgroupMode::V1) || ran.contains(&CgroupMode::V2),
            "no cgroup hierarchy"
        );
    }

    /// v1 with `cpu` and `cpuacct` co-mounted (one hierarchy, two names: systemd's
    /// usual layout), simulated by links into the real v1 hierarchies: the parent is
    /// locked once, not refused as held by ourselves.
    #[test]
    fn co_mounted_controllers_are_locked_once() {
        if !rustix::process::geteuid().is_root()
            || !Path::new("/sys/fs/cgroup/cpu/cgroup.procs").exists()
        {
            eprintln!("SKIPPED: not root, or no v1 cpu hierarchy");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        for (name, target) in [("cpu", "cpu"), ("cpuacct", "cpu"), ("pids", "pids")] {
            std::os::unix::fs::symlink(
                Path::new("/sys/fs/cgroup").join(target),
                root.path().join(name),
            )
            .unwrap();
        }
        let parent = format!("condounitco{}", std::process::id());
        let cgroups = Cgroups::detect(CgroupMode::V1, root.path(), &parent, Vec::new())
            .unwrap()
            .unwrap();
        assert_eq!(cgroups.locks.len(), 2, "cpu and pids, each once");
        let refused =
            Cgroups::detect(CgroupMode::V1, root.path(), &parent, Vec::new()).unwrap_err();
        assert!(refused.contains("in use"), "{refused}");
        cgroups.remove_parent();
    }

    #[test]
    fn keyed_lines() {
        let text = "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n";
        assert_eq!(keyed(text, "oom_kill"), Some(7));
        assert_eq!(keyed(text, "missing"), None);
    }
}
