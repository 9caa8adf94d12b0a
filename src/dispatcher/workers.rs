//! The dispatcher's links to tenant workers: asked of the master by tenant name,
//! shared by every connection, dropped when the worker goes away.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Seals every connection handed over; checks every one handed back.
    sealer: super::seal::Sealer,
    /// Per tenant: connections waiting for its worker, and its log budget.
    tenants: Mutex<HashMap<String, TenantWaits>>,
    queue: Queue,
}

/// How long, and how many, connections may wait for one tenant's worker.
#[derive(Debug, Clone, Copy)]
pub struct Queue {
    /// Past it, a connection still waiting gets 503.
    pub deadline: Duration,
    /// Connections waiting at once for one tenant's worker (`worker_queue_max`).
    pub max: usize,
    /// Connections relayed at once to one tenant's worker (`tenant_relays_max`).
    pub relays_max: usize,
}

#[derive(Default)]
struct TenantWaits {
    waiting: usize,
    /// Relays to the tenant's worker open now.
    relays: usize,
    /// When a failure was last logged for this tenant, and how many were not since.
    logged_at: Option<Instant>,
    unlogged: u64,
}

/// At most one line per tenant this often about failed hand-overs and refused
/// hand-backs: a tenant that makes them by the thousand gets no say in the log volume.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// One connection waiting for a tenant's worker (counted while it lives).
struct Waiting<'a> {
    workers: &'a Workers,
    tenant: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut tenants = self
            .workers
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tenants.get_mut(self.tenant) {
            t.waiting = t.waiting.saturating_sub(1);
        }
    }
}

/// One relayed connection of a tenant's, counted against `tenant_relays_max` until
/// dropped.
pub struct RelaySlot {
    workers: Arc<Workers>,
    tenant: String,
}

impl Drop for RelaySlot {
    fn drop(&mut self) {
        let mut tenants = self
            .workers
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tenants.get_mut(&self.tenant) {
            t.relays = t.relays.saturating_sub(1);
        }
    }
}

/// Called for every connection a worker hands back.
pub type HandBackFn = Arc<dyn Fn(Handoff, OwnedFd) + Send + Sync>;
/// Called when the master sends a reloaded routing table.
pub type ReloadFn = Arc<dyn Fn(Routing, Option<Vec<ProviderCertPem>>) + Send + Sync>;
/// Called when the master says a new master took over (binary upgrade).
pub type DrainFn = Arc<dyn Fn(std::time::Duration) + Send + Sync>;

impl Workers {
    pub fn new(master: Arc<MasterChannel>, queue: Queue) -> Result<Arc<Self>, String> {
        Ok(Arc::new(Self {
            master,
            links: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            sealer: super::seal::Sealer::new()?,
            tenants: Mutex::new(HashMap::new()),
            queue,
        }))
    }

