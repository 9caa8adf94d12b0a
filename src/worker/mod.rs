//! A tenant's worker: runs as the tenant's uid (set by the master before exec) and
//! serves that tenant's sites only. It takes connections from dispatchers, answers
//! them, and hands a connection back when its next request is for another tenant.

mod access_log;
mod app;
pub(crate) mod caps;
pub(crate) mod cgi;
pub(crate) mod conn;
pub(crate) mod fastcgi;
mod gate;
mod h2;
mod lifecycle;
mod response;
pub mod static_files;
mod stream;
mod target;

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;

use anyhow::{Context, bail};
use tracing::{info, warn};

use crate::config::{ClientLimits, Site};
use crate::http::routing::RouteTable;
use crate::ipc::{
    Channel, DispatcherToWorker, LogKind, MasterToWorker, WorkerToDispatcher, WorkerToMaster,
};
use crate::sandbox;
use static_files::SiteFiles;

pub type PeerChannel = Channel<WorkerToDispatcher, DispatcherToWorker>;

/// One of this tenant's sites, ready to serve.
pub struct SiteState {
    pub config: Site,
    /// The site root opened as the tenant; `Err` says why it could not be (every
    /// request to the site then gets 500 and the reason is in the error log).
    pub files: Result<SiteFiles, String>,
    pub access_log: Arc<LogSlot>,
    pub error_log: Arc<LogSlot>,
    /// The FastCGI process pools of the site's routes (same index as `config.routes`).
    pub fastcgi: Vec<Option<Arc<fastcgi::pool::Pool>>>,
    /// The app processes of the site's `handler = "app"` routes (same index).
    pub apps: Vec<Option<Arc<app::process::App>>>,
    /// `max_clients` and its queue, if the site has a cap.
    pub gate: Option<gate::Gate>,
    /// Requests and bytes, reported to the master for accounting.
    pub counters: crate::accounting::SiteCounters,
    /// Connections now serving this site (for `max_connections`).
    pub open_connections: std::sync::atomic::AtomicUsize,
    /// The site's own certificate, read as the tenant; `Err` says why it could not be
    /// (its HTTPS connections are then closed and the reason is in the error log).
    pub tls: Option<Result<Arc<rustls::ServerConfig>, String>>,
}

/// A site log file the master opened. Replaced when the master reopens the logs
/// (SIGUSR1, after logrotate moved them); long-lived writers hold the slot, not a file.
#[derive(Default)]
pub struct LogSlot {
    file: arc_swap::ArcSwapOption<File>,
    /// When a write last failed and was reported (seconds since the epoch).
    reported_failure: std::sync::atomic::AtomicU64,
}

impl LogSlot {
    pub fn get(&self) -> Option<Arc<File>> {
        self.file.load_full()
    }

    fn set(&self, file: File) {
        self.file.store(Some(Arc::new(file)));
    }

    /// Best effort: a full disk must not fail a request. A failure is reported in the
    /// error log (which also goes to stderr, i.e. the journal) at most once a minute.
    pub fn write(&self, bytes: &[u8]) {
        use std::io::Write as _;
        use std::sync::atomic::Ordering;
        let Some(file) = self.file.load_full() else {
            return;
        };
        if let Err(e) = (&*file).write_all(bytes) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let last = self.reported_failure.load(Ordering::Relaxed);
            if now >= last + 60
                && self
                    .reported_failure
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                use std::os::fd::AsRawFd as _;
                let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
                    .map_or_else(|_| "a site log".to_string(), |p| p.display().to_string());
                warn!(
                    "writing {path} failed: {e}; serving goes on, lines are lost until it can be written (reported once a minute)"
                );
            }
        }
    }
}

pub struct Tenant {
    pub name: String,
    pub limits: ClientLimits,
    pub lifecycle: Arc<lifecycle::Lifecycle>,
    pub sites: RouteTable<Arc<SiteState>>,
    by_name: HashMap<String, Arc<SiteState>>,
    /// The tenant's cgroup limits, to name them when a script meets one.
    pub caps: caps::Caps,
}

impl Tenant {
    pub fn site_named(&self, name: &str) -> Option<&Arc<SiteState>> {
        self.by_name.get(name)
    }
}

