//! The PROXY protocol (HAProxy's, v1 text and v2 binary) in front of a connection from
//! a trusted load balancer: it names the real client, which then flows to logs,
//! REMOTE_ADDR and the app's X-Forwarded-For. Parsing is the `ppp` crate's.

use std::net::SocketAddr;

use ppp::{HeaderResult, PartialResult};

/// A header is at most this long (v1: 107 bytes; v2 with TLVs: we allow 4 KiB).
pub const MAX_HEADER: usize = 4096;

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A header of `len` bytes; `client` is the original source, `None` for LOCAL /
    /// UNKNOWN (a health check of the balancer itself: keep the socket's address).
    Header {
        len: usize,
        client: Option<SocketAddr>,
    },
    Invalid(String),
}

pub fn parse(buf: &[u8]) -> Parsed {
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return if buf.len() >= MAX_HEADER {
            Parsed::Invalid("PROXY header too long".into())
        } else {
            Parsed::Incomplete
        };
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            let client = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Unknown => None,
            };
            Parsed::Header {
                len: h.header.len(),
                client,
            }
        }
        HeaderResult::V2(Ok(h)) => {
            let client = match (h.command, h.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (_, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, ppp::v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => None,
            };
            Parsed::Header {
                len: h.len(),
                client,
            }
        }
        HeaderResult::V1(Err(e)) => Parsed::Invalid(format!("PROXY v1: {e}")),
        HeaderResult::V2(Err(e)) => Parsed::Invalid(format!("PROXY v2: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_v2_and_garbage() {
        let v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(v1),
            Parsed::Header {
                len: 42,
                client: Some("192.0.2.7:51234".parse().unwrap())
            }
        );
        assert_eq!(parse(&v1[..20]), Parsed::Incomplete);
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 9, 127, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb,
        ]);
        v2.extend_from_slice(b"tail");
        assert_eq!(
            parse(&v2),
            Parsed::Header {
                len: 28,
                client: Some("198.51.100.9:8080".parse().unwrap())
            }
        );
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Parsed::Invalid(_)
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                len: 15,
                client: None
            }
        );
    }
}
