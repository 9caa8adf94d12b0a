//! The connection a worker serves: the client's own TCP socket (pass) or the
//! dispatcher's relay stream (proxy). Both take `sendfile`.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::http::io::{Stall, send_timed_out};
use crate::tls::Prefixed;

/// A client connection with a send timeout ([`Stall`]): a client that stops reading
/// loses its connection after `send_timeout`.
pub struct Stream {
    inner: Inner,
    stall: Stall,
}

/// A connection that is registered with the reactor only when it has to wait.
///
/// A passed connection often needs no waiting at all: its request came along in the
/// hand-over and a small response fits the socket buffer, so with `Connection: close`
/// it is answered and closed with plain syscalls, saving the epoll add and delete.
enum Inner {
    Unregistered {
        fd: OwnedFd,
        unix: bool,
    },
    Tcp(TcpStream),
    Unix(UnixStream),
    /// HTTPS with the site's own certificate: no sendfile, files are copied.
    Tls(Box<tokio_rustls::server::TlsStream<Prefixed<TcpStream>>>),
    /// Only while switching states.
    Gone,
}

fn gone() -> io::Error {
    io::Error::other("stream used after a failed registration")
}

impl Stream {
    /// The dispatcher only passes sockets it accepted non-blocking, and O_NONBLOCK
    /// belongs to the shared open file description: no need to set it again.
    pub fn tcp(fd: OwnedFd, send_timeout: Duration) -> io::Result<Self> {
        Ok(Self::new(
            Inner::Unregistered { fd, unix: false },
            send_timeout,
        ))
    }

    /// The relay stream's end came from a fresh socketpair: make it non-blocking.
    pub fn unix(fd: OwnedFd, send_timeout: Duration) -> io::Result<Self> {
        let s = std::os::unix::net::UnixStream::from(fd);
        s.set_nonblocking(true)?;
        let inner = Inner::Unregistered {
            fd: OwnedFd::from(s),
            unix: true,
        };
        Ok(Self::new(inner, send_timeout))
    }

    pub fn tls(
        stream: tokio_rustls::server::TlsStream<Prefixed<TcpStream>>,
        send_timeout: Duration,
    ) -> Self {
        Self::new(Inner::Tls(Box::new(stream)), send_timeout)
    }

    /// A TLS connection whose client chose HTTP/2 (ALPN).
    pub fn is_h2(&self) -> bool {
        matches!(&self.inner, Inner::Tls(s) if s.get_ref().1.alpn_protocol() == Some(b"h2"))
    }

    fn new(inner: Inner, send_timeout: Duration) -> Self {
        Self {
            inner,
            stall: Stall::new(send_timeout),
        }
    }

    fn register(&mut self) -> io::Result<()> {
        self.inner.register()
    }

    /// Detach the socket from this runtime, to hand it to another process.
    pub fn into_fd(self) -> io::Result<OwnedFd> {
        self.inner.into_fd()
    }

    /// Wait until the socket takes data, at most `send_timeout`.
    async fn writable(&self) -> io::Result<()> {
        let ready = async {
            match &self.inner {
                Inner::Tcp(s) => s.writable().await,
                Inner::Unix(s) => s.writable().await,
                _ => Err(gone()),
            }
        };
        let after = self.stall.after();
        match tokio::time::timeout(after, ready).await {
            Ok(ready) => ready,
            Err(_) => {
                self.inner.reset_on_close();
                Err(send_timed_out(after))
            }
        }
    }
}

impl Inner {
    /// After a send timeout: make the close a reset. A plain close would leave what
    /// the kernel still buffers (megabytes for a large file) to trickle out to the
    /// slow reader for as long as it keeps reading a few bytes now and then — the
    /// slow-read attack outliving the connection.
    fn reset_on_close(&self) {
        let fd = match self {
            Inner::Tcp(s) => s.as_fd(),
            Inner::Tls(s) => s.get_ref().0.inner.as_fd(),
            Inner::Unregistered { fd, unix: false } => fd.as_fd(),
            _ => return,
        };
        let _ = rustix::net::sockopt::set_socket_linger(fd, Some(std::time::Duration::ZERO));
    }

