//! The Postgres commit of a claimed ticket: the redemption row, the wallet
//! credit and its ledger row, in one statement (so one implicit transaction
//! and one round trip). Constraint violations that carry meaning come back as
//! values; only real failures are errors. Knows SQL, not Redis.

use deadpool_postgres::GenericClient;
use tokio_postgres::error::SqlState;

use crate::codes::NotNow;
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
    /// The code is paused, ended or outside its window, by the database's
    /// clock: nothing written (see migrations/V4).
    NotRedeemable(NotNow),
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
        Err(e) => classify_error(e),
    }
}

/// A user's committed redemption of a code, as a retry is told about it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PastRedemption {
    pub redemption_id: i64,
    pub code: String,
    /// What it credited.
    pub amount: i64,
    /// When it was committed (the database's clock).
    pub redeemed_at: chrono::DateTime<chrono::Utc>,
    /// The wallet's balance now. Absent in the split (role `redemption`):
    /// balances are the wallet service's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance: Option<i64>,
}

/// The user's redemption of the code, if one is committed.
pub async fn find_redemption(
    db: &impl GenericClient,
    code_id: i64,
    user_id: i64,
) -> Result<Option<PastRedemption>, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT r.id, c.code, r.amount, r.created_at, coalesce(w.balance, 0)
             FROM redemptions r JOIN codes c ON c.id = r.code_id LEFT JOIN wallets w ON w.user_id = r.user_id
             WHERE r.code_id = $1 AND r.user_id = $2",
        )
        .await?;
    Ok(db.query_opt(&stmt, &[&code_id, &user_id]).await?.map(|row| PastRedemption {
        redemption_id: row.get(0),
        code: row.get(1),
        amount: row.get(2),
        redeemed_at: row.get(3),
        balance: Some(row.get(4)),
    }))
}

/// A commit's error as a `Committed` when it carries meaning (shared with
/// the split's outbox commit, which has the same guards).
pub(crate) fn classify_error(e: tokio_postgres::Error) -> Result<Committed, StoreError> {
    match conflict_of(&e) {
        Some(Conflict::HolderHasOne) => Ok(Committed::AlreadyRedeemed),
        Some(Conflict::TicketTaken) => Ok(Committed::TicketTaken),
        Some(Conflict::TicketOutOfRange) => Ok(Committed::TicketOutOfRange),
        Some(Conflict::UnknownUser) => Ok(Committed::UnknownUser),
        Some(Conflict::NotRedeemable(why)) => Ok(Committed::NotRedeemable(why)),
        _ => Err(e.into()),
    }
}

/// The constraint violations that carry meaning for any table holding
/// tickets (redemptions, vouchers, coupon_redemptions): the constraint names
/// follow one pattern, see the migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// `code_not_redeemable`: the code is paused, ended or outside its window
    /// (the reason is the error's DETAIL).
    NotRedeemable(NotNow),
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
        if constraint == "code_not_redeemable" {
            // An unknown reason is still a refusal: treat it as a pause.
            Some(Conflict::NotRedeemable(db_error.detail().and_then(NotNow::parse).unwrap_or(NotNow::Paused)))
        } else if constraint.ends_with("_ticket_below_limit") {
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

/// What a kind's commit reports back to `through_gate`.
#[derive(Debug)]
pub enum Commit<T> {
    Done(T),
    /// The holder already has a committed use: keep its claim, free the spare ticket.
    AlreadyHeld,
    /// Postgres holds this ticket already (Redis lost state): drop it; the caller may retry.
    TicketTaken,
    /// The ticket is not below the code's limit any more (it was lowered): give
    /// it back (the gate sets it aside until a raise).
    TicketOutOfRange,
    /// Refused for the holder's own reason (unknown user, per-user limit): free the ticket.
    Refused(crate::error::ApiError),
}
