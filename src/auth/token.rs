//! JWTs: HS256 in the single process, EdDSA (Ed25519) in the split, where the
//! redemption role signs and publishes its public key and the wallet role
//! only verifies (see `keys`). Either way the algorithm is pinned (a token naming another one is refused,
//! `alg: none` included), `exp`, `iss` and `aud` are required and checked, and
//! the role comes only from a token this server signed.
//!
//! Key rotation by `kid`: tokens are issued with the current key's `kid` in
//! the header; verification picks the key by `kid` (the current one, or the
//! previous one while `JWT_PREVIOUS_SECRET` is set) and refuses unknown kids.
//! A token without a `kid` (issued before rotation existed) is checked against
//! the current key only, so it lives out its TTL and nothing more.
//!
//! Two kinds of token, never interchangeable: user tokens (`aud` =
//! JWT_AUDIENCE, a `role`) and service tokens (`aud` = SERVICE_JWT_AUDIENCE,
//! `kind: "service"`, `scope`), minted by `redeem-gateway token --service`.
//! Each kind is verified with its own audience and its own claim set, so a
//! token of one kind fails the other's check three ways over.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::keys::{signing_key_from_pem, verifying_keys, RemoteKeys};
use crate::config::{Config, ServeRole};
use crate::error::ApiError;
use jsonwebtoken::jwk::JwkSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

/// The `kind` claim. User tokens issued before it existed carry none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    User,
    Service,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, as a decimal string (RFC 7519 says `sub` is a string).
    pub sub: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<TokenKind>,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub user_id: i64,
    pub role: Role,
    /// The token's `exp` (Unix seconds): long-lived responses end there.
    pub expires_at: u64,
}

