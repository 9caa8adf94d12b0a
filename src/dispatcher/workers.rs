//! The dispatcher's links to tenant workers: asked of the master by tenant name,
//! shared by every connection, dropped when the worker goes away.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::ipc::{
    Channel, DispatcherToMaster, DispatcherToWorker, Handoff, MasterToDispatcher, ProviderCertPem,
    Routing, WorkerToDispatcher,
};

pub type MasterChannel = Channel<DispatcherToMaster, MasterToDispatcher>;
pub type WorkerChannel = Channel<DispatcherToWorker, WorkerToDispatcher>;

type Waiters = Vec<oneshot::Sender<Result<Arc<Link>, String>>>;

/// A channel to one worker, and what it takes to retire it without losing a connection.
pub struct Link {
    channel: WorkerChannel,
    /// Set when the worker said `Retiring`: no new connection goes to it.
    retired: AtomicBool,
    /// Sends of a connection under way; `Retired` waits for them, so every connection
    /// sent reaches the worker before the message that ends the link.
    sending: AtomicUsize,
}

impl Link {
    /// Claim the right to send a connection; `None` once the worker is retiring.
    fn begin_send(&self) -> Option<SendGuard<'_>> {
        // SeqCst on both sides: either we see `retired`, or `retire` sees our count.
        self.sending.fetch_add(1, Ordering::SeqCst);
        let guard = SendGuard(self);
        (!self.retired.load(Ordering::SeqCst)).then_some(guard)
    }

    async fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        while self.sending.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if let Err(e) = self.channel.send(&DispatcherToWorker::Retired, &[]).await {
            debug!("telling a retiring worker it may go: {e}");
        }
    }
}

struct SendGuard<'a>(&'a Link);

