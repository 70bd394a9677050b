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
    match conflict_of(&e) {
        Some(Conflict::HolderHasOne) => Ok(Committed::AlreadyRedeemed),
        Some(Conflict::TicketTaken) => Ok(Committed::TicketTaken),
        Some(Conflict::TicketOutOfRange) => Ok(Committed::TicketOutOfRange),
        Some(Conflict::UnknownUser) => Ok(Committed::UnknownUser),
        _ => Err(e.into()),
    }
}

/// The constraint violations that carry meaning for any table holding
/// tickets (redemptions, vouchers, coupon_redemptions): the constraint names
/// follow one pattern, see the migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// `<table>_code_user_key`: the user already holds one.
    HolderHasOne,
    /// `<table>_code_ticket_key`: the ticket is used.
    TicketTaken,
    /// `<table>_ticket_below_limit`: the ticket is not below the limit.
    TicketOutOfRange,
    /// `coupon_redemptions_code_order_key`: the order already used the coupon.
    OrderTaken,
    /// `coupon_redemptions_code_user_seq_key`: a concurrent use took the same per-user slot.
    UserSlotTaken,
    /// `coupon_redemptions_per_user_limit`: the user has used up their uses.
    PerUserLimit,
    /// A foreign key to users: the token's user does not exist.
    UnknownUser,
}

pub fn conflict_of(e: &tokio_postgres::Error) -> Option<Conflict> {
    let db_error = e.as_db_error()?;
    let constraint = db_error.constraint().unwrap_or_default();
    let code = db_error.code();
    if *code == SqlState::UNIQUE_VIOLATION {
        if constraint == "coupon_redemptions_code_order_key" {
            Some(Conflict::OrderTaken)
        } else if constraint == "coupon_redemptions_code_user_seq_key" {
            Some(Conflict::UserSlotTaken)
        } else if constraint.ends_with("_code_user_key") {
            Some(Conflict::HolderHasOne)
        } else if constraint.ends_with("_code_ticket_key") {
            Some(Conflict::TicketTaken)
        } else {
            None
        }
    } else if *code == SqlState::CHECK_VIOLATION {
        if constraint.ends_with("_ticket_below_limit") {
            Some(Conflict::TicketOutOfRange)
        } else if constraint == "coupon_redemptions_per_user_limit" {
            Some(Conflict::PerUserLimit)
        } else {
            None
        }
    } else if *code == SqlState::FOREIGN_KEY_VIOLATION && db_error.table() != Some("codes") {
        // Only user_id references anything but codes.
        if constraint.ends_with("_user_id_fkey") {
            Some(Conflict::UnknownUser)
        } else {
            None
        }
    } else {
        None
    }
}
