//! What jobs may hold at once, by what each thing costs. A stream holds a stream slot for
//! its whole life (memory and sockets: a large cap); an extraction holds an extraction slot
//! while its Python worker runs (CPU: about one per core, so a burst finishes one after
//! another instead of all late together); a yt-dlp download or an ffmpeg merge holds a
//! process slot while its processes live. A job that finds no free slot waits in that
//! slot's queue, first come first served; a full queue, a wait past the queue timeout or a
//! draining sidecar gives `busy`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use streamgate_protocol::{ErrorCode, JobError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::Config;

/// The three kinds of slot.
pub(crate) struct Slots {
    /// Streams open at once, whatever moves their bytes (`--max-streams`).
    pub streams: Gate,
    /// yt-dlp extractions running at once (`--max-extractions`).
    pub extractions: Gate,
    /// yt-dlp downloads and ffmpeg merges running at once (`--max-jobs`).
    pub processes: Gate,
}

impl Slots {
    pub fn new(config: &Config) -> Slots {
        let gate = |what, flag, limit| Gate {
            what,
            flag,
            limit,
            permits: Arc::new(Semaphore::new(limit)),
            queue: config.queue,
            timeout: config.queue_timeout,
            waiting: AtomicUsize::new(0),
        };
        Slots {
            streams: gate("stream", "--max-streams", config.max_streams),
            extractions: gate("extraction", "--max-extractions", config.max_extractions),
            processes: gate("download and merge", "--max-jobs", config.max_jobs),
        }
    }
}

/// A job's slot of one kind; freed when dropped.
pub(crate) type Slot = OwnedSemaphorePermit;

/// Why a job got no slot.
pub(crate) enum Refused<P> {
    /// Send the client this `busy` error.
    Busy(JobError),
    /// The client did something while waiting (what `peer` gave).
    Peer(P),
}

/// One kind of slot: a fair semaphore and its bounded queue.
pub(crate) struct Gate {
    what: &'static str,
    flag: &'static str,
    limit: usize,
    permits: Arc<Semaphore>,
    queue: usize,
    timeout: Duration,
    waiting: AtomicUsize,
}

impl Gate {
    /// A free slot now, or one after waiting in the queue (FIFO). `peer` ends the wait when
    /// the client says or does anything.
    pub async fn enter<P>(
        &self,
        draining: &CancellationToken,
        peer: impl Future<Output = P>,
    ) -> Result<Slot, Refused<P>> {
        if let Ok(slot) = Arc::clone(&self.permits).try_acquire_owned() {
            return Ok(slot);
        }
        let queued = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _leave = Leave(&self.waiting);
        if queued >= self.queue {
            return Err(self.busy(format!(
                "the sidecar is overloaded: all {} {} slots ({}) are taken and {queued} jobs are waiting for one (--queue)",
                self.limit, self.what, self.flag
            )));
        }
        let since = Instant::now();
        let shutting_down = || self.busy("the sidecar is shutting down".into());
        let slot = tokio::select! {
            slot = Arc::clone(&self.permits).acquire_owned() => slot.map_err(|_| shutting_down())?,
            _ = tokio::time::sleep(self.timeout) => return Err(self.busy(format!(
                "no {} slot of {} ({}) came free within the queue timeout ({} s)",
                self.what, self.limit, self.flag, self.timeout.as_secs_f64()
            ))),
            _ = draining.cancelled() => return Err(shutting_down()),
            ev = peer => return Err(Refused::Peer(ev)),
        };
        debug!(slot = self.what, queued, waited = ?since.elapsed(), "got a slot after waiting");
        Ok(slot)
    }

    fn busy<P>(&self, message: String) -> Refused<P> {
        Refused::Busy(JobError::new(ErrorCode::Busy, message))
    }
}

/// Leaves the queue however the wait ends.
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(limit: usize, queue: usize, timeout: Duration) -> Gate {
        Gate {
            what: "thing",
            flag: "--max-things",
            limit,
            permits: Arc::new(Semaphore::new(limit)),
            queue,
            timeout,
            waiting: AtomicUsize::new(0),
        }
    }

    fn busy<P>(r: Result<Slot, Refused<P>>) -> String {
        match r {
            Err(Refused::Busy(e)) => e.message,
            Ok(_) => panic!("got a slot"),
            Err(Refused::Peer(_)) => panic!("peer"),
        }
    }

    #[tokio::test]
    async fn waiters_get_slots_in_arrival_order() {
        let gate = Arc::new(gate(1, 8, Duration::from_secs(60)));
        let none = CancellationToken::new();
        let first = gate.enter(&none, std::future::pending::<()>()).await.ok();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        for i in 0..5 {
            let (waiter, none, tx) = (Arc::clone(&gate), none.clone(), tx.clone());
            waiters.push(tokio::spawn(async move {
                let slot = waiter.enter(&none, std::future::pending::<()>()).await.ok();
                tx.send(i).unwrap();
                drop(slot);
            }));
            // Each waiter is queued before the next one arrives.
            while gate.waiting.load(Ordering::SeqCst) <= i {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        for w in waiters {
            w.await.unwrap();
        }
        let order: Vec<usize> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(order, [0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_full_queue_a_timeout_a_drain_or_the_peer_end_the_wait() {
        let none = CancellationToken::new();
        let never = std::future::pending::<()>;
        let g = gate(1, 0, Duration::from_secs(60));
        let _held = g.enter(&none, never()).await.ok();
        assert!(
            busy(g.enter(&none, never()).await)
                .contains("all 1 thing slots (--max-things) are taken")
        );
        assert_eq!(g.waiting.load(Ordering::SeqCst), 0, "left the queue");

        let g = gate(1, 1, Duration::from_millis(50));
        let _held = g.enter(&none, never()).await.ok();
        assert!(busy(g.enter(&none, never()).await).contains("within the queue timeout"));

        let g = gate(1, 1, Duration::from_secs(60));
        let _held = g.enter(&none, never()).await.ok();
        let draining = CancellationToken::new();
        draining.cancel();
        assert!(busy(g.enter(&draining, never()).await).contains("shutting down"));
        match g.enter(&none, async { 7 }).await {
            Err(Refused::Peer(7)) => {}
            _ => panic!("the peer's event ends the wait"),
        }
        assert_eq!(g.waiting.load(Ordering::SeqCst), 0);
    }
}
