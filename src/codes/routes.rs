//! Operator routes: POST /codes/report, and /admin/codes (create, list, read).
//! Creating a code writes Postgres, then loads the code into the Redis gate.

use actix_web::http::Method;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::admin::{self, BulkCodes, ChangeCode, CreateCode};
use super::model::{Code, CodeKind, CodeName, CodeStatus};
use super::{report, store};
use crate::auth::AdminUser;
use crate::db::StoreError;
use crate::error::responses::{AdminBodyErrors, AdminErrors};
use crate::error::{ApiError, ErrorBody};
use crate::http::{route, Json, Query};
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    route(cfg, Method::POST, "/codes/report", report_route);
    route(cfg, Method::POST, "/admin/codes", create_route);
    route(cfg, Method::GET, "/admin/codes", list_route);
    // Before "/admin/codes/{code}": actix matches resources in order.
    route(cfg, Method::POST, "/admin/codes/bulk", bulk_route);
    route(cfg, Method::GET, "/admin/codes/{code}", read_route);
    route(cfg, Method::PATCH, "/admin/codes/{code}", change_route);
    route(cfg, Method::POST, "/admin/codes/{code}/pause", pause_route);
    route(cfg, Method::POST, "/admin/codes/{code}/resume", resume_route);
    route(cfg, Method::POST, "/admin/codes/{code}/end", end_route);
    route(cfg, Method::GET, "/admin/codes/{code}/events", super::live::events_route);
}

#[derive(Deserialize, ToSchema)]
pub struct ReportRequest {
    #[schema(value_type = crate::codes::CodeNameSchema)]
    code: String,
}

/// The live report of one code.
#[utoipa::path(post, path = "/codes/report", tag = "admin", security(("bearer" = [])),
    request_body = ReportRequest, responses(
        (status = 200, description = "the code's live report", body = report::Report),
        AdminBodyErrors,
        (status = 404, description = "code_not_found", body = ErrorBody)))]
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
    request_body = super::contract::CreateCodeRequest, responses(
        (status = 201, description = "the code, created and loaded into the gate", body = Code),
        AdminBodyErrors,
        (status = 409, description = "code_exists", body = ErrorBody)))]
pub async fn create_route(
    state: web::Data<AppState>,
    _admin: AdminUser,
    body: Json<CreateCode>,
) -> Result<HttpResponse, ApiError> {
    let code = admin::create_code(&state.pg, &state.gate, body.into_inner(), &state.config.default_time_zone).await?;
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
    /// Only codes of this kind.
    kind: Option<CodeKind>,
    /// Only codes with this status.
    status: Option<CodeStatus>,
    /// Page size, 1-500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// Continue after this position (`next_after` of the previous page).
    after: Option<i64>,
}

/// Codes, oldest first.
#[utoipa::path(get, path = "/admin/codes", tag = "admin", security(("bearer" = [])),
    params(ListQuery), responses(
        (status = 200, description = "one page of codes, oldest first", body = CodePage),
        AdminErrors))]
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
    let items = store::list_codes(&db, query.kind, query.status, limit, query.after.unwrap_or(0)).await?;
    let next_after = if items.len() as i64 == limit { items.last().map(|c| c.id) } else { None };
    Ok(HttpResponse::Ok().json(CodePage { items, next_after }))
}

/// One code.
#[utoipa::path(get, path = "/admin/codes/{code}", tag = "admin", security(("bearer" = [])),
    params(("code" = crate::codes::CodeNameSchema, Path, description = "the code, case-insensitive")), responses(
        (status = 200, description = "the code", body = Code),
        AdminErrors,
        (status = 404, description = "code_not_found", body = ErrorBody)))]
pub async fn read_route(
    state: web::Data<AppState>,
    _admin: AdminUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let code = find(&state, &path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(code))
}

async fn change_and_answer(state: &AppState, raw: &str, change: ChangeCode) -> Result<HttpResponse, ApiError> {
    let code = find(state, raw).await?;
    let changed = admin::change_code(&state.pg, &state.gate, &code, change).await?;
    // This gateway sees the change at once; others within CODE_CACHE_TTL_MS
    // (the gate's limit changes for all of them at once).
    state.codes.invalidate(&changed.code);
    if changed.limit > code.limit {
        if let Some(hints) = state.codes.hints_of(&changed.code) {
            hints.clear_sold_out();
        }
    }
    Ok(HttpResponse::Ok().json(changed))
}

