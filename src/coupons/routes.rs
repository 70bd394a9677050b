//! POST /coupons/quote, POST /coupons/redeem, POST /coupons/redemptions/{id}/cancel.
//! A checkout passes the order; the coupon's rules decide eligibility and the
//! discount; a use goes through the same gate as every other reward, with the
//! order as the holder, so one order consumes at most one use.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::Method;
use actix_web::{web, HttpResponse};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::store::{self, Cancelled, CouponUse, NewUse};
use super::{quote, Context, Order, Quote};
use crate::auth::AuthUser;
use crate::codes::{CachedCode, CodeKind, CodeName};
use crate::db::StoreError;
use crate::error::{ApiError, ErrorBody};
use crate::http::{route, Json};
use crate::ratelimit::ClientAddr;
use crate::redemption::gate::Release;
use crate::redemption::service::{lookup, record_outcome, through_gate};
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    route(cfg, Method::POST, "/coupons/quote", quote_route);
    route(cfg, Method::POST, "/coupons/redeem", redeem_route);
    route(cfg, Method::POST, "/coupons/redemptions/{id}/cancel", cancel_route);
}

#[derive(Deserialize, ToSchema)]
pub struct CouponRequest {
    #[schema(example = "WEEKEND10")]
    code: String,
    order: Order,
}

/// Size limits on a checkout's order (the rules judge the rest).
fn check_order(order: &Order) -> Result<(), ApiError> {
    let short = |s: &str| !s.is_empty() && s.len() <= 64;
    if !short(&order.number) || !short(&order.payment_method) {
        return Err(ApiError::InvalidInput("order number and payment method must be 1-64 characters".into()));
    }
    if order.lines.is_empty() || order.lines.len() > 500 {
        return Err(ApiError::InvalidInput("an order has 1-500 lines".into()));
    }
    if order.lines.iter().any(|l| !short(&l.sku) || !short(&l.category)) {
        return Err(ApiError::InvalidInput("sku and category must be 1-64 characters".into()));
    }
    Ok(())
}

/// The coupon a checkout names, with code guessing limited: a code this
/// gateway has never seen costs a peek at the caller's guessing budgets
/// before the database is asked, and an unknown one takes a guess from them.
async fn guarded_coupon(
    state: &AppState,
    user_id: i64,
    addr: &ClientAddr,
    raw: &str,
) -> Result<Arc<CachedCode>, ApiError> {
    let name = CodeName::parse(raw)?;
    if !state.codes.has_entry(name.as_str()) {
        state.limiter.guard_unknown_lookup(user_id, addr).await?;
    }
    let found = coupon(state, name.as_str()).await;
    if matches!(found, Err(ApiError::CodeNotFound)) {
        state.limiter.charge_unknown_code(user_id, addr).await?;
    }
    found
}

async fn coupon(state: &AppState, raw: &str) -> Result<Arc<CachedCode>, ApiError> {
    let code = lookup(state, &CodeName::parse(raw)?).await?;
    if code.code.kind != CodeKind::Coupon {
        return Err(ApiError::CodeNotFound);
    }
    Ok(code)
}

#[derive(Serialize, ToSchema)]
pub struct QuoteResponse {
    pub code: String,
    #[serde(flatten)]
    pub quote: Quote,
    /// Set when the code itself cannot be used now (paused, ended, outside its window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_active: Option<String>,
}

fn quote_for(state: &AppState, code: &CachedCode, user_id: i64, order: &Order) -> Result<QuoteResponse, ApiError> {
    let rules = code.code.coupon_rules()?;
    let reward = code.code.coupon_reward()?;
    let ctx = Context { user_id, order, now: Utc::now(), tz: code.code.tz(), weekend: &state.config.weekend };
    let mut q = quote(&rules, &reward, &ctx);
    let not_active = code.code.check_redeemable(Utc::now()).err().map(|e| e.to_string());
    if not_active.is_some() {
        q.eligible = false;
        q.discount = 0;
        q.new_total = q.order_total;
    }
    Ok(QuoteResponse { code: code.code.code.clone(), quote: q, not_active })
}

