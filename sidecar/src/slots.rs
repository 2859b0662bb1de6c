//! What jobs may hold at once, by what each thing costs, and how tenants share it. A stream
//! holds a stream slot for its whole life (memory and sockets: a large cap); an extraction
//! holds an extraction slot while its Python worker runs (CPU: about one per core, so a
//! burst finishes one after another instead of all late together); a yt-dlp download or an
//! ffmpeg merge holds a process slot while its processes live.
//!
//! Tenants (a job's `tenant`; jobs without one are one tenant) share each kind fairly:
//! - a tenant holds at most its quota of the stream and process slots (`--tenant-share`,
//!   default half, rounded up): those are held for a media's whole length, so one tenant's
//!   stalled or slow clients cannot take them all. Extraction slots have no quota: each is
//!   held for one extraction only, and the turns below already hand the next free one to
//!   the tenant that waited least recently.
//! - a job that finds no slot (or its tenant at quota) waits in its tenant's queue; a free
//!   slot goes to the tenants in turn (round-robin, skipping those at quota), each tenant's
//!   jobs first come first served. So tenant B's job is never queued behind tenant A's
//!   backlog. Nor can that backlog keep B out of the queue: a tenant may fill the whole
//!   queue while nobody else needs a place, but once it is full, a job of a tenant below
//!   its share of the places (`--tenant-share` of `--queue`, every kind) takes the newest
//!   place of a tenant above its share, whose job gets `busy`. A full queue with nobody
//!   above their share, a wait past the queue timeout or a draining sidecar gives `busy`,
//!   saying which quota was hit.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use streamgate_protocol::{ErrorCode, JobError};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

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
        let queue = Queue::new(config.queue, config.tenant_share, config.queue_timeout);
        let gate = |what, flag, limit, share| Gate::new(what, flag, limit, share, queue);
        let share = Some(config.tenant_share);
        Slots {
            streams: gate("stream", "--max-streams", config.max_streams, share),
            extractions: gate(
                "extraction",
                "--max-extractions",
                config.max_extractions,
                None,
            ),
            processes: gate("download and merge", "--max-jobs", config.max_jobs, share),
        }
    }
}

/// The slots one tenant may hold of `limit` at a share of `percent`: rounded up, so that
/// every tenant gets one, but below `limit` whenever `limit` > 1 and `percent` < 100.
fn quota(limit: usize, percent: u8) -> usize {
    if limit == 0 {
        return 0;
    }
    let all = if percent < 100 { limit - 1 } else { limit };
    (limit * usize::from(percent))
        .div_ceil(100)
        .clamp(1, all.max(1))
}

/// Where a gate's jobs wait for a slot: one for every kind, from the sidecar's flags.
#[derive(Clone, Copy)]
pub(crate) struct Queue {
    /// Jobs waiting at most, all tenants together (`--queue`).
    len: usize,
    /// Of those, one tenant's at most (`--tenant-share` of `len`).
    per_tenant: usize,
    share: u8,
    /// The longest a job waits (`--queue-timeout`).
    timeout: Duration,
}

impl Queue {
    pub fn new(len: usize, share: u8, timeout: Duration) -> Queue {
        Queue {
            len,
            per_tenant: quota(len, share),
            share,
            timeout,
        }
    }

    /// A tenant's share of the places, for messages.
    fn share(&self) -> String {
        format!(
            "{} of the {} places (--queue × --tenant-share {}%)",
            self.per_tenant, self.len, self.share
        )
    }
}

/// Why a job got no slot.
pub(crate) enum Refused<P> {
    /// Send the client this `busy` error.
    Busy(JobError),
    /// The client did something while waiting (what `peer` gave).
    Peer(P),
}

/// One kind of slot: its count, each tenant's quota and the tenants' queues.
pub(crate) struct Gate {
    what: &'static str,
    flag: &'static str,
    limit: usize,
    /// `--tenant-share` when this kind has a quota (it is then `state.quota`).
    share: Option<u8>,
    queue: Queue,
    state: Arc<Mutex<State>>,
}

