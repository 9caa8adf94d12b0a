//! The master: condo's only root code. A broker that binds the listeners, opens log
//! files, starts the dispatcher and the tenant workers, passes fds between them and
//! supervises them. It never reads a byte from a client.

mod admin_token;
mod cgroup;
mod control;
mod logs;
mod notify;
mod spawn;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::accounting::ledger::{CgroupSample, Ledger};
use crate::config::{self, Config, Credentials};
use crate::ipc::{
    self, Channel, DispatcherToMaster, MasterToDispatcher, MasterToWorker, WorkerToMaster,
};

/// How often the master reads the tenants' cgroup counters.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// How long a new dispatcher may take to say it has its config (a few MiB of routes
/// for 10,000 tenants decode in well under a second).
const DISPATCHER_READY_WITHIN: Duration = Duration::from_secs(30);
/// Every this many samples the ledger is saved (4 s); the metrics file is written at
/// every sample, so `/metrics` is never more than one sample behind.
const SAVE_LEDGER_EVERY_TICKS: u64 = 2;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn cgroup_sample(stats: &cgroup::CgroupStats) -> CgroupSample {
    CgroupSample {
        cpu_usec: stats.cpu_usec,
        memory_bytes: stats.memory_bytes,
        memory_peak_bytes: stats.memory_peak_bytes,
        oom_kills: stats.oom_kills,
    }
}

/// The usage ledger saved in `state_dir`, created 0700 for root. A ledger that cannot
/// be read is set aside (renamed) and reported, and a new one starts: billing data is
/// never silently overwritten.
fn open_ledger(state_dir: &Path, privileged: bool) -> (Ledger, Option<PathBuf>) {
    if let Err(e) = std::fs::create_dir_all(state_dir) {
        error!(
            "creating state_dir {}: {e}; usage is not saved",
            state_dir.display()
        );
        return (Ledger::default(), None);
    }
    if privileged {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700));
    }
    let path = state_dir.join("usage.json");
    match Ledger::load(&path) {
        Ok(ledger) => (ledger, Some(path)),
        Err(e) => {
            let aside = path.with_extension(format!("json.unreadable-{}", unix_now()));
            let moved = std::fs::rename(&path, &aside).is_ok();
            error!(
                "{e:#}; {} and starting a new ledger",
                if moved {
                    format!("kept it as {}", aside.display())
                } else {
                    "could not move it aside".to_string()
                }
            );
            (Ledger::default(), moved.then_some(path))
        }
    }
}

type DispatcherChannel = Channel<MasterToDispatcher, DispatcherToMaster>;
type WorkerChannel = Channel<MasterToWorker, WorkerToMaster>;

/// Things the master's loop reacts to, sent by the tasks that watch each child.
/// Dispatchers are named by their slot (0..`server.dispatchers`) and pid.
enum Event {
    FromDispatcher(usize, u32, DispatcherToMaster),
    DispatcherExited(usize, u32, String),
    FromWorker(String, u32, WorkerToMaster),
    WorkerExited(String, u32, String),
    RestartDispatcher(usize),
    /// The new master of a binary upgrade serves (`Ok(pid)`) or gave up.
    UpgradeStarted(Result<u32, String>),
    /// A retired tenant group (by name) was emptied and removed, or why not.
    GroupRemoved(String, Result<(), String>),
}

/// A tenant group no worker uses any more: emptied and removed off the master's loop.
struct Retiring {
    group: cgroup::TenantGroup,
    /// Left by an earlier run of this instance (found at start).
    stale: bool,
    /// A removal runs now.
    busy: bool,
    /// Not before then (after a failed removal).
    next_try: Instant,
}

/// How long one removal of a group may take (killing its processes, waiting for them
/// to be gone); the master never waits on it.
const REMOVE_WITHIN: Duration = Duration::from_secs(5);
/// A group that could not be removed is tried again after this.
const REMOVE_RETRY: Duration = Duration::from_secs(30);

struct WorkerHandle {
    pid: u32,
    outbox: Outbox,
    started: Instant,
    /// Agreed to leave: finishes its connections, gets no new dispatcher link.
    draining: bool,
    /// Its latest report of open connections and queued requests per site.
    load: Vec<crate::accounting::SiteLoad>,
}

/// How long a worker may leave a message of the master's unread before it is killed.
const WORKER_SEND_WITHIN: Duration = Duration::from_secs(10);
/// Messages queued for one worker beyond which it counts as not reading its channel.
const OUTBOX_MAX: usize = 4096;

/// The master's messages to one worker, sent in order by a task of the worker's own:
/// the master's loop never waits on a worker's channel. A worker runs as its tenant,
/// whose code can stop it (SIGSTOP from a CGI) or keep its runtime busy; its channel
/// then fills (a few hundred messages) and a send on the loop would wait for ever.
#[derive(Clone)]
struct Outbox {
    channel: Arc<WorkerChannel>,
    tx: mpsc::UnboundedSender<(MasterToWorker, Vec<OwnedFd>)>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl Outbox {
    fn new(tenant: &str, pid: u32, channel: Arc<WorkerChannel>) -> Self {
        use std::sync::atomic::Ordering;
        let (tx, mut rx) = mpsc::unbounded_channel::<(MasterToWorker, Vec<OwnedFd>)>();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Pinned now, while the worker is an unreaped child: the kill below can never
        // hit another process that got the pid later.
        let pidfd = rustix::process::Pid::from_raw(pid as i32).and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
        });
        let count = queued.clone();
        let tenant = tenant.to_string();
        let sender = channel.clone();
        tokio::spawn(async move {
            let channel = sender;
            while let Some((message, fds)) = rx.recv().await {
                let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
                match tokio::time::timeout(WORKER_SEND_WITHIN, channel.send(&message, &borrowed))
                    .await
                {
                    Ok(Ok(())) => {}
                    // Gone: its reader reports the exit.
                    Ok(Err(_)) => break,
                    Err(_) => {
                        warn!(
                            tenant,
                            pid,
                            "the worker left the master's message unread for \
                             {WORKER_SEND_WITHIN:?}; killing it"
                        );
                        if let Some(fd) = &pidfd {
                            let _ = rustix::process::pidfd_send_signal(
                                fd,
                                rustix::process::Signal::KILL,
                            );
                        }
                        break;
                    }
                }
                count.fetch_sub(1, Ordering::Relaxed);
            }
        });
        Self {
            channel,
            tx,
            queued,
        }
    }

    /// Queue `message` (with `fds`) for the worker; `Err` if it is gone or not reading.
    fn post(&self, message: MasterToWorker, fds: Vec<OwnedFd>) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        // Nothing queued: at once if the channel has room (and a dead worker is
        // known as such now). Never ahead of queued messages: they keep their order.
        if self.queued.load(Ordering::Relaxed) == 0 {
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            match self.channel.try_send(&message, &borrowed) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        if self.queued.load(Ordering::Relaxed) >= OUTBOX_MAX {
            return Err(format!(
                "the worker has {OUTBOX_MAX} of the master's messages unread"
            ));
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send((message, fds))
            .map_err(|_| "the worker's channel is closed".to_string())
    }

    fn same(&self, other: &Outbox) -> bool {
        self.tx.same_channel(&other.tx)
    }
}

/// One dispatcher process and the listening sockets it serves.
struct DispatcherSlot {
    listeners: Vec<spawn::Bound>,
    running: Option<(u32, Arc<DispatcherChannel>, Instant)>,
    crashes: CrashRecord,
}

