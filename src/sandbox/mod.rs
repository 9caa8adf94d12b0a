//! How condo's child processes are started: a plain [`SandboxPlan`] computed up front,
//! applied by one small function between fork and exec.
//!
//! This is the only module with `unsafe` code: the `pre_exec` hook, and taking
//! ownership of fds a process inherited by number.

mod cage;
mod fence;
pub mod resolve;
pub mod sys;

pub use cage::CagePlan;
pub use fence::{TenantPaths, restrict_dispatcher, restrict_dispatcher_syscalls};

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use rustix::process::{Gid, Pid, Signal, Uid};

use crate::config::{Credentials, Rlimit};

/// Everything that happens to a child between fork and exec.
#[derive(Debug, Clone)]
pub struct SandboxPlan {
    /// Identity to switch to; `None` keeps the parent's (condo running unprivileged).
    pub credentials: Option<Credentials>,
    /// Fds the child keeps across exec (everything else is close-on-exec).
    pub inherit_fds: Vec<RawFd>,
    /// The child gets SIGKILL when the master dies, so nothing outlives it.
    pub die_with_parent: bool,
    /// Open `cgroup.procs` files of the tenant's group(s): the child writes "0" to each
    /// (joins) before anything else.
    pub cgroup_procs: Vec<RawFd>,
    /// setrlimit (soft = hard) for each, before the uid change.
    pub rlimits: Vec<(Rlimit, u64)>,
    pub nice: Option<i32>,
    /// Kernel filters and namespaces for a tenant's worker (none for the dispatcher,
    /// which installs its own after exec).
    pub fence: Option<Arc<TenantFence>>,
    /// Exec the sealed in-memory copy of this binary ([`sealed_image`]) rather than
    /// the file at its path: the child is non-dumpable from its first instruction.
    /// Off only for a new master (an upgrade runs the new file).
    pub sealed_image: bool,
}

/// What fences a tenant in beyond its uid: applied last before exec, so the worker and
/// everything it starts carry it.
pub struct TenantFence {
    /// Seccomp programs, installed in order.
    pub seccomp: Vec<seccompiler::BpfProgram>,
    /// A Landlock ruleset made before the fork; `None` where the kernel has none.
    pub landlock: Option<OwnedFd>,
    /// The filesystem rights `landlock` handles (for rules added in the cage).
    pub landlock_access: u64,
    pub cage: Option<CagePlan>,
}

impl std::fmt::Debug for TenantFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantFence")
            .field("seccomp_programs", &self.seccomp.len())
            .field("landlock", &fence::describe(&self.landlock))
            .field("cage", &self.cage)
            .finish()
    }
}

impl TenantFence {
    /// The fence for `mode`; `None` for [`IsolationMode::Uid`].
    pub fn new(
        mode: crate::config::IsolationMode,
        paths: &TenantPaths,
    ) -> anyhow::Result<Option<Self>> {
        use crate::config::IsolationMode;
        if mode == IsolationMode::Uid {
            return Ok(None);
        }
        // Opened once, as root, without following any link a tenant could have made;
        // the rules and the binds below use these fds.
        let opened = fence::OpenedPaths::open(paths)?;
        let landlock = fence::tenant_ruleset(&opened)?;
        let cage = if mode == IsolationMode::Cage {
            let mut keep = opened.own;
            keep.extend(opened.read_files);
            keep.extend(opened.allow_read);
            keep.extend(opened.allow_write);
            Some(CagePlan::new(keep)?)
        } else {
            None
        };
        Ok(Some(Self {
            seccomp: fence::tenant_filters()?,
            landlock,
            landlock_access: fence::handled_fs_access(),
            cage,
        }))
    }
}

/// Whether every path of a tenant's fence opens under the rule of [`resolve`] (what
/// [`TenantFence::new`] would refuse, without building anything).
pub fn check_paths(paths: &TenantPaths) -> anyhow::Result<()> {
    fence::OpenedPaths::check_tenants(paths)
}

