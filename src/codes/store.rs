//! Codes and their redemptions in Postgres (except the commit itself, which
//! lives with the redemption path).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

use super::model::{Code, CodeName, CodeStatus};
use crate::db::StoreError;

const CODE_COLUMNS: &str = "id, code, amount, redemption_limit, starts_at, ends_at, status, created_at";

fn code_from_row(row: &Row) -> Code {
    Code {
        id: row.get(0),
        code: row.get(1),
        amount: row.get(2),
        limit: row.get(3),
        starts_at: row.get(4),
        ends_at: row.get(5),
        status: CodeStatus::from_db(row.get(6)),
        created_at: row.get(7),
    }
}

pub struct NewCode<'a> {
    pub code: &'a CodeName,
    pub amount: i64,
    pub limit: i32,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
}

/// Inserts the code; `Ok(None)` if one with this name exists.
pub async fn insert_code(db: &impl GenericClient, new: &NewCode<'_>) -> Result<Option<Code>, StoreError> {
    let sql = format!(
        "INSERT INTO codes (code, amount, redemption_limit, starts_at, ends_at) VALUES ($1, $2, $3, $4, $5)
         RETURNING {CODE_COLUMNS}"
    );
    let stmt = db.prepare_cached(&sql).await?;
    match db.query_one(&stmt, &[&new.code.as_str(), &new.amount, &new.limit, &new.starts_at, &new.ends_at]).await {
        Ok(row) => Ok(Some(code_from_row(&row))),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub async fn find_by_name(db: &impl GenericClient, name: &str) -> Result<Option<Code>, StoreError> {
    let stmt = db.prepare_cached(&format!("SELECT {CODE_COLUMNS} FROM codes WHERE code = $1")).await?;
    Ok(db.query_opt(&stmt, &[&name]).await?.as_ref().map(code_from_row))
}

/// Codes the reconciler looks after: active, and not ended more than a day ago.
pub async fn active_codes(db: &impl GenericClient) -> Result<Vec<Code>, StoreError> {
    let stmt = db
        .prepare_cached(&format!(
            "SELECT {CODE_COLUMNS} FROM codes
             WHERE status = 'active' AND (ends_at IS NULL OR ends_at > now() - interval '1 day')
             ORDER BY id"
        ))
        .await?;
    Ok(db.query(&stmt, &[]).await?.iter().map(code_from_row).collect())
}

pub async fn list_codes(db: &impl GenericClient, limit: i64, after_id: i64) -> Result<Vec<Code>, StoreError> {
    let stmt =
        db.prepare_cached(&format!("SELECT {CODE_COLUMNS} FROM codes WHERE id > $1 ORDER BY id LIMIT $2")).await?;
    Ok(db.query(&stmt, &[&after_id, &limit]).await?.iter().map(code_from_row).collect())
}

/// Every committed (user, ticket) of a code: what a Redis rebuild starts from.
pub async fn committed_claims(db: &impl GenericClient, code_id: i64) -> Result<Vec<(i64, i32)>, StoreError> {
    let stmt = db.prepare_cached("SELECT user_id, ticket FROM redemptions WHERE code_id = $1").await?;
    Ok(db.query(&stmt, &[&code_id]).await?.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Which of `users` hold a committed redemption of the code.
pub async fn users_with_redemption(
    db: &impl GenericClient,
    code_id: i64,
    users: &[i64],
) -> Result<Vec<i64>, StoreError> {
    let stmt = db.prepare_cached("SELECT user_id FROM redemptions WHERE code_id = $1 AND user_id = ANY($2)").await?;
    Ok(db.query(&stmt, &[&code_id, &users]).await?.iter().map(|r| r.get(0)).collect())
}

#[derive(Debug, Default)]
pub struct RedemptionSummary {
    pub redeemed: i64,
    pub total_credited: i64,
    pub first_at: Option<DateTime<Utc>>,
    pub last_at: Option<DateTime<Utc>>,
}

pub async fn redemption_summary(db: &impl GenericClient, code_id: i64) -> Result<RedemptionSummary, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT count(*), coalesce(sum(amount), 0)::bigint, min(created_at), max(created_at)
             FROM redemptions WHERE code_id = $1",
        )
        .await?;
    let row = db.query_one(&stmt, &[&code_id]).await?;
    Ok(RedemptionSummary {
        redeemed: row.get(0),
        total_credited: row.get(1),
        first_at: row.get(2),
        last_at: row.get(3),
    })
}

#[derive(Debug, Default)]
pub struct SyncedCounters {
    pub remaining: Option<i32>,
    pub rejections: serde_json::Value,
    pub synced_at: Option<DateTime<Utc>>,
}

pub async fn synced_counters(db: &impl GenericClient, code_id: i64) -> Result<SyncedCounters, StoreError> {
    let stmt =
        db.prepare_cached("SELECT synced_remaining, synced_rejections, synced_at FROM codes WHERE id = $1").await?;
    let row = db.query_one(&stmt, &[&code_id]).await?;
    Ok(SyncedCounters { remaining: row.get(0), rejections: row.get(1), synced_at: row.get(2) })
}

/// Writes the gate's figures back, so the report survives a Redis loss.
pub async fn save_synced_counters(
    db: &impl GenericClient,
    code_id: i64,
    remaining: i32,
    rejections: &serde_json::Value,
) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE codes SET synced_remaining = $2, synced_rejections = $3, synced_at = now() WHERE id = $1",
        )
        .await?;
    db.execute(&stmt, &[&code_id, &remaining, rejections]).await?;
    Ok(())
}
