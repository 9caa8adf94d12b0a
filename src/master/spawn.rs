//! Binding listeners and starting children: the master's privileged actions.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::Child;
use tracing::{error, info, warn};

use super::cgroup::TenantGroup;
use super::logs::LogFiles;
use super::{DispatcherChannel, WorkerChannel};
use crate::config::{Config, Credentials, Handover, IsolationMode, Site, Tenant};
use crate::ipc::{
    self, Channel, DispatcherInit, ListenerInfo, LogKind, MasterToDispatcher, MasterToWorker,
    ProviderCertPem, Route, Routing, WorkerInit,
};
use crate::sandbox::{self, SandboxPlan};
use std::net::SocketAddr;

/// Bind every configured listener. The master keeps them for its whole life, so a
/// dispatcher restart never refuses a connection attempt.
///
/// With several dispatchers each gets its own set of sockets bound with SO_REUSEPORT, so
/// the kernel spreads new connections across them instead of waking them all for each
/// (port 0 in the config is resolved by the first set and reused by the others).
///
/// The admin listener, if configured, is one socket served by the first dispatcher.
///
/// Sockets an old master handed over (binary upgrade) are taken instead of binding
/// where the slot and the configured address match, so not one connection attempt is
/// refused across the upgrade.
pub async fn bind_listeners(
    config: &Config,
    inherited: &mut Inherited,
) -> anyhow::Result<Vec<Vec<Bound>>> {
    let count = config.server.dispatchers;
    let mut sets: Vec<Vec<Bound>> = Vec::with_capacity(count);
    for set in 0..count {
        let resolved: Option<Vec<std::net::SocketAddr>> = sets.first().map(|first| {
            first
                .iter()
                .filter_map(|b| rustix::net::getsockname(&b.fd).ok())
                .filter_map(|a| std::net::SocketAddr::try_from(a).ok())
                .collect()
        });
        sets.push(bind_set(config, set, resolved.as_deref(), count > 1, inherited).await?);
    }
    if let (Some(addr), Some(first)) = (config.server.admin_listen, sets.first_mut()) {
        let bound = match inherited.take(0, ADMIN_SLOT, addr) {
            Some(fd) => adopt(fd, Handover::Proxy, false, false, addr, true)?,
            None => bind_one(Handover::Proxy, false, false, addr, false, true, true).await?,
        };
        first.push(bound);
    }
    Ok(sets)
}

/// The admin listener's index in [`Inherited`].
const ADMIN_SLOT: usize = usize::MAX;
/// Names the listening sockets an old master hands a new one: `set:index:addr:fd;...`.
pub const INHERITED_ENV: &str = "CONDO_INHERITED_LISTENERS";
/// An fd the new master writes `ready` to once it serves.
pub const READY_ENV: &str = "CONDO_UPGRADE_READY_FD";

/// Listening sockets inherited from an old master, by (dispatcher set, listener
/// index, configured address).
#[derive(Default)]
pub struct Inherited(Vec<(usize, usize, SocketAddr, OwnedFd)>);

impl Inherited {
    /// What the old master named in the environment; nothing when started normally.
    pub fn from_env() -> anyhow::Result<Self> {
        let Ok(text) = std::env::var(INHERITED_ENV) else {
            return Ok(Self::default());
        };
        let mut found = Vec::new();
        for entry in text.split(';').filter(|e| !e.is_empty()) {
            let bad = || anyhow::anyhow!("{INHERITED_ENV}: bad entry `{entry}`");
            let mut parts = entry.splitn(3, ':');
            let set: usize = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
            let index: usize = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
            let (addr, fd) = parts
                .next()
                .and_then(|r| r.rsplit_once(':'))
                .ok_or_else(bad)?;
            let addr: SocketAddr = addr.parse().map_err(|_| bad())?;
            let fd = sandbox::inherited_fd(fd.parse().map_err(|_| bad())?)?;
            found.push((set, index, addr, fd));
        }
        Ok(Self(found))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, set: usize, index: usize, configured: SocketAddr) -> Option<OwnedFd> {
        let i = self
            .0
            .iter()
            .position(|(s, x, a, _)| *s == set && *x == index && *a == configured)?;
        Some(self.0.swap_remove(i).3)
    }

