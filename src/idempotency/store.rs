//! Idempotency keys in Postgres (zero2prod's shape: `INSERT ... ON CONFLICT
//! DO NOTHING` decides who runs the operation), with a lock that lapses after
//! the claim grace period, so a key held by a gateway that died is taken over.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use crate::db::StoreError;

/// How long a key is kept.
pub const KEY_TTL_HOURS: i32 = 24;

#[derive(Debug)]
pub enum Begin {
    /// The key's first use (or its last use expired): run the operation.
    Fresh,
    /// Used before without a final answer, and nobody runs it now: run again
    /// (asking the truth first). `since`: the key's first use.
    Again { since: DateTime<Utc> },
    /// A final answer is kept: replay it.
    Replay { status: u16, body: serde_json::Value },
    /// Another request with this key is running.
    InProgress,
    /// The key came with another request.
    Reused,
}

/// Takes the key for this request, or says why not.
pub async fn begin(
    db: &impl GenericClient,
    user_id: i64,
    key: &str,
    fingerprint: &[u8],
    lock_for: Duration,
) -> Result<Begin, StoreError> {
    // A new key, or one expired: ours, locked.
    let insert = db
        .prepare_cached(
            "INSERT INTO idempotency_keys AS k (user_id, key, fingerprint, locked_at) VALUES ($1, $2, $3, now())
             ON CONFLICT (user_id, key) DO UPDATE
                 SET fingerprint = EXCLUDED.fingerprint, created_at = now(), locked_at = now(),
                     response_status = NULL, response_body = NULL
                 WHERE k.created_at < now() - make_interval(hours => $4)
             RETURNING created_at",
        )
        .await?;
    if db.query_opt(&insert, &[&user_id, &key, &fingerprint, &KEY_TTL_HOURS]).await?.is_some() {
        return Ok(Begin::Fresh);
    }
    // Known, same request, no final answer, nobody holding it (or its holder
    // is past the grace period: its gateway died): ours again.
    let retake = db
        .prepare_cached(
            "UPDATE idempotency_keys SET locked_at = now()
             WHERE user_id = $1 AND key = $2 AND fingerprint = $3 AND response_status IS NULL
               AND (locked_at IS NULL OR locked_at < now() - make_interval(secs => $4))
             RETURNING created_at",
        )
        .await?;
    let grace = lock_for.as_secs_f64();
    if let Some(row) = db.query_opt(&retake, &[&user_id, &key, &fingerprint, &grace]).await? {
        return Ok(Begin::Again { since: row.get(0) });
    }
    let read = db
        .prepare_cached(
            "SELECT fingerprint, response_status, response_body FROM idempotency_keys WHERE user_id = $1 AND key = $2",
        )
        .await?;
    let Some(row) = db.query_opt(&read, &[&user_id, &key]).await? else {
        // Purged between our statements (it expired): the retry starts afresh.
        return Ok(Begin::InProgress);
    };
    if row.get::<_, Vec<u8>>(0) != fingerprint {
        return Ok(Begin::Reused);
    }
    Ok(match (row.get::<_, Option<i16>>(1), row.get::<_, Option<serde_json::Value>>(2)) {
        (Some(status), Some(body)) => Begin::Replay { status: status as u16, body },
        _ => Begin::InProgress,
    })
}

/// Unlocks the key, keeping the final answer if there is one.
pub async fn finish(
    db: &impl GenericClient,
    user_id: i64,
    key: &str,
    answer: Option<(i16, &serde_json::Value)>,
) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE idempotency_keys SET locked_at = NULL, response_status = $3, response_body = $4
             WHERE user_id = $1 AND key = $2",
        )
        .await?;
    let (status, body) = match answer {
        Some((s, b)) => (Some(s), Some(b)),
        None => (None, None),
    };
    db.execute(&stmt, &[&user_id, &key, &status, &body]).await?;
    Ok(())
}

/// Deletes keys older than their 24 hours, at most `max` at a time.
pub async fn purge_expired(db: &impl GenericClient, max: i64) -> Result<u64, StoreError> {
    let stmt = db
        .prepare_cached(
            "DELETE FROM idempotency_keys WHERE ctid IN (
                 SELECT ctid FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1) LIMIT $2)",
        )
        .await?;
    Ok(db.execute(&stmt, &[&KEY_TTL_HOURS, &max]).await?)
}
