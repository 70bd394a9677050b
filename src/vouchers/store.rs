//! Vouchers in Postgres.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;

use crate::codes::VoucherReward;
use crate::db::StoreError;
use crate::redemption::commit::Commit;
use crate::redemption::commit::{conflict_of, Conflict};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Voucher {
    pub id: i64,
    /// The campaign it came from.
    pub campaign: String,
    pub voucher_type: String,
    pub percent: i32,
    pub max_amount: Option<i64>,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// When it was spent on a purchase; absent while unused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_at: Option<DateTime<Utc>>,
}

/// Issues the voucher for `ticket`, in one statement; expiry from the campaign's lifetime.
pub async fn issue(
    db: &impl GenericClient,
    campaign: &str,
    code_id: i64,
    user_id: i64,
    ticket: i32,
    reward: &VoucherReward,
) -> Result<Commit<Voucher>, StoreError> {
    let stmt = db
        .prepare_cached(
            "INSERT INTO vouchers (code_id, user_id, ticket, voucher_type, percent, max_amount, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(days => $7))
             RETURNING id, issued_at, expires_at",
        )
        .await?;
    let percent = reward.percent as i32;
    let days = reward.valid_days as i32;
    let result = db
        .query_one(&stmt, &[&code_id, &user_id, &ticket, &reward.voucher_type, &percent, &reward.max_amount, &days])
        .await;
    match result {
        Ok(row) => Ok(Commit::Done(Voucher {
            id: row.get(0),
            campaign: campaign.to_string(),
            voucher_type: reward.voucher_type.clone(),
            percent,
            max_amount: reward.max_amount,
            issued_at: row.get(1),
            expires_at: row.get(2),
            used_at: None,
        })),
        Err(e) => match conflict_of(&e) {
            Some(Conflict::HolderHasOne) => Ok(Commit::AlreadyHeld),
            Some(Conflict::TicketTaken) => Ok(Commit::TicketTaken),
            Some(Conflict::TicketOutOfRange) => Ok(Commit::TicketOutOfRange),
            Some(Conflict::UnknownUser) => {
                Ok(Commit::Refused(crate::error::ApiError::Unauthorized("the user does not exist")))
            }
            Some(Conflict::NotRedeemable(why)) => Ok(Commit::Refused(why.into())),
            _ => Err(e.into()),
        },
    }
}

const VOUCHER_COLUMNS: &str =
    "v.id, c.code, v.voucher_type, v.percent, v.max_amount, v.issued_at, v.expires_at, v.used_at";

fn voucher_of_row(r: &tokio_postgres::Row) -> Voucher {
    Voucher {
        id: r.get(0),
        campaign: r.get(1),
        voucher_type: r.get(2),
        percent: r.get(3),
        max_amount: r.get(4),
        issued_at: r.get(5),
        expires_at: r.get(6),
        used_at: r.get(7),
    }
}

/// The user's vouchers, newest first.
pub async fn of_user(db: &impl GenericClient, user_id: i64) -> Result<Vec<Voucher>, StoreError> {
    let sql = format!(
        "SELECT {VOUCHER_COLUMNS} FROM vouchers v JOIN codes c ON c.id = v.code_id
         WHERE v.user_id = $1 ORDER BY v.id DESC LIMIT 500"
    );
    let stmt = db.prepare_cached(&sql).await?;
    Ok(db.query(&stmt, &[&user_id]).await?.iter().map(voucher_of_row).collect())
}

/// The voucher a campaign issued to the user, if any (one per user and campaign).
pub async fn of_user_in_campaign(
    db: &impl GenericClient,
    user_id: i64,
    code_id: i64,
) -> Result<Option<Voucher>, StoreError> {
    let sql = format!(
        "SELECT {VOUCHER_COLUMNS} FROM vouchers v JOIN codes c ON c.id = v.code_id
         WHERE v.user_id = $1 AND v.code_id = $2"
    );
    let stmt = db.prepare_cached(&sql).await?;
    Ok(db.query_opt(&stmt, &[&user_id, &code_id]).await?.as_ref().map(voucher_of_row))
}

/// What a voucher gives and whether it can still be spent, as stored.
#[derive(Debug, Clone)]
pub struct VoucherTerms {
    pub id: i64,
    pub user_id: i64,
    pub voucher_type: String,
    pub percent: i32,
    pub max_amount: Option<i64>,
    pub expired: bool,
    pub used: bool,
}

/// The voucher's terms, judged by the database's clock. Read without a
/// lock: percent, cap, type and owner never change; `spend` decides the rest.
pub async fn terms(db: &impl GenericClient, voucher_id: i64) -> Result<Option<VoucherTerms>, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT id, user_id, voucher_type, percent, max_amount, expires_at <= now(), used_at IS NOT NULL
             FROM vouchers WHERE id = $1",
        )
        .await?;
    Ok(db.query_opt(&stmt, &[&voucher_id]).await?.map(|r| VoucherTerms {
        id: r.get(0),
        user_id: r.get(1),
        voucher_type: r.get(2),
        percent: r.get(3),
        max_amount: r.get(4),
        expired: r.get(5),
        used: r.get(6),
    }))
}

/// Marks the voucher used if it is the user's, unexpired, unused and of
/// `purchase_type`; false (nothing changed) otherwise. Two spends of one
/// voucher queue on its row and the second finds it used.
pub async fn spend(
    db: &impl GenericClient,
    voucher_id: i64,
    user_id: i64,
    purchase_type: &str,
) -> Result<bool, StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE vouchers SET used_at = now()
             WHERE id = $1 AND user_id = $2 AND voucher_type = $3 AND used_at IS NULL AND expires_at > now()",
        )
        .await?;
    Ok(db.execute(&stmt, &[&voucher_id, &user_id, &purchase_type]).await? == 1)
}
