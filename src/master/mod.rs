//! The master: condo's only root code. A broker that binds the listeners, opens log
//! files, starts the dispatcher and the tenant workers, passes fds between them and
//! supervises them. It never reads a byte from a client.

mod logs;
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

use crate::config::{self, Config, Credentials};
use crate::ipc::{
    self, Channel, DispatcherToMaster, MasterToDispatcher, MasterToWorker, WorkerToMaster,
};

type DispatcherChannel = Channel<MasterToDispatcher, DispatcherToMaster>;
type WorkerChannel = Channel<MasterToWorker, WorkerToMaster>;

/// Things the master's loop reacts to, sent by the tasks that watch each child.
enum Event {
    FromDispatcher(u32, DispatcherToMaster),
    DispatcherExited(u32, String),
    WorkerExited(String, u32, String),
    RestartDispatcher,
}

struct WorkerHandle {
    pid: u32,
    channel: Arc<WorkerChannel>,
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
    listeners: Vec<OwnedFd>,
    logs: logs::LogFiles,
    dispatcher: Option<(u32, Arc<DispatcherChannel>, Instant)>,
    dispatcher_crashes: CrashRecord,
    workers: HashMap<String, WorkerHandle>,
    worker_started: HashMap<String, Instant>,
    worker_crashes: HashMap<String, CrashRecord>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
}

/// Load the config and run the master in the foreground until TERM or INT.
pub fn serve(config_path: &Path) -> anyhow::Result<()> {
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let master = Master::new(config).await?;
        master.run().await
    })
}

impl Master {
    async fn new(config: Config) -> anyhow::Result<Self> {
        let privileged = rustix::process::geteuid().is_root();
        let logs = logs::LogFiles::prepare(&config.server.log_dir, privileged)?;
        crate::logging::init_tracing(Some(logs.error_log()?));
        std::fs::create_dir_all(&config.server.run_dir)
            .with_context(|| format!("creating run_dir {}", config.server.run_dir.display()))?;
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
        let listeners = spawn::bind_listeners(&config).await?;
        let (events_tx, events) = mpsc::unbounded_channel();
        Ok(Self {
            exe: std::env::current_exe().context("finding condo's own binary")?,
            config,
            dispatcher_credentials,
            privileged,
            listeners,
            logs,
            dispatcher: None,
            dispatcher_crashes: CrashRecord::default(),
            workers: HashMap::new(),
            worker_started: HashMap::new(),
            worker_crashes: HashMap::new(),
            events_tx,
            events,
        })
    }

