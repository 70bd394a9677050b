//! POST /auth/register and POST /auth/login.

use actix_web::http::Method;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{password, store, AdminUser, Role};
use crate::error::responses::{AdminErrors, PublicBodyErrors};
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::http::{route, Json};
use crate::ratelimit::ClientAddr;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    route(cfg, Method::POST, "/auth/register", register);
    route(cfg, Method::POST, "/auth/login", login);
    route(cfg, Method::POST, "/admin/users/{id}/disable", disable_user);
    route(cfg, Method::POST, "/admin/users/{id}/enable", enable_user);
}

/// A username that has passed the rules: 3-32 characters of `[a-z0-9_.-]`,
/// stored lower-case so "Alice" and "alice" are one account.
#[derive(Debug, Clone)]
pub struct Username(String);

impl Username {
    /// Length bounds, stated in `RegisterRequest`'s schema too (a test holds them equal).
    pub const MIN_LEN: usize = 3;
    pub const MAX_LEN: usize = 32;

    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let name = raw.trim().to_ascii_lowercase();
        let ok_len = (Self::MIN_LEN..=Self::MAX_LEN).contains(&name.len());
        let ok_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if ok_len && ok_chars {
            Ok(Username(name))
        } else {
            Err(ApiError::InvalidInput("username must be 3-32 characters of letters, digits, '_', '.' or '-'".into()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Password rules: 8 to 128 characters. Long passphrases are welcome; the
/// upper bound keeps a hashing request cheap to refuse.
pub const PASSWORD_MIN_CHARS: usize = 8;
pub const PASSWORD_MAX_CHARS: usize = 128;

fn check_password(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if (PASSWORD_MIN_CHARS..=PASSWORD_MAX_CHARS).contains(&n) {
        Ok(())
    } else {
        Err(ApiError::InvalidInput("password must be 8-128 characters".into()))
    }
}

fn check_phone(phone: &str) -> Result<(), ApiError> {
    let digits = phone.strip_prefix('+').unwrap_or(phone);
    if (5..=19).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(ApiError::InvalidInput("phone must be 5-19 digits, optionally after '+'".into()))
    }
}

#[derive(Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// 3-32 characters of `a-z 0-9 _ . -` (case-insensitive: stored lower-case).
    #[schema(example = "sara", min_length = 3, max_length = 32, pattern = "^[A-Za-z0-9_.-]{3,32}$")]
    username: String,
    /// 8-128 characters.
    #[schema(example = "a-long-password", min_length = 8, max_length = 128)]
    password: String,
    /// 5-19 digits, optionally after `+`.
    #[schema(example = "+989121234567", pattern = r"^\+?[0-9]{5,19}$")]
    phone: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RegisterResponse {
    user_id: i64,
    username: String,
}

/// Create an account.
#[utoipa::path(post, path = "/auth/register", tag = "auth", request_body = RegisterRequest, responses(
    (status = 201, description = "the account", body = RegisterResponse),
    PublicBodyErrors,
    (status = 409, description = "username_taken", body = ErrorBody),
    (status = 503, description = "try_again: the password-hash queue is full (see Retry-After)", body = ErrorBody)))]
pub async fn register(
    state: web::Data<AppState>,
    addr: ClientAddr,
    body: Json<RegisterRequest>,
) -> Result<HttpResponse, ApiError> {
    state.limiter.guard_register(&addr).await?;
    let RegisterRequest { username, password, phone } = body.into_inner();
    let username = Username::parse(&username)?;
    check_password(&password)?;
    if let Some(p) = &phone {
        check_phone(p)?;
    }
    // Every cheap refusal before the expensive hash: a taken name costs one
    // indexed read, not a CPU slot. (The insert still settles a race.)
    let db = state.pg.get().await.map_err(crate::db::StoreError::from)?;
    if store::username_taken(&db, username.as_str()).await? {
        return Err(ApiError::UsernameTaken);
    }
    drop(db); // not held across the hash queue
    let password_hash = password::hash(&state.hashing, &addr.subject(), password).await?;
    let db = state.pg.get().await.map_err(crate::db::StoreError::from)?;
    let new_user =
        store::NewUser { username: username.as_str(), password_hash: &password_hash, phone: phone.as_deref() };
    let user_id = store::insert_user(&db, &new_user).await?.ok_or(ApiError::UsernameTaken)?;
    tracing::info!(user_id, "user registered");
    Ok(HttpResponse::Created().json(RegisterResponse { user_id, username: username.0 }))
}

#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    /// Any string: a name that breaks the registration rules cannot exist,
    /// so it gets 401 `invalid_credentials` like a wrong password.
    #[schema(example = "sara")]
    username: String,
    #[schema(example = "a-long-password")]
    password: String,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

