//! Safe wrappers for the few OS facilities the ecosystem offers only as `unsafe` API,
//! kept in `sandbox`, the one module allowed `unsafe` code (the crate denies it
//! everywhere else).

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Register an fd we own with tokio's reactor.
pub fn async_fd(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the fd stays open and keeps
    // its number for the AsyncFd's whole life, which is all register requires.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}