    /// Sockets the new config no longer has: closed now.
    pub fn leftover(&self) -> usize {
        self.0.len()
    }
}

/// A listening socket and what the dispatcher needs to know of it.
pub struct Bound {
    pub fd: OwnedFd,
    pub info: ListenerInfo,
    /// The address as the config names it (port 0 stays 0): what a new master matches
    /// when it takes this socket over.
    pub configured: SocketAddr,
}

/// Start the binary at `exe` as a new master for `config`, handing it every listening
/// socket. `Ok((child, ready))`: `ready` becomes readable (`ready\n`) once the new
/// master serves, or hits end-of-file if it gave up.
pub fn start_new_master(
    exe: &Path,
    config: &Config,
    sets: &[&[Bound]],
    cgroup_locks: &[std::os::fd::RawFd],
) -> anyhow::Result<(Child, OwnedFd)> {
    let (ready_read, ready_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .context("making the readiness pipe")?;
    let mut named = String::new();
    let mut fds = vec![ready_write.as_raw_fd()];
    for (set, bound) in sets.iter().enumerate() {
        for (index, b) in bound.iter().enumerate() {
            let index = if b.info.admin { ADMIN_SLOT } else { index };
            let fd = b.fd.as_raw_fd();
            named.push_str(&format!("{set}:{index}:{}:{fd};", b.configured));
            fds.push(fd);
        }
    }
    // The cgroup parent's lock stays held across the hand-over: both masters share it.
    fds.extend_from_slice(cgroup_locks);
    let locks: Vec<String> = cgroup_locks.iter().map(|fd| fd.to_string()).collect();
    // Root stays root (no credentials) and does not die with the old master, which
    // is about to leave.
    let plan = SandboxPlan {
        die_with_parent: false,
        sealed_image: false,
        ..SandboxPlan::new(None, fds)
    };
    let args: Vec<&std::ffi::OsStr> =
        vec!["serve".as_ref(), "-c".as_ref(), config.file.as_os_str()];
    let mut cmd = sandbox::command(exe, &args, plan).context("starting the new master")?;
    // Under systemd the new master reports to the same socket (NotifyAccess=all).
    if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
        cmd.env("NOTIFY_SOCKET", socket);
    }
    cmd.env(INHERITED_ENV, named)
        .env(super::cgroup::LOCKS_ENV, locks.join(","))
        .env(READY_ENV, ready_write.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .current_dir("/");
    let child = cmd.spawn().context("starting the new master")?;
    drop(ready_write);
    Ok((child, ready_read))
}

/// A socket handed over by an old master, described as [`bind_one`] describes its own.
fn adopt(
    fd: OwnedFd,
    handover: Handover,
    tls: bool,
    proxy_protocol: bool,
    configured: SocketAddr,
    admin: bool,
) -> anyhow::Result<Bound> {
    let addr = rustix::net::getsockname(&fd)
        .ok()
        .and_then(|a| SocketAddr::try_from(a).ok())
        .context("an inherited listener has no address")?;
    info!("listening on {addr} (taken over from the old master)");
    Ok(Bound {
        fd,
        info: ListenerInfo {
            addr,
            handover,
            admin,
            tls,
            proxy_protocol,
        },
        configured,
    })
}

async fn bind_set(
    config: &Config,
    set: usize,
    resolved: Option<&[std::net::SocketAddr]>,
    reuse_port: bool,
    inherited: &mut Inherited,
) -> anyhow::Result<Vec<Bound>> {
    let mut bound = Vec::new();
    for (i, l) in config.server.listeners.iter().enumerate() {
        if let Some(fd) = inherited.take(set, i, l.addr) {
            bound.push(adopt(
                fd,
                l.handover,
                l.tls,
                l.proxy_protocol,
                l.addr,
                false,
            )?);
            continue;
        }
        let addr = resolved.and_then(|r| r.get(i).copied()).unwrap_or(l.addr);
        let announce = resolved.is_none();
        let mut b = bind_one(
            l.handover,
            l.tls,
            l.proxy_protocol,
            addr,
            reuse_port,
            announce,
            false,
        )
        .await?;
        b.configured = l.addr;
        bound.push(b);
    }
    Ok(bound)
}

#[allow(clippy::too_many_arguments)]
async fn bind_one(
    handover: Handover,
    tls: bool,
    proxy_protocol: bool,
    addr: SocketAddr,
    reuse_port: bool,
    announce: bool,
    admin: bool,
) -> anyhow::Result<Bound> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .context("creating a socket")?;
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    // Accepted sockets inherit TCP_NODELAY on Linux: set once here, not per connection.
    socket.set_nodelay(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr}"))?;
    let listener = socket
        .listen(4096)
        .with_context(|| format!("listening on {addr}"))?;
    let bound = listener.local_addr()?;
    if admin {
        info!("admin listener on {bound} (/metrics, /health)");
    } else if announce {
        let name = match (tls, handover) {
            (true, _) => "(tls",
            (false, Handover::Pass) => "(handover pass",
            (false, Handover::Proxy) => "(handover proxy",
        };
        let pp = if proxy_protocol {
            ", proxy protocol"
        } else {
            ""
        };
        info!("listening on {bound} {name}{pp})");
    }
    Ok(Bound {
        fd: OwnedFd::from(listener.into_std()?),
        info: ListenerInfo {
            addr: bound,
            handover,
            admin,
            tls,
            proxy_protocol,
        },
        configured: addr,
    })
}

