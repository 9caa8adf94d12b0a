//! Clients that stop reading lose their connection after `send_timeout`, on both
//! hand-over paths, and the server keeps serving everyone else meanwhile.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_client_that_stops_reading_is_dropped_after_send_timeout() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    let size = 32 << 20;
    write_owned(&t.root_a.join("big.bin"), &vec![b'x'; size], &t.a, 0o644);
    let config = t.config("send_timeout = \"1s\"");
    let condo = Condo::start(&config);
    for addr in [condo.pass, condo.proxy()] {
        let mut client = TcpStream::connect(addr).unwrap();
        client
            .write_all(b"GET /big.bin HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .unwrap();
        // Read nothing for well past the timeout; others are served meanwhile.
        std::thread::sleep(Duration::from_millis(500));
        let (body, ok) = curl(&["-H", "Host: b.test", &format!("http://{addr}/")]);
        assert!(ok && body == "site B\n", "{body}");
        std::thread::sleep(Duration::from_secs(3));
        // Now drain: the connection ends early (EOF or reset) instead of delivering
        // all 32 MiB.
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let started = Instant::now();
        let mut total = 0usize;
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            match client.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        assert!(
            total < size,
            "{addr}: the whole response arrived ({total} bytes): not dropped"
        );
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "{addr}: read hung"
        );
    }
}
