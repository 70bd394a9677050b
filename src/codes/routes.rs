//! Operator routes: POST /codes/report, and /admin/codes (create, list, read).
//! Creating a code writes Postgres, then loads the code into the Redis gate.

use actix_web::http::Method;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::model::{Code, CodeName};
use super::{report, store};
use crate::auth::AdminUser;
use crate::db::StoreError;
use crate::error::{ApiError, ErrorBody};
use crate::http::{route, Json, Query};
use crate::redemption::Gate;
use crate::startup::AppState;

/// Largest limit a code may have: its free-ticket list is rebuilt in memory.
pub const MAX_LIMIT: i64 = 10_000_000;
/// Largest credit per redemption (a trillion Toman), far from i64 overflow.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;

pub fn configure(cfg: &mut web::ServiceConfig) {
    route(cfg, Method::POST, "/codes/report", report_route);
    route(cfg, Method::POST, "/admin/codes", create_route);
    route(cfg, Method::GET, "/admin/codes", list_route);
    route(cfg, Method::GET, "/admin/codes/{code}", read_route);
    route(cfg, Method::GET, "/admin/codes/{code}/events", super::live::events_route);
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateCode {
    #[schema(example = "SPRING")]
    pub code: String,
    /// Credit per redemption, integer Toman, 1 to 10^12.
    #[schema(example = 1000000)]
    pub amount: i64,
    /// How many users may redeem it, 1 to 10,000,000.
    #[schema(example = 1000)]
    pub limit: i64,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
}

/// Validates, writes Postgres, then installs the code's gate state in Redis.
/// Shared by the admin route and the CLI.
pub async fn create_code(pg: &Pool, gate: &Gate, input: CreateCode) -> Result<Code, ApiError> {
    let name = CodeName::parse(&input.code)?;
    if !(1..=MAX_AMOUNT).contains(&input.amount) {
        return Err(ApiError::InvalidInput(format!("amount must be between 1 and {MAX_AMOUNT}")));
    }
    if !(1..=MAX_LIMIT).contains(&input.limit) {
        return Err(ApiError::InvalidInput(format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    if let (Some(s), Some(e)) = (input.starts_at, input.ends_at) {
        if s >= e {
            return Err(ApiError::InvalidInput("starts_at must be before ends_at".into()));
        }
    }
    let db = pg.get().await.map_err(StoreError::from)?;
    let new = store::NewCode {
        code: &name,
        amount: input.amount,
        limit: input.limit as i32,
        starts_at: input.starts_at,
        ends_at: input.ends_at,
    };
    let code = store::insert_code(&db, &new).await?.ok_or(ApiError::CodeExists)?;
    // A brand-new code has no redemptions: its gate state replaces any leftover.
    // If Redis is down now, the reconciler installs it later (the code answers
    // 503 until then), so the code exists either way.
    if let Err(e) = gate.install(&code.code, code.limit, 0, &[], &[], true).await {
        tracing::warn!(code = %code.code, error = %e, "code created; its gate state is left to the reconciler");
    }
    tracing::info!(code = %code.code, amount = code.amount, limit = code.limit, "code created");
    Ok(code)
}

#[derive(Deserialize, ToSchema)]
pub struct ReportRequest {
    #[schema(example = "SPRING")]
    code: String,
}

/// The live report of one code.
#[utoipa::path(post, path = "/codes/report", tag = "admin", security(("bearer" = [])),
    request_body = ReportRequest, responses(
        (status = 200, body = report::Report),
        (status = 404, description = "code_not_found", body = ErrorBody),
        (status = 401, description = "unauthorized / token_expired", body = ErrorBody),
        (status = 403, description = "forbidden: admin only", body = ErrorBody),
        (status = 400, description = "malformed_json", body = ErrorBody),
        (status = 422, description = "invalid_input", body = ErrorBody)))]
pub async fn report_route(
    state: web::Data<AppState>,
    _admin: AdminUser,
    body: Json<ReportRequest>,
) -> Result<HttpResponse, ApiError> {
    let code = find(&state, &body.code).await?;
    Ok(HttpResponse::Ok().json(report::build(&state, &code).await?))
}

pub async fn find(state: &AppState, raw: &str) -> Result<Code, ApiError> {
    let name = CodeName::parse(raw)?;
    let db = state.pg.get().await.map_err(StoreError::from)?;
    store::find_by_name(&db, name.as_str()).await?.ok_or(ApiError::CodeNotFound)
}

/// Create a credit code (and load it into the gate).
#[utoipa::path(post, path = "/admin/codes", tag = "admin", security(("bearer" = [])),
    request_body = CreateCode, responses(
        (status = 201, body = Code),
        (status = 409, description = "code_exists", body = ErrorBody),
        (status = 401, description = "unauthorized / token_expired", body = ErrorBody),
        (status = 403, description = "forbidden: admin only", body = ErrorBody),
        (status = 400, description = "malformed_json", body = ErrorBody),
        (status = 422, description = "invalid_input", body = ErrorBody)))]
pub async fn create_route(
    state: web::Data<AppState>,
    _admin: AdminUser,
    body: Json<CreateCode>,
) -> Result<HttpResponse, ApiError> {
    let code = create_code(&state.pg, &state.gate, body.into_inner()).await?;
    state.codes.invalidate(&code.code);
    Ok(HttpResponse::Created().json(code))
}

#[derive(Serialize, ToSchema)]
pub struct CodePage {
    pub items: Vec<Code>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_after: Option<i64>,
}

#[derive(Deserialize, IntoParams)]
pub struct ListQuery {
    /// Page size, 1-500 (default 100).
    limit: Option<i64>,
    /// Continue after this position (`next_after` of the previous page).
    after: Option<i64>,
}

/// Codes, oldest first.
#[utoipa::path(get, path = "/admin/codes", tag = "admin", security(("bearer" = [])),
    params(ListQuery), responses(
        (status = 200, body = CodePage),
        (status = 401, description = "unauthorized / token_expired", body = ErrorBody),
        (status = 403, description = "forbidden: admin only", body = ErrorBody),
        (status = 422, description = "invalid_input", body = ErrorBody)))]
pub async fn list_route(
    state: web::Data<AppState>,
    _admin: AdminUser,
    query: Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::InvalidInput("limit must be between 1 and 500".into()));
    }
    let db = state.pg.get().await.map_err(StoreError::from)?;
    let items = store::list_codes(&db, limit, query.after.unwrap_or(0)).await?;
    let next_after = if items.len() as i64 == limit { items.last().map(|c| c.id) } else { None };
    Ok(HttpResponse::Ok().json(CodePage { items, next_after }))
}

/// One code.
#[utoipa::path(get, path = "/admin/codes/{code}", tag = "admin", security(("bearer" = [])),
    params(("code" = String, Path, description = "the code, case-insensitive")), responses(
        (status = 200, body = Code),
        (status = 404, description = "code_not_found", body = ErrorBody),
        (status = 401, description = "unauthorized / token_expired", body = ErrorBody),
        (status = 403, description = "forbidden: admin only", body = ErrorBody),
        (status = 422, description = "invalid_input", body = ErrorBody)))]
pub async fn read_route(
    state: web::Data<AppState>,
    _admin: AdminUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let code = find(&state, &path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(code))
}
