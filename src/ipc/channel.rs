//! A typed, message-framed channel between condo's processes, able to carry fds.
//!
//! `SOCK_SEQPACKET` keeps message boundaries, so every message arrives whole or not at
//! all and the fds sent with it are attached to exactly that message (on a stream
//! socket, ancillary data floats between byte boundaries). `Channel<Tx, Rx>` is generic
//! over what each end sends and receives, so a process cannot send the other side's
//! message by mistake.
//!
//! Every frame is bounded ([`MAX_MESSAGE`]), but what the master sends its children
//! (the routing table of every site, a tenant's sites) grows with the host. Such a
//! message travels as a *sealed* memfd: the frame carries only a tag and the length,
//! the memfd comes as the first fd, sealed against writes, growth and shrinking, so
//! the receiver reads exactly what was checked. Only channels that opt in
//! ([`Channel::accept_sealed`], the children's ends of the master's channels) take
//! them; the master, which trusts neither workers nor dispatchers, never does.

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
/// Largest sealed message a receiver that accepts them takes (the config of a host
/// with 10,000 tenants and 20,000 sites encodes to a few MiB).
pub const MAX_SEALED_MESSAGE: usize = 256 * 1024 * 1024;

/// The first byte of every frame: the message follows in the frame itself...
const INLINE: u8 = 0;
/// ...or in a sealed memfd (the frame's first fd); the frame holds its length (u64 LE).
const SEALED: u8 = 1;

/// One end of a typed channel: sends `Tx`, receives `Rx`.
pub struct Channel<Tx, Rx> {
    /// tokio has no SEQPACKET type; its datagram socket gives us the reactor
    /// registration (readiness) without `unsafe`, and every send and receive below is a
    /// raw sendmsg/recvmsg, which behave the same on both socket types.
    socket: UnixDatagram,
    recv_buf: Mutex<Box<[u8]>>,
    /// Largest sealed message taken; 0: none (the default).
    sealed_max: usize,
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
            sealed_max: 0,
            _types: PhantomData,
        })
    }

    /// Take sealed messages (up to [`MAX_SEALED_MESSAGE`]) on this end: only for an end
    /// whose peer is trusted to size them (a child's end of its channel to the master).
    pub fn accept_sealed(mut self) -> Self {
        self.sealed_max = MAX_SEALED_MESSAGE;
        self
    }

    /// Send one message of any size: inline when it fits a frame, otherwise as a
    /// sealed memfd. The receiving end must [`Self::accept_sealed`].
    pub async fn send_large(&self, message: &Tx, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let body =
            postcard::to_stdvec(message).map_err(|e| io::Error::other(format!("encode: {e}")))?;
        if body.len() < MAX_MESSAGE {
            return self.send_frame(frame(INLINE, &body), fds).await;
        }
        if body.len() > MAX_SEALED_MESSAGE || fds.len() >= MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("ipc message of {} bytes too large even sealed", body.len()),
            ));
        }
        let memfd = sealed_memfd(&body)?;
        let mut all = vec![memfd.as_fd()];
        all.extend_from_slice(fds);
        let len = (body.len() as u64).to_le_bytes();
        self.send_frame(frame(SEALED, &len), &all).await
    }

    /// Send one message with up to [`MAX_FDS`] fds.
    pub async fn send(&self, message: &Tx, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let bytes = encode(message, fds)?;
        self.send_frame(bytes, fds).await
    }

    async fn send_frame(&self, bytes: Vec<u8>, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
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
        let mut fds: Vec<OwnedFd> = Vec::new();
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
            // SEQPACKET has no empty messages of ours (every frame has its tag): zero
            // bytes means the peer is gone.
            return Ok(None);
        }
        let value = parse_frame(&buf[..msg.bytes], &mut fds, self.sealed_max)?;
        Ok(Some((value, fds)))
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

fn encode<T: Serialize>(message: &T, fds: &[BorrowedFd<'_>]) -> io::Result<Vec<u8>> {
    let body =
        postcard::to_stdvec(message).map_err(|e| io::Error::other(format!("encode: {e}")))?;
    if body.len() >= MAX_MESSAGE || fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ipc message of {} bytes too large", body.len()),
        ));
    }
    Ok(frame(INLINE, &body))
}

