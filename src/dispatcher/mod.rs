//! The dispatcher: an unprivileged process that accepts clients, reads request heads,
//! routes them by Host and hands each connection (pass) or request (proxy) to the
//! tenant's worker. It never opens a tenant's file.

mod admin;
mod client;
mod proxy;
mod seal;
mod tls;
mod workers;

use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use bytes::BytesMut;
use rustix::net::SocketFlags;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::config::{ClientLimits, Handover};
use crate::http::head::parse_request;
use crate::http::io::{HeadRead, SendTimeout, head_limits, read_head, respond_and_close};
use crate::http::routing::RouteTable;
use crate::http::{self};
use crate::ipc::{
    Channel, DispatcherInit, DispatcherToMaster, Handoff, ListenerInfo, MasterToDispatcher, Route,
    Routing,
};
use crate::sandbox;
use client::ClientConn;
use workers::{MasterChannel, Workers};

struct Dispatcher {
    /// Replaced whole at a reload; each connection reads the current one per request.
    routing: ArcSwap<Routes>,
    limits: ClientLimits,
    workers: Arc<Workers>,
    metrics_file: std::path::PathBuf,
    /// What `/metrics` on the admin listener asks for.
    admin_token: Option<String>,
    /// Client connections this process holds now (`limits.max_connections` caps it).
    open: AtomicUsize,
    /// When the cap was last logged, in seconds since the epoch (one line a minute).
    cap_logged: AtomicU64,
    /// Balancers whose PROXY headers are believed.
    proxy_protocol_from: Vec<ipnet::IpNet>,
    /// The host's certificates, if it has any (replaced at a reload).
    provider: arc_swap::ArcSwapOption<tls::Provider>,
}

/// One client connection held by the dispatcher.
struct Held(Arc<Dispatcher>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Dispatcher {
    /// Count a new connection, or refuse it when `max_connections` are held.
    fn hold(self: &Arc<Self>) -> Option<Held> {
        let max = self.limits.max_connections;
        if self.open.fetch_add(1, Ordering::Relaxed) >= max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let last = self.cap_logged.load(Ordering::Relaxed);
            if now >= last + 60
                && self
                    .cap_logged
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                warn!("max_connections ({max}) reached: closing new connections until some end");
            }
            return None;
        }
        Some(Held(self.clone()))
    }
}

pub fn run(ipc_fd: RawFd, listener_fds: &[RawFd], run_dir: &std::path::Path) -> anyhow::Result<()> {
    crate::logging::init_tracing(None);
    if rustix::process::geteuid().is_root() {
        bail!("the dispatcher refuses to run as root");
    }
    let master_fd = sandbox::inherited_fd(ipc_fd)?;
    let listeners: Vec<OwnedFd> = listener_fds
        .iter()
        .map(|&fd| sandbox::inherited_fd(fd))
        .collect::<Result<_, _>>()?;
    // Before the runtime starts its threads, which inherit both: from here on this
    // process parses clients' bytes, so it can read only the metrics file and make only
    // the syscalls serving needs.
    if !sandbox::restrict_dispatcher(run_dir).context("landlock")? {
        tracing::warn!("the kernel has no Landlock: the dispatcher's file access is not fenced");
    }
    sandbox::restrict_dispatcher_syscalls()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("condo-dispatcher")
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        // The master may send a routing table of any size (sealed memfd).
        let master: Arc<MasterChannel> = Arc::new(Channel::new(master_fd)?.accept_sealed());
        let init = match master.recv().await? {
            Some((MasterToDispatcher::Init(init), _)) => *init,
            other => bail!("expected Init from the master, got {other:?}"),
        };
        if init.listeners.len() != listeners.len() {
            bail!(
                "master named {} listeners but passed {}",
                init.listeners.len(),
                listeners.len()
            );
        }
        serve(init, listeners, master).await
    })
}

struct Routes {
    table: RouteTable<Route>,
    unknown_host_status: u16,
}

impl Routes {
    fn new(routing: Routing) -> Self {
        let table = RouteTable::new(
            routing.routes,
            |r: &Route| {
                std::iter::once(r.site.clone())
                    .chain(r.aliases.iter().cloned())
                    .collect()
            },
            routing.default_site.as_deref(),
        );
        Self {
            table,
            unknown_host_status: routing.unknown_host_status,
        }
    }
}

