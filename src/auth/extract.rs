//! Extractors that authenticate a request before its handler runs. A handler
//! that takes `AuthUser` cannot be reached without a valid user token; one that
//! takes `AdminUser` cannot be reached without the admin role; one that takes
//! `ServiceCaller<S>` cannot be reached without a service token holding the
//! scope `S`. A valid token of the wrong kind is 403, never 401: the caller
//! is known, the route is not theirs.

use std::marker::PhantomData;

use futures_util::future::{ready, Either, LocalBoxFuture, Ready};

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};

use super::token::{Identity, Role, Scope};
use crate::error::ApiError;
use crate::state::AppState;

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

fn state_of(req: &HttpRequest) -> Result<&web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>().ok_or_else(|| ApiError::internal(anyhow::anyhow!("AppState missing")))
}

fn bearer(req: &HttpRequest) -> Result<&str, ApiError> {
    let value = req.headers().get(header::AUTHORIZATION).ok_or(ApiError::Unauthorized("missing bearer token"))?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthorized("the Authorization header must be `Bearer <token>`"))
}

fn authenticate(state: &AppState, token: &str) -> Result<AuthUser, ApiError> {
    let Identity { user_id, role, expires_at } = state.tokens.verify(token).map_err(|e| {
        if state.tokens.verify_service(token).is_ok() {
            ApiError::Forbidden("a service token cannot call user or admin routes")
        } else {
            e
        }
    })?;
    if !state.disabled_users.is_loaded() {
        // Fail closed: whether this user is disabled is not known yet.
        return Err(ApiError::TryAgain("this gateway is still starting, try again shortly"));
    }
    if state.disabled_users.contains(user_id) {
        return Err(ApiError::Unauthorized("this account is disabled"));
    }
    Ok(AuthUser { user_id, role, expires_at })
}

/// The wallet role learns a new signing key of the issuer before judging a
/// token that names it (see `TokenKeys::learn_kid`).
async fn learn_key(req: &HttpRequest) {
    if let (Ok(state), Ok(token)) = (state_of(req), bearer(req)) {
        state.tokens.learn_kid(token).await;
    }
}

/// An extractor's future: ready at once, unless the token names a key this
/// process must fetch first (the split's wallet role only). The common path
/// stays synchronous and holds no clone of the request: measured, boxing
/// every extraction cost a 1,000-user burst its pool head-room (503s).
type AuthFuture<T> = Either<Ready<Result<T, ApiError>>, LocalBoxFuture<'static, Result<T, ApiError>>>;

/// How a token is judged, given the state and the bearer token.
type Judge<T> = fn(&AppState, &str) -> Result<T, ApiError>;

/// The state and the token are looked up once; a request without either is
/// refused as `judge` would refuse it (state first, then the token).
fn extract<T: 'static>(req: &HttpRequest, judge: Judge<T>) -> AuthFuture<T> {
    let (state, token) = match state_of(req).and_then(|state| Ok((state, bearer(req)?))) {
        Ok(found) => found,
        Err(e) => return Either::Left(ready(Err(e))),
    };
    if !state.tokens.must_learn(token) {
        return Either::Left(ready(judge(state, token)));
    }
    let req = req.clone();
    Either::Right(Box::pin(async move {
        learn_key(&req).await;
        judge(state_of(&req)?, bearer(&req)?)
    }))
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = AuthFuture<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        extract(req, authenticate)
    }
}

fn authenticate_admin(state: &AppState, token: &str) -> Result<AdminUser, ApiError> {
    let user = authenticate(state, token)?;
    if user.is_admin() {
        Ok(AdminUser(user))
    } else {
        Err(ApiError::Forbidden("this needs the admin role"))
    }
}

impl FromRequest for AdminUser {
    type Error = ApiError;
    type Future = AuthFuture<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        extract(req, authenticate_admin)
    }
}

/// The scope a `ServiceCaller` must hold; one marker type per scope.
pub trait NeedsScope {
    const SCOPE: Scope;
}

/// Marker types for `ServiceCaller<S>`.
pub mod scope {
    use super::{NeedsScope, Scope};

    macro_rules! marker {
        ($name:ident) => {
            #[derive(Debug, Clone, Copy)]
            pub struct $name;
            impl NeedsScope for $name {
                const SCOPE: Scope = Scope::$name;
            }
        };
    }
    marker!(CouponsRedeem);
    marker!(CouponsCancel);
    marker!(WalletCredit);
    marker!(WalletDebit);
}

/// A service (a checkout, a top-up) calling with its own credential and the
/// scope `S`. It acts for users it names; it is never a user or an admin.
#[derive(Debug, Clone)]
pub struct ServiceCaller<S> {
    /// From the token's `sub` (`service:<name>`).
    pub name: String,
    _scope: PhantomData<S>,
}

fn authenticate_service<S: NeedsScope>(state: &AppState, token: &str) -> Result<ServiceCaller<S>, ApiError> {
    let service = state.tokens.verify_service(token).map_err(|e| {
        if state.tokens.verify(token).is_ok() {
            ApiError::Forbidden("this route is for services; a user or admin token cannot call it")
        } else {
            e
        }
    })?;
    if !service.scopes.contains(&S::SCOPE) {
        return Err(ApiError::MissingScope(S::SCOPE.as_str()));
    }
    Ok(ServiceCaller { name: service.name, _scope: PhantomData })
}

impl<S: NeedsScope + 'static> FromRequest for ServiceCaller<S> {
    type Error = ApiError;
    type Future = AuthFuture<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        extract(req, authenticate_service::<S>)
    }
}