/// The host's certificates and keys, read here as root for the dispatcher, which
/// runs as an account that may not read them itself.
pub fn provider_certificates(config: &Config) -> anyhow::Result<Vec<ProviderCertPem>> {
    config
        .certificates
        .iter()
        .map(|c| {
            // The admin's files, yet read as root: no link anyone else could have made
            // is followed, nothing but a regular file of sane size is read.
            let read = |p: &Path| {
                sandbox::resolve::read_trusted(p, None, MAX_PEM)
                    .with_context(|| format!("reading {}", p.display()))
            };
            Ok(ProviderCertPem {
                names: c.names.clone(),
                default: c.default,
                cert_pem: read(&c.cert)?,
                key_pem: read(&c.key)?,
            })
        })
        .collect()
}

/// A PEM file larger than this is not a certificate chain or a key.
const MAX_PEM: u64 = 4 << 20;

/// Host → site → tenant, all the dispatcher knows of the sites.
pub fn routing(config: &Config) -> Routing {
    Routing {
        routes: config
            .sites
            .iter()
            .map(|s| Route {
                site: s.name.clone(),
                aliases: s.aliases.clone(),
                tenant: s.tenant.clone(),
                own_tls: s.tls.is_some(),
            })
            .collect(),
        default_site: config.server.default_site.clone(),
        unknown_host_status: config.server.unknown_host_status,
    }
}

/// Where the master writes the Prometheus text the dispatcher serves.
pub fn metrics_file(config: &Config) -> std::path::PathBuf {
    config.server.run_dir.join("metrics.prom")
}

fn fd_arg(fd: &OwnedFd) -> OsString {
    fd.as_raw_fd().to_string().into()
}

