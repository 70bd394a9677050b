//! POST /campaigns/login and GET /vouchers.

use actix_web::http::Method;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use utoipa::ToSchema;

use super::service::{self, VoucherOutcome};
use super::store::{self, Voucher};
use crate::auth::routes::{authenticate, issue_login, LoginResponse};
use crate::auth::AuthUser;
use crate::codes::CodeName;
use crate::db::StoreError;
use crate::error::responses::{PublicBodyErrors, UserErrors};
use crate::error::{ApiError, ErrorBody};
use crate::http::{route, Json};
use crate::ratelimit::ClientAddr;
use crate::state::AppState;

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
    #[schema(value_type = crate::codes::CodeNameSchema)]
    campaign: String,
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
    PublicBodyErrors,
    (status = 401, description = "invalid_credentials", body = ErrorBody)))]
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
    let work = async move { service::voucher_for(&state, user_id, &campaign).await };
    let outcome = actix_web::rt::spawn(work.instrument(tracing::Span::current())).await.map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(CampaignLoginResponse { login, voucher: outcome }))
}

#[derive(Serialize, ToSchema)]
pub struct VoucherList {
    pub items: Vec<Voucher>,
}

/// The caller's vouchers, newest first, with their expiry.
#[utoipa::path(get, path = "/vouchers", tag = "vouchers", security(("bearer" = [])), responses(
    (status = 200, description = "the caller's vouchers", body = VoucherList),
    UserErrors))]
pub async fn my_vouchers(state: web::Data<AppState>, user: AuthUser) -> Result<HttpResponse, ApiError> {
    let db = state.pg.get().await.map_err(StoreError::from)?;
    let items = store::of_user(&db, user.user_id).await?;
    Ok(HttpResponse::Ok().json(VoucherList { items }))
}