/// Is the coupon eligible for this order, what is the discount, and why not.
/// Consumes nothing.
#[utoipa::path(post, path = "/coupons/quote", tag = "coupons", security(("bearer" = [])),
    request_body = CouponRequest, responses(
        (status = 200, body = QuoteResponse),
        (status = 404, description = "code_not_found", body = ErrorBody),
        (status = 401, description = "unauthorized / token_expired", body = ErrorBody),
        (status = 400, description = "malformed_json", body = ErrorBody),
        (status = 422, description = "invalid_input", body = ErrorBody),
    (status = 429, description = "rate_limited (see Retry-After)", body = ErrorBody)))]
pub async fn quote_route(
    state: web::Data<AppState>,
    user: AuthUser,
    addr: ClientAddr,
    body: Json<CouponRequest>,
) -> Result<HttpResponse, ApiError> {
    let CouponRequest { code, order } = body.into_inner();
    check_order(&order)?;
    let code = guarded_coupon(&state, user.user_id, &addr, &code).await?;
    Ok(HttpResponse::Ok().json(quote_for(&state, &code, user.user_id, &order)?))
}

/// Consume one use for this order and record its discount. Idempotent per
/// (code, order number): a retry returns the same result (`replayed: true`)
/// and consumes nothing more.
#[utoipa::path(post, path = "/coupons/redeem", tag = "coupons", security(("bearer" = [])),
    request_body = CouponRequest, responses(
        (status = 200, body = CouponUse),
        (status = 404, description = "code_not_found", body = ErrorBody),
        (status = 409, description = "per_user_limit: used up; already_redeemed: the order belongs to someone else", body = ErrorBody),
        (status = 410, description = "sold_out", body = ErrorBody),
        (status = 422, description = "not_eligible (the reasons are in the message) / invalid_input", body = ErrorBody),
        (status = 503, description = "try_again", body = ErrorBody),
        (status = 401, description = "unauthorized / token_expired", body = ErrorBody),
        (status = 400, description = "malformed_json", body = ErrorBody),
    (status = 429, description = "rate_limited (see Retry-After)", body = ErrorBody)))]
