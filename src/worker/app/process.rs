//! The one process of an app route: started by the first request, restarted by the
//! next request after it died (with a growing delay while it keeps dying), stopped
//! after `idle_timeout` without requests, killed with its process group when the
//! worker drops it or dies.
//!
//! condo binds the app's listening unix socket itself, in a fresh directory of mode
//! 0700 owned by the tenant, and hands it over the systemd way (fd 3, `LISTEN_FDS=1`).
//! So the app needs no port: no TCP port can be squatted by another tenant, and no
//! other tenant can connect to the socket or plant one in its place.

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::config;
use crate::worker::cgi::copy_stderr;
use crate::worker::fastcgi::pool::private_dir;
use crate::worker::{LogSlot, SiteState};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// `LISTEN_PID` must be the app's own pid, which is known only after the fork: a shell
/// sets it to its `$$` and then `exec`s the app, which keeps that pid.
const LAUNCHER: &str = "LISTEN_PID=$$; export LISTEN_PID; exec \"$@\"";

pub struct App {
    config: config::App,
    state: Mutex<State>,
    reaper: std::sync::Once,
}

#[derive(Default)]
struct State {
    running: Option<Running>,
    /// Deaths since the app last answered a request: the first restart is immediate,
    /// later ones wait [`backoff`].
    failures: u32,
    /// No start before this (a crash loop must not spin).
    retry_at: Option<Instant>,
    /// Requests using the app now, and when the last one ended (for `idle_timeout`).
    active: usize,
    last_used: Option<Instant>,
}

struct Running {
    pid: u32,
    socket: PathBuf,
    dir: PathBuf,
    exited: Arc<AtomicBool>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // The whole group: the app may have started workers of its own.
        if !self.exited.load(Ordering::Acquire)
            && let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32)
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A request's use of the app: counts as activity until dropped.
pub struct Use {
    app: Arc<App>,
    pub socket: PathBuf,
}

impl Drop for Use {
    fn drop(&mut self) {
        let mut state = self.app.state.lock().expect("app lock");
        state.active -= 1;
        state.last_used = Some(Instant::now());
    }
}

impl Use {
    /// The app answered: it is healthy, the next death restarts it at once again.
    pub fn answered(&self) {
        self.app.state.lock().expect("app lock").failures = 0;
    }
}

/// Why no app could be had: the status for the client and the line for the error log.
pub struct Unavailable {
    pub status: u16,
    pub reason: String,
}

fn backoff(failures: u32) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    FIRST_BACKOFF
        .saturating_mul(1 << (failures - 2).min(16))
        .min(MAX_BACKOFF)
}

impl App {
    pub fn new(config: config::App) -> Arc<Self> {
        Arc::new(Self {
            config,
            state: Mutex::new(State::default()),
            reaper: std::sync::Once::new(),
        })
    }

    /// The app's socket for one request, starting the app if it is not running.
    pub fn acquire(
        self: &Arc<Self>,
        site: &SiteState,
        caps: &crate::worker::caps::Caps,
    ) -> Result<Use, Unavailable> {
        let mut state = self.state.lock().expect("app lock");
        let now = Instant::now();
        if state
            .running
            .as_ref()
            .is_some_and(|r| r.exited.load(Ordering::Acquire))
        {
            state.running = None;
            state.failures += 1;
            state.retry_at = Some(now + backoff(state.failures));
        }
        if state.running.is_none() {
            if let Some(at) = state.retry_at
                && at > now
            {
                return Err(Unavailable {
                    status: 503,
                    reason: format!(
                        "the app keeps exiting; next start in {:.1}s",
                        (at - now).as_secs_f64()
                    ),
                });
            }
            match self.spawn(site) {
                Ok(running) => {
                    state.retry_at = None;
                    state.running = Some(running);
                }
                Err(e) => {
                    state.failures += 1;
                    state.retry_at = Some(now + backoff(state.failures).max(FIRST_BACKOFF));
                    // At the tenant's process limit: a 503 that names it.
                    return Err(match caps.spawn_limit(&e) {
                        Some(limit) => Unavailable {
                            status: 503,
                            reason: format!("cannot start the app: {limit}"),
                        },
                        None => Unavailable {
                            status: 502,
                            reason: format!("cannot start the app: {e}"),
                        },
                    });
                }
            }
        }
        let socket = state.running.as_ref().expect("running").socket.clone();
        state.active += 1;
        drop(state);
        self.start_reaper();
        Ok(Use {
            app: self.clone(),
            socket,
        })
    }

