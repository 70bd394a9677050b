//! The report of one code: Postgres's exact figures (redeemed, credited,
//! first/last), the gate's live counters (or, if Redis lost them, the last
//! figures the reconciler synced).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::model::{Code, CodeStatus};
use super::store;
use crate::db::StoreError;
use crate::error::ApiError;
use crate::redemption::service::flush_local_rejections;
use crate::state::AppState;

/// Rejection reasons always present in a report (zero when none).
const REASONS: [&str; 4] = ["sold_out", "already_redeemed", "not_eligible", "try_again"];

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub code: String,
    pub kind: super::CodeKind,
    pub amount: i64,
    pub limit: i32,
    pub status: CodeStatus,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    /// Committed redemptions (Postgres, exact).
    pub redeemed: i64,
    /// limit - redeemed.
    pub remaining: i64,
    /// Claims taken in Redis whose commit is still in flight.
    pub pending: i64,
    /// The split (role `redemption`): committed redemptions whose credit the
    /// wallet has not applied yet (retried until it does); always 0 in the
    /// single process, which credits in the redemption's own statement.
    pub credits_pending: i64,
    /// What those owe, in all.
    pub credits_pending_amount: i64,
    /// Credit codes: money credited. Coupons: discount given on applied orders.
    pub total_credited: i64,
    pub total_discounted: i64,
    pub rejected: BTreeMap<String, i64>,
    pub first_at: Option<DateTime<Utc>>,
    pub last_at: Option<DateTime<Utc>>,
    /// "live" (read from Redis now) or "synced" (Redis unavailable: figures as of synced_at).
    pub counters: &'static str,
    pub synced_at: Option<DateTime<Utc>>,
    /// What the reconciler last wrote back to Postgres from the gate.
    pub synced: Synced,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Synced {
    pub remaining: Option<i32>,
    #[schema(value_type = Object)]
    pub rejected: serde_json::Value,
    pub at: Option<DateTime<Utc>>,
}

pub async fn build(state: &AppState, code: &Code) -> Result<Report, ApiError> {
    // This process's counts first, so the figures include them.
    flush_local_rejections(state).await;
    let db = state.pg.get().await.map_err(StoreError::from)?;
    let summary = store::redemption_summary(&db, code).await?;
    let synced = store::synced_counters(&db, code.id).await?;
    let (credits_pending, credits_pending_amount) = crate::redemption::outbox::pending_for_code(&db, code.id).await?;
    let live = match state.gate.snapshot(&code.code).await {
        Ok(snapshot) => snapshot,
        Err(e) => {
            tracing::warn!(error = %e, "report falls back to synced counters");
            None
        }
    };
    let mut rejected: BTreeMap<String, i64> = REASONS.iter().map(|r| (r.to_string(), 0)).collect();
    let (counters, pending) = match &live {
        Some(s) => {
            rejected.extend(s.rejections.iter().map(|(k, v)| (k.clone(), *v)));
            ("live", s.pending)
        }
        None => {
            if let Some(map) = synced.rejections.as_object() {
                rejected.extend(map.iter().filter_map(|(k, v)| v.as_i64().map(|v| (k.clone(), v))));
            }
            ("synced", 0)
        }
    };
    Ok(Report {
        code: code.code.clone(),
        kind: code.kind,
        amount: code.amount,
        limit: code.limit,
        status: code.status,
        starts_at: code.starts_at,
        ends_at: code.ends_at,
        redeemed: summary.redeemed,
        remaining: (i64::from(code.limit) - summary.redeemed).max(0),
        pending,
        credits_pending,
        credits_pending_amount,
        total_credited: summary.total_credited,
        total_discounted: summary.total_discounted,
        rejected,
        first_at: summary.first_at,
        last_at: summary.last_at,
        counters,
        synced_at: synced.synced_at,
        synced: Synced { remaining: synced.remaining, rejected: synced.rejections, at: synced.synced_at },
    })
}