    /// Count a connection as waiting for `tenant`'s worker; `None` when
    /// `worker_queue_max` already wait.
    fn wait_for<'a>(&'a self, tenant: &'a str) -> Option<Waiting<'a>> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let t = tenants.entry(tenant.to_string()).or_default();
        if t.waiting >= self.queue.max {
            return None;
        }
        t.waiting += 1;
        Some(Waiting {
            workers: self,
            tenant,
        })
    }

    /// Count a relay to `tenant`'s worker for as long as the returned slot lives;
    /// `None` when `tenant_relays_max` are open.
    pub fn relay_slot(self: &Arc<Self>, tenant: &str) -> Option<RelaySlot> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let t = tenants.entry(tenant.to_string()).or_default();
        if t.relays >= self.queue.relays_max {
            drop(tenants);
            self.log_failure(
                tenant,
                format_args!(
                    "tenant_relays_max ({}) relayed connections open: 503",
                    self.queue.relays_max
                ),
            );
            return None;
        }
        t.relays += 1;
        Some(RelaySlot {
            workers: self.clone(),
            tenant: tenant.to_string(),
        })
    }

    /// Connections waiting now for `tenant`'s worker.
    #[cfg(test)]
    fn waiting(&self, tenant: &str) -> usize {
        let tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        tenants.get(tenant).map_or(0, |t| t.waiting)
    }

    /// Log a failure about `tenant`, at most once per [`LOG_EVERY`] for that tenant
    /// (with how many went unlogged in between).
    fn log_failure(&self, tenant: &str, what: std::fmt::Arguments<'_>) {
        let unlogged = {
            let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
            let t = tenants.entry(tenant.to_string()).or_default();
            if t.logged_at.is_some_and(|at| at.elapsed() < LOG_EVERY) {
                t.unlogged += 1;
                return;
            }
            t.logged_at = Some(Instant::now());
            std::mem::take(&mut t.unlogged)
        };
        if unlogged > 0 {
            warn!(
                tenant,
                "{what} (and {unlogged} more such failures for this tenant in the last {LOG_EVERY:?})"
            );
        } else {
            warn!(tenant, "{what}");
        }
    }

    /// Give a connection to `tenant`'s worker, within the queue's deadline and its
    /// per-tenant cap. If the link turns out dead (the worker was killed), ask the
    /// master for a new worker once. Failures are logged here (rate-limited).
    /// `Ok`: whether that worker still takes requests, for a relay kept to it.
    pub async fn hand_over(
        &self,
        tenant: &str,
        handoff: &Handoff,
        fd: &OwnedFd,
    ) -> Result<crate::http::h2::Liveness, String> {
        let result = match self.wait_for(tenant) {
            None => Err(format!(
                "{} connections already wait for the worker of `{tenant}` (worker_queue_max): refused with 503",
                self.queue.max
            )),
            Some(_waiting) => {
                let deadline = self.queue.deadline;
                tokio::time::timeout(deadline, self.hand_over_now(tenant, handoff, fd))
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "the worker of `{tenant}` took no connection within {deadline:?}: refused with 503"
                        ))
                    })
            }
        };
        if let Err(reason) = &result {
            self.log_failure(tenant, format_args!("site {:?}: {reason}", handoff.site));
        }
        result
    }

    async fn hand_over_now(
        &self,
        tenant: &str,
        handoff: &Handoff,
        fd: &OwnedFd,
    ) -> Result<crate::http::h2::Liveness, String> {
        let mut sealed = handoff.clone();
        sealed.seal = self.sealer.seal(tenant, handoff, fd)?;
        let message = DispatcherToWorker::Connection(sealed);
        let mut last_error = String::new();
        // A retiring worker costs an attempt without an error; bounded all the same.
        for _attempt in 0..4 {
            let link = self.link(tenant).await?;
            let Some(_sending) = link.begin_send() else {
                self.forget(tenant, &link);
                continue;
            };
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
    pub fn try_hand_over(&self, tenant: &str, mut handoff: Handoff, fd: &OwnedFd) -> bool {
        let Ok(seal) = self.sealer.seal(tenant, &handoff, fd) else {
            return false;
        };
        handoff.seal = seal;
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
                    // Only the first fd can be the connection; any other closes here.
                    let Some(fd) = fds.into_iter().next() else {
                        self.log_failure(&tenant, format_args!("hand-back without a socket"));
                        continue;
                    };
                    match self.check_hand_back(&tenant, &handoff, &fd) {
                        Ok(()) => on_hand_back(handoff, fd),
                        Err(reason) => self.log_failure(
                            &tenant,
                            format_args!(
                                "refused a hand-back from the worker (claimed client {}, site {:?}): {reason}; closed",
                                handoff.peer, handoff.site
                            ),
                        ),
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

    /// A connection comes back from `tenant`'s worker: only a plain client connection
    /// this dispatcher passed to that tenant, as it passed it (the worker cannot name
    /// another socket, another client or local address, or a connection it got from
    /// elsewhere).
    fn check_hand_back(&self, tenant: &str, handoff: &Handoff, fd: &OwnedFd) -> Result<(), String> {
        if handoff.handover != crate::config::Handover::Pass
            || handoff.tls_handshake
            || handoff.secure
        {
            return Err("only plain connections passed to a worker come back".into());
        }
        self.sealer.check(tenant, handoff, fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::{MasterToDispatcher, raw_pair};

    /// A master that never answers: every connection for a tenant waits, each at most
    /// the deadline, and no more than `max` at once.
    #[tokio::test]
    async fn waiting_for_a_worker_is_bounded_in_time_and_count() {
        let (ours, _master_end) = raw_pair().unwrap();
        let queue = Queue {
            deadline: Duration::from_millis(300),
            max: 2,
            relays_max: 4,
        };
        let workers = Workers::new(Arc::new(Channel::new(ours).unwrap()), queue).unwrap();
        let (fd, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = OwnedFd::from(fd);
        let h = super::super::seal::test_handoff(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let started = Instant::now();
        let (first, second, third) = tokio::join!(
            workers.hand_over("a", &h, &fd),
            workers.hand_over("a", &h, &fd),
            async {
                // Once the two above wait: the third is refused at once.
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert_eq!(workers.waiting("a"), 2);
                let t = Instant::now();
                let r = workers.hand_over("a", &h, &fd).await;
                assert!(t.elapsed() < Duration::from_millis(100));
                // Another tenant is not affected by a's queue.
                let t = Instant::now();
                let other = workers.hand_over("b", &h, &fd).await;
                assert!(other.is_err() && t.elapsed() >= Duration::from_millis(250));
                r
            },
        );
        assert!(third.err().unwrap().contains("worker_queue_max"));
        assert!(first.err().unwrap().contains("within"));
        assert!(second.is_err());
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert_eq!(workers.waiting("a"), 0);
        assert_eq!(workers.waiting("b"), 0);
    }

    /// Through the real link code: a worker's hand-back reaches the dispatcher only
    /// when it is the connection that went to that worker, as it went.
    #[tokio::test]
    async fn forged_hand_backs_are_closed_genuine_ones_resume() {
        let (ours, master_end) = raw_pair().unwrap();
        let master: Channel<MasterToDispatcher, DispatcherToMaster> =
            Channel::new(master_end).unwrap();
        let queue = Queue {
            deadline: Duration::from_secs(5),
            max: 16,
            relays_max: 4,
        };
        let workers = Workers::new(Arc::new(Channel::new(ours).unwrap()), queue).unwrap();
        let (resumed_tx, mut resumed) = tokio::sync::mpsc::unbounded_channel();
        let on_hand_back: HandBackFn = Arc::new(move |h: Handoff, fd: OwnedFd| {
            let _ = resumed_tx.send((h, fd));
        });
        tokio::spawn(workers.clone().run_master_link(
            on_hand_back,
            Arc::new(|_, _| {}),
            Arc::new(|_| {}),
        ));
        // Worker links for tenants a and b, as the master would give them.
        let mut worker_ends = HashMap::new();
        for tenant in ["a", "b"] {
            let (dispatcher_side, worker_side) = raw_pair().unwrap();
            let message = MasterToDispatcher::Worker {
                tenant: tenant.into(),
                result: Ok(()),
            };
            master
                .send(&message, &[dispatcher_side.as_fd()])
                .await
                .unwrap();
            let worker: Channel<WorkerToDispatcher, DispatcherToWorker> =
                Channel::new(worker_side).unwrap();
            worker_ends.insert(tenant, worker);
        }
        // A client connection, handed to a's worker.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (conn, peer) = listener.accept().unwrap();
        let local = conn.local_addr().unwrap();
        let conn = OwnedFd::from(conn);
        assert!(
            workers
                .hand_over("a", &super::super::seal::test_handoff(peer, local), &conn)
                .await
                .is_ok()
        );
        let a = &worker_ends["a"];
        let (DispatcherToWorker::Connection(got), fds) = a.recv().await.unwrap().unwrap() else {
            panic!("expected a connection");
        };
        let got_fd = fds.into_iter().next().unwrap();
        let back = |mutate: fn(&mut Handoff)| {
            let mut h = got.clone();
            h.buffered = b"GET / HTTP/1.1\r\nHost: b.test\r\n\r\n".to_vec();
            mutate(&mut h);
            h
        };
        let send_back = |worker: &Channel<WorkerToDispatcher, DispatcherToWorker>,
                         h: Handoff,
                         fd: std::os::fd::BorrowedFd<'_>| {
            let message = WorkerToDispatcher::HandBack(h);
            worker.try_send(&message, &[fd]).unwrap();
        };
        // Forged: another client address; a socket the tenant made; a file; the
        // genuine connection and seal from another tenant's worker.
        send_back(
            a,
            back(|h| h.peer = "203.0.113.7:4444".parse().unwrap()),
            got_fd.as_fd(),
        );
        let (own, _) = std::os::unix::net::UnixStream::pair().unwrap();
        send_back(a, back(|_| {}), own.as_fd());
        let file = tempfile::tempfile().unwrap();
        send_back(a, back(|_| {}), file.as_fd());
        send_back(&worker_ends["b"], back(|_| {}), got_fd.as_fd());
        // The genuine hand-back, last.
        send_back(a, back(|_| {}), got_fd.as_fd());
        let (h, fd) = tokio::time::timeout(Duration::from_secs(5), resumed.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(h.peer, peer);
        assert_eq!(h.local, local);
        assert_eq!(h.buffered, back(|_| {}).buffered);
        let same = |x: &OwnedFd, y: &OwnedFd| {
            let (x, y) = (rustix::fs::fstat(x).unwrap(), rustix::fs::fstat(y).unwrap());
            (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino)
        };
        assert!(same(&fd, &conn));
        // Nothing else came through.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(resumed.try_recv().is_err());
    }
}
