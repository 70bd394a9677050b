//! POST /wallet/balance and GET /wallet/transactions (users), POST
//! /wallet/credits and POST /wallet/debits (services).

use actix_web::http::Method;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::service::{self, Movement, MovementDone, VoucherUse};
use super::store;
use crate::auth::{scope, store as users, AuthUser, ServiceCaller};
use crate::db::StoreError;
use crate::error::responses::{ServiceBodyErrors, UserBodyErrors, UserErrors};
use crate::error::{ApiError, ErrorBody};
use crate::http::{parse_json_or_default, route, Json, Query};
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    route(cfg, Method::POST, "/wallet/balance", balance);
    route(cfg, Method::GET, "/wallet/transactions", transactions);
    route(cfg, Method::POST, "/wallet/credits", credit);
    route(cfg, Method::POST, "/wallet/debits", debit);
}

#[derive(Deserialize, Default, ToSchema)]
pub struct BalanceRequest {
    /// Admins may ask for another user's balance; others may only name themselves.
    user_id: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct BalanceResponse<'a> {
    user_id: i64,
    balance: i64,
    currency: &'a str,
}

/// The caller's balance (admins may name another user).
#[utoipa::path(post, path = "/wallet/balance", tag = "wallet", security(("bearer" = [])),
    request_body(content = Option<BalanceRequest>, description = "`{}` or empty for your own wallet"),
    responses(
        (status = 200, description = "the balance", body = BalanceResponse),
        UserBodyErrors,
        (status = 403, description = "forbidden: another user's wallet, or a token of another caller kind", body = ErrorBody),
        (status = 404, description = "not_found: no such user", body = ErrorBody)))]
pub async fn balance(state: web::Data<AppState>, user: AuthUser, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    // The body is optional (`{}` or nothing), but when present it must be valid.
    let request: BalanceRequest = parse_json_or_default(&body)?;
    let target = request.user_id.unwrap_or(user.user_id);
    if target != user.user_id && !user.is_admin() {
        return Err(ApiError::Forbidden("only admins may read another user's balance"));
    }
    if target != user.user_id {
        // An admin naming someone else: 404 for no such user.
        let db = state.pg.get().await.map_err(StoreError::from)?;
        if !users::user_exists(&db, target).await? {
            return Err(ApiError::NotFound("user"));
        }
    }
    // Shares a statement with other requests queued behind the reads in
    // flight, never one already sent: as fresh as a query of its own (see
    // wallet::reader).
    let balance = state.balances.read(target).await?;
    Ok(HttpResponse::Ok().json(BalanceResponse { user_id: target, balance, currency: &state.config.currency }))
}

#[derive(Deserialize, IntoParams)]
pub struct TransactionsQuery {
    /// Page size, 1-100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// Continue below this ledger id (from the previous page's `next_before`).
    before: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct TransactionsPage {
    items: Vec<store::LedgerEntry>,
    /// Pass as `before` to get the next page; null on the last page.
    next_before: Option<i64>,
}

/// The caller's ledger, newest first: credits (positive) and debits (negative).
#[utoipa::path(get, path = "/wallet/transactions", tag = "wallet", security(("bearer" = [])),
    params(TransactionsQuery), responses(
        (status = 200, description = "one page of the ledger, newest first", body = TransactionsPage),
        UserErrors))]