/// Consecutive quick deaths of one child, for backoff.
#[derive(Default)]
struct CrashRecord {
    quick_exits: u32,
    last_exit: Option<Instant>,
}

impl CrashRecord {
    /// A child that lived less than this counts as crashing on start.
    const QUICK: Duration = Duration::from_secs(2);

    fn exited(&mut self, lived: Duration) {
        self.quick_exits = if lived < Self::QUICK {
            self.quick_exits + 1
        } else {
            0
        };
        self.last_exit = Some(Instant::now());
    }

    /// How long to wait before the next start: nothing after a single crash (a worker
    /// killed once comes back with the next request), then doubling up to 30 s.
    fn delay(&self) -> Duration {
        match self.quick_exits {
            0 | 1 => Duration::ZERO,
            n => Duration::from_millis(250 << (n - 2).min(7)).min(Duration::from_secs(30)),
        }
    }

    fn remaining(&self) -> Duration {
        let since = self.last_exit.map_or(Duration::MAX, |t| t.elapsed());
        self.delay().saturating_sub(since)
    }
}

pub struct Master {
    config: Config,
    exe: PathBuf,
    /// `None` when condo runs without root: every process keeps the invoking uid.
    dispatcher_credentials: Option<Credentials>,
    privileged: bool,
    logs: logs::LogFiles,
    dispatchers: Vec<DispatcherSlot>,
    /// Per tenant: at most one worker that takes new links, plus draining ones.
    workers: HashMap<String, Vec<WorkerHandle>>,
    worker_crashes: HashMap<String, CrashRecord>,
    /// `None`: no cgroups (not root, none mounted, or switched off).
    cgroups: Option<cgroup::Cgroups>,
    /// The groups of tenants that have processes (removed when they scale to zero).
    groups: HashMap<String, cgroup::TenantGroup>,
    /// Groups being emptied and removed, or waiting to be tried again.
    retiring: Vec<Retiring>,
    /// Set when the removals must stop touching groups (a new master took over).
    removals_stop: cgroup::StopFlag,
    /// OOM kills of each live group already reported.
    oom_seen: HashMap<String, u64>,
    /// When each tenant's workers last reported their request counts (ms since the
    /// epoch): `condo top` takes request rates between these, not between its polls.
    usage_reported_ms: HashMap<String, u64>,
    ledger: Ledger,
    /// Where the ledger is saved; `None` when it could not be read at start (then it
    /// is not overwritten: billing data is never replaced by an empty ledger).
    ledger_file: Option<PathBuf>,
    /// The dispatcher's group, which may read the metrics file.
    metrics_gid: Option<u32>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    started: Instant,
    /// Requests from the control socket (`condo status`, `restart-tenant`, ...).
    control: mpsc::UnboundedReceiver<control::Call>,
    /// Each tenant's own config layer as its worker last found it good.
    user_layers: HashMap<String, Vec<config::user::SiteLayer>>,
    /// Started by an old master (binary upgrade): told `ready` here once serving.
    ready_fd: Option<OwnedFd>,
    /// A binary upgrade under way or done (this master is the old one).
    upgrade: Option<Upgrade>,
}

/// This master's part in a binary upgrade.
enum Upgrade {
    /// The new master was started; the caller of `condo upgrade` waits for this.
    Starting(tokio::sync::oneshot::Sender<crate::control::Response>),
    /// The new master serves: the dispatchers drain, then the workers; then exit.
    Draining { workers_told: bool },
}

/// Load the config and run the master in the foreground until TERM or INT.
pub fn serve(config_path: &Path) -> anyhow::Result<()> {
    crate::sandbox::close_inherited_on_exec().context("marking inherited fds close-on-exec")?;
    let loaded = config::load(config_path);
    for d in &loaded.diagnostics {
        eprintln!("condo: {d}");
    }
    let Some(config) = loaded.config else {
        bail!(
            "{}: the main config has errors; nothing started",
            config_path.display()
        );
    };
    if !loaded.diagnostics.is_empty() {
        eprintln!("condo: the sites above with errors are not served; all others are");
    }
    for w in config.warnings() {
        eprintln!("condo: warning: {w}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let master = Master::new(config).await?;
        master.run().await
    })
}

/// `condo reload`: validate the config as `serve` would, then SIGHUP the master whose
/// pid is in `run_dir/condo.pid`. Nothing is signalled when the main file has errors.
pub fn signal_reload(config_path: &Path) -> anyhow::Result<()> {
    let loaded = config::load(config_path);
    for d in &loaded.diagnostics {
        eprintln!("condo: {d}");
    }
    let Some(config) = loaded.config else {
        bail!(
            "{}: the main config has errors; the running master was not told to reload",
            config_path.display()
        );
    };
    let pid_file = pid_file(&config);
    let text = std::fs::read_to_string(&pid_file).with_context(|| {
        format!(
            "reading {} (is condo running with this config?)",
            pid_file.display()
        )
    })?;
    let pid = text
        .trim()
        .parse::<i32>()
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .with_context(|| format!("{}: not a pid", pid_file.display()))?;
    rustix::process::kill_process(pid, rustix::process::Signal::HUP)
        .with_context(|| format!("signalling the master (pid {})", pid.as_raw_nonzero()))?;
    println!(
        "condo: asked the master (pid {}) to reload{}",
        pid.as_raw_nonzero(),
        if loaded.diagnostics.is_empty() {
            String::new()
        } else {
            "; the site files above with errors will not be served".to_string()
        }
    );
    Ok(())
}

/// A server holds a socket per connection: raise RLIMIT_NOFILE (inherited by the
/// dispatcher and workers, unless a tenant's own limit says otherwise) to room for
/// `max_connections` plus files, as far as the system allows.
fn raise_fd_limit(max_connections: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let want = (max_connections as u64 * 2).max(65536);
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let hard = getrlimit(Resource::Nofile).maximum.unwrap_or(u64::MAX);
    let raised = want.min(ceiling).max(hard.min(ceiling));
    // Raising the hard limit needs CAP_SYS_RESOURCE (root usually has it, some
    // containers take it away); the soft limit may always go up to the hard one.
    let attempts = [(raised, raised), (want.min(hard), hard)];
    let outcome = attempts.iter().find_map(|&(soft, max)| {
        let limit = rustix::process::Rlimit {
            current: Some(soft),
            maximum: Some(max),
        };
        setrlimit(Resource::Nofile, limit).ok().map(|()| soft)
    });
    match outcome {
        Some(soft) if (soft as usize) < max_connections + 1024 => {
            warn!("the open-file limit is {soft}: too low for max_connections = {max_connections}")
        }
        Some(_) => {}
        None => warn!("could not raise the open-file limit"),
    }
}

/// Replace `path` atomically with `bytes`, mode 0640, group `gid` (the dispatcher's, so
/// it can serve the file but not change it).
fn write_readable_by(path: &Path, bytes: &[u8], gid: Option<u32>) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(&tmp)?;
    file.write_all(bytes)?;
    if let Some(gid) = gid {
        rustix::fs::fchown(&file, None, Some(rustix::process::Gid::from_raw(gid)))?;
    }
    std::fs::rename(&tmp, path)
}

fn pid_file(config: &Config) -> PathBuf {
    config.server.run_dir.join("condo.pid")
}

