//! HTTPS in the dispatcher: read the ClientHello, then either pass the raw connection to
//! the worker of a site with its own certificate, or terminate TLS with one of the
//! host's certificates and proxy each request (see [`crate::tls`]).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

use super::Dispatcher;
use super::client::ClientConn;
use crate::ipc::{Handoff, ProviderCertPem};
use crate::tls::{self, ByName, Prefixed};

/// The host's certificates, ready for handshakes.
pub struct Provider {
    pub by_name: Arc<ByName>,
    pub config: Arc<rustls::ServerConfig>,
}

impl Provider {
    pub fn new(certs: Vec<ProviderCertPem>) -> anyhow::Result<Option<Self>> {
        if certs.is_empty() {
            return Ok(None);
        }
        let mut by_name = ByName::default();
        for c in certs {
            let key = tls::certified_key_from_pem(&c.cert_pem, &c.key_pem)?;
            by_name.add(c.names, Arc::new(key), c.default);
        }
        let by_name = Arc::new(by_name);
        let config = tls::server_config(by_name.clone())?;
        Ok(Some(Self { by_name, config }))
    }
}

impl Dispatcher {
    /// A new connection on a TLS listener.
    /// `buf`: bytes already read after any PROXY header.
    pub(super) async fn tls_connection(
        self: Arc<Self>,
        mut stream: TcpStream,
        mut buf: BytesMut,
        peer: SocketAddr,
        local: SocketAddr,
    ) {
        let deadline = tokio::time::Instant::now() + self.limits.header_timeout;
        let hello = loop {
            match tls::peek_client_hello(&buf) {
                Ok(Some(hello)) => break hello,
                Ok(None) if buf.len() < tls::MAX_CLIENT_HELLO => {}
                Ok(None) => return,
                Err(e) => {
                    debug!(%peer, "not a TLS ClientHello: {e}");
                    send_alert(&mut stream, &e.alert).await;
                    return;
                }
            }
            match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        };
        let routing = self.routing.load_full();
        if let Some(route) = routing
            .table
            .exact(hello.sni.as_deref())
            .filter(|r| r.own_tls)
        {
            // The site's own certificate: the tenant's worker does the handshake.
            let handoff = Handoff {
                handover: crate::config::Handover::Pass,
                peer,
                local,
                site: route.site.clone(),
                buffered: buf.to_vec(),
                tls_handshake: true,
                secure: true,
                seal: [0; 32],
            };
            let Ok(std) = stream.into_std() else { return };
            let fd = OwnedFd::from(std);
            // On failure (logged by `hand_over`) nothing can be said in HTTP before a
            // handshake: the client sees a close.
            let _ = self.workers.hand_over(&route.tenant, &handoff, &fd).await;
            return;
        }
        let provider = self.provider.load_full();
        let Some(provider) = provider.as_deref() else {
            debug!(%peer, sni = ?hello.sni, "no certificate for this name; closing");
            return;
        };
        // Without a certificate for the name (and no default) rustls answers the
        // ClientHello with an alert.
        let acceptor = tokio_rustls::LazyConfigAcceptor::new(
            rustls::server::Acceptor::default(),
            Prefixed::new(buf.to_vec(), stream),
        );
        let handshake = async {
            let start = acceptor.await?;
            start.into_stream(provider.config.clone()).await
        };
        let tls = match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                debug!(%peer, sni = ?hello.sni, "TLS handshake: {e}");
                return;
            }
            Err(_) => return,
        };
        let names = provider
            .by_name
            .names_for(hello.sni.as_deref())
            .map(<[String]>::to_vec)
            .unwrap_or_default();
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            // Through ClientConn, whose reads send what rustls queued meanwhile.
            let conn = ClientConn::Tls(Box::new(tls));
            self.serve_h2(conn, peer, local, Some(names)).await;
            return;
        }
        let idle = self.limits.header_timeout;
        self.serve_connection(
            ClientConn::Tls(Box::new(tls)),
            peer,
            local,
            crate::config::Handover::Proxy,
            BytesMut::new(),
            idle,
            Some(names),
        )
        .await;
    }
}

/// Send the alert that refuses a ClientHello, then close: briefly, the client may be
/// gone or not reading (the alert is a few bytes, so a fresh socket takes it at once).
async fn send_alert(stream: &mut TcpStream, alert: &[u8]) {
    use tokio::io::AsyncWriteExt;
    if alert.is_empty() {
        return;
    }
    let sent = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        stream.write_all(alert).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    // Read what the client still sends for a moment, so closing with unread bytes
    // does not turn into a reset that destroys the alert before the client reads it.
    let mut sink = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(500);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
        if n == 0 {
            break;
        }
    }
}

impl Dispatcher {
    /// An HTTP/2 connection (ALPN h2 on TLS ended here, or h2c with prior knowledge):
    /// each request goes to its site's worker as HTTP/1.1 over a relay stream.
    pub(super) async fn serve_h2<IO>(
        self: Arc<Self>,
        io: IO,
        peer: SocketAddr,
        local: SocketAddr,
        tls_names: Option<Vec<String>>,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limits = self.limits;
        let names = Arc::new(tls_names);
        let relays = Arc::new(crate::http::h2::Relays::default());
        let dispatcher = self.clone();
        crate::http::h2::serve(io, &limits, move |req| {
            let d = dispatcher.clone();
            let names = names.clone();
            let relays = relays.clone();
            async move {
                d.h2_request(req, peer, local, names.as_ref().as_deref(), &relays)
                    .await
            }
        })
        .await;
    }

    async fn h2_request(
        &self,
        req: http::Request<hyper::body::Incoming>,
        peer: SocketAddr,
        local: SocketAddr,
        tls_names: Option<&[String]>,
        relays: &crate::http::h2::Relays,
    ) -> http::Response<crate::http::h2::Body> {
        use crate::http::h2;
        let Some(host) = h2::host_of(&req) else {
            return h2::error(http::StatusCode::BAD_REQUEST);
        };
        if let Some(names) = tls_names
            && !tls::covers(names, &host)
        {
            return h2::error(http::StatusCode::MISDIRECTED_REQUEST);
        }
        let routing = self.routing.load_full();
        let Some(route) = routing.table.lookup(Some(&host)) else {
            let status = http::StatusCode::from_u16(routing.unknown_host_status)
                .unwrap_or(http::StatusCode::NOT_FOUND);
            return h2::error(status);
        };
        let secure = tls_names.is_some();
        let open = || async {
            super::proxy::open_relay(&self.workers, route, peer, local, secure)
                .await
                .map_err(|status| {
                    http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY)
                })
        };
        relays.send(&route.site, req, &host, open).await
    }
}
