//! Ed25519 keys for the split: the redemption role signs tokens with a
//! private key (PKCS#8 PEM, made by `redeem-gateway keygen`) and publishes
//! the public half as a JWKS (GET /.well-known/jwks.json); the wallet role
//! fetches that set, keeps it, and never holds a signing key.

use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rand::RngCore;

/// RFC 8410's PKCS#8 v1 wrapping of a raw 32-byte Ed25519 seed: SEQUENCE {
/// version 0, AlgorithmIdentifier { id-Ed25519 }, OCTET STRING { OCTET STRING (32) } }.
const PKCS8_ED25519_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// A fresh Ed25519 private key from the OS CSPRNG, as a PKCS#8 PEM.
pub fn generate_pem() -> String {
    let mut der = PKCS8_ED25519_PREFIX.to_vec();
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    der.extend_from_slice(&seed);
    let body = base64::engine::general_purpose::STANDARD.encode(&der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
    format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"))
}

/// The signing key, and its public half as a JWK carrying `kid`.
pub struct SigningKey {
    pub encoding: EncodingKey,
    pub kid: String,
    pub public: Jwk,
    pub decoding: DecodingKey,
}

/// Parses an Ed25519 PKCS#8 PEM. The `kid` is `explicit_kid`, or the first
/// 16 characters of the public key's RFC 7638 thumbprint (stable across
/// restarts and processes, and changes with the key).
pub fn signing_key_from_pem(pem: &str, explicit_kid: Option<&str>) -> anyhow::Result<SigningKey> {
    let body: String = pem.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map_err(|e| anyhow::anyhow!("the signing key is not PEM: {e}"))?;
    if der.len() != 48 || der[..16] != PKCS8_ED25519_PREFIX {
        anyhow::bail!("the signing key is not an Ed25519 PKCS#8 private key (make one with `redeem-gateway keygen`)");
    }
    let encoding = EncodingKey::from_ed_der(&der);
    let mut public = Jwk::from_encoding_key(&encoding, Algorithm::EdDSA)
        .map_err(|e| anyhow::anyhow!("cannot derive the public key: {e}"))?;
    let kid = match explicit_kid {
        Some(kid) => kid.to_string(),
        None => {
            let print = public.thumbprint(ThumbprintHash::SHA256).map_err(|e| anyhow::anyhow!("{e}"))?;
            print.chars().take(16).collect()
        }
    };
    public.common.key_id = Some(kid.clone());
    public.common.public_key_use = Some(PublicKeyUse::Signature);
    let decoding = DecodingKey::from_jwk(&public).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(SigningKey { encoding, kid, public, decoding })
}

/// The Ed25519 keys of a fetched set, by `kid`. Keys of other types, or
/// without a `kid`, are skipped: nothing in them could be matched safely.
pub fn verifying_keys(set: &JwkSet) -> Vec<(String, DecodingKey)> {
    set.keys
        .iter()
        .filter(|k| matches!(&k.algorithm, jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_)))
        .filter_map(|k| Some((k.common.key_id.clone()?, DecodingKey::from_jwk(k).ok()?)))
        .collect()
}

/// Where the wallet role learns the issuer's public keys. One fetch at a
/// time, and at most one per `MIN_REFETCH`, so a flood of tokens with made-up
/// kids costs the issuer at most one request per interval.
pub struct RemoteKeys {
    url: String,
    client: reqwest::Client,
    last: tokio::sync::Mutex<Option<Instant>>,
}

pub const MIN_REFETCH: Duration = Duration::from_secs(2);
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// A JWKS larger than this is not ours.
const MAX_JWKS_BYTES: usize = 64 * 1024;

impl RemoteKeys {
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder().timeout(FETCH_TIMEOUT).build()?;
        Ok(RemoteKeys { url: url.to_string(), client, last: tokio::sync::Mutex::new(None) })
    }

    /// The set now, unless one was fetched within `MIN_REFETCH` (then None).
    pub async fn fetch_bounded(&self) -> Option<JwkSet> {
        let mut last = self.last.lock().await;
        if last.is_some_and(|at| at.elapsed() < MIN_REFETCH) {
            return None;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(set) => Some(set),
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "JWKS not fetched");
                None
            }
        }
    }

    async fn fetch(&self) -> anyhow::Result<JwkSet> {
        let res = self.client.get(&self.url).send().await?.error_for_status()?;
        let bytes = res.bytes().await?;
        anyhow::ensure!(bytes.len() <= MAX_JWKS_BYTES, "JWKS over {MAX_JWKS_BYTES} bytes");
        Ok(serde_json::from_slice(&bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_signs_and_its_published_half_verifies() {
        let key = signing_key_from_pem(&generate_pem(), None).expect("parses");
        assert_eq!(key.kid.len(), 16);
        let header = jsonwebtoken::Header::new(Algorithm::EdDSA);
        let claims = serde_json::json!({"sub": "1", "exp": 4_000_000_000u64});
        let token = jsonwebtoken::encode(&header, &claims, &key.encoding).expect("signs");
        let set = JwkSet { keys: vec![key.public.clone()] };
        let published = serde_json::to_value(&set).expect("json");
        assert!(published["keys"][0].get("d").is_none(), "the private part is never published");
        let keys = verifying_keys(&serde_json::from_value(published).expect("a JWKS"));
        assert_eq!(keys.len(), 1);
        let mut v = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        v.required_spec_claims.clear();
        v.validate_aud = false;
        assert!(jsonwebtoken::decode::<serde_json::Value>(&token, &keys[0].1, &v).is_ok());
        let other = signing_key_from_pem(&generate_pem(), None).expect("parses");
        assert_ne!(other.kid, key.kid);
        assert!(jsonwebtoken::decode::<serde_json::Value>(&token, &other.decoding, &v).is_err());
    }

    #[test]
    fn anything_but_an_ed25519_pkcs8_key_is_refused() {
        assert!(signing_key_from_pem("not a key", None).is_err());
        let short = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        assert!(signing_key_from_pem(short, None).is_err());
    }
}
