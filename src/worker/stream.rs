//! The connection a worker serves: the client's own TCP socket (pass) or the
//! dispatcher's relay stream (proxy). Both take `sendfile`.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A connection that is registered with the reactor only when it has to wait.
///
/// A passed connection often needs no waiting at all: its request came along in the
/// hand-over and a small response fits the socket buffer, so with `Connection: close`
/// it is answered and closed with plain syscalls, saving the epoll add and delete.
pub enum Stream {
    Unregistered {
        fd: OwnedFd,
        unix: bool,
    },
    Tcp(TcpStream),
    Unix(UnixStream),
    /// Only while switching states.
    Gone,
}

fn gone() -> io::Error {
    io::Error::other("stream used after a failed registration")
}

impl Stream {
    /// The dispatcher only passes sockets it accepted non-blocking, and O_NONBLOCK
    /// belongs to the shared open file description: no need to set it again.
    pub fn tcp(fd: OwnedFd) -> io::Result<Self> {
        Ok(Stream::Unregistered { fd, unix: false })
    }

    /// The relay stream's end came from a fresh socketpair: make it non-blocking.
    pub fn unix(fd: OwnedFd) -> io::Result<Self> {
        let s = std::os::unix::net::UnixStream::from(fd);
        s.set_nonblocking(true)?;
        Ok(Stream::Unregistered {
            fd: OwnedFd::from(s),
            unix: true,
        })
    }

    fn register(&mut self) -> io::Result<()> {
        if let Stream::Unregistered { .. } = self {
            let Stream::Unregistered { fd, unix } = std::mem::replace(self, Stream::Gone) else {
                unreachable!()
            };
            *self = if unix {
                Stream::Unix(UnixStream::from_std(std::os::unix::net::UnixStream::from(
                    fd,
                ))?)
            } else {
                Stream::Tcp(TcpStream::from_std(std::net::TcpStream::from(fd))?)
            };
        }
        Ok(())
    }

    /// Detach the socket from this runtime, to hand it to another process.
    pub fn into_fd(self) -> io::Result<OwnedFd> {
        Ok(match self {
            Stream::Unregistered { fd, .. } => fd,
            Stream::Tcp(s) => OwnedFd::from(s.into_std()?),
            Stream::Unix(s) => OwnedFd::from(s.into_std()?),
            Stream::Gone => return Err(gone()),
        })
    }

    /// Send `len` bytes of `file` from `offset` with sendfile(2): no copy through this
    /// process. Fails if the file shrank under us.
    pub async fn sendfile(
        &mut self,
        file: &std::fs::File,
        mut offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let end = offset + len;
        while offset < end {
            let want = (end - offset).min(1 << 30) as usize;
            let sent = match self {
                Stream::Unregistered { fd, .. } => {
                    match rustix::fs::sendfile(&*fd, file, Some(&mut offset), want) {
                        Err(rustix::io::Errno::AGAIN) => {
                            self.register()?;
                            continue;
                        }
                        other => other.map_err(io::Error::from),
                    }
                }
                Stream::Tcp(s) => {
                    s.writable().await?;
                    s.try_io(Interest::WRITABLE, || {
                        Ok(rustix::fs::sendfile(
                            s.as_fd(),
                            file,
                            Some(&mut offset),
                            want,
                        )?)
                    })
                }
                Stream::Unix(s) => {
                    s.writable().await?;
                    s.try_io(Interest::WRITABLE, || {
                        Ok(rustix::fs::sendfile(
                            s.as_fd(),
                            file,
                            Some(&mut offset),
                            want,
                        )?)
                    })
                }
                Stream::Gone => return Err(gone()),
            };
            match sent {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while being sent",
                    ));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.register() {
            return Poll::Ready(Err(e));
        }
        match this {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            _ => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Stream::Unregistered { fd, .. } = this {
            match rustix::io::write(&*fd, buf) {
                Err(rustix::io::Errno::AGAIN) => {}
                other => return Poll::Ready(other.map_err(io::Error::from)),
            }
            if let Err(e) = this.register() {
                return Poll::Ready(Err(e));
            }
        }
        match this {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            _ => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unregistered { fd, .. } => Poll::Ready(
                rustix::net::shutdown(&*fd, rustix::net::Shutdown::Write).map_err(io::Error::from),
            ),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }
}
