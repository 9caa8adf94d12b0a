//! The kernel filters around condo's unprivileged processes: a seccomp deny-list and
//! Landlock rules for a tenant's worker and everything it starts, a seccomp allow-list
//! and an empty Landlock view for the dispatcher.
//!
//! Filters are compiled before the fork (compiling allocates); the child only installs
//! them with raw syscalls.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::resolve::{Resolved, open_trusted};
use landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetError, Scope, path_beneath_rules,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The Landlock ABI whose filesystem rights condo asks for (Linux 6.10: up to ioctl on
/// devices). Newer kernels enforce these; older ones enforce what they know.
const LANDLOCK_ABI: ABI = ABI::V5;

/// Syscalls a tenant never needs on a shared host, each a known way out of a sandbox
/// or into the kernel's rarely-used corners: they fail with EPERM.
const TENANT_DENIED: &[(libc::c_long, &str)] = &[
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_process_vm_readv, "process_vm_readv"),
    (libc::SYS_process_vm_writev, "process_vm_writev"),
    (libc::SYS_kcmp, "kcmp"),
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_chroot, "chroot"),
    (libc::SYS_move_mount, "move_mount"),
    (libc::SYS_open_tree, "open_tree"),
    (libc::SYS_fsopen, "fsopen"),
    (libc::SYS_fsconfig, "fsconfig"),
    (libc::SYS_fsmount, "fsmount"),
    (libc::SYS_fspick, "fspick"),
    (libc::SYS_mount_setattr, "mount_setattr"),
    (libc::SYS_unshare, "unshare"),
    (libc::SYS_setns, "setns"),
    (libc::SYS_kexec_load, "kexec_load"),
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_delete_module, "delete_module"),
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_request_key, "request_key"),
    (libc::SYS_io_uring_setup, "io_uring_setup"),
    (libc::SYS_io_uring_enter, "io_uring_enter"),
    (libc::SYS_io_uring_register, "io_uring_register"),
    (libc::SYS_open_by_handle_at, "open_by_handle_at"),
    (libc::SYS_name_to_handle_at, "name_to_handle_at"),
    (libc::SYS_reboot, "reboot"),
    (libc::SYS_swapon, "swapon"),
    (libc::SYS_swapoff, "swapoff"),
    (libc::SYS_acct, "acct"),
    (libc::SYS_quotactl, "quotactl"),
    (libc::SYS_syslog, "syslog"),
    (libc::SYS_iopl, "iopl"),
    (libc::SYS_ioperm, "ioperm"),
    (libc::SYS_settimeofday, "settimeofday"),
    (libc::SYS_clock_settime, "clock_settime"),
    (libc::SYS_clock_adjtime, "clock_adjtime"),
    (libc::SYS_adjtimex, "adjtimex"),
    (libc::SYS_vhangup, "vhangup"),
    (libc::SYS_uselib, "uselib"),
    (libc::SYS_lookup_dcookie, "lookup_dcookie"),
    (libc::SYS_fanotify_init, "fanotify_init"),
];

/// clone flags that make a new namespace: a tenant makes none (a user namespace would
/// hand it capabilities over its own mounts, the usual first step of a kernel exploit).
const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWCGROUP as u64,
];

fn arch() -> TargetArch {
    if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else if cfg!(target_arch = "riscv64") {
        TargetArch::riscv64
    } else {
        TargetArch::x86_64
    }
}

/// The seccomp programs a tenant's worker installs last before exec, in order.
pub fn tenant_filters() -> anyhow::Result<Vec<BpfProgram>> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = TENANT_DENIED
        .iter()
        .map(|&(nr, _)| (nr, Vec::new()))
        .collect();
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?])
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    let deny: BpfProgram = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch(),
    )?
    .try_into()?;
    // clone3 passes its flags in memory seccomp cannot read: report it missing, and
    // glibc falls back to clone, whose flags the filter above sees.
    let clone3: BpfProgram = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch(),
    )?
    .try_into()?;
    Ok(vec![deny, clone3])
}

