//! The redemption path, in order: the cached code and its rules, the Redis
//! claim, the Postgres commit, then confirm — or release if the commit did not
//! happen. `through_gate` is that path for any kind of code (credit codes
//! here, vouchers and coupons in their modules); it is the only place that
//! knows both the gate and a commit.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::batcher::Row;
use super::commit::{self, Committed, PastRedemption};
use super::gate::{Claim, Release};
use super::outbox::{self, CreditSink, CreditState};
use crate::codes::cache::LocalReject;
use crate::codes::{store as codes_store, CachedCode, CodeKind, CodeName};
use crate::db::StoreError;
use crate::error::ApiError;
use crate::reconciler;
use crate::state::AppState;
use crate::telemetry::{COMMIT_DURATION, GATE_DURATION, REDEMPTIONS};

pub use super::commit::Commit;

/// The code named `name`, from the cache; 404 if it does not exist.
pub async fn lookup(state: &AppState, name: &CodeName) -> Result<Arc<CachedCode>, ApiError> {
    state.codes.get(&state.pg, name.as_str()).await?.ok_or(ApiError::CodeNotFound)
}

/// Admits `holder` (a user id, or an order for coupons) to `code` and runs
/// `commit` with the ticket it got. Any outcome but `Done` gives the ticket
/// back (or drops it, when Postgres says it is used or out of range).
pub async fn through_gate<T, F, Fut>(
    state: &Arc<AppState>,
    code: &CachedCode,
    user_id: i64,
    holder: &str,
    commit: F,
) -> Result<T, ApiError>
where
    F: Fn(i32) -> Fut,
    Fut: Future<Output = Result<Commit<T>, StoreError>>,
{
    if let Err(e) = code.code.check_redeemable(Utc::now()) {
        code.hints.count(LocalReject::NotEligible);
        return Err(e);
    }
    if code.hints.is_sold_out() {
        code.hints.count(LocalReject::SoldOut);
        return Err(ApiError::SoldOut);
    }
    state.limiter.guard_attempt(user_id).await?;
    let name = code.code.code.as_str();
    let mut settled = false;
    loop {
        let started = Instant::now();
        let claim = state.gate.claim(name, holder).await;
        metrics::histogram!(GATE_DURATION).record(started.elapsed().as_secs_f64());
        let claim = match claim {
            Ok(claim) => claim,
            Err(e) => {
                if e.is_timeout() {
                    // The claim may have run: give its slot back rather than
                    // leave it held until the grace period.
                    match state.gate.release_unanswered_claim(name, holder).await {
                        Ok(true) => tracing::info!(code = name, holder, "unanswered claim released"),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(code = name, error = %e, "unanswered claim left to the reconciler"),
                    }
                }
                code.hints.count(LocalReject::TryAgain);
                return Err(e.into());
            }
        };
        return match claim {
            Claim::Granted { ticket } => commit_or_release(state, code, holder, ticket, &commit).await,
            Claim::AlreadyClaimed => Err(ApiError::AlreadyRedeemed),
            Claim::Abandoned { ticket } if !settled => {
                settled = true;
                if settle_abandoned_claim(state, code, holder, ticket).await? {
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
            Claim::NotNow(why) => {
                code.hints.count(LocalReject::NotEligible);
                Err(why.into())
            }
            Claim::StateMissing => {
                code.hints.count(LocalReject::TryAgain);
                reconciler::rebuild::request(state, &code.code);
                Err(ApiError::TryAgain("this code is being restored, try again shortly"))
            }
        };
    }
}

async fn commit_or_release<T, F, Fut>(
    state: &AppState,
    code: &CachedCode,
    holder: &str,
    ticket: i32,
    commit: &F,
) -> Result<T, ApiError>
where
    F: Fn(i32) -> Fut,
    Fut: Future<Output = Result<Commit<T>, StoreError>>,
{
    let name = code.code.code.as_str();
    let started = Instant::now();
    let outcome = commit(ticket).await;
    metrics::histogram!(COMMIT_DURATION).record(started.elapsed().as_secs_f64());
    let (release, answer) = match outcome {
        Ok(Commit::Done(value)) => {
            // Best effort: the reconciler confirms whatever it finds committed.
            if let Err(e) = state.gate.confirm(name, &[holder]).await {
                tracing::debug!(error = %e, "confirm deferred to the reconciler");
            }
            return Ok(value);
        }
        Ok(Commit::AlreadyHeld) => (Release::KeepClaim, ApiError::AlreadyRedeemed),
        Ok(Commit::TicketTaken) => {
            tracing::warn!(code = name, ticket, "gate handed out a committed ticket");
            (Release::Discard, ApiError::TryAgain("please try again"))
        }
        // Not below Postgres's limit: given back all the same (the gate sets it
        // aside above its own limit, and a raise returns it), never dropped.
        Ok(Commit::TicketOutOfRange) => (Release::Free, ApiError::SoldOut),
        Ok(Commit::Refused(e)) => (Release::Free, e),
        Err(e) => (Release::Free, ApiError::from(e)),
    };
    match state.gate.release(name, holder, ticket, release, false).await {
        Ok(_) if release != Release::Discard && !matches!(answer, ApiError::SoldOut) => code.hints.clear_sold_out(),
        Ok(_) => {}
        // The claim stays pending; the reconciler releases it after the grace period.
        Err(e) => tracing::warn!(code = name, ticket, error = %e, "release failed; left to the reconciler"),
    }
    if matches!(answer, ApiError::TryAgain(_)) {
        code.hints.count(LocalReject::TryAgain);
    }
    Err(answer)
}

/// The holder's claim has been pending past the grace period, so no commit
/// for it can still be running (statements time out sooner). Postgres
/// decides: a row means it was committed (confirm it; true), none means its
/// gateway died first (release it; false). The reconciler does the same in bulk.
async fn settle_abandoned_claim(
    state: &AppState,
    code: &CachedCode,
    holder: &str,
    ticket: i32,
) -> Result<bool, ApiError> {
    let name = code.code.code.as_str();
    let committed = {
        let db = state.pg.get().await.map_err(StoreError::from)?;
        !codes_store::committed_holders(&db, &code.code, &[holder.to_string()]).await?.is_empty()
    };
    if committed {
        state.gate.confirm(name, &[holder]).await?;
    } else {
        state.gate.release(name, holder, ticket, Release::Free, true).await?;
        tracing::info!(code = name, holder, ticket, "abandoned claim released on the holder's retry");
    }
    Ok(committed)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Redeemed {
    pub code: String,
    pub amount: i64,
    /// The wallet's balance after the credit. Absent in the split while the
    /// credit is pending (the wallet has not answered yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance: Option<i64>,
    /// The split only (role `redemption`): `done` once the wallet applied the
    /// credit, `pending` (answered 202) while it is owed and being retried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit: Option<CreditState>,
    /// The split only: the redemption, whose credit's reference is `redemption:<id>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redemption_id: Option<i64>,
}

impl Redeemed {
    /// 202 while the credit is owed (the split, wallet unreachable), else 200.
    pub fn is_pending(&self) -> bool {
        self.credit == Some(CreditState::Pending)
    }
}

impl From<PastRedemption> for Redeemed {
    fn from(r: PastRedemption) -> Self {
        Redeemed { code: r.code, amount: r.amount, balance: r.balance, credit: None, redemption_id: None }
    }
}

/// POST /codes/use: a credit code's credit, for the first N users, once each.
/// A repeat is 409 `already_redeemed` with the user's redemption beside it.
pub async fn redeem(state: &Arc<AppState>, user_id: i64, name: &CodeName) -> Result<Redeemed, ApiError> {
    let result = redeem_credit(state, user_id, name).await;
    record_outcome(state, name, &result);
    match result {
        Err(ApiError::AlreadyRedeemed) => Err(already_redeemed(past_redemption(state, user_id, name).await)),
        other => other,
    }
}

/// The answer to POST /codes/use when memory alone gives it: a fresh cached
/// credit code, open now, that this gateway saw sold out. The same answer,
/// counts and metrics as `redeem` would give, without a task, Redis or
/// Postgres; `None` means take the full path.
pub fn sold_out_from_memory(state: &AppState, name: &CodeName) -> Option<ApiError> {
    let code = state.codes.fresh(name.as_str())?;
    if code.code.kind != CodeKind::Credit
        || code.code.check_redeemable(Utc::now()).is_err()
        || !code.hints.is_sold_out()
    {
        return None;
    }
    code.hints.count(LocalReject::SoldOut);
    let answer: Result<(), ApiError> = Err(ApiError::SoldOut);
    record_outcome(state, name, &answer);
    answer.err()
}

/// POST /codes/use under an `Idempotency-Key`. `earlier` is when the key was
/// first used, if an attempt under it ended without a final answer (a 503, or
/// its gateway died): that attempt may have committed while its gateway saw
/// an error, so Postgres (the truth) is asked first, and a redemption made
/// since the key's first use is this key's outcome: 200.
pub async fn redeem_with_key(
    state: &Arc<AppState>,
    user_id: i64,
    name: &CodeName,
    earlier: Option<DateTime<Utc>>,
) -> Result<Redeemed, ApiError> {
    let ours = |r: &PastRedemption| earlier.is_some_and(|since| r.redeemed_at >= since);
    if earlier.is_some() {
        if let Some(r) = past_redemption(state, user_id, name).await?.filter(|r| ours(r)) {
            return Ok(r.into());
        }
    }
    let result = redeem_credit(state, user_id, name).await;
    record_outcome(state, name, &result);
    match result {
        Err(ApiError::AlreadyRedeemed) => match past_redemption(state, user_id, name).await {
            Ok(Some(r)) if ours(&r) => Ok(r.into()),
            found => Err(already_redeemed(found)),
        },
        other => other,
    }
}

/// The user's committed redemption of the code, if any.
async fn past_redemption(state: &AppState, user_id: i64, name: &CodeName) -> Result<Option<PastRedemption>, ApiError> {
    let code = lookup(state, name).await?;
    let db = state.pg.get().await.map_err(StoreError::from)?;
    let found = commit::find_redemption(&db, code.code.id, user_id).await?;
    Ok(match &state.credits {
        CreditSink::InProcess => found,
        // This database holds no balances in the split: say nothing rather than 0.
        CreditSink::Wallet(_) => found.map(|r| PastRedemption { balance: None, ..r }),
    })
}

/// 409 with the redemption beside it, when Postgres has one (a claim still
/// committing has none yet: then the plain 409).
fn already_redeemed(found: Result<Option<PastRedemption>, ApiError>) -> ApiError {
    match found {
        Ok(Some(r)) => match serde_json::to_value(r) {
            Ok(v) => ApiError::AlreadyRedeemedWith(Box::new(v)),
            Err(_) => ApiError::AlreadyRedeemed,
        },
        Ok(None) => ApiError::AlreadyRedeemed,
        Err(e) => {
            tracing::debug!(error = %e, "already redeemed; the redemption could not be read");
            ApiError::AlreadyRedeemed
        }
    }
}

async fn redeem_credit(state: &Arc<AppState>, user_id: i64, name: &CodeName) -> Result<Redeemed, ApiError> {
    let code = lookup(state, name).await?;
    if code.code.kind != CodeKind::Credit {
        return Err(ApiError::NotEligible(format!(
            "this is a {} code; it is not redeemed here",
            code.code.kind.as_str()
        )));
    }
    let code_id = code.code.id;
    let name = code.code.code.clone();
    let (redemption_id, mut redeemed) = through_gate(state, &code, user_id, &user_id.to_string(), |ticket| {
        let name = name.clone();
        async move {
            let committed = match &state.credits {
                // Single process: the credit in the redemption's statement, batched with
                // the claims that queue behind in-flight commits.
                CreditSink::InProcess => state.commits.commit(Row { code_id, user_id, ticket }).await?,
                CreditSink::Wallet(client) => {
                    let db = state.pg.get().await?;
                    outbox::commit(&db, code_id, user_id, ticket, client.lease()).await?
                }
            };
            Ok(match committed {
                Committed::Credited { redemption_id, amount, balance } => {
                    let redeemed =
                        Redeemed { code: name, amount, balance: Some(balance), credit: None, redemption_id: None };
                    Commit::Done((redemption_id, redeemed))
                }
                Committed::AlreadyRedeemed => Commit::AlreadyHeld,
                Committed::TicketTaken => Commit::TicketTaken,
                Committed::TicketOutOfRange => Commit::TicketOutOfRange,
                Committed::UnknownUser => Commit::Refused(ApiError::Unauthorized("the token's user does not exist")),
                Committed::NotRedeemable(why) => Commit::Refused(why.into()),
            })
        }
    })
    .await?;
    if let CreditSink::Wallet(client) = &state.credits {
        // Committed with its outbox row: the slot is the user's whatever the
        // wallet does now; only when the money lands is still open.
        let owed = outbox::Owed {
            redemption_id,
            user_id,
            amount: redeemed.amount,
            reference: format!("redemption:{redemption_id}"),
            reason: format!("code {}", redeemed.code),
            attempts: 0,
        };
        let (credit, balance) = outbox::deliver_now(state, client, owed).await;
        redeemed.balance = balance;
        redeemed.credit = Some(credit);
        redeemed.redemption_id = Some(redemption_id);
    }
    Ok(redeemed)
}

/// Counts the outcome under the code's name if an operator marked it tracked,
/// else under `untracked` (`unknown` for names that are no code): a code's
/// name reaches the metrics only by an operator's choice, and the series
/// count is bounded by (tracked codes + 2) x 7 outcomes.
pub fn record_outcome<T>(state: &AppState, name: &CodeName, result: &Result<T, ApiError>) {
    let outcome = match result {
        Ok(_) => "success",
        Err(e @ (ApiError::SoldOut | ApiError::AlreadyRedeemed | ApiError::NotEligible(_) | ApiError::TryAgain(_))) => {
            e.code()
        }
        Err(ApiError::CodeNotFound) => "code_not_found",
        Err(_) => "error",
    };
    // Unknown codes are whatever a client typed: never a label value.
    let code = if matches!(result, Err(ApiError::CodeNotFound)) {
        "unknown".to_string()
    } else if state.codes.is_tracked(name.as_str()) {
        name.to_string()
    } else {
        "untracked".to_string()
    };
    metrics::counter!(REDEMPTIONS, "code" => code, "outcome" => outcome).increment(1);
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
