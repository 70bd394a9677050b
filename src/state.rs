//! The state every request and background task shares: the pools, the gate,
//! the caches and the keys. Its own module below the routes, so route modules
//! do not import `startup`, which composes them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use crate::auth::TokenKeys;
use crate::codes::CodeCache;
use crate::config::Config;
use crate::db;
use crate::ratelimit::RateLimiter;
use crate::redemption::Gate;

pub struct AppState {
    pub config: Config,
    pub pg: deadpool_postgres::Pool,
    /// For operator and reconciler work; the hot path uses the gate's own connection.
    pub redis: crate::redis_conn::RedisPool,
    pub gate: Gate,
    /// Group commit of credit-code redemptions.
    pub commits: crate::redemption::batcher::Batcher,
    /// Group read of balances (POST /wallet/balance).
    pub balances: crate::wallet::reader::BalanceReader,
    /// Abuse limits in Redis (login, registration, code attempts, failed codes).
    pub limiter: Arc<RateLimiter>,
    pub tokens: TokenKeys,
    pub codes: CodeCache,
    /// Codes (by id) with an on-demand rebuild in flight in this process.
    pub rebuilding: Mutex<HashSet<i64>>,
    /// A reconciler run is in progress in this process.
    pub reconciling: AtomicBool,
    /// Guarded reconciler runs this process has finished (whatever their
    /// outcome): `serve` starts its first one after it listens.
    pub reconciler_runs: AtomicU64,
    /// Users whose tokens are refused (see auth::disabled).
    pub disabled_users: crate::auth::disabled::DisabledUsers,
    /// Held while local rejection counts are moved to Redis.
    pub flushing: tokio::sync::Mutex<()>,
    /// The bounded, per-address fair queue in front of password hashing.
    pub hashing: crate::auth::hash_queue::HashQueue,
    /// Open live report streams, per admin and in all.
    pub streams: crate::codes::live::Streams,
    /// How a code's credit is paid: in the redemption's statement, or (the
    /// split) through the outbox to the wallet service. Chosen once, from the role.
    pub credits: crate::redemption::outbox::CreditSink,
}

impl AppState {
    /// Connects to Postgres and Redis. Does not migrate.
    pub async fn connect(config: Config) -> anyhow::Result<Arc<Self>> {
        let pg = db::pg_pool(&config)?;
        let redis = db::redis_pool(&config).await?;
        let gate = Gate::connect(&config).await?;
        let commits = crate::redemption::batcher::Batcher::start(pg.clone(), config.commit_batch);
        let balances = crate::wallet::reader::BalanceReader::start(pg.clone(), config.balance_read);
        let limiter = Arc::new(RateLimiter::connect(&config).await?);
        let tokens = TokenKeys::for_role(&config)?;
        let credits = crate::redemption::outbox::CreditSink::for_config(&config)?;
        if let crate::redemption::outbox::CreditSink::Wallet(client) = &credits {
            client.check_credential(&tokens)?;
        }
        let state = AppState {
            tokens,
            credits,
            limiter,
            codes: CodeCache::new(config.code_cache_ttl),
            pg,
            redis,
            gate,
            commits,
            balances,
            rebuilding: Mutex::new(HashSet::new()),
            reconciling: AtomicBool::new(false),
            reconciler_runs: AtomicU64::new(0),
            flushing: tokio::sync::Mutex::new(()),
            disabled_users: Default::default(),
            hashing: crate::auth::hash_queue::HashQueue::per_cpu(config.limits.hash_queue, config.limits.hash_wait),
            streams: crate::codes::live::Streams::new(config.limits.streams_per_admin, config.limits.streams_total),
            config,
        };
        state.ping_postgres().await.map_err(|e| anyhow::anyhow!("cannot reach Postgres at DATABASE_URL: {e}"))?;
        Ok(Arc::new(state))
    }

    pub async fn ping_postgres(&self) -> Result<(), String> {
        let db = self.pg.get().await.map_err(|e| e.to_string())?;
        db.simple_query("SELECT 1").await.map(|_| ()).map_err(|e| e.to_string())
    }
}