/// Install seccomp programs on the calling thread (no_new_privs must be set). Raw
/// syscalls only: safe between fork and exec.
pub fn install(filters: &[BpfProgram]) -> io::Result<()> {
    for filter in filters {
        seccompiler::apply_filter(filter).map_err(|_| io::Error::last_os_error())?;
    }
    Ok(())
}

/// The paths a tenant's processes need beyond their own.
pub struct TenantPaths<'a> {
    /// The tenant's home and every site root: read, write, execute.
    pub own: Vec<PathBuf>,
    /// Files the worker must read, e.g. the site's own TLS key.
    pub read_files: Vec<PathBuf>,
    pub allow_read: &'a [PathBuf],
    pub allow_write: &'a [PathBuf],
    /// The condo binary: the child execs it.
    pub exe: &'a Path,
    /// The tenant's uid: its own files may sit in directories it can change (see
    /// [`super::resolve`]). `None` when condo runs unprivileged: then only the
    /// running uid's and root's.
    pub uid: Option<u32>,
}

/// System paths every tenant may read and execute (libraries, interpreters, config).
/// Not /home, /srv, /var/www, /root or /mnt: other tenants' files live there.
const SYSTEM_READ: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
    "/var/lib",
    "/var/cache",
    "/sys",
    "/run",
];

/// Shared scratch places, writable by everyone already; in a cage each is the tenant's
/// own, elsewhere file modes keep tenants apart there.
const SCRATCH: &[&str] = &["/tmp", "/var/tmp", "/dev/shm", "/var/lib/php/sessions"];

/// Every path of a tenant's fence, opened once by [`open_trusted`]: the Landlock rules
/// and the cage's bind mounts are made from these fds, never from the names again.
pub struct OpenedPaths {
    pub system: Vec<Resolved>,
    pub allow_read: Vec<Resolved>,
    pub read_files: Vec<Resolved>,
    pub exe: Vec<Resolved>,
    pub dev: Vec<Resolved>,
    pub proc: Vec<Resolved>,
    pub scratch: Vec<Resolved>,
    pub own: Vec<Resolved>,
    pub allow_write: Vec<Resolved>,
}

impl OpenedPaths {
    /// Open every path; a path that does not exist is left out (as before: a site
    /// whose root is missing answers 404), one a tenant could have redirected is an
    /// error naming it.
    pub fn open(paths: &TenantPaths) -> anyhow::Result<Self> {
        let (read_files, own, allow_read, allow_write) = Self::open_tenants(paths)?;
        let uid = effective_uid(paths);
        Ok(Self {
            system: open_all(&mut SYSTEM_READ.iter().map(Path::new), uid)?,
            allow_read,
            read_files,
            exe: open_all(&mut std::iter::once(paths.exe), uid)?,
            dev: open_all(&mut std::iter::once(Path::new("/dev")), uid)?,
            proc: open_all(&mut std::iter::once(Path::new("/proc")), uid)?,
            scratch: open_all(&mut SCRATCH.iter().map(Path::new), uid)?,
            own,
            allow_write,
        })
    }

    /// Only what differs between tenants (their own paths, key files, `allow_*`): what
    /// `condo check` tests per tenant — the system paths are the same for all of them.
    pub fn check_tenants(paths: &TenantPaths) -> anyhow::Result<()> {
        Self::open_tenants(paths).map(drop)
    }

