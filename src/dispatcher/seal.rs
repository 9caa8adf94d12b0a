//! The dispatcher's seal on every connection it hands to a worker, so that what comes
//! back as a hand-back is a connection it handed over, to that tenant, with the
//! addresses it knew — whatever a worker (or tenant code that took over a worker's
//! channel) sends.
//!
//! Stateless: an HMAC-SHA256, with a key made at the dispatcher's start that never
//! leaves it, over the socket's identity (st_dev, st_ino of the open socket: one per
//! socket, whichever process holds a copy), the tenant it went to and every field of
//! the `Handoff` but the bytes read so far (which a worker legitimately changes).

use std::os::fd::AsFd;

use ring::hmac;
use rustix::fs::FileType;

use crate::ipc::Handoff;

pub struct Sealer {
    key: hmac::Key,
}

impl Sealer {
    pub fn new() -> Result<Self, String> {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| "no randomness for the hand-over key".to_string())?;
        Ok(Self { key })
    }

    /// The seal of `handoff` with `fd`, going to `tenant`.
    pub fn seal(&self, tenant: &str, handoff: &Handoff, fd: impl AsFd) -> Result<[u8; 32], String> {
        let identity = socket_identity(fd)?;
        let tag = hmac::sign(&self.key, &message(tenant, handoff, identity));
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Is `fd` the socket this dispatcher handed to `tenant` with exactly these fields?
    /// `Err` says what did not hold (for the log).
    pub fn check(&self, tenant: &str, handoff: &Handoff, fd: impl AsFd) -> Result<(), String> {
        let identity = socket_identity(fd)?;
        hmac::verify(
            &self.key,
            &message(tenant, handoff, identity),
            &handoff.seal,
        )
        .map_err(|_| {
            "its seal does not match the socket, the addresses or the tenant it names".into()
        })
    }
}

/// (st_dev, st_ino) of a socket; anything else is refused.
fn socket_identity(fd: impl AsFd) -> Result<(u64, u64), String> {
    let stat = rustix::fs::fstat(fd).map_err(|e| format!("fstat: {e}"))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Socket {
        return Err("the fd is not a socket".into());
    }
    Ok((stat.st_dev, stat.st_ino))
}

fn message(tenant: &str, h: &Handoff, (dev, ino): (u64, u64)) -> Vec<u8> {
    // postcard: every string length-prefixed, so no two inputs encode alike.
    let fields = (
        "condo handoff seal v1",
        tenant,
        dev,
        ino,
        h.handover,
        h.peer,
        h.local,
        h.site.as_str(),
        h.tls_handshake,
        h.secure,
    );
    postcard::to_stdvec(&fields).unwrap_or_default()
}

/// A pass-mode hand-off for `a.test`, unsealed: the tests' common fixture.
#[cfg(test)]
pub(super) fn test_handoff(peer: std::net::SocketAddr, local: std::net::SocketAddr) -> Handoff {
    Handoff {
        handover: crate::config::Handover::Pass,
        peer,
        local,
        site: "a.test".into(),
        buffered: b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n".to_vec(),
        tls_handshake: false,
        secure: false,
        seal: [0; 32],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Handover;
    use std::net::{SocketAddr, TcpListener, TcpStream};

    fn handoff(peer: SocketAddr, local: SocketAddr) -> Handoff {
        test_handoff(peer, local)
    }

    #[test]
    fn only_the_genuine_hand_back_passes() {
        let sealer = Sealer::new().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (conn, peer) = listener.accept().unwrap();
        let local = conn.local_addr().unwrap();
        let mut sent = handoff(peer, local);
        sent.seal = sealer.seal("a", &sent, &conn).unwrap();

        // What a worker sends back: the same fields and seal, new buffered bytes.
        let mut back = sent.clone();
        back.buffered = b"GET / HTTP/1.1\r\nHost: b.test\r\n\r\n".to_vec();
        assert_eq!(sealer.check("a", &back, &conn), Ok(()));
        // A copy of the same socket (dup, or the worker's own fd) is the same socket.
        let dup = conn.try_clone().unwrap();
        assert_eq!(sealer.check("a", &back, &dup), Ok(()));

        // A forged client address, or local address.
        let mut forged = back.clone();
        forged.peer = "203.0.113.7:4444".parse().unwrap();
        assert!(sealer.check("a", &forged, &conn).is_err());
        let mut forged = back.clone();
        forged.local = "127.0.0.1:1".parse().unwrap();
        assert!(sealer.check("a", &forged, &conn).is_err());
        // The same fields with another socket: the client's end, another connection.
        assert!(sealer.check("a", &back, &client).is_err());
        let other = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (other_conn, _) = listener.accept().unwrap();
        assert!(sealer.check("a", &back, &other_conn).is_err());
        drop(other);
        // Handed back by another tenant's worker than the one it went to.
        assert!(sealer.check("b", &back, &conn).is_err());
        // Claiming another mode, site or TLS.
        let changes: [fn(&mut Handoff); 5] = [
            |h: &mut Handoff| h.handover = Handover::Proxy,
            |h: &mut Handoff| h.site = "b.test".into(),
            |h: &mut Handoff| h.secure = true,
            |h: &mut Handoff| h.tls_handshake = true,
            |h: &mut Handoff| h.seal[0] ^= 1,
        ];
        for change in changes {
            let mut forged = back.clone();
            change(&mut forged);
            assert!(sealer.check("a", &forged, &conn).is_err());
        }
        // Not a socket at all.
        let file = tempfile::tempfile().unwrap();
        let err = sealer.check("a", &back, &file).unwrap_err();
        assert!(err.contains("not a socket"), "{err}");
        // Another dispatcher (another key) does not accept this one's seals.
        let other_sealer = Sealer::new().unwrap();
        assert!(other_sealer.check("a", &back, &conn).is_err());
    }

    #[test]
    fn a_socket_pair_is_no_client_connection_it_sealed() {
        let sealer = Sealer::new().unwrap();
        let (x, y) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut h = handoff(
            "198.51.100.1:1000".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
        );
        h.seal = sealer.seal("a", &h, &x).unwrap();
        assert_eq!(sealer.check("a", &h, &x), Ok(()));
        assert!(sealer.check("a", &h, &y).is_err());
    }
}
