//! Codes and their redemptions in Postgres (except the commit itself, which
//! lives with the redemption path).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

use super::model::{Code, CodeKind, CodeName, CodeStatus};
use crate::db::StoreError;

const CODE_COLUMNS: &str = "id, code, kind, amount, redemption_limit, per_user_limit, starts_at, ends_at, \
                            status, time_zone, reward, rules, batch, created_at, control_rev, tracked";

/// How many columns CODE_COLUMNS names (a column after them is at this index).
const CODE_COLUMN_COUNT: usize = 16;

fn code_from_row(row: &Row) -> Code {
    Code {
        id: row.get(0),
        code: row.get(1),
        kind: CodeKind::from_db(row.get(2)),
        amount: row.get(3),
        limit: row.get(4),
        per_user_limit: row.get(5),
        starts_at: row.get(6),
        ends_at: row.get(7),
        status: CodeStatus::from_db(row.get(8)),
        time_zone: row.get(9),
        reward: row.get(10),
        rules: row.get(11),
        batch: row.get(12),
        created_at: row.get(13),
        control_rev: row.get(14),
        tracked: row.get(15),
    }
}

pub struct NewCode<'a> {
    pub code: &'a CodeName,
    pub kind: CodeKind,
    pub amount: i64,
    pub limit: i32,
    pub per_user_limit: i32,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub time_zone: &'a str,
    pub reward: &'a serde_json::Value,
    pub rules: &'a serde_json::Value,
    pub batch: Option<&'a str>,
    pub tracked: bool,
}

/// Inserts the code; `Ok(None)` if one with this name exists.
pub async fn insert_code(db: &impl GenericClient, new: &NewCode<'_>) -> Result<Option<Code>, StoreError> {
    let sql = format!(
        "INSERT INTO codes (code, kind, amount, redemption_limit, per_user_limit, starts_at, ends_at,
                            time_zone, reward, rules, batch, tracked)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         RETURNING {CODE_COLUMNS}"
    );
    let stmt = db.prepare_cached(&sql).await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 12] = [
        &new.code.as_str(),
        &new.kind.as_str(),
        &new.amount,
        &new.limit,
        &new.per_user_limit,
        &new.starts_at,
        &new.ends_at,
        &new.time_zone,
        new.reward,
        new.rules,
        &new.batch,
        &new.tracked,
    ];
    match db.query_one(&stmt, &params).await {
        Ok(row) => Ok(Some(code_from_row(&row))),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub async fn find_by_name(db: &impl GenericClient, name: &str) -> Result<Option<Code>, StoreError> {
    let stmt = db.prepare_cached(&format!("SELECT {CODE_COLUMNS} FROM codes WHERE code = $1")).await?;
    Ok(db.query_opt(&stmt, &[&name]).await?.as_ref().map(code_from_row))
}

/// Codes changed (status, window, limit...) in the last `seconds`, by the
/// database's clock: the reconciler re-asserts their controls in the gate,
/// whatever their status now. At most `max`, most recent first. Codes never
/// changed since their creation are left out: creation installs their
/// controls (a bulk creation of 100,000 codes costs the reconciler nothing).
pub async fn codes_changed_within(db: &impl GenericClient, seconds: f64, max: i64) -> Result<Vec<Code>, StoreError> {
    let stmt = db
        .prepare_cached(&format!(
            "SELECT {CODE_COLUMNS} FROM codes
             WHERE updated_at >= now() - make_interval(secs => $1) AND updated_at > created_at
             ORDER BY updated_at DESC LIMIT $2"
        ))
        .await?;
    Ok(db.query(&stmt, &[&seconds, &max]).await?.iter().map(code_from_row).collect())
}

pub async fn list_codes(
    db: &impl GenericClient,
    kind: Option<CodeKind>,
    status: Option<CodeStatus>,
    limit: i64,
    after_id: i64,
) -> Result<Vec<Code>, StoreError> {
    let stmt = db
        .prepare_cached(&format!(
            "SELECT {CODE_COLUMNS} FROM codes
             WHERE id > $1 AND ($2::text IS NULL OR kind = $2) AND ($3::text IS NULL OR status = $3)
             ORDER BY id LIMIT $4"
        ))
        .await?;
    let kind = kind.map(CodeKind::as_str);
    let status = status.map(CodeStatus::as_str);
    Ok(db.query(&stmt, &[&after_id, &kind, &status, &limit]).await?.iter().map(code_from_row).collect())
}

/// The table holding a kind's live tickets, and how a holder is named there.
/// Holders are what the gate dedupes on: the user for credit codes and
/// vouchers, the order for coupons.
fn ticket_source(kind: CodeKind) -> &'static str {
    match kind {
        CodeKind::Credit => "SELECT user_id::text AS holder, ticket FROM redemptions WHERE code_id = $1",
        CodeKind::Voucher => "SELECT user_id::text AS holder, ticket FROM vouchers WHERE code_id = $1",
        CodeKind::Coupon => {
            "SELECT 'order:' || order_number AS holder, ticket FROM coupon_redemptions
             WHERE code_id = $1 AND status = 'applied'"
        }
    }
}

