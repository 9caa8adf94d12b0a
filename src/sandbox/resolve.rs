//! Opening a path the master (root) must act on when a tenant may have changed part of
//! it: a site root, a home, a key file, a path of `allow_read`. Root never follows a
//! link a tenant could have made or swapped.
//!
//! The walk goes one component at a time from `/` with `O_PATH | O_NOFOLLOW`, so every
//! step is an fd of its own and nothing is resolved twice by name. The rule:
//!
//! - a directory is *trusted* when root owns it and neither its group nor others may
//!   write it: only root chose what is in it;
//! - a symbolic link is followed only when root owns it and it sits in a trusted
//!   directory (`/lib -> usr/lib`, `/etc/alternatives/php`); any other link is refused,
//!   wherever it is and wherever it points;
//! - `..` is taken only out of a trusted directory (a tenant could move its own
//!   directory elsewhere between two steps);
//! - what sits in an untrusted directory must belong to the tenant, to root, or to the
//!   owner of that directory (it is refused if it belongs to anyone else: another
//!   tenant's directory moved or hard-linked into the tenant's own).
//!
//! The caller builds Landlock rules and bind mounts from the fd it gets, never from the
//! name again.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// As the kernel's own limit on links followed in one lookup.
const MAX_LINKS: usize = 40;
/// Components walked in all (links included), so a walk always ends.
const MAX_STEPS: usize = 4096;

/// A path opened by [`open_trusted`]: an `O_PATH` fd of what the walk reached, and where
/// it really is (every link resolved).
#[derive(Debug)]
pub struct Resolved {
    pub fd: OwnedFd,
    pub real: PathBuf,
    pub is_dir: bool,
    pub is_file: bool,
    pub uid: u32,
}

/// Why a path was refused: the path as named, and what was found on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refusing {}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for Refused {}

struct Step {
    fd: OwnedFd,
    uid: u32,
    mode: u32,
}

impl Step {
    fn of(fd: OwnedFd) -> Result<Self, Errno> {
        let st = rustix::fs::fstat(&fd)?;
        Ok(Self {
            fd,
            uid: st.st_uid,
            mode: st.st_mode,
        })
    }

    fn trusted(&self) -> bool {
        self.uid == 0 && self.mode & 0o022 == 0
    }

    fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.mode)
    }
}

fn open_step(dir: impl AsFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    // One component, no link followed, no magic link, and never a FIFO's open.
    rustix::fs::openat2(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS | ResolveFlags::BENEATH,
    )
}

fn open_root() -> Result<OwnedFd, Errno> {
    rustix::fs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Open `path` for an `O_PATH` use by root, following the rule in the module's doc;
/// `tenant` is the uid whose own files may sit in directories others than root can
/// change (`None`: only root's and the directory owner's). `Ok(None)`: the path does
/// not exist (a component is missing, or is not a directory where one must be).
pub fn open_trusted(path: &Path, tenant: Option<u32>) -> Result<Option<Resolved>, Refused> {
    let refuse = |reason: String| Refused {
        path: path.to_path_buf(),
        reason,
    };
    let os = |e: Errno, what: &Path| refuse(format!("opening {}: {e}", what.display()));
    if !path.is_absolute() {
        return Err(refuse("not an absolute path".into()));
    }
    let mut pending: VecDeque<OsString> = VecDeque::new();
    push_components(&mut pending, path);
    let mut dirs: Vec<Step> = vec![
        Step::of(open_root().map_err(|e| os(e, Path::new("/")))?)
            .map_err(|e| os(e, Path::new("/")))?,
    ];
    let mut real = PathBuf::from("/");
    let mut links = 0;
    let mut steps = 0;
    // The last step, once it is not a directory: only allowed at the end.
    let mut leaf: Option<Step> = None;
    while let Some(name) = pending.pop_front() {
        steps += 1;
        if steps > MAX_STEPS {
            return Err(refuse("too many components".into()));
        }
        if leaf.is_some() {
            // A file with more components after it: as the kernel says, not there.
            return Ok(None);
        }
        let dir = dirs.last().expect("the root is never popped");
        if name == ".." {
            if !dir.trusted() {
                return Err(refuse(format!(
                    "`..` out of {}, a directory someone other than root can change",
                    real.display()
                )));
            }
            if dirs.len() > 1 {
                dirs.pop();
                real.pop();
            }
            continue;
        }
        let fd = match open_step(&dir.fd, &name) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(None),
            Err(e) => return Err(os(e, &real.join(&name))),
        };
        let here = real.join(&name);
        let step = Step::of(fd).map_err(|e| os(e, &here))?;
        if step.file_type() == FileType::Symlink {
            if !(dir.trusted() && step.uid == 0) {
                return Err(refuse(format!(
                    "{} is a symbolic link {}; root follows no link a tenant could have made",
                    here.display(),
                    if step.uid == 0 {
                        format!(
                            "in {}, a directory someone other than root can change",
                            real.display()
                        )
                    } else {
                        format!("owned by uid {}", step.uid)
                    }
                )));
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(refuse("too many levels of symbolic links".into()));
            }
            let target = rustix::fs::readlinkat(&step.fd, "", Vec::new())
                .map_err(|e| refuse(format!("reading the link {}: {e}", here.display())))?;
            let target = Path::new(OsStr::from_bytes(target.as_bytes()));
            if target.is_absolute() {
                dirs.truncate(1);
                real = PathBuf::from("/");
            }
            let mut front = VecDeque::new();
            push_components(&mut front, target);
            while let Some(c) = front.pop_back() {
                pending.push_front(c);
            }
            continue;
        }
        if !dir.trusted() && step.uid != 0 && Some(step.uid) != tenant && step.uid != dir.uid {
            return Err(refuse(format!(
                "{} belongs to uid {}, in {}, a directory someone other than root can change",
                here.display(),
                step.uid,
                real.display()
            )));
        }
        real = here;
        if step.file_type() == FileType::Directory {
            dirs.push(step);
        } else {
            leaf = Some(step);
        }
    }
    let (step, is_dir) = match leaf {
        Some(step) => (step, false),
        None if dirs.len() > 1 => (dirs.pop().expect("checked"), true),
        None => {
            let root = dirs.pop().expect("the root");
            (root, true)
        }
    };
    Ok(Some(Resolved {
        is_file: step.file_type() == FileType::RegularFile,
        uid: step.uid,
        fd: step.fd,
        real,
        is_dir,
    }))
}

