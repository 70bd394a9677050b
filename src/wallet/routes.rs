//! POST /wallet/balance and GET /wallet/transactions.

use actix_web::http::Method;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::store;
use crate::auth::{store as users, AuthUser};
use crate::db::StoreError;
use crate::error::{ApiError, ErrorBody};
use crate::http::{parse_json_or_default, route, Query};
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    route(cfg, Method::POST, "/wallet/balance", balance);
    route(cfg, Method::GET, "/wallet/transactions", transactions);
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
        (status = 200, body = BalanceResponse),
        (status = 401, description = "unauthorized / token_expired", body = ErrorBody),
        (status = 403, description = "forbidden: another user's wallet", body = ErrorBody),
        (status = 404, description = "not_found: no such user", body = ErrorBody),
        (status = 400, description = "malformed_json", body = ErrorBody),
        (status = 422, description = "invalid_input", body = ErrorBody)))]
pub async fn balance(state: web::Data<AppState>, user: AuthUser, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    // The body is optional (`{}` or nothing), but when present it must be valid.
    let request: BalanceRequest = parse_json_or_default(&body)?;
    let target = request.user_id.unwrap_or(user.user_id);
    if target != user.user_id && !user.is_admin() {
        return Err(ApiError::Forbidden("only admins may read another user's balance"));
    }
    let db = state.pg.get().await.map_err(StoreError::from)?;
    if target != user.user_id && !users::user_exists(&db, target).await? {
        return Err(ApiError::NotFound("user"));
    }
    let balance = store::balance(&db, target).await?;
    Ok(HttpResponse::Ok().json(BalanceResponse { user_id: target, balance, currency: &state.config.currency }))
}

#[derive(Deserialize, IntoParams)]
pub struct TransactionsQuery {
    /// Page size, 1-100 (default 20).
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

/// The caller's ledger, newest first.
#[utoipa::path(get, path = "/wallet/transactions", tag = "wallet", security(("bearer" = [])),
    params(TransactionsQuery), responses(
        (status = 200, body = TransactionsPage),
        (status = 401, description = "unauthorized / token_expired", body = ErrorBody),
        (status = 422, description = "invalid_input", body = ErrorBody)))]
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