/// PATH for the tenant's processes unless the site's `env` sets one.
pub(crate) const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Put the site's `env` into a process's (already cleared) environment; returns the
/// PATH the caller sets, as the site chose it or [`DEFAULT_PATH`].
fn site_env(command: &mut tokio::process::Command, site: &Site) -> String {
    let mut path = DEFAULT_PATH.to_string();
    for (name, value) in &site.env {
        if name == "PATH" {
            path = value.clone();
        } else {
            command.env(name, value);
        }
    }
    path
}

pub fn run(tenant: &str, ipc_fd: RawFd, threads: usize) -> anyhow::Result<()> {
    // First of all: the tenant's own processes must not be able to ptrace us or read
    // our memory through /proc. The kernel made us so at exec (the master has us exec
    // an image the tenant may not read, see sandbox::sealed_image); said again here so
    // a worker started any other way is not left dumpable.
    sandbox::make_undumpable().context("making the worker non-dumpable")?;
    // Exec'd through /proc/self/fd/N, the process would be named "N" in ps and top.
    let _ = rustix::thread::set_name(c"condo");
    crate::logging::init_tracing(None);
    if rustix::process::geteuid().is_root() {
        bail!("a tenant worker refuses to run as root");
    }
    let master_fd = sandbox::inherited_fd(ipc_fd)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .thread_name("condo-worker")
        .build()
        .context("starting the runtime")?;
    let name = tenant.to_string();
    let result = runtime.block_on(async move { serve(name, master_fd).await });
    // A read of a tenant file that never returned (given up after its timeout) holds a
    // blocking-pool thread; dropping the runtime would wait for it forever.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn serve(name: String, master_fd: OwnedFd) -> anyhow::Result<()> {
    // A tenant with many sites gets a config past one frame (sealed memfd).
    let master: Arc<Channel<WorkerToMaster, MasterToWorker>> =
        Arc::new(Channel::new(master_fd)?.accept_sealed());
    let init = match master.recv().await? {
        Some((MasterToWorker::Init(init), _)) => init,
        other => bail!("expected Init from the master, got {other:?}"),
    };
    if init.tenant != name {
        bail!(
            "master sent the config of tenant `{}` to the worker of `{name}`",
            init.tenant
        );
    }
    let mut site_configs = init.sites;
    // The tenant's own layer: read here, as the tenant. Its mistakes go to the
    // server's log now and into each site's error log once the master hands it over.
    let mut layer_errors: Option<String> = None;
    if let Some(path) = &init.user_config {
        let layer = user_layer(path, &site_configs, &init.user_config_locked, &init.pool).await;
        let layer = match layer {
            Ok(layer) => {
                info!(tenant = name, path = %path.display(), sites = layer.len(), "tenant config layer applied");
                if let Err(e) = master
                    .send(&WorkerToMaster::UserLayer(layer.clone()), &[])
                    .await
                {
                    warn!("reporting the tenant's config layer: {e}");
                }
                layer
            }
            Err(text) => {
                let kept = if init.user_layer_last_good.is_some() {
                    "the last good version of it keeps applying"
                } else {
                    "the admin's settings apply alone"
                };
                let text = format!(
                    "{text}\ncondo: {} was not applied; {kept}\n",
                    path.display()
                );
                // One event per line: each is escaped and bounded already.
                for line in text.lines() {
                    warn!(tenant = name, "{line}");
                }
                layer_errors = Some(text);
                init.user_layer_last_good.clone().unwrap_or_default()
            }
        };
        for l in &layer {
            if let Some(site) = site_configs.iter_mut().find(|s| s.name == l.site) {
                crate::config::user::apply(site, l);
            }
        }
    }
    // Every site's own certificate at once: a file that stalls costs its own timeout,
    // not one per site after it.
    let certificates: Vec<_> = site_configs
        .iter()
        .map(|s| {
            let site = s.clone();
            s.tls
                .is_some()
                .then(|| tokio::spawn(async move { site_tls(&site).await }))
        })
        .collect();
    let mut sites: Vec<Arc<SiteState>> = Vec::with_capacity(site_configs.len());
    for (config, certificate) in site_configs.into_iter().zip(certificates) {
        let tls = match certificate {
            None => None,
            Some(job) => Some(match job.await {
                Ok(result) => result,
                Err(e) => Err(anyhow::anyhow!("reading it failed: {e}")),
            }),
        };
        sites.push(Arc::new(open_site(config, tls)));
    }
    for site in &sites {
        for pool in site.fastcgi.iter().flatten() {
            pool.warm(site);
        }
    }
    let by_name = sites
        .iter()
        .map(|s| (s.config.name.clone(), s.clone()))
        .collect();
    let lifecycle = lifecycle::Lifecycle::new(init.pool.clone());
    // Long enough for a request at its timeout, and for a proxied keep-alive client.
    let drain_grace = init.pool.request_timeout.max(init.limits.keepalive_timeout);
    let tenant = Arc::new(Tenant {
        name: name.clone(),
        limits: init.limits,
        lifecycle: lifecycle.clone(),
        sites: RouteTable::new(
            sites,
            |s: &Arc<SiteState>| {
                std::iter::once(s.config.name.clone())
                    .chain(s.config.aliases.iter().cloned())
                    .collect()
            },
            None,
        ),
        by_name,
        caps: caps::Caps::new(init.memory_max, init.pids_max),
    });
    info!(
        tenant = name,
        uid = rustix::process::getuid().as_raw(),
        "worker ready"
    );
    let asker = master.clone();
    tokio::spawn(lifecycle.monitor(move |reason| {
        asker
            .try_send(&WorkerToMaster::Retire { reason }, &[])
            .is_ok()
    }));
    tokio::spawn(report_usage(tenant.clone(), master.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("handling SIGTERM")?;
    loop {
        let received = tokio::select! {
            received = master.recv() => received,
            _ = term.recv() => {
                // condo is stopping: what was counted since the last report still counts.
                flush_usage(&tenant, &master).await;
                return Ok(());
            }
        };
        let (message, fds) = match received {
            Ok(Some(m)) => m,
            Ok(None) => {
                info!(tenant = name, "master went away; exiting");
                return Ok(());
            }
            Err(e) => bail!("bad message from the master: {e}"),
        };
        if let MasterToWorker::Retire = message {
            tenant.lifecycle.retire(drain_grace).await;
            flush_usage(&tenant, &master).await;
            info!(tenant = name, "worker retired");
            return Ok(());
        }
        let Some(fd) = fds.into_iter().next() else {
            warn!("message from the master without its fd: {message:?}");
            continue;
        };
        match message {
            MasterToWorker::SiteLog { site, kind } => match tenant.site_named(&site) {
                Some(s) => {
                    let slot = match kind {
                        LogKind::Access => &s.access_log,
                        LogKind::Error => &s.error_log,
                    };
                    slot.set(File::from(fd));
                    if let (LogKind::Error, Some(text)) = (kind, &layer_errors) {
                        slot.write(text.as_bytes());
                    }
                }
                None => warn!(site, "access log for a site this worker does not serve"),
            },
            MasterToWorker::OomCounter => tenant.caps.set_oom_counter(File::from(fd)),
            MasterToWorker::NewPeer => {
                let peer = Arc::new(Channel::new(fd)?);
                tokio::spawn(peer_loop(tenant.clone(), peer));
            }
            MasterToWorker::Init(_) => warn!("unexpected second Init"),
            MasterToWorker::Retire => {} // handled above, before the fd check
        }
    }
}

/// Read and check the tenant's own config file. No file: no layer. `Err`: every
/// mistake, one per line, as `file:line:column: key: message`. The file is the
/// tenant's: read off the runtime threads, bounded in size and time, and refused when
/// it is not a regular file (a FIFO there must not stall the worker).
async fn user_layer(
    path: &std::path::Path,
    sites: &[Site],
    locked: &[String],
    pool: &crate::config::Pool,
) -> Result<Vec<crate::config::user::SiteLayer>, String> {
    use crate::tenant_file::{MAX_CONFIG, read};
    let bytes = match read(path.to_path_buf(), MAX_CONFIG).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("{}: cannot read: not UTF-8 text", path.display()))?;
    crate::config::user::parse(path, text, sites, locked, pool)
        .map_err(|diags| crate::config::user::report(&diags))
}

/// How often a worker tells the master what it counted.
const USAGE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

async fn report_usage(tenant: Arc<Tenant>, master: Arc<Channel<WorkerToMaster, MasterToWorker>>) {
    loop {
        tokio::time::sleep(USAGE_EVERY).await;
        flush_usage(&tenant, &master).await;
    }
}

/// Send the master every site's counts since the last report, in messages that stay
/// well under the channel's size limit.
async fn flush_usage(tenant: &Tenant, master: &Channel<WorkerToMaster, MasterToWorker>) {
    use std::sync::atomic::Ordering;
    let load: Vec<_> = tenant
        .by_name
        .values()
        .map(|s| crate::accounting::SiteLoad {
            site: s.config.name.clone(),
            connections: s.open_connections.load(Ordering::Relaxed) as u64,
            queued: s.gate.as_ref().map_or(0, |g| g.queued() as u64),
        })
        .filter(|l| l.connections > 0 || l.queued > 0)
        // Busy sites only, and few enough to stay well under the message size limit.
        .take(1000)
        .collect();
    if let Err(e) = master.send(&WorkerToMaster::Load(load), &[]).await {
        warn!("reporting load to the master: {e}");
        return;
    }
    let deltas: Vec<_> = tenant
        .by_name
        .values()
        .map(|s| s.counters.take(&s.config.name))
        .filter(|d| !d.is_empty())
        .collect();
    for batch in deltas.chunks(256) {
        if let Err(e) = master
            .send(&WorkerToMaster::Usage(batch.to_vec()), &[])
            .await
        {
            warn!("reporting usage to the master: {e}");
            return;
        }
    }
}

/// The site's certificate and key, read here with the tenant's permissions: condo's
/// privileged processes never open them. Off the runtime threads and bounded: they
/// are the tenant's files.
async fn site_tls(site: &Site) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let Some(files) = &site.tls else {
        anyhow::bail!("the site has no certificate");
    };
    let key = crate::tls::load_certified_key_async(&files.cert, &files.key).await?;
    let mut by_name = crate::tls::ByName::default();
    let names = std::iter::once(site.name.clone())
        .chain(site.aliases.iter().cloned())
        .collect();
    by_name.add(names, Arc::new(key), true);
    crate::tls::server_config(Arc::new(by_name))
}

