//! POST /campaigns/login and GET /vouchers.

use std::sync::Arc;

use actix_web::http::Method;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::store::{self, Voucher};
use crate::auth::routes::{authenticate, issue_login, LoginResponse};
use crate::auth::AuthUser;
use crate::codes::{CodeKind, CodeName};
use crate::db::StoreError;
use crate::error::{ApiError, ErrorBody};
use crate::http::{route, Json};
use crate::ratelimit::ClientAddr;
use crate::redemption::service::{lookup, record_outcome, through_gate};
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    route(cfg, Method::POST, "/campaigns/login", campaign_login);
    route(cfg, Method::GET, "/vouchers", my_vouchers);
}

#[derive(Deserialize, ToSchema)]
pub struct CampaignLogin {
    #[schema(example = "sara")]
    username: String,
    #[schema(example = "a-long-password")]
    password: String,
    /// The campaign's code.
    #[schema(example = "TOPUP30")]
    campaign: String,
}

/// Whether this login earned a voucher, and why not.
#[derive(Serialize, ToSchema)]
pub struct VoucherOutcome {
    pub issued: bool,
    /// When not issued: already_issued, campaign_full, not_active, no_such_campaign, try_again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voucher: Option<Voucher>,
}

#[derive(Serialize, ToSchema)]
pub struct CampaignLoginResponse {
    #[serde(flatten)]
    pub login: LoginResponse,
    pub voucher: VoucherOutcome,
}

/// Log in (like /auth/login) and, on the first login to an active campaign
/// within its first N users, get its voucher in the same request.
#[utoipa::path(post, path = "/campaigns/login", tag = "vouchers", request_body = CampaignLogin, responses(
    (status = 200, body = CampaignLoginResponse, description = "logged in; `voucher` says whether one was issued and why not"),
    (status = 401, description = "invalid_credentials", body = ErrorBody),
    (status = 400, description = "malformed_json", body = ErrorBody),
    (status = 422, description = "invalid_input", body = ErrorBody),
    (status = 429, description = "rate_limited (see Retry-After)", body = ErrorBody)))]
pub async fn campaign_login(
    state: web::Data<AppState>,
    addr: ClientAddr,
    body: Json<CampaignLogin>,
) -> Result<HttpResponse, ApiError> {
    let CampaignLogin { username, password, campaign } = body.into_inner();
    let campaign = CodeName::parse(&campaign)?;
    let user_id = authenticate(&state, &addr, &username, password).await?;
    let login = issue_login(&state, user_id)?;
    let state = state.into_inner();
    // Detached: a client hanging up must not cut the gate path in half.
    let outcome = actix_web::rt::spawn(async move { voucher_for(&state, user_id, &campaign).await })
        .await
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(CampaignLoginResponse { login, voucher: outcome }))
}

async fn voucher_for(state: &Arc<AppState>, user_id: i64, campaign: &CodeName) -> VoucherOutcome {
    let result = issue_voucher(state, user_id, campaign).await;
    record_outcome(state, campaign, &result);
    let reason = match result {
        Ok(voucher) => return VoucherOutcome { issued: true, reason: None, voucher: Some(voucher) },
        Err(ApiError::AlreadyRedeemed) => "already_issued",
        Err(ApiError::SoldOut) => "campaign_full",
        Err(ApiError::NotEligible(_)) => "not_active",
        Err(ApiError::CodeNotFound) => "no_such_campaign",
        Err(e) => {
            if let ApiError::Internal(inner) = &e {
                tracing::error!(error = ?inner, "voucher issue failed");
            }
            "try_again"
        }
    };
    VoucherOutcome { issued: false, reason: Some(reason), voucher: None }
}

async fn issue_voucher(state: &Arc<AppState>, user_id: i64, campaign: &CodeName) -> Result<Voucher, ApiError> {
    let code = lookup(state, campaign).await?;
    if code.code.kind != CodeKind::Voucher {
        return Err(ApiError::CodeNotFound);
    }
    let reward = code.code.voucher_reward()?;
    let (code_id, name) = (code.code.id, code.code.code.clone());
    through_gate(state, &code, user_id, &user_id.to_string(), |ticket| {
        let (reward, name) = (reward.clone(), name.clone());
        async move {
            let db = state.pg.get().await?;
            store::issue(&db, &name, code_id, user_id, ticket, &reward).await
        }
    })
    .await
}

#[derive(Serialize, ToSchema)]
pub struct VoucherList {
    pub items: Vec<Voucher>,
}

/// The caller's vouchers, newest first, with their expiry.
#[utoipa::path(get, path = "/vouchers", tag = "vouchers", security(("bearer" = [])), responses(
    (status = 200, body = VoucherList),
    (status = 401, description = "unauthorized / token_expired", body = ErrorBody)))]
pub async fn my_vouchers(state: web::Data<AppState>, user: AuthUser) -> Result<HttpResponse, ApiError> {
    let db = state.pg.get().await.map_err(StoreError::from)?;
    let items = store::of_user(&db, user.user_id).await?;
    Ok(HttpResponse::Ok().json(VoucherList { items }))
}
