//! POST /codes/use.

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::service;
use crate::auth::AuthUser;
use crate::codes::CodeName;
use crate::error::ApiError;
use crate::http::Json;
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/codes/use", web::post().to(use_code));
}

#[derive(Deserialize)]
pub struct UseCodeRequest {
    code: String,
}

async fn use_code(
    state: web::Data<AppState>,
    user: AuthUser,
    body: Json<UseCodeRequest>,
) -> Result<HttpResponse, ApiError> {
    let name = CodeName::parse(&body.code)?;
    let state = state.into_inner();
    // Detached from the request: a client that hangs up mid-way must not
    // cancel us between the claim and its commit or release.
    let redeemed = actix_web::rt::spawn(async move { service::redeem(&state, user.user_id, &name).await })
        .await
        .map_err(ApiError::internal)??;
    Ok(HttpResponse::Ok().json(redeemed))
}