/// What a service may do; a service token lists its scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Redeem a coupon for a user's order (POST /coupons/redeem).
    CouponsRedeem,
    /// Cancel a coupon use (POST /coupons/redemptions/{id}/cancel).
    CouponsCancel,
    /// Credit a user's wallet (POST /wallet/credits).
    WalletCredit,
    /// Debit a user's wallet, with or without a voucher (POST /wallet/debits).
    WalletDebit,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::CouponsRedeem, Scope::CouponsCancel, Scope::WalletCredit, Scope::WalletDebit];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::CouponsRedeem => "coupons:redeem",
            Scope::CouponsCancel => "coupons:cancel",
            Scope::WalletCredit => "wallet:credit",
            Scope::WalletDebit => "wallet:debit",
        }
    }

    pub fn parse(raw: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

/// A service's name: 1-32 characters of `a-z 0-9 _ -`, starting with a letter
/// or digit. It namespaces the service's wallet references.
pub fn valid_service_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=32).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceClaims {
    /// `service:<name>`.
    pub sub: String,
    pub kind: TokenKind,
    /// Space-separated scopes (as in RFC 8693), e.g. `coupons:redeem wallet:debit`.
    pub scope: String,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceIdentity {
    pub name: String,
    /// Scopes this server knows; unknown ones in a token grant nothing.
    pub scopes: Vec<Scope>,
}

/// A key that verifies tokens carrying its `kid`.
struct VerifyingKey {
    kid: String,
    decoding: DecodingKey,
}

pub struct TokenKeys {
    /// Signs every new token; its `kid` goes in the header.
    current_kid: String,
    /// None in the wallet role: it verifies, never signs.
    encoding: Option<EncodingKey>,
    /// HS256 for the single process, EdDSA for the split: one per process,
    /// pinned, so a token naming the other is refused.
    algorithm: Algorithm,
    /// The current key first, then the previous one if configured; in the
    /// wallet role, the issuer's published keys (replaced on a refetch).
    verifying: std::sync::RwLock<Vec<VerifyingKey>>,
    /// What GET /.well-known/jwks.json publishes (the issuing role's public key).
    published: JwkSet,
    /// The wallet role: where the issuer's keys are fetched from.
    remote: Option<RemoteKeys>,
    validation: Validation,
    service_validation: Validation,
    ttl: Duration,
    service_ttl: Duration,
    issuer: String,
    audience: String,
    service_audience: String,
    /// User tokens that verified, by their exact text (see `VerifiedTokens`).
    verified: VerifiedTokens,
    leeway: u64,
}

/// User tokens that already verified, with what they said: a hit skips the
/// HMAC and the JSON parse, and still refuses a token whose `exp` (plus the
/// leeway) has passed. Only the signature check is saved: the disabled set is
/// checked on every request by the extractor, as before. A token that verified
/// once verifies again until it expires *under the same keys*: the wallet role
/// replaces its key set when it learns the issuer's keys again (`learn_kid`),
/// and that empties the cache, so a token of a withdrawn key is refused at
/// once. Bounded: when full it is emptied (tokens simply verify again), so a
/// stranger sending many tokens costs memory only up to the bound.
struct VerifiedTokens {
    /// Keyed by the whole token (a signature alone would let a forged
    /// header and payload ride on another token's signature), hashed with a
    /// seeded fast hasher: only tokens that verified are ever inserted, so
    /// a stranger cannot choose the keys.
    map: std::sync::RwLock<std::collections::HashMap<Box<str>, Identity, foldhash::fast::RandomState>>,
    max: usize,
    /// Bumped when the key set changes; a verification that began under an
    /// older set is not kept (it may have used a key now withdrawn).
    keys_generation: std::sync::atomic::AtomicU64,
}

impl VerifiedTokens {
    fn new(max: usize) -> Self {
        Self { map: Default::default(), max, keys_generation: Default::default() }
    }

    fn get(&self, token: &str) -> Option<Identity> {
        self.map.read().ok()?.get(token).copied()
    }

    /// The key set's generation, read before verifying a token.
    fn generation(&self) -> u64 {
        self.keys_generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Keeps a token verified under key generation `generation`, unless the
    /// keys changed since (checked under the lock `keys_changed` clears under).
    fn put(&self, token: &str, identity: Identity, generation: u64) {
        if self.max == 0 {
            return;
        }
        if let Ok(mut map) = self.map.write() {
            if self.generation() != generation {
                return;
            }
            if map.len() >= self.max {
                map.clear();
            }
            map.insert(token.into(), identity);
        }
    }

    /// The key set was replaced: forget every token verified under the old one.
    fn keys_changed(&self) {
        self.keys_generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut map) = self.map.write() {
            map.clear();
        }
    }
}

impl TokenKeys {
    /// HS256 with `JWT_SECRET` (and `JWT_PREVIOUS_SECRET`): the single process.
    pub fn new(config: &Config) -> Self {
        let current_kid = config.jwt_kid.clone().unwrap_or_else(|| kid_of(&config.jwt_secret));
        let mut verifying = vec![VerifyingKey {
            kid: current_kid.clone(),
            decoding: DecodingKey::from_secret(config.jwt_secret.as_bytes()),
        }];
        if let Some(previous) = &config.jwt_previous_secret {
            let kid = config.jwt_previous_kid.clone().unwrap_or_else(|| kid_of(previous));
            // Two keys under one kid would make the choice ambiguous; the current one wins.
            if kid != current_kid {
                verifying.push(VerifyingKey { kid, decoding: DecodingKey::from_secret(previous.as_bytes()) });
            } else {
                tracing::warn!("JWT_PREVIOUS_SECRET has the current key's kid; ignoring it");
            }
        }
        let encoding = Some(EncodingKey::from_secret(config.jwt_secret.as_bytes()));
        Self::assemble(config, Algorithm::HS256, current_kid, encoding, verifying, None)
    }

    /// The keys of the process's role: HS256 for `all`; for `redemption` the
    /// Ed25519 key in `JWT_SIGNING_KEY_FILE` (signs, and is published); for
    /// `wallet` no key of its own, only the issuer's, fetched from `JWKS_URL`.
    pub fn for_role(config: &Config) -> anyhow::Result<Self> {
        match config.role {
            ServeRole::All => Ok(Self::new(config)),
            ServeRole::Redemption => {
                let path = config.split.jwt_signing_key_file.as_deref().unwrap_or_default();
                let pem = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read JWT_SIGNING_KEY_FILE {path}: {e}"))?;
                Self::ed25519(config, &pem)
            }
            ServeRole::Wallet => {
                let url = config.split.jwks_url.as_deref().unwrap_or_default();
                let mut keys = Self::assemble(config, Algorithm::EdDSA, String::new(), None, vec![], None);
                keys.remote = Some(RemoteKeys::new(url)?);
                Ok(keys)
            }
        }
    }

    /// EdDSA with this private key (PKCS#8 PEM), its public half published.
    pub fn ed25519(config: &Config, pem: &str) -> anyhow::Result<Self> {
        let key = signing_key_from_pem(pem, config.jwt_kid.as_deref())?;
        let verifying = vec![VerifyingKey { kid: key.kid.clone(), decoding: key.decoding }];
        let published = JwkSet { keys: vec![key.public] };
        Ok(Self::assemble(config, Algorithm::EdDSA, key.kid, Some(key.encoding), verifying, Some(published)))
    }

    fn assemble(
        config: &Config,
        algorithm: Algorithm,
        current_kid: String,
        encoding: Option<EncodingKey>,
        verifying: Vec<VerifyingKey>,
        published: Option<JwkSet>,
    ) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&config.jwt_issuer]);
        validation.set_audience(&[&config.jwt_audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.leeway = config.jwt_leeway_seconds;
        validation.validate_exp = true;
        let mut service_validation = validation.clone();
        service_validation.set_audience(&[&config.service_jwt_audience]);
        TokenKeys {
            current_kid,
            encoding,
            algorithm,
            verifying: std::sync::RwLock::new(verifying),
            published: published.unwrap_or(JwkSet { keys: vec![] }),
            remote: None,
            validation,
            service_validation,
            ttl: config.jwt_ttl,
            service_ttl: config.service_token_ttl,
            issuer: config.jwt_issuer.clone(),
            verified: VerifiedTokens::new(config.token_cache_size),
            leeway: config.jwt_leeway_seconds,
            audience: config.jwt_audience.clone(),
            service_audience: config.service_jwt_audience.clone(),
        }
    }

    /// The public keys this process signs with (empty under HS256: a shared
    /// secret is never published).
    pub fn published(&self) -> &JwkSet {
        &self.published
    }

    /// True when `learn_kid` has work to do for this token: only in the
    /// wallet role, for a kid it does not hold. Cheap; no I/O.
    pub fn must_learn(&self, token: &str) -> bool {
        if self.remote.is_none() {
            return false;
        }
        let Some(kid) = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid) else { return false };
        !self.verifying.read().map(|v| v.iter().any(|k| k.kid == kid)).unwrap_or(false)
    }

    /// The wallet role, on a token whose `kid` it does not know: fetch the
    /// issuer's keys again (bounded, see `RemoteKeys`) and keep them. A no-op
    /// elsewhere, or when the kid is known.
    pub async fn learn_kid(&self, token: &str) {
        let Some(remote) = &self.remote else { return };
        let Some(kid) = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid) else { return };
        let known = self.verifying.read().map(|v| v.iter().any(|k| k.kid == kid)).unwrap_or(false);
        if known {
            return;
        }
        if let Some(set) = remote.fetch_bounded().await {
            let keys: Vec<VerifyingKey> =
                verifying_keys(&set).into_iter().map(|(kid, decoding)| VerifyingKey { kid, decoding }).collect();
            tracing::info!(keys = keys.len(), "issuer's keys fetched");
            if let Ok(mut v) = self.verifying.write() {
                *v = keys;
            }
            self.verified.keys_changed();
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Lifetime of the service tokens this process mints.
    pub fn service_ttl(&self) -> Duration {
        self.service_ttl
    }

    /// The `kid` new tokens carry.
    pub fn current_kid(&self) -> &str {
        &self.current_kid
    }

    /// The key for a token's `kid`: exactly that kid, or the current key for
    /// a token with none. An unknown kid gets no key at all.
    fn key_for(&self, token: &str) -> Result<DecodingKey, ApiError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| ApiError::Unauthorized("invalid token"))?;
        if header.alg != self.algorithm {
            return Err(ApiError::Unauthorized("invalid token"));
        }
        let verifying = self.verifying.read().map_err(|_| ApiError::Unauthorized("invalid token"))?;
        let key = match header.kid.as_deref() {
            // Only the HS256 key predates kids; an EdDSA token always names its key.
            None if self.algorithm == Algorithm::HS256 => verifying.first(),
            None => None,
            Some(kid) => verifying.iter().find(|k| k.kid == kid),
        };
        key.map(|k| k.decoding.clone()).ok_or(ApiError::Unauthorized("invalid token"))
    }

    pub fn issue(&self, user_id: i64, role: Role) -> Result<String, ApiError> {
        let now = unix_now();
        let claims = Claims {
            sub: user_id.to_string(),
            role,
            kind: Some(TokenKind::User),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            exp: now + self.ttl.as_secs(),
        };
        self.sign(&claims)
    }

    fn sign(&self, claims: &impl Serialize) -> Result<String, ApiError> {
        let encoding = self
            .encoding
            .as_ref()
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("this role verifies tokens, it does not sign them")))?;
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.current_kid.clone());
        jsonwebtoken::encode(&header, claims, encoding).map_err(ApiError::internal)
    }

    /// A service token for `name` with `scopes`, valid for SERVICE_TOKEN_TTL_SECONDS.
    pub fn issue_service(&self, name: &str, scopes: &[Scope]) -> Result<String, ApiError> {
        if !valid_service_name(name) {
            return Err(ApiError::InvalidInput("a service name is 1-32 characters of a-z 0-9 _ -".into()));
        }
        if scopes.is_empty() {
            return Err(ApiError::InvalidInput("a service token needs at least one scope".into()));
        }
        let now = unix_now();
        let scope: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
        let claims = ServiceClaims {
            sub: format!("service:{name}"),
            kind: TokenKind::Service,
            scope: scope.join(" "),
            iss: self.issuer.clone(),
            aud: self.service_audience.clone(),
            iat: now,
            exp: now + self.service_ttl.as_secs(),
        };
        self.sign(&claims)
    }

    /// A service token's identity. User tokens fail here: wrong audience,
    /// no `kind: "service"`, no `scope`.
    pub fn verify_service(&self, token: &str) -> Result<ServiceIdentity, ApiError> {
        let key = self.key_for(token)?;
        let data = jsonwebtoken::decode::<ServiceClaims>(token, &key, &self.service_validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::ExpiredSignature => ApiError::TokenExpired,
            _ => ApiError::Unauthorized("invalid token"),
        })?;
        let claims = data.claims;
        let name = claims
            .sub
            .strip_prefix("service:")
            .filter(|n| valid_service_name(n))
            .ok_or(ApiError::Unauthorized("invalid token subject"))?;
        if claims.kind != TokenKind::Service {
            return Err(ApiError::Unauthorized("invalid token"));
        }
        let scopes = claims.scope.split_ascii_whitespace().filter_map(Scope::parse).collect();
        Ok(ServiceIdentity { name: name.to_string(), scopes })
    }

    /// A user token's identity; from the cache of verified tokens while its
    /// `exp` (plus the leeway, as jsonwebtoken judges it) has not passed.
    pub fn verify(&self, token: &str) -> Result<Identity, ApiError> {
        if let Some(identity) = self.verified.get(token) {
            if identity.expires_at.saturating_add(self.leeway) >= unix_now() {
                return Ok(identity);
            }
        }
        let generation = self.verified.generation();
        let identity = self.verify_signed(token)?;
        self.verified.put(token, identity, generation);
        Ok(identity)
    }

    fn verify_signed(&self, token: &str) -> Result<Identity, ApiError> {
        let key = self.key_for(token)?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation).map_err(|e| match e.kind() {
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
        if data.claims.kind == Some(TokenKind::Service) {
            return Err(ApiError::Unauthorized("invalid token"));
        }
        Ok(Identity { user_id, role: data.claims.role, expires_at: data.claims.exp })
    }
}

