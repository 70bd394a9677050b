//! The queue in front of password hashing, the one expensive thing a stranger
//! can ask for without a token. At most one hash per CPU runs at a time; at
//! most `HASH_QUEUE` wait, each for at most `HASH_WAIT_MS`; a request that
//! cannot wait gets 503 with Retry-After at once instead of joining an
//! endless line.
//!
//! Waiters are served round-robin by client address, not first come first
//! served: a storm from a few addresses (a thousand guesses each) cannot push
//! a login from another address to the back of the line. When the queue is
//! full, the address with the most requests waiting gives up its newest one,
//! so a newcomer from a quiet address still gets in; only an attacker with
//! more addresses than the queue has places can keep others out, and then
//! they are refused at once, never kept waiting. A login's wait is bounded by
//! (addresses waiting ahead of it) x (one hash time) / CPUs, and by
//! `HASH_WAIT_MS` whatever happens.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::error::ApiError;

/// Why a request did not get a hashing slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full and this address already holds the most places.
    Full,
    /// Waited `HASH_WAIT_MS` without getting a slot.
    TimedOut,
}

impl From<Refused> for ApiError {
    fn from(_: Refused) -> Self {
        // 503 + Retry-After: nothing was checked or written, retrying is safe.
        ApiError::TryAgain("the server is busy checking passwords, try again shortly")
    }
}

pub struct HashQueue {
    slots: usize,
    capacity: usize,
    wait: Duration,
    inner: Mutex<Inner>,
    /// Slots handed out so far (hashes run), for tests and metrics.
    admitted: AtomicU64,
}

#[derive(Default)]
struct Inner {
    running: usize,
    waiting: usize,
    /// Each address's waiters, oldest first.
    queues: HashMap<String, VecDeque<Waiter>>,
    /// Addresses with someone waiting, in the order they are served.
    turn: VecDeque<String>,
    next_id: u64,
}

struct Waiter {
    id: u64,
    grant: oneshot::Sender<Result<(), Refused>>,
}

/// A running hash's CPU slot; dropping it hands the slot to the next waiter.
pub struct Slot<'a> {
    queue: &'a HashQueue,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.queue.release();
    }
}

impl HashQueue {
    /// `slots` hashes at once, `capacity` waiting, each for at most `wait`.
    pub fn new(slots: usize, capacity: usize, wait: Duration) -> Self {
        HashQueue {
            slots: slots.max(1),
            capacity,
            wait,
            inner: Mutex::new(Inner::default()),
            admitted: AtomicU64::new(0),
        }
    }

    /// One hash per CPU.
    pub fn per_cpu(capacity: usize, wait: Duration) -> Self {
        Self::new(std::thread::available_parallelism().map_or(2, |n| n.get()), capacity, wait)
    }

    /// (running, waiting), for tests and gauges.
    pub fn load(&self) -> (usize, usize) {
        self.inner.lock().map(|g| (g.running, g.waiting)).unwrap_or((0, 0))
    }

    /// How many hashes have been given a slot since start.
    pub fn admitted(&self) -> u64 {
        self.admitted.load(Ordering::Relaxed)
    }