/// A gate's books; every change happens under its lock, so a slot is never lost or given
/// twice however a wait ends.
struct State {
    /// Slots nobody holds.
    free: usize,
    /// Slots one tenant may hold.
    quota: usize,
    /// Tenants holding or waiting; "" is the jobs without a tenant.
    tenants: HashMap<String, Tenant>,
    /// Tenants with waiting jobs, the next to be served first.
    turns: VecDeque<String>,
    /// Jobs waiting, all tenants together.
    waiting: usize,
    next_id: u64,
}

#[derive(Default)]
struct Tenant {
    held: usize,
    queue: VecDeque<Waiter>,
}

struct Waiter {
    id: u64,
    wake: oneshot::Sender<Wake>,
}

/// How a wait ends from the gate's side.
enum Wake {
    /// A slot, already counted as the job's.
    Slot,
    /// Its place in the queue, taken by a job of a tenant below its share (message why).
    Evicted(String),
}

/// A job's slot of one kind; freed (and handed to the next in turn) when dropped.
pub(crate) struct Slot {
    state: Arc<Mutex<State>>,
    tenant: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.state).release(&self.tenant);
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Nothing panics under the lock; a poisoned one still holds consistent books.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// Gives free slots to waiting jobs: tenants in turn, skipping those at their quota.
    fn hand_out(&mut self) {
        while self.free > 0 {
            let quota = self.quota;
            let tenants = &self.tenants;
            let Some(at) = self.turns.iter().position(|t| tenants[t].held < quota) else {
                return;
            };
            let name = self.turns.remove(at).expect("found above");
            let tenant = self
                .tenants
                .get_mut(&name)
                .expect("every turn has its tenant");
            let waiter = tenant.queue.pop_front().expect("a tenant in turn waits");
            tenant.held += 1;
            self.free -= 1;
            self.waiting -= 1;
            // Its receiver lives until it has left the queue under this lock, so this
            // cannot fail.
            let _ = waiter.wake.send(Wake::Slot);
            if !tenant.queue.is_empty() {
                self.turns.push_back(name);
            }
        }
    }

    fn release(&mut self, tenant: &str) {
        if let Some(t) = self.tenants.get_mut(tenant) {
            t.held -= 1;
        }
        self.free += 1;
        self.forget_if_idle(tenant);
        self.hand_out();
    }

    /// Takes waiter `id` out of `tenant`'s queue; false when it is not there any more
    /// (it was handed a slot).
    fn leave(&mut self, tenant: &str, id: u64) -> bool {
        let Some(t) = self.tenants.get_mut(tenant) else {
            return false;
        };
        let Some(at) = t.queue.iter().position(|w| w.id == id) else {
            return false;
        };
        t.queue.remove(at);
        self.waiting -= 1;
        if t.queue.is_empty() {
            self.turns.retain(|n| n != tenant);
        }
        self.forget_if_idle(tenant);
        true
    }

    /// Frees a place in the full queue for `tenant` (below its share `per_tenant`): the
    /// newest waiter of the tenant furthest above its share is told it lost its place.
    /// False when nobody is above their share.
    fn evict_for(&mut self, tenant: &str, per_tenant: usize, why: impl Fn(&str) -> String) -> bool {
        let over = self
            .tenants
            .iter()
            .filter(|(name, t)| name.as_str() != tenant && t.queue.len() > per_tenant)
            .max_by_key(|(_, t)| t.queue.len())
            .map(|(name, _)| name.clone());
        let Some(name) = over else {
            return false;
        };
        let t = self.tenants.get_mut(&name).expect("found above");
        let waiter = t.queue.pop_back().expect("over its share: not empty");
        self.waiting -= 1;
        // Its receiver lives until it has left the queue under this lock: it gets this.
        let _ = waiter.wake.send(Wake::Evicted(why(&name)));
        true
    }

    fn forget_if_idle(&mut self, tenant: &str) {
        if self
            .tenants
            .get(tenant)
            .is_some_and(|t| t.held == 0 && t.queue.is_empty())
        {
            self.tenants.remove(tenant);
        }
    }
}

