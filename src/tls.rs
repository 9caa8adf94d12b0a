//! TLS, shared by the dispatcher and the workers (rustls with the ring provider).
//!
//! TLS follows the key's owner. The dispatcher reads a connection's ClientHello and
//! takes its SNI. A site's own certificate belongs to its tenant: the raw connection,
//! with the bytes read so far, goes to that tenant's worker, which reads the key as the
//! tenant and does the handshake — the dispatcher never holds a tenant's key. The host's
//! certificates (`[[certificate]]`: wildcards for customer subdomains, a default) are
//! terminated in the dispatcher, which then proxies each request to the right worker.

use std::io::{self, Read};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use rustls::ServerConfig;
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most a ClientHello may take before the connection is refused.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// A certificate chain and its key, from PEM.
pub fn certified_key_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .context("reading the certificate PEM")?;
    if chain.is_empty() {
        anyhow::bail!("no certificate in the PEM");
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("reading the private key PEM")?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .context("the key does not fit the certificate, or is of an unsupported kind")?;
    Ok(certified)
}

/// A certificate chain and key from two PEM files (regular files of at most
/// [`crate::tenant_file::MAX_PEM`] bytes). Blocks: a worker reads a site's own files
/// with [`load_certified_key_async`] instead.
pub fn load_certified_key(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let read = |p: &Path| crate::tenant_file::read_bounded(p, crate::tenant_file::MAX_PEM);
    certified_key_from_pem(&read(cert)?, &read(key)?)
        .with_context(|| format!("{} with {}", cert.display(), key.display()))
}

/// [`load_certified_key`] off the runtime threads and bounded in time: for files a
/// tenant controls, read in its worker.
pub async fn load_certified_key_async(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    use crate::tenant_file::{MAX_PEM, read};
    let cert_pem = read(cert.to_path_buf(), MAX_PEM).await?;
    let key_pem = read(key.to_path_buf(), MAX_PEM).await?;
    certified_key_from_pem(&cert_pem, &key_pem)
        .with_context(|| format!("{} with {}", cert.display(), key.display()))
}

/// Does `names` (host names, `*.domain` wildcards) cover `host`? A wildcard covers
/// exactly one label, as in certificate matching (RFC 6125 §6.4.3).
pub fn covers(names: &[String], host: &str) -> bool {
    names.iter().any(|n| match n.strip_prefix("*.") {
        Some(domain) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == domain),
        None => n == host,
    })
}

/// Picks one of several certificates by SNI; `default` answers a missing or unknown
/// SNI, and without one the handshake fails (an alert, no certificate shown).
#[derive(Debug, Default)]
pub struct ByName {
    certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
}

impl ByName {
    pub fn add(&mut self, names: Vec<String>, key: Arc<CertifiedKey>, default: bool) {
        if default {
            self.default = Some(key.clone());
        }
        self.certs.push((names, key));
    }

    /// The names of the certificate chosen for `sni` (for the Host check).
    pub fn names_for(&self, sni: Option<&str>) -> Option<&[String]> {
        self.lookup(sni).map(|(names, _)| names.as_slice())
    }

    fn lookup(&self, sni: Option<&str>) -> Option<(&Vec<String>, &Arc<CertifiedKey>)> {
        let found = sni.and_then(|host| {
            self.certs
                .iter()
                .find(|(names, _)| covers(names, host))
                .map(|(n, k)| (n, k))
        });
        found.or_else(|| {
            let default = self.default.as_ref()?;
            self.certs
                .iter()
                .find(|(_, k)| Arc::ptr_eq(k, default))
                .map(|(n, k)| (n, k))
        })
    }

    pub fn has_name_or_default(&self, sni: Option<&str>) -> bool {
        self.lookup(sni).is_some()
    }
}

impl ResolvesServerCert for ByName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(|s| s.to_ascii_lowercase());
        self.lookup(sni.as_deref()).map(|(_, k)| k.clone())
    }
}

