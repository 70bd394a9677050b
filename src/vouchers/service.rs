//! Vouchers: issued to a campaign's first N users on login (through the one
//! `through_gate`), and spent on a purchase of their type. The arithmetic and
//! the checks are here; the spend itself runs inside the wallet debit's
//! transaction (`wallet::service`), so the debit and the voucher's use are
//! one commit.

use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;

use super::store::{self, Voucher, VoucherTerms};
use crate::codes::{CodeKind, CodeName};
use crate::error::ApiError;
use crate::redemption::service::{lookup, record_outcome, through_gate};
use crate::state::AppState;

/// Whether this login earned a voucher, and why not.
#[derive(Serialize, ToSchema)]
pub struct VoucherOutcome {
    pub issued: bool,
    /// When not issued: already_issued, campaign_full, not_active, no_such_campaign, try_again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The voucher issued now, or, with `already_issued`, the one issued to this user
    /// earlier (so a login whose answer was lost learns on retry what it won).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voucher: Option<Voucher>,
}

/// The campaign's voucher for a user who just logged in, or why none.
pub async fn voucher_for(state: &Arc<AppState>, user_id: i64, campaign: &CodeName) -> VoucherOutcome {
    let result = issue_voucher(state, user_id, campaign).await;
    record_outcome(state, campaign, &result);
    let reason = match result {
        Ok(voucher) => return VoucherOutcome { issued: true, reason: None, voucher: Some(voucher) },
        Err(ApiError::AlreadyRedeemed) => {
            let voucher = issued_earlier(state, user_id, campaign).await;
            return VoucherOutcome { issued: false, reason: Some("already_issued"), voucher };
        }
        Err(ApiError::SoldOut) => "campaign_full",
        Err(ApiError::NotEligible(_)) => "not_active",
        Err(ApiError::CodeNotFound) => "no_such_campaign",
        Err(e) => {
            if let ApiError::Internal(inner) = &e {
                tracing::error!(error = ?inner, "voucher issue failed");
            }
            "try_again"
        }
    };
    VoucherOutcome { issued: false, reason: Some(reason), voucher: None }
}

/// The voucher this campaign issued the user before; None if it cannot be read
/// now (the answer still says already_issued; `GET /vouchers` lists it).
async fn issued_earlier(state: &AppState, user_id: i64, campaign: &CodeName) -> Option<Voucher> {
    let code = lookup(state, campaign).await.ok()?;
    let db = state.pg.get().await.ok()?;
    match store::of_user_in_campaign(&db, user_id, code.code.id).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "reading an already issued voucher failed");
            None
        }
    }
}

async fn issue_voucher(state: &Arc<AppState>, user_id: i64, campaign: &CodeName) -> Result<Voucher, ApiError> {
    let code = lookup(state, campaign).await?;
    if code.code.kind != CodeKind::Voucher {
        return Err(ApiError::CodeNotFound);
    }
    let reward = code.code.voucher_reward()?;
    let (code_id, name) = (code.code.id, code.code.code.clone());
    through_gate(state, &code, user_id, &user_id.to_string(), |ticket| {
        let (reward, name) = (reward.clone(), name.clone());
        async move {
            let db = state.pg.get().await?;
            store::issue(&db, &name, code_id, user_id, ticket, &reward).await
        }
    })
    .await
}

/// What a voucher takes off a purchase of `amount`: `percent` of it, floored
/// to a whole Toman, at most `max_amount`, never more than the amount.
pub fn discount_on(percent: i32, max_amount: Option<i64>, amount: i64) -> i64 {
    // i128: percent x amount cannot overflow for any i64 amount.
    let raw = (i128::from(amount.max(0)) * i128::from(percent.clamp(0, 100)) / 100) as i64;
    raw.min(max_amount.unwrap_or(i64::MAX)).min(amount).max(0)
}

/// Why `terms` cannot pay for a `purchase_type` purchase of `user_id`, if it
/// cannot. Another user's voucher is answered as if it did not exist.
pub fn check_spendable(terms: Option<&VoucherTerms>, user_id: i64, purchase_type: &str) -> Result<(), ApiError> {
    let Some(v) = terms.filter(|v| v.user_id == user_id) else {
        return Err(ApiError::NotFound("voucher of this user"));
    };
    if v.used {
        Err(ApiError::VoucherUsed)
    } else if v.expired {
        Err(ApiError::VoucherExpired)
    } else if v.voucher_type != purchase_type {
        Err(ApiError::VoucherWrongType(v.voucher_type.clone()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_discount_is_the_floored_percent_capped_by_the_max() {
        // 30% of 100,000 = 30,000, capped at 50,000: 30,000.
        assert_eq!(discount_on(30, Some(50_000), 100_000), 30_000);
        // 30% of 1,000,000 = 300,000, capped: 50,000.
        assert_eq!(discount_on(30, Some(50_000), 1_000_000), 50_000);
        // Floor: 30% of 33,333 = 9,999.9 -> 9,999.
        assert_eq!(discount_on(30, None, 33_333), 9_999);
        assert_eq!(discount_on(100, None, 5_000), 5_000);
        assert_eq!(discount_on(1, None, 99), 0);
        assert_eq!(discount_on(100, None, i64::MAX), i64::MAX);
    }

    fn terms(user_id: i64) -> VoucherTerms {
        VoucherTerms {
            id: 1,
            user_id,
            voucher_type: "mobile_topup".into(),
            percent: 30,
            max_amount: Some(50_000),
            expired: false,
            used: false,
        }
    }

    #[test]
    fn only_the_owners_unused_unexpired_voucher_of_the_type_is_spendable() {
        assert!(check_spendable(Some(&terms(7)), 7, "mobile_topup").is_ok());
        assert!(matches!(check_spendable(None, 7, "mobile_topup"), Err(ApiError::NotFound(_))));
        assert!(matches!(check_spendable(Some(&terms(8)), 7, "mobile_topup"), Err(ApiError::NotFound(_))));
        let used = VoucherTerms { used: true, ..terms(7) };
        assert!(matches!(check_spendable(Some(&used), 7, "mobile_topup"), Err(ApiError::VoucherUsed)));
        let expired = VoucherTerms { expired: true, ..terms(7) };
        assert!(matches!(check_spendable(Some(&expired), 7, "mobile_topup"), Err(ApiError::VoucherExpired)));
        assert!(matches!(check_spendable(Some(&terms(7)), 7, "bill"), Err(ApiError::VoucherWrongType(_))));
    }
}