    async fn run(mut self) -> anyhow::Result<()> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        if let Err(e) = self.start_dispatcher().await {
            self.restart_dispatcher_later(
                Duration::ZERO,
                &format!("starting the dispatcher failed: {e:#}"),
            );
        }
        loop {
            tokio::select! {
                Some(event) = self.events.recv() => self.handle(event).await,
                _ = term.recv() => { info!("SIGTERM: stopping"); break; }
                _ = int.recv() => { info!("SIGINT: stopping"); break; }
                _ = hup.recv() => warn!("SIGHUP: live reload is not implemented yet; restart condo to apply config changes"),
                _ = usr1.recv() => warn!("SIGUSR1: log reopening is not implemented yet"),
            }
        }
        self.stop().await;
        Ok(())
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::FromDispatcher(pid, DispatcherToMaster::WantWorker { tenant }) => {
                if self.dispatcher.as_ref().map(|d| d.0) != Some(pid) {
                    return;
                }
                let result = self.connect_dispatcher_to(&tenant).await;
                let Some((_, channel, _)) = &self.dispatcher else {
                    return;
                };
                let sent = match result {
                    Ok(end) => {
                        let message = MasterToDispatcher::Worker {
                            tenant,
                            result: Ok(()),
                        };
                        channel.send(&message, &[end.as_fd()]).await
                    }
                    Err(reason) => {
                        warn!(tenant, "no worker: {reason}");
                        channel
                            .send(
                                &MasterToDispatcher::Worker {
                                    tenant,
                                    result: Err(reason),
                                },
                                &[],
                            )
                            .await
                    }
                };
                if let Err(e) = sent {
                    warn!("answering the dispatcher failed: {e}");
                }
            }
            Event::DispatcherExited(pid, status) => {
                if self.dispatcher.as_ref().map(|d| d.0) != Some(pid) {
                    return;
                }
                let lived = self
                    .dispatcher
                    .take()
                    .map_or(Duration::ZERO, |d| d.2.elapsed());
                self.restart_dispatcher_later(
                    lived,
                    &format!("dispatcher {pid} exited ({status})"),
                );
            }
            Event::RestartDispatcher => {
                if let Err(e) = self.start_dispatcher().await {
                    self.restart_dispatcher_later(
                        Duration::ZERO,
                        &format!("starting the dispatcher failed: {e:#}"),
                    );
                }
            }
            Event::WorkerExited(tenant, pid, status) => {
                if self.workers.get(&tenant).map(|w| w.pid) == Some(pid) {
                    self.workers.remove(&tenant);
                }
                let lived = self
                    .worker_started
                    .remove(&tenant)
                    .map_or(Duration::ZERO, |t| t.elapsed());
                let record = self.worker_crashes.entry(tenant.clone()).or_default();
                record.exited(lived);
                warn!(
                    tenant,
                    pid,
                    "worker exited ({status}) after {lived:?}; the next request starts a new one"
                );
            }
        }
    }

    /// A fresh channel end connected to `tenant`'s worker, starting the worker if needed.
    async fn connect_dispatcher_to(&mut self, tenant: &str) -> Result<OwnedFd, String> {
        for _attempt in 0..2 {
            let worker = self.ensure_worker(tenant).await?;
            let (for_worker, for_dispatcher) =
                ipc::raw_pair().map_err(|e| format!("socketpair: {e}"))?;
            match worker
                .send(&MasterToWorker::NewPeer, &[for_worker.as_fd()])
                .await
            {
                Ok(()) => return Ok(for_dispatcher),
                Err(e) => {
                    // It died between the lookup and now; start a new one once.
                    warn!(tenant, "worker did not take a new peer: {e}");
                    self.workers.remove(tenant);
                }
            }
        }
        Err("the worker keeps dying on start".into())
    }

    async fn ensure_worker(&mut self, tenant: &str) -> Result<Arc<WorkerChannel>, String> {
        if let Some(w) = self.workers.get(tenant) {
            return Ok(w.channel.clone());
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
        let sites: Vec<_> = self.config.tenant_sites(tenant).cloned().collect();
        let (child, channel) = spawn::start_worker(
            &self.exe,
            tenant,
            credentials,
            sites,
            &self.config,
            &self.logs,
        )
        .await
        .map_err(|e| format!("starting the worker failed: {e:#}"))?;
        let pid = child.id().unwrap_or(0);
        info!(tenant, pid, "worker started");
        let channel = Arc::new(channel);
        self.workers.insert(
            tenant.to_string(),
            WorkerHandle {
                pid,
                channel: channel.clone(),
            },
        );
        self.worker_started
            .insert(tenant.to_string(), Instant::now());
        let tx = self.events_tx.clone();
        let tenant = tenant.to_string();
        tokio::spawn(async move {
            let status = spawn::wait(child).await;
            let _ = tx.send(Event::WorkerExited(tenant, pid, status));
        });
        Ok(channel)
    }

    /// Start a new dispatcher after a backoff that grows while it keeps dying quickly.
    fn restart_dispatcher_later(&mut self, lived: Duration, why: &str) {
        self.dispatcher_crashes.exited(lived);
        let delay = self
            .dispatcher_crashes
            .delay()
            .max(Duration::from_millis(20));
        error!("{why}; restarting the dispatcher in {delay:?}");
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Event::RestartDispatcher);
        });
    }

    async fn start_dispatcher(&mut self) -> anyhow::Result<()> {
        let (child, channel, init) = spawn::start_dispatcher(
            &self.exe,
            &self.config,
            self.dispatcher_credentials.clone(),
            &self.listeners,
        )
        .await?;
        let pid = child.id().unwrap_or(0);
        info!(pid, user = self.config.server.user, "dispatcher started");
        let channel = Arc::new(channel);
        self.dispatcher = Some((pid, channel.clone(), Instant::now()));
        let tx = self.events_tx.clone();
        let reader = channel.clone();
        tokio::spawn(async move {
            // Read requests until the channel closes; then report the exit.
            loop {
                match reader.recv().await {
                    Ok(Some((message, _fds))) => {
                        if tx.send(Event::FromDispatcher(pid, message)).is_err() {
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
            let _ = tx.send(Event::DispatcherExited(pid, status));
        });
        if let Err(e) = channel.send(&init, &[]).await {
            // It died already; its exit event brings the restart.
            warn!(pid, "sending the dispatcher its config: {e}");
        }
        Ok(())
    }

    /// Stop every child: TERM, then KILL after a grace period.
    async fn stop(&mut self) {
        let mut pids: Vec<u32> = self.workers.values().map(|w| w.pid).collect();
        if let Some((pid, _, _)) = &self.dispatcher {
            pids.push(*pid);
        }
        spawn::terminate(&pids, Duration::from_secs(5)).await;
        info!("stopped");
    }
}
