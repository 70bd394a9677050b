//! Abuse limits kept in Redis, so they hold across every gateway: one GCRA
//! step per check (`lua/ratelimit.lua`, one key, one round trip), per bucket
//! and subject (a user id, a username or a client address). Also `ClientAddr`.

pub mod client_addr;

use std::time::Duration;

use crate::redis_conn::RedisConn;
use futures_util::future::join_all;
use redis::Script;
use sha2::{Digest, Sha256};

use crate::config::Config;
pub use crate::config::{Limit, RateLimits};
use crate::error::ApiError;
pub use client_addr::ClientAddr;

/// Requests refused, by bucket (a log line each would flood the logs under attack).
pub const RATE_LIMITED: &str = "rate_limited_total";
/// Checks that Redis did not answer (and that were let through).
pub const RATE_LIMITER_ERRORS: &str = "rate_limiter_errors_total";

/// What is being limited. Each has its own `Limit` from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// Login attempts: per (username, client address).
    Login,
    /// Login attempts: per client address.
    LoginAddress,
    /// Failed logins: per username, from every address.
    LoginFailures,
    /// Registrations: per client address.
    Register,
    /// Code redemption attempts: per user.
    CodeAttempt,
    /// Unknown codes tried: per user.
    FailedCode,
    /// Unknown codes tried: per client address.
    FailedCodeAddress,
}

impl Bucket {
    fn name(self) -> &'static str {
        match self {
            Bucket::Login => "login",
            Bucket::LoginAddress => "login_address",
            Bucket::LoginFailures => "login_failures",
            Bucket::Register => "register",
            Bucket::CodeAttempt => "code",
            Bucket::FailedCode => "failed_code",
            Bucket::FailedCodeAddress => "failed_code_address",
        }
    }

    pub fn limit(self, limits: &RateLimits) -> Limit {
        match self {
            Bucket::Login => limits.login,
            Bucket::LoginAddress => limits.login_address,
            Bucket::LoginFailures => limits.login_failures,
            Bucket::Register => limits.register,
            Bucket::CodeAttempt => limits.code,
            Bucket::FailedCode => limits.failed_code,
            Bucket::FailedCodeAddress => limits.failed_code_address,
        }
    }
}

/// How much a check takes from its bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// Would one more request pass? Records nothing (e.g. "is this user
    /// blocked from guessing?" before looking the code up).
    Peek,
    /// Take `n` requests' worth if it fits; a refusal records nothing.
    Take(u32),
    /// Record one event that already happened (e.g. an unknown code was
    /// tried), even past the limit, so concurrent guesses all count.
    Record,
    /// Give `n` requests' worth back (e.g. a login that succeeded was not a guess).
    Refund(u32),
}

impl Cost {
    /// (cost, force) as lua/ratelimit.lua takes them.
    fn script_args(self) -> (i64, &'static str) {
        match self {
            Cost::Peek => (0, "0"),
            Cost::Take(n) => (i64::from(n), "0"),
            Cost::Record => (1, "1"),
            Cost::Refund(n) => (-i64::from(n), "0"),
        }
    }
}

/// The answer of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Zero when allowed; else how long until one request fits.
    pub retry_after: Duration,
    /// Requests that would still fit right now.
    pub remaining: u32,
}

impl Decision {
    fn unlimited() -> Self {
        Decision { allowed: true, retry_after: Duration::ZERO, remaining: u32::MAX }
    }

