//! The Redis rate limiter against the real Redis from scripts/services.sh:
//! GCRA burst and retry-after, independent subjects, peek and forced
//! charges, and one limit shared by two gateways (two connections).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use redeem_gateway::config::Config;
use redeem_gateway::error::ApiError;
use redeem_gateway::ratelimit::{Bucket, Cost, RateLimiter};
use redeem_gateway::redis_conn::RedisConn;

fn redis_url() -> String {
    let _ = dotenvy::dotenv();
    std::env::var("TEST_REDIS_URL")
        .or_else(|_| std::env::var("REDIS_URL"))
        .unwrap_or_else(|_| "redis://127.0.0.1:6479/".into())
}

/// A config with a fresh key prefix and the given overrides (no Postgres is touched).
fn config(overrides: &[(&str, &str)]) -> Config {
    let prefix = format!("t_rl_{:016x}", rand::random::<u64>());
    let url = redis_url();
    // TEST_REDIS_CLUSTER_NODES: the same checks against the Redis Cluster.
    let nodes = std::env::var("TEST_REDIS_CLUSTER_NODES").unwrap_or_default();
    let base = [
        ("REDIS_CLUSTER_NODES", nodes.as_str()),
        ("APP_ENV", "dev"),
        ("DATABASE_URL", "postgres://unused@127.0.0.1:1/unused"),
        ("REDIS_URL", url.as_str()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
        ("JWT_SECRET", "ratelimit-test-secret-0123456789abcdef"),
    ];
    Config::from_lookup(|name| {
        overrides.iter().chain(base.iter()).find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    })
    .expect("test config")
}

async fn limiter(config: &Config) -> RateLimiter {
    RateLimiter::connect(config).await.expect("cannot reach the test Redis; run `scripts/services.sh up`")
}

async fn keys_under(config: &Config) -> Vec<String> {
    let mut conn = RedisConn::connect(config).await.unwrap();
    redis::cmd("KEYS").arg(format!("{}:*", config.redis_key_prefix)).query_async(&mut conn).await.unwrap()
}

#[tokio::test]
async fn a_bucket_allows_its_burst_then_refuses_with_a_sensible_retry_after() {
    // 3 per minute: one request every 20 s once the burst is spent.
    let config = config(&[("RATE_CODE_PER_MINUTE", "3")]);
    let rl = limiter(&config).await;
    for i in 0..3 {
        let d = rl.check(Bucket::CodeAttempt, "sara").await.unwrap();
        assert!(d.allowed, "request {i} of the burst refused");
        assert_eq!(d.remaining, 2 - i);
    }
    let refused = rl.check(Bucket::CodeAttempt, "sara").await.unwrap();
    assert!(!refused.allowed);
    assert!(
        refused.retry_after > Duration::from_secs(18) && refused.retry_after <= Duration::from_secs(20),
        "retry after {:?}",
        refused.retry_after
    );
    assert!((19..=20).contains(&refused.retry_after_secs()));
    // A refusal takes nothing: the wait does not grow with more attempts.
    let again = rl.check(Bucket::CodeAttempt, "sara").await.unwrap();
    assert!(!again.allowed && again.retry_after <= refused.retry_after);
    // The key expires once the bucket would be full again (3 × 20 s).
    let mut conn = RedisConn::connect(&config).await.unwrap();
    let key = format!("{}:rl:code:sara", config.redis_key_prefix);
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "pttl {ttl}");
}

#[tokio::test]
async fn the_bucket_refills_at_the_emission_interval() {
    // 600 per minute: a burst of 600, then one every 100 ms. Draining the
    // burst takes a little time, during which a request or two refills.
    let config = config(&[("RATE_CODE_PER_MINUTE", "600")]);
    let rl = limiter(&config).await;
    let mut allowed = 0;
    while rl.check(Bucket::CodeAttempt, "1").await.unwrap().allowed {
        allowed += 1;
        assert!(allowed <= 650, "the burst never ended");
    }
    assert!((600..=620).contains(&allowed), "allowed {allowed}");
    let refused = rl.check(Bucket::CodeAttempt, "1").await.unwrap();
    assert!(refused.retry_after <= Duration::from_millis(100), "{:?}", refused.retry_after);
    tokio::time::sleep(refused.retry_after + Duration::from_millis(20)).await;
    assert!(rl.check(Bucket::CodeAttempt, "1").await.unwrap().allowed, "one interval refills one request");
}

#[tokio::test]
async fn buckets_are_independent_per_subject_and_per_bucket() {
    let config = config(&[("RATE_LOGIN_PER_USERNAME_ADDRESS_PER_HOUR", "2"), ("RATE_REGISTER_PER_HOUR", "2")]);
    let rl = limiter(&config).await;
    for _ in 0..2 {
        assert!(rl.check(Bucket::Login, "10.0.0.1").await.unwrap().allowed);
    }
    assert!(!rl.check(Bucket::Login, "10.0.0.1").await.unwrap().allowed);
    assert!(rl.check(Bucket::Login, "10.0.0.2").await.unwrap().allowed, "another address has its own bucket");
    assert!(rl.check(Bucket::Register, "10.0.0.1").await.unwrap().allowed, "another bucket for the same address");
}