pub async fn transactions(
    state: web::Data<AppState>,
    user: AuthUser,
    query: Query<TransactionsQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::InvalidInput("limit must be between 1 and 100".into()));
    }
    let db = state.pg.get().await.map_err(StoreError::from)?;
    let items = store::transactions(&db, user.user_id, query.before, limit).await?;
    let next_before = if items.len() as i64 == limit { items.last().map(|e| e.id) } else { None };
    Ok(HttpResponse::Ok().json(TransactionsPage { items, next_before }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditRequest {
    /// The user whose wallet is credited.
    #[schema(example = 42, minimum = 1)]
    user_id: i64,
    /// Whole units of the wallet's currency, 1 to 10^12.
    #[schema(example = 250000, minimum = 1, maximum = 1000000000000.0)]
    amount: i64,
    /// The caller's id for this movement, unique per service: a retry with
    /// the same reference is answered with the first movement. 1-100
    /// characters of `A-Z a-z 0-9 . _ : -`.
    #[schema(example = "refund-ORD-1001", min_length = 1, max_length = 100, pattern = "^[A-Za-z0-9._:-]{1,100}$")]
    reference: String,
    /// Shown in the user's history. 1-200 characters, not only white
    /// space, no control character.
    #[schema(value_type = crate::text::MovementReason, example = "refund of order ORD-1001")]
    reason: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DebitRequest {
    /// The user whose wallet pays.
    #[schema(example = 42, minimum = 1)]
    user_id: i64,
    /// The purchase's price: whole units, 1 to 10^12. With a voucher the
    /// wallet pays `amount - min(percent x amount, max_amount)` (floored).
    #[schema(example = 100000, minimum = 1, maximum = 1000000000000.0)]
    amount: i64,
    /// As for credits: unique per service, a retry replays the first answer.
    #[schema(example = "topup-T-88", min_length = 1, max_length = 100, pattern = "^[A-Za-z0-9._:-]{1,100}$")]
    reference: String,
    /// As for credits: 1-200 characters, not only white space, no control character.
    #[schema(value_type = crate::text::MovementReason, example = "mobile top-up 0912...")]
    reason: String,
    /// A voucher of this user to spend on the purchase (needs `purchase_type`).
    #[schema(example = 17, minimum = 1)]
    voucher_id: Option<i64>,
    /// What is bought, e.g. `mobile_topup`; the voucher must be of this type.
    #[schema(example = "mobile_topup", min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_]{1,64}$")]
    purchase_type: Option<String>,
}

/// States in the spec that a debit's `voucher_id` and `purchase_type` come
/// together or not at all (what `debit` below refuses otherwise), as JSON
/// Schema 2020-12's `dependentRequired`: utoipa's derive has no attribute
/// for it, so it is added to the generated schema here.
pub struct VoucherPair;

impl utoipa::Modify for VoucherPair {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::Schema;
        use utoipa::openapi::RefOr;
        let Some(components) = openapi.components.as_mut() else { return };
        let Some(RefOr::T(Schema::Object(debit))) = components.schemas.get_mut("DebitRequest") else { return };
        let pair = serde_json::json!({ "voucher_id": ["purchase_type"], "purchase_type": ["voucher_id"] });
        debit.extensions.get_or_insert_with(Default::default).insert("dependentRequired".into(), pair);
    }
}

/// Credit a user's wallet, exactly once per reference. A retry (same
/// reference, user and amount) returns the first entry with `replayed: true`.
#[utoipa::path(post, path = "/wallet/credits", tag = "wallet", security(("service" = ["wallet:credit"])),
    request_body = CreditRequest, responses(
        (status = 200, description = "the entry (or the first one, replayed)", body = MovementDone),
        ServiceBodyErrors,
        (status = 404, description = "not_found: no such user", body = ErrorBody),
        (status = 409, description = "reference_conflict: the reference was used for another movement", body = ErrorBody),
        (status = 422, description = "invalid_input / user_disabled", body = ErrorBody)))]
pub async fn credit(
    state: web::Data<AppState>,
    caller: ServiceCaller<scope::WalletCredit>,
    body: Json<CreditRequest>,
) -> Result<HttpResponse, ApiError> {
    let CreditRequest { user_id, amount, reference, reason } = body.into_inner();
    let movement = Movement::parse(user_id, amount, reference, reason, None)?;
    let done: MovementDone = service::credit(&state, &caller.name, movement).await?;
    Ok(HttpResponse::Ok().json(done))
}

/// Debit a user's wallet (a purchase paid from it), exactly once per
/// reference, never below a zero balance. With `voucher_id` and
/// `purchase_type` it is a top-up paid partly by the voucher: the voucher
/// must be the user's, unexpired, unused and of that type, and it is spent
/// in the same transaction as the debit.
#[utoipa::path(post, path = "/wallet/debits", tag = "wallet", security(("service" = ["wallet:debit"])),
    request_body = DebitRequest, responses(
        (status = 200, description = "the entry (or the first one, replayed)", body = MovementDone),
        ServiceBodyErrors,
        (status = 404, description = "not_found: no such user, or no such voucher of this user", body = ErrorBody),
        (status = 409, description = "insufficient_funds (nothing written) / reference_conflict / voucher_used", body = ErrorBody),
        (status = 422, description = "invalid_input / voucher_expired / voucher_wrong_type / user_disabled", body = ErrorBody)))]
pub async fn debit(
    state: web::Data<AppState>,
    caller: ServiceCaller<scope::WalletDebit>,
    body: Json<DebitRequest>,
) -> Result<HttpResponse, ApiError> {
    let DebitRequest { user_id, amount, reference, reason, voucher_id, purchase_type } = body.into_inner();
    let voucher = match (voucher_id, purchase_type) {
        (Some(voucher_id), Some(purchase_type)) => Some(VoucherUse { voucher_id, purchase_type }),
        (None, None) => None,
        (Some(_), None) => return Err(ApiError::InvalidInput("a voucher needs the purchase_type it pays for".into())),
        (None, Some(_)) => return Err(ApiError::InvalidInput("purchase_type is only used with a voucher_id".into())),
    };
    let movement = Movement::parse(user_id, amount, reference, reason, voucher)?;
    Ok(HttpResponse::Ok().json(service::debit(&state, &caller.name, movement).await?))
}
