//! The "cage" (`isolation = "cage"`): private mount, IPC and UTS namespaces for one
//! tenant's worker and everything it starts.
//!
//! Inside: /tmp, /var/tmp and /dev/shm are the tenant's own (empty tmpfs, charged to
//! its memory cgroup); /home shows only the tenant's own paths; /proc is a new
//! instance with `hidepid=invisible`, so only the tenant's own processes exist there;
//! SysV IPC and POSIX message queues are its own. The rest of the system is the host's
//! (read-only for the tenant through Landlock and file modes).
//!
//! No pid namespace: the worker must stay the master's direct child (supervision,
//! signals, retirement), and a pid namespace entered by the worker's children alone
//! would make its first child the namespace's init. The per-cage /proc gives what a
//! pid namespace would be wanted for here: no other process is visible.
//!
//! Everything is computed before the fork ([`CagePlan::new`]); [`enter`] runs between
//! fork and exec, as root, before the uid change, with raw syscalls only.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::resolve::Resolved;

/// Kept paths are held as detached mount trees on the child's stack until attached.
const MAX_BINDS: usize = 64;

/// Shared directories the cage replaces with an empty tmpfs, its mode, and whether it
/// is scratch space the tenant may write (Landlock rules made before the fork name the
/// covered directory, so these get their rules again once mounted).
const HIDDEN: &[(&str, &str, bool)] = &[
    ("/tmp", "mode=1777", true),
    ("/var/tmp", "mode=1777", true),
    ("/dev/shm", "mode=1777", true),
    ("/home", "mode=0755", false),
];

pub struct CagePlan {
    tmpfs: Vec<(CString, CString, bool)>,
    /// Directories to make inside the new tmpfs mounts, parents first.
    mkdirs: Vec<CString>,
    /// Empty files to bind a kept file onto.
    mountpoint_files: Vec<CString>,
    /// Paths kept visible where they are: what was opened before the fork (never looked
    /// up by name again, see [`super::resolve`]) and where it goes back once covered.
    binds: Vec<(OwnedFd, CString)>,
}

impl std::fmt::Debug for CagePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CagePlan")
            .field("tmpfs", &self.tmpfs)
            .field("mkdirs", &self.mkdirs)
            .field("mountpoint_files", &self.mountpoint_files)
            .field(
                "binds",
                &self.binds.iter().map(|(_, t)| t).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn cstring(path: &Path) -> anyhow::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", path.display()))
}

