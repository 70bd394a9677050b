//! POST /codes/use.

use std::sync::Arc;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tracing::Instrument;
use utoipa::ToSchema;

use super::service;
use crate::auth::AuthUser;
use crate::codes::CodeName;
use crate::error::responses::UserBodyErrors;
use crate::error::{ApiError, ErrorBody};
use crate::http::{route, Json};
use crate::idempotency::{self, Attempt, IdempotencyKey};
use crate::ratelimit::ClientAddr;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    route(cfg, Method::POST, "/codes/use", use_code);
}

#[derive(Deserialize, ToSchema)]
pub struct UseCodeRequest {
    /// Case-insensitive; 1-64 characters of `A-Z 0-9 _ -`.
    #[schema(value_type = crate::codes::CodeNameSchema)]
    code: String,
}

/// Redeem a gift code: the first N users get its credit, each once.
///
/// Safe to retry. Without a key, a repeat is 409 `already_redeemed` with the
/// user's redemption in `redemption` (amount, when, balance now). With an
/// `Idempotency-Key` (kept 24 h per user, bound to this body), a repeat
/// answers the outcome: 200 if the credit committed — also when the first
/// answer was a 503 — else the same refusal.
#[utoipa::path(post, path = "/codes/use", tag = "codes", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[\\x21-\\x7E]{1,255}$",
        description = "1-255 visible ASCII characters (e.g. a UUID); kept 24 h per user")),
    request_body = UseCodeRequest, responses(
        (status = 200, description = "credited: the code's amount and the balance now", body = service::Redeemed,
            headers(("Idempotent-Replayed" = String, description = "`true` when replayed from the key's kept answer"))),
        (status = 202, description = "the split (role `redemption`) only: redeemed, and the credit is owed \
            (`credit: \"pending\"`): the wallet did not answer in time; it is retried until applied", body = service::Redeemed),
        UserBodyErrors,
        (status = 400, description = "malformed_json / invalid_idempotency_key", body = ErrorBody),
        (status = 404, description = "code_not_found", body = ErrorBody),
        (status = 409, description = "already_redeemed (with `redemption`: the user's own, when committed) / \
            idempotency_in_progress (a request with this key is running; see Retry-After)", body = ErrorBody),
        (status = 410, description = "sold_out", body = ErrorBody),
        (status = 422, description = "not_eligible / invalid_input / idempotency_key_reused (the key came with another body)", body = ErrorBody)))]
pub async fn use_code(
    state: web::Data<AppState>,
    user: AuthUser,
    addr: ClientAddr,
    req: HttpRequest,
    body: Json<UseCodeRequest>,
) -> Result<HttpResponse, ApiError> {
    let key = IdempotencyKey::from_request(&req)?;
    let name = CodeName::parse(&body.code)?;
    let state = state.into_inner();
    if key.is_none() {
        if let Some(answer) = service::sold_out_from_memory(&state, &name) {
            return Err(answer);
        }
    }
    let Some(key) = key else {
        let redeemed = redeem(&state, user, &addr, name, None).await?;
        // The split, wallet unreachable: the slot is won, the credit owed.
        let mut answer = if redeemed.is_pending() { HttpResponse::Accepted() } else { HttpResponse::Ok() };
        return Ok(answer.json(redeemed));
    };
    let fingerprint = idempotency::fingerprint("POST /codes/use", &serde_json::json!({ "code": name.as_str() }));
    idempotency::run(&state, user.user_id, &key, &fingerprint, |attempt| {
        let earlier = match attempt {
            Attempt::First => None,
            Attempt::Again { since } => Some(since),
        };
        redeem(&state, user, &addr, name, Some(earlier))
    })
    .await
}

/// The redemption with its guessing guard; `keyed` is `Some` under an
/// idempotency key (holding the key's first use, if an attempt came before).
async fn redeem(
    state: &Arc<AppState>,
    user: AuthUser,
    addr: &ClientAddr,
    name: CodeName,
    keyed: Option<Option<DateTime<Utc>>>,
) -> Result<service::Redeemed, ApiError> {
    if !state.codes.has_entry(name.as_str()) {
        state.limiter.guard_unknown_lookup(user.user_id, addr).await?;
    }
    let worker_state = state.clone();
    // Detached from the request: a client that hangs up mid-way must not
    // cancel us between the claim and its commit or release.
    let work = async move {
        match keyed {
            None => service::redeem(&worker_state, user.user_id, &name).await,
            Some(earlier) => service::redeem_with_key(&worker_state, user.user_id, &name, earlier).await,
        }
    };
    let redeemed = actix_web::rt::spawn(work.instrument(tracing::Span::current())).await.map_err(ApiError::internal)?;
    if matches!(redeemed, Err(ApiError::CodeNotFound)) {
        state.limiter.charge_unknown_code(user.user_id, addr).await?;
    }
    redeemed
}
