//! POST /codes/use, in order: the cached code and its rules, the Redis claim,
//! the Postgres commit, then confirm — or release if the commit did not happen.
//! The only place that knows both the gate and the commit.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use serde::Serialize;

use super::commit::{self, Committed};
use super::gate::{Claim, Release};
use crate::codes::cache::LocalReject;
use crate::codes::{store as codes_store, CachedCode, CodeName};
use crate::db::StoreError;
use crate::error::ApiError;
use crate::reconciler;
use crate::startup::AppState;
use crate::telemetry::{COMMIT_DURATION, GATE_DURATION, REDEMPTIONS};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Redeemed {
    pub code: String,
    pub amount: i64,
    pub balance: i64,
}

pub async fn redeem(state: &Arc<AppState>, user_id: i64, name: &CodeName) -> Result<Redeemed, ApiError> {
    let result = redeem_once(state, user_id, name).await;
    record_outcome(name, &result);
    result
}

fn record_outcome(name: &CodeName, result: &Result<Redeemed, ApiError>) {
    let outcome = match result {
        Ok(_) => "success",
        Err(e @ (ApiError::SoldOut | ApiError::AlreadyRedeemed | ApiError::NotEligible(_) | ApiError::TryAgain(_))) => {
            e.code()
        }
        Err(ApiError::CodeNotFound) => "code_not_found",
        Err(_) => "error",
    };
    // Unknown codes are whatever a client typed: never a label value.
    let code = if matches!(result, Err(ApiError::CodeNotFound)) { "unknown".to_string() } else { name.to_string() };
    metrics::counter!(REDEMPTIONS, "code" => code, "outcome" => outcome).increment(1);
}

async fn redeem_once(state: &Arc<AppState>, user_id: i64, name: &CodeName) -> Result<Redeemed, ApiError> {
    let code = state.codes.get(&state.pg, name.as_str()).await?.ok_or(ApiError::CodeNotFound)?;
    if let Err(e) = code.code.check_redeemable(Utc::now()) {
        code.hints.count(LocalReject::NotEligible);
        return Err(e);
    }
    if code.hints.is_sold_out() {
        code.hints.count(LocalReject::SoldOut);
        return Err(ApiError::SoldOut);
    }
    let mut settled = false;
    loop {
        let started = Instant::now();
        let claim = state.gate.claim(name.as_str(), user_id).await;
        metrics::histogram!(GATE_DURATION).record(started.elapsed().as_secs_f64());
        return match claim? {
            Claim::Granted { ticket } => commit_claim(state, &code, user_id, ticket).await,
            Claim::AlreadyClaimed => Err(ApiError::AlreadyRedeemed),
            Claim::Abandoned { ticket } if !settled => {
                settled = true;
                if settle_abandoned_claim(state, &code, user_id, ticket).await? {
                    Err(ApiError::AlreadyRedeemed)
                } else {
                    continue; // released: claim afresh, once
                }
            }
            Claim::Abandoned { .. } => Err(ApiError::TryAgain("please try again")),
            Claim::SoldOut => {
                code.hints.mark_sold_out(state.config.sold_out_cache_ttl);
                Err(ApiError::SoldOut)
            }
            Claim::StateMissing => {
                code.hints.count(LocalReject::TryAgain);
                reconciler::rebuild::request(state, &code.code);
                Err(ApiError::TryAgain("this code is being restored, try again shortly"))
            }
        };
    }
}

/// The user's claim has been pending past the grace period, so no commit for
/// it can still be running (statements time out sooner). Postgres decides:
/// a row means it was committed (confirm it; true), none means its gateway
/// died first (release it; false). The reconciler does the same in bulk.
async fn settle_abandoned_claim(
    state: &AppState,
    code: &CachedCode,
    user_id: i64,
    ticket: i32,
) -> Result<bool, ApiError> {
    let name = code.code.code.as_str();
    let committed = {
        let db = state.pg.get().await.map_err(StoreError::from)?;
        !codes_store::users_with_redemption(&db, code.code.id, &[user_id]).await?.is_empty()
    };
    if committed {
        state.gate.confirm(name, &[user_id]).await?;
    } else {
        state.gate.release(name, user_id, ticket, Release::Free, true).await?;
        tracing::info!(code = name, user_id, ticket, "abandoned claim released on the user's retry");
    }
    Ok(committed)
}

async fn commit_claim(
    state: &Arc<AppState>,
    code: &CachedCode,
    user_id: i64,
    ticket: i32,
) -> Result<Redeemed, ApiError> {
    let name = code.code.code.as_str();
    let started = Instant::now();
    let outcome = match state.pg.get().await {
        Ok(db) => commit::commit(&db, code.code.id, user_id, ticket).await,
        Err(e) => Err(StoreError::from(e)),
    };
    metrics::histogram!(COMMIT_DURATION).record(started.elapsed().as_secs_f64());
    let (release, answer) = match outcome {
        Ok(Committed::Credited { amount, balance, .. }) => {
            // Best effort: the reconciler confirms whatever it finds committed.
            if let Err(e) = state.gate.confirm(name, &[user_id]).await {
                tracing::debug!(error = %e, "confirm deferred to the reconciler");
            }
            return Ok(Redeemed { code: code.code.code.clone(), amount, balance });
        }
        Ok(Committed::AlreadyRedeemed) => (Release::KeepClaim, ApiError::AlreadyRedeemed),
        Ok(Committed::TicketTaken) => {
            tracing::warn!(code = name, ticket, "gate handed out a committed ticket; state will be rebuilt");
            (Release::Discard, ApiError::TryAgain("please try again"))
        }
        Ok(Committed::TicketOutOfRange) => (Release::Discard, ApiError::SoldOut),
        Ok(Committed::UnknownUser) => (Release::Free, ApiError::Unauthorized("the token's user does not exist")),
        Err(e) => (Release::Free, ApiError::from(e)),
    };
    match state.gate.release(name, user_id, ticket, release, false).await {
        Ok(_) if release != Release::Discard => code.hints.clear_sold_out(),
        Ok(_) => {}
        // The claim stays pending; the reconciler releases it after the grace period.
        Err(e) => tracing::warn!(code = name, ticket, error = %e, "release failed; left to the reconciler"),
    }
    if matches!(answer, ApiError::TryAgain(_)) {
        code.hints.count(LocalReject::TryAgain);
    }
    Err(answer)
}

/// Moves the rejection counts this process kept in memory into Redis's stats.
/// Counts that fail to reach Redis are kept for the next flush.
pub async fn flush_local_rejections(state: &AppState) {
    // One flush at a time, so a report that flushes first sees every count.
    let _guard = state.flushing.lock().await;
    for code in state.codes.known() {
        let counts = code.hints.take_counts();
        if counts.is_empty() {
            continue;
        }
        let named: Vec<(&str, u64)> = counts.iter().map(|(r, n)| (r.as_str(), *n)).collect();
        if let Err(e) = state.gate.add_rejections(&code.code.code, &named).await {
            tracing::debug!(error = %e, "rejection counts kept for the next flush");
            code.hints.restore_counts(&counts);
        }
    }
}