/// `tls`: the outcome of [`site_tls`], for a site with its own certificate.
fn open_site(config: Site, tls: Option<anyhow::Result<Arc<rustls::ServerConfig>>>) -> SiteState {
    let files = rustix::fs::open(
        &config.root,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map(|root| SiteFiles {
        root,
        index: config.index.clone(),
        autoindex: config.autoindex,
        deny: config.deny(),
        compress: config.compress,
    })
    .map_err(|e| {
        let reason = format!(
            "cannot open the site root {} as this tenant: {e}",
            config.root.display()
        );
        warn!(site = config.name, "{reason}");
        reason
    });
    let tls = tls.map(|result| {
        result.map_err(|e| {
            let reason = format!("the site's certificate: {e:#}");
            warn!(site = config.name, "{reason}");
            reason
        })
    });
    SiteState {
        tls,
        counters: Default::default(),
        open_connections: Default::default(),
        gate: config
            .max_clients
            .map(|max| gate::Gate::new(max, config.queue_max, config.queue_timeout)),
        fastcgi: fastcgi::pools_for(&config),
        apps: app::apps_for(&config),
        config,
        files,
        access_log: Arc::default(),
        error_log: Arc::default(),
    }
}

/// Take connections from one dispatcher until it goes away. Connections already taken
/// are not affected by that.
async fn peer_loop(tenant: Arc<Tenant>, peer: Arc<PeerChannel>) {
    let _open = tenant.lifecycle.peer(&peer);
    loop {
        match peer.recv().await {
            Ok(Some((DispatcherToWorker::Connection(handoff), fds))) => {
                let Some(fd) = fds.into_iter().next() else {
                    warn!("connection hand-off without a socket");
                    continue;
                };
                tokio::spawn(conn::serve(tenant.clone(), peer.clone(), handoff, fd));
            }
            // Nothing follows `Retired`: this dispatcher sends its connections elsewhere.
            Ok(Some((DispatcherToWorker::Retired, _))) | Ok(None) => return,
            Err(e) => {
                warn!("bad message from a dispatcher: {e}");
                return;
            }
        }
    }
}
