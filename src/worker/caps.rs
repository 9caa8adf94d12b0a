//! What a tenant sees when its scripts meet the tenant's cgroup limits: a 503 with
//! Retry-After (the limit is shared by all the tenant's processes, so a retry may well
//! pass) and a line in the site's own error log that names the limit, instead of a 502
//! or 500 whose cause only the admin's log shows.
//!
//! A process killed by SIGKILL is reported as killed at `memory_max` only when the
//! tenant group's OOM-kill counter (a read-only fd from the master, see
//! `MasterToWorker::OomCounter`) rose while it ran: a script killed by anything else
//! (itself, a timeout, the admin) is not misreported.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::process::Child;

/// Seconds a client is asked to wait after a request failed at a limit.
pub const RETRY_AFTER: u32 = 5;

/// How long a script whose output ended is waited for, to learn how it ended.
const EXIT_WAIT: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct Caps {
    pub memory_max: Option<u64>,
    pub pids_max: Option<u64>,
    oom_counter: OnceLock<File>,
}

impl Caps {
    pub fn new(memory_max: Option<u64>, pids_max: Option<u64>) -> Self {
        Self {
            memory_max,
            pids_max,
            oom_counter: OnceLock::new(),
        }
    }

    /// The counter file, once the master sent it.
    pub fn set_oom_counter(&self, file: File) {
        let _ = self.oom_counter.set(file);
    }

    /// The tenant group's OOM kills so far; `None` without the counter. A kernel
    /// pseudo-file, not a tenant's: reading it never blocks.
    pub fn oom_kills(&self) -> Option<u64> {
        let file = self.oom_counter.get()?;
        let mut buf = [0u8; 512];
        let n = file.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// What the site log says of a process the kernel killed at `memory_max`.
    pub fn oom_message(&self) -> String {
        match self.memory_max {
            Some(bytes) => format!(
                "killed: memory limit {} reached (the tenant's memory_max: the kernel ended the process)",
                size(bytes)
            ),
            None => "killed: memory limit reached (the kernel ended the process)".to_string(),
        }
    }

    /// A process could not be started: `Some(message)` naming the limit when the
    /// cause is the tenant's process cap (fork's EAGAIN).
    pub fn spawn_limit(&self, e: &io::Error) -> Option<String> {
        // The pools keep the kind but not the errno when they add what failed.
        let again = e.raw_os_error() == Some(rustix::io::Errno::AGAIN.raw_os_error())
            || (e.raw_os_error().is_none() && e.kind() == io::ErrorKind::WouldBlock);
        if !again {
            return None;
        }
        Some(match self.pids_max {
            Some(n) => format!(
                "process limit reached (the tenant's pids_max {n}): cannot start another process now"
            ),
            None => "process limit reached (rlimit_nproc or the system's): cannot start another process now".to_string(),
        })
    }

    /// Whether `child` (its output has ended) was killed at `memory_max`: it died of
    /// SIGKILL and the group's OOM-kill counter rose since `before`.
    pub async fn killed_by_oom(&self, child: &mut Child, before: Option<u64>) -> bool {
        let Some(before) = before else {
            return false;
        };
        let status = match tokio::time::timeout(EXIT_WAIT, child.wait()).await {
            Ok(Ok(status)) => status,
            _ => return false,
        };
        self.oom_kill_of(status, before)
    }

    /// Whether a process that ended with `status` was killed at `memory_max`.
    pub fn oom_kill_of(&self, status: std::process::ExitStatus, before: u64) -> bool {
        status.signal() == Some(rustix::process::Signal::KILL.as_raw())
            && self.oom_kills().is_some_and(|now| now > before)
    }
}

/// Bytes as the config writes them: 128M, 1G, 512K or a plain number.
pub fn size(bytes: u64) -> String {
    const K: u64 = 1024;
    for (unit, name) in [(K * K * K, "G"), (K * K, "M"), (K, "K")] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{name}", bytes / unit);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_the_config() {
        assert_eq!(size(128 << 20), "128M");
        assert_eq!(size(1 << 30), "1G");
        assert_eq!(size(96 << 20), "96M");
        assert_eq!(size(1536), "1536");
        assert_eq!(size(1536 << 10), "1536K");
    }

    #[test]
    fn eagain_names_pids_max() {
        let caps = Caps::new(None, Some(40));
        let e = io::Error::from_raw_os_error(rustix::io::Errno::AGAIN.raw_os_error());
        assert!(caps.spawn_limit(&e).unwrap().contains("pids_max 40"));
        assert!(caps.spawn_limit(&io::Error::other("x")).is_none());
    }
}
