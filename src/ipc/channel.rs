//! A typed, message-framed channel between condo's processes, able to carry fds.
//!
//! `SOCK_SEQPACKET` keeps message boundaries, so every message arrives whole or not at
//! all and the fds sent with it are attached to exactly that message (on a stream
//! socket, ancillary data floats between byte boundaries). `Channel<Tx, Rx>` is generic
//! over what each end sends and receives, so a process cannot send the other side's
//! message by mistake.

use std::io::{self, IoSlice, IoSliceMut};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::Interest;
use tokio::net::UnixDatagram;

/// Largest message any side may send. Receivers read into a buffer of exactly this
/// size and treat a truncated message as a protocol error, so a peer can never make
/// the receiver allocate more than this.
pub const MAX_MESSAGE: usize = 128 * 1024;
/// Most fds one message may carry.
pub const MAX_FDS: usize = 4;

/// One end of a typed channel: sends `Tx`, receives `Rx`.
pub struct Channel<Tx, Rx> {
    /// tokio has no SEQPACKET type; its datagram socket gives us the reactor
    /// registration (readiness) without `unsafe`, and every send and receive below is a
    /// raw sendmsg/recvmsg, which behave the same on both socket types.
    socket: UnixDatagram,
    recv_buf: Mutex<Box<[u8]>>,
    _types: PhantomData<fn(Tx) -> Rx>,
}

/// Two connected raw ends, for handing one to a child process or another peer.
pub fn raw_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

impl<Tx: Serialize, Rx: DeserializeOwned> Channel<Tx, Rx> {
    /// Wrap one end. Must be called inside a tokio runtime.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let std_socket = std::os::unix::net::UnixDatagram::from(fd);
        std_socket.set_nonblocking(true)?;
        Ok(Self {
            socket: UnixDatagram::from_std(std_socket)?,
            recv_buf: Mutex::new(vec![0u8; MAX_MESSAGE].into_boxed_slice()),
            _types: PhantomData,
        })
    }

    /// Send one message with up to [`MAX_FDS`] fds.
    pub async fn send(&self, message: &Tx, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let bytes = encode(message, fds)?;
        loop {
            self.socket.writable().await?;
            match self
                .socket
                .try_io(Interest::WRITABLE, || self.send_now(&bytes, fds))
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }

    /// Send without waiting: `WouldBlock` when the channel cannot take the message now.
    pub fn try_send(&self, message: &Tx, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let bytes = encode(message, fds)?;
        self.socket
            .try_io(Interest::WRITABLE, || self.send_now(&bytes, fds))
    }

    fn send_now(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("ancillary buffer too small"));
        }
        let iov = [IoSlice::new(bytes)];
        let sent = rustix::net::sendmsg(&self.socket, &iov, &mut control, SendFlags::NOSIGNAL)?;
        debug_assert_eq!(sent, bytes.len(), "seqpacket sends are atomic");
        Ok(())
    }

    /// Receive one message and the fds that came with it; `Ok(None)` when the peer
    /// closed its end.
    pub async fn recv(&self) -> io::Result<Option<(Rx, Vec<OwnedFd>)>> {
        loop {
            self.socket.readable().await?;
            match self.socket.try_io(Interest::READABLE, || self.recv_now()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }

    fn recv_now(&self) -> io::Result<Option<(Rx, Vec<OwnedFd>)>> {
        let mut buf = self.recv_buf.lock().unwrap_or_else(|e| e.into_inner());
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = rustix::net::recvmsg(
            &self.socket,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        // Take ownership of every fd first so none leaks on the error paths below.
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if msg.flags.contains(ReturnFlags::TRUNC) || msg.flags.contains(ReturnFlags::CTRUNC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "ipc message over the size cap",
            ));
        }
        if msg.bytes == 0 {
            // SEQPACKET has no empty messages of ours: zero bytes means the peer is gone.
            return Ok(None);
        }
        let value = postcard::from_bytes(&buf[..msg.bytes]).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("bad ipc message: {e}"))
        })?;
        Ok(Some((value, fds)))
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

fn encode<T: Serialize>(message: &T, fds: &[BorrowedFd<'_>]) -> io::Result<Vec<u8>> {
    let bytes =
        postcard::to_stdvec(message).map_err(|e| io::Error::other(format!("encode: {e}")))?;
    if bytes.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "ipc message too large",
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[tokio::test]
    async fn messages_carry_fds_both_ways() {
        let (a, b) = raw_pair().unwrap();
        let left: Channel<String, u32> = Channel::new(a).unwrap();
        let right: Channel<u32, String> = Channel::new(b).unwrap();
        let (mut r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        left.send(&"hello".to_string(), &[w.as_fd()]).await.unwrap();
        drop(w);
        let (text, fds) = right.recv().await.unwrap().unwrap();
        assert_eq!(text, "hello");
        assert_eq!(fds.len(), 1);
        let mut passed = std::os::unix::net::UnixStream::from(fds.into_iter().next().unwrap());
        passed.write_all(b"through").unwrap();
        drop(passed);
        let mut got = String::new();
        r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "through");

        right.send(&7, &[]).await.unwrap();
        assert_eq!(left.recv().await.unwrap().unwrap().0, 7);
        drop(right);
        assert!(left.recv().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_messages_are_refused_on_both_ends() {
        let (a, b) = raw_pair().unwrap();
        let left: Channel<Vec<u8>, ()> = Channel::new(a).unwrap();
        assert!(left.send(&vec![0u8; MAX_MESSAGE + 1], &[]).await.is_err());
        // A peer that bypasses the typed API still cannot make the receiver allocate.
        let right: Channel<(), Vec<u8>> = Channel::new(b).unwrap();
        let raw = left.as_fd();
        rustix::net::send(raw, &vec![1u8; MAX_MESSAGE + 10], SendFlags::empty()).unwrap();
        let err = right.recv().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