    /// Pid of the running app, if any (for the log).
    pub fn pid(&self) -> Option<u32> {
        self.state
            .lock()
            .expect("app lock")
            .running
            .as_ref()
            .map(|r| r.pid)
    }

    fn spawn(&self, site: &SiteState) -> io::Result<Running> {
        let argv = &self.config.command;
        let dir = private_dir("app")?;
        let socket = dir.join("http.sock");
        let listener = match std::os::unix::net::UnixListener::bind(&socket) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let logged = site.error_log.get().is_some();
        let output = || {
            if logged {
                Stdio::piped()
            } else {
                Stdio::null()
            }
        };
        let mut command = tokio::process::Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(LAUNCHER)
            .arg("condo-app")
            .args(argv)
            .env_clear();
        let path = crate::worker::site_env(&mut command, &site.config);
        command
            .env("PATH", &path)
            .env("LISTEN_FDS", "1")
            .env("LISTEN_FDNAMES", "http")
            // For information (logs, tools): the app is meant to use fd 3.
            .env("CONDO_SOCKET", &socket)
            .current_dir(self.config.workdir.as_ref().unwrap_or(&site.config.root))
            .stdin(Stdio::null())
            // Without a log to copy them to, a closed pipe would make the app's
            // prints fail: then they go nowhere instead.
            .stdout(output())
            .stderr(output())
            .process_group(0)
            .kill_on_drop(false);
        crate::sandbox::die_with_parent(&mut command);
        crate::sandbox::site_child(&mut command, &site.config);
        crate::sandbox::pass_listen_fd(&mut command, OwnedFd::from(listener));
        let spawned = command.spawn();
        // Closes the parent's copy of the listener: only the app holds it now.
        drop(command);
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot start {}: {e}", argv[0]),
                ));
            }
        };
        let pid = child.id().unwrap_or(0);
        let label = format!("app {}[{pid}]", argv[0]);
        if let Some(out) = child.stdout.take() {
            copy_stderr(site, label.clone(), out);
        }
        if let Some(err) = child.stderr.take() {
            copy_stderr(site, label.clone(), err);
        }
        let exited = Arc::new(AtomicBool::new(false));
        let flag = exited.clone();
        let log_slot = site.error_log.clone();
        let site_name = site.config.name.clone();
        log(site, &format!("started {label} on {}", socket.display()));
        tokio::spawn(async move {
            let status = child.wait().await;
            // Helpers the app left behind in its group go with it. (Right after the
            // wait: the group id cannot name anything else while members remain.)
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            flag.store(true, Ordering::Release);
            let message = match status {
                Ok(s) => format!("{label} exited: {s}"),
                Err(e) => format!("{label}: waiting for it failed: {e}"),
            };
            write_log(&log_slot, &site_name, &message);
        });
        Ok(Running {
            pid,
            socket,
            dir,
            exited,
        })
    }

    /// Scale to zero: stop the app once it has had no request for `idle_timeout`.
    fn start_reaper(self: &Arc<Self>) {
        let Some(limit) = self.config.idle_timeout else {
            return;
        };
        self.reaper.call_once(|| {
            let app: Weak<App> = Arc::downgrade(self);
            let tick = (limit / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(tick).await;
                    let Some(app) = app.upgrade() else { return };
                    let stopped = {
                        let mut state = app.state.lock().expect("app lock");
                        let idle = state.active == 0
                            && state.last_used.is_some_and(|t| t.elapsed() >= limit);
                        if idle { state.running.take() } else { None }
                    };
                    // Killed outside the lock.
                    drop(stopped);
                }
            });
        });
    }
}

/// A line for the site's error log (and condo's own log).
pub(super) fn log(site: &SiteState, message: &str) {
    write_log(&site.error_log, &site.config.name, message);
}

fn write_log(log: &LogSlot, site: &str, message: &str) {
    tracing::info!(site, "app: {message}");
    let line = format!(
        "{} [{site}] condo: {}\n",
        crate::http::http_date(),
        crate::logging::escape(message.as_bytes(), crate::logging::MAX_LINE)
    );
    log.write(line.as_bytes());
}

impl Drop for App {
    fn drop(&mut self) {
        if let Ok(state) = self.state.get_mut() {
            state.running = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_while_the_app_keeps_dying() {
        let delays: Vec<u128> = (0..12).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(
            delays,
            [
                0, 0, 100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000
            ]
        );
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
