//! A client connection as the dispatcher serves it, plain or TLS it terminated: what
//! both the request loop and the TLS front end hand to the proxy relay.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tls::{self, Prefixed};

/// A client connection as the dispatcher serves it: plain, or TLS it terminated.
pub enum ClientConn {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<Prefixed<TcpStream>>>),
}

impl AsyncRead for ClientConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientConn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientConn::Tls(s) => tls::poll_read_flushing(s.as_mut(), cx, buf),
        }
    }
}

impl AsyncWrite for ClientConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientConn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ClientConn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientConn::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientConn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientConn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientConn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
