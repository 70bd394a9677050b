//! HS256 JWTs. The algorithm is pinned (a token naming another one is refused,
//! `alg: none` included), `exp`, `iss` and `aud` are required and checked, and
//! the role comes only from a token this server signed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, as a decimal string (RFC 7519 says `sub` is a string).
    pub sub: String,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub user_id: i64,
    pub role: Role,
}

pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
    issuer: String,
    audience: String,
}

impl TokenKeys {
    pub fn new(config: &Config) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&config.jwt_issuer]);
        validation.set_audience(&[&config.jwt_audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.leeway = config.jwt_leeway_seconds;
        validation.validate_exp = true;
        TokenKeys {
            encoding: EncodingKey::from_secret(config.jwt_secret.as_bytes()),
            decoding: DecodingKey::from_secret(config.jwt_secret.as_bytes()),
            validation,
            ttl: config.jwt_ttl,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn issue(&self, user_id: i64, role: Role) -> Result<String, ApiError> {
        let now = unix_now();
        let claims = Claims {
            sub: user_id.to_string(),
            role,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            exp: now + self.ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(ApiError::internal)
    }

    pub fn verify(&self, token: &str) -> Result<Identity, ApiError> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => ApiError::TokenExpired,
                _ => ApiError::Unauthorized("invalid token"),
            })?;
        let user_id = data
            .claims
            .sub
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or(ApiError::Unauthorized("invalid token subject"))?;
        Ok(Identity { user_id, role: data.claims.role })
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn keys() -> TokenKeys {
        let config = Config::from_lookup(|name| match name {
            "DATABASE_URL" => Some("postgres://h/db".into()),
            "REDIS_URL" => Some("redis://h/".into()),
            "JWT_SECRET" => Some("unit-test-secret-0123456789abcdef0123".into()),
            "JWT_LEEWAY_SECONDS" => Some("0".into()),
            _ => None,
        });
        TokenKeys::new(&config.expect("valid test config"))
    }

    fn sign(claims: serde_json::Value, alg: Algorithm, secret: &[u8]) -> String {
        jsonwebtoken::encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret)).unwrap_or_default()
    }

    #[test]
    fn a_token_we_issued_verifies_with_its_user_and_role() {
        let k = keys();
        let t = k.issue(42, Role::Admin).unwrap_or_default();
        let id = k.verify(&t).ok();
        assert!(matches!(id, Some(Identity { user_id: 42, role: Role::Admin })));
    }

    #[test]
    fn tokens_with_any_defect_are_refused() {
        let k = keys();
        let now = unix_now();
        let good = serde_json::json!({"sub":"7","role":"user","iss":"redeem-gateway","aud":"redeem-gateway","iat":now,"exp":now+60});
        let secret = b"unit-test-secret-0123456789abcdef0123";
        let mut cases = vec![
            ("wrong secret", sign(good.clone(), Algorithm::HS256, b"another-secret-0123456789abcdef0123456")),
            ("HS512", sign(good.clone(), Algorithm::HS512, secret)),
            ("garbage", "not.a.token".to_string()),
        ];
        for (field, value) in [
            ("exp", serde_json::json!(now - 120)),
            ("iss", serde_json::json!("someone-else")),
            ("aud", serde_json::json!("another-service")),
            ("sub", serde_json::json!("not-a-number")),
            ("role", serde_json::json!("superuser")),
        ] {
            let mut c = good.clone();
            c[field] = value;
            cases.push((field, sign(c, Algorithm::HS256, secret)));
        }
        let mut no_exp = good.clone();
        no_exp.as_object_mut().map(|o| o.remove("exp"));
        cases.push(("no exp", sign(no_exp, Algorithm::HS256, secret)));
        // alg: none, hand-made: header {"alg":"none"}, no signature.
        cases.push(("alg none", "eyJhbGciOiJub25lIn0.eyJzdWIiOiI3In0.".to_string()));
        assert!(k.verify(&sign(good, Algorithm::HS256, secret)).is_ok(), "the control case must pass");
        for (name, token) in cases {
            assert!(k.verify(&token).is_err(), "{name} was accepted");
        }
    }
}