impl CagePlan {
    /// A cage keeping `keep` (the tenant's home, site roots, key files, allowed paths,
    /// each opened already) visible where it really is.
    pub fn new(keep: Vec<Resolved>) -> anyhow::Result<Self> {
        let hidden: Vec<(PathBuf, &str, bool)> = HIDDEN
            .iter()
            .map(|&(p, mode, scratch)| (PathBuf::from(p), mode, scratch))
            .filter(|(p, _, _)| p.is_dir())
            .collect();
        let mut keep = keep;
        keep.sort_by(|x, y| x.real.cmp(&y.real));
        keep.dedup_by(|x, y| x.real == y.real);
        // A path inside another kept one comes along with it.
        let reals: Vec<PathBuf> = keep.iter().map(|k| k.real.clone()).collect();
        keep.retain(|k| {
            !reals
                .iter()
                .any(|other| *other != k.real && k.real.starts_with(other))
        });
        let mut mkdirs = BTreeSet::new();
        let mut mountpoint_files = Vec::new();
        let mut binds = Vec::new();
        for kept in keep {
            let path = kept.real;
            let Some((hidden_dir, _, _)) = hidden
                .iter()
                .find(|(h, _, _)| path.starts_with(h) && &path != h)
            else {
                continue; // visible anyway
            };
            let mut dir = path.parent();
            while let Some(d) = dir
                && d != hidden_dir
            {
                mkdirs.insert(d.to_path_buf());
                dir = d.parent();
            }
            if kept.is_dir {
                mkdirs.insert(path.clone());
            } else {
                mountpoint_files.push(cstring(&path)?);
            }
            binds.push((kept.fd, cstring(&path)?));
        }
        if binds.len() > MAX_BINDS {
            anyhow::bail!("the cage keeps at most {MAX_BINDS} paths visible");
        }
        Ok(Self {
            tmpfs: hidden
                .iter()
                .map(|(p, mode, scratch)| Ok((cstring(p)?, CString::new(*mode)?, *scratch)))
                .collect::<anyhow::Result<_>>()?,
            mkdirs: mkdirs
                .iter()
                .map(|d| cstring(d))
                .collect::<Result<_, _>>()?,
            mountpoint_files,
            binds,
        })
    }
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Build the cage around the calling process. Between fork and exec, as root: raw
/// syscalls on strings made before the fork, no allocation. `landlock`: the tenant's
/// ruleset and the rights it handles, to give the new scratch mounts their rules.
pub fn enter(plan: &CagePlan, landlock: Option<(libc::c_int, u64)>) -> io::Result<()> {
    let none = c"none";
    let mut kept = [-1 as libc::c_int; MAX_BINDS];
    // SAFETY: every pointer is a NUL-terminated string owned by `plan`, a literal or
    // `source` below, all outliving the calls; these syscalls read them and keep
    // nothing. The fds opened here are closed before returning.
    unsafe {
        // Copies of what the master opened, made in the host's namespace (a tree can
        // only be cloned from the caller's own) and attached below once the tmpfs
        // mounts cover the originals: the fds, never the names.
        for (slot, (fd, _)) in kept.iter_mut().zip(&plan.binds) {
            *slot = libc::syscall(
                libc::SYS_open_tree,
                fd.as_raw_fd(),
                c"".as_ptr(),
                OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH | AT_RECURSIVE,
            ) as libc::c_int;
            if *slot < 0 {
                let e = io::Error::last_os_error();
                close_all(&kept);
                return Err(e);
            }
        }
        if let Err(e) = check(libc::unshare(
            libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS,
        )) {
            close_all(&kept);
            return Err(e);
        }
        let result = (|| {
            // Nothing mounted here may propagate back to the host.
            check(libc::mount(
                none.as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for (target, options, scratch) in &plan.tmpfs {
                check(libc::mount(
                    c"tmpfs".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    options.as_ptr().cast(),
                ))?;
                if let (true, Some((ruleset, access))) = (*scratch, landlock) {
                    allow_beneath(ruleset, target, access)?;
                }
            }
            for dir in &plan.mkdirs {
                if libc::mkdir(dir.as_ptr(), 0o755) != 0
                    && *libc::__errno_location() != libc::EEXIST
                {
                    return Err(io::Error::last_os_error());
                }
            }
            for file in &plan.mountpoint_files {
                let fd = libc::open(
                    file.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                );
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(fd);
            }
            for (&tree, (_, target)) in kept.iter().zip(&plan.binds) {
                if libc::syscall(
                    libc::SYS_move_mount,
                    tree,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    target.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The clone joined the host mount's peer group: cut it off.
                check(libc::mount(
                    none.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
            }
            check(libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"hidepid=invisible".as_ptr().cast(),
            ))?;
            match landlock {
                // The new /proc covers the one the ruleset names: read and write files
                // (as on the host), nothing else.
                Some((ruleset, access)) => allow_beneath(ruleset, c"/proc", access & PROC_ACCESS),
                None => Ok(()),
            }
        })();
        close_all(&kept);
        result
    }
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const AT_EMPTY_PATH: libc::c_uint = libc::AT_EMPTY_PATH as libc::c_uint;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// Landlock's EXECUTE | WRITE_FILE | READ_FILE | READ_DIR (uapi bits 0..=3).
const PROC_ACCESS: u64 = 0b1111;

/// Add a Landlock rule for everything beneath `dir` (a path in this namespace).
fn allow_beneath(ruleset: libc::c_int, dir: &std::ffi::CStr, access: u64) -> io::Result<()> {
    // SAFETY: `dir` is NUL-terminated; the fd is closed before returning.
    unsafe {
        let fd = libc::open(dir.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let added = super::fence::add_path_rule(ruleset, fd, access);
        libc::close(fd);
        added
    }
}

fn close_all(fds: &[libc::c_int]) {
    for &fd in fds.iter().filter(|&&fd| fd >= 0) {
        // SAFETY: fds this module opened above and nothing else uses.
        unsafe { libc::close(fd) };
    }
}