impl Master {
    async fn new(config: Config) -> anyhow::Result<Self> {
        let privileged = rustix::process::geteuid().is_root();
        let logs = logs::LogFiles::prepare(&config.server.log_dir, privileged)?;
        crate::logging::init_tracing(Some(logs.error_log()?));
        raise_fd_limit(config.server.limits.max_connections);
        std::fs::create_dir_all(&config.server.run_dir)
            .with_context(|| format!("creating run_dir {}", config.server.run_dir.display()))?;
        // A binary upgrade: the old master handed over its listening sockets.
        let mut inherited = spawn::Inherited::from_env()?;
        let taking_over = !inherited.is_empty();
        // The cgroup parent first: another instance using it is refused before this
        // one touches anything of the running one (its pid file, its tenants' groups).
        let (cgroups, stale_groups) = if privileged {
            let cgroups = cgroup::Cgroups::detect(
                config.server.cgroup,
                &config.server.cgroup_root,
                &config.server.cgroup_parent,
                cgroup::inherited_locks()?,
            )
            .map_err(anyhow::Error::msg)?;
            // Taking over from a running master, its tenants' groups are alive.
            // Only the groups named as this config's tenants' are emptied by force.
            let ours = |name: &str| {
                let tenant = cgroup::tenant_of(name);
                config.tenants.contains_key(tenant)
                    && (0..cgroup::GROUPS_PER_TENANT).any(|n| cgroup::group_name(tenant, n) == name)
            };
            let stale = match &cgroups {
                Some(c) if !taking_over => c.remove_stale(ours),
                _ => Vec::new(),
            };
            (cgroups, stale)
        } else {
            info!(
                "not root: no cgroups; memory_max, cpu_max, pids_max and io_weight are not enforced"
            );
            (None, Vec::new())
        };
        std::fs::write(pid_file(&config), format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", pid_file(&config).display()))?;
        // An unusable admin token file stops the start here, with its reason (each
        // dispatcher start reads it again, and would only be retried).
        admin_token::load(&config)?;
        let dispatcher_credentials = if privileged {
            let creds = config::resolve_user(&config.server.user).map_err(anyhow::Error::msg)?;
            if creds.uid == 0 {
                bail!(
                    "server.user `{}` is root; the dispatcher must not run as root",
                    config.server.user
                );
            }
            Some(creds)
        } else {
            warn!(
                "not running as root: the dispatcher and every tenant's worker run as this same uid; \
                 tenants are NOT isolated from each other"
            );
            None
        };
        let ready_fd = match std::env::var(spawn::READY_ENV) {
            Ok(fd) => Some(crate::sandbox::inherited_fd(
                fd.parse().context("the readiness fd is not a number")?,
            )?),
            Err(_) => None,
        };
        let bound = spawn::bind_listeners(&config, &mut inherited).await?;
        if inherited.leftover() > 0 {
            info!(
                "upgrade: {} listening socket(s) the config no longer has are closed",
                inherited.leftover()
            );
        }
        drop(inherited);
        let dispatchers = bound
            .into_iter()
            .map(|listeners| DispatcherSlot {
                listeners,
                running: None,
                crashes: CrashRecord::default(),
            })
            .collect();
        let (ledger, ledger_file) = open_ledger(&config.server.state_dir, privileged);
        let metrics_gid = dispatcher_credentials.as_ref().map(|c| c.gid);
        let (events_tx, events) = mpsc::unbounded_channel();
        let retiring = match &cgroups {
            Some(c) => stale_groups
                .iter()
                .map(|name| Retiring {
                    group: c.group(name),
                    stale: true,
                    busy: false,
                    next_try: Instant::now(),
                })
                .collect(),
            None => Vec::new(),
        };
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let control_socket = control::bind(&config.server.run_dir)?;
        tokio::spawn(control::serve(control_socket, control_tx));
        Ok(Self {
            started: Instant::now(),
            control: control_rx,
            user_layers: HashMap::new(),
            ready_fd,
            upgrade: None,
            exe: std::env::current_exe().context("finding condo's own binary")?,
            config,
            dispatcher_credentials,
            privileged,
            logs,
            dispatchers,
            workers: HashMap::new(),
            worker_crashes: HashMap::new(),
            cgroups,
            groups: HashMap::new(),
            retiring,
            removals_stop: Default::default(),
            oom_seen: HashMap::new(),
            usage_reported_ms: HashMap::new(),
            ledger,
            ledger_file,
            metrics_gid,
            events_tx,
            events,
        })
    }

    async fn run(mut self) -> anyhow::Result<()> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        for slot in 0..self.dispatchers.len() {
            // A start that cannot serve is a failed start: `condo serve` exits non-zero
            // with the reason, and systemd is never told READY. A dispatcher that died
            // on its way up (killed, say) is tried twice more first; later restarts of
            // one that died retry with backoff instead.
            let mut attempt = 0;
            while let Err(e) = self.start_dispatcher(slot).await {
                attempt += 1;
                if attempt == 3 {
                    // Leave nothing behind: the other dispatchers, the cgroup parent
                    // (and its lock), the pid file.
                    self.stop().await;
                    return Err(e.context("starting the dispatcher (3 attempts)"));
                }
                warn!("starting the dispatcher: {e:#}; trying again");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
        }
        self.start_removals();
        self.keep_warm().await;
        if let Some(fd) = self.ready_fd.take() {
            // The old master (binary upgrade) starts draining once it reads this.
            if let Err(e) = rustix::io::write(&fd, b"ready\n") {
                warn!("telling the old master we serve: {e}");
            }
        }
        notify::ready(&self.status_line());
        let mut ticks: u64 = 0;
        self.publish();
        let mut sampling = tokio::time::interval(SAMPLE_EVERY);
        sampling.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = sampling.tick() => {
                    self.sample_cgroups();
                    self.start_removals();
                    ticks += 1;
                    self.publish_metrics();
                    if ticks.is_multiple_of(SAVE_LEDGER_EVERY_TICKS) {
                        self.ledger.compact(unix_now());
                        self.save_ledger();
                    }
                }
                Some(event) = self.events.recv() => self.handle(event).await,
                _ = term.recv() => { info!("SIGTERM: stopping"); break; }
                _ = int.recv() => { info!("SIGINT: stopping"); break; }
                _ = hup.recv() => {
                    // The outcome is in the log; a signal has no one to answer.
                    let _ = self.reload(None).await;
                }
                Some(call) = self.control.recv() => {
                    if call.request == crate::control::Request::Upgrade {
                        // Answered once the new master serves (or gave up).
                        self.start_upgrade(call.reply);
                    } else {
                        let response = self.control(call.request).await;
                        let _ = call.reply.send(response);
                    }
                }
                _ = usr1.recv() => self.reopen_logs().await,
            }
            if self.upgrade_finished() {
                info!("upgrade: every old process has drained; the old master exits");
                break;
            }
        }
        notify::stopping();
        self.stop().await;
        Ok(())
    }

    fn status_line(&self) -> String {
        format!(
            "serving {} tenants, {} sites",
            self.config.tenants.len(),
            self.config.sites.len()
        )
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::FromDispatcher(_, pid, DispatcherToMaster::Ready) => {
                warn!(pid, "the dispatcher said Ready twice");
            }
            Event::FromDispatcher(slot, pid, DispatcherToMaster::WantWorker { tenant }) => {
                let Some(channel) = self.dispatcher_channel(slot, pid) else {
                    return;
                };
                let result = self.connect_dispatcher_to(&tenant).await;
                let message = match &result {
                    Ok(_) => MasterToDispatcher::Worker {
                        tenant,
                        result: Ok(()),
                    },
                    Err(reason) => {
                        warn!(tenant, "no worker: {reason}");
                        MasterToDispatcher::Worker {
                            tenant,
                            result: Err(reason.clone()),
                        }
                    }
                };
                let fds: Vec<_> = result.iter().map(|end| end.as_fd()).collect();
                if let Err(e) = channel.send(&message, &fds).await {
                    warn!("answering the dispatcher failed: {e}");
                }
            }
            Event::DispatcherExited(slot, pid, status) => {
                if self.dispatcher_channel(slot, pid).is_none() {
                    return;
                }
                let lived = self.dispatchers[slot]
                    .running
                    .take()
                    .map_or(Duration::ZERO, |d| d.2.elapsed());
                if let Some(Upgrade::Draining { workers_told }) = &mut self.upgrade {
                    info!(pid, "upgrade: old dispatcher done ({status})");
                    if self.dispatchers.iter().all(|d| d.running.is_none()) && !*workers_told {
                        *workers_told = true;
                        let tenants: Vec<String> = self.workers.keys().cloned().collect();
                        for tenant in tenants {
                            self.retire_tenant(&tenant).await;
                        }
                    }
                    return;
                }
                self.restart_dispatcher_later(
                    slot,
                    lived,
                    &format!("dispatcher {pid} exited ({status})"),
                );
            }
            Event::UpgradeStarted(result) => self.upgrade_started(result).await,
            Event::GroupRemoved(name, result) => self.group_removed(&name, result),
            Event::RestartDispatcher(slot) => {
                if let Err(e) = self.start_dispatcher(slot).await {
                    self.restart_dispatcher_later(
                        slot,
                        Duration::ZERO,
                        &format!("starting the dispatcher failed: {e:#}"),
                    );
                }
            }
            Event::FromWorker(tenant, pid, WorkerToMaster::Retire { reason }) => {
                let Some(handle) = self
                    .workers
                    .get_mut(&tenant)
                    .and_then(|ws| ws.iter_mut().find(|w| w.pid == pid && !w.draining))
                else {
                    return;
                };
                // From here on no dispatcher gets a link to it; the next request for
                // the tenant starts a new worker.
                handle.draining = true;
                info!(tenant, pid, "worker leaves: {reason}");
                if let Err(e) = handle.outbox.post(MasterToWorker::Retire, Vec::new()) {
                    warn!(tenant, pid, "telling the worker to leave: {e}");
                }
                self.keep_warm().await;
            }
            Event::FromWorker(tenant, _pid, WorkerToMaster::Usage(deltas)) => {
                let own: Vec<&str> = self
                    .config
                    .tenant_sites(&tenant)
                    .map(|s| s.name.as_str())
                    .collect();
                self.ledger.apply_report(&tenant, &own, &deltas, unix_now());
                self.usage_reported_ms.insert(tenant, unix_now_ms());
            }
            Event::FromWorker(tenant, _pid, WorkerToMaster::UserLayer(layer)) => {
                // Only the tenant's own sites: the worker checked, the master (root,
                // trusting no tenant) checks again.
                let own: Vec<&str> = self
                    .config
                    .tenant_sites(&tenant)
                    .map(|s| s.name.as_str())
                    .collect();
                if layer.iter().all(|l| own.contains(&l.site.as_str())) {
                    self.user_layers.insert(tenant, layer);
                } else {
                    warn!(
                        tenant,
                        "a worker sent a config layer for sites not its own; ignored"
                    );
                }
            }
            Event::FromWorker(tenant, pid, WorkerToMaster::Load(load)) => {
                if let Some(w) = self
                    .workers
                    .get_mut(&tenant)
                    .and_then(|ws| ws.iter_mut().find(|w| w.pid == pid))
                {
                    w.load = load;
                }
            }
            Event::WorkerExited(tenant, pid, status) => {
                let Some(workers) = self.workers.get_mut(&tenant) else {
                    return;
                };
                let Some(i) = workers.iter().position(|w| w.pid == pid) else {
                    return;
                };
                let handle = workers.swap_remove(i);
                if workers.is_empty() {
                    self.workers.remove(&tenant);
                    self.tenant_gone(&tenant).await;
                }
                let lived = handle.started.elapsed();
                if handle.draining && status == "exit status: 0" {
                    info!(tenant, pid, "worker left after {lived:.1?}");
                } else {
                    let record = self.worker_crashes.entry(tenant.clone()).or_default();
                    record.exited(lived);
                    warn!(
                        tenant,
                        pid,
                        "worker exited ({status}) after {lived:?}; the next request starts a new one"
                    );
                }
                self.keep_warm().await;
            }
        }
    }

    /// Read every tenant group's counters: OOM kills are logged as they happen.
    fn sample_cgroups(&mut self) {
        let now = unix_now();
        for (tenant, group) in &self.groups {
            let stats = group.stats();
            self.ledger.sample(tenant, cgroup_sample(&stats), now);
            let seen = self.oom_seen.entry(tenant.clone()).or_insert(0);
            if stats.oom_kills > *seen {
                warn!(
                    tenant,
                    "OOM kill: {} process(es) of the tenant killed at its memory_max",
                    stats.oom_kills - *seen
                );
                *seen = stats.oom_kills;
            }
        }
    }

    /// Write the Prometheus text for the admin listener and save the ledger.
    fn publish(&mut self) {
        self.publish_metrics();
        self.ledger.compact(unix_now());
        self.save_ledger();
    }

    fn publish_metrics(&self) {
        let workers: HashMap<String, usize> = self
            .config
            .tenants
            .keys()
            .map(|t| (t.clone(), self.workers.get(t).map_or(0, Vec::len)))
            .collect();
        let text = crate::accounting::report::prometheus(&self.ledger, &workers);
        let path = spawn::metrics_file(&self.config);
        if let Err(e) = write_readable_by(&path, text.as_bytes(), self.metrics_gid) {
            warn!("writing {}: {e}", path.display());
        }
    }

    fn save_ledger(&self) {
        if let Some(path) = &self.ledger_file
            && let Err(e) = self.ledger.save(path)
        {
            error!("saving the usage ledger: {e:#}");
        }
    }

    /// The tenant's last worker exited: it scaled to zero. Its cgroup goes: whatever
    /// the tenant left in it (a process in a session of its own escapes the worker's
    /// parent-death signal) is killed, and the group removed, off this loop.
    async fn tenant_gone(&mut self, tenant: &str) {
        self.sample_cgroups();
        if let Some(group) = self.groups.remove(tenant)
            && self.upgrade.is_none()
        {
            // (After an upgrade the group is the new master's, which may be between
            // two workers of the tenant right now.)
            self.retiring.push(Retiring {
                group,
                stale: false,
                busy: false,
                next_try: Instant::now(),
            });
            self.start_removals();
        }
        // A new group counts from zero.
        self.oom_seen.remove(tenant);
        self.ledger.group_gone(tenant);
        self.save_ledger();
    }

    /// Start the removal of every retired group that is due, each on a blocking thread
    /// of its own that reports back through the loop's channel: nothing here waits.
    fn start_removals(&mut self) {
        if self.upgrade.is_some() {
            return;
        }
        let now = Instant::now();
        for r in self
            .retiring
            .iter_mut()
            .filter(|r| !r.busy && r.next_try <= now)
        {
            r.busy = true;
            let group = r.group.clone();
            let stop = self.removals_stop.clone();
            let tx = self.events_tx.clone();
            tokio::task::spawn_blocking(move || {
                let result = group.empty_and_remove(Instant::now() + REMOVE_WITHIN, &stop);
                let _ = tx.send(Event::GroupRemoved(group.name().to_string(), result));
            });
        }
    }

    fn group_removed(&mut self, name: &str, result: Result<(), String>) {
        let Some(i) = self.retiring.iter().position(|r| r.group.name() == name) else {
            return;
        };
        let tenant = cgroup::tenant_of(name).to_string();
        match result {
            Ok(()) => {
                let r = self.retiring.swap_remove(i);
                if r.stale {
                    info!(
                        tenant,
                        "removed the stale cgroup {name} (its processes killed)"
                    );
                }
            }
            Err(e) => {
                let r = &mut self.retiring[i];
                r.busy = false;
                r.next_try = Instant::now() + REMOVE_RETRY;
                if self.upgrade.is_none() {
                    warn!(
                        tenant,
                        "removing the cgroup {name}: {e}; tried again in {REMOVE_RETRY:?} \
                         (the tenant's next worker starts in another group)"
                    );
                }
            }
        }
    }

    /// A name for a new group of `tenant`: the first of `a`, `a.1`, ... that no
    /// retired group of the tenant still holds.
    fn free_group_name(&self, tenant: &str) -> Result<String, String> {
        (0..cgroup::GROUPS_PER_TENANT)
            .map(|n| cgroup::group_name(tenant, n))
            .find(|name| !self.retiring.iter().any(|r| r.group.name() == name))
            .ok_or_else(|| {
                format!(
                    "the tenant's {} earlier cgroups still hold processes that SIGKILL did \
                     not end; no new worker until one is removed",
                    cgroup::GROUPS_PER_TENANT
                )
            })
    }

    /// The channel of the dispatcher in `slot` if `pid` is still the one running there.
    fn dispatcher_channel(&self, slot: usize, pid: u32) -> Option<Arc<DispatcherChannel>> {
        match &self.dispatchers.get(slot)?.running {
            Some((running, channel, _)) if *running == pid => Some(channel.clone()),
            _ => None,
        }
    }

    /// Start the workers of tenants with `workers_min` above zero that have none.
    async fn keep_warm(&mut self) {
        if self.upgrade.is_some() {
            // The new master keeps them warm now.
            return;
        }
        let warm: Vec<String> = self
            .config
            .tenants
            .values()
            .filter(|t| t.pool.workers_min > 0)
            .map(|t| t.name.clone())
            .collect();
        for tenant in warm {
            if let Err(reason) = self.ensure_worker(&tenant).await {
                warn!(tenant, "keeping a worker warm: {reason}");
            }
        }
    }

    /// A fresh channel end connected to `tenant`'s worker, starting the worker if needed.
    async fn connect_dispatcher_to(&mut self, tenant: &str) -> Result<OwnedFd, String> {
        for _attempt in 0..2 {
            let worker = self.ensure_worker(tenant).await?;
            let (for_worker, for_dispatcher) =
                ipc::raw_pair().map_err(|e| format!("socketpair: {e}"))?;
            // (Should the worker never read it, the dispatcher's end sees the hang-up
            // once the worker is killed, and asks again.)
            match worker.post(MasterToWorker::NewPeer, vec![for_worker]) {
                Ok(()) => return Ok(for_dispatcher),
                Err(e) => {
                    // It died between the lookup and now; start a new one once.
                    warn!(tenant, "worker did not take a new peer: {e}");
                    if let Some(ws) = self.workers.get_mut(tenant) {
                        for w in ws.iter_mut().filter(|w| w.outbox.same(&worker)) {
                            w.draining = true;
                        }
                    }
                }
            }
        }
        Err("the worker keeps dying on start".into())
    }

    async fn ensure_worker(&mut self, tenant: &str) -> Result<Outbox, String> {
        if let Some(w) = self
            .workers
            .get(tenant)
            .and_then(|ws| ws.iter().find(|w| !w.draining))
        {
            return Ok(w.outbox.clone());
        }
        let Some(tenant_config) = self.config.tenants.get(tenant) else {
            return Err(format!("no tenant `{tenant}` in the config"));
        };
        if let Some(record) = self.worker_crashes.get(tenant) {
            let wait = record.remaining();
            if !wait.is_zero() {
                return Err(format!(
                    "worker crashed {} times in a row; next start allowed in {wait:.1?}",
                    record.quick_exits
                ));
            }
        }
        // Invariant 4: the uid comes from the master's own config and is checked again
        // at every start, not only when the config was loaded.
        let credentials = if self.privileged {
            Some(config::resolve_tenant(
                tenant_config,
                self.config.server.uid_range,
            )?)
        } else {
            None
        };
        // Limits that cannot be applied mean no worker: a tenant never runs unbounded
        // because its cgroup could not be made.
        let group = match &self.cgroups {
            Some(cgroups) => match self.groups.get(tenant).filter(|g| g.exists()) {
                Some(g) => {
                    // The old limits stay in force if the new ones cannot be written
                    // (e.g. memory_max below what the group uses now).
                    if let Err(e) = g.write_limits(&tenant_config.limits) {
                        warn!(tenant, "updating the tenant's cgroup limits: {e}");
                    }
                    Some(g.clone())
                }
                None => {
                    // Never a group still being emptied: its removal would kill the
                    // new worker.
                    let name = self.free_group_name(tenant)?;
                    let g = cgroups
                        .tenant(&name, &tenant_config.limits)
                        .map_err(|e| format!("setting up the tenant's cgroup: {e}"))?;
                    self.groups.insert(tenant.to_string(), g.clone());
                    // A group left in place keeps its totals: they are counted already.
                    self.ledger
                        .group_started(tenant, cgroup_sample(&g.stats()), unix_now());
                    Some(g)
                }
            },
            None => None,
        };
        let sites: Vec<_> = self.config.tenant_sites(tenant).cloned().collect();
        let start = spawn::WorkerStart {
            tenant: tenant_config,
            credentials,
            sites,
            cgroup: group.as_ref(),
            user_layer: self.user_layers.get(tenant).cloned(),
        };
        let (child, channel, site_logs) =
            spawn::start_worker(&self.exe, start, &self.config, &self.logs)
                .await
                .map_err(|e| format!("starting the worker failed: {e:#}"))?;
        let pid = child.id().unwrap_or(0);
        info!(tenant, pid, "worker started");
        self.ledger.spawned(tenant, unix_now());
        let channel = Arc::new(channel);
        let outbox = Outbox::new(tenant, pid, channel.clone());
        for (message, log) in site_logs {
            if let Err(e) = outbox.post(message, vec![log]) {
                warn!(tenant, pid, "sending the worker its logs: {e}");
            }
        }
        self.workers
            .entry(tenant.to_string())
            .or_default()
            .push(WorkerHandle {
                pid,
                outbox: outbox.clone(),
                started: Instant::now(),
                draining: false,
                load: Vec::new(),
            });
        let tx = self.events_tx.clone();
        let tenant = tenant.to_string();
        let reader = channel.clone();
        tokio::spawn(async move {
            // A worker runs as its tenant: what it sends is untrusted, typed and small.
            loop {
                match reader.recv().await {
                    Ok(Some((message, _fds))) => {
                        if tx
                            .send(Event::FromWorker(tenant.clone(), pid, message))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!(tenant, pid, "bad message from the worker: {e}");
                        break;
                    }
                }
            }
            let status = spawn::wait(child).await;
            let _ = tx.send(Event::WorkerExited(tenant, pid, status));
        });
        Ok(outbox)
    }

    /// Start a new dispatcher after a backoff that grows while it keeps dying quickly.
    fn restart_dispatcher_later(&mut self, slot: usize, lived: Duration, why: &str) {
        let crashes = &mut self.dispatchers[slot].crashes;
        crashes.exited(lived);
        let delay = crashes.delay().max(Duration::from_millis(20));
        error!("{why}; restarting the dispatcher in {delay:?}");
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Event::RestartDispatcher(slot));
        });
    }

    async fn start_dispatcher(&mut self, slot: usize) -> anyhow::Result<()> {
        let (child, channel, init) = spawn::start_dispatcher(
            &self.exe,
            &self.config,
            self.dispatcher_credentials.clone(),
            &self.dispatchers[slot].listeners,
        )
        .await?;
        let mut child = child;
        let pid = child.id().unwrap_or(0);
        // A dispatcher without its routes answers nobody: it is started only once it
        // said it took them (issue 23: a table too large for one frame was dropped with
        // a warning, and the host was told READY with nothing served).
        let took = async {
            channel
                .send_large(&init, &[])
                .await
                .context("sending the dispatcher its config")?;
            match tokio::time::timeout(DISPATCHER_READY_WITHIN, channel.recv()).await {
                Ok(Ok(Some((DispatcherToMaster::Ready, _)))) => Ok(()),
                Ok(Ok(Some((other, _)))) => bail!("dispatcher sent {other:?} before Ready"),
                Ok(Ok(None)) => bail!("the dispatcher exited before taking its config"),
                Ok(Err(e)) => Err(e).context("reading the dispatcher's Ready"),
                Err(_) => bail!(
                    "the dispatcher did not take its config within {DISPATCHER_READY_WITHIN:?}"
                ),
            }
        };
        if let Err(e) = took.await {
            let _ = child.start_kill();
            tokio::spawn(spawn::wait(child));
            return Err(e);
        }
        info!(pid, user = self.config.server.user, "dispatcher started");
        let channel = Arc::new(channel);
        self.dispatchers[slot].running = Some((pid, channel.clone(), Instant::now()));
        let tx = self.events_tx.clone();
        let reader = channel.clone();
        tokio::spawn(async move {
            // Read requests until the channel closes; then report the exit.
            loop {
                match reader.recv().await {
                    Ok(Some((message, _fds))) => {
                        if tx.send(Event::FromDispatcher(slot, pid, message)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!(pid, "bad message from the dispatcher: {e}");
                        break;
                    }
                }
            }
            let status = spawn::wait(child).await;
            let _ = tx.send(Event::DispatcherExited(slot, pid, status));
        });
        Ok(())
    }

    /// SIGHUP: read the config again. On errors in the main file keep the running
    /// config. Otherwise switch to the new one: dispatchers get the new routes, the
    /// workers of tenants whose settings or sites changed are replaced the way
    /// `worker_max_requests` replaces them (no connection lost), the others stay untouched.
    /// Read the config again and apply it; `only`: apply just that tenant's part (its
    /// section and its sites), keeping everything else as it runs. `Err`: why nothing
    /// was applied.
    async fn reload(&mut self, only: Option<&str>) -> Result<String, String> {
        notify::reloading();
        let result = self.reload_config(only).await;
        notify::ready(&self.status_line());
        result
    }

    async fn reload_config(&mut self, only: Option<&str>) -> Result<String, String> {
        info!(
            "{}: reloading {}",
            only.map_or("SIGHUP".to_string(), |t| format!("reload of tenant {t}")),
            self.config.file.display()
        );
        let loaded = config::load(&self.config.file);
        for d in &loaded.diagnostics {
            warn!("reload: {d}");
        }
        let mut left_for_full: Vec<String> = Vec::new();
        let mut takes_restart: Vec<String> = Vec::new();
        let Some(mut new) = loaded.config else {
            error!("reload: the main config has errors; still running the previous config");
            return Err("the main config has errors; still running the previous config".into());
        };
        if let Some(tenant) = only {
            // A site file with an error is left out of what loaded: applied, that
            // would take the site down. A full reload does that (and logs it); one
            // tenant's reload is asked for on purpose, so it refuses instead.
            if let Some(first) = loaded.diagnostics.first() {
                return Err(format!(
                    "the config has {} error(s), the first: {first}; nothing applied (see `condo check`)",
                    loaded.diagnostics.len()
                ));
            }
            if !new.tenants.contains_key(tenant) && !self.config.tenants.contains_key(tenant) {
                return Err(format!("no tenant `{tenant}` in the config"));
            }
            // Said in the answer: the admin asked for one tenant and may have edited
            // others too.
            left_for_full = changed_tenants(&self.config, &new);
            left_for_full.retain(|t| t != tenant);
            new = self.config.with_tenant_from(&new, tenant)?;
        }
        // What the running processes were started with stays until a restart.
        let old = &self.config.server;
        for (key, changed) in [
            ("listen", new.server.listeners != old.listeners),
            ("dispatchers", new.server.dispatchers != old.dispatchers),
            ("admin_listen", new.server.admin_listen != old.admin_listen),
            ("user", new.server.user != old.user),
            ("log_dir", new.server.log_dir != old.log_dir),
            ("run_dir", new.server.run_dir != old.run_dir),
            (
                "worker_threads",
                new.server.worker_threads != old.worker_threads,
            ),
            ("limits", new.server.limits != old.limits),
        ] {
            if changed {
                warn!(
                    "reload: server.{key} changed; that takes a restart, the running value stays"
                );
                takes_restart.push(format!("server.{key}"));
            }
        }
        // default_site and unknown_host are routing: those change now.
        new.server = config::Server {
            default_site: new.server.default_site.clone(),
            unknown_host_status: new.server.unknown_host_status,
            ..self.config.server.clone()
        };
        let changed = changed_tenants(&self.config, &new);
        // A tenant whose own file may have changed: its new worker reads it.
        let mut own_file: Vec<String> = Vec::new();
        if let Some(tenant) = only
            && !changed.iter().any(|c| c == tenant)
            && self
                .config
                .tenants
                .get(tenant)
                .is_some_and(|t| t.user_config.is_some())
        {
            own_file.push(tenant.to_string());
        }
        let routing = spawn::routing(&new);
        // What no dispatcher could take is refused before anything changes.
        let size = postcard::to_stdvec(&routing).map_or(usize::MAX, |b| b.len());
        if size > crate::ipc::MAX_SEALED_MESSAGE {
            return Err(format!(
                "the routing table encodes to {size} bytes, over the {} a dispatcher takes; nothing applied",
                crate::ipc::MAX_SEALED_MESSAGE
            ));
        }
        self.config = new;
        // Certificate files are read again at every reload: the host's here, a site's
        // own by its tenant's next worker (so those tenants count as changed).
        let certificates = match spawn::provider_certificates(&self.config) {
            Ok(c) => Some(c),
            Err(e) => {
                error!("reload: {e:#}; keeping the dispatchers' certificates");
                None
            }
        };
        // Not "changed": their config is the same, their files may not be. Only the
        // tenants this reload is for (a reload of t3 leaves t1's worker alone).
        let mut certificates_reread: Vec<String> = Vec::new();
        for site in self.config.sites.iter().filter(|s| s.tls.is_some()) {
            if only.is_none_or(|t| t == site.tenant)
                && !changed.contains(&site.tenant)
                && !own_file.contains(&site.tenant)
                && !certificates_reread.contains(&site.tenant)
            {
                certificates_reread.push(site.tenant.clone());
            }
        }
        let mut undelivered = Vec::new();
        for slot in &self.dispatchers {
            if let Some((pid, channel, _)) = &slot.running
                && let Err(e) = channel
                    .send_large(
                        &MasterToDispatcher::Reload {
                            routing: routing.clone(),
                            certificates: certificates.clone(),
                        },
                        &[],
                    )
                    .await
            {
                error!(pid, "sending the dispatcher the new routes: {e}");
                undelivered.push(format!("dispatcher {pid}: {e}"));
            }
        }
        for tenant in changed.iter().chain(&own_file).chain(&certificates_reread) {
            self.retire_tenant(tenant).await;
        }
        self.keep_warm().await;
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let mut summary = match only {
            None => format!("reloaded: {} sites", self.config.sites.len()),
            Some(t) => format!(
                "reloaded tenant {t} only: {} sites in all",
                self.config.sites.len()
            ),
        };
        summary.push_str(&format!("; tenants changed: {}", list(&changed)));
        if !own_file.is_empty() {
            summary.push_str(&format!(
                "; own config file read again by a new worker: {}",
                list(&own_file)
            ));
        }
        if !certificates_reread.is_empty() {
            summary.push_str(&format!(
                "; unchanged, workers replaced to read their own certificates again: {}",
                list(&certificates_reread)
            ));
        }
        if !left_for_full.is_empty() {
            summary.push_str(&format!(
                "; not applied (edited, left for a full `condo reload`): {}",
                list(&left_for_full)
            ));
        }
        if !takes_restart.is_empty() {
            summary.push_str(&format!(
                "; not applied (takes a restart, the running value stays): {}",
                list(&takes_restart)
            ));
        }
        info!("{summary}");
        if !undelivered.is_empty() {
            // The workers follow the new config; a dispatcher that did not get it is
            // restarted by its exit (a broken channel means it is gone) with the new one.
            return Err(format!(
                "{summary}; but the new routes did not reach {}",
                undelivered.join(", ")
            ));
        }
        Ok(summary)
    }

    /// Drain a tenant's workers (each finishes its requests and hands back its idle
    /// connections) so the next request starts a fresh one.
    async fn retire_tenant(&mut self, tenant: &str) -> usize {
        let mut told = 0;
        for worker in self.workers.get_mut(tenant).into_iter().flatten() {
            if worker.draining {
                continue;
            }
            worker.draining = true;
            match worker.outbox.post(MasterToWorker::Retire, Vec::new()) {
                Ok(()) => told += 1,
                Err(e) => warn!(tenant, pid = worker.pid, "telling the worker to leave: {e}"),
            }
        }
        told
    }

    /// `condo upgrade`: start the binary at condo's path as a new master that takes
    /// over the listening sockets; once it serves, this one drains and leaves.
    fn start_upgrade(&mut self, reply: tokio::sync::oneshot::Sender<crate::control::Response>) {
        use crate::control::Response;
        if self.upgrade.is_some() {
            let _ = reply.send(Response::error("an upgrade is already under way"));
            return;
        }
        // /proc/self/exe says "(deleted)" once a package replaced the file: the new
        // binary is at the same path.
        let exe = PathBuf::from(
            self.exe
                .to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string(),
        );
        let sets: Vec<&[spawn::Bound]> =
            self.dispatchers.iter().map(|d| &d.listeners[..]).collect();
        let locks = self
            .cgroups
            .as_ref()
            .map(|c| c.lock_fds())
            .unwrap_or_default();
        let (mut child, ready) = match spawn::start_new_master(&exe, &self.config, &sets, &locks) {
            Ok(started) => started,
            Err(e) => {
                let _ = reply.send(Response::error(format!("upgrade: {e:#}")));
                return;
            }
        };
        let pid = child.id().unwrap_or(0);
        info!(pid, exe = %exe.display(), "upgrade: new master started; waiting until it serves");
        self.upgrade = Some(Upgrade::Starting(reply));
        // The new master may start workers in the groups of our retired ones' names.
        self.removals_stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let wait = async {
                let mut ready = tokio::net::unix::pipe::Receiver::from_owned_fd(ready)?;
                let mut said = Vec::new();
                ready.read_to_end(&mut said).await?;
                Ok::<_, std::io::Error>(said)
            };
            let outcome = match tokio::time::timeout(Duration::from_secs(60), wait).await {
                Ok(Ok(said)) if said.starts_with(b"ready") => Ok(pid),
                Ok(Ok(_)) => {
                    let status = child
                        .wait()
                        .await
                        .map(|s| s.to_string())
                        .unwrap_or_default();
                    Err(format!(
                        "the new master exited before it served ({status}); see its log"
                    ))
                }
                Ok(Err(e)) => Err(format!("waiting for the new master: {e}")),
                Err(_) => {
                    let _ = child.start_kill();
                    Err("the new master did not serve within 60 s; stopped it".to_string())
                }
            };
            if outcome.is_ok() {
                // It runs on its own now; reap it should it exit while we still run.
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
            }
            let _ = tx.send(Event::UpgradeStarted(outcome));
        });
    }

    async fn upgrade_started(&mut self, result: Result<u32, String>) {
        use crate::control::Response;
        let Some(Upgrade::Starting(reply)) = self.upgrade.take() else {
            return;
        };
        match result {
            Ok(pid) => {
                let grace = self
                    .config
                    .server
                    .limits
                    .keepalive_timeout
                    .min(Duration::from_secs(60));
                let _ = reply.send(Response::ok(format!(
                    "upgraded: the new master (pid {pid}) serves; the old one (pid {}) drains for up to {grace:?} and leaves",
                    std::process::id()
                )));
                info!(pid, "upgrade: the new master serves; draining");
                notify::main_pid(pid);
                // The ledger is the new master's from now on: save ours once more.
                self.publish();
                self.ledger_file = None;
                self.upgrade = Some(Upgrade::Draining {
                    workers_told: false,
                });
                for slot in &self.dispatchers {
                    if let Some((pid, channel, _)) = &slot.running
                        && let Err(e) = channel
                            .send(&MasterToDispatcher::Drain { grace }, &[])
                            .await
                    {
                        warn!(pid, "telling the dispatcher to drain: {e}");
                    }
                }
            }
            Err(e) => {
                error!("upgrade failed: {e}; this master keeps serving");
                self.removals_stop = Default::default();
                // The new master may have taken the pid file and the control socket.
                let _ = std::fs::write(pid_file(&self.config), format!("{}\n", std::process::id()));
                match control::bind(&self.config.server.run_dir) {
                    Ok(listener) => {
                        let (tx, rx) = mpsc::unbounded_channel();
                        tokio::spawn(control::serve(listener, tx));
                        self.control = rx;
                    }
                    Err(e) => error!("rebinding the control socket: {e:#}"),
                }
                let _ = reply.send(Response::error(format!(
                    "upgrade failed: {e}; the running master keeps serving"
                )));
            }
        }
    }

    fn upgrade_finished(&self) -> bool {
        matches!(self.upgrade, Some(Upgrade::Draining { workers_told: true }))
            && self.workers.is_empty()
    }

    async fn control(&mut self, request: crate::control::Request) -> crate::control::Response {
        use crate::control::{Request, Response};
        match request {
            Request::Status => Response {
                ok: true,
                message: None,
                status: Some(self.status()),
            },
            Request::RestartTenant { tenant } => {
                if !self.config.tenants.contains_key(&tenant) {
                    return Response::error(format!("no tenant `{tenant}` in the config"));
                }
                let told = self.retire_tenant(&tenant).await;
                self.keep_warm().await;
                info!(tenant, "restart-tenant: {told} worker(s) draining");
                Response::ok(format!(
                    "tenant {tenant}: {told} worker(s) draining; the next request starts a new one"
                ))
            }
            Request::ReloadTenant { tenant } => match self.reload(Some(&tenant)).await {
                Ok(summary) => Response::ok(summary),
                Err(e) => Response::error(e),
            },
            Request::Upgrade => Response::error("handled by start_upgrade"),
        }
    }

    fn status(&self) -> crate::control::Status {
        use crate::control::{Process, Status, TenantStatus};
        let process = |pid: u32, started: Instant, draining: bool| Process {
            pid,
            state: if draining { "draining" } else { "running" }.to_string(),
            uptime_secs: started.elapsed().as_secs(),
        };
        let sites = self.ledger.sites();
        let sites_by_tenant = self.config.sites_by_tenant();
        let tenants = self
            .config
            .tenants
            .values()
            .map(|t| {
                let workers = self.workers.get(&t.name).map(Vec::as_slice).unwrap_or(&[]);
                let stats = self
                    .groups
                    .get(&t.name)
                    .map(|g| g.stats())
                    .unwrap_or_default();
                let totals = sites.get(&t.name);
                let requests = totals.map_or(0, |s| {
                    s.values().map(|v| v.requests.iter().sum::<u64>()).sum()
                });
                let requests_5xx = totals.map_or(0, |s| s.values().map(|v| v.requests[4]).sum());
                TenantStatus {
                    name: t.name.clone(),
                    user: t.user.clone(),
                    isolation: format!("{:?}", t.isolation.mode).to_lowercase(),
                    sites: sites_by_tenant.get(t.name.as_str()).map_or(0, Vec::len),
                    workers: workers
                        .iter()
                        .map(|w| process(w.pid, w.started, w.draining))
                        .collect(),
                    connections: workers
                        .iter()
                        .flat_map(|w| &w.load)
                        .map(|l| l.connections)
                        .sum(),
                    queued: workers.iter().flat_map(|w| &w.load).map(|l| l.queued).sum(),
                    requests,
                    requests_at_ms: self.usage_reported_ms.get(&t.name).copied().unwrap_or(0),
                    requests_5xx,
                    memory_bytes: stats.memory_bytes,
                    memory_max: t.limits.memory_max,
                    cpu_seconds: stats.cpu_usec as f64 / 1e6,
                    oom_kills: stats.oom_kills,
                    crashes: self
                        .worker_crashes
                        .get(&t.name)
                        .map_or(0, |c| c.quick_exits),
                }
            })
            .collect();
        Status {
            schema: crate::control::STATUS_SCHEMA,
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            config: self.config.file.clone(),
            uptime_secs: self.started.elapsed().as_secs(),
            dispatchers: self
                .dispatchers
                .iter()
                .filter_map(|d| d.running.as_ref())
                .map(|(pid, _, started)| process(*pid, *started, false))
                .collect(),
            tenants,
        }
    }

    /// SIGUSR1: open the error log and every running worker's site logs again by
    /// name, as logrotate expects after moving them, and hand the new site logs to the
    /// workers (their scripts' stderr follows without a restart).
    async fn reopen_logs(&mut self) {
        match self.logs.error_log() {
            Ok(file) => crate::logging::reopen_error_log(file),
            Err(e) => error!("SIGUSR1: reopening the error log: {e:#}"),
        }
        let mut sent = 0;
        for (tenant, workers) in &self.workers {
            let gid = if self.privileged {
                self.config
                    .tenants
                    .get(tenant)
                    .and_then(|t| config::resolve_tenant(t, self.config.server.uid_range).ok())
                    .map(|c| c.gid)
            } else {
                None
            };
            for site in self.config.tenant_sites(tenant) {
                for kind in [ipc::LogKind::Access, ipc::LogKind::Error] {
                    let file = match self.logs.open_site_log(&site.name, kind, gid) {
                        Ok(f) => f,
                        Err(e) => {
                            error!(tenant, site = site.name, "SIGUSR1: {e:#}");
                            continue;
                        }
                    };
                    for worker in workers {
                        let message = MasterToWorker::SiteLog {
                            site: site.name.clone(),
                            kind,
                        };
                        // Each worker its own copy of the fd: its outbox owns it
                        // until sent.
                        let Ok(copy) = file.try_clone() else {
                            continue;
                        };
                        if worker.outbox.post(message, vec![copy.into()]).is_ok() {
                            sent += 1;
                        }
                    }
                }
            }
        }
        info!("SIGUSR1: logs reopened ({sent} site logs handed to workers)");
    }

    /// Stop every child: TERM, then KILL after a grace period.
    async fn stop(&mut self) {
        let mut pids: Vec<u32> = self.workers.values().flatten().map(|w| w.pid).collect();
        pids.extend(
            self.dispatchers
                .iter()
                .filter_map(|d| d.running.as_ref().map(|r| r.0)),
        );
        spawn::terminate(&pids, Duration::from_secs(5)).await;
        // Workers sent their last counts as they stopped: account for them.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while let Ok(event) = self.events.try_recv() {
            if let Event::FromWorker(tenant, pid, message @ WorkerToMaster::Usage(_)) = event {
                Box::pin(self.handle(Event::FromWorker(tenant, pid, message))).await;
            }
        }
        self.sample_cgroups();
        self.publish();
        if self.upgrade.is_some() {
            // The tenants' groups, the pid file and the sockets are the new master's.
            info!("stopped (upgraded)");
            return;
        }
        // Every group goes, whatever its tenants left running: all at once, each on a
        // thread of its own, within REMOVE_WITHIN.
        let mut all: Vec<cgroup::TenantGroup> = self.groups.drain().map(|(_, g)| g).collect();
        all.extend(self.retiring.drain(..).map(|r| r.group));
        let removals: Vec<_> = all
            .into_iter()
            .map(|group| {
                let stop = self.removals_stop.clone();
                tokio::task::spawn_blocking(move || {
                    let result = group.empty_and_remove(Instant::now() + REMOVE_WITHIN, &stop);
                    (group, result)
                })
            })
            .collect();
        for removal in removals {
            if let Ok((group, Err(e))) = removal.await {
                warn!("removing the cgroup {}: {e}", group.name());
            }
        }
        if let Some(cgroups) = &self.cgroups {
            cgroups.remove_parent();
        }
        // What this master made in run_dir goes with it: a control socket left behind
        // answers nothing (connection refused, not "no such file"), and a metrics file
        // left behind shows numbers of a server that is gone.
        for path in [
            pid_file(&self.config),
            self.config.server.run_dir.join(crate::control::SOCKET),
            spawn::metrics_file(&self.config),
        ] {
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!("removing {}: {e}", path.display());
            }
        }
        info!("stopped");
    }
}

/// The tenants whose section or sites differ between `before` and `after`, by name.
fn changed_tenants(before: &Config, after: &Config) -> Vec<String> {
    let names: std::collections::BTreeSet<&String> =
        before.tenants.keys().chain(after.tenants.keys()).collect();
    let (sites_before, sites_after) = (before.sites_by_tenant(), after.sites_by_tenant());
    names
        .into_iter()
        .filter(|name| {
            (before.tenants.get(*name), sites_before.get(name.as_str()))
                != (after.tenants.get(*name), sites_after.get(name.as_str()))
        })
        .cloned()
        .collect()
}
