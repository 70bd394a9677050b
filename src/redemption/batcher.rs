//! Group commit of credit-code redemptions: claims that arrive while commits
//! are in flight share the next multi-row statement, so many credits pay for
//! one transaction (one WAL flush) instead of one each. Durability is the
//! same as the single-row commit: an answer is given only after the
//! statement that holds its row has committed.
//!
//! Shape: one dispatcher task and at most `committers` batches in flight.
//! While a committer is free a claim is sent at once (a batch of one, the
//! very same statement as before); while all are busy claims queue, and the
//! next free committer takes up to `max_rows` of them. Nothing ever waits on
//! a timer: the batch forms only from the queue that built up behind commits.
//!
//! Outcomes are per row. The batch statement skips conflicting rows
//! (`ON CONFLICT DO NOTHING`); rows it skipped, and every row of a batch that
//! failed as a whole (a trigger refused one row: paused code, ticket above the
//! limit, unknown user), are committed once more one by one with the
//! single-row statement, which classifies them exactly as before. So one bad
//! row costs its neighbours at most one retry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::GenericClient;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::commit::{self, Committed, CREDIT_KIND};
use crate::db::StoreError;
use crate::telemetry::COMMIT_BATCH_ROWS;

/// Bounds of the batcher (see `Config`).
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Rows in one statement at most.
    pub max_rows: usize,
    /// Batches in flight at once (each holds one pool connection).
    pub committers: usize,
    /// Claims waiting for a committer at most; more are refused (503).
    pub queue: usize,
    /// A claim that waited this long for a committer is refused instead (503,
    /// its ticket released), so a commit cannot start late enough to outlive
    /// its claim's grace period.
    pub max_wait: Duration,
}

/// One claimed ticket to commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Row {
    pub code_id: i64,
    pub user_id: i64,
    pub ticket: i32,
}

struct Pending {
    row: Row,
    queued: Instant,
    reply: oneshot::Sender<Result<Committed, StoreError>>,
}

/// Handle to the dispatcher; cheap to share. The dispatcher ends when the
/// last handle is dropped.
pub struct Batcher {
    queue: mpsc::Sender<Pending>,
}

impl Batcher {
    /// Starts the dispatcher on the current tokio runtime.
    pub fn start(pool: deadpool_postgres::Pool, limits: BatchLimits) -> Self {
        let (queue, rx) = mpsc::channel(limits.queue.max(1));
        tokio::spawn(dispatch(pool, rx, limits));
        Batcher { queue }
    }

    /// Commits one claimed ticket (the redemption, the wallet credit and its
    /// ledger row), in a batch with whatever else is waiting. The answer is the
    /// one `commit::commit` gives for this row.
    pub async fn commit(&self, row: Row) -> Result<Committed, StoreError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending { row, queued: Instant::now(), reply };
        if self.queue.try_send(pending).is_err() {
            return Err(StoreError::Overloaded("the commit queue is full"));
        }
        // A dropped sender means the dispatcher is gone (shutting down):
        // nothing of this row was sent to Postgres after that.
        answer.await.unwrap_or(Err(StoreError::Overloaded("the commit batcher stopped")))
    }
}

async fn dispatch(pool: deadpool_postgres::Pool, mut rx: mpsc::Receiver<Pending>, limits: BatchLimits) {
    let committers = Arc::new(Semaphore::new(limits.committers.max(1)));
    let max_rows = limits.max_rows.max(1);
    loop {
        // Take a committer first, then the queue: while every committer is
        // busy, claims pile up and the next batch takes them all at once.
        let Ok(permit) = committers.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut batch = Vec::with_capacity(max_rows);
        batch.push(first);
        while batch.len() < max_rows {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            run_batch(&pool, batch, limits.max_wait).await;
            drop(permit);
        });
    }
}

