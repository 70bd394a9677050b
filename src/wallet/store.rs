//! Balance and ledger SQL. A wallet's balance is the sum of its ledger rows;
//! both change only together, inside one statement or transaction. Credits
//! are positive rows, debits negative ones.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use tokio_postgres::error::SqlState;

use crate::db::StoreError;

/// Ledger `kind` of a service's credit and debit.
pub const SERVICE_CREDIT: &str = "service_credit";
pub const SERVICE_DEBIT: &str = "service_debit";

/// Public so the benchmark's pgbench ceiling runs the very same query.
pub const BALANCE_SQL: &str = "SELECT balance FROM wallets WHERE user_id = $1";

/// The balance of a user (0 for one who never received anything).
pub async fn balance(db: &impl GenericClient, user_id: i64) -> Result<i64, StoreError> {
    let stmt = db.prepare_cached(BALANCE_SQL).await?;
    Ok(db.query_opt(&stmt, &[&user_id]).await?.map(|r| r.get(0)).unwrap_or(0))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LedgerEntry {
    pub id: i64,
    /// Signed: credits are positive, debits negative.
    pub amount: i64,
    /// credit or debit
    pub direction: &'static str,
    /// code_credit, service_credit or service_debit.
    pub kind: String,
    pub reference: String,
    /// Why a service moved the money (service movements only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The voucher a top-up spent, and what it took off the price.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voucher_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discount: Option<i64>,
    pub created_at: DateTime<Utc>,
}

pub fn direction_of(amount: i64, kind: &str) -> &'static str {
    if amount < 0 || kind == SERVICE_DEBIT {
        "debit"
    } else {
        "credit"
    }
}

/// One page of a user's ledger, newest first; `before` is the id to continue below.
pub async fn transactions(
    db: &impl GenericClient,
    user_id: i64,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<LedgerEntry>, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT id, amount, kind, reference, created_at, reason, voucher_id, discount FROM ledger
             WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .await?;
    let rows = db.query(&stmt, &[&user_id, &before.unwrap_or(i64::MAX), &limit]).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let (amount, kind): (i64, String) = (r.get(1), r.get(2));
            LedgerEntry {
                id: r.get(0),
                amount,
                direction: direction_of(amount, &kind),
                kind,
                reference: r.get(3),
                created_at: r.get(4),
                reason: r.get(5),
                voucher_id: r.get(6),
                discount: r.get(7),
            }
        })
        .collect())
}

/// A service's movement as stored.
#[derive(Debug, Clone)]
pub struct StoredMovement {
    pub id: i64,
    pub user_id: i64,
    /// Signed.
    pub amount: i64,
    pub kind: String,
    pub reference: String,
    pub reason: Option<String>,
    pub balance_after: Option<i64>,
    pub voucher_id: Option<i64>,
    pub discount: Option<i64>,
    pub purchase_type: Option<String>,
    pub created_at: DateTime<Utc>,
}

pub struct NewMovement<'a> {
    pub user_id: i64,
    /// Signed.
    pub amount: i64,
    pub kind: &'static str,
    pub reference: &'a str,
    pub reason: &'a str,
    pub voucher_id: Option<i64>,
    pub discount: Option<i64>,
    pub purchase_type: Option<&'a str>,
}

pub enum Inserted {
    Done {
        id: i64,
        created_at: DateTime<Utc>,
    },
    /// The reference is taken (by a committed movement; a concurrent insert
    /// of it was waited for). Nothing written.
    ReferenceTaken,
    /// The voucher is named by another committed movement.
    VoucherTaken,
    UnknownUser,
}

/// Appends the movement's ledger row, unless its reference exists. The
/// reference's unique index is the arbiter of "exactly once": a concurrent
/// insert of the same reference waits here for the first to commit or roll back.
pub async fn insert_movement(db: &impl GenericClient, m: &NewMovement<'_>) -> Result<Inserted, StoreError> {
    let stmt = db
        .prepare_cached(
            "INSERT INTO ledger (user_id, amount, kind, reference, reason, voucher_id, discount, purchase_type)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (reference) DO NOTHING
             RETURNING id, created_at",
        )
        .await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] =
        [&m.user_id, &m.amount, &m.kind, &m.reference, &m.reason, &m.voucher_id, &m.discount, &m.purchase_type];
    match db.query_opt(&stmt, &params).await {
        Ok(Some(row)) => Ok(Inserted::Done { id: row.get(0), created_at: row.get(1) }),
        Ok(None) => Ok(Inserted::ReferenceTaken),
        Err(e) => {
            let (code, constraint) = match e.as_db_error() {
                Some(d) => (Some(d.code().clone()), d.constraint().unwrap_or_default().to_string()),
                None => (None, String::new()),
            };
            match code {
                Some(c) if c == SqlState::UNIQUE_VIOLATION && constraint == "ledger_voucher_once" => {
                    Ok(Inserted::VoucherTaken)
                }
                Some(c) if c == SqlState::FOREIGN_KEY_VIOLATION && constraint == "ledger_user_id_fkey" => {
                    Ok(Inserted::UnknownUser)
                }
                _ => Err(e.into()),
            }
        }
    }
}

/// Adds `amount` to the wallet (creating it); the new balance.
pub async fn add_to_wallet(db: &impl GenericClient, user_id: i64, amount: i64) -> Result<i64, StoreError> {
    let stmt = db
        .prepare_cached(
            "INSERT INTO wallets AS w (user_id, balance) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET balance = w.balance + EXCLUDED.balance, updated_at = now()
             RETURNING balance",
        )
        .await?;
    Ok(db.query_one(&stmt, &[&user_id, &amount]).await?.get(0))
}

/// Takes `amount` from the wallet if the balance covers it; the new balance,
/// or `None` (nothing changed). The row lock serialises concurrent movements
/// of one wallet, and the guard is re-checked on the row as it is after any
/// movement that was waited for, so a balance never goes below zero.
pub async fn take_from_wallet(db: &impl GenericClient, user_id: i64, amount: i64) -> Result<Option<i64>, StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE wallets SET balance = balance - $2, updated_at = now()
             WHERE user_id = $1 AND balance >= $2 RETURNING balance",
        )
        .await?;
    Ok(db.query_opt(&stmt, &[&user_id, &amount]).await?.map(|r| r.get(0)))
}

pub async fn set_balance_after(db: &impl GenericClient, ledger_id: i64, balance: i64) -> Result<(), StoreError> {
    let stmt = db.prepare_cached("UPDATE ledger SET balance_after = $2 WHERE id = $1").await?;
    db.execute(&stmt, &[&ledger_id, &balance]).await?;
    Ok(())
}

/// The movement stored under `reference`, if any.
pub async fn find_movement(db: &impl GenericClient, reference: &str) -> Result<Option<StoredMovement>, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT id, user_id, amount, kind, reference, reason, balance_after, voucher_id, discount,
                    purchase_type, created_at
             FROM ledger WHERE reference = $1",
        )
        .await?;
    Ok(db.query_opt(&stmt, &[&reference]).await?.map(|r| StoredMovement {
        id: r.get(0),
        user_id: r.get(1),
        amount: r.get(2),
        kind: r.get(3),
        reference: r.get(4),
        reason: r.get(5),
        balance_after: r.get(6),
        voucher_id: r.get(7),
        discount: r.get(8),
        purchase_type: r.get(9),
        created_at: r.get(10),
    }))
}
