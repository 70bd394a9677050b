//! POST /codes/use.

use actix_web::http::Method;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use tracing::Instrument;
use utoipa::ToSchema;

use super::service;
use crate::auth::AuthUser;
use crate::codes::CodeName;
use crate::error::{ApiError, ErrorBody};
use crate::http::{route, Json};
use crate::ratelimit::ClientAddr;
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    route(cfg, Method::POST, "/codes/use", use_code);
}

#[derive(Deserialize, ToSchema)]
pub struct UseCodeRequest {
    /// Case-insensitive; 1-64 characters of `A-Z 0-9 _ -`.
    #[schema(example = "SPRING")]
    code: String,
}

/// Redeem a gift code: the first N users get its credit, each once.
#[utoipa::path(post, path = "/codes/use", tag = "codes", security(("bearer" = [])),
    request_body = UseCodeRequest, responses(
        (status = 200, body = service::Redeemed),
        (status = 404, description = "code_not_found", body = ErrorBody),
        (status = 409, description = "already_redeemed", body = ErrorBody),
        (status = 410, description = "sold_out", body = ErrorBody),
        (status = 422, description = "not_eligible / invalid_input", body = ErrorBody),
        (status = 503, description = "try_again (see Retry-After)", body = ErrorBody,
            headers(("Retry-After" = u32, description = "seconds"))),
        (status = 401, description = "unauthorized / token_expired", body = ErrorBody),
        (status = 400, description = "malformed_json", body = ErrorBody),
        (status = 413, description = "payload_too_large", body = ErrorBody),
        (status = 429, description = "rate_limited (see Retry-After)", body = ErrorBody,
            headers(("Retry-After" = u32, description = "seconds")))))]
pub async fn use_code(
    state: web::Data<AppState>,
    user: AuthUser,
    addr: ClientAddr,
    body: Json<UseCodeRequest>,
) -> Result<HttpResponse, ApiError> {
    let name = CodeName::parse(&body.code)?;
    if !state.codes.has_entry(name.as_str()) {
        state.limiter.guard_unknown_lookup(user.user_id, &addr).await?;
    }
    let state = state.into_inner();
    let worker_state = state.clone();
    // Detached from the request: a client that hangs up mid-way must not
    // cancel us between the claim and its commit or release.
    let work = async move { service::redeem(&worker_state, user.user_id, &name).await };
    let redeemed = actix_web::rt::spawn(work.instrument(tracing::Span::current())).await.map_err(ApiError::internal)?;
    if matches!(redeemed, Err(ApiError::CodeNotFound)) {
        state.limiter.charge_unknown_code(user.user_id, &addr).await?;
    }
    Ok(HttpResponse::Ok().json(redeemed?))
}