    #[allow(clippy::type_complexity)]
    fn open_tenants(
        paths: &TenantPaths,
    ) -> anyhow::Result<(Vec<Resolved>, Vec<Resolved>, Vec<Resolved>, Vec<Resolved>)> {
        let uid = effective_uid(paths);
        let open = |list: &mut dyn Iterator<Item = &Path>| open_all(list, uid);
        // A key or certificate that is a directory, a FIFO or a device would fence in
        // more than a file, or hang whoever reads it: it gets no rule. The worker then
        // fails to read it (a regular file only, see `tenant_file`) and that site's HTTPS
        // fails, while its HTTP and the tenant's other sites keep serving.
        let mut read_files = open(&mut paths.read_files.iter().map(PathBuf::as_path))?;
        read_files.retain(|r| {
            if !r.is_file {
                tracing::warn!(
                    path = %r.real.display(),
                    "a site's key or certificate is not a regular file: left out of the tenant's fence"
                );
            }
            r.is_file
        });
        let own = open(&mut paths.own.iter().map(PathBuf::as_path))?;
        // Read, write and execute beneath it: only ever the tenant's own (or a
        // directory root made for it), never the whole tree.
        for r in &own {
            if r.real == Path::new("/") || (r.uid != 0 && Some(r.uid) != uid) {
                anyhow::bail!(
                    "refusing {} as the tenant's own (a home or a site root): it {}",
                    r.real.display(),
                    if r.real == Path::new("/") {
                        "is the root of the filesystem".to_string()
                    } else {
                        format!("belongs to uid {}, not the tenant", r.uid)
                    }
                );
            }
        }
        let allow_read = open(&mut paths.allow_read.iter().map(PathBuf::as_path))?;
        let allow_write = open(&mut paths.allow_write.iter().map(PathBuf::as_path))?;
        Ok((read_files, own, allow_read, allow_write))
    }
}

/// The uid whose files count as the tenant's: the tenant's, or when condo runs
/// unprivileged the running uid (root's are trusted anyway).
fn effective_uid(paths: &TenantPaths) -> Option<u32> {
    paths.uid.or_else(|| {
        let me = rustix::process::geteuid();
        (!me.is_root()).then(|| me.as_raw())
    })
}

fn open_all(
    list: &mut dyn Iterator<Item = &Path>,
    uid: Option<u32>,
) -> anyhow::Result<Vec<Resolved>> {
    let mut found = Vec::new();
    for p in list {
        if let Some(r) = open_trusted(p, uid)? {
            found.push(r);
        }
    }
    Ok(found)
}

/// Rules granting `access` on each opened path (file rights only on a file, as the
/// kernel requires).
fn rules(
    list: &[Resolved],
    access: BitFlags<AccessFs>,
) -> impl Iterator<Item = Result<PathBeneath<BorrowedFd<'_>>, RulesetError>> {
    let file_access = AccessFs::from_file(LANDLOCK_ABI);
    list.iter().map(move |r| {
        let access = if r.is_dir {
            access
        } else {
            access & file_access
        };
        Ok(PathBeneath::new(r.fd.as_fd(), access))
    })
}

/// A Landlock ruleset for a tenant: `None` when the kernel has no Landlock (the
/// caller logs that). Applied in the child with [`restrict`].
pub fn tenant_ruleset(paths: &OpenedPaths) -> anyhow::Result<Option<OwnedFd>> {
    let all = AccessFs::from_all(LANDLOCK_ABI);
    let read = AccessFs::from_read(LANDLOCK_ABI);
    let created = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)?
        .create()?
        .add_rules(rules(&paths.system, read))?
        .add_rules(rules(&paths.allow_read, read))?
        .add_rules(rules(&paths.read_files, AccessFs::ReadFile.into()))?
        .add_rules(rules(&paths.exe, AccessFs::ReadFile | AccessFs::Execute))?
        // /dev/null, /dev/urandom, a terminal's ioctls; device modes do the rest.
        .add_rules(rules(
            &paths.dev,
            read | AccessFs::WriteFile | AccessFs::IoctlDev,
        ))?
        .add_rules(rules(&paths.proc, read | AccessFs::WriteFile))?
        .add_rules(rules(&paths.scratch, all))?
        .add_rules(rules(&paths.own, all))?
        .add_rules(rules(&paths.allow_write, all))?;
    Ok(created.into())
}