async fn run_batch(pool: &deadpool_postgres::Pool, batch: Vec<Pending>, max_wait: Duration) {
    let (live, late): (Vec<Pending>, Vec<Pending>) = batch.into_iter().partition(|p| p.queued.elapsed() < max_wait);
    for p in late {
        let _ = p.reply.send(Err(StoreError::Overloaded("the commit waited too long in the queue")));
    }
    if live.is_empty() {
        return;
    }
    metrics::histogram!(COMMIT_BATCH_ROWS).record(live.len() as f64);
    let db = match pool.get().await {
        Ok(db) => db,
        Err(e) => {
            tracing::warn!(error = %e, rows = live.len(), "no Postgres connection for a commit batch");
            for p in live {
                let _ = p.reply.send(Err(StoreError::Overloaded("no Postgres connection available")));
            }
            return;
        }
    };
    let rows: Vec<Row> = live.iter().map(|p| p.row).collect();
    let outcomes = commit_rows(&db, &rows).await;
    for (p, outcome) in live.into_iter().zip(outcomes) {
        // The caller may have gone (client disconnected): the row is committed
        // all the same and the reconciler confirms its claim.
        let _ = p.reply.send(outcome);
    }
}

/// Commits `rows`, one outcome per row, in order. One row: the single-row
/// statement. More: the batch statement, then the single-row statement for
/// each row the batch did not write.
pub async fn commit_rows(db: &impl GenericClient, rows: &[Row]) -> Vec<Result<Committed, StoreError>> {
    if let [row] = rows {
        return vec![commit::commit(db, row.code_id, row.user_id, row.ticket).await];
    }
    let mut outcomes: Vec<Option<Result<Committed, StoreError>>> = match commit_batch(db, rows).await {
        Ok(credited) => credited.into_iter().map(|c| c.map(Ok)).collect(),
        Err(e) if refused_by_a_row(&e) => {
            tracing::debug!(rows = rows.len(), error = %e, "batch refused as a whole; committing its rows one by one");
            (0..rows.len()).map(|_| None).collect()
        }
        Err(e) => {
            // Cut off (statement timeout) or the connection failed: a retry
            // would only double the wait, so every row is told what a
            // single-row commit is told then (503, ticket released).
            tracing::warn!(rows = rows.len(), error = %e, "commit batch failed");
            return (0..rows.len()).map(|_| Err(StoreError::Overloaded("the commit batch failed"))).collect();
        }
    };
    // The rows the batch did not write, once each, on the same connection
    // (pipelined; each is its own implicit transaction).
    let retries: Vec<usize> = (0..rows.len()).filter(|&i| outcomes[i].is_none()).collect();
    let answers = futures_util::future::join_all(retries.iter().map(|&i| {
        let r = rows[i];
        commit::commit(db, r.code_id, r.user_id, r.ticket)
    }))
    .await;
    for (i, answer) in retries.into_iter().zip(answers) {
        outcomes[i] = Some(answer);
    }
    outcomes.into_iter().map(|o| o.unwrap_or(Err(StoreError::Overloaded("no outcome")))).collect()
}

/// Whether a failed batch is worth retrying row by row: Postgres refused it
/// for something a row carries (a trigger, a constraint, a deadlock), not
/// because the statement was cut off or the connection failed.
fn refused_by_a_row(e: &StoreError) -> bool {
    match e {
        StoreError::Postgres(e) => e.code().is_some_and(|c| *c != tokio_postgres::error::SqlState::QUERY_CANCELED),
        StoreError::Pool(_) | StoreError::Overloaded(_) => false,
    }
}

// Rows in (code, user) order, so two batches that share rows (a gate that
// lost state) take the unique-index entries in one order and cannot deadlock;
// wallets are credited once per user (a batch may hold several codes of one
// user: one upsert cannot touch a row twice), in user order for the same
// reason. Each redemption's own balance is worked out from the user's final
// balance (see `balances_per_row`). Rows that conflict are skipped, not
// failed: they come back absent and are retried alone.
pub const COMMIT_BATCH_SQL: &str = "
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[]) AS i(code_id, user_id, ticket)
), r AS (
    INSERT INTO redemptions (code_id, user_id, ticket, amount)
    SELECT i.code_id, i.user_id, i.ticket, c.amount FROM input i JOIN codes c ON c.id = i.code_id
    ORDER BY i.code_id, i.user_id
    ON CONFLICT DO NOTHING
    RETURNING id, code_id, user_id, ticket, amount
), w AS (
    INSERT INTO wallets AS w (user_id, balance)
    SELECT user_id, sum(amount)::bigint FROM r GROUP BY user_id ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE SET balance = w.balance + EXCLUDED.balance, updated_at = now()
    RETURNING user_id, balance
), l AS (
    INSERT INTO ledger (user_id, amount, kind, reference)
    SELECT user_id, amount, $4, 'redemption:' || id FROM r
)
SELECT r.id, r.code_id, r.user_id, r.ticket, r.amount, w.balance FROM r JOIN w USING (user_id)";

