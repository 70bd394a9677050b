//! Balance and ledger SQL. A wallet's balance is the sum of its ledger rows;
//! both change only together, inside one statement or transaction.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;

use crate::db::StoreError;

/// The balance of a user (0 for one who never received anything).
pub async fn balance(db: &impl GenericClient, user_id: i64) -> Result<i64, StoreError> {
    let stmt = db.prepare_cached("SELECT balance FROM wallets WHERE user_id = $1").await?;
    Ok(db.query_opt(&stmt, &[&user_id]).await?.map(|r| r.get(0)).unwrap_or(0))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LedgerEntry {
    pub id: i64,
    pub amount: i64,
    pub kind: String,
    pub reference: String,
    pub created_at: DateTime<Utc>,
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
            "SELECT id, amount, kind, reference, created_at FROM ledger
             WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .await?;
    let rows = db.query(&stmt, &[&user_id, &before.unwrap_or(i64::MAX), &limit]).await?;
    Ok(rows
        .into_iter()
        .map(|r| LedgerEntry {
            id: r.get(0),
            amount: r.get(1),
            kind: r.get(2),
            reference: r.get(3),
            created_at: r.get(4),
        })
        .collect())
}
