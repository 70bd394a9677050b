//! Credits and debits by other services, exactly once per (service,
//! reference): the ledger row's unique reference decides which of any number
//! of concurrent calls writes, the others answer with what it wrote. A debit
//! never takes a balance below zero, and a top-up's voucher is spent in the
//! debit's own transaction. Knows the stores, not HTTP.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::store::{self, Inserted, NewMovement, StoredMovement, SERVICE_CREDIT, SERVICE_DEBIT};
use crate::db::StoreError;
use crate::error::ApiError;
use crate::state::AppState;
use crate::vouchers::service::{check_spendable, discount_on};
use crate::vouchers::store as vouchers;

/// The largest single movement, in the wallet's unit (10^12 Toman): far
/// above any real purchase, far below where sums could overflow.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;

/// A movement a service asks for, checked.
#[derive(Debug, Clone)]
pub struct Movement {
    pub user_id: i64,
    pub amount: i64,
    pub reference: String,
    pub reason: String,
    /// A top-up paid partly by this voucher (debits only).
    pub voucher: Option<VoucherUse>,
}

#[derive(Debug, Clone)]
pub struct VoucherUse {
    pub voucher_id: i64,
    pub purchase_type: String,
}

impl Movement {
    /// Checks every field's limits; the error says which one broke.
    pub fn parse(
        user_id: i64,
        amount: i64,
        reference: String,
        reason: String,
        voucher: Option<VoucherUse>,
    ) -> Result<Self, ApiError> {
        if user_id <= 0 {
            return Err(ApiError::InvalidInput("user_id must be a positive user id".into()));
        }
        if !(1..=MAX_AMOUNT).contains(&amount) {
            return Err(ApiError::InvalidInput(format!("amount must be a whole number from 1 to {MAX_AMOUNT}")));
        }
        let ref_ok = (1..=100).contains(&reference.len())
            && reference.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
        if !ref_ok {
            return Err(ApiError::InvalidInput(
                "reference must be 1-100 characters of letters, digits, '.', '_', ':' or '-'".into(),
            ));
        }
        // Judged as sent (the spec's pattern and maxLength say the same:
        // `text::MovementReason`), kept trimmed.
        if !crate::text::is_text(&reason, crate::text::REASON_MAX) {
            return Err(ApiError::InvalidInput(
                "reason must be 1-200 characters, not only white space, no control characters".into(),
            ));
        }
        let reason = reason.trim().to_string();
        if let Some(v) = &voucher {
            let t = &v.purchase_type;
            if v.voucher_id <= 0 {
                return Err(ApiError::InvalidInput("voucher_id must be a positive voucher id".into()));
            }
            if !(1..=64).contains(&t.len()) || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(ApiError::InvalidInput(
                    "purchase_type must be 1-64 characters of letters, digits or _".into(),
                ));
            }
        }
        Ok(Movement { user_id, amount, reference, reason, voucher })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Credit,
    Debit,
}

/// A service's movement, as written (or, on a retry, as first written).
#[derive(Debug, Serialize, ToSchema)]
pub struct MovementDone {
    /// The ledger row.
    pub entry_id: i64,
    pub user_id: i64,
    pub direction: Direction,
    /// The amount asked for: the credit, or the purchase's price.
    pub amount: i64,
    /// What the voucher took off the price (0 without one).
    pub discount: i64,
    /// The wallet's change: +amount for a credit, -(amount - discount) for a debit.
    pub wallet_change: i64,
    /// The balance right after this movement.
    pub balance: i64,
    /// The caller's reference, as sent.
    pub reference: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voucher_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purchase_type: Option<String>,
    pub created_at: DateTime<Utc>,
    /// True when this answers a retry: the movement was written by an earlier call.
    pub replayed: bool,
}

/// The ledger reference of a service's reference. Namespaced by service, so
/// two services never share one, and apart from codes' `redemption:<id>`.
fn stored_reference(service: &str, reference: &str) -> String {
    format!("svc:{service}:{reference}")
}

fn kind_of(direction: Direction) -> &'static str {
    match direction {
        Direction::Credit => SERVICE_CREDIT,
        Direction::Debit => SERVICE_DEBIT,
    }
}

