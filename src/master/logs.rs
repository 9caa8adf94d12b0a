//! Log files: the server's error log (the master's own lines and its children's) and
//! one access log per site, which the master opens and hands to the tenant's worker.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::ipc::LogKind;

pub struct LogFiles {
    dir: PathBuf,
    privileged: bool,
}

fn open_append(path: &Path, mode: u32) -> std::io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(mode)
        // A tenant must not be able to point a log path somewhere else with a symlink.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

impl LogFiles {
    pub fn prepare(dir: &Path, privileged: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating log_dir {}", dir.display()))?;
        if privileged {
            // Tenants may read their own logs by name, so the directory is searchable;
            // listing and creating files in it stays root's.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                .with_context(|| format!("setting the mode of {}", dir.display()))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            privileged,
        })
    }

    pub fn error_log(&self) -> anyhow::Result<File> {
        let path = self.dir.join("error.log");
        open_append(&path, 0o640).with_context(|| format!("opening {}", path.display()))
    }

    /// Open `<log_dir>/<site>.<kind>.log` for appending: owner root, group the
    /// tenant's, mode 0640, whatever the file looked like before.
    pub fn open_site_log(
        &self,
        site: &str,
        kind: LogKind,
        tenant_gid: Option<u32>,
    ) -> anyhow::Result<File> {
        let path = self.dir.join(format!("{site}.{}", kind.file_suffix()));
        let file =
            open_append(&path, 0o640).with_context(|| format!("opening {}", path.display()))?;
        if self.privileged {
            let gid = tenant_gid.map(rustix::process::Gid::from_raw);
            rustix::fs::fchown(&file, Some(rustix::process::Uid::ROOT), gid)
                .with_context(|| format!("chown {}", path.display()))?;
            rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(0o640))
                .with_context(|| format!("chmod {}", path.display()))?;
        }
        Ok(file)
    }
}