async fn serve(
    init: DispatcherInit,
    listeners: Vec<OwnedFd>,
    master: Arc<MasterChannel>,
) -> anyhow::Result<()> {
    let master_for_ready = master.clone();
    let dispatcher = Arc::new(Dispatcher {
        routing: ArcSwap::from_pointee(Routes::new(init.routing)),
        limits: init.limits,
        // A connection waits for a tenant's worker no longer than a client may take to
        // send a request head: a worker that takes none in that time is failing.
        workers: Workers::new(
            master,
            workers::Queue {
                deadline: init.limits.header_timeout,
                max: init.worker_queue_max,
                relays_max: init.tenant_relays_max,
            },
        )
        .map_err(anyhow::Error::msg)?,
        metrics_file: init.metrics_file,
        admin_token: init.admin_token,
        open: AtomicUsize::new(0),
        proxy_protocol_from: init.proxy_protocol_from,
        cap_logged: AtomicU64::new(0),
        provider: arc_swap::ArcSwapOption::from(
            tls::Provider::new(init.certificates)
                .context("the host's certificates")?
                .map(Arc::new),
        ),
    });
    // Before the first accept: the master reads nothing else from us until this, and
    // a connection accepted first would ask it for a worker ahead of it.
    master_for_ready
        .send(&DispatcherToMaster::Ready, &[])
        .await
        .context("telling the master the config was taken")?;
    let mut accepting = Vec::new();
    for (fd, info) in listeners.into_iter().zip(init.listeners) {
        rustix::io::ioctl_fionbio(&fd, true)?;
        accepting.push(tokio::spawn(accept_loop(dispatcher.clone(), fd, info)).abort_handle());
    }
    let drain_target = dispatcher.clone();
    let on_drain: workers::DrainFn = Arc::new(move |grace| {
        // Dropping the accept loops closes this process's copies of the listening
        // sockets; the new master's dispatchers accept from them from now on.
        for a in &accepting {
            a.abort();
        }
        let d = drain_target.clone();
        info!(
            "draining: no new connections; leaving when the {} held end or in {grace:?}",
            d.open.load(Ordering::Relaxed)
        );
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + grace;
            while d.open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            info!(
                "drained ({} connections left); exiting",
                d.open.load(Ordering::Relaxed)
            );
            std::process::exit(0);
        });
    });
    let hand_back_target = dispatcher.clone();
    let on_hand_back: workers::HandBackFn = Arc::new(move |handoff: Handoff, fd: OwnedFd| {
        let d = hand_back_target.clone();
        tokio::spawn(async move { d.resume_handed_back(handoff, fd).await });
    });
    let reload_target = dispatcher.clone();
    let on_reload: workers::ReloadFn = Arc::new(move |routing: Routing, certificates| {
        let count = routing.routes.len();
        reload_target.routing.store(Arc::new(Routes::new(routing)));
        match certificates.map(tls::Provider::new) {
            None => {}
            Some(Ok(provider)) => reload_target.provider.store(provider.map(Arc::new)),
            // The master checked them; keep the running ones if they no longer parse.
            Some(Err(e)) => {
                warn!("reload: the host's certificates: {e:#}; keeping the old ones")
            }
        }
        info!("reloaded: routing {count} sites");
    });
    info!("dispatcher ready");
    // The master link ending means the master is gone: stop.
    dispatcher
        .workers
        .clone()
        .run_master_link(on_hand_back, on_reload, on_drain)
        .await;
    warn!("master link closed; dispatcher exiting");
    Ok(())
}