/// The first movement under this reference, if it is the same request
/// (user, direction, amount, voucher); 409 if the reference was used for another.
fn replay(first: StoredMovement, direction: Direction, m: &Movement) -> Result<MovementDone, ApiError> {
    let discount = first.discount.unwrap_or(0);
    let asked = first.amount.abs() + discount;
    let same = first.user_id == m.user_id
        && first.kind == kind_of(direction)
        && asked == m.amount
        && first.voucher_id == m.voucher.as_ref().map(|v| v.voucher_id)
        && first.purchase_type.as_deref() == m.voucher.as_ref().map(|v| v.purchase_type.as_str());
    if !same {
        return Err(ApiError::ReferenceConflict);
    }
    Ok(MovementDone {
        entry_id: first.id,
        user_id: first.user_id,
        direction,
        amount: asked,
        discount,
        wallet_change: first.amount,
        // Every service movement stores it in its own transaction.
        balance: first.balance_after.unwrap_or(0),
        reference: m.reference.clone(),
        reason: first.reason.unwrap_or_default(),
        voucher_id: first.voucher_id,
        purchase_type: first.purchase_type,
        created_at: first.created_at,
        replayed: true,
    })
}

/// POST /wallet/credits.
pub async fn credit(state: &AppState, service: &str, m: Movement) -> Result<MovementDone, ApiError> {
    if m.voucher.is_some() {
        return Err(ApiError::InvalidInput("a voucher pays for debits only".into()));
    }
    apply(state, service, Direction::Credit, m).await
}

/// POST /wallet/debits, with or without a voucher.
pub async fn debit(state: &AppState, service: &str, m: Movement) -> Result<MovementDone, ApiError> {
    if m.voucher.is_some() && state.config.role == crate::config::ServeRole::Wallet {
        // The split's wallet has no vouchers table: they live on the redemption side.
        return Err(ApiError::InvalidInput(
            "vouchers are spent through the single process (role all); this wallet runs split".into(),
        ));
    }
    apply(state, service, Direction::Debit, m).await
}