/// One written row of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Written {
    redemption_id: i64,
    row: Row,
    amount: i64,
    /// The user's balance after the whole batch.
    final_balance: i64,
}

/// The batch statement: `Some(Credited)` for each row it wrote, `None` for
/// the rows it skipped. An error means nothing of the batch was written.
async fn commit_batch(db: &impl GenericClient, rows: &[Row]) -> Result<Vec<Option<Committed>>, StoreError> {
    let stmt = db.prepare_cached(COMMIT_BATCH_SQL).await?;
    let code_ids: Vec<i64> = rows.iter().map(|r| r.code_id).collect();
    let user_ids: Vec<i64> = rows.iter().map(|r| r.user_id).collect();
    let tickets: Vec<i32> = rows.iter().map(|r| r.ticket).collect();
    let written: Vec<Written> = db
        .query(&stmt, &[&code_ids, &user_ids, &tickets, &CREDIT_KIND])
        .await?
        .iter()
        .map(|r| Written {
            redemption_id: r.get(0),
            row: Row { code_id: r.get(1), user_id: r.get(2), ticket: r.get(3) },
            amount: r.get(4),
            final_balance: r.get(5),
        })
        .collect();
    Ok(match_rows(rows, &written))
}

/// Each input row's outcome: the written row with the same (code, user,
/// ticket), each written row given to one input row only.
fn match_rows(rows: &[Row], written: &[Written]) -> Vec<Option<Committed>> {
    let balances = balances_per_row(written);
    let mut by_row: HashMap<Row, Vec<Committed>> = HashMap::with_capacity(written.len());
    for (w, balance) in written.iter().zip(balances) {
        by_row.entry(w.row).or_default().push(Committed::Credited {
            redemption_id: w.redemption_id,
            amount: w.amount,
            balance,
        });
    }
    rows.iter().map(|r| by_row.get_mut(r).and_then(Vec::pop)).collect()
}

/// The balance each written row would have answered had the rows been
/// committed one by one in redemption id order: the user's final balance less
/// what the user's later rows of the batch credited.
fn balances_per_row(written: &[Written]) -> Vec<i64> {
    let mut order: Vec<usize> = (0..written.len()).collect();
    order.sort_by_key(|&i| (written[i].row.user_id, std::cmp::Reverse(written[i].redemption_id)));
    let mut balances = vec![0; written.len()];
    let mut later: Option<(i64, i64)> = None; // (user, sum credited by that user's later rows)
    for i in order {
        let w = &written[i];
        let after = match later {
            Some((user, sum)) if user == w.row.user_id => sum,
            _ => 0,
        };
        balances[i] = w.final_balance - after;
        later = Some((w.row.user_id, after + w.amount));
    }
    balances
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(id: i64, code_id: i64, user_id: i64, ticket: i32, amount: i64, final_balance: i64) -> Written {
        Written { redemption_id: id, row: Row { code_id, user_id, ticket }, amount, final_balance }
    }

    #[test]
    fn one_user_two_codes_answers_each_its_own_running_balance() {
        // User 7 had 100, got 10 (id 1) then 20 (id 2): 110 then 130.
        let w = [written(2, 2, 7, 0, 20, 130), written(1, 1, 7, 0, 10, 130), written(3, 1, 8, 1, 10, 10)];
        assert_eq!(balances_per_row(&w), vec![130, 110, 10]);
    }

    #[test]
    fn skipped_rows_have_no_outcome_and_each_written_row_is_given_once() {
        let a = Row { code_id: 1, user_id: 1, ticket: 0 };
        let b = Row { code_id: 1, user_id: 2, ticket: 1 };
        let w = [written(5, 1, 1, 0, 10, 10)];
        let out = match_rows(&[a, b, a], &w);
        assert_eq!(out[0], Some(Committed::Credited { redemption_id: 5, amount: 10, balance: 10 }));
        assert_eq!(out[1], None);
        assert_eq!(out[2], None);
    }
}
