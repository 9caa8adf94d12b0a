//! The tenant's FastCGI processes for one route, PHP-FPM style but inside the
//! tenant's worker: started on demand up to `processes_max`, one request at a time
//! each, reused while idle, replaced after `max_requests` or when they die, stopped
//! after `idle_timeout` without work.
//!
//! Each process gets its own listening unix socket on fd 0 (the FastCGI convention
//! php-cgi follows), in a fresh directory of mode 0700: only this tenant can connect.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::FastCgi;
use crate::worker::SiteState;
use crate::worker::cgi::copy_stderr;

pub struct Pool {
    argv: Vec<String>,
    config: FastCgi,
    /// One permit per process that may exist: held by each request being served.
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Process>>,
    reaper: std::sync::Once,
}

/// A running app process. Dropping it kills its process group and removes its socket
/// directory: a process is either idle in the pool, serving a request, or gone.
pub struct Process {
    child: tokio::process::Child,
    dir: PathBuf,
    socket: PathBuf,
    served: u32,
    idle_since: Instant,
}

impl Process {
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// To learn how the process ended.
    pub fn child_mut(&mut self) -> &mut tokio::process::Child {
        &mut self.child
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The app may have started helpers (its own group, from process_group(0)).
        if let Some(pid) = self
            .child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        // kill_on_drop kills and tokio reaps the child in the background.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A process lent to one request, with the permit that counts it.
pub struct Lease {
    pub process: Process,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    /// The request completed cleanly: the process may serve again (unless it reached
    /// `max_requests`, where php-cgi exits by itself too).
    pub fn release(mut self) {
        self.process.served += 1;
        if self.process.served >= self.pool.config.max_requests || !self.process.alive() {
            return;
        }
        self.process.idle_since = Instant::now();
        let Lease { process, pool, .. } = self;
        pool.idle.lock().expect("pool lock").push(process);
    }
}

impl Pool {
    pub fn new(argv: Vec<String>, config: FastCgi) -> Arc<Self> {
        Arc::new(Self {
            argv,
            permits: Arc::new(Semaphore::new(config.processes_max)),
            config,
            idle: Mutex::new(Vec::new()),
            reaper: std::sync::Once::new(),
        })
    }

    /// A process for one request: an idle live one, else a new one. Waits while
    /// `processes_max` requests are being served.
    pub async fn acquire(self: &Arc<Self>, site: &SiteState) -> io::Result<Lease> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        let reused = {
            let mut idle = self.idle.lock().expect("pool lock");
            let mut found = None;
            // Most recently used first: the others then age out under low load.
            while let Some(mut p) = idle.pop() {
                if p.alive() {
                    found = Some(p);
                    break;
                }
                // Died while idle (crash, kill, its own max requests): dropped here,
                // replaced below.
            }
            found
        };
        let process = match reused {
            Some(p) => p,
            None => self.spawn(site)?,
        };
        Ok(Lease {
            process,
            pool: self.clone(),
            _permit: permit,
        })
    }

    /// Start `processes_min` processes ahead of any request (the tenant's
    /// `workers_min`), so the first requests find them warm.
    pub fn warm(self: &Arc<Self>, site: &SiteState) {
        for _ in 0..self.config.processes_min {
            match self.spawn(site) {
                Ok(process) => self.idle.lock().expect("pool lock").push(process),
                Err(e) => {
                    tracing::warn!(site = site.config.name, "starting a warm process: {e}");
                    return;
                }
            }
        }
    }

    /// A fresh process instead of one that failed (its lease is dropped, so killed).
    pub fn replace(self: &Arc<Self>, lease: Lease, site: &SiteState) -> io::Result<Lease> {
        let Lease {
            process,
            pool,
            _permit,
        } = lease;
        drop(process);
        Ok(Lease {
            process: self.spawn(site)?,
            pool,
            _permit,
        })
    }

    fn spawn(self: &Arc<Self>, site: &SiteState) -> io::Result<Process> {
        let dir = private_dir("fcgi")?;
        let socket = dir.join("fcgi.sock");
        let listener = match std::os::unix::net::UnixListener::bind(&socket) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut command = tokio::process::Command::new(&self.argv[0]);
        command.args(&self.argv[1..]).env_clear();
        let path = crate::worker::site_env(&mut command, &site.config);
        command
            // Set in the command's environment, PATH is also where `argv[0]` is found.
            .env("PATH", &path)
            // condo is the process manager: php-cgi must not fork children of its own.
            .env("PHP_FCGI_CHILDREN", "0")
            .env(
                "PHP_FCGI_MAX_REQUESTS",
                self.config.max_requests.to_string(),
            )
            .current_dir(self.config.workdir.as_ref().unwrap_or(&site.config.root))
            .stdin(Stdio::from(OwnedFd::from(listener)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        crate::sandbox::die_with_parent(&mut command);
        crate::sandbox::site_child(&mut command, &site.config);
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot start {}: {e}", self.argv[0]),
                ));
            }
        };
        if let Some(stderr) = child.stderr.take() {
            copy_stderr(site, self.argv[0].clone(), stderr);
        }
        self.start_reaper();
        Ok(Process {
            child,
            dir,
            socket,
            served: 0,
            idle_since: Instant::now(),
        })
    }

    /// Scale to zero: stop processes idle for longer than `idle_timeout`.
    fn start_reaper(self: &Arc<Self>) {
        let Some(limit) = self.config.idle_timeout else {
            return;
        };
        self.reaper.call_once(|| {
            let pool: Weak<Pool> = Arc::downgrade(self);
            let tick = (limit / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(tick).await;
                    let Some(pool) = pool.upgrade() else { return };
                    let expired: Vec<Process> = {
                        let mut idle = pool.idle.lock().expect("pool lock");
                        // Least recently used first; `processes_min` of them stay warm.
                        let spare = idle.len().saturating_sub(pool.config.processes_min);
                        let old = idle
                            .iter()
                            .take(spare)
                            .take_while(|p| p.idle_since.elapsed() >= limit)
                            .count();
                        idle.drain(..old).collect()
                    };
                    drop(expired);
                }
            });
        });
    }
}

/// A new directory only this tenant can enter, for one process's socket (`kind`:
/// "fcgi" or "app"). Created with mkdir, so a name someone else planted in the shared
/// temp dir is never used.
pub(crate) fn private_dir(kind: &str) -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static SWEPT: std::sync::Once = std::sync::Once::new();
    let base = std::env::temp_dir();
    let uid = rustix::process::geteuid().as_raw();
    let pid = std::process::id();
    SWEPT.call_once(|| {
        for kind in ["fcgi", "app"] {
            remove_stale_dirs(&base, uid, kind);
        }
    });
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("condo-{kind}-{uid}-{pid}-{n}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1_000_000 => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A worker that was killed (condo stopped with TERM) leaves its socket directories
/// behind; the next worker of the same tenant removes those whose worker is gone.
fn remove_stale_dirs(base: &Path, uid: u32, kind: &str) {
    let prefix = format!("condo-{kind}-{uid}-");
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(Ok(owner)) = rest.split('-').next().map(str::parse::<u32>) else {
            continue;
        };
        let owned_by_us = entry
            .metadata()
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == uid && m.is_dir());
        if owned_by_us && !process_runs(owner) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether `pid` is a running process: a zombie (exited, its parent has not reaped it
/// yet, as right after the master was killed) is not.
fn process_runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses and may hold
        // spaces or parentheses itself.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}
