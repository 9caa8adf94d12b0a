//! Messages between condo's processes: one enum per direction, carried by [`Channel`].
//!
//! ```text
//! master ──DispatcherInit, WorkerReady──► dispatcher ──WantWorker──► master
//! master ──WorkerInit, NewPeer, Retire──► worker ──Retire──► master
//! dispatcher ──Connection, Retired──► worker ──HandBack, Retiring──► dispatcher
//! ```
//! A worker leaves (idle, `max_requests`, `worker_memory_max`) in three steps so no
//! connection is lost: it asks the master, which stops giving it to dispatchers and
//! says `Retire`; it then tells each dispatcher `Retiring`, and each answers `Retired`
//! as its last message on that link; the worker finishes what it holds and exits.
//! The dispatcher can only *name* a tenant; credentials never cross a channel towards
//! the master (invariant 4).

mod channel;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use channel::{Channel, MAX_FDS, MAX_MESSAGE, MAX_SEALED_MESSAGE, parse_frame, raw_pair};

use crate::config::{ClientLimits, Handover, Pool, Site};

/// What the dispatcher needs of the config: routes and limits, no paths, no accounts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DispatcherInit {
    /// One per listener fd named on the dispatcher's command line, in the same order.
    pub listeners: Vec<ListenerInfo>,
    pub routing: Routing,
    pub limits: ClientLimits,
    /// Connections that may wait at once for one tenant's worker.
    pub worker_queue_max: usize,
    /// Connections of one tenant's sites relayed at once.
    pub tenant_relays_max: usize,
    pub certificates: Vec<ProviderCertPem>,
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// The Prometheus text the master rewrites every few seconds, served on the admin
    /// listener.
    pub metrics_file: PathBuf,
    /// The bearer token `/metrics` requires; `None`: `/metrics` is refused to all.
    pub admin_token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerInfo {
    pub addr: SocketAddr,
    pub handover: Handover,
    /// The admin listener: metrics and health, no sites.
    pub admin: bool,
    /// HTTPS.
    pub tls: bool,
    /// Connections start with a PROXY header.
    pub proxy_protocol: bool,
}

/// One of the host's certificates, read by the master (the dispatcher may not read the
/// host's key files itself).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderCertPem {
    pub names: Vec<String>,
    pub default: bool,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// A site as the dispatcher sees it: host names and the tenant that serves them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Route {
    pub site: String,
    pub aliases: Vec<String>,
    pub tenant: String,
    /// The site has its own certificate: HTTPS for it ends in the tenant's worker.
    pub own_tls: bool,
}

/// What a reload changes in a running dispatcher.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Routing {
    pub routes: Vec<Route>,
    pub default_site: Option<String>,
    pub unknown_host_status: u16,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum MasterToDispatcher {
    Init(Box<DispatcherInit>),
    /// The config was reloaded: route by these, and use these certificates (read
    /// again), from the next connection on.
    Reload {
        routing: Routing,
        /// `None`: keep the ones in use (they could not be read again).
        certificates: Option<Vec<ProviderCertPem>>,
    },
    /// Answer to [`DispatcherToMaster::WantWorker`]: on `Ok` one fd, a channel end
    /// connected to the tenant's worker.
    Worker {
        tenant: String,
        result: Result<(), String>,
    },
    /// A new master took over the listening sockets (binary upgrade): stop
    /// accepting, serve the connections held, exit when none is left or after `grace`.
    Drain {
        grace: std::time::Duration,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum DispatcherToMaster {
    WantWorker {
        tenant: String,
    },
    /// The dispatcher took its [`DispatcherInit`] and accepts connections (the master
    /// tells systemd READY only after every dispatcher said this).
    Ready,
}

/// What a worker needs: its own tenant's sites only (invariant 3: no other tenant's
/// configuration ever reaches its memory).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerInit {
    pub tenant: String,
    pub sites: Vec<Site>,
    pub limits: ClientLimits,
    pub pool: Pool,
    /// The tenant's own config layer, to be read by the worker (as the tenant).
    pub user_config: Option<PathBuf>,
    pub user_config_locked: Vec<String>,
    /// The layer the last worker found good: kept when the file now has errors.
    pub user_layer_last_good: Option<Vec<crate::config::user::SiteLayer>>,
    /// The tenant's cgroup limits as enforced (`None`: no cap, or no cgroup), named in
    /// the site's error log when a script meets them.
    #[serde(default)]
    pub memory_max: Option<u64>,
    #[serde(default)]
    pub pids_max: Option<u64>,
}

/// The two logs every site has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogKind {
    /// `<site>.access.log`: one line per request.
    Access,
    /// `<site>.error.log`: what the site's scripts write to stderr, and why a request
    /// to them failed.
    Error,
}

