//! Postgres and Redis pools, and migrations (run under an advisory lock so two
//! gateways starting together do not race).

use std::time::Duration;

use deadpool_postgres::{ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::config::{Config, ServeRole};
use crate::error::ApiError;
use crate::redis_conn::{RedisConn, RedisPool};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The wallet role's own schema (wallets and ledger, nothing else): in the
/// split it owns a database of its own, with no users, codes or vouchers.
mod embedded_wallet {
    refinery::embed_migrations!("migrations_wallet");
}

/// The wallet set keeps its history apart, so a mix-up of the two
/// databases fails loudly instead of interleaving version numbers.
const WALLET_HISTORY_TABLE: &str = "refinery_schema_history_wallet";

/// Any number; it only has to be the same for every gateway.
const MIGRATION_LOCK_KEY: i64 = 0x7265_6465_656d; // "redeem"

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no Postgres connection available: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// Refused before reaching Postgres (a bounded queue was full or waited
    /// too long): nothing was written.
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
}

impl StoreError {
    /// True when retrying later may succeed: the database is down, restarting,
    /// overloaded, or cancelled the statement. Nothing was written.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Pool(_) | StoreError::Overloaded(_) => true,
            StoreError::Postgres(e) => match e.code() {
                // No SQLSTATE: the connection itself failed or closed.
                None => true,
                Some(code) => {
                    let class = &code.code()[..2];
                    matches!(class, "08" | "53" | "57" | "40") || *code == SqlState::QUERY_CANCELED
                }
            },
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_transient() {
            tracing::warn!(error = %e, "database unavailable");
            ApiError::TryAgain("the database is unavailable, try again shortly")
        } else {
            ApiError::internal(e)
        }
    }
}

pub fn pg_config(config: &Config) -> anyhow::Result<tokio_postgres::Config> {
    let mut pg: tokio_postgres::Config = config
        .role_database_url()
        .parse()
        .map_err(|e| anyhow::anyhow!("the database URL is not a valid Postgres URL: {e}"))?;
    pg.connect_timeout(Duration::from_secs(5));
    pg.application_name("redeem-gateway");
    // Bounds every statement, so a commit can never outlive its claim's grace period.
    pg.options(format!("-c statement_timeout={}", config.pg_statement_timeout.as_millis()));
    Ok(pg)
}

pub fn pg_pool(config: &Config) -> anyhow::Result<Pool> {
    let manager = deadpool_postgres::Manager::from_config(
        pg_config(config)?,
        NoTls,
        ManagerConfig { recycling_method: RecyclingMethod::Fast },
    );
    Ok(Pool::builder(manager)
        .max_size(config.pg_pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(2)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()?)
}

/// Connections for operator and background work (see `redis_conn`).
pub async fn redis_pool(config: &Config) -> anyhow::Result<RedisPool> {
    RedisPool::connect(config).await
}

/// A multiplexed, reconnecting Redis connection (one Redis or the cluster)
/// with the configured time-outs: the gate and the rate limiter each keep one,
/// so neither queues behind the other.
pub async fn redis_manager(config: &Config) -> anyhow::Result<RedisConn> {
    RedisConn::connect(config).await
}

/// Applies pending migrations of the role's schema: the wallet role its own
/// set (`migrations_wallet/`), the others the main set. Safe to call from
/// many gateways at once.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let (mut client, connection) = pg_config(config)?
        .connect(NoTls)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach Postgres at DATABASE_URL: {e}"))?;
    let driver = tokio::spawn(connection);
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY]).await?;
    let report = match config.role {
        ServeRole::Wallet => {
            embedded_wallet::migrations::runner()
                .set_migration_table_name(WALLET_HISTORY_TABLE)
                .run_async(&mut client)
                .await
        }
        ServeRole::All | ServeRole::Redemption => embedded::migrations::runner().run_async(&mut client).await,
    };
    client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY]).await?;
    drop(client);
    let _ = driver.await;
    let report = report?;
    for m in report.applied_migrations() {
        tracing::info!(migration = %m, "applied");
    }
    Ok(())
}