/// The paths that are the tenant's own (its home, its sites' roots) and the files its
/// worker must read (its sites' own keys and certificates).
pub fn tenant_paths(
    credentials: Option<&Credentials>,
    sites: &[crate::config::Site],
) -> (Vec<std::path::PathBuf>, Vec<std::path::PathBuf>) {
    let mut own: Vec<std::path::PathBuf> = credentials.iter().map(|c| c.home.clone()).collect();
    own.extend(sites.iter().map(|s| s.root.clone()));
    let read_files = sites
        .iter()
        .filter_map(|s| s.tls.as_ref())
        .flat_map(|t| [t.cert.clone(), t.key.clone()])
        .collect();
    (own, read_files)
}

/// For `condo check`, run as root: each tenant whose worker the master would refuse
/// to start right now because a path of its fence is a link a tenant could have made
/// (or otherwise fails the rule of [`resolve`]). Warnings, not errors: a
/// tenant can make such a link at any time, and must not be able to fail the admin's
/// check (and so `condo reload`) with it.
pub fn refused_tenant_paths(config: &crate::config::Config) -> Vec<String> {
    if !rustix::process::geteuid().is_root() {
        return Vec::new();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut found = Vec::new();
    // Once for all tenants: a host has thousands.
    let accounts = crate::config::Directory::load();
    let sites_by_tenant = config.sites_by_tenant();
    for tenant in config.tenants.values() {
        if tenant.isolation.mode == crate::config::IsolationMode::Uid {
            continue;
        }
        let Ok(credentials) = accounts.resolve_tenant(tenant, config.server.uid_range) else {
            continue; // reported by the config check itself
        };
        let sites: Vec<crate::config::Site> = sites_by_tenant
            .get(tenant.name.as_str())
            .into_iter()
            .flatten()
            .map(|s| (*s).clone())
            .collect();
        let (own, read_files) = tenant_paths(Some(&credentials), &sites);
        let paths = TenantPaths {
            own,
            read_files,
            allow_read: &tenant.isolation.allow_read,
            allow_write: &tenant.isolation.allow_write,
            exe: &exe,
            uid: Some(credentials.uid),
        };
        if let Err(e) = check_paths(&paths) {
            found.push(format!(
                "tenant {}: its worker would not start: {e:#}",
                tenant.name
            ));
        }
    }
    found.sort();
    found
}

impl SandboxPlan {
    /// Switch to `credentials` (if any), die with the parent, nothing else.
    pub fn new(credentials: Option<Credentials>, inherit_fds: Vec<RawFd>) -> Self {
        Self {
            credentials,
            inherit_fds,
            die_with_parent: true,
            cgroup_procs: Vec::new(),
            rlimits: Vec::new(),
            nice: None,
            fence: None,
            sealed_image: true,
        }
    }
}

/// The sealed copy of this binary the master's children run from; made once.
static IMAGE: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();

/// A copy of this process's own binary in a sealed memfd, mode 0711: every child
/// execs it (through `/proc/self/fd/N`, which works in a cage's own /proc too).
///
/// A process that execs a file it may not read is made non-dumpable by the kernel at
/// exec (fs/exec.c, would_dump; what runc does since CVE-2019-5736). So a worker,
/// which execs as its tenant, is never for a moment a process the tenant's own code
/// could ptrace, read through /proc/PID/mem or take an fd from with pidfd_getfd: not
/// even between execve and the worker's first instruction, where setting
/// PR_SET_DUMPABLE before exec would not survive (exec resets it when the binary is
/// readable). The seals keep the copy from changing under its children.
pub fn sealed_image() -> io::Result<&'static OwnedFd> {
    if let Some(fd) = IMAGE.get() {
        return Ok(fd);
    }
    let fd = make_sealed_image().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "making the sealed in-memory copy of condo's binary that children run from \
                 (memfd_create; vm.memfd_noexec must be 0 or 1): {e}"
            ),
        )
    })?;
    // Two threads racing here each made one: the loser's is closed.
    let _ = IMAGE.set(fd);
    Ok(IMAGE.get().expect("just set"))
}

fn make_sealed_image() -> io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags};
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    // MFD_EXEC says so where vm.memfd_noexec = 1 would make it non-executable;
    // kernels before 6.3 do not know the flag.
    let memfd = match rustix::fs::memfd_create("condo", flags | MemfdFlags::EXEC) {
        Err(rustix::io::Errno::INVAL) => rustix::fs::memfd_create("condo", flags)?,
        other => other?,
    };
    let mut file = std::fs::File::from(memfd);
    let mut source = std::fs::File::open("/proc/self/exe")?;
    std::io::copy(&mut source, &mut file)?;
    rustix::fs::fchmod(&file, Mode::from_raw_mode(0o711))?;
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
    )?;
    // exec refuses a file open for writing anywhere (ETXTBSY): keep a read-only
    // descriptor of the same memfd and close the one that wrote it.
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let read_only = rustix::fs::open(
        path.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    drop(file);
    Ok(read_only)
}