impl LogKind {
    pub fn file_suffix(self) -> &'static str {
        match self {
            LogKind::Access => "access.log",
            LogKind::Error => "error.log",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum MasterToWorker {
    /// First message; followed by the `SiteLog`s of every site before any `NewPeer`.
    Init(Box<WorkerInit>),
    /// One fd: a log file of the site, opened by the master for appending.
    SiteLog { site: String, kind: LogKind },
    /// One fd: a channel end to a dispatcher, which will send [`DispatcherToWorker`].
    NewPeer,
    /// One fd: the tenant group's OOM-kill counter (cgroup v1 `memory.oom_control`,
    /// v2 `memory.events`), read-only.
    OomCounter,
    /// No fd. Answer to [`WorkerToMaster::Retire`]: no new dispatcher link will come;
    /// tell the ones you have, drain and exit.
    Retire,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum WorkerToMaster {
    /// The worker wants to be replaced (it is idle, or reached `max_requests` or
    /// `worker_memory_max`); `reason` goes to the log.
    Retire { reason: String },
    /// What the worker counted per site since its last report (every few seconds,
    /// and once more when it leaves).
    Usage(Vec<crate::accounting::SiteDelta>),
    /// What each site holds right now (for `condo status`), with each usage report.
    Load(Vec<crate::accounting::SiteLoad>),
    /// The tenant's own config layer the worker read and found good.
    UserLayer(Vec<crate::config::user::SiteLayer>),
}

/// A client connection changing hands, with one fd: the client socket (pass) or a
/// stream to the dispatcher's relay (proxy).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handoff {
    pub handover: Handover,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The site the dispatcher routed the first request to.
    pub site: String,
    /// Bytes already read from the client and not yet consumed, starting with the head
    /// of the request to serve next (or, with `tls_handshake`, with the ClientHello).
    pub buffered: Vec<u8>,
    /// The socket is a raw TLS connection for a site with its own certificate: the
    /// worker does the handshake.
    pub tls_handshake: bool,
    /// The client's connection is HTTPS (terminated by the dispatcher or the worker).
    pub secure: bool,
    /// The dispatcher's MAC over this socket's identity, the tenant it went to and the
    /// fields above but `buffered` (see `dispatcher::seal`). A worker hands it back
    /// unchanged with the connection; the dispatcher resumes only a connection whose
    /// seal it can recompute, so a hand-back cannot name another socket or addresses.
    pub seal: [u8; 32],
}

#[derive(Debug, Serialize, Deserialize)]
pub enum DispatcherToWorker {
    Connection(Handoff),
    /// Answer to [`WorkerToDispatcher::Retiring`], and the last message on this link.
    Retired,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum WorkerToDispatcher {
    /// The next request on this connection is not for this worker's tenant: the
    /// connection's `Handoff` as it came (same `seal`), with `buffered` starting with
    /// that request's head.
    HandBack(Handoff),
    /// The worker is leaving: send nothing more but [`DispatcherToWorker::Retired`].
    Retiring,
}
