//! The one error type the HTTP layer answers with. Each variant has a stable
//! snake_case code that clients switch on; status and JSON body are decided
//! here and nowhere else. Internal errors are logged with their chain and
//! answered without it.

use std::sync::OnceLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all (syntax error, truncated, wrong content type).
    #[error("{0}")]
    MalformedJson(String),
    /// JSON, but a field is missing, has the wrong type, or breaks a rule.
    #[error("{0}")]
    InvalidInput(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The body did not arrive within `BODY_READ_TIMEOUT_MS`.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// Too many live report streams open (per admin or in all).
    #[error("too many live streams open ({0}); close one first")]
    TooManyStreams(&'static str),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("the token has expired")]
    TokenExpired,
    #[error("wrong username or password")]
    InvalidCredentials,
    #[error("{0}")]
    Forbidden(&'static str),
    /// A service token without the scope the route needs.
    #[error("this service token lacks the scope {0}")]
    MissingScope(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("no such code")]
    CodeNotFound,
    #[error("username is already taken")]
    UsernameTaken,
    #[error("a code with this name already exists")]
    CodeExists,
    /// A status change asked of an ended code: ending is for good. A
    /// conflict with the code's state (409), not a bad body: the same request
    /// is fine on a code that has not ended.
    #[error("an ended code stays ended")]
    CodeEnded,
    #[error("you have already redeemed this code")]
    AlreadyRedeemed,
    /// `already_redeemed`, with the caller's own redemption beside the error
    /// (`"redemption": {...}`), so a client whose earlier attempt got a 503
    /// learns it was credited.
    #[error("you have already redeemed this code")]
    AlreadyRedeemedWith(Box<serde_json::Value>),
    /// The `Idempotency-Key` header breaks the rules.
    #[error("{0}")]
    InvalidIdempotencyKey(&'static str),
    /// The key was used before with another request body.
    #[error("this Idempotency-Key was used with another request; use a new key for a new request")]
    IdempotencyKeyReused,
    /// A request with this key is still running.
    #[error("a request with this Idempotency-Key is still in progress; retry shortly")]
    IdempotencyInProgress,
    #[error("this code has been fully redeemed")]
    SoldOut,
    #[error("{0}")]
    NotEligible(String),
    #[error("this coupon use was already cancelled")]
    AlreadyCancelled,
    #[error("you have used this code as many times as it allows")]
    PerUserLimit,
    /// The order number already used this coupon for another user.
    #[error("this order number is already recorded for another user with this coupon")]
    OrderBelongsToAnotherUser,
    /// A service named a user who is disabled.
    #[error("this user is disabled")]
    UserDisabled,
    /// A debit larger than the balance; nothing was written.
    #[error("the balance is lower than the amount to debit")]
    InsufficientFunds,
    /// The service reused a reference for a different movement.
    #[error("this reference was already used for another movement (user, amount, direction or voucher differ)")]
    ReferenceConflict,
    #[error("this voucher has already been used")]
    VoucherUsed,
    #[error("this voucher has expired")]
    VoucherExpired,
    #[error("this voucher is for {0} purchases")]
    VoucherWrongType(String),
    /// Transient: Redis or Postgres is unavailable, or the code's gate is being
    /// rebuilt. Safe to retry; nothing was taken.
    #[error("{0}")]
    TryAgain(&'static str),
    /// A rate limit refused the request; nothing was done.
    #[error("too many requests, retry after {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u32 },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::InvalidInput(_) => "invalid_input",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::TooManyStreams(_) => "too_many_streams",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::TokenExpired => "token_expired",
            ApiError::InvalidCredentials => "invalid_credentials",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::CodeNotFound => "code_not_found",
            ApiError::UsernameTaken => "username_taken",
            ApiError::CodeExists => "code_exists",
            ApiError::AlreadyRedeemed | ApiError::AlreadyRedeemedWith(_) => "already_redeemed",
            ApiError::InvalidIdempotencyKey(_) => "invalid_idempotency_key",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::IdempotencyInProgress => "idempotency_in_progress",
            ApiError::SoldOut => "sold_out",
            ApiError::NotEligible(_) => "not_eligible",
            ApiError::AlreadyCancelled => "already_cancelled",
            ApiError::PerUserLimit => "per_user_limit",
            ApiError::MissingScope(_) => "missing_scope",
            ApiError::OrderBelongsToAnotherUser => "order_belongs_to_another_user",
            ApiError::UserDisabled => "user_disabled",
            ApiError::InsufficientFunds => "insufficient_funds",
            ApiError::ReferenceConflict => "reference_conflict",
            ApiError::VoucherUsed => "voucher_used",
            ApiError::CodeEnded => "code_ended",
            ApiError::VoucherExpired => "voucher_expired",
            ApiError::VoucherWrongType(_) => "voucher_wrong_type",
            ApiError::TryAgain(_) => "try_again",
            ApiError::TooManyRequests { .. } => "rate_limited",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(e.into())
    }

    /// An answer about the operation itself (done, refused), as opposed to a
    /// transient one (503, 429, 500) that a retry may change: only these are
    /// kept for an idempotency key.
    pub fn is_final(&self) -> bool {
        let status = self.status_code();
        // A bare already_redeemed (no committed row to show) means another
        // request holds a claim still committing: that may yet fail.
        !(status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || matches!(self, ApiError::AlreadyRedeemed))
    }

    /// The JSON body of this error, as answered.
    pub fn body(&self) -> serde_json::Value {
        let detail = ErrorDetail { code: self.code(), message: self.to_string() };
        let redemption = match self {
            ApiError::AlreadyRedeemedWith(r) => Some(r.as_ref()),
            _ => None,
        };
        serde_json::to_value(ErrorBody { error: detail, redemption }).unwrap_or_default()
    }

    /// `body()` as answered, serialised straight from the structs (no
    /// `Value` tree on the way; the same bytes, keys in the same order).
    /// Errors whose text never changes are encoded once per process: a
    /// flood of a sold-out code answers from a static buffer.
    pub fn body_bytes(&self) -> Bytes {
        match self.fixed_body() {
            Some(cell) => Bytes::from_static(cell.get_or_init(|| Vec::leak(self.encode_body()))),
            None => Bytes::from(self.encode_body()),
        }
    }

    fn encode_body(&self) -> Vec<u8> {
        let detail = ErrorDetail { code: self.code(), message: self.to_string() };
        let redemption = match self {
            ApiError::AlreadyRedeemedWith(r) => Some(r.as_ref()),
            _ => None,
        };
        serde_json::to_vec(&ErrorBody { error: detail, redemption }).unwrap_or_else(|_| b"null".to_vec())
    }

    /// The once-encoded body of an error without data (its text is fixed).
    fn fixed_body(&self) -> Option<&'static OnceLock<&'static [u8]>> {
        static BODIES: [OnceLock<&'static [u8]>; 8] = [const { OnceLock::new() }; 8];
        let slot = match self {
            ApiError::SoldOut => 0,
            ApiError::AlreadyRedeemed => 1,
            ApiError::CodeNotFound => 2,
            ApiError::TokenExpired => 3,
            ApiError::PerUserLimit => 4,
            ApiError::InvalidCredentials => 5,
            ApiError::RequestTimeout => 6,
            ApiError::IdempotencyInProgress => 7,
            _ => return None,
        };
        Some(&BODIES[slot])
    }
}

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_SECONDS: u32 = 1;
/// A stream slot frees when another stream ends: not within a second.
pub const STREAM_RETRY_AFTER_SECONDS: u32 = 10;

/// Every error answer: `{"error":{"code","message"}}`. The one error schema
/// of the spec (`ErrorBody`); every documented error response points at it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
    /// Only on `already_redeemed` from `POST /codes/use`, once the caller's
    /// redemption is committed: that redemption.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::redemption::commit::PastRedemption>)]
    pub redemption: Option<&'a serde_json::Value>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail<'a> {
    /// Stable snake_case code to switch on, e.g. `sold_out`.
    #[schema(example = "sold_out", pattern = "^[a-z][a-z0-9_]*$")]
    pub code: &'a str,
    /// Human-readable explanation.
    pub message: String,
}

/// The error responses routes share, as reusable components
/// (`#/components/responses/...`), and the families of them a route takes
/// with one word in its `responses(...)`: a route names its family, then
/// only the errors of its own (a route's own row for a status replaces the
/// family's). The text of each error lives here, once.
pub mod responses {
    use std::collections::BTreeMap;

    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::response::{Response, ResponseBuilder};
    use utoipa::openapi::schema::{Object, Type};
    use utoipa::openapi::{ContentBuilder, Ref, RefOr};
    use utoipa::IntoResponses;

    /// A header of a response: (name, description).
    type Header = (&'static str, &'static str);

    /// (component name, status, description, headers) of every shared error.
    const SHARED: &[(&str, u16, &str, &[Header])] = &[
        ("MalformedJson", 400, "malformed_json: the body is not JSON (or not a JSON object where one is due)", &[]),
        (
            "Unauthorized",
            401,
            "unauthorized / token_expired: no token, a malformed or wrongly signed one, or an expired one",
            &[("WWW-Authenticate", "`Bearer`")],
        ),
        ("ForbiddenUser", 403, "forbidden: a token of another caller kind (a service token on a user's route)", &[]),
        ("ForbiddenAdmin", 403, "forbidden: not an admin token", &[]),
        (
            "ForbiddenService",
            403,
            "forbidden: not a service token; missing_scope: a service token without the operation's scope",
            &[],
        ),
        (
            "RequestTimeout",
            408,
            "request_timeout: the body did not arrive within BODY_READ_TIMEOUT_MS (the connection is closed)",
            &[],
        ),
        ("PayloadTooLarge", 413, "payload_too_large: the body is over BODY_LIMIT_BYTES (after inflation)", &[]),
        (
            "InvalidInput",
            422,
            "invalid_input: a field is missing, of the wrong type, or outside the limits the schema states",
            &[],
        ),
        ("RateLimited", 429, "rate_limited: a rate limit refused the request; nothing was done", &[RETRY_AFTER]),
        (
            "TryAgain",
            503,
            "try_again: a dependency is unavailable, or a queue is full; nothing was taken, retry after Retry-After",
            &[RETRY_AFTER],
        ),
        ("Internal", 500, "internal: an unexpected error (logged; details withheld)", &[]),
    ];

    const RETRY_AFTER: Header = ("Retry-After", "seconds to wait before retrying");

    /// The components this module's families point at, for the spec's
    /// `components.responses`.
    pub fn components() -> Vec<(String, RefOr<Response>)> {
        SHARED
            .iter()
            .map(|&(name, _, description, headers)| (name.to_string(), error_response(description, headers)))
            .collect()
    }

    /// An error response with `description`, the `ErrorBody` schema and `headers`.
    pub fn error_response(description: &str, headers: &[Header]) -> RefOr<Response> {
        let mut response = ResponseBuilder::new().description(description).content(
            "application/json",
            ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
        );
        for &(name, about) in headers {
            let schema =
                if name == "Retry-After" { Object::with_type(Type::Integer) } else { Object::with_type(Type::String) };
            response =
                response.header(name, HeaderBuilder::new().schema(Some(schema)).description(Some(about)).build());
        }
        RefOr::T(response.build())
    }

    fn family(names: &[&str]) -> BTreeMap<String, RefOr<Response>> {
        names
            .iter()
            .filter_map(|name| SHARED.iter().find(|s| s.0 == *name))
            .map(|&(name, status, _, _)| (status.to_string(), RefOr::Ref(Ref::from_response_name(name))))
            .collect()
    }

    macro_rules! families {
        ($($(#[$doc:meta])* $ty:ident => [$($name:literal),* $(,)?];)*) => {$(
            $(#[$doc])*
            pub struct $ty;
            impl IntoResponses for $ty {
                fn responses() -> BTreeMap<String, RefOr<Response>> {
                    family(&[$($name),*])
                }
            }
        )*};
    }

    families! {
        /// Anyone, with a JSON body (register, login, campaign login).
        PublicBodyErrors => ["MalformedJson", "RequestTimeout", "PayloadTooLarge", "InvalidInput", "RateLimited", "TryAgain", "Internal"];
        /// A user's token, no body (or a query string).
        UserErrors => ["Unauthorized", "ForbiddenUser", "InvalidInput", "TryAgain", "Internal"];
        /// A user's token and a JSON body.
        UserBodyErrors => ["MalformedJson", "Unauthorized", "ForbiddenUser", "RequestTimeout", "PayloadTooLarge", "InvalidInput", "RateLimited", "TryAgain", "Internal"];
        /// An admin token, no body (or a path/query).
        AdminErrors => ["Unauthorized", "ForbiddenAdmin", "InvalidInput", "TryAgain", "Internal"];
        /// An admin token and a JSON body.
        AdminBodyErrors => ["MalformedJson", "Unauthorized", "ForbiddenAdmin", "RequestTimeout", "PayloadTooLarge", "InvalidInput", "TryAgain", "Internal"];
        /// A service token, no body.
        ServiceErrors => ["Unauthorized", "ForbiddenService", "InvalidInput", "TryAgain", "Internal"];
        /// A service token and a JSON body.
        ServiceBodyErrors => ["MalformedJson", "Unauthorized", "ForbiddenService", "RequestTimeout", "PayloadTooLarge", "InvalidInput", "TryAgain", "Internal"];
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::InvalidIdempotencyKey(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidInput(_)
            | ApiError::NotEligible(_)
            | ApiError::IdempotencyKeyReused
            | ApiError::UserDisabled
            | ApiError::VoucherExpired
            | ApiError::VoucherWrongType(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyStreams(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unauthorized(_) | ApiError::TokenExpired | ApiError::InvalidCredentials => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::Forbidden(_) | ApiError::MissingScope(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::CodeNotFound => StatusCode::NOT_FOUND,
            ApiError::UsernameTaken
            | ApiError::CodeExists
            | ApiError::CodeEnded
            | ApiError::AlreadyRedeemed
            | ApiError::AlreadyRedeemedWith(_)
            | ApiError::IdempotencyInProgress
            | ApiError::AlreadyCancelled
            | ApiError::PerUserLimit
            | ApiError::OrderBelongsToAnotherUser
            | ApiError::InsufficientFunds
            | ApiError::ReferenceConflict
            | ApiError::VoucherUsed => StatusCode::CONFLICT,
            ApiError::SoldOut => StatusCode::GONE,
            ApiError::TryAgain(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(e) = self {
            tracing::error!(error = ?e, "internal error");
        }
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::TryAgain(_) | ApiError::IdempotencyInProgress => {
                response.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECONDS));
            }
            ApiError::TooManyRequests { retry_after_secs } => {
                response.insert_header((header::RETRY_AFTER, *retry_after_secs));
            }
            ApiError::TooManyStreams(_) => {
                response.insert_header((header::RETRY_AFTER, STREAM_RETRY_AFTER_SECONDS));
            }
            ApiError::RequestTimeout => {
                // The rest of the body may still be on its way: do not read it.
                response.insert_header((header::CONNECTION, "close"));
            }
            ApiError::Unauthorized(_) | ApiError::TokenExpired => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            _ => {}
        }
        response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static("application/json")));
        response.body(self.body_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_answers_429_with_retry_after_and_its_code() {
        let e = ApiError::TooManyRequests { retry_after_secs: 42 };
        let res = e.error_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("42"));
        assert_eq!(e.code(), "rate_limited");
    }

    #[test]
    fn the_answered_bytes_are_the_json_body_fixed_or_not() {
        let redemption = serde_json::json!({"redemption_id": 1, "code": "SPRING", "amount": 5, "balance": 5});
        let errors = [
            ApiError::SoldOut,
            ApiError::SoldOut,
            ApiError::AlreadyRedeemed,
            ApiError::AlreadyRedeemedWith(Box::new(redemption)),
            ApiError::Unauthorized("invalid token"),
            ApiError::InvalidInput("a \"quoted\" field".into()),
            ApiError::TooManyRequests { retry_after_secs: 3 },
        ];
        for e in errors {
            let expected = serde_json::to_vec(&e.body()).unwrap_or_default();
            assert_eq!(e.body_bytes(), expected, "{e:?}");
        }
        assert_eq!(
            ApiError::SoldOut.body_bytes(),
            &br#"{"error":{"code":"sold_out","message":"this code has been fully redeemed"}}"#[..]
        );
    }
}
