//! POST /coupons/quote (a user), POST /coupons/redeem and POST
//! /coupons/redemptions/{id}/cancel (the checkout service, naming the user).
//! Prices, lines and the payment method of a redeemed order come from the
//! checkout, never from the phone; the logic is in `service`.

use actix_web::http::Method;
use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use tracing::Instrument;
use utoipa::ToSchema;

use super::service::{self, CancelResponse, QuoteResponse};
use super::store::CouponUse;
use super::Order;
use crate::auth::{scope, AuthUser, ServiceCaller};
use crate::codes::CodeName;
use crate::error::responses::{ServiceBodyErrors, ServiceErrors, UserBodyErrors};
use crate::error::{ApiError, ErrorBody};
use crate::http::{route, Json};
use crate::idempotency::{self, IdempotencyKey};
use crate::ratelimit::ClientAddr;
use crate::redemption::service::record_outcome;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    route(cfg, Method::POST, "/coupons/quote", quote_route);
    route(cfg, Method::POST, "/coupons/redeem", redeem_route);
    route(cfg, Method::POST, "/coupons/redemptions/{id}/cancel", cancel_route);
}

#[derive(Deserialize, ToSchema)]
pub struct CouponRequest {
    #[schema(value_type = crate::codes::CodeNameSchema)]
    code: String,
    order: Order,
}

/// A checkout's redeem: the coupon, the user it acts for, and the order as
/// the checkout priced it.
#[derive(Deserialize, ToSchema)]
pub struct RedeemRequest {
    #[schema(value_type = crate::codes::CodeNameSchema)]
    code: String,
    /// The user who places the order.
    #[schema(example = 42, minimum = 1)]
    user_id: i64,
    order: Order,
}

/// Is the coupon eligible for this order, what is the discount, and why not.
/// Consumes nothing.
#[utoipa::path(post, path = "/coupons/quote", tag = "coupons", security(("bearer" = [])),
    request_body = CouponRequest, responses(
        (status = 200, description = "the verdict: eligibility, every failing rule, the discount and the new total", body = QuoteResponse),
        UserBodyErrors,
        (status = 404, description = "code_not_found", body = ErrorBody)))]
pub async fn quote_route(
    state: web::Data<AppState>,
    user: AuthUser,
    addr: ClientAddr,
    body: Json<CouponRequest>,
) -> Result<HttpResponse, ApiError> {
    let CouponRequest { code, order } = body.into_inner();
    service::check_order(&order)?;
    let code = service::guarded_coupon(&state, user.user_id, &addr, &code).await?;
    Ok(HttpResponse::Ok().json(service::quote_for(&state, &code, user.user_id, &order)?))
}

/// Consume one use for this user's order and record its discount.
/// Idempotent per (code, order number): a retry returns the same result
/// (`replayed: true`) and consumes nothing more. An order number recorded
/// for another user is refused, for good.
///
/// An `Idempotency-Key` (kept 24 h per user, bound to this body) also
/// replays refusals, and refuses the key with another body (422
/// `idempotency_key_reused`).
#[utoipa::path(post, path = "/coupons/redeem", tag = "coupons", security(("service" = ["coupons:redeem"])),
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[\\x21-\\x7E]{1,255}$",
        description = "1-255 visible ASCII characters (e.g. a UUID); kept 24 h per user")),
    request_body = RedeemRequest, responses(
        (status = 200, description = "the use, recorded (or replayed: `replayed: true`)", body = CouponUse,
            headers(("Idempotent-Replayed" = String, description = "`true` when replayed from the key's kept answer"))),
        ServiceBodyErrors,
        (status = 400, description = "malformed_json / invalid_idempotency_key", body = ErrorBody),
        (status = 404, description = "code_not_found", body = ErrorBody),
        (status = 409, description = "per_user_limit: the user used it up; order_belongs_to_another_user: the order number is recorded for someone else; \
            idempotency_in_progress: a request with this key is running", body = ErrorBody),
        (status = 410, description = "sold_out", body = ErrorBody),
        (status = 422, description = "not_eligible (the reasons are in the message) / invalid_input / user_disabled / idempotency_key_reused", body = ErrorBody)))]
pub async fn redeem_route(
    state: web::Data<AppState>,
    _caller: ServiceCaller<scope::CouponsRedeem>,
    req: HttpRequest,
    body: Json<RedeemRequest>,
) -> Result<HttpResponse, ApiError> {
    let key = IdempotencyKey::from_request(&req)?;
    let RedeemRequest { code, user_id, order } = body.into_inner();
    if user_id <= 0 {
        return Err(ApiError::InvalidInput("user_id must be a positive user id".into()));
    }
    service::check_order(&order)?;
    let name = CodeName::parse(&code)?;
    let state = state.into_inner();
    let Some(key) = key else {
        return Ok(HttpResponse::Ok().json(detached_redeem(&state, user_id, name, order).await?));
    };
    let request = serde_json::json!({ "code": name.as_str(), "user_id": user_id, "order": &order });
    let fingerprint = idempotency::fingerprint("POST /coupons/redeem", &request);
    // A use is already idempotent per (code, order) and read back from
    // Postgres on a retry, so every attempt under the key runs the same way.
    idempotency::run(&state, user_id, &key, &fingerprint, |_| detached_redeem(&state, user_id, name, order)).await
}

/// Detached: a client hanging up must not cut the gate path in half.
async fn detached_redeem(
    state: &Arc<AppState>,
    user_id: i64,
    name: CodeName,
    order: Order,
) -> Result<CouponUse, ApiError> {
    let state = state.clone();
    let work = async move {
        let result = service::redeem(&state, user_id, &name, order).await;
        record_outcome(&state, &name, &result);
        result
    };
    actix_web::rt::spawn(work.instrument(tracing::Span::current())).await.map_err(ApiError::internal)?
}

/// The order was cancelled: the coupon's use goes back (the slot is
/// redeemable again), exactly once.
#[utoipa::path(post, path = "/coupons/redemptions/{id}/cancel", tag = "coupons", security(("service" = ["coupons:cancel"])),
    params(("id" = i64, Path, description = "redemption_id from /coupons/redeem")), responses(
        (status = 200, description = "cancelled: the use and its slot are given back", body = CancelResponse),
        ServiceErrors,
        (status = 404, description = "not_found", body = ErrorBody),
        (status = 409, description = "already_cancelled", body = ErrorBody)))]
pub async fn cancel_route(
    state: web::Data<AppState>,
    _caller: ServiceCaller<scope::CouponsCancel>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(service::cancel(&state, path.into_inner()).await?))
}