    fn register(&mut self) -> io::Result<()> {
        if let Inner::Unregistered { .. } = self {
            let Inner::Unregistered { fd, unix } = std::mem::replace(self, Inner::Gone) else {
                unreachable!()
            };
            *self = if unix {
                Inner::Unix(UnixStream::from_std(std::os::unix::net::UnixStream::from(
                    fd,
                ))?)
            } else {
                Inner::Tcp(TcpStream::from_std(std::net::TcpStream::from(fd))?)
            };
        }
        Ok(())
    }

    fn into_fd(self) -> io::Result<OwnedFd> {
        Ok(match self {
            Inner::Unregistered { fd, .. } => fd,
            Inner::Tcp(s) => OwnedFd::from(s.into_std()?),
            Inner::Unix(s) => OwnedFd::from(s.into_std()?),
            Inner::Tls(_) => {
                return Err(io::Error::other(
                    "a TLS connection cannot change hands after its handshake",
                ));
            }
            Inner::Gone => return Err(gone()),
        })
    }
}

impl Stream {
    /// Send `len` bytes of `file` from `offset` with sendfile(2): no copy through this
    /// process. Fails if the file shrank under us.
    pub async fn sendfile(
        &mut self,
        file: &std::fs::File,
        mut offset: u64,
        len: u64,
    ) -> io::Result<()> {
        if let Inner::Tls(_) = self.inner {
            return self.copy_file(file, offset, len).await;
        }
        let end = offset + len;
        while offset < end {
            let want = (end - offset).min(1 << 30) as usize;
            if !matches!(self.inner, Inner::Unregistered { .. }) {
                self.writable().await?;
            }
            let sent = match &mut self.inner {
                Inner::Unregistered { fd, .. } => {
                    match rustix::fs::sendfile(&*fd, file, Some(&mut offset), want) {
                        Err(rustix::io::Errno::AGAIN) => {
                            self.register()?;
                            continue;
                        }
                        other => other.map_err(io::Error::from),
                    }
                }
                Inner::Tcp(s) => s.try_io(Interest::WRITABLE, || {
                    Ok(rustix::fs::sendfile(
                        s.as_fd(),
                        file,
                        Some(&mut offset),
                        want,
                    )?)
                }),
                Inner::Unix(s) => s.try_io(Interest::WRITABLE, || {
                    Ok(rustix::fs::sendfile(
                        s.as_fd(),
                        file,
                        Some(&mut offset),
                        want,
                    )?)
                }),
                Inner::Tls(_) | Inner::Gone => return Err(gone()),
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

impl Stream {
    /// sendfile's stand-in where the kernel cannot encrypt: read and write in chunks.
    async fn copy_file(
        &mut self,
        file: &std::fs::File,
        mut offset: u64,
        len: u64,
    ) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        use tokio::io::AsyncWriteExt;
        let end = offset + len;
        let mut chunk = vec![0u8; 64 * 1024];
        while offset < end {
            let want = ((end - offset) as usize).min(chunk.len());
            let n = file.read_at(&mut chunk[..want], offset)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while being sent",
                ));
            }
            self.write_all(&chunk[..n]).await?;
            offset += n as u64;
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
        match &mut this.inner {
            Inner::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(s) => crate::tls::poll_read_flushing(s.as_mut(), cx, buf),
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
        if let Inner::Unregistered { fd, .. } = &this.inner {
            match rustix::io::write(fd, buf) {
                Err(rustix::io::Errno::AGAIN) => {}
                other => return Poll::Ready(other.map_err(io::Error::from)),
            }
            if let Err(e) = this.register() {
                return Poll::Ready(Err(e));
            }
        }
        let polled = match &mut this.inner {
            Inner::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            _ => Poll::Ready(Err(gone())),
        };
        let checked = this.stall.check(cx, polled);
        if let Poll::Ready(Err(e)) = &checked
            && e.kind() == io::ErrorKind::TimedOut
        {
            this.inner.reset_on_close();
        }
        checked
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Tcp(s) => Pin::new(s).poll_flush(cx),
            Inner::Unix(s) => Pin::new(s).poll_flush(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Inner::Unregistered { fd, .. } => Poll::Ready(
                rustix::net::shutdown(&*fd, rustix::net::Shutdown::Write).map_err(io::Error::from),
            ),
            Inner::Gone => Poll::Ready(Err(gone())),
        }
    }
}
