//! A site's `max_clients`: at most that many of its requests are served at once; a
//! bounded number wait for a slot (`queue_max`, `queue_timeout`), the rest get 503 at
//! once. A site whose backend hangs fills only its own slots.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Gate {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue_max: usize,
    queue_timeout: Duration,
}

/// Why a request was not let through.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    QueueFull,
    WaitedTooLong,
}

impl Gate {
    pub fn new(max_clients: usize, queue_max: usize, queue_timeout: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_clients)),
            waiting: AtomicUsize::new(0),
            queue_max,
            queue_timeout,
        }
    }

    /// Requests waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// A slot for one request, held until the permit is dropped.
    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, Refused> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.queue_max {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Refused::QueueFull);
        }
        let waited =
            tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        match waited {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it like a timeout all the same.
            Ok(Err(_)) | Err(_) => Err(Refused::WaitedTooLong),
        }
    }

    /// Seconds a refused client is told to wait (Retry-After).
    pub fn retry_after(&self) -> u64 {
        self.queue_timeout.as_secs().clamp(1, 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn cap_queue_and_refusal() {
        let gate = Arc::new(Gate::new(2, 1, Duration::from_secs(5)));
        let a = gate.enter().await.unwrap();
        let _b = gate.enter().await.unwrap();
        // Third waits in the queue; fourth finds the queue full.
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.enter().await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        assert_eq!(gate.enter().await.unwrap_err(), Refused::QueueFull);
        drop(a);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        // Both slots busy again, nobody releases: the waiter times out.
        let _c = gate.enter().await.unwrap();
        let gate2 = gate.clone();
        let late = tokio::spawn(async move { gate2.enter().await.map(|_| ()) });
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(late.await.unwrap(), Err(Refused::WaitedTooLong));
    }
}