/// Build a command for this same binary (a fresh image, invariant 3) that applies
/// `plan` in the child before exec. The environment is cleared except for `RUST_LOG`.
pub fn command(
    exe: &Path,
    args: &[&OsStr],
    plan: SandboxPlan,
) -> io::Result<tokio::process::Command> {
    let mut cmd = if plan.sealed_image {
        // Also what a cage needs: the binary's own path may be hidden there (under
        // /tmp or /home), the fd is not. argv[0] keeps the path for ps.
        let image = sealed_image()?;
        let mut cmd = tokio::process::Command::new(format!("/proc/self/fd/{}", image.as_raw_fd()));
        cmd.arg0(exe);
        cmd
    } else {
        tokio::process::Command::new(exe)
    };
    cmd.args(args).env_clear().kill_on_drop(false);
    if let Ok(level) = std::env::var("RUST_LOG") {
        cmd.env("RUST_LOG", level);
    }
    let groups: Vec<Gid> = plan
        .credentials
        .iter()
        .flat_map(|c| c.groups.iter().map(|&g| Gid::from_raw(g)))
        .collect();
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child, where only async-signal-safe work is
    // allowed: it makes raw syscalls only and allocates nothing (`groups` was built
    // before the fork).
    unsafe {
        cmd.pre_exec(move || apply(&plan, &groups, parent));
    }
    Ok(cmd)
}