pub async fn start_dispatcher(
    exe: &Path,
    config: &Config,
    credentials: Option<Credentials>,
    listeners: &[Bound],
) -> anyhow::Result<(Child, DispatcherChannel, MasterToDispatcher)> {
    let (ours, theirs) = ipc::raw_pair().context("socketpair")?;
    let metrics = metrics_file(config);
    let run_dir = metrics.parent().unwrap_or(Path::new("/"));
    let mut args: Vec<OsString> = vec![
        "dispatcher".into(),
        "--ipc-fd".into(),
        fd_arg(&theirs),
        "--run-dir".into(),
        run_dir.into(),
    ];
    for l in listeners {
        args.push("--listener-fd".into());
        args.push(fd_arg(&l.fd));
    }
    let mut inherit: Vec<_> = listeners.iter().map(|l| l.fd.as_raw_fd()).collect();
    inherit.push(theirs.as_raw_fd());
    let plan = SandboxPlan::new(credentials, inherit);
    let child = spawn_child(exe, &args, plan, "dispatcher")?;
    drop(theirs);
    let channel: DispatcherChannel = Channel::new(ours)?;
    let init = DispatcherInit {
        listeners: listeners.iter().map(|l| l.info.clone()).collect(),
        routing: routing(config),
        limits: config.server.limits,
        worker_queue_max: config.server.worker_queue_max,
        tenant_relays_max: config.server.tenant_relays_max,
        metrics_file: metrics.clone(),
        admin_token: super::admin_token::load(config)?,
        certificates: provider_certificates(config)?,
        proxy_protocol_from: config.server.proxy_protocol_from.clone(),
    };
    // The caller sends this once it watches the child: a dispatcher that dies at
    // once must be seen exiting, not make the send fail the master.
    Ok((child, channel, MasterToDispatcher::Init(Box::new(init))))
}

/// What the master decided about a worker it is about to start.
pub struct WorkerStart<'a> {
    pub tenant: &'a Tenant,
    /// `None` when condo runs unprivileged.
    pub credentials: Option<Credentials>,
    pub sites: Vec<Site>,
    pub cgroup: Option<&'a TenantGroup>,
    /// The tenant's own config layer its last worker found good.
    pub user_layer: Option<Vec<crate::config::user::SiteLayer>>,
}

pub async fn start_worker(
    exe: &Path,
    start: WorkerStart<'_>,
    config: &Config,
    logs: &LogFiles,
) -> anyhow::Result<(Child, WorkerChannel, Vec<(MasterToWorker, OwnedFd)>)> {
    let WorkerStart {
        tenant: tenant_config,
        credentials,
        sites,
        cgroup,
        user_layer,
    } = start;
    // `~/` is the tenant's home; the path is only named here, the worker opens it.
    let user_config =
        tenant_config
            .user_config
            .as_ref()
            .map(|p| match (p.strip_prefix("~/"), &credentials) {
                (Some(rest), Some(c)) => c.home.join(rest),
                _ => PathBuf::from(p),
            });
    let tenant = tenant_config.name.as_str();
    let limits = &tenant_config.limits;
    let pool = tenant_config.pool.clone();
    // Opened by root, readable by the tenant's group, writable only through the fd the
    // worker gets: the tenant can read its access logs but never rewrite them.
    let gid = credentials.as_ref().map(|c| c.gid);
    let mut site_logs = Vec::new();
    for site in &sites {
        for kind in [LogKind::Access, LogKind::Error] {
            // A log that cannot be opened (disk full, directory gone or read-only)
            // must not keep the tenant from being served: its lines are dropped and
            // the reason is in the error log.
            let file = match logs.open_site_log(&site.name, kind, gid) {
                Ok(f) => f,
                Err(e) => {
                    error!(
                        tenant,
                        site = site.name,
                        "{e:#}; the site is served without this log"
                    );
                    std::fs::File::options()
                        .append(true)
                        .open("/dev/null")
                        .context("opening /dev/null")?
                }
            };
            site_logs.push((site.name.clone(), kind, file));
        }
    }
    let (ours, theirs) = ipc::raw_pair().context("socketpair")?;
    let args: Vec<OsString> = vec![
        "worker".into(),
        "--tenant".into(),
        tenant.into(),
        "--ipc-fd".into(),
        fd_arg(&theirs),
        "--threads".into(),
        config.server.worker_threads.to_string().into(),
    ];
    // Open before the fork, written by the child: it is in the tenant's group from its
    // first instruction, and so is everything it ever starts.
    let procs = match cgroup {
        Some(group) => group
            .procs_files()
            .context("opening the tenant's cgroup.procs")?,
        None => Vec::new(),
    };
    let fence = tenant_fence(exe, tenant_config, credentials.as_ref(), &sites)?;
    let plan = SandboxPlan {
        cgroup_procs: procs.iter().map(|f| f.as_raw_fd()).collect(),
        rlimits: limits.worker_rlimits(),
        nice: limits.nice,
        fence: fence.map(std::sync::Arc::new),
        ..SandboxPlan::new(credentials, vec![theirs.as_raw_fd()])
    };
    let child = spawn_child(exe, &args, plan, &format!("worker {tenant}"))?;
    drop(procs);
    drop(theirs);
    let channel: WorkerChannel = Channel::new(ours)?;
    let init = WorkerInit {
        tenant: tenant.to_string(),
        sites,
        limits: config.server.limits,
        pool,
        user_config,
        user_config_locked: tenant_config.user_config_locked.clone(),
        user_layer_last_good: user_layer,
        memory_max: cgroup.and(limits.memory_max),
        pids_max: cgroup.and(limits.pids_max),
    };
    channel
        .send_large(&MasterToWorker::Init(Box::new(init)), &[])
        .await
        .context("sending the worker its config")?;
    // The site logs are the caller's to send, through the worker's outbox: two per
    // site can be more than the channel holds, and the master's loop must not wait
    // for a worker (its tenant's code can stop it) to read them.
    let mut site_logs: Vec<(MasterToWorker, OwnedFd)> = site_logs
        .into_iter()
        .map(|(site, kind, log)| (MasterToWorker::SiteLog { site, kind }, log.into()))
        .collect();
    if let Some(counter) = cgroup.and_then(TenantGroup::oom_counter) {
        site_logs.push((MasterToWorker::OomCounter, counter.into()));
    }
    Ok((child, channel, site_logs))
}