/// Every committed (holder, ticket) of a code: what a Redis rebuild starts from.
pub async fn committed_claims(db: &impl GenericClient, code: &Code) -> Result<Vec<(String, i32)>, StoreError> {
    let stmt = db.prepare_cached(ticket_source(code.kind)).await?;
    Ok(db.query(&stmt, &[&code.id]).await?.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Which of `holders` hold a committed ticket of the code.
pub async fn committed_holders(
    db: &impl GenericClient,
    code: &Code,
    holders: &[String],
) -> Result<Vec<String>, StoreError> {
    let sql = format!("SELECT holder FROM ({}) t WHERE holder = ANY($2)", ticket_source(code.kind));
    let stmt = db.prepare_cached(&sql).await?;
    Ok(db.query(&stmt, &[&code.id, &holders]).await?.iter().map(|r| r.get(0)).collect())
}

/// The committed (holder, ticket) of a code with a ticket in `[from, to)`
/// (the ticket audit's range; each table has an index on (code_id, ticket)).
pub async fn committed_in_range(
    db: &impl GenericClient,
    code: &Code,
    from: i64,
    to: i64,
) -> Result<Vec<(String, i32)>, StoreError> {
    let sql = format!("SELECT holder, ticket FROM ({}) t WHERE ticket >= $2 AND ticket < $3", ticket_source(code.kind));
    let stmt = db.prepare_cached(&sql).await?;
    let (from, to) = (from.clamp(0, i32::MAX as i64) as i32, to.clamp(0, i32::MAX as i64) as i32);
    Ok(db.query(&stmt, &[&code.id, &from, &to]).await?.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// What the gate must agree with, read from Postgres (never from a cache):
/// the limit, its version, and the count of Postgres-side ticket frees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateTruth {
    pub limit: i32,
    pub limit_version: i64,
    pub slot_changes: i64,
}

pub async fn gate_truth(db: &impl GenericClient, code_id: i64) -> Result<Option<GateTruth>, StoreError> {
    let stmt =
        db.prepare_cached("SELECT redemption_limit, limit_version, slot_changes FROM codes WHERE id = $1").await?;
    Ok(db.query_opt(&stmt, &[&code_id]).await?.map(|r| GateTruth {
        limit: r.get(0),
        limit_version: r.get(1),
        slot_changes: r.get(2),
    }))
}

/// A code as the reconciler reads it: the row, what the gate must agree with,
/// and the counters last written back.
#[derive(Debug, Clone)]
pub struct ReconcileRow {
    pub code: Code,
    pub truth: GateTruth,
    pub synced_remaining: Option<i32>,
    pub synced_rejections: serde_json::Value,
}

fn reconcile_row(row: &Row) -> ReconcileRow {
    let n = CODE_COLUMN_COUNT;
    ReconcileRow {
        code: code_from_row(row),
        truth: GateTruth { limit: row.get(4), limit_version: row.get(n), slot_changes: row.get(n + 1) },
        synced_remaining: row.get(n + 2),
        synced_rejections: row.get(n + 3),
    }
}

async fn reconcile_rows(
    db: &impl GenericClient,
    condition: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<ReconcileRow>, StoreError> {
    let sql = format!(
        "SELECT {CODE_COLUMNS}, limit_version, slot_changes, synced_remaining, synced_rejections
         FROM codes WHERE {condition}"
    );
    let stmt = db.prepare_cached(&sql).await?;
    Ok(db.query(&stmt, params).await?.iter().map(reconcile_row).collect())
}

/// The reconciler's rows of the codes named (the index of touched codes).
pub async fn reconcile_rows_named(db: &impl GenericClient, names: &[String]) -> Result<Vec<ReconcileRow>, StoreError> {
    if names.is_empty() {
        return Ok(vec![]);
    }
    reconcile_rows(db, "code = ANY($1) ORDER BY id", &[&names]).await
}

/// The change feed: codes an operator changed (limit, status, window) or
/// whose tickets Postgres freed (a coupon cancel) in the last `seconds`, by
/// the database's clock, whatever their status; at most `max`, newest first.
pub async fn reconcile_rows_changed(
    db: &impl GenericClient,
    seconds: f64,
    max: i64,
) -> Result<Vec<ReconcileRow>, StoreError> {
    reconcile_rows(
        db,
        "(updated_at >= now() - make_interval(secs => $1) AND updated_at > created_at)
            OR slot_changed_at >= now() - make_interval(secs => $1)
         ORDER BY greatest(updated_at, slot_changed_at) DESC LIMIT $2",
        &[&seconds, &max],
    )
    .await
}

/// The slow sweep's slice: the next `max` codes the reconciler looks after
/// (active, and not ended more than a day ago) with an id above `after_id`.
pub async fn reconcile_rows_active_after(
    db: &impl GenericClient,
    after_id: i64,
    max: i64,
) -> Result<Vec<ReconcileRow>, StoreError> {
    reconcile_rows(
        db,
        "id > $1 AND status = 'active' AND (ends_at IS NULL OR ends_at > now() - interval '1 day')
         ORDER BY id LIMIT $2",
        &[&after_id, &max],
    )
    .await
}

/// The highest ticket in use (committed), if any: a limit may not go below it.
pub async fn highest_ticket(db: &impl GenericClient, code: &Code) -> Result<Option<i32>, StoreError> {
    let sql = format!("SELECT max(ticket) FROM ({}) t", ticket_source(code.kind));
    let stmt = db.prepare_cached(&sql).await?;
    Ok(db.query_one(&stmt, &[&code.id]).await?.get(0))
}

#[derive(Debug, Default)]
pub struct RedemptionSummary {
    /// Live uses: redemptions, vouchers issued, or coupons applied (not cancelled).
    pub redeemed: i64,
    pub total_credited: i64,
    pub total_discounted: i64,
    pub first_at: Option<DateTime<Utc>>,
    pub last_at: Option<DateTime<Utc>>,
}

pub async fn redemption_summary(db: &impl GenericClient, code: &Code) -> Result<RedemptionSummary, StoreError> {
    let sql = match code.kind {
        CodeKind::Credit => {
            "SELECT count(*), coalesce(sum(amount), 0)::bigint, 0::bigint, min(created_at), max(created_at)
             FROM redemptions WHERE code_id = $1"
        }
        CodeKind::Voucher => {
            "SELECT count(*), 0::bigint, 0::bigint, min(issued_at), max(issued_at) FROM vouchers WHERE code_id = $1"
        }
        CodeKind::Coupon => {
            "SELECT count(*) FILTER (WHERE status = 'applied'), 0::bigint,
                    coalesce(sum(discount) FILTER (WHERE status = 'applied'), 0)::bigint,
                    min(created_at), max(created_at)
             FROM coupon_redemptions WHERE code_id = $1"
        }
    };
    let stmt = db.prepare_cached(sql).await?;
    let row = db.query_one(&stmt, &[&code.id]).await?;
    Ok(RedemptionSummary {
        redeemed: row.get(0),
        total_credited: row.get(1),
        total_discounted: row.get(2),
        first_at: row.get(3),
        last_at: row.get(4),
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

/// A change to a code; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct CodeChange {
    pub limit: Option<i32>,
    pub per_user_limit: Option<i32>,
    /// `Some(None)` clears the bound.
    pub starts_at: Option<Option<DateTime<Utc>>>,
    pub ends_at: Option<Option<DateTime<Utc>>>,
    pub status: Option<CodeStatus>,
    pub rules: Option<serde_json::Value>,
    pub tracked: Option<bool>,
}

#[derive(Debug)]
pub enum ChangeOutcome {
    /// The changed code and its `limit_version` (what orders the gate's set_limit).
    Changed(Box<Code>, i64),
    /// The limit would fall to or below a ticket in use.
    LimitBelowUse { highest_ticket: i32 },
    /// The window would end before it starts.
    BadWindow,
}

/// Applies `change` in one transaction. The code's row is locked FOR UPDATE
/// first: that waits for commits in flight (they hold FOR KEY SHARE on it)
/// and makes later ones see the new limit, so a lowered limit is exact; and
/// the same for a pause, an end or a window: no use commits after this
/// transaction has (see migrations/V4). The lock must be FOR UPDATE: the
/// UPDATE alone takes FOR NO KEY UPDATE, which does not conflict with the
/// commits' FOR KEY SHARE.
pub async fn change_code(
    client: &mut deadpool_postgres::Client,
    code: &Code,
    change: &CodeChange,
) -> Result<ChangeOutcome, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT 1 FROM codes WHERE id = $1 FOR UPDATE", &[&code.id]).await?;
    if let Some(limit) = change.limit {
        if let Some(highest) = highest_ticket(&tx, code).await? {
            if highest >= limit {
                return Ok(ChangeOutcome::LimitBelowUse { highest_ticket: highest });
            }
        }
    }
    let sql = format!(
        "UPDATE codes SET
            redemption_limit = coalesce($2, redemption_limit),
            per_user_limit = coalesce($3, per_user_limit),
            starts_at = CASE WHEN $4 THEN $5 ELSE starts_at END,
            ends_at = CASE WHEN $6 THEN $7 ELSE ends_at END,
            status = coalesce($8, status),
            rules = coalesce($9, rules),
            -- After the row lock: a later change always gets a larger number.
            control_rev = txid_current(),
            tracked = coalesce($10, tracked),
            updated_at = now()
         WHERE id = $1 RETURNING {CODE_COLUMNS}, limit_version"
    );
    let status = change.status.map(CodeStatus::as_str);
    let result = tx
        .query_one(
            &sql,
            &[
                &code.id,
                &change.limit,
                &change.per_user_limit,
                &change.starts_at.is_some(),
                &change.starts_at.flatten(),
                &change.ends_at.is_some(),
                &change.ends_at.flatten(),
                &status,
                &change.rules,
                &change.tracked,
            ],
        )
        .await;
    let row = match result {
        Ok(row) => row,
        Err(e) if e.code() == Some(&SqlState::CHECK_VIOLATION) => return Ok(ChangeOutcome::BadWindow),
        Err(e) => return Err(e.into()),
    };
    tx.commit().await?;
    Ok(ChangeOutcome::Changed(Box::new(code_from_row(&row)), row.get(CODE_COLUMN_COUNT)))
}

pub struct BulkSpec<'a> {
    pub kind: CodeKind,
    pub amount: i64,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub time_zone: &'a str,
    pub reward: &'a serde_json::Value,
    pub rules: &'a serde_json::Value,
    pub batch: &'a str,
}

/// Inserts single-use codes named `names` in one statement: all of them, or
/// none if any name exists already (then 0).
pub async fn insert_bulk(db: &impl GenericClient, names: &[String], spec: &BulkSpec<'_>) -> Result<u64, StoreError> {
    let stmt = db
        .prepare_cached(
            "INSERT INTO codes (code, kind, amount, redemption_limit, per_user_limit, starts_at, ends_at,
                                time_zone, reward, rules, batch)
             SELECT name, $2, $3, 1, 1, $4, $5, $6, $7, $8, $9 FROM unnest($1::text[]) AS name",
        )
        .await?;
    let inserted = db
        .execute(
            &stmt,
            &[
                &names,
                &spec.kind.as_str(),
                &spec.amount,
                &spec.starts_at,
                &spec.ends_at,
                &spec.time_zone,
                spec.reward,
                spec.rules,
                &spec.batch,
            ],
        )
        .await;
    match inserted {
        Ok(n) => Ok(n),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(0),
        Err(e) => Err(e.into()),
    }
}