/// The dispatcher reads nothing from the filesystem once it runs but the metrics file
/// the master writes into `run_dir`; it creates, changes and executes nothing.
pub fn restrict_dispatcher(metrics_dir: &Path) -> anyhow::Result<bool> {
    let created = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)?
        .create()?
        .add_rules(path_beneath_rules([metrics_dir], AccessFs::ReadFile))?;
    let status = created.restrict_self().context("landlock_restrict_self")?;
    Ok(status.ruleset != landlock::RulesetStatus::NotEnforced)
}

/// The filesystem rights a tenant ruleset handles on this kernel, as raw bits: what
/// [`LANDLOCK_ABI`] asks for, cut down to what the running kernel knows (adding a
/// rule with a right the ruleset does not handle fails). Bits from the kernel's
/// uapi/linux/landlock.h: ABI 1 has rights 0..=12, ABI 2 adds REFER (13), ABI 3
/// TRUNCATE (14), ABI 5 IOCTL_DEV (15).
pub fn handled_fs_access() -> u64 {
    // SAFETY: the version query passes no pointer.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    let rights = match version {
        v if v <= 0 => 0,
        1 => 13,
        2 => 14,
        3 | 4 => 15,
        _ => 16,
    };
    (1u64 << rights) - 1
}

/// Add "everything beneath `dir`" with `access` to a ruleset that is not enforced yet
/// (the cage's fresh scratch mounts). Raw syscall only: safe between fork and exec.
pub fn add_path_rule(ruleset: RawFd, dir: RawFd, access: u64) -> io::Result<()> {
    /// struct landlock_path_beneath_attr, packed as in the kernel's uapi header.
    #[repr(C, packed)]
    struct PathBeneath {
        allowed_access: u64,
        parent_fd: i32,
    }
    let attr = PathBeneath {
        allowed_access: access,
        parent_fd: dir,
    };
    // SAFETY: `attr` lives across the call; the kernel copies it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset,
            1u32, // LANDLOCK_RULE_PATH_BENEATH
            &attr as *const PathBeneath,
            0u32,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Enter a Landlock domain made before the fork. Raw syscall only.
pub fn restrict(ruleset: RawFd) -> io::Result<()> {
    // SAFETY: landlock_restrict_self takes an fd and flags and touches no memory of ours.
    let r = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Syscalls the dispatcher makes (strace of a serving dispatcher: HTTP/1.1, h2c,
/// admin, reload; the test suite covers TLS, h2, PROXY and hand-over with this list in
/// force), plus what glibc and tokio may call on rarer paths. Anything else fails
/// with EPERM: a compromised dispatcher cannot exec, ptrace, mount, make namespaces or
/// use the kernel's rarer interfaces; Landlock keeps `openat` to the metrics file.
const DISPATCHER_ALLOWED: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_lseek,
    libc::SYS_openat,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_tgkill,
    libc::SYS_prctl,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_shutdown,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_listen,
    libc::SYS_sendfile,
    libc::SYS_splice,
];

/// The dispatcher's seccomp allow-list. Installed on the main thread before the
/// runtime starts its threads, which inherit it.
pub fn restrict_dispatcher_syscalls() -> anyhow::Result<()> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = DISPATCHER_ALLOWED
        .iter()
        .map(|&nr| (nr, Vec::new()))
        .collect();
    let program: BpfProgram = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch(),
    )?
    .try_into()?;
    seccompiler::apply_filter(&program).context("installing the seccomp filter")?;
    Ok(())
}

/// Describe an fd-backed ruleset for the debug output of a plan.
pub fn describe(ruleset: &Option<OwnedFd>) -> String {
    match ruleset {
        Some(fd) => format!("landlock ruleset fd {}", fd.as_raw_fd()),
        None => "no landlock".to_string(),
    }
}