#[tokio::test]
async fn two_gateways_share_one_limit() {
    let config = config(&[("RATE_FAILED_CODE_PER_HOUR", "4")]);
    let (a, b) = (limiter(&config).await, limiter(&config).await);
    let mut allowed = 0;
    for i in 0..8 {
        let gateway = if i % 2 == 0 { &a } else { &b };
        if gateway.check(Bucket::FailedCode, "user:9").await.unwrap().allowed {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 4, "two gateways together admit exactly the burst");
    assert!(!a.check(Bucket::FailedCode, "user:9").await.unwrap().allowed);
    assert!(!b.check(Bucket::FailedCode, "user:9").await.unwrap().allowed);
}

#[tokio::test]
async fn concurrent_checks_never_admit_more_than_the_burst() {
    let config = config(&[("RATE_REGISTER_PER_HOUR", "25")]);
    let (a, b) = (limiter(&config).await, limiter(&config).await);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let rl = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { rl.check(Bucket::Register, "1.2.3.4").await.unwrap().allowed })
        })
        .collect();
    let mut allowed = 0;
    for t in tasks {
        allowed += usize::from(t.await.unwrap());
    }
    assert_eq!(allowed, 25);
}

#[tokio::test]
async fn a_peek_records_nothing_and_a_recorded_failure_counts_past_the_limit() {
    let config = config(&[("RATE_FAILED_CODE_PER_HOUR", "2")]);
    let rl = limiter(&config).await;
    let subject = "user:5";
    for _ in 0..5 {
        let d = rl.check_with(Bucket::FailedCode, subject, Cost::Peek).await.unwrap();
        assert!(d.allowed && d.remaining == 2, "{d:?}");
    }
    assert!(keys_under(&config).await.is_empty(), "a peek writes no key");

    // The pattern for unknown codes: peek before the lookup, record after.
    // Three guesses raced past the peek; all three are recorded.
    rl.record(&[(Bucket::FailedCode, subject), (Bucket::FailedCode, subject)]).await;
    rl.check_with(Bucket::FailedCode, subject, Cost::Record).await.unwrap();
    let blocked = rl.check_with(Bucket::FailedCode, subject, Cost::Peek).await.unwrap();
    assert!(!blocked.allowed);
    // 2 per hour = one per 30 min; one over the burst: blocked an hour.
    assert!(blocked.retry_after > Duration::from_secs(29 * 60), "{:?}", blocked.retry_after);
    // The penalty is capped: however many guesses, at most two periods' wait.
    for _ in 0..50 {
        rl.check_with(Bucket::FailedCode, subject, Cost::Record).await.unwrap();
    }
    let capped = rl.check_with(Bucket::FailedCode, subject, Cost::Peek).await.unwrap();
    assert!(capped.retry_after <= Duration::from_secs(2 * 3600), "{:?}", capped.retry_after);
}

#[tokio::test]
async fn enforce_answers_429_with_the_longest_wait_and_disabled_limits_touch_nothing() {
    let config = config(&[("RATE_LOGIN_PER_USERNAME_ADDRESS_PER_HOUR", "1"), ("RATE_REGISTER_PER_HOUR", "2")]);
    let rl = limiter(&config).await;
    let checks = [(Bucket::Login, "9.9.9.9", Cost::Take(1)), (Bucket::Register, "9.9.9.9", Cost::Take(1))];
    assert!(rl.enforce(&checks).await.is_ok());
    match rl.enforce(&checks).await {
        Err(ApiError::TooManyRequests { retry_after_secs }) => {
            assert!((3500..=3600).contains(&retry_after_secs), "the login wait (1 h) wins: {retry_after_secs}")
        }
        other => panic!("expected 429, got {other:?}"),
    }

    let off = self::config(&[("RATE_LIMIT_ENABLED", "false"), ("RATE_LOGIN_PER_USERNAME_ADDRESS_PER_HOUR", "1")]);
    let rl = limiter(&off).await;
    for _ in 0..10 {
        assert!(rl.check(Bucket::Login, "x").await.unwrap().allowed);
    }
    assert!(keys_under(&off).await.is_empty(), "disabled limits make no Redis call");
}

#[tokio::test]
async fn hostile_subjects_get_bounded_keys() {
    let config = config(&[]);
    let rl = limiter(&config).await;
    let long = "{x}".repeat(5_000);
    assert!(rl.check(Bucket::Login, &long).await.unwrap().allowed);
    let keys = keys_under(&config).await;
    assert_eq!(keys.len(), 1);
    assert!(keys[0].len() < 100 && !keys[0].contains('{'), "{keys:?}");
}
