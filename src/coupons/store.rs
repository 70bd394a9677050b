//! Coupon uses in Postgres: one row per (code, order), holding a ticket and a
//! per-user slot while applied.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;

use crate::db::StoreError;
use crate::error::ApiError;
use crate::redemption::commit::Commit;
use crate::redemption::commit::{conflict_of, Conflict};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CouponUse {
    /// Pass to /coupons/redemptions/{id}/cancel when the order is cancelled.
    pub redemption_id: i64,
    pub code: String,
    pub order_number: String,
    #[serde(skip)]
    pub user_id: i64,
    pub order_total: i64,
    pub discount: i64,
    pub new_total: i64,
    /// applied or cancelled
    pub status: String,
    pub created_at: DateTime<Utc>,
    /// True when this answers a retry: the use was recorded by an earlier request.
    pub replayed: bool,
}

const USE_COLUMNS: &str = "r.id, c.code, r.order_number, r.user_id, r.order_total, r.discount, r.status, r.created_at";

fn use_from_row(row: &tokio_postgres::Row, replayed: bool) -> CouponUse {
    let order_total: i64 = row.get(4);
    let discount: i64 = row.get(5);
    CouponUse {
        redemption_id: row.get(0),
        code: row.get(1),
        order_number: row.get(2),
        user_id: row.get(3),
        order_total,
        discount,
        new_total: order_total - discount,
        status: row.get(6),
        created_at: row.get(7),
        replayed,
    }
}

/// The recorded use of `code_id` by order `number`, if any.
pub async fn find_use(db: &impl GenericClient, code_id: i64, number: &str) -> Result<Option<CouponUse>, StoreError> {
    let stmt = db
        .prepare_cached(&format!(
            "SELECT {USE_COLUMNS} FROM coupon_redemptions r JOIN codes c ON c.id = r.code_id
             WHERE r.code_id = $1 AND r.order_number = $2"
        ))
        .await?;
    Ok(db.query_opt(&stmt, &[&code_id, &number]).await?.map(|r| use_from_row(&r, true)))
}

pub struct NewUse<'a> {
    pub code_id: i64,
    pub code: &'a str,
    pub user_id: i64,
    pub order_number: &'a str,
    pub ticket: i32,
    pub order_total: i64,
    pub discount: i64,
}

/// Records the use, taking the user's lowest free per-user slot, in one
/// statement. No free slot: the user has used the coupon up.
pub async fn record_use(db: &impl GenericClient, new: &NewUse<'_>) -> Result<Commit<CouponUse>, StoreError> {
    let stmt = db
        .prepare_cached(
            "INSERT INTO coupon_redemptions (code_id, user_id, order_number, ticket, user_seq, order_total, discount)
             SELECT $1, $2, $3, $4, s, $5, $6
             FROM generate_series(1, (SELECT per_user_limit FROM codes WHERE id = $1)) AS s
             WHERE s NOT IN (SELECT user_seq FROM coupon_redemptions
                             WHERE code_id = $1 AND user_id = $2 AND status = 'applied')
             ORDER BY s LIMIT 1
             RETURNING id, created_at",
        )
        .await?;
    let result = db
        .query_opt(
            &stmt,
            &[&new.code_id, &new.user_id, &new.order_number, &new.ticket, &new.order_total, &new.discount],
        )
        .await;
    match result {
        Ok(Some(row)) => Ok(Commit::Done(CouponUse {
            redemption_id: row.get(0),
            code: new.code.to_string(),
            order_number: new.order_number.to_string(),
            user_id: new.user_id,
            order_total: new.order_total,
            discount: new.discount,
            new_total: new.order_total - new.discount,
            status: "applied".into(),
            created_at: row.get(1),
            replayed: false,
        })),
        Ok(None) => Ok(Commit::Refused(ApiError::PerUserLimit)),
        Err(e) => match conflict_of(&e) {
            // Another request for the same order got there first: the order holds its use.
            Some(Conflict::OrderTaken) => Ok(Commit::AlreadyHeld),
            Some(Conflict::TicketTaken) => Ok(Commit::TicketTaken),
            Some(Conflict::TicketOutOfRange) => Ok(Commit::TicketOutOfRange),
            Some(Conflict::UserSlotTaken) => Ok(Commit::Refused(ApiError::TryAgain("please try again"))),
            Some(Conflict::PerUserLimit) => Ok(Commit::Refused(ApiError::PerUserLimit)),
            Some(Conflict::UnknownUser) => Ok(Commit::Refused(ApiError::NotFound("user"))),
            Some(Conflict::NotRedeemable(why)) => Ok(Commit::Refused(why.into())),
            _ => Err(e.into()),
        },
    }
}

pub enum Cancelled {
    /// Cancelled now: the gate must get `ticket` back for `holder` of `code`.
    Now {
        code: String,
        order_number: String,
        ticket: i32,
        user_id: i64,
    },
    /// It was cancelled before (the gate release is retried, harmlessly).
    Already {
        code: String,
        order_number: String,
        ticket: i32,
        user_id: i64,
    },
    NotFound,
}

/// Marks the use cancelled, once: of concurrent cancels exactly one wins.
pub async fn cancel(db: &impl GenericClient, redemption_id: i64) -> Result<Cancelled, StoreError> {
    let stmt = db
        .prepare_cached(
            "WITH done AS (
                UPDATE coupon_redemptions SET status = 'cancelled', cancelled_at = now()
                WHERE id = $1 AND status = 'applied'
                RETURNING code_id, order_number, ticket, user_id
             )
             SELECT true, c.code, d.order_number, d.ticket, d.user_id FROM done d JOIN codes c ON c.id = d.code_id
             UNION ALL
             SELECT false, c.code, r.order_number, r.ticket, r.user_id
             FROM coupon_redemptions r JOIN codes c ON c.id = r.code_id
             WHERE r.id = $1 AND NOT EXISTS (SELECT 1 FROM done)",
        )
        .await?;
    Ok(match db.query_opt(&stmt, &[&redemption_id]).await? {
        None => Cancelled::NotFound,
        Some(row) => {
            let (code, order_number, ticket, user_id) = (row.get(1), row.get(2), row.get(3), row.get(4));
            if row.get::<_, bool>(0) {
                Cancelled::Now { code, order_number, ticket, user_id }
            } else {
                Cancelled::Already { code, order_number, ticket, user_id }
            }
        }
    })
}

pub async fn owner_of(db: &impl GenericClient, redemption_id: i64) -> Result<Option<i64>, StoreError> {
    let stmt = db.prepare_cached("SELECT user_id FROM coupon_redemptions WHERE id = $1").await?;
    Ok(db.query_opt(&stmt, &[&redemption_id]).await?.map(|r| r.get(0)))
}