async fn apply(state: &AppState, service: &str, direction: Direction, m: Movement) -> Result<MovementDone, ApiError> {
    let reference = stored_reference(service, &m.reference);
    let mut db = state.pg.get().await.map_err(StoreError::from)?;
    // A retry of a committed movement: answer it without a transaction, even
    // if the user was disabled since (the service must learn it went through).
    if let Some(first) = store::find_movement(&db, &reference).await? {
        return replay(first, direction, &m);
    }
    if state.disabled_users.contains(m.user_id) {
        return Err(ApiError::UserDisabled);
    }
    match write(&mut db, &reference, direction, &m).await {
        Ok(Written::Done(done)) => Ok(done),
        // A concurrent call with the same reference committed first.
        Ok(Written::ReferenceTaken) => match store::find_movement(&db, &reference).await? {
            Some(first) => replay(first, direction, &m),
            None => Err(ApiError::TryAgain("this reference is being written, try again")),
        },
        // Refusals a concurrent same-reference call can cause (it spent the
        // voucher, or the money): if it did, this is its retry.
        Err(e @ (ApiError::VoucherUsed | ApiError::InsufficientFunds)) => {
            match store::find_movement(&db, &reference).await? {
                Some(first) => replay(first, direction, &m),
                None => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

enum Written {
    Done(MovementDone),
    ReferenceTaken,
}

/// One transaction: the ledger row (the reference's arbiter), the voucher's
/// use, the wallet's change, the balance after. Any refusal rolls all back.
async fn write(
    db: &mut deadpool_postgres::Client,
    reference: &str,
    direction: Direction,
    m: &Movement,
) -> Result<Written, ApiError> {
    let tx = db.transaction().await.map_err(StoreError::from)?;
    let discount = match &m.voucher {
        Some(v) => {
            let terms = vouchers::terms(&tx, v.voucher_id).await?;
            check_spendable(terms.as_ref(), m.user_id, &v.purchase_type)?;
            let discount = terms.map_or(0, |t| discount_on(t.percent, t.max_amount, m.amount));
            // Spending a voucher for nothing would burn it: refuse, nothing written.
            if discount == 0 {
                return Err(ApiError::InvalidInput(
                    "the voucher gives no discount on this amount (floor of its percent); send the debit without it"
                        .into(),
                ));
            }
            discount
        }
        None => 0,
    };
    let change = match direction {
        Direction::Credit => m.amount,
        Direction::Debit => -(m.amount - discount),
    };
    let new = NewMovement {
        user_id: m.user_id,
        amount: change,
        kind: kind_of(direction),
        reference,
        reason: &m.reason,
        voucher_id: m.voucher.as_ref().map(|v| v.voucher_id),
        discount: Some(discount).filter(|d| *d > 0),
        purchase_type: m.voucher.as_ref().map(|v| v.purchase_type.as_str()),
    };
    let (entry_id, created_at) = match store::insert_movement(&tx, &new).await? {
        Inserted::Done { id, created_at } => (id, created_at),
        Inserted::ReferenceTaken => return Ok(Written::ReferenceTaken),
        Inserted::VoucherTaken => return Err(ApiError::VoucherUsed),
        Inserted::UnknownUser => return Err(ApiError::NotFound("user")),
    };
    if let Some(v) = &m.voucher {
        if !vouchers::spend(&tx, v.voucher_id, m.user_id, &v.purchase_type).await? {
            // Changed since it was read (used, or just expired): say which.
            let terms = vouchers::terms(&tx, v.voucher_id).await?;
            check_spendable(terms.as_ref(), m.user_id, &v.purchase_type)?;
            return Err(ApiError::VoucherUsed);
        }
    }
    let balance = if change > 0 {
        store::add_to_wallet(&tx, m.user_id, change).await?
    } else if change < 0 {
        store::take_from_wallet(&tx, m.user_id, -change).await?.ok_or(ApiError::InsufficientFunds)?
    } else {
        // Wholly paid by the voucher: the wallet does not move.
        store::balance(&tx, m.user_id).await?
    };
    store::set_balance_after(&tx, entry_id, balance).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Written::Done(MovementDone {
        entry_id,
        user_id: m.user_id,
        direction,
        amount: m.amount,
        discount,
        wallet_change: change,
        balance,
        reference: m.reference.clone(),
        reason: m.reason.clone(),
        voucher_id: new.voucher_id,
        purchase_type: m.voucher.as_ref().map(|v| v.purchase_type.clone()),
        created_at,
        replayed: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(amount: i64, reference: &str, reason: &str) -> Result<Movement, ApiError> {
        Movement::parse(7, amount, reference.into(), reason.into(), None)
    }

    #[test]
    fn movements_are_checked_field_by_field() {
        assert!(parse(1, "order-1:a.b_c", "top-up").is_ok());
        assert!(parse(MAX_AMOUNT, "r", "x").is_ok());
        for (amount, reference, reason) in [
            (0, "r", "x"),
            (-5, "r", "x"),
            (MAX_AMOUNT + 1, "r", "x"),
            (1, "", "x"),
            (1, "has space", "x"),
            (1, &"r".repeat(101), "x"),
            (1, "r", ""),
            (1, "r", "   "),
            (1, "r", &"x".repeat(201)),
            (1, "r", "line\nbreak"),
            (1, "r", "\tpadded with a control character"),
            (1, "r", "\u{85}"),
        ] {
            assert!(parse(amount, reference, reason).is_err(), "{amount} {reference:?} {reason:?}");
        }
        assert!(Movement::parse(0, 1, "r".into(), "x".into(), None).is_err());
        let bad_type = VoucherUse { voucher_id: 1, purchase_type: "Mobile Topup".into() };
        assert!(Movement::parse(7, 1, "r".into(), "x".into(), Some(bad_type)).is_err());
    }

    #[test]
    fn references_are_namespaced_by_service_and_apart_from_code_credits() {
        assert_eq!(stored_reference("topup", "o-1"), "svc:topup:o-1");
        assert!(!stored_reference("redemption", "5").starts_with("redemption:"));
    }
}