/// Read a whole regular file that [`open_trusted`] opens, at most `limit` bytes: what
/// root reads of a file that sits where someone other than root could change it.
pub fn read_trusted(path: &Path, tenant: Option<u32>, limit: u64) -> anyhow::Result<Vec<u8>> {
    let r = open_trusted(path, tenant)?
        .ok_or_else(|| anyhow::anyhow!("{}: no such file", path.display()))?;
    // Checked before the open, too: opening a device node can itself do things.
    if !r.is_file {
        anyhow::bail!("{}: not a regular file", path.display());
    }
    // The O_PATH fd reopened for reading through its /proc link: the same inode, no
    // name looked up again; non-blocking, though a regular file never blocks.
    let file = rustix::fs::open(
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&r.fd)).as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    Ok(crate::tenant_file::read_opened(file, path, limit)?)
}

/// The names to walk in `path`; `.` is dropped, `..` kept (checked when walked).
fn push_components(out: &mut VecDeque<OsString>, path: &Path) {
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push_back(n.to_os_string()),
            Component::ParentDir => out.push_back(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn root() -> bool {
        rustix::process::geteuid().is_root()
    }

    #[test]
    fn system_links_owned_by_root_are_followed() {
        // /proc/self is root's link in root's /proc.
        let r = open_trusted(Path::new("/proc/self"), None)
            .unwrap()
            .unwrap();
        assert!(r.is_dir);
        assert_eq!(
            r.real,
            PathBuf::from(format!("/proc/{}", std::process::id()))
        );
        let r = open_trusted(Path::new("/"), None).unwrap().unwrap();
        assert!(r.is_dir);
        assert_eq!(r.real, PathBuf::from("/"));
        assert!(
            open_trusted(Path::new("/no/such/path"), None)
                .unwrap()
                .is_none()
        );
        assert!(open_trusted(Path::new("relative"), None).is_err());
    }

    #[test]
    fn links_in_directories_others_can_change_are_refused() {
        if !root() {
            eprintln!("SKIPPED: needs root to own the scratch tree");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A root-owned link in a root-owned 0755 directory: followed.
        std::fs::create_dir(base.join("real")).unwrap();
        symlink("real", base.join("ok")).unwrap();
        let r = open_trusted(&base.join("ok"), Some(4242)).unwrap().unwrap();
        assert_eq!(r.real, base.join("real"));
        // A tenant's directory: a link in it is refused, even one root made.
        let tenant = base.join("tenant");
        std::fs::create_dir(&tenant).unwrap();
        std::os::unix::fs::chown(&tenant, Some(4242), Some(4242)).unwrap();
        symlink("/", tenant.join("www")).unwrap();
        let e = open_trusted(&tenant.join("www"), Some(4242)).unwrap_err();
        assert!(e.reason.contains("symbolic link"), "{e}");
        let e = open_trusted(&tenant.join("www/etc"), Some(4242)).unwrap_err();
        assert!(e.reason.contains("symbolic link"), "{e}");
        // A dangling one too: refused, not "missing".
        symlink("/nowhere", tenant.join("dangling")).unwrap();
        assert!(open_trusted(&tenant.join("dangling"), Some(4242)).is_err());
        // A group-writable root directory is not trusted either.
        let shared = base.join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o775)).unwrap();
        symlink("/", shared.join("l")).unwrap();
        assert!(open_trusted(&shared.join("l"), Some(4242)).is_err());
        // Someone else's directory inside the tenant's: refused.
        std::fs::create_dir(tenant.join("other")).unwrap();
        std::os::unix::fs::chown(tenant.join("other"), Some(4343), Some(4343)).unwrap();
        let e = open_trusted(&tenant.join("other"), Some(4242)).unwrap_err();
        assert!(e.reason.contains("belongs to uid 4343"), "{e}");
        // The tenant's own directory: fine, and `..` out of it is not.
        std::fs::create_dir(tenant.join("own")).unwrap();
        std::os::unix::fs::chown(tenant.join("own"), Some(4242), Some(4242)).unwrap();
        let r = open_trusted(&tenant.join("own"), Some(4242))
            .unwrap()
            .unwrap();
        assert!(r.is_dir && r.uid == 4242);
        assert!(open_trusted(&tenant.join("own/../other"), Some(4242)).is_err());
        // `..` out of root's own directory is fine.
        let r = open_trusted(&base.join("real/../real"), None)
            .unwrap()
            .unwrap();
        assert_eq!(r.real, base.join("real"));
    }
}
