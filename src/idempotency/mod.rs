//! Safe retries: the `Idempotency-Key` header on `POST /codes/use` and
//! `POST /coupons/redeem` (Stripe's model). A key is the caller's (scoped per
//! user), kept 24 hours, and bound to the request it came with (a SHA-256 of
//! the route and the parsed body): the same key with the same request answers
//! the operation's outcome, the same key with another request is 422.
//!
//! Keys live in Postgres, beside the truth they describe: an outcome must
//! survive a Redis loss, and "did the earlier attempt commit?" is answered by
//! the same database that holds the commit. Only final answers are kept
//! (done, or refused for a reason of the operation); a 503 or a 429 is not,
//! and the retry runs again — after asking Postgres whether the earlier
//! attempt committed anyway (see `redemption::service::redeem_with_key`).

pub mod store;

use std::future::Future;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};

use crate::db::StoreError;
use crate::error::ApiError;
use crate::state::AppState;
use store::Begin;

pub const HEADER: &str = "Idempotency-Key";
/// Longest key accepted (Stripe's limit too).
pub const MAX_LEN: usize = 255;
/// Header on an answer replayed from a key's stored outcome.
pub const REPLAYED_HEADER: &str = "Idempotent-Replayed";

/// A key that has passed the rules: 1-255 characters of visible ASCII
/// (`!` to `~`; a UUID fits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &[u8]) -> Result<Self, ApiError> {
        if raw.is_empty() || raw.len() > MAX_LEN {
            return Err(ApiError::InvalidIdempotencyKey("Idempotency-Key must be 1-255 characters"));
        }
        if !raw.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err(ApiError::InvalidIdempotencyKey(
                "Idempotency-Key may contain only visible ASCII characters (no spaces)",
            ));
        }
        // Visible ASCII is valid UTF-8.
        Ok(IdempotencyKey(String::from_utf8_lossy(raw).into_owned()))
    }

    /// The request's key, if it sent one (one at most).
    pub fn from_request(req: &HttpRequest) -> Result<Option<Self>, ApiError> {
        let mut values = req.headers().get_all(HEADER);
        let Some(first) = values.next() else { return Ok(None) };
        if values.next().is_some() {
            return Err(ApiError::InvalidIdempotencyKey("send one Idempotency-Key header at most"));
        }
        Self::parse(first.as_bytes()).map(Some)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a request is, for telling "the same request again" from "another
/// request under the same key": the route and the body as parsed
/// (normalised, so "spring" and "SPRING" are one request).
pub fn fingerprint(route: &str, body: &serde_json::Value) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(route.as_bytes());
    hash.update([0]);
    // serde_json's maps are ordered by key: the same body gives the same bytes.
    hash.update(body.to_string().as_bytes());
    hash.finalize().to_vec()
}

/// How this request stands to earlier ones under its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The key's first use (or its earlier use expired).
    First,
    /// An earlier attempt under the key ended without a final answer; the key
    /// was first used at `since` (the database's clock).
    Again { since: chrono::DateTime<chrono::Utc> },
}

/// Runs `op` once per key: replays a kept answer, refuses a key in use or
/// reused with another request, else runs `op` and keeps its answer if final.
pub async fn run<F, Fut, T>(
    state: &AppState,
    user_id: i64,
    key: &IdempotencyKey,
    fingerprint: &[u8],
    op: F,
) -> Result<HttpResponse, ApiError>
where
    F: FnOnce(Attempt) -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
    T: serde::Serialize,
{
    let begun = {
        let db = state.pg.get().await.map_err(StoreError::from)?;
        store::begin(&db, user_id, key.as_str(), fingerprint, state.config.claim_grace).await?
    };
    let attempt = match begun {
        Begin::Fresh => Attempt::First,
        Begin::Again { since } => Attempt::Again { since },
        Begin::Replay { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            return Ok(HttpResponse::build(status).insert_header((REPLAYED_HEADER, "true")).json(body));
        }
        Begin::InProgress => return Err(ApiError::IdempotencyInProgress),
        Begin::Reused => return Err(ApiError::IdempotencyKeyReused),
    };
    let result = op(attempt).await;
    let kept = match &result {
        Ok(value) => Some((200, serde_json::to_value(value).map_err(ApiError::internal)?)),
        Err(e) if e.is_final() => Some((e_status(e), e.body())),
        Err(_) => None,
    };
    // If this fails the key stays locked until the claim grace period lapses;
    // a retry meanwhile hears 409 idempotency_in_progress, then runs again.
    let finished = async {
        let db = state.pg.get().await.map_err(StoreError::from)?;
        store::finish(&db, user_id, key.as_str(), kept.as_ref().map(|(s, b)| (*s, b))).await
    };
    if let Err(e) = finished.await {
        tracing::warn!(error = %e, "idempotency key outcome not kept");
    }
    let value = result?;
    Ok(HttpResponse::Ok().json(value))
}

fn e_status(e: &ApiError) -> i16 {
    use actix_web::ResponseError;
    e.status_code().as_u16() as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bounded_visible_ascii() {
        assert!(IdempotencyKey::parse(b"3f0c6a2e-8f1b-4c1e-9d2a-0b6f1f2b9c77").is_ok());
        assert!(IdempotencyKey::parse(&[b'k'; 255]).is_ok());
        for bad in [&b""[..], &[b'k'; 256], b"with space", b"tab\there", "caf\u{e9}".as_bytes(), b"nul\0"] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn fingerprints_tell_requests_apart_and_ignore_key_order() {
        let a = fingerprint("POST /codes/use", &serde_json::json!({"code": "SPRING"}));
        assert_eq!(a, fingerprint("POST /codes/use", &serde_json::json!({"code": "SPRING"})));
        assert_ne!(a, fingerprint("POST /codes/use", &serde_json::json!({"code": "SUMMER"})));
        assert_ne!(a, fingerprint("POST /coupons/redeem", &serde_json::json!({"code": "SPRING"})));
        let x: serde_json::Value = serde_json::from_str(r#"{"a":1,"b":2}"#).unwrap_or_default();
        let y: serde_json::Value = serde_json::from_str(r#"{"b":2,"a":1}"#).unwrap_or_default();
        assert_eq!(fingerprint("r", &x), fingerprint("r", &y));
    }
}
