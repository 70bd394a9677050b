//! The Postgres commit of a claimed ticket: the redemption row, the wallet
//! credit and its ledger row, in one statement (so one implicit transaction
//! and one round trip). Constraint violations that carry meaning come back as
//! values; only real failures are errors. Knows SQL, not Redis.

use deadpool_postgres::GenericClient;
use tokio_postgres::error::SqlState;

use crate::db::StoreError;

/// The ledger `kind` of a code's credit.
pub const CREDIT_KIND: &str = "code_credit";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    Credited {
        redemption_id: i64,
        amount: i64,
        balance: i64,
    },
    /// UNIQUE (code_id, user_id): the user already has this code.
    AlreadyRedeemed,
    /// UNIQUE (code_id, ticket): Redis handed out a ticket Postgres has used
    /// (Redis lost state). Nothing written; the user may retry.
    TicketTaken,
    /// The ticket is not below the code's limit (the limit was lowered).
    TicketOutOfRange,
    /// The token's user does not exist (any more).
    UnknownUser,
}

// Public so the benchmark can drive the very same statement through pgbench.
// `amount` comes from the code's row, never from the caller. The ledger's
// reference is unique, so a credit cannot land twice for one redemption.
pub const COMMIT_SQL: &str = "
WITH r AS (
    INSERT INTO redemptions (code_id, user_id, ticket, amount)
    SELECT id, $2, $3, amount FROM codes WHERE id = $1
    RETURNING id, amount
), w AS (
    INSERT INTO wallets AS w (user_id, balance)
    SELECT $2, amount FROM r
    ON CONFLICT (user_id) DO UPDATE SET balance = w.balance + EXCLUDED.balance, updated_at = now()
    RETURNING balance
), l AS (
    INSERT INTO ledger (user_id, amount, kind, reference)
    SELECT $2, amount, $4, 'redemption:' || id FROM r
)
SELECT r.id, r.amount, w.balance FROM r, w";

pub async fn commit(db: &impl GenericClient, code_id: i64, user_id: i64, ticket: i32) -> Result<Committed, StoreError> {
    let stmt = db.prepare_cached(COMMIT_SQL).await?;
    match db.query_opt(&stmt, &[&code_id, &user_id, &ticket, &CREDIT_KIND]).await {
        Ok(Some(row)) => Ok(Committed::Credited { redemption_id: row.get(0), amount: row.get(1), balance: row.get(2) }),
        // The code row is gone: no slot can be committed against it.
        Ok(None) => Ok(Committed::TicketOutOfRange),
        Err(e) => classify(e),
    }
}

fn classify(e: tokio_postgres::Error) -> Result<Committed, StoreError> {
    let Some(db_error) = e.as_db_error() else {
        return Err(e.into());
    };
    let constraint = db_error.constraint().unwrap_or_default();
    let code = db_error.code();
    if *code == SqlState::UNIQUE_VIOLATION && constraint == "redemptions_code_user_key" {
        Ok(Committed::AlreadyRedeemed)
    } else if *code == SqlState::UNIQUE_VIOLATION && constraint == "redemptions_code_ticket_key" {
        Ok(Committed::TicketTaken)
    } else if *code == SqlState::CHECK_VIOLATION && constraint == "redemptions_ticket_below_limit" {
        Ok(Committed::TicketOutOfRange)
    } else if *code == SqlState::FOREIGN_KEY_VIOLATION && db_error.table() != Some("codes") {
        Ok(Committed::UnknownUser)
    } else {
        Err(e.into())
    }
}
