//! When a worker leaves: after `idle_timeout` without a connection (scale to zero),
//! after `worker_max_requests`, or above `worker_memory_max`. It never just exits: it asks the
//! master, tells its dispatchers, hands idle connections back and finishes the requests
//! it is serving (see the retire steps in [`crate::ipc`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use super::PeerChannel;
use crate::config::Pool;
use crate::ipc::WorkerToDispatcher;

pub struct Lifecycle {
    pool: Pool,
    /// Connections this worker holds now.
    active: AtomicUsize,
    served: AtomicU64,
    /// When `active` last became zero (or the worker started).
    idle_since: Mutex<Instant>,
    asked: AtomicBool,
    retiring: watch::Sender<bool>,
    /// Set once retiring and every dispatcher has let go (said `Retired` or closed its
    /// link): no new request reaches this worker after that.
    released: watch::Sender<bool>,
    /// Wakes the monitor early (`worker_max_requests` reached).
    check_now: Notify,
    peers: Mutex<Vec<Weak<PeerChannel>>>,
    /// Dispatcher links still open: a retiring worker leaves when all are closed.
    open_peers: AtomicUsize,
}

/// Held for as long as a connection is being served.
pub struct ConnectionGuard(Arc<Lifecycle>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
    }
}

/// Held for as long as a dispatcher link is open.
pub struct PeerGuard(Arc<Lifecycle>);

impl Drop for PeerGuard {
    fn drop(&mut self) {
        self.0.open_peers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Lifecycle {
    pub fn new(pool: Pool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            active: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            idle_since: Mutex::new(Instant::now()),
            asked: AtomicBool::new(false),
            retiring: watch::channel(false).0,
            released: watch::channel(false).0,
            check_now: Notify::new(),
            peers: Mutex::new(Vec::new()),
            open_peers: AtomicUsize::new(0),
        })
    }

    pub fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        ConnectionGuard(self.clone())
    }

    pub fn peer(self: &Arc<Self>, peer: &Arc<PeerChannel>) -> PeerGuard {
        self.open_peers.fetch_add(1, Ordering::SeqCst);
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.retain(|p| p.strong_count() > 0);
        peers.push(Arc::downgrade(peer));
        PeerGuard(self.clone())
    }

    pub fn request_done(&self) {
        if Some(self.served.fetch_add(1, Ordering::Relaxed) + 1) == self.pool.worker_max_requests {
            self.check_now.notify_one();
        }
    }

    /// Resolves once the worker is retiring (at once if it already is).
    pub async fn retired(&self) {
        let mut rx = self.retiring.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Resolves once the worker is retiring and no dispatcher sends it anything more.
    pub async fn released(&self) {
        let mut rx = self.released.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Why this worker should be replaced now, if it should.
    fn reason_to_leave(&self) -> Option<String> {
        let served = self.served.load(Ordering::Relaxed);
        if let Some(max) = self.pool.worker_max_requests
            && served >= max
        {
            return Some(format!("served {served} requests (worker_max_requests)"));
        }
        if let Some(max) = self.pool.worker_memory_max
            && let Some(rss) = resident_bytes()
            && rss > max
        {
            return Some(format!(
                "resident memory {} MiB is above worker_memory_max {} MiB",
                rss >> 20,
                max >> 20
            ));
        }
        if self.pool.workers_min == 0 && self.active.load(Ordering::SeqCst) == 0 {
            let idle = self
                .idle_since
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed();
            if idle >= self.pool.idle_timeout {
                return Some(format!("idle for {idle:.0?} (idle_timeout)"));
            }
        }
        None
    }

    /// Ask the master (through `ask`) to be replaced once a reason appears. Runs for
    /// the life of the worker.
    pub async fn monitor(self: Arc<Self>, ask: impl Fn(String) -> bool) {
        let tick =
            (self.pool.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = self.check_now.notified() => {}
            }
            if self.asked.load(Ordering::SeqCst) {
                return;
            }
            if let Some(reason) = self.reason_to_leave() {
                info!("asking to be replaced: {reason}");
                if ask(reason) {
                    self.asked.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }

    /// The master agreed: tell every dispatcher, then wait until they have all closed
    /// their links or said `Retired`, and the connections here are done, or `grace`
    /// has passed.
    pub async fn retire(&self, grace: Duration) {
        self.retiring.send_replace(true);
        let peers: Vec<Arc<PeerChannel>> = self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for peer in peers {
            if let Err(e) = peer.send(&WorkerToDispatcher::Retiring, &[]).await {
                warn!("telling a dispatcher this worker leaves: {e}");
            }
        }
        let deadline = Instant::now() + grace;
        while (self.open_peers.load(Ordering::SeqCst) > 0 || self.active.load(Ordering::SeqCst) > 0)
            && Instant::now() < deadline
        {
            if self.open_peers.load(Ordering::SeqCst) == 0 {
                self.released.send_replace(true);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.active.load(Ordering::SeqCst);
        if left > 0 {
            warn!("leaving with {left} connections still open after {grace:?}");
        }
    }
}

/// This process's resident set, from /proc/self/statm.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}
