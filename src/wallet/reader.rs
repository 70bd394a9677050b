//! Group read of balances: requests that arrive while balance reads are in
//! flight share the next statement, so many requests pay for one Postgres
//! round trip (one backend wakeup) instead of one each. This is the group
//! commit of `redemption::batcher`, for the one-row primary-key lookup behind
//! POST /wallet/balance, where the round trip, not the lookup, is the cost.
//!
//! Shape: one dispatcher task and at most `readers` reads in flight. While a
//! reader is free a request is read at once (a batch of one, the very same
//! statement as before the group read); while all are busy requests queue, and
//! the next free reader takes up to `max_batch` of them. Nothing ever waits on
//! a timer: a batch forms only from the queue that built up behind reads.
//!
//! Freshness is exactly that of one query per request: a request is taken
//! from the queue only after it arrived, and its statement is sent only after
//! it was taken, so the statement's snapshot (read committed: taken when the
//! statement starts) sees every commit answered before the request was sent.
//! A request never joins a read already in flight, and nothing is cached.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::GenericClient;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::store::{self, BALANCE_SQL};
use crate::db::StoreError;
use crate::error::ApiError;
use crate::telemetry::BALANCE_BATCH_ROWS;

/// Bounds of the group read (see `Config`).
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Reads in flight at once (each holds one pool connection while it
    /// runs); 0 turns the group read off: one query per request, on a pool
    /// connection of its own.
    pub readers: usize,
    /// Users in one statement at most.
    pub max_batch: usize,
    /// Requests waiting for a reader at most; more are refused (503).
    pub queue: usize,
    /// A request that waited this long for a reader is refused (503) instead
    /// of being read late.
    pub max_wait: Duration,
}

/// Every distinct user of a batch in one statement: 0 to `max_batch` rows
/// back (a user without a wallet has no row, and a balance of 0).
pub const BALANCE_BATCH_SQL: &str = "SELECT user_id, balance FROM wallets WHERE user_id = ANY($1)";

struct Pending {
    user_id: i64,
    queued: Instant,
    reply: oneshot::Sender<Result<i64, ApiError>>,
}

/// Handle to the dispatcher; cheap to share. The dispatcher ends when the
/// last handle is dropped.
pub struct BalanceReader {
    /// None: the group read is off (`readers` = 0).
    queue: Option<mpsc::Sender<Pending>>,
    pool: deadpool_postgres::Pool,
    /// Statements sent to Postgres so far (batches and direct reads alike):
    /// fewer than the requests answered means requests shared statements.
    statements: Arc<AtomicU64>,
}

impl BalanceReader {
    /// Starts the dispatcher (unless the group read is off) on the current
    /// tokio runtime.
    pub fn start(pool: deadpool_postgres::Pool, limits: ReadLimits) -> Self {
        let statements = Arc::new(AtomicU64::new(0));
        let queue = (limits.readers > 0).then(|| {
            let (queue, rx) = mpsc::channel(limits.queue.max(1));
            tokio::spawn(dispatch(pool.clone(), rx, limits, statements.clone()));
            queue
        });
        BalanceReader { queue, pool, statements }
    }

    /// The balance of `user_id` (0 for a user who never received anything),
    /// read by a statement that started after this call.
    pub async fn read(&self, user_id: i64) -> Result<i64, ApiError> {
        let Some(queue) = &self.queue else {
            let db = self.pool.get().await.map_err(StoreError::from)?;
            self.statements.fetch_add(1, Ordering::Relaxed);
            return Ok(store::balance(&db, user_id).await?);
        };
        let (reply, answer) = oneshot::channel();
        if queue.try_send(Pending { user_id, queued: Instant::now(), reply }).is_err() {
            return Err(StoreError::Overloaded("the balance read queue is full").into());
        }
        // A dropped sender means the dispatcher is gone (shutting down).
        answer.await.unwrap_or_else(|_| Err(StoreError::Overloaded("the balance reader stopped").into()))
    }

    /// Requests waiting for a reader now (not those a read already took).
    pub fn queued(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.max_capacity() - q.capacity())
    }

    /// Statements sent to Postgres so far by this reader.
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }
}

async fn dispatch(
    pool: deadpool_postgres::Pool,
    mut rx: mpsc::Receiver<Pending>,
    limits: ReadLimits,
    statements: Arc<AtomicU64>,
) {
    let readers = Arc::new(Semaphore::new(limits.readers.max(1)));
    let max_batch = limits.max_batch.max(1);
    loop {
        // Take a reader first, then the queue: while every reader is busy,
        // requests pile up and the next read takes them all at once.
        let Ok(permit) = readers.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut batch = Vec::with_capacity(max_batch.min(64));
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (pool, statements) = (pool.clone(), statements.clone());
        tokio::spawn(async move {
            run_batch(&pool, batch, limits.max_wait, &statements).await;
            drop(permit);
        });
    }
}

async fn run_batch(pool: &deadpool_postgres::Pool, batch: Vec<Pending>, max_wait: Duration, statements: &AtomicU64) {
    let (live, late): (Vec<Pending>, Vec<Pending>) = batch.into_iter().partition(|p| p.queued.elapsed() < max_wait);
    for p in late {
        let _ = p.reply.send(Err(StoreError::Overloaded("the balance read waited too long in the queue").into()));
    }
    if live.is_empty() {
        return;
    }
    metrics::histogram!(BALANCE_BATCH_ROWS).record(live.len() as f64);
    let users: Vec<i64> = live.iter().map(|p| p.user_id).collect();
    let read = match pool.get().await {
        Ok(db) => {
            statements.fetch_add(1, Ordering::Relaxed);
            read_balances(&db, &users).await
        }
        Err(e) => Err(StoreError::from(e)),
    };
    match read {
        Ok(balances) => {
            for p in live {
                // The caller may have gone (client disconnected): nothing to do.
                let _ = p.reply.send(Ok(balances.get(&p.user_id).copied().unwrap_or(0)));
            }
        }
        Err(e) => {
            // One error for many waiters: a transient one (no connection,
            // statement cut off, database restarting) is 503 try_again for
            // each, as it is for a lone read; anything else is a 500 for each,
            // logged once here with its cause.
            let transient = e.is_transient();
            if transient {
                tracing::warn!(error = %e, users = live.len(), "balance read failed");
            } else {
                tracing::error!(error = %e, users = live.len(), "balance read failed");
            }
            for p in live {
                let answer = if transient {
                    StoreError::Overloaded("the balance read failed").into()
                } else {
                    ApiError::internal(anyhow::anyhow!("the balance read failed"))
                };
                let _ = p.reply.send(Err(answer));
            }
        }
    }
}

/// The balances of `users` (duplicates allowed) by user; a user without a
/// wallet is absent. One distinct user: the single-user statement, exactly
/// what one request ran before the group read; more: one `= ANY` statement.
pub async fn read_balances(db: &impl GenericClient, users: &[i64]) -> Result<HashMap<i64, i64>, StoreError> {
    let mut distinct = users.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if let [user_id] = distinct[..] {
        let stmt = db.prepare_cached(BALANCE_SQL).await?;
        let row = db.query_opt(&stmt, &[&user_id]).await?;
        return Ok(row.map(|r| (user_id, r.get(0))).into_iter().collect());
    }
    let stmt = db.prepare_cached(BALANCE_BATCH_SQL).await?;
    let rows = db.query(&stmt, &[&distinct]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