/// The filters (and the cage) around a tenant's worker, from its `isolation`.
fn tenant_fence(
    exe: &Path,
    tenant: &Tenant,
    credentials: Option<&Credentials>,
    sites: &[Site],
) -> anyhow::Result<Option<sandbox::TenantFence>> {
    let isolation = &tenant.isolation;
    if isolation.mode == IsolationMode::Cage && credentials.is_none() {
        bail!(
            "tenant {} has isolation = \"cage\", which needs condo to run as root",
            tenant.name
        );
    }
    let (own, read_files) = sandbox::tenant_paths(credentials, sites);
    let paths = sandbox::TenantPaths {
        own,
        read_files,
        allow_read: &isolation.allow_read,
        allow_write: &isolation.allow_write,
        exe,
        uid: credentials.map(|c| c.uid),
    };
    let fence = sandbox::TenantFence::new(isolation.mode, &paths)
        .with_context(|| format!("preparing the isolation of tenant {}", tenant.name))?;
    if let Some(f) = &fence
        && f.landlock.is_none()
    {
        warn!(
            tenant = %tenant.name,
            "the kernel has no Landlock: the tenant's file access is fenced by file modes only"
        );
    }
    Ok(fence)
}

fn spawn_child(
    exe: &Path,
    args: &[OsString],
    plan: SandboxPlan,
    role: &str,
) -> anyhow::Result<Child> {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let mut cmd =
        sandbox::command(exe, &args, plan).with_context(|| format!("starting the {role}"))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .current_dir("/");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting the {role}"))?;
    if let Some(stderr) = child.stderr.take() {
        // Children log to a pipe; the master copies their lines to its own log, so the
        // error log gets everything and no child holds the log file open for writing.
        // Bounded per line and per second, in fixed memory: a worker's lines carry
        // tenant text (its config's keys), and the master must not buffer it.
        tokio::spawn(crate::logging::copy_child_stderr(stderr, role.to_string()));
    }
    Ok(child)
}

/// Wait for a child and describe how it ended.
pub async fn wait(mut child: Child) -> String {
    match child.wait().await {
        Ok(status) => status.to_string(),
        Err(e) => format!("wait failed: {e}"),
    }
}

/// Send TERM to our own children by pid, then KILL whatever still runs after `grace`.
pub async fn terminate(pids: &[u32], grace: Duration) {
    let alive = |pid: u32| {
        rustix::process::Pid::from_raw(pid as i32)
            .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
    };
    for &pid in pids {
        if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
    }
    let deadline = Instant::now() + grace;
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for &pid in pids {
        if alive(pid) {
            warn!(pid, "did not stop in {grace:?}; killing");
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
    }
}
