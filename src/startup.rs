//! Builds the application: the shared state (pools, gate, caches, keys), the
//! actix `App` (used alike by `serve` and the tests), and the background
//! tasks (reconciler, rejection-count flusher).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};

use crate::config::Config;
use crate::redemption::service;
pub use crate::state::AppState;
use crate::{db, http, reconciler};

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
    /// Migrates, connects, starts the background tasks (the reconciler's
    /// first run among them) and binds `HTTP_ADDR` (port 0 picks a free one,
    /// for tests). No reconciler pass before listening: with many codes it
    /// would keep a restarted gateway deaf for minutes, and nothing needs it
    /// first (a claim that finds no gate state asks for an on-demand rebuild
    /// and answers 503; a dead gateway's claims wait CLAIM_GRACE_SECONDS anyway).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        crate::telemetry::prometheus();
        db::migrate(&config).await?;
        let role = config.role;
        let state = AppState::connect(config).await?;
        tracing::info!(role = role.as_str(), "role");
        let scheduler = if role.redeems() {
            // No pass before listening: codes whose gate state is missing are
            // rebuilt on demand, and the first scheduled pass releases claims
            // whose gateway died.
            let scheduler = reconciler::schedule(state.clone()).await?;
            spawn_rejection_flusher(state.clone());
            spawn_disabled_users_reload(state.clone()).await;
            crate::redemption::outbox::spawn_drainer(state.clone());
            Some(scheduler)
        } else {
            // The wallet role: no codes, no gate work, no users table.
            state.disabled_users.assume_none();
            None
        };

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
        Ok(Application { port, server, metrics, state, _scheduler: scheduler })
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
    let role = state.config.role;
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
            .configure(|cfg| http::configure_role(cfg, role))
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