/// Change a code: limit (up, or down to just above the highest slot in use),
/// per-user limit, window, status, rules.
#[utoipa::path(patch, path = "/admin/codes/{code}", tag = "admin", security(("bearer" = [])),
    params(("code" = crate::codes::CodeNameSchema, Path, description = "the code, case-insensitive")),
    request_body = ChangeCode, responses(
        (status = 200, description = "the code, changed", body = Code),
        AdminBodyErrors,
        (status = 404, description = "code_not_found", body = ErrorBody),
        (status = 409, description = "code_ended: a status other than `ended` asked of an ended code", body = ErrorBody),
        (status = 422, description = "invalid_input (e.g. a limit below a slot in use, or a change the code's kind does not take)", body = ErrorBody)))]
pub async fn change_route(
    state: web::Data<AppState>,
    _admin: AdminUser,
    path: web::Path<String>,
    body: Json<ChangeCode>,
) -> Result<HttpResponse, ApiError> {
    change_and_answer(&state, &path.into_inner(), body.into_inner()).await
}

fn status_change(status: CodeStatus) -> ChangeCode {
    ChangeCode { status: Some(status), ..Default::default() }
}

/// Pause a code: it refuses uses (422 not_eligible) until resumed.
#[utoipa::path(post, path = "/admin/codes/{code}/pause", tag = "admin", security(("bearer" = [])),
    params(("code" = crate::codes::CodeNameSchema, Path, description = "the code, case-insensitive")), responses(
        (status = 200, description = "the code, with its new status", body = Code),
        AdminErrors,
        (status = 404, description = "code_not_found", body = ErrorBody),
        (status = 409, description = "code_ended: an ended code stays ended", body = ErrorBody)))]
pub async fn pause_route(
    state: web::Data<AppState>,
    _admin: AdminUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    change_and_answer(&state, &path.into_inner(), status_change(CodeStatus::Paused)).await
}

/// Resume a paused code.
#[utoipa::path(post, path = "/admin/codes/{code}/resume", tag = "admin", security(("bearer" = [])),
    params(("code" = crate::codes::CodeNameSchema, Path, description = "the code, case-insensitive")), responses(
        (status = 200, description = "the code, with its new status", body = Code),
        AdminErrors,
        (status = 404, description = "code_not_found", body = ErrorBody),
        (status = 409, description = "code_ended: an ended code stays ended", body = ErrorBody)))]
pub async fn resume_route(
    state: web::Data<AppState>,
    _admin: AdminUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    change_and_answer(&state, &path.into_inner(), status_change(CodeStatus::Active)).await
}

/// End a code for good.
#[utoipa::path(post, path = "/admin/codes/{code}/end", tag = "admin", security(("bearer" = [])),
    params(("code" = crate::codes::CodeNameSchema, Path, description = "the code, case-insensitive")), responses(
        (status = 200, description = "the code, with its new status", body = Code),
        AdminErrors,
        (status = 404, description = "code_not_found", body = ErrorBody)))]
pub async fn end_route(
    state: web::Data<AppState>,
    _admin: AdminUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    change_and_answer(&state, &path.into_inner(), status_change(CodeStatus::Ended)).await
}

/// Generate K unique single-use codes for one campaign; answers a CSV file.
#[utoipa::path(post, path = "/admin/codes/bulk", tag = "admin", security(("bearer" = [])),
    request_body = super::contract::BulkCodesRequest, responses(
        (status = 201, description = "CSV: a `code` header, then one code per line", content_type = "text/csv", body = String),
        AdminBodyErrors,
        (status = 409, description = "code_exists (a generated name clashed; retry)", body = ErrorBody)))]
pub async fn bulk_route(
    state: web::Data<AppState>,
    _admin: AdminUser,
    body: Json<BulkCodes>,
) -> Result<HttpResponse, ApiError> {
    let input = body.into_inner();
    let batch = input.batch.clone().unwrap_or_else(|| input.prefix.to_ascii_uppercase());
    let names = admin::bulk_generate(&state.pg, &state.gate, input, &state.config.default_time_zone).await?;
    let mut csv = String::with_capacity(names.len() * 24 + 8);
    csv.push_str("code\n");
    for name in &names {
        csv.push_str(name);
        csv.push('\n');
    }
    let file: String = batch.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    Ok(HttpResponse::Created()
        .content_type("text/csv; charset=utf-8")
        .insert_header(("Content-Disposition", format!("attachment; filename=\"{file}.csv\"")))
        .body(csv))
}