/// Mark every fd above stderr close-on-exec: whatever this process inherited from its
/// own parent (a shell's, cargo's jobserver pipe, ...) never reaches a child. Only the
/// fds a [`SandboxPlan`] names are opened up again for one child.
pub fn close_inherited_on_exec() -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on fds; it closes
    // nothing and touches no memory.
    let r = unsafe {
        libc::close_range(
            3,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Precondition: only one thread runs (we are between fork and exec).
fn apply(plan: &SandboxPlan, groups: &[Gid], parent: Pid) -> io::Result<()> {
    // Only the plan's fds cross the exec, even ones another thread of the parent
    // opened without O_CLOEXEC a moment before the fork.
    // SAFETY: as in close_inherited_on_exec; async-signal-safe.
    if unsafe {
        libc::close_range(
            3,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    for &fd in &plan.cgroup_procs {
        // "0" is the writing process: the child itself, before the tenant runs a thing.
        // SAFETY: the parent keeps these files open until spawn returns.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        rustix::io::write(borrowed, b"0")?;
    }
    for &(which, value) in &plan.rlimits {
        rustix::process::setrlimit(resource(which), rlimit(value))?;
    }
    if let Some(nice) = plan.nice {
        rustix::process::setpriority_process(None, nice)?;
    }
    for &fd in &plan.inherit_fds {
        // SAFETY: the fd number comes from an fd the parent owns and keeps open until
        // spawn returns; borrowing it here does not outlive the call.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::empty())?;
    }
    if let Some(fence) = &plan.fence
        && let Some(cage) = &fence.cage
    {
        // Mounts need root: before the uid change.
        let landlock = fence
            .landlock
            .as_ref()
            .map(|fd| (fd.as_raw_fd(), fence.landlock_access));
        cage::enter(cage, landlock)?;
    }
    if let Some(c) = &plan.credentials {
        // Order matters: groups and gid while we still may change them, uid last.
        rustix::thread::set_thread_groups(groups)?;
        let gid = Gid::from_raw(c.gid);
        rustix::thread::set_thread_res_gid(gid, gid, gid)?;
        let uid = Uid::from_raw(c.uid);
        rustix::thread::set_thread_res_uid(uid, uid, uid)?;
        if rustix::process::geteuid().is_root() || rustix::process::getuid().is_root() {
            // Raw errno values: allocating here could deadlock on a lock held at fork.
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        // The uid change made this process the tenant's: not one instruction of it
        // may be traceable by the tenant's own code. (The kernel did this already as
        // the uid changed, with fs.suid_dumpable = 0; exec of the unreadable sealed
        // image keeps it so.)
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    }
    if plan.die_with_parent {
        // After the uid change: changing credentials clears the parent-death signal.
        rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
        if rustix::process::getppid() != Some(parent) {
            // The master died between fork and prctl.
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    rustix::thread::set_no_new_privs(true)?;
    if let Some(fence) = &plan.fence {
        if let Some(ruleset) = &fence.landlock {
            fence::restrict(ruleset.as_raw_fd())?;
        }
        // Last: the filters must still let this process exec.
        fence::install(&fence.seccomp)?;
    }
    Ok(())
}

/// soft = hard; `u64::MAX` ("max" in the config) is no limit.
fn rlimit(value: u64) -> rustix::process::Rlimit {
    rustix::process::Rlimit {
        current: (value != u64::MAX).then_some(value),
        maximum: (value != u64::MAX).then_some(value),
    }
}

fn resource(which: Rlimit) -> rustix::process::Resource {
    use rustix::process::Resource;
    match which {
        Rlimit::Nofile => Resource::Nofile,
        Rlimit::Nproc => Resource::Nproc,
        Rlimit::As => Resource::As,
        Rlimit::Core => Resource::Core,
        Rlimit::Cpu => Resource::Cpu,
        Rlimit::Fsize => Resource::Fsize,
    }
}

/// Run a process the worker starts for one site at that site's `nice` (the worker is
/// unprivileged, so this only ever lowers priority further) and with the tenant's
/// rlimits that the worker itself does not carry (CPU seconds, file size).
pub fn site_child(cmd: &mut tokio::process::Command, site: &crate::config::Site) {
    let nice = site.nice;
    let rlimits = site.process_rlimits.clone();
    if nice.is_none() && rlimits.is_empty() {
        return;
    }
    // SAFETY: runs in the forked child; raw syscalls only, no allocation (`rlimits` was
    // built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            for &(which, value) in &rlimits {
                rustix::process::setrlimit(resource(which), rlimit(value))?;
            }
            if let Some(nice) = nice {
                rustix::process::setpriority_process(None, nice)?;
            }
            Ok(())
        });
    }
}

/// Make a process the worker starts (a tenant's FastCGI app) get SIGKILL when the
/// worker dies, so no app process outlives its worker holding a socket. The signal
/// follows the thread that forks: spawn from one of the runtime's long-lived threads.
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    let parent = rustix::process::getpid();
    // SAFETY: runs in the forked child; raw syscalls only, no allocation.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Give the child `fd` as fd 3 (systemd socket activation's `SD_LISTEN_FDS_START`),
/// open across exec. `fd` is owned by the command from now on, so it stays open until
/// the spawn is done and is closed in the parent when the command is dropped.
pub fn pass_listen_fd(cmd: &mut tokio::process::Command, fd: OwnedFd) {
    const TARGET: RawFd = 3;
    // SAFETY: runs in the forked child after stdio is set up; dup2 and fcntl are
    // async-signal-safe raw syscalls and nothing is allocated. `fd` is open (owned by
    // the closure) for as long as the closure exists.
    unsafe {
        cmd.pre_exec(move || {
            let raw = fd.as_raw_fd();
            if raw == TARGET {
                // dup2 onto itself would keep FD_CLOEXEC: clear it instead.
                if libc::fcntl(raw, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(raw, TARGET) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Take ownership of an fd this process inherited by number (named on its command
/// line), after checking it is open.
pub fn inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} is a standard stream"),
        ));
    }
    // SAFETY: fcntl(F_GETFD) on an arbitrary number is harmless; it tells whether the
    // number is an open fd before we claim it.
    let probe = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(probe)
        .map_err(|e| io::Error::other(format!("inherited fd {fd}: {e}")))?;
    // SAFETY: the fd is open, and the command-line contract says it is ours alone; it
    // is claimed once, at startup.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
    debug_assert_eq!(owned.as_raw_fd(), fd);
    Ok(owned)
}

/// Make this process non-dumpable: no core dumps, and no ptrace or /proc/PID/mem by
/// processes of the same uid (the tenant's own code must not read the worker).
pub fn make_undumpable() -> io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    Ok(())
}