/// A key's id when none is configured: the first 8 hex digits of
/// SHA-256("redeem-gateway/jwt-kid:" + secret). Stable across restarts and
/// gateways, and it reveals nothing usable about a secret of 32+ bytes.
/// To compute it by hand: `printf 'redeem-gateway/jwt-kid:%s' "$JWT_SECRET" | sha256sum | cut -c1-8`.
pub fn kid_of(secret: &str) -> String {
    let digest = Sha256::new().chain_update(b"redeem-gateway/jwt-kid:").chain_update(secret.as_bytes()).finalize();
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const SECRET: &str = "unit-test-secret-0123456789abcdef0123";
    const OLD_SECRET: &str = "old-unit-test-secret-0123456789abcdef0";

    fn keys() -> TokenKeys {
        keys_with(&[])
    }

    fn keys_with(extra: &[(&str, &str)]) -> TokenKeys {
        let extra: Vec<(String, String)> = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let config = Config::from_lookup(|name| {
            if let Some((_, v)) = extra.iter().find(|(k, _)| k == name) {
                return Some(v.clone());
            }
            match name {
                "DATABASE_URL" => Some("postgres://h/db".into()),
                "REDIS_URL" => Some("redis://h/".into()),
                "JWT_SECRET" => Some(SECRET.into()),
                "JWT_LEEWAY_SECONDS" => Some("0".into()),
                _ => None,
            }
        });
        TokenKeys::new(&config.expect("valid test config"))
    }

    fn good_claims() -> serde_json::Value {
        let now = unix_now();
        serde_json::json!({"sub":"7","role":"user","iss":"redeem-gateway","aud":"redeem-gateway","iat":now,"exp":now+60})
    }

    #[test]
    fn a_cached_token_is_still_refused_once_it_expires() {
        let keys = keys();
        let now = unix_now();
        let claims = serde_json::json!({"sub":"7","role":"user","iss":"redeem-gateway","aud":"redeem-gateway","iat":now,"exp":now+1});
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid_of(SECRET));
        let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap();
        assert_eq!(keys.verify(&token).map(|i| i.user_id).ok(), Some(7));
        assert!(keys.verified.get(&token).is_some(), "kept after verifying");
        assert_eq!(keys.verify(&token).map(|i| i.user_id).ok(), Some(7), "served from the cache");
        std::thread::sleep(std::time::Duration::from_millis(2_100));
        assert!(matches!(keys.verify(&token), Err(ApiError::TokenExpired)), "expiry still judged on a hit");
    }

    #[test]
    fn a_bad_token_is_never_cached_and_the_cache_is_bounded() {
        let keys = keys_with(&[("TOKEN_CACHE_SIZE", "2")]);
        let bad = format!("{}x", sign_with_kid(Some(&kid_of(SECRET)), SECRET));
        assert!(keys.verify(&bad).is_err());
        assert!(keys.verified.get(&bad).is_none());
        for user in 1..=5 {
            let token = keys.issue(user, Role::User).unwrap();
            assert_eq!(keys.verify(&token).map(|i| i.user_id).ok(), Some(user));
            assert!(keys.verified.map.read().unwrap().len() <= 2);
        }
    }

    #[test]
    fn a_change_of_keys_forgets_every_cached_token_and_a_verification_begun_before_it() {
        let keys = keys();
        let token = keys.issue(7, Role::User).unwrap();
        keys.verify(&token).unwrap();
        assert!(keys.verified.get(&token).is_some());
        // What learn_kid does once it has replaced the key set.
        keys.verified.keys_changed();
        assert!(keys.verified.get(&token).is_none(), "a token of a withdrawn key must verify again");
        // A verification that began under the old keys finishes after the change: not kept.
        let before = keys.verified.generation();
        keys.verified.keys_changed();
        let identity = keys.verify_signed(&token).unwrap();
        keys.verified.put(&token, identity, before);
        assert!(keys.verified.get(&token).is_none());
        keys.verify(&token).unwrap();
        assert!(keys.verified.get(&token).is_some(), "kept again under the current keys");
    }

    fn sign_with_kid(kid: Option<&str>, secret: &str) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, &good_claims(), &EncodingKey::from_secret(secret.as_bytes())).unwrap_or_default()
    }

    #[test]
    fn issued_tokens_carry_the_current_kid() {
        let k = keys();
        let t = k.issue(1, Role::User).unwrap_or_default();
        let kid = jsonwebtoken::decode_header(&t).ok().and_then(|h| h.kid);
        assert_eq!(kid.as_deref(), Some(kid_of(SECRET).as_str()));
        assert_eq!(kid_of(SECRET).len(), 8);
        assert_ne!(kid_of(SECRET), kid_of(OLD_SECRET));
        let explicit = keys_with(&[("JWT_KID", "2026-05")]);
        assert_eq!(explicit.current_kid(), "2026-05");
        assert!(explicit.verify(&explicit.issue(1, Role::User).unwrap_or_default()).is_ok());
    }

    #[test]
    fn a_previous_key_verifies_its_tokens_only_while_configured() {
        // Before rotation: the old key is current and issues a token.
        let before = keys_with(&[("JWT_SECRET", OLD_SECRET)]);
        let old_token = before.issue(7, Role::User).unwrap_or_default();
        // Rotated: new current key, the old one kept for verification.
        let rotated = keys_with(&[("JWT_PREVIOUS_SECRET", OLD_SECRET)]);
        assert!(rotated.verify(&old_token).is_ok(), "the previous key's token must still verify");
        let new_token = rotated.issue(8, Role::User).unwrap_or_default();
        assert!(rotated.verify(&new_token).is_ok());
        assert!(before.verify(&new_token).is_err(), "the old deployment does not know the new kid");
        // Previous key removed: its tokens are refused.
        assert!(keys().verify(&old_token).is_err());
    }

    #[test]
    fn an_explicit_previous_kid_is_honoured() {
        let before = keys_with(&[("JWT_SECRET", OLD_SECRET), ("JWT_KID", "k1")]);
        let old_token = before.issue(7, Role::User).unwrap_or_default();
        let rotated = keys_with(&[("JWT_KID", "k2"), ("JWT_PREVIOUS_SECRET", OLD_SECRET), ("JWT_PREVIOUS_KID", "k1")]);
        assert!(rotated.verify(&old_token).is_ok());
    }

    #[test]
    fn unknown_kids_are_refused_even_with_a_valid_signature() {
        let k = keys_with(&[("JWT_PREVIOUS_SECRET", OLD_SECRET)]);
        assert!(k.verify(&sign_with_kid(Some(&kid_of(SECRET)), SECRET)).is_ok(), "control");
        assert!(k.verify(&sign_with_kid(Some("nope"), SECRET)).is_err());
        // A known kid with the other key's signature is refused too.
        assert!(k.verify(&sign_with_kid(Some(&kid_of(SECRET)), OLD_SECRET)).is_err());
    }

    #[test]
    fn a_token_without_kid_is_checked_against_the_current_key_only() {
        let k = keys_with(&[("JWT_PREVIOUS_SECRET", OLD_SECRET)]);
        assert!(k.verify(&sign_with_kid(None, SECRET)).is_ok(), "pre-rotation tokens live out their TTL");
        assert!(k.verify(&sign_with_kid(None, OLD_SECRET)).is_err(), "never tried against the previous key");
    }

    fn sign(claims: serde_json::Value, alg: Algorithm, secret: &[u8]) -> String {
        jsonwebtoken::encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret)).unwrap_or_default()
    }

    #[test]
    fn a_token_we_issued_verifies_with_its_user_and_role() {
        let k = keys();
        let t = k.issue(42, Role::Admin).unwrap_or_default();
        let id = k.verify(&t).ok();
        assert!(matches!(id, Some(Identity { user_id: 42, role: Role::Admin, .. })));
    }

    #[test]
    fn user_and_service_tokens_never_pass_as_each_other() {
        let k = keys();
        let service = k.issue_service("checkout", &[Scope::CouponsRedeem, Scope::WalletDebit]).unwrap_or_default();
        let id = k.verify_service(&service).ok();
        assert_eq!(
            id,
            Some(ServiceIdentity { name: "checkout".into(), scopes: vec![Scope::CouponsRedeem, Scope::WalletDebit] })
        );
        assert!(k.verify(&service).is_err(), "a service token is not a user token");
        for role in [Role::User, Role::Admin] {
            let user = k.issue(7, role).unwrap_or_default();
            assert!(k.verify_service(&user).is_err(), "a {role:?} token is not a service token");
        }
        // Hand-made tokens signed with the right key but mixing the kinds.
        let now = unix_now();
        let aud = "redeem-gateway:services";
        let mixed = [
            (
                "user claims, service audience",
                serde_json::json!({"sub":"7","role":"admin","iss":"redeem-gateway","aud":aud,"iat":now,"exp":now+60}),
            ),
            (
                "service claims, user audience",
                serde_json::json!({"sub":"service:x","kind":"service","scope":"wallet:debit","iss":"redeem-gateway","aud":"redeem-gateway","iat":now,"exp":now+60}),
            ),
            (
                "service audience, kind user",
                serde_json::json!({"sub":"service:x","kind":"user","scope":"wallet:debit","iss":"redeem-gateway","aud":aud,"iat":now,"exp":now+60}),
            ),
            (
                "bad service name",
                serde_json::json!({"sub":"service:X Y","kind":"service","scope":"wallet:debit","iss":"redeem-gateway","aud":aud,"iat":now,"exp":now+60}),
            ),
        ];
        for (name, claims) in mixed {
            let t = sign(claims, Algorithm::HS256, SECRET.as_bytes());
            assert!(k.verify_service(&t).is_err() && k.verify(&t).is_err(), "{name} was accepted");
        }
        let kinded_user = serde_json::json!({"sub":"7","role":"user","kind":"service","iss":"redeem-gateway","aud":"redeem-gateway","iat":now,"exp":now+60});
        assert!(k.verify(&sign(kinded_user, Algorithm::HS256, SECRET.as_bytes())).is_err());
        assert!(k.issue_service("Bad Name", &[Scope::WalletDebit]).is_err());
        assert!(k.issue_service("topup", &[]).is_err());
    }

    #[test]
    fn tokens_with_any_defect_are_refused() {
        let k = keys();
        let now = unix_now();
        let good = serde_json::json!({"sub":"7","role":"user","iss":"redeem-gateway","aud":"redeem-gateway","iat":now,"exp":now+60});
        let secret = SECRET.as_bytes();
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