/// Checks the credentials and returns the user's id. An unknown user and a
/// wrong password get the same answer in about the same time.
pub async fn authenticate(
    state: &AppState,
    addr: &ClientAddr,
    username: &str,
    password: String,
) -> Result<i64, ApiError> {
    let slowdown = state.limiter.guard_login(username, addr).await?;
    if !slowdown.is_zero() {
        // Many addresses together failed on this username: slow it down for
        // everyone (the owner too), but never refuse it.
        tokio::time::sleep(slowdown).await;
    }
    // A name that breaks the rules cannot exist; still spend the hashing time.
    let raw_username = username;
    let username = Username::parse(raw_username).ok();
    let stored = match &username {
        Some(name) => {
            let db = state.pg.get().await.map_err(crate::db::StoreError::from)?;
            store::find_by_username(&db, name.as_str()).await?
        }
        None => None,
    };
    let (id, hash) = match stored {
        Some(user) => (Some(user.id), Some(user.password_hash)),
        None => (None, None),
    };
    let ok = password.len() <= 1024 && password::verify(&state.hashing, &addr.subject(), password, hash).await?;
    state.limiter.login_outcome(raw_username, addr, ok && id.is_some()).await;
    match id {
        Some(id) if ok => Ok(id),
        _ => Err(ApiError::InvalidCredentials),
    }
}

pub fn issue_login(state: &AppState, user_id: i64) -> Result<LoginResponse, ApiError> {
    Ok(LoginResponse {
        access_token: state.tokens.issue(user_id, Role::User)?,
        token_type: "Bearer",
        expires_in: state.tokens.ttl().as_secs(),
    })
}

/// Exchange a username and password for a bearer token.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest, responses(
    (status = 200, description = "a user token", body = LoginResponse),
    PublicBodyErrors,
    (status = 401, description = "invalid_credentials", body = ErrorBody),
    (status = 503, description = "try_again: the password-hash queue is full (see Retry-After)", body = ErrorBody)))]
pub async fn login(
    state: web::Data<AppState>,
    addr: ClientAddr,
    body: Json<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    let LoginRequest { username, password } = body.into_inner();
    let user_id = authenticate(&state, &addr, &username, password).await?;
    Ok(HttpResponse::Ok().json(issue_login(&state, user_id)?))
}

#[derive(Serialize, ToSchema)]
pub struct UserStatus {
    pub user_id: i64,
    pub disabled: bool,
}

async fn set_disabled(state: &AppState, user_id: i64, disabled: bool) -> Result<HttpResponse, ApiError> {
    let db = state.pg.get().await.map_err(crate::db::StoreError::from)?;
    if !super::disabled::set_disabled(&db, user_id, disabled).await? {
        return Err(ApiError::NotFound("user"));
    }
    // This gateway at once; the others at their next reload (seconds).
    if disabled {
        state.disabled_users.insert(user_id);
    } else {
        state.disabled_users.remove(user_id);
    }
    tracing::info!(user_id, disabled, "user status changed");
    Ok(HttpResponse::Ok().json(UserStatus { user_id, disabled }))
}

/// Disable a user: their tokens are refused from now on (every gateway within
/// seconds) and they cannot log in. Their money history stays.
#[utoipa::path(post, path = "/admin/users/{id}/disable", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path, description = "user id")), responses(
        (status = 200, description = "the user's status now", body = UserStatus),
        AdminErrors,
        (status = 404, description = "not_found", body = ErrorBody)))]
pub async fn disable_user(
    state: web::Data<AppState>,
    _admin: AdminUser,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    set_disabled(&state, path.into_inner(), true).await
}

/// Enable a disabled user again.
#[utoipa::path(post, path = "/admin/users/{id}/enable", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path, description = "user id")), responses(
        (status = 200, description = "the user's status now", body = UserStatus),
        AdminErrors,
        (status = 404, description = "not_found", body = ErrorBody)))]
pub async fn enable_user(
    state: web::Data<AppState>,
    _admin: AdminUser,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    set_disabled(&state, path.into_inner(), false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_normalised_and_checked() {
        assert_eq!(Username::parse(" Alice_1 ").map(|u| u.0).ok().as_deref(), Some("alice_1"));
        for bad in ["", "ab", "a b c", "émile", "x".repeat(33).as_str(), "semi;colon"] {
            assert!(Username::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn password_and_phone_rules() {
        assert!(check_password("12345678").is_ok());
        assert!(check_password("1234567").is_err());
        assert!(check_password(&"p".repeat(129)).is_err());
        assert!(check_phone("+989121234567").is_ok());
        assert!(check_phone("0912-123").is_err());
    }
}
