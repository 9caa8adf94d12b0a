//! systemd's readiness protocol (`Type=notify-reload`): READY, RELOADING, STOPPING,
//! STATUS and MAINPID messages on `$NOTIFY_SOCKET`, through the sd-notify crate.
//! Nothing is sent when condo does not run under systemd (no `$NOTIFY_SOCKET`).

use sd_notify::NotifyState;
use tracing::debug;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!("sd_notify: {e}");
    }
}

/// Serving: listeners bound, dispatchers started.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins (systemd wants the monotonic time with it).
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// A binary upgrade handed the service to a new master process.
pub fn main_pid(pid: u32) {
    send(&[NotifyState::MainPid(pid)]);
}