impl Gate {
    fn new(
        what: &'static str,
        flag: &'static str,
        limit: usize,
        share: Option<u8>,
        queue: Queue,
    ) -> Gate {
        let state = State {
            free: limit,
            quota: share.map_or(limit, |p| quota(limit, p)),
            tenants: HashMap::new(),
            turns: VecDeque::new(),
            waiting: 0,
            next_id: 0,
        };
        Gate {
            what,
            flag,
            limit,
            share,
            queue,
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// A free slot now, or one after waiting in `tenant`'s queue for its turn. `peer` ends
    /// the wait when the client says or does anything.
    pub async fn enter<P>(
        &self,
        tenant: Option<&str>,
        draining: &CancellationToken,
        peer: impl Future<Output = P>,
    ) -> Result<Slot, Refused<P>> {
        let name = tenant.unwrap_or_default();
        let (id, wake, queued) = {
            let mut s = lock(&self.state);
            let (held, queue) = s
                .tenants
                .get(name)
                .map_or((0, 0), |t| (t.held, t.queue.len()));
            // Others waiting while a slot is free are at their quota: no turn is skipped.
            if s.free > 0 && held < s.quota && queue == 0 {
                s.free -= 1;
                s.tenants.entry(name.to_owned()).or_default().held += 1;
                return Ok(self.slot(name));
            }
            if s.waiting >= self.queue.len {
                let share = self.queue.share();
                let evicted = queue < self.queue.per_tenant
                    && s.evict_for(name, self.queue.per_tenant, |over| {
                        format!(
                            "the sidecar is overloaded: its queue is full and {} holds more than its share of {share}: its newest job's place went to a tenant below its share",
                            who(over)
                        )
                    });
                if !evicted {
                    let own = if queue >= self.queue.per_tenant {
                        format!(", and {} holds its share of {share}", who(name))
                    } else {
                        String::new()
                    };
                    let message = format!(
                        "the sidecar is overloaded: {} and {} jobs are waiting for one (--queue){own}",
                        self.why(&s, name),
                        s.waiting
                    );
                    return Err(busy(message));
                }
            }
            let id = s.next_id;
            s.next_id += 1;
            let (tx, wake) = oneshot::channel();
            let t = s.tenants.entry(name.to_owned()).or_default();
            t.queue.push_back(Waiter { id, wake: tx });
            if t.queue.len() == 1 {
                s.turns.push_back(name.to_owned());
            }
            s.waiting += 1;
            // A tenant at its quota is worth a line: it says whose quota was hit.
            let why = self.why(&s, name);
            if self.at_quota(&s, name) {
                info!(
                    slot = self.what,
                    tenant = name,
                    "a job waits for a slot: {why}"
                );
            } else {
                debug!(
                    slot = self.what,
                    tenant = name,
                    "a job waits for a slot: {why}"
                );
            }
            (id, wake, s.waiting - 1)
        };
        let mut waiting = Waiting {
            state: &self.state,
            tenant: name,
            id,
            served: false,
        };
        let since = Instant::now();
        let shutting_down = || busy("the sidecar is shutting down".into());
        tokio::select! {
            // Only `hand_out` sends, and it counted the slot as this job's.
            wake = wake => match wake {
                Ok(Wake::Slot) => waiting.served = true,
                Ok(Wake::Evicted(why)) => {
                    // Out of the queue already: nothing to leave, no slot to give back.
                    waiting.served = true;
                    return Err(busy(why));
                }
                // Never: a waiter leaves the queue by a send or by its own drop.
                Err(_) => {
                    waiting.served = true;
                    return Err(shutting_down());
                }
            },
            _ = tokio::time::sleep(self.queue.timeout) => {
                let why = self.why(&lock(&self.state), name);
                return Err(busy(format!(
                    "no {} slot came free within the queue timeout ({} s): {why}",
                    self.what,
                    self.queue.timeout.as_secs_f64()
                )));
            }
            _ = draining.cancelled() => return Err(shutting_down()),
            ev = peer => return Err(Refused::Peer(ev)),
        }
        debug!(slot = self.what, tenant = name, queued, waited = ?since.elapsed(), "got a slot after waiting");
        Ok(self.slot(name))
    }

    fn slot(&self, tenant: &str) -> Slot {
        Slot {
            state: Arc::clone(&self.state),
            tenant: tenant.to_owned(),
        }
    }

    /// Whether `tenant` holds all the slots its quota lets it (less than all of them).
    fn at_quota(&self, s: &State, tenant: &str) -> bool {
        let held = s.tenants.get(tenant).map_or(0, |t| t.held);
        held >= s.quota && s.quota < self.limit
    }

    /// What keeps `tenant` from a slot now: its quota, or every slot taken.
    fn why(&self, s: &State, tenant: &str) -> String {
        match self.share {
            Some(share) if self.at_quota(s, tenant) => format!(
                "{} holds its quota of {} of the {} {} slots ({} × --tenant-share {share}%)",
                who(tenant),
                s.quota,
                self.limit,
                self.what,
                self.flag
            ),
            _ => format!(
                "all {} {} slots ({}) are taken",
                self.limit, self.what, self.flag
            ),
        }
    }
}

/// A tenant as messages name it.
fn who(tenant: &str) -> String {
    match tenant {
        "" => "the set of jobs without a tenant".to_owned(),
        t => format!("tenant {t:?}"),
    }
}

fn busy<P>(message: String) -> Refused<P> {
    Refused::Busy(JobError::new(ErrorCode::Busy, message))
}

/// A job in its tenant's queue; leaves it however the wait ends, and gives back a slot
/// handed to it just as the wait ended otherwise.
struct Waiting<'a> {
    state: &'a Mutex<State>,
    tenant: &'a str,
    id: u64,
    served: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        let mut s = lock(self.state);
        if !s.leave(self.tenant, self.id) {
            s.release(self.tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gate whose queue is shared at 100%: one tenant may fill it.
    fn gate(limit: usize, share: Option<u8>, queue: usize, timeout: Duration) -> Arc<Gate> {
        let queue = Queue::new(queue, 100, timeout);
        Arc::new(Gate::new("thing", "--max-things", limit, share, queue))
    }

    fn busy<P>(r: Result<Slot, Refused<P>>) -> String {
        match r {
            Err(Refused::Busy(e)) => e.message,
            Ok(_) => panic!("got a slot"),
            Err(Refused::Peer(_)) => panic!("peer"),
        }
    }

    fn waiting(gate: &Gate) -> usize {
        lock(&gate.state).waiting
    }

    const NEVER: fn() -> std::future::Pending<()> = std::future::pending::<()>;

    async fn take(gate: &Gate, tenant: &str) -> Slot {
        let none = CancellationToken::new();
        match gate.enter(Some(tenant), &none, NEVER()).await {
            Ok(slot) => slot,
            Err(_) => panic!("no slot for {tenant}"),
        }
    }

    /// Queues one job per name (each queued before the next arrives); they record the
    /// order in which they got their slot, holding it until they have recorded it.
    async fn queue_up(gate: &Arc<Gate>, jobs: &[&'static str]) -> Vec<&'static str> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        for (i, &job) in jobs.iter().enumerate() {
            let (waiter, tx) = (Arc::clone(gate), tx.clone());
            let tenant = &job[..1];
            waiters.push(tokio::spawn(async move {
                let slot = take(&waiter, tenant).await;
                tx.send(job).unwrap();
                drop(slot);
            }));
            // Counted by ids, which only grow: the first may be served before the last
            // is queued.
            while lock(&gate.state).next_id <= i as u64 {
                tokio::task::yield_now().await;
            }
        }
        waiters
            .into_iter()
            .map(|w| async { w.await.unwrap() })
            .collect::<futures::future::JoinAll<_>>()
            .await;
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn a_quota_is_the_share_rounded_up_and_never_all_of_two_or_more() {
        assert_eq!(quota(1, 50), 1);
        assert_eq!(quota(2, 50), 1);
        assert_eq!(quota(3, 50), 2);
        assert_eq!(quota(1024, 50), 512);
        assert_eq!(quota(32, 1), 1);
        assert_eq!(quota(32, 100), 32);
        for limit in 2..200 {
            assert!(quota(limit, 99) < limit, "{limit}");
        }
    }

    #[tokio::test]
    async fn one_tenants_waiters_get_slots_in_arrival_order() {
        let gate = gate(1, None, 8, Duration::from_secs(60));
        let first = take(&gate, "a").await;
        let order = tokio::join!(queue_up(&gate, &["a1", "a2", "a3", "a4", "a5"]), async {
            while waiting(&gate) < 5 {
                tokio::task::yield_now().await;
            }
            drop(first);
        })
        .0;
        assert_eq!(order, ["a1", "a2", "a3", "a4", "a5"]);
    }

    #[tokio::test]
    async fn tenants_take_turns_instead_of_one_queue() {
        let gate = gate(1, None, 8, Duration::from_secs(60));
        let first = take(&gate, "a").await;
        let jobs = ["a1", "a2", "a3", "b1", "c1", "b2"];
        let order = tokio::join!(queue_up(&gate, &jobs), async {
            while waiting(&gate) < jobs.len() {
                tokio::task::yield_now().await;
            }
            drop(first);
        })
        .0;
        // One FIFO would give a1 a2 a3 b1 c1 b2.
        assert_eq!(order, ["a1", "b1", "c1", "a2", "b2", "a3"]);
        let s = lock(&gate.state);
        assert_eq!((s.free, s.waiting, s.tenants.len()), (1, 0, 0));
    }

    #[tokio::test]
    async fn a_tenant_at_its_quota_waits_while_others_get_the_free_slots() {
        let gate = gate(4, Some(50), 8, Duration::from_secs(60));
        let a = [take(&gate, "a").await, take(&gate, "a").await];
        let none = CancellationToken::new();
        // a's third job waits although two slots are free …
        let g = Arc::clone(&gate);
        let mut a3 = tokio::spawn(async move { g.enter(Some("a"), &none, NEVER()).await.ok() });
        while waiting(&gate) < 1 {
            tokio::task::yield_now().await;
        }
        // … and b gets both at once.
        let b = [take(&gate, "b").await, take(&gate, "b").await];
        assert!(!a3.is_finished());
        // b's third waits too (it leaves the queue at its peer's first word).
        let b3 = gate
            .enter(Some("b"), &CancellationToken::new(), async {})
            .await;
        assert!(matches!(b3, Err(Refused::Peer(()))));
        assert_eq!(waiting(&gate), 1, "b's job left the queue");
        // b at its quota too; one of a's slots freed goes to a's waiter.
        drop(a);
        let a3 = (&mut a3).await.unwrap().expect("a's waiter got a slot");
        drop((a3, b));
        let s = lock(&gate.state);
        assert_eq!((s.free, s.waiting, s.tenants.len()), (4, 0, 0));
    }

    #[tokio::test]
    async fn a_full_queue_a_timeout_a_drain_or_the_peer_end_the_wait() {
        let none = CancellationToken::new();
        let g = gate(1, None, 0, Duration::from_secs(60));
        let _held = take(&g, "a").await;
        assert!(
            busy(g.enter(None, &none, NEVER()).await)
                .contains("all 1 thing slots (--max-things) are taken")
        );
        assert_eq!(waiting(&g), 0, "left the queue");

        let g = gate(4, Some(50), 1, Duration::from_millis(50));
        let _held = [take(&g, "a").await, take(&g, "a").await];
        let quota = "tenant \"a\" holds its quota of 2 of the 4 thing slots (--max-things × --tenant-share 50%)";
        let timed_out = busy(g.enter(Some("a"), &none, NEVER()).await);
        assert!(
            timed_out.contains("within the queue timeout"),
            "{timed_out}"
        );
        assert!(timed_out.contains(quota), "{timed_out}");
        let _waits = tokio::spawn({
            let g = Arc::clone(&g);
            async move {
                g.enter(Some("a"), &CancellationToken::new(), NEVER())
                    .await
                    .ok()
            }
        });
        while waiting(&g) < 1 {
            tokio::task::yield_now().await;
        }
        let full = busy(g.enter(Some("a"), &none, NEVER()).await);
        assert!(
            full.contains(quota) && full.contains("1 jobs are waiting"),
            "{full}"
        );

        let g = gate(1, None, 1, Duration::from_secs(60));
        let _held = take(&g, "a").await;
        let draining = CancellationToken::new();
        draining.cancel();
        assert!(busy(g.enter(None, &draining, NEVER()).await).contains("shutting down"));
        match g.enter(None, &none, async { 7 }).await {
            Err(Refused::Peer(7)) => {}
            _ => panic!("the peer's event ends the wait"),
        }
        assert_eq!(waiting(&g), 0);
    }

    #[tokio::test]
    async fn a_full_queue_makes_room_for_a_tenant_below_its_share() {
        let none = CancellationToken::new();
        let queue = Queue::new(4, 50, Duration::from_secs(60));
        let g = Arc::new(Gate::new("thing", "--max-things", 1, None, queue));
        let _held = take(&g, "a").await;
        let wait = |tenant: &'static str| {
            let g = Arc::clone(&g);
            tokio::spawn(async move {
                match g
                    .enter(Some(tenant), &CancellationToken::new(), NEVER())
                    .await
                {
                    Ok(_) => panic!("no slot comes free"),
                    Err(refused) => busy::<()>(Err(refused)),
                }
            })
        };
        // Alone, a may take every place: 4 of 4.
        let a: Vec<_> = (0..4).map(|_| wait("a")).collect();
        while waiting(&g) < 4 {
            tokio::task::yield_now().await;
        }
        // b, below its share of 2, takes a's newest places, one per job …
        let _b = [wait("b"), wait("b")];
        let above = "tenant \"a\" holds more than its share of 2 of the 4 places (--queue × --tenant-share 50%)";
        for evicted in a.into_iter().skip(2).rev() {
            let message = evicted.await.unwrap();
            assert!(message.contains(above), "{message}");
        }
        assert_eq!(waiting(&g), 4);
        // … until nobody is above their share: a full queue is then full for everyone.
        let full = busy(g.enter(Some("c"), &none, NEVER()).await);
        assert!(
            full.contains("4 jobs are waiting for one (--queue)"),
            "{full}"
        );
        let b = busy(g.enter(Some("b"), &none, NEVER()).await);
        let held = "4 jobs are waiting for one (--queue), and tenant \"b\" holds its share of 2 of the 4 places";
        assert!(b.contains(held), "{b}");
        assert_eq!(waiting(&g), 4);
        assert_eq!(quota(0, 50), 0, "--queue 0: nobody waits");
    }

    #[tokio::test]
    async fn a_slot_handed_to_a_job_that_gave_up_goes_to_the_next() {
        let gate = gate(1, None, 8, Duration::from_secs(60));
        let held = take(&gate, "a").await;
        let none = CancellationToken::new();
        // The slot is handed out (under the lock) before the waiter is polled again; it
        // is then dropped without looking.
        let mut gave_up = Box::pin(gate.enter(Some("b"), &none, NEVER()));
        assert!(futures::poll!(gave_up.as_mut()).is_pending());
        drop(held);
        assert_eq!(lock(&gate.state).free, 0, "handed to b");
        drop(gave_up);
        let s = lock(&gate.state);
        assert_eq!((s.free, s.waiting, s.tenants.len()), (1, 0, 0));
    }
}