    fn slot(&self) -> Slot<'_> {
        self.admitted.fetch_add(1, Ordering::Relaxed);
        Slot { queue: self }
    }

    /// Waits for a slot on behalf of `address` (a client-address subject).
    pub async fn acquire(&self, address: &str) -> Result<Slot<'_>, Refused> {
        let (id, receiver) = {
            let mut g = self.inner.lock().map_err(|_| Refused::Full)?;
            if g.running < self.slots && g.waiting == 0 {
                g.running += 1;
                drop(g);
                return Ok(self.slot());
            }
            if g.waiting >= self.capacity {
                self.make_room(&mut g, address)?;
            }
            g.next_id += 1;
            let id = g.next_id;
            let (grant, receiver) = oneshot::channel();
            if !g.queues.contains_key(address) {
                g.turn.push_back(address.to_string());
            }
            g.queues.entry(address.to_string()).or_default().push_back(Waiter { id, grant });
            g.waiting += 1;
            (id, receiver)
        };
        let mut pending = Pending { queue: self, id, receiver, settled: false };
        let outcome = tokio::time::timeout(self.wait, &mut pending.receiver).await;
        pending.settled = true;
        match outcome {
            Ok(Ok(Ok(()))) => Ok(self.slot()),
            Ok(Ok(Err(refused))) => Err(refused),
            Ok(Err(_)) => Err(Refused::Full),
            Err(_) => {
                // Out of time: leave the line. If a slot was handed over in the
                // meantime it is ours; use it rather than give it away.
                if self.forget(id) {
                    Err(Refused::TimedOut)
                } else {
                    match pending.receiver.try_recv() {
                        Ok(Ok(())) => Ok(self.slot()),
                        _ => Err(Refused::TimedOut),
                    }
                }
            }
        }
    }

    /// The queue is full: the address with the most waiters gives up its
    /// newest one, unless that is the caller's own address (then the caller
    /// is the one refused).
    fn make_room(&self, g: &mut Inner, address: &str) -> Result<(), Refused> {
        let mine = g.queues.get(address).map_or(0, VecDeque::len);
        let longest = g.queues.iter().max_by_key(|(_, q)| q.len()).map(|(a, q)| (a.clone(), q.len()));
        let Some((victim, len)) = longest else { return Err(Refused::Full) };
        // Evict only when that leaves the newcomer's address with fewer places
        // than the victim had: ties go to whoever came first.
        if mine + 1 >= len {
            return Err(Refused::Full);
        }
        if let Some(q) = g.queues.get_mut(&victim) {
            if let Some(evicted) = q.pop_back() {
                let _ = evicted.grant.send(Err(Refused::Full));
                g.waiting -= 1;
            }
            if q.is_empty() {
                g.queues.remove(&victim);
                g.turn.retain(|a| a != &victim);
            }
        }
        Ok(())
    }

    /// Removes waiter `id`; false if it is no longer waiting (granted or evicted).
    fn forget(&self, id: u64) -> bool {
        let Ok(mut g) = self.inner.lock() else { return false };
        let found = g.queues.iter().find_map(|(a, q)| q.iter().position(|w| w.id == id).map(|i| (a.clone(), i)));
        let Some((address, index)) = found else { return false };
        if let Some(q) = g.queues.get_mut(&address) {
            q.remove(index);
            if q.is_empty() {
                g.queues.remove(&address);
                g.turn.retain(|a| a != &address);
            }
        }
        g.waiting -= 1;
        true
    }

    /// A slot came free: hand it to the next address in turn, else keep it free.
    fn release(&self) {
        let Ok(mut g) = self.inner.lock() else { return };
        while let Some(address) = g.turn.pop_front() {
            let Some(q) = g.queues.get_mut(&address) else { continue };
            let next = q.pop_front();
            if q.is_empty() {
                g.queues.remove(&address);
            } else {
                g.turn.push_back(address);
            }
            let Some(waiter) = next else { continue };
            g.waiting -= 1;
            if waiter.grant.send(Ok(())).is_ok() {
                return; // the slot changes hands; `running` stays the same
            }
        }
        g.running = g.running.saturating_sub(1);
    }
}

/// A place in the line; if the request is dropped while waiting (the client
/// hung up), the place is given up, and a slot granted meanwhile passed on.
struct Pending<'a> {
    queue: &'a HashQueue,
    id: u64,
    receiver: oneshot::Receiver<Result<(), Refused>>,
    settled: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.settled || self.queue.forget(self.id) {
            return;
        }
        if let Ok(Ok(())) = self.receiver.try_recv() {
            self.queue.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn queue(slots: usize, capacity: usize) -> Arc<HashQueue> {
        Arc::new(HashQueue::new(slots, capacity, Duration::from_secs(5)))
    }

    #[tokio::test]
    async fn addresses_take_turns_and_a_full_queue_refuses_at_once() {
        let q = queue(1, 4);
        let running = q.acquire("a").await;
        assert!(running.is_ok());
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = vec![];
        // Address "storm" queues four, then "real" arrives to a full queue.
        for (i, address) in ["storm", "storm", "storm", "storm", "real"].into_iter().enumerate() {
            let (q, order) = (q.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let got = q.acquire(address).await;
                if got.is_ok() {
                    if let Ok(mut o) = order.lock() {
                        o.push(format!("{address}{i}"));
                    }
                }
                got.is_ok()
            }));
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(q.load(), (1, 4), "the newcomer took the storm's newest place");
        // A fifth storm request is refused at once: its address holds the most places.
        let started = std::time::Instant::now();
        assert_eq!(q.acquire("storm").await.err(), Some(Refused::Full));
        assert!(started.elapsed() < Duration::from_millis(100));
        drop(running);
        let mut admitted = vec![];
        for t in tasks {
            admitted.push(t.await.unwrap_or(false));
        }
        assert_eq!(admitted, vec![true, true, true, false, true], "storm's newest was evicted");
        let order = order.lock().map(|o| o.clone()).unwrap_or_default();
        assert_eq!(order.first().map(String::as_str), Some("storm0"));
        assert_eq!(order.get(1).map(String::as_str), Some("real4"), "the other address is served next: {order:?}");
        assert_eq!(q.load(), (0, 0));
    }

    #[tokio::test]
    async fn a_waiter_gives_up_after_the_wait_limit_and_leaves_no_trace() {
        let q = Arc::new(HashQueue::new(1, 4, Duration::from_millis(50)));
        let held = q.acquire("a").await;
        assert!(held.is_ok());
        assert_eq!(q.acquire("b").await.err(), Some(Refused::TimedOut));
        assert_eq!(q.load(), (1, 0));
        // A waiter dropped mid-wait (client hung up) frees its place too.
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move { q.acquire("c").await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(q.load(), (1, 0));
        drop(held);
        assert_eq!(q.load(), (0, 0));
    }
}