/// A server config with condo's defaults: TLS 1.2 and 1.3 (rustls offers only AEAD
/// suites with forward secrecy), ALPN h2 and http/1.1, session tickets from a ticketer of this
/// process (a tenant's worker has its own: resumption never crosses tenants).
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new().context("session ticketer")?;
    Ok(Arc::new(config))
}

/// What the dispatcher learns from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Lowercased; `None` without the extension.
    pub sni: Option<String>,
}

/// A ClientHello that could not be read: why, and the alert record rustls answers it
/// with (`decode_error` for a malformed SNI or ALPN extension, ...), to be sent before
/// the connection closes so the client learns why.
#[derive(Debug)]
pub struct BadHello {
    pub reason: String,
    pub alert: Vec<u8>,
}

impl std::fmt::Display for BadHello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Parse a ClientHello from the start of `buf` without consuming it. `Ok(None)`: more
/// bytes are needed.
pub fn peek_client_hello(buf: &[u8]) -> Result<Option<Hello>, BadHello> {
    let mut acceptor = Acceptor::default();
    let mut reader: &[u8] = buf;
    while !reader.is_empty() {
        acceptor.read_tls(&mut reader).map_err(|e| BadHello {
            reason: e.to_string(),
            alert: Vec::new(),
        })?;
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Ok(Some(Hello {
            sni: accepted
                .client_hello()
                .server_name()
                .map(|s| s.to_ascii_lowercase()),
        })),
        Ok(None) => Ok(None),
        Err((e, mut alert)) => {
            let mut bytes = Vec::new();
            // Into a Vec: cannot fail or block.
            let _ = alert.write_all(&mut bytes);
            Err(BadHello {
                reason: e.to_string(),
                alert: bytes,
            })
        }
    }
}

/// Read from a TLS stream, then send whatever rustls queued while reading. rustls
/// answers some records without the application writing anything — a TLS 1.2
/// renegotiation attempt gets a `no_renegotiation` warning, a TLS 1.3 KeyUpdate its
/// reply — but tokio-rustls only sends queued records on the next write, and the
/// client, waiting for that answer, would hang until a timeout.
pub fn poll_read_flushing<IO: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut tokio_rustls::server::TlsStream<IO>,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let polled = Pin::new(&mut *stream).poll_read(cx, buf);
    if stream.get_ref().1.wants_write() {
        // Pending is fine: the waker is registered, and the next read or write sends
        // the rest. An error surfaces on the next write as well.
        let _ = Pin::new(&mut *stream).poll_flush(cx);
    }
    polled
}

/// A stream that first yields bytes already read from it (the ClientHello the
/// dispatcher looked at), then reads from the stream itself.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    offset: usize,
    pub inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            offset: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.offset < this.prefix.len() {
            let rest = &this.prefix[this.offset..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.offset += n;
            if this.offset == this.prefix.len() {
                this.prefix = Vec::new();
                this.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Read a whole small file through an fd (a PEM the master or the worker opened).
pub fn read_all(mut file: std::fs::File) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    file.read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        let names = vec!["*.hosting.test".to_string(), "exact.test".to_string()];
        assert!(covers(&names, "alice.hosting.test"));
        assert!(covers(&names, "exact.test"));
        assert!(!covers(&names, "hosting.test"));
        assert!(!covers(&names, "a.b.hosting.test"));
        assert!(!covers(&names, "other.test"));
    }

    #[test]
    fn client_hello_sni_from_a_real_client() {
        // A ClientHello as rustls's own client writes it.
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("Alice.Example").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        assert_eq!(
            peek_client_hello(&hello).unwrap(),
            Some(Hello {
                sni: Some("alice.example".into())
            })
        );
        // Cut short: more is needed; garbage: an error.
        assert_eq!(peek_client_hello(&hello[..20]).unwrap(), None);
        assert!(peek_client_hello(b"GET / HTTP/1.1\r\n\r\n").is_err());
    }
}
