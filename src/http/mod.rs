//! The HTTP surface: composes every module's routes, sets body limits, and
//! makes sure every error a client sees — ours or the framework's — is the
//! JSON `{"error":{"code","message"}}`.

pub mod body;
pub mod dashboard;
pub mod health;
pub mod json;
pub mod observe;
pub mod openapi;

use actix_web::body::BoxBody;
use actix_web::dev::ServiceResponse;
use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::config::ServeRole;
use crate::error::ApiError;

pub use actix_web::web::Query;
pub use json::Json;

/// Registers `path` for `method` and records it, so a test can check that
/// the OpenAPI spec documents every route the app serves.
///
/// As `cfg.route(path, web::method(method).to(handler))` does (a resource of
/// its own, guarded by the method, so another method falls through to the
/// next resource), plus the pattern in the resource's app data: the metrics
/// read it after the call instead of matching the path again (`observe`).
pub fn route<F, Args>(cfg: &mut web::ServiceConfig, method: Method, path: &'static str, handler: F)
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    if let Ok(mut seen) = SERVED.lock() {
        seen.insert((method.to_string(), path));
    }
    cfg.service(
        web::resource(path)
            .guard(actix_web::guard::Method(method))
            .app_data(observe::RoutePattern(path))
            .route(web::route().to(handler)),
    );
}

static SERVED: Mutex<BTreeSet<(String, &'static str)>> = Mutex::new(BTreeSet::new());

/// (method, path) of every route registered so far.
pub fn served_routes() -> Vec<(String, &'static str)> {
    SERVED.lock().map(|s| s.iter().cloned().collect()).unwrap_or_default()
}

/// Every route of the single process (role `all`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    configure_role(cfg, ServeRole::All);
}

/// The routes of one role: the wallet role serves balances, the ledger and
/// the services' movements; the redemption role everything else (users,
/// tokens and their public keys, codes, vouchers, coupons, the operator's).
pub fn configure_role(cfg: &mut web::ServiceConfig, role: ServeRole) {
    // actix tries resources in registration order, and a pattern with a
    // `{segment}` costs a regex match: the spike's route goes first, ahead of
    // /admin/users/{id}/... (no pattern here overlaps another).
    if role.redeems() {
        crate::redemption::routes::configure(cfg);
    }
    health::configure(cfg);
    if role.holds_wallets() {
        crate::wallet::routes::configure(cfg);
    }
    if role.redeems() {
        crate::auth::routes::configure(cfg);
        crate::auth::jwks::configure(cfg);
        crate::codes::routes::configure(cfg);
        crate::vouchers::routes::configure(cfg);
        crate::coupons::routes::configure(cfg);
        dashboard::configure(cfg);
        openapi::configure(cfg);
    }
}

/// Extractor settings: body limits and error mapping for JSON and query strings.
pub fn extractor_configs(body_limit: usize) -> (web::JsonConfig, web::QueryConfig, web::PayloadConfig) {
    let json = web::JsonConfig::default()
        .limit(body_limit)
        // Clients that forget the Content-Type still get their JSON parsed.
        .content_type_required(false)
        .content_type(|_| true)
        .error_handler(move |e, _req| json_error(e, body_limit).into());
    let query = web::QueryConfig::default().error_handler(|e, _req| query_error(e).into());
    let payload = web::PayloadConfig::new(body_limit);
    (json, query, payload)
}

fn json_error(e: JsonPayloadError, limit: usize) -> ApiError {
    match e {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            ApiError::PayloadTooLarge(limit)
        }
        JsonPayloadError::Deserialize(e) => serde_error(e),
        other => ApiError::MalformedJson(format!("could not read the JSON body: {other}")),
    }
}

/// Syntax errors are 400 (not JSON); missing or wrong-typed fields are 422.
pub fn serde_error(e: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => ApiError::InvalidInput(format!("invalid body: {e}")),
        Category::Syntax | Category::Eof | Category::Io => ApiError::MalformedJson(format!("malformed JSON: {e}")),
    }
}

fn query_error(e: QueryPayloadError) -> ApiError {
    ApiError::InvalidInput(format!("invalid query string: {e}"))
}

/// For routes whose body is optional: nothing (or whitespace) means
/// `T::default()`, anything else must be valid JSON for `T`.
pub fn parse_json_or_default<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    json::parse(body)
}

/// A safety net: any 4xx/5xx built by the framework rather than by `ApiError`
/// (unknown method, payload errors, a panic-caught 500) is rewritten as our JSON.
pub fn json_error_net() -> ErrorHandlers<BoxBody> {
    ErrorHandlers::new().default_handler(|res: ServiceResponse<BoxBody>| {
        let is_json = res
            .response()
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        if is_json {
            return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
        }
        let status = res.status();
        let error = match status.as_u16() {
            404 => ApiError::NotFound("route"),
            405 => ApiError::NotFound("route with this method"),
            413 => ApiError::PayloadTooLarge(0),
            400..=499 => ApiError::MalformedJson(status.canonical_reason().unwrap_or("bad request").into()),
            _ => ApiError::internal(anyhow::anyhow!("framework error {status}")),
        };
        let mut fresh = error.error_response();
        *fresh.status_mut() = status;
        // Keep headers such as Allow or Retry-After that the original carried.
        for (name, value) in res.response().headers() {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                fresh.headers_mut().insert(name.clone(), value.clone());
            }
        }
        fresh.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let (req, _) = res.into_parts();
        Ok(ErrorHandlerResponse::Response(ServiceResponse::new(req, fresh).map_into_right_body()))
    })
}

/// Unknown routes.
pub async fn not_found(_req: HttpRequest) -> HttpResponse {
    ApiError::NotFound("route").error_response()
}
