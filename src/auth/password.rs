//! Password hashing with argon2id (the argon2 crate's defaults: m = 19 MiB,
//! t = 2, p = 1, OWASP's recommended minimum). Hashing is CPU-bound, so it
//! runs on the blocking pool, never on an async worker, and at most one hash
//! per CPU at a time, through the bounded, per-address fair queue of
//! `hash_queue`: a login storm is refused there (503) instead of starving
//! the database, the redemption path and other users' logins of CPU.

use std::sync::OnceLock;

use super::hash_queue::HashQueue;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::error::ApiError;

/// Hashes `password` once `queue` gives `address` (a client-address subject) a slot.
pub async fn hash(queue: &HashQueue, address: &str, password: String) -> Result<String, ApiError> {
    let _slot = queue.acquire(address).await?;
    actix_web::rt::task::spawn_blocking(move || hash_blocking(&password)).await.map_err(ApiError::internal)?
}

fn hash_blocking(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::internal(anyhow::anyhow!("hashing a password: {e}")))
}

/// Checks `password` against `stored`; with no stored hash (unknown user) it
/// checks against a dummy so both answers take the same time.
pub async fn verify(
    queue: &HashQueue,
    address: &str,
    password: String,
    stored: Option<String>,
) -> Result<bool, ApiError> {
    let _slot = queue.acquire(address).await?;
    actix_web::rt::task::spawn_blocking(move || {
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| dummy_hash().to_string());
        let ok = PasswordHash::new(&hash)
            .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false);
        ok && known
    })
    .await
    .map_err(ApiError::internal)
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_blocking("a password nobody has").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn a_hash_verifies_only_its_own_password() {
        let q = HashQueue::per_cpu(8, std::time::Duration::from_secs(30));
        let h = hash(&q, "ip:a", "correct horse battery".into()).await.ok();
        assert!(h.as_deref().is_some_and(|h| h.starts_with("$argon2id$")));
        assert!(verify(&q, "ip:a", "correct horse battery".into(), h.clone()).await.unwrap_or(false));
        assert!(!verify(&q, "ip:a", "wrong horse battery".into(), h).await.unwrap_or(true));
        assert!(!verify(&q, "ip:a", "a password nobody has".into(), None).await.unwrap_or(true));
    }
}