impl Drop for SendGuard<'_> {
    fn drop(&mut self) {
        self.0.sending.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Workers {
    master: Arc<MasterChannel>,
    links: Mutex<HashMap<String, Arc<Link>>>,
    pending: Mutex<HashMap<String, Waiters>>,
}

/// Called for every connection a worker hands back.
pub type HandBackFn = Arc<dyn Fn(Handoff, OwnedFd) + Send + Sync>;
/// Called when the master sends a reloaded routing table.
pub type ReloadFn = Arc<dyn Fn(Routing, Option<Vec<ProviderCertPem>>) + Send + Sync>;
/// Called when the master says a new master took over (binary upgrade).
pub type DrainFn = Arc<dyn Fn(std::time::Duration) + Send + Sync>;

impl Workers {
    pub fn new(master: Arc<MasterChannel>) -> Arc<Self> {
        Arc::new(Self {
            master,
            links: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// Give a connection to `tenant`'s worker. If the link turns out dead (the worker
    /// was killed), ask the master for a new worker once.
    /// `Ok`: whether that worker still takes requests, for a relay kept to it.
    pub async fn hand_over(
        &self,
        tenant: &str,
        handoff: &Handoff,
        fd: &OwnedFd,
    ) -> Result<crate::http::h2::Liveness, String> {
        let mut last_error = String::new();
        // A retiring worker costs an attempt without an error; bounded all the same.
        for _attempt in 0..4 {
            let link = self.link(tenant).await?;
            let Some(_sending) = link.begin_send() else {
                self.forget(tenant, &link);
                continue;
            };
            let message = DispatcherToWorker::Connection(handoff.clone());
            match link.channel.send(&message, &[fd.as_fd()]).await {
                Ok(()) => {
                    let link = link.clone();
                    return Ok(Arc::new(move || !link.retired.load(Ordering::SeqCst)));
                }
                Err(e) => {
                    debug!(tenant, "worker link failed: {e}");
                    last_error = e.to_string();
                    self.forget(tenant, &link);
                }
            }
        }
        Err(format!("worker of `{tenant}` unreachable: {last_error}"))
    }

    /// Give a connection to `tenant`'s worker only if that needs no waiting: the link
    /// exists and takes the message at once. Saves a task per connection on the hot path.
    pub fn try_hand_over(&self, tenant: &str, handoff: Handoff, fd: &OwnedFd) -> bool {
        let link = self
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .cloned();
        let Some(link) = link else { return false };
        let Some(_sending) = link.begin_send() else {
            return false;
        };
        let message = DispatcherToWorker::Connection(handoff);
        match link.channel.try_send(&message, &[fd.as_fd()]) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => {
                debug!(tenant, "worker link failed: {e}");
                self.forget(tenant, &link);
                false
            }
        }
    }

    async fn link(&self, tenant: &str) -> Result<Arc<Link>, String> {
        if let Some(link) = self
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
        {
            return Ok(link.clone());
        }
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let waiters = pending.entry(tenant.to_string()).or_default();
            waiters.push(tx);
            waiters.len() == 1
        };
        if first {
            let ask = DispatcherToMaster::WantWorker {
                tenant: tenant.to_string(),
            };
            if let Err(e) = self.master.send(&ask, &[]).await {
                // Without the master nothing can be served; the process exits soon.
                self.resolve(tenant, Err(format!("master unreachable: {e}")));
            }
        }
        rx.await.unwrap_or_else(|_| Err("master went away".into()))
    }

    fn forget(&self, tenant: &str, link: &Arc<Link>) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if links.get(tenant).is_some_and(|l| Arc::ptr_eq(l, link)) {
            links.remove(tenant);
        }
    }

    fn resolve(&self, tenant: &str, result: Result<Arc<Link>, String>) {
        if let Ok(link) = &result {
            self.links
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(tenant.to_string(), link.clone());
        }
        let waiters = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tenant);
        for waiter in waiters.into_iter().flatten() {
            let _ = waiter.send(result.clone());
        }
    }

    /// Read the master's answers until it goes away, then return.
    pub async fn run_master_link(
        self: Arc<Self>,
        on_hand_back: HandBackFn,
        on_reload: ReloadFn,
        on_drain: DrainFn,
    ) {
        loop {
            let (message, fds) = match self.master.recv().await {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) => {
                    warn!("bad message from the master: {e}");
                    return;
                }
            };
            match message {
                MasterToDispatcher::Worker {
                    tenant,
                    result: Ok(()),
                } => {
                    let link = fds
                        .into_iter()
                        .next()
                        .ok_or_else(|| "master sent no worker socket".to_string())
                        .and_then(|fd| Channel::new(fd).map_err(|e| e.to_string()))
                        .map(|channel| {
                            Arc::new(Link {
                                channel,
                                retired: AtomicBool::new(false),
                                sending: AtomicUsize::new(0),
                            })
                        });
                    if let Ok(link) = &link {
                        tokio::spawn(self.clone().read_hand_backs(
                            tenant.clone(),
                            link.clone(),
                            on_hand_back.clone(),
                        ));
                    }
                    self.resolve(&tenant, link);
                }
                MasterToDispatcher::Worker {
                    tenant,
                    result: Err(reason),
                } => self.resolve(&tenant, Err(reason)),
                MasterToDispatcher::Reload {
                    routing,
                    certificates,
                } => on_reload(routing, certificates),
                MasterToDispatcher::Drain { grace } => on_drain(grace),
                MasterToDispatcher::Init(_) => warn!("unexpected second Init from the master"),
            }
        }
    }

    async fn read_hand_backs(
        self: Arc<Self>,
        tenant: String,
        link: Arc<Link>,
        on_hand_back: HandBackFn,
    ) {
        loop {
            match link.channel.recv().await {
                Ok(Some((WorkerToDispatcher::HandBack(handoff), fds))) => {
                    match fds.into_iter().next() {
                        Some(fd) => on_hand_back(handoff, fd),
                        None => warn!(tenant, "hand-back without a socket"),
                    }
                }
                Ok(Some((WorkerToDispatcher::Retiring, _))) => {
                    // New connections go to a new worker; this one still hands back
                    // connections until it closes the link.
                    self.forget(&tenant, &link);
                    link.retire().await;
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(tenant, "bad message from the worker: {e}");
                    break;
                }
            }
        }
        self.forget(&tenant, &link);
    }
}
