//! Builds the application: the shared state (pools, gate, caches, keys), the
//! actix `App` (used alike by `serve` and the tests), and the background
//! tasks (reconciler, rejection-count flusher).

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};

use crate::auth::TokenKeys;
use crate::codes::CodeCache;
use crate::config::Config;
use crate::ratelimit::RateLimiter;
use crate::redemption::{service, Gate};
use crate::{db, http, reconciler};

pub struct AppState {
    pub config: Config,
    pub pg: deadpool_postgres::Pool,
    /// For operator and reconciler work; the hot path uses the gate's own connection.
    pub redis: deadpool_redis::Pool,
    pub gate: Gate,
    /// Abuse limits in Redis (login, registration, code attempts, failed codes).
    pub limiter: Arc<RateLimiter>,
    pub tokens: TokenKeys,
    pub codes: CodeCache,
    /// Codes (by id) with an on-demand rebuild in flight in this process.
    pub rebuilding: Mutex<HashSet<i64>>,
    /// A reconciler run is in progress in this process.
    pub reconciling: AtomicBool,
    /// Users whose tokens are refused (see auth::disabled).
    pub disabled_users: crate::auth::disabled::DisabledUsers,
    /// Held while local rejection counts are moved to Redis.
    pub flushing: tokio::sync::Mutex<()>,
    /// The bounded, per-address fair queue in front of password hashing.
    pub hashing: crate::auth::hash_queue::HashQueue,
    /// Open live report streams, per admin and in all.
    pub streams: crate::codes::live::Streams,
}

impl AppState {
    /// Connects to Postgres and Redis. Does not migrate.
    pub async fn connect(config: Config) -> anyhow::Result<Arc<Self>> {
        let pg = db::pg_pool(&config)?;
        let redis = db::redis_pool(&config)?;
        let gate = Gate::connect(&config).await?;
        let limiter = Arc::new(RateLimiter::connect(&config).await?);
        let state = AppState {
            tokens: TokenKeys::new(&config),
            limiter,
            codes: CodeCache::new(config.code_cache_ttl),
            pg,
            redis,
            gate,
            rebuilding: Mutex::new(HashSet::new()),
            reconciling: AtomicBool::new(false),
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

/// A running application: its port and the server future to await.
pub struct Application {
    port: u16,
    server: Server,
    /// The metrics listener (`METRICS_ADDR`): its port and server, if on.
    metrics: Option<(u16, Server)>,
    state: Arc<AppState>,
    _scheduler: Option<tokio_cron_scheduler::JobScheduler>,
}

impl Application {
    /// Migrates, connects, reconciles once, starts the background tasks and
    /// binds `HTTP_ADDR` (port 0 picks a free one, for tests).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        crate::telemetry::prometheus();
        db::migrate(&config).await?;
        let state = AppState::connect(config).await?;
        // Before taking traffic: rebuild any gate state Redis lost, release
        // claims whose gateway died.
        reconciler::run_guarded(&state).await;
        let scheduler = reconciler::schedule(state.clone()).await?;
        spawn_rejection_flusher(state.clone());
        spawn_disabled_users_reload(state.clone()).await;

        let listener = TcpListener::bind(&state.config.http_addr)
            .map_err(|e| anyhow::anyhow!("cannot bind HTTP_ADDR {}: {e}", state.config.http_addr))?;
        let port = listener.local_addr()?.port();
        let metrics = match &state.config.metrics_addr {
            Some(addr) => {
                let listener = TcpListener::bind(addr).map_err(|e| {
                    anyhow::anyhow!("cannot bind METRICS_ADDR {addr}: {e} (set another address, or METRICS_ADDR=off)")
                })?;
                let port = listener.local_addr()?.port();
                tracing::info!(%addr, port, "metrics listener");
                Some((port, serve_metrics(state.clone(), listener)?))
            }
            None => None,
        };
        let server = serve(state.clone(), listener)?;
        Ok(Application { port, server, metrics, state, _scheduler: Some(scheduler) })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The metrics listener's port, if it is on.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics.as_ref().map(|(port, _)| *port)
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Runs until SIGINT/SIGTERM: actix stops accepting, lets in-flight
    /// requests finish, then we flush the rejection counts.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let metrics = self.metrics.map(|(_, server)| {
            let handle = server.handle();
            tokio::spawn(server);
            handle
        });
        let result = self.server.await;
        if let Some(handle) = metrics {
            handle.stop(false).await;
        }
        service::flush_local_rejections(&self.state).await;
        result
    }
}

fn serve(state: Arc<AppState>, listener: TcpListener) -> anyhow::Result<Server> {
    let workers = match state.config.http_workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let limits = state.config.limits;
    let data = web::Data::from(state);
    let server = HttpServer::new(move || {
        let (json, query, payload) = http::extractor_configs(data.config.body_limit_bytes);
        App::new()
            .wrap(actix_web::middleware::from_fn(http::body::read_body))
            .wrap(http::json_error_net())
            .wrap(actix_web::middleware::from_fn(http::observe::observe))
            .app_data(data.clone())
            .app_data(json)
            .app_data(query)
            .app_data(payload)
            .configure(http::configure)
            .default_service(web::to(http::not_found))
    })
    .workers(workers)
    .backlog(4096)
    // A cap on open connections (slow clients hold one each): actix counts
    // per worker, so the total is split; beyond it, connections wait in the backlog.
    .max_connections(limits.max_connections.div_ceil(workers))
    .max_connection_rate(limits.max_connection_rate)
    // The request head must arrive within this; the body has its own deadline (http::body).
    .client_request_timeout(limits.client_request_timeout)
    .shutdown_timeout(30)
    .listen(listener)?
    .run();
    Ok(server)
}

/// The metrics listener: GET /metrics only, one worker, few connections.
fn serve_metrics(state: Arc<AppState>, listener: TcpListener) -> anyhow::Result<Server> {
    let data = web::Data::from(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .configure(http::observe::configure_metrics)
            .default_service(web::to(http::not_found))
    })
    .workers(1)
    .max_connections(64)
    .client_request_timeout(Duration::from_secs(5))
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    Ok(server)
}

/// Rejections counted in-process (sold out from the cache, not eligible...)
/// reach Redis's stats within this interval.
const FLUSH_INTERVAL: Duration = Duration::from_millis(250);

/// Loads the disabled users now (before serving), then keeps them fresh.
async fn spawn_disabled_users_reload(state: Arc<AppState>) {
    async fn reload(state: &AppState) {
        let result = match state.pg.get().await {
            Ok(db) => state.disabled_users.reload(&db).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "disabled users not reloaded; keeping the last set");
        }
    }
    reload(&state).await;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::auth::disabled::DISABLED_REFRESH);
        loop {
            tick.tick().await;
            reload(&state).await;
        }
    });
}

fn spawn_rejection_flusher(state: Arc<AppState>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        loop {
            tick.tick().await;
            service::flush_local_rejections(&state).await;
        }
    });
}
