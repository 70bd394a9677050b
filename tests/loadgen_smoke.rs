//! The load generator's smoke run, part of `make test`: a tiny burst (L=5,
//! U=50) through the very code `loadgen burst` uses, against the real app
//! spawned in-process on port 0 with a fresh database and Redis prefix, then
//! the invariants checked in Postgres; plus a moment of flood and balance.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test set-up fails loudly

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use redeem_gateway::config::Config;
use redeem_gateway::loadgen::{scenarios, setup, Bench};
use redeem_gateway::startup::Application;
use tokio_postgres::NoTls;

#[path = "support/local_pg.rs"]
mod local_pg;

fn service_urls() -> (String, String) {
    let _ = dotenvy::dotenv();
    let pg = std::env::var("TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| local_pg::default_server_url());
    let redis = std::env::var("TEST_REDIS_URL")
        .or_else(|_| std::env::var("REDIS_URL"))
        .unwrap_or_else(|_| "redis://127.0.0.1:6479/".into());
    (pg, redis)
}

/// A fresh database named `name` on the server at `server_url`; its URL.
async fn create_database(server_url: &str, name: &str) -> String {
    let (client, conn) = tokio_postgres::connect(server_url, NoTls)
        .await
        .expect("cannot reach the test PostgreSQL; start it with `scripts/services.sh up`");
    tokio::spawn(conn);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    local_pg::with_database(server_url, name)
}

async fn spawn_bench() -> Bench {
    let (server_url, redis_url) = service_urls();
    let id = format!("{:016x}", rand::random::<u64>());
    let database_url = create_database(&server_url, &format!("test_{id}")).await;
    let prefix = format!("t_{id}");
    let vars: HashMap<&str, &str> = HashMap::from([
        ("APP_ENV", "dev"),
        ("HTTP_ADDR", "127.0.0.1:0"),
        ("HTTP_WORKERS", "2"),
        ("DATABASE_URL", database_url.as_str()),
        ("REDIS_URL", redis_url.as_str()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
        ("JWT_SECRET", "loadgen-smoke-secret-0123456789abcdef"),
        ("PG_POOL_SIZE", "8"),
        ("RECONCILE_INTERVAL_SECONDS", "3600"),
        ("RATE_LIMIT_ENABLED", "false"),
        ("METRICS_ADDR", "off"),
    ]);
    let config = Config::from_lookup(|name| vars.get(name).map(|v| v.to_string())).expect("test config");
    let app = Application::build(config).await.expect("app builds");
    let gateway = SocketAddr::from(([127, 0, 0, 1], app.port()));
    let state = app.state();
    tokio::spawn(app.run_until_stopped());
    Bench { state, gateway, connections: 16, gateway_pid: Some(std::process::id()) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_burst_credits_exactly_the_limit_and_keeps_the_invariants() {
    let bench = spawn_bench().await;
    let users = setup::create_users(&bench.state, 50).await.unwrap();

    let burst = scenarios::burst(&bench, &users, 5, 1_000).await.unwrap();

    let s = &burst.summary;
    assert_eq!(s.requests, 50);
    assert_eq!(s.successes, 5, "statuses: {}", s.statuses_text());
    assert_eq!(s.statuses.get(&410).copied(), Some(45), "statuses: {}", s.statuses_text());
    assert_eq!(s.errors, 0, "statuses: {}", s.statuses_text());
    let inv = burst.invariants.as_ref().expect("a burst checks the invariants");
    assert!(inv.hold(), "invariants broken: {:?}", inv.failures);
    assert_eq!((inv.redemptions, inv.distinct_users, inv.credited_sum), (5, 5, 5_000));
    assert!(burst.peak_kib.is_some_and(|k| k > 0), "VmHWM is read from /proc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_and_balance_answer_only_expected_statuses() {
    let bench = spawn_bench().await;
    let users = setup::create_users(&bench.state, 20).await.unwrap();

    let flood = scenarios::flood(&bench, &users, Duration::from_millis(300)).await.unwrap();
    assert!(flood.summary.requests > 0);
    assert_eq!(flood.summary.errors, 0, "flood statuses: {}", flood.summary.statuses_text());
    assert_eq!(flood.summary.successes, 0);

    let balance = scenarios::balance(&bench, &users, Duration::from_millis(300)).await.unwrap();
    assert!(balance.summary.requests > 0);
    assert_eq!(balance.summary.successes, balance.summary.requests, "{}", balance.summary.statuses_text());
}