pub async fn redeem_route(
    state: web::Data<AppState>,
    user: AuthUser,
    addr: ClientAddr,
    body: Json<CouponRequest>,
) -> Result<HttpResponse, ApiError> {
    let CouponRequest { code, order } = body.into_inner();
    check_order(&order)?;
    let name = CodeName::parse(&code)?;
    guarded_coupon(&state, user.user_id, &addr, name.as_str()).await?;
    let state = state.into_inner();
    // Detached: a client hanging up must not cut the gate path in half.
    let result = actix_web::rt::spawn(async move {
        let result = redeem(&state, user.user_id, &name, order).await;
        record_outcome(&state, &name, &result);
        result
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(HttpResponse::Ok().json(result))
}

async fn redeem(state: &Arc<AppState>, user_id: i64, name: &CodeName, order: Order) -> Result<CouponUse, ApiError> {
    let code = coupon(state, name.as_str()).await?;
    if let Some(done) = recorded_use(state, &code, &order.number).await? {
        return replay(done, user_id);
    }
    let q = quote_for(state, &code, user_id, &order)?;
    if let Some(why) = q.not_active {
        return Err(ApiError::NotEligible(why));
    }
    if !q.quote.eligible {
        let reasons: Vec<&str> = q.quote.reasons.iter().map(|r| r.code()).collect();
        return Err(ApiError::NotEligible(format!("not eligible: {}", reasons.join(", "))));
    }
    let holder = format!("order:{}", order.number);
    let (code_id, code_name) = (code.code.id, code.code.code.clone());
    let (order_total, discount) = (q.quote.order_total, q.quote.discount);
    let result = through_gate(state, &code, user_id, &holder, |ticket| {
        let (code_name, number) = (code_name.clone(), order.number.clone());
        async move {
            let db = state.pg.get().await?;
            let new =
                NewUse { code_id, code: &code_name, user_id, order_number: &number, ticket, order_total, discount };
            store::record_use(&db, &new).await
        }
    })
    .await;
    match result {
        // The order's holder is claimed: another request for it is in flight
        // or done. Wait for its row and answer the same.
        Err(ApiError::AlreadyRedeemed) => match wait_for_use(state, &code, &order.number).await? {
            Some(done) => replay(done, user_id),
            None => Err(ApiError::AlreadyRedeemed),
        },
        other => other,
    }
}

fn replay(done: CouponUse, user_id: i64) -> Result<CouponUse, ApiError> {
    if done.user_id == user_id {
        Ok(done)
    } else {
        Err(ApiError::AlreadyRedeemed)
    }
}

async fn recorded_use(state: &AppState, code: &CachedCode, number: &str) -> Result<Option<CouponUse>, ApiError> {
    let db = state.pg.get().await.map_err(StoreError::from)?;
    Ok(store::find_use(&db, code.code.id, number).await?)
}

/// Polls for the order's use while a concurrent request commits it (bounded
/// by the statement timeout, so never longer than a commit can take).
async fn wait_for_use(state: &AppState, code: &CachedCode, number: &str) -> Result<Option<CouponUse>, ApiError> {
    let deadline = tokio::time::Instant::now() + state.config.pg_statement_timeout + Duration::from_secs(1);
    loop {
        if let Some(done) = recorded_use(state, code, number).await? {
            return Ok(Some(done));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::TryAgain("this order's coupon is still being applied"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[derive(Serialize, ToSchema)]
pub struct CancelResponse {
    pub redemption_id: i64,
    pub status: &'static str,
}

/// The order was cancelled: the coupon's use goes back (the slot is
/// redeemable again), exactly once. The order's owner or an admin may cancel.
#[utoipa::path(post, path = "/coupons/redemptions/{id}/cancel", tag = "coupons", security(("bearer" = [])),
    params(("id" = i64, Path, description = "redemption_id from /coupons/redeem")), responses(
        (status = 200, body = CancelResponse),
        (status = 409, description = "already_cancelled", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
        (status = 401, description = "unauthorized / token_expired", body = ErrorBody),
        (status = 422, description = "invalid_input", body = ErrorBody)))]
pub async fn cancel_route(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let db = state.pg.get().await.map_err(StoreError::from)?;
    // Someone else's redemption is answered as if it did not exist.
    match store::owner_of(&db, id).await? {
        Some(owner) if owner == user.user_id || user.is_admin() => {}
        _ => return Err(ApiError::NotFound("coupon redemption")),
    }
    let (code, order_number, ticket, first) = match store::cancel(&db, id).await? {
        Cancelled::NotFound => return Err(ApiError::NotFound("coupon redemption")),
        Cancelled::Now { code, order_number, ticket, .. } => (code, order_number, ticket, true),
        Cancelled::Already { code, order_number, ticket, .. } => (code, order_number, ticket, false),
    };
    // Give the ticket back. Compare-and-release: only the claim this order
    // holds on this ticket, so a repeat (or a retry after a failed release)
    // can never return it twice.
    let holder = format!("order:{order_number}");
    state.gate.release(&code, &holder, ticket, Release::Free, false).await?;
    if let Some(hints) = state.codes.hints_of(&code) {
        hints.clear_sold_out();
    }
    if first {
        tracing::info!(code, order_number, ticket, "coupon use cancelled");
        Ok(HttpResponse::Ok().json(CancelResponse { redemption_id: id, status: "cancelled" }))
    } else {
        Err(ApiError::AlreadyCancelled)
    }
}