/// One received frame (tag and body) to its message; a sealed message's memfd is taken
/// from the front of `fds`. Public for the fuzz target.
pub fn parse_frame<T: DeserializeOwned>(
    frame: &[u8],
    fds: &mut Vec<OwnedFd>,
    sealed_max: usize,
) -> io::Result<T> {
    match frame.first() {
        Some(&INLINE) => decode(&frame[1..]),
        Some(&SEALED) => {
            let len = <[u8; 8]>::try_from(&frame[1..])
                .map_err(|_| invalid("bad sealed ipc frame".into()))?;
            if fds.is_empty() {
                return Err(invalid("sealed ipc message without its memfd".into()));
            }
            let memfd = fds.remove(0);
            decode(&read_sealed(&memfd, u64::from_le_bytes(len), sealed_max)?)
        }
        Some(tag) => Err(invalid(format!("bad ipc frame tag {tag}"))),
        None => Err(invalid("empty ipc frame".into())),
    }
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(body.len() + 1);
    bytes.push(tag);
    bytes.extend_from_slice(body);
    bytes
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(|e| invalid(format!("bad ipc message: {e}")))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// A memfd holding `body`, sealed so that no one (the sender included) can change it.
fn sealed_memfd(body: &[u8]) -> io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let memfd =
        rustix::fs::memfd_create("condo-ipc", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let mut written = 0;
    while written < body.len() {
        // pwrite: the file offset is shared with the receiver's copy of the open file.
        written += rustix::io::pwrite(&memfd, &body[written..], written as u64)?;
    }
    rustix::fs::fcntl_add_seals(
        &memfd,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )?;
    Ok(memfd)
}

/// The contents of a sealed message's memfd: refused unless it is sealed against
/// change and exactly `len` (at most `max`) bytes long.
fn read_sealed(memfd: &OwnedFd, len: u64, max: usize) -> io::Result<Vec<u8>> {
    use rustix::fs::SealFlags;
    if max == 0 {
        return Err(invalid(
            "sealed ipc message on a channel that takes none".into(),
        ));
    }
    let needed = SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE;
    let seals = rustix::fs::fcntl_get_seals(memfd)
        .map_err(|e| invalid(format!("sealed ipc message: not a memfd ({e})")))?;
    if !seals.contains(needed) {
        return Err(invalid("sealed ipc message: memfd not sealed".into()));
    }
    let size = rustix::fs::fstat(memfd)?.st_size as u64;
    if size != len || len > max as u64 {
        return Err(invalid(format!(
            "sealed ipc message: {size} bytes, frame says {len}, cap {max}"
        )));
    }
    let mut body = vec![0u8; len as usize];
    let mut read = 0;
    while read < body.len() {
        match rustix::io::pread(memfd, &mut body[read..], read as u64)? {
            0 => {
                return Err(invalid(
                    "sealed ipc message: memfd shorter than said".into(),
                ));
            }
            n => read += n,
        }
    }
    Ok(body)
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
    async fn large_messages_travel_sealed_to_ends_that_accept_them() {
        let (a, b) = raw_pair().unwrap();
        let left: Channel<Vec<u8>, ()> = Channel::new(a).unwrap();
        let right: Channel<(), Vec<u8>> = Channel::new(b).unwrap().accept_sealed();
        let big: Vec<u8> = (0..3 * MAX_MESSAGE).map(|i| (i % 251) as u8).collect();
        let (_r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        left.send_large(&big, &[w.as_fd()]).await.unwrap();
        let (got, fds) = right.recv().await.unwrap().unwrap();
        assert_eq!(got, big);
        assert_eq!(fds.len(), 1, "the memfd is not handed to the caller");
        // Small ones still go inline.
        left.send_large(&vec![7u8; 10], &[]).await.unwrap();
        assert_eq!(right.recv().await.unwrap().unwrap().0, vec![7u8; 10]);
    }

    #[tokio::test]
    async fn sealed_messages_are_refused_where_not_accepted_or_not_sealed() {
        let (a, b) = raw_pair().unwrap();
        let left: Channel<Vec<u8>, ()> = Channel::new(a).unwrap();
        // The master's own ends never opt in: a child cannot make it read a big file.
        let right: Channel<(), Vec<u8>> = Channel::new(b).unwrap();
        left.send_large(&vec![1u8; 2 * MAX_MESSAGE], &[])
            .await
            .unwrap();
        assert_eq!(
            right.recv().await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // An unsealed memfd (its sender could change it while it is read) is refused.
        let (a, b) = raw_pair().unwrap();
        let left: Channel<(), ()> = Channel::new(a).unwrap();
        let right: Channel<(), Vec<u8>> = Channel::new(b).unwrap().accept_sealed();
        let body = postcard::to_stdvec(&vec![1u8; 1000]).unwrap();
        let memfd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::io::pwrite(&memfd, &body, 0).unwrap();
        let frame = frame(SEALED, &(body.len() as u64).to_le_bytes());
        left.send_frame(frame.clone(), &[memfd.as_fd()])
            .await
            .unwrap();
        assert_eq!(
            right.recv().await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // A length that does not match the memfd's size is refused.
        let sealed = sealed_memfd(&body).unwrap();
        let lie = super::frame(SEALED, &(body.len() as u64 + 1).to_le_bytes());
        left.send_frame(lie, &[sealed.as_fd()]).await.unwrap();
        assert_eq!(
            right.recv().await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // A sealed frame without any fd.
        left.send_frame(frame, &[]).await.unwrap();
        assert_eq!(
            right.recv().await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
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
