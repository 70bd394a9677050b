//! Extractors that authenticate a request before its handler runs. A handler
//! that takes `AuthUser` cannot be reached without a valid token; one that
//! takes `AdminUser` cannot be reached without the admin role.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};

use super::token::{Identity, Role};
use crate::error::ApiError;
use crate::startup::AppState;

#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    pub user_id: i64,
    pub role: Role,
    /// When the token expires (Unix seconds).
    pub expires_at: u64,
}

impl AuthUser {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

#[derive(Debug, Clone, Copy)]
pub struct AdminUser(pub AuthUser);

fn authenticate(req: &HttpRequest) -> Result<AuthUser, ApiError> {
    let state =
        req.app_data::<web::Data<AppState>>().ok_or_else(|| ApiError::internal(anyhow::anyhow!("AppState missing")))?;
    let value = req.headers().get(header::AUTHORIZATION).ok_or(ApiError::Unauthorized("missing bearer token"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthorized("the Authorization header must be `Bearer <token>`"))?;
    let Identity { user_id, role, expires_at } = state.tokens.verify(token)?;
    if state.disabled_users.contains(user_id) {
        return Err(ApiError::Unauthorized("this account is disabled"));
    }
    Ok(AuthUser { user_id, role, expires_at })
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

impl FromRequest for AdminUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req).and_then(|user| {
            if user.is_admin() {
                Ok(AdminUser(user))
            } else {
                Err(ApiError::Forbidden("this needs the admin role"))
            }
        }))
    }
}