async fn accept_loop(dispatcher: Arc<Dispatcher>, listener: OwnedFd, info: ListenerInfo) {
    // The bound address (with the real port when the config said port 0); an accepted
    // socket's own address differs from it only on a wildcard listener.
    let bound = rustix::net::getsockname(&listener)
        .ok()
        .and_then(|a| SocketAddr::try_from(a).ok())
        .unwrap_or(info.addr);
    let listener = match crate::sandbox::sys::async_fd(listener, Interest::READABLE) {
        Ok(l) => l,
        Err(e) => {
            warn!("listener {}: {e}", info.addr);
            return;
        }
    };
    loop {
        // accept4 by hand rather than tokio's `TcpListener::accept`: the new socket stays
        // out of this process's reactor, as in pass mode it usually leaves after one read.
        let accepted = match listener.readable().await {
            Ok(mut ready) => ready.try_io(|l| {
                let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
                Ok(rustix::net::acceptfrom_with(l.get_ref(), flags)?)
            }),
            Err(e) => Ok(Err(e)),
        };
        match accepted {
            Err(_would_block) => continue,
            Ok(Ok((fd, peer))) => {
                let peer = peer
                    .and_then(|p| SocketAddr::try_from(p).ok())
                    .unwrap_or(bound);
                let local = if bound.ip().is_unspecified() {
                    rustix::net::getsockname(&fd)
                        .ok()
                        .and_then(|a| SocketAddr::try_from(a).ok())
                        .unwrap_or(bound)
                } else {
                    bound
                };
                if info.admin {
                    let d = dispatcher.clone();
                    tokio::spawn(async move {
                        if let Ok(stream) = tcp_stream(fd) {
                            admin::serve(
                                stream,
                                d.limits,
                                &d.metrics_file,
                                d.admin_token.as_deref(),
                            )
                            .await;
                        }
                    });
                    continue;
                }
                let Some(held) = dispatcher.hold() else {
                    // Over max_connections: closing at once is kinder than a backlog
                    // that times out, and keeps this process's memory bounded.
                    drop(fd);
                    continue;
                };
                if info.tls || info.proxy_protocol {
                    let d = dispatcher.clone();
                    tokio::spawn(async move {
                        let _held = held;
                        d.slow_start(
                            fd,
                            peer,
                            local,
                            info.tls,
                            info.proxy_protocol,
                            info.handover,
                        )
                        .await
                    });
                    continue;
                }
                let Some((fd, buf)) = dispatcher.accept_fast(fd, peer, local, info.handover) else {
                    continue;
                };
                let d = dispatcher.clone();
                let handover = info.handover;
                tokio::spawn(async move {
                    let _held = held;
                    d.accepted(fd, peer, local, handover, buf).await
                });
            }
            Ok(Err(e)) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!("accept on {}: {e}", info.addr);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

impl Dispatcher {
    /// A new connection. Clients send their request right after connecting, so try one
    /// read at once: when it brings a whole head for a pass-mode site whose worker link
    /// is up, the socket goes to the worker without a task and without ever being
    /// registered with this process's reactor. Otherwise returns the socket and the
    /// bytes read, for [`Self::accepted`].
    fn accept_fast(
        &self,
        fd: OwnedFd,
        peer: SocketAddr,
        local: SocketAddr,
        handover: Handover,
    ) -> Option<(OwnedFd, BytesMut)> {
        let mut buf = BytesMut::zeroed(4096);
        let read = rustix::io::read(&fd, &mut buf[..]);
        buf.truncate(*read.as_ref().unwrap_or(&0));
        if matches!(read, Ok(0)) {
            return None;
        }
        if handover == Handover::Pass
            && let Ok(Some(head)) = parse_request(&buf, &head_limits(&self.limits))
            && let routing = self.routing.load()
            && let Some(route) = routing.table.lookup(head.host.as_deref())
        {
            let handoff = pass_handoff(peer, local, route, &buf);
            if self.workers.try_hand_over(&route.tenant, handoff, &fd) {
                return None;
            }
        }
        Some((fd, buf))
    }

    /// A connection that needs more than a request head first: a PROXY header from a
    /// trusted balancer (which names the real client), a TLS ClientHello, or both.
    async fn slow_start(
        self: Arc<Self>,
        fd: OwnedFd,
        mut peer: SocketAddr,
        local: SocketAddr,
        tls: bool,
        proxy_protocol: bool,
        handover: Handover,
    ) {
        let Ok(mut stream) = tcp_stream(fd) else {
            return;
        };
        let mut buf = BytesMut::new();
        if proxy_protocol {
            if !self
                .proxy_protocol_from
                .iter()
                .any(|net| net.contains(&peer.ip().to_canonical()))
            {
                // Anyone else could name any client address: refused outright.
                debug!(%peer, "PROXY listener: not a trusted balancer; closing");
                return;
            }
            let deadline = tokio::time::Instant::now() + self.limits.header_timeout;
            loop {
                match crate::http::proxy_protocol::parse(&buf) {
                    crate::http::proxy_protocol::Parsed::Header { len, client } => {
                        let _ = buf.split_to(len);
                        if let Some(client) = client {
                            peer = client;
                        }
                        break;
                    }
                    crate::http::proxy_protocol::Parsed::Invalid(e) => {
                        debug!(%peer, "{e}");
                        return;
                    }
                    crate::http::proxy_protocol::Parsed::Incomplete => {}
                }
                use tokio::io::AsyncReadExt;
                match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                }
            }
        }
        if tls {
            self.tls_connection(stream, buf, peer, local).await;
        } else if buf.starts_with(crate::http::h2::PREFACE) {
            let io = crate::tls::Prefixed::new(buf.to_vec(), stream);
            self.serve_h2(io, peer, local, None).await;
        } else {
            let idle = self.limits.header_timeout;
            let conn = ClientConn::Tcp(stream);
            self.serve_connection(conn, peer, local, handover, buf, idle, None)
                .await;
        }
    }

    /// The slow path of a new connection: wait for its head, start workers, proxy.
    async fn accepted(
        self: Arc<Self>,
        fd: OwnedFd,
        peer: SocketAddr,
        local: SocketAddr,
        handover: Handover,
        buf: BytesMut,
    ) {
        let Ok(mut stream) = tcp_stream(fd) else {
            return;
        };
        let mut buf = buf;
        // Enough bytes to tell an h2c preface from an HTTP/1 request line.
        let preface = crate::http::h2::PREFACE;
        while buf.len() < preface.len() && preface.starts_with(&buf) {
            use tokio::io::AsyncReadExt;
            let read = stream.read_buf(&mut buf);
            match tokio::time::timeout(self.limits.header_timeout, read).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
        if buf.starts_with(preface) {
            // h2c with prior knowledge: always proxied, whatever the listener's mode.
            let io = crate::tls::Prefixed::new(buf.to_vec(), stream);
            self.serve_h2(io, peer, local, None).await;
            return;
        }
        let idle = self.limits.header_timeout;
        let conn = ClientConn::Tcp(stream);
        self.serve_connection(conn, peer, local, handover, buf, idle, None)
            .await;
    }

    /// A connection a worker gave back (its seal was checked: it is one this process
    /// passed to that worker, and `handoff`'s addresses are the ones it knew).
    async fn resume_handed_back(self: Arc<Self>, handoff: Handoff, fd: OwnedFd) {
        // Counted again like a new connection, and closed when max_connections are
        // held: what a worker sends back must not grow this process past its cap.
        let Some(_held) = self.hold() else {
            return;
        };
        let Ok(stream) = tcp_stream(fd) else { return };
        let buf = BytesMut::from(&handoff.buffered[..]);
        // Nothing buffered: a retiring worker gave back a connection between requests;
        // it goes on as it came, passed to the tenant's next worker.
        let (idle, handover) = if buf.is_empty() {
            (self.limits.keepalive_timeout, Handover::Pass)
        } else {
            // The worker met another tenant's request: this connection carries several
            // tenants' Hosts (a browser reusing it across sites, a shared proxy). Passing
            // it back and forth costs two fd transfers per switch; it stays here instead
            // and each request is relayed to its tenant's worker (bench/static.sh,
            // "alternate": 20k req/s passed, 32k relayed).
            (self.limits.header_timeout, Handover::Proxy)
        };
        self.serve_connection(
            ClientConn::Tcp(stream),
            handoff.peer,
            handoff.local,
            handover,
            buf,
            idle,
            None,
        )
        .await;
    }

    /// Route requests on one client connection until it is handed to a worker or closed.
    /// `tls_names`: the connection is HTTPS terminated here with a certificate for these
    /// names; a request for a Host they do not cover gets 421.
    #[allow(clippy::too_many_arguments)]
    async fn serve_connection(
        &self,
        stream: ClientConn,
        peer: SocketAddr,
        local: SocketAddr,
        handover: Handover,
        mut buf: BytesMut,
        mut idle: std::time::Duration,
        tls_names: Option<Vec<String>>,
    ) {
        let mut upstreams = proxy::Upstreams::default();
        let mut stream = SendTimeout::new(stream, self.limits.send_timeout);
        loop {
            let head = match read_head(&mut stream, &mut buf, &self.limits, idle).await {
                HeadRead::Head(h) => h,
                HeadRead::Closed | HeadRead::Io(_) => return,
                HeadRead::TimedOut => {
                    respond_and_close(&mut stream, &http::error_response(408, false, false)).await;
                    return;
                }
                HeadRead::Invalid(e) => {
                    debug!(%peer, "bad request head: {e}");
                    respond_and_close(&mut stream, &http::error_response(e.status(), false, false))
                        .await;
                    return;
                }
            };
            idle = self.limits.keepalive_timeout;
            if let Some(names) = &tls_names
                && !head
                    .host
                    .as_deref()
                    .is_some_and(|h| crate::tls::covers(names, h))
            {
                // RFC 9110 §15.5.20: this connection's certificate does not cover the Host.
                respond_and_close(
                    &mut stream,
                    &http::error_response(421, false, head.is_head()),
                )
                .await;
                return;
            }
            let routing = self.routing.load_full();
            let Some(route) = routing.table.lookup(head.host.as_deref()) else {
                let response =
                    http::error_response(routing.unknown_host_status, false, head.is_head());
                respond_and_close(&mut stream, &response).await;
                return;
            };
            match handover {
                Handover::Pass => {
                    let ClientConn::Tcp(tcp) = stream.inner else {
                        // TLS connections are always proxied (see tls_connection).
                        return;
                    };
                    match tcp.into_std() {
                        Ok(s) => self.pass(OwnedFd::from(s), peer, local, route, buf).await,
                        Err(e) => debug!("detaching the client socket: {e}"),
                    }
                    return;
                }
                Handover::Proxy => {
                    let ctx = proxy::Request {
                        head: &head,
                        route,
                        peer,
                        local,
                        limits: &self.limits,
                        secure: tls_names.is_some(),
                    };
                    match upstreams
                        .forward(&self.workers, &mut stream, &mut buf, ctx)
                        .await
                    {
                        Ok(true) => continue,
                        Ok(false) => return,
                        Err(status) => {
                            respond_and_close(
                                &mut stream,
                                &http::error_response(status, false, head.is_head()),
                            )
                            .await;
                            return;
                        }
                    }
                }
            }
        }
    }

    async fn pass(
        &self,
        fd: OwnedFd,
        peer: SocketAddr,
        local: SocketAddr,
        route: &Route,
        buf: BytesMut,
    ) {
        let handoff = pass_handoff(peer, local, route, &buf);
        // (A failure is logged by `hand_over`, rate-limited per tenant.)
        let handed = self.workers.hand_over(&route.tenant, &handoff, &fd).await;
        if handed.is_err()
            && let Ok(mut stream) = tcp_stream(fd)
        {
            respond_and_close(&mut stream, &http::error_response(503, false, false)).await;
        }
        // Our copy of the socket closes here; the worker's copy carries the connection.
    }
}

/// Register a client socket with the reactor. Every client socket here was accepted
/// with SOCK_NONBLOCK (handed-back ones too: the flag lives in the shared open file).
fn tcp_stream(fd: OwnedFd) -> std::io::Result<TcpStream> {
    TcpStream::from_std(std::net::TcpStream::from(fd))
}

fn pass_handoff(peer: SocketAddr, local: SocketAddr, route: &Route, buf: &[u8]) -> Handoff {
    Handoff {
        handover: Handover::Pass,
        peer,
        local,
        site: route.site.clone(),
        buffered: buf.to_vec(),
        tls_handshake: false,
        secure: false,
        // Set by `Workers` when it hands the connection over.
        seal: [0; 32],
    }
}
