//! Attack matrix, "what the dispatcher relays is capped per tenant": through the proxy
//! hand-over (and the host's certificates, and h2) the dispatcher holds both ends of
//! every connection of a site for as long as its client keeps it open. Clients of one
//! site holding connections open (idle keep-alive here; a slow reader does the same)
//! must not take the `max_connections` that every tenant's sites share.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

/// The answer on a fresh connection to the proxy listener: the status, or `None` when
/// the dispatcher closed it without one (refused at `max_connections`).
fn status_on_new_connection(condo: &Condo, host: &str) -> (Option<u16>, Client) {
    let mut client = Client::connect(condo.proxy());
    client
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let sent = client
        .stream
        .write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    let status = sent
        .ok()
        .and_then(|_| client.read_response(false))
        .map(|r| r.status);
    (status, client)
}

#[test]
fn one_sites_held_connections_leave_the_others_room() {
    if !require_root() {
        return;
    }
    let t = TwoTenants::new();
    // 64 connections in all; by default a tenant's sites may hold a quarter (16).
    let condo = Condo::start(&t.config("max_connections = 64\nkeepalive_timeout = \"60s\""));
    let mut held = Vec::new();
    let (mut served, mut refused) = (0, 0);
    for _ in 0..64 {
        let (status, client) = status_on_new_connection(&condo, "a.test");
        match status {
            Some(200) => {
                served += 1;
                // Kept open, idle between requests: the dispatcher keeps its relay.
                held.push(client);
            }
            Some(503) | None => refused += 1,
            Some(other) => panic!("a.test answered {other}"),
        }
    }
    assert_eq!(served, 16, "a's relays held at once (refused {refused})");
    // b's clients still get in, and a's held connections still work.
    for _ in 0..5 {
        let (status, _client) = status_on_new_connection(&condo, "b.test");
        assert_eq!(status, Some(200), "b.test while a holds {served} relays");
    }
    let response = held[0].get("a.test", "/");
    assert_eq!(response.status, 200);
    assert!(
        condo.log_text().contains("tenant_relays_max (16)"),
        "the refusal is in condo's log (once, rate-limited)"
    );
    // When a's clients let go, a's room comes back.
    drop(held);
    let mut back = None;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        if let (Some(200), _) = status_on_new_connection(&condo, "a.test") {
            back = Some(());
            break;
        }
    }
    assert!(
        back.is_some(),
        "a.test stays refused after its clients left"
    );
}