    /// Whole seconds for `Retry-After`, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u32 {
        let ms = self.retry_after.as_millis().max(1);
        u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX)
    }

    /// `Ok` if allowed, else the 429 to answer.
    pub fn into_result(self) -> Result<(), ApiError> {
        if self.allowed {
            Ok(())
        } else {
            Err(ApiError::TooManyRequests { retry_after_secs: self.retry_after_secs() })
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("rate limiter: {0}")]
pub struct RateLimitError(#[from] redis::RedisError);

/// Checks and charges buckets in Redis. Cheap to clone (the connection is
/// multiplexed), so concurrent checks of one request share one round trip.
#[derive(Clone)]
pub struct RateLimiter {
    conn: RedisConn,
    script: Script,
    prefix: String,
    limits: RateLimits,
}

impl RateLimiter {
    /// Its own Redis connection (reconnecting), so a flood of limited
    /// requests does not queue behind the gate's claims; loads the script.
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let conn = crate::db::redis_manager(config).await?;
        let limiter = RateLimiter::new(conn, config.rate_limits, &config.redis_key_prefix);
        limiter.load_script().await?;
        Ok(limiter)
    }

    pub fn new(conn: RedisConn, limits: RateLimits, prefix: &str) -> Self {
        RateLimiter {
            conn,
            script: Script::new(include_str!("../../lua/ratelimit.lua")),
            prefix: prefix.to_string(),
            limits,
        }
    }

    /// SCRIPT LOAD, so the first EVALSHA hits (`invoke_async` reloads on NOSCRIPT too).
    pub async fn load_script(&self) -> Result<(), RateLimitError> {
        let mut conn = self.conn.clone();
        self.script.prepare_invoke().load_async(&mut conn).await?;
        Ok(())
    }

    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    /// Takes one request from `bucket` for `subject`.
    pub async fn check(&self, bucket: Bucket, subject: &str) -> Result<Decision, RateLimitError> {
        self.check_with(bucket, subject, Cost::Take(1)).await
    }

    /// One GCRA step with the given cost. Disabled limits answer at once.
    pub async fn check_with(&self, bucket: Bucket, subject: &str, cost: Cost) -> Result<Decision, RateLimitError> {
        if !self.limits.enabled {
            return Ok(Decision::unlimited());
        }
        let limit = bucket.limit(&self.limits);
        let (cost, force) = cost.script_args();
        let mut conn = self.conn.clone();
        let (allowed, retry_after_ms, remaining): (i64, i64, i64) = self
            .script
            .key(self.key(bucket, subject))
            .arg(limit.emission_interval_ms())
            .arg(limit.burst)
            .arg(cost)
            .arg(force)
            .invoke_async(&mut conn)
            .await?;
        Ok(Decision {
            allowed: allowed == 1,
            retry_after: Duration::from_millis(retry_after_ms.max(0) as u64),
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
        })
    }

    /// For handlers: every check at once (concurrently, so about one round
    /// trip), `Err(429)` with the longest wait if any refuses. Each check is
    /// its own step: one refusing does not undo the others' charges.
    ///
    /// Fails open: if Redis does not answer, the request goes on (logged).
    /// The limits guard against abuse; they are not what keeps the money right.
    pub async fn enforce(&self, checks: &[(Bucket, &str, Cost)]) -> Result<(), ApiError> {
        let decisions = join_all(checks.iter().map(|(b, s, c)| self.check_with(*b, s, *c))).await;
        let mut refused: Option<Decision> = None;
        for (decision, (bucket, _, _)) in decisions.into_iter().zip(checks) {
            match decision {
                Ok(d) if !d.allowed => {
                    tracing::info!(
                        bucket = bucket.name(),
                        retry_after_ms = d.retry_after.as_millis() as u64,
                        "rate limited"
                    );
                    if refused.is_none_or(|r| r.retry_after < d.retry_after) {
                        refused = Some(d);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    metrics::counter!(RATE_LIMITER_ERRORS, "bucket" => bucket.name()).increment(1);
                    tracing::warn!(error = %e, bucket = bucket.name(), "rate limiter unavailable; allowing");
                }
            }
        }
        refused.map_or(Ok(()), Decision::into_result)
    }

    /// For handlers: records an event that already happened (an unknown
    /// code) in each bucket. Never fails the request; errors are logged. A
    /// bucket pushed over its limit here refuses the *next* request.
    pub async fn record(&self, events: &[(Bucket, &str)]) {
        let results = join_all(events.iter().map(|(b, s)| self.check_with(*b, s, Cost::Record))).await;
        for (result, (bucket, _)) in results.into_iter().zip(events) {
            if let Err(e) = result {
                metrics::counter!(RATE_LIMITER_ERRORS, "bucket" => bucket.name()).increment(1);
                tracing::warn!(error = %e, bucket = bucket.name(), "rate limiter unavailable; failure not recorded");
            }
        }
    }

    /// `prefix:rl:bucket:subject`. A subject that is long or unusual (it
    /// may be a raw username from a login body) is replaced by its hash, so
    /// clients cannot grow keys or inject a Cluster hash tag.
    /// The one key a check of `bucket` for `subject` gives lua/ratelimit.lua.
    pub fn key(&self, bucket: Bucket, subject: &str) -> String {
        format!("{}:rl:{}:{}", self.prefix, bucket.name(), key_safe(subject))
    }
}

/// The subject for a signed-in user (from the token, never the body).
impl RateLimiter {
    pub fn enabled(&self) -> bool {
        self.limits.enabled
    }

    /// Before a request reaches the gate (a Redis claim, then Postgres): the
    /// user's attempt rate. Cheap answers (sold out from memory, not
    /// eligible) never get here, so a flood of them costs Redis nothing.
    pub async fn guard_attempt(&self, user_id: i64) -> Result<(), ApiError> {
        self.enforce(&[(Bucket::CodeAttempt, &user_subject(user_id), Cost::Take(1))]).await
    }

    /// Before looking up a code this gateway has never seen (a database
    /// query): is the user or the address out of guesses? Known codes skip
    /// this, so real traffic never pays for it.
    pub async fn guard_unknown_lookup(&self, user_id: i64, addr: &ClientAddr) -> Result<(), ApiError> {
        let (user, address) = (user_subject(user_id), addr.subject());
        self.enforce(&[(Bucket::FailedCode, &user, Cost::Peek), (Bucket::FailedCodeAddress, &address, Cost::Peek)])
            .await
    }

    /// The code did not exist: take one guess from the user's and the
    /// address's budgets. `Err` (429) once either is spent, so the answer to
    /// a guesser past the limit is 429, never whether the code exists.
    pub async fn charge_unknown_code(&self, user_id: i64, addr: &ClientAddr) -> Result<(), ApiError> {
        let (user, address) = (user_subject(user_id), addr.subject());
        self.enforce(&[
            (Bucket::FailedCode, &user, Cost::Take(1)),
            (Bucket::FailedCodeAddress, &address, Cost::Take(1)),
        ])
        .await
    }

    /// Before checking a password: one attempt from the (username, address)
    /// budget and from the address's. A guesser spends their own address's
    /// budgets, never the account owner's elsewhere: nobody can lock a user
    /// out. Returns how long to slow this attempt down: zero, unless the
    /// username has had more failures than its hourly ceiling from all
    /// addresses together (a distributed attack), then a delay that grows
    /// with the excess, up to `MAX_LOGIN_SLOWDOWN`. Never a refusal for it.
    pub async fn guard_login(&self, username: &str, addr: &ClientAddr) -> Result<Duration, ApiError> {
        let (pair, address, name) = (login_subject(username, addr), addr.subject(), username_subject(username));
        let checks =
            [(Bucket::Login, pair.as_str(), Cost::Take(1)), (Bucket::LoginAddress, address.as_str(), Cost::Take(1))];
        let (budgets, failures) =
            tokio::join!(self.enforce(&checks), self.check_with(Bucket::LoginFailures, &name, Cost::Peek));
        budgets?;
        Ok(match failures {
            Ok(d) if !d.allowed => {
                let interval = Bucket::LoginFailures.limit(&self.limits).emission_interval_ms();
                let over = (d.retry_after.as_millis() as u64).div_ceil(interval).max(1);
                metrics::counter!(RATE_LIMITED, "bucket" => Bucket::LoginFailures.name()).increment(1);
                (LOGIN_SLOWDOWN_STEP * u32::try_from(over).unwrap_or(u32::MAX)).min(MAX_LOGIN_SLOWDOWN)
            }
            Ok(_) => Duration::ZERO,
            Err(e) => {
                metrics::counter!(RATE_LIMITER_ERRORS, "bucket" => Bucket::LoginFailures.name()).increment(1);
                tracing::warn!(error = %e, "rate limiter unavailable; login not slowed");
                Duration::ZERO
            }
        })
    }

    /// After the password was checked: a success gives the (username,
    /// address) attempt back, so an owner's own logins never use up their
    /// budget; a failure counts against the username's hourly ceiling.
    pub async fn login_outcome(&self, username: &str, addr: &ClientAddr, ok: bool) {
        let result = if ok {
            self.check_with(Bucket::Login, &login_subject(username, addr), Cost::Refund(1)).await
        } else {
            self.check_with(Bucket::LoginFailures, &username_subject(username), Cost::Record).await
        };
        if let Err(e) = result {
            metrics::counter!(RATE_LIMITER_ERRORS, "bucket" => "login_outcome").increment(1);
            tracing::warn!(error = %e, "rate limiter unavailable; login outcome not recorded");
        }
    }

    /// Before hashing a new password: per address.
    pub async fn guard_register(&self, addr: &ClientAddr) -> Result<(), ApiError> {
        self.enforce(&[(Bucket::Register, &addr.subject(), Cost::Take(1))]).await
    }
}

/// Each failure over the username's ceiling adds this much to the wait.
pub const LOGIN_SLOWDOWN_STEP: Duration = Duration::from_millis(250);
/// The longest a login is slowed down: a delay, never a wall.
pub const MAX_LOGIN_SLOWDOWN: Duration = Duration::from_secs(5);

/// The subject of one address guessing one account.
pub fn login_subject(raw_username: &str, addr: &ClientAddr) -> String {
    format!("{}@{}", username_subject(raw_username), addr.subject())
}

pub fn user_subject(user_id: i64) -> String {
    format!("user:{user_id}")
}

/// The subject for a username as typed at login, normalised the way
/// usernames are stored (trimmed, lower-case), so "Sara" and "sara " share it.
pub fn username_subject(raw: &str) -> String {
    format!("name:{}", raw.trim().to_ascii_lowercase())
}

fn key_safe(subject: &str) -> String {
    let plain = subject.len() <= 64
        && !subject.is_empty()
        && subject.bytes().all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}' && b != b'#');
    if plain {
        return subject.to_string();
    }
    let digest = Sha256::digest(subject.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("#{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_subjects_stay_readable_and_odd_ones_are_hashed() {
        assert_eq!(key_safe("42"), "42");
        assert_eq!(key_safe("2001:db8::/64"), "2001:db8::/64");
        for odd in ["", "a{b}", "with space", &"x".repeat(65), "#abc"] {
            let k = key_safe(odd);
            assert!(k.starts_with('#') && k.len() == 33, "{odd:?} -> {k}");
        }
        assert_ne!(key_safe("a{b}"), key_safe("a{c}"));
    }

    #[test]
    fn subjects_of_different_kinds_never_collide() {
        // "1.2.3.4" is a valid username too.
        assert_eq!(username_subject(" Sara "), "name:sara");
        assert_ne!(
            username_subject("1.2.3.4"),
            ClientAddr("1.2.3.4".parse().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into())).subject()
        );
        assert_eq!(user_subject(42), "user:42");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let d = |ms| Decision { allowed: false, retry_after: Duration::from_millis(ms), remaining: 0 };
        assert_eq!(d(0).retry_after_secs(), 1);
        assert_eq!(d(1).retry_after_secs(), 1);
        assert_eq!(d(1000).retry_after_secs(), 1);
        assert_eq!(d(1001).retry_after_secs(), 2);
        assert!(matches!(d(5_500).into_result(), Err(ApiError::TooManyRequests { retry_after_secs: 6 })));
    }
}
