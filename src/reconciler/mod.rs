//! The reconciler: keeps the Redis gate and Postgres (the truth) in step.
//! For each active code it rebuilds missing gate state, releases claims
//! whose gateway died before committing, confirms committed ones, and syncs
//! the gate's counters back to Postgres. It runs at start-up, every
//! `RECONCILE_INTERVAL_SECONDS` (one gateway at a time, via a Redis lock), and
//! by hand with `redeem-gateway reconcile`.

pub mod controls;
pub mod rebuild;
pub mod sweep;
pub mod sync;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_cron_scheduler::{Job, JobScheduler};

use crate::codes::store as codes_store;
use crate::db::StoreError;
use crate::startup::AppState;
use crate::telemetry::{
    RECONCILER_CONFIRMED, RECONCILER_DURATION, RECONCILER_REBUILDS, RECONCILER_RELEASED, RECONCILER_RUNS,
};

#[derive(Debug, Default, Clone, Copy)]
pub struct RunStats {
    pub codes_checked: usize,
    pub codes_rebuilt: usize,
    pub claims_released: usize,
    pub claims_confirmed: usize,
    /// Codes whose status or window in the gate disagreed with Postgres.
    pub controls_repaired: usize,
    pub errors: usize,
}

/// One pass over every active code. Errors on one code are logged and do not
/// stop the others.
pub async fn run_once(state: &Arc<AppState>) -> Result<RunStats, StoreError> {
    let started = Instant::now();
    let codes = {
        let db = state.pg.get().await?;
        codes_store::active_codes(&db).await?
    };
    let mut stats = RunStats { codes_checked: codes.len(), ..Default::default() };
    if let Err(e) = purge_idempotency_keys(state).await {
        stats.errors += 1;
        tracing::warn!(error = %e, "expired idempotency keys not purged");
    }
    match controls::reassert_controls(state).await {
        Ok(n) => stats.controls_repaired = n,
        Err(e) => {
            stats.errors += 1;
            tracing::warn!(error = %e, "gate controls not re-asserted");
        }
    }
    for code in &codes {
        match rebuild::rebuild_if_missing(state, code).await {
            Ok(true) => stats.codes_rebuilt += 1,
            Ok(false) => {}
            Err(e) => {
                stats.errors += 1;
                tracing::warn!(code = %code.code, error = %e, "rebuild failed");
                continue;
            }
        }
        match sweep::sweep_stale_claims(state, code).await {
            Ok(s) => {
                stats.claims_released += s.released;
                stats.claims_confirmed += s.confirmed;
            }
            Err(e) => {
                stats.errors += 1;
                tracing::warn!(code = %code.code, error = %e, "sweep failed");
            }
        }
        if let Err(e) = sync::sync_counters(state, code).await {
            stats.errors += 1;
            tracing::warn!(code = %code.code, error = %e, "counter sync failed");
        }
    }
    metrics::counter!(RECONCILER_RUNS).increment(1);
    metrics::counter!(RECONCILER_RELEASED).increment(stats.claims_released as u64);
    metrics::counter!(RECONCILER_CONFIRMED).increment(stats.claims_confirmed as u64);
    metrics::counter!(RECONCILER_REBUILDS).increment(stats.codes_rebuilt as u64);
    metrics::histogram!(RECONCILER_DURATION).record(started.elapsed().as_secs_f64());
    let eventful =
        stats.codes_rebuilt + stats.claims_released + stats.claims_confirmed + stats.controls_repaired + stats.errors
            > 0;
    // Quiet runs every few seconds would drown the log: they go to debug.
    macro_rules! report {
        ($level:expr) => {
            tracing::event!(
                $level,
                codes_checked = stats.codes_checked,
                codes_rebuilt = stats.codes_rebuilt,
                claims_released = stats.claims_released,
                claims_confirmed = stats.claims_confirmed,
                controls_repaired = stats.controls_repaired,
                errors = stats.errors,
                duration_ms = started.elapsed().as_millis() as u64,
                "reconciler run"
            )
        };
    }
    if eventful {
        report!(tracing::Level::INFO);
    } else {
        report!(tracing::Level::DEBUG);
    }
    Ok(stats)
}

/// Idempotency keys are kept 24 hours; a pass deletes at most this many expired ones.
const MAX_KEYS_PURGED: i64 = 10_000;

async fn purge_idempotency_keys(state: &AppState) -> Result<(), StoreError> {
    let db = state.pg.get().await?;
    let purged = crate::idempotency::store::purge_expired(&db, MAX_KEYS_PURGED).await?;
    if purged > 0 {
        tracing::info!(purged, "expired idempotency keys purged");
    }
    Ok(())
}

/// A run guarded twice: never two at once in this process (the scheduler
/// lets runs overlap), and never two at once across gateways (Redis lock).
pub async fn run_guarded(state: &Arc<AppState>) -> Option<RunStats> {
    if state.reconciling.swap(true, Ordering::AcqRel) {
        return None;
    }
    let lock_ttl = (state.config.reconcile_interval * 4).max(Duration::from_secs(30));
    let result = match state.gate.try_lock("reconciler", lock_ttl.as_millis() as u64).await {
        Ok(Some(guard)) => {
            let stats = run_once(state).await;
            if let Err(e) = state.gate.unlock(guard).await {
                tracing::debug!(error = %e, "reconciler lock left to expire");
            }
            match stats {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "reconciler run failed");
                    None
                }
            }
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "reconciler cannot take its lock");
            None
        }
    };
    state.reconciling.store(false, Ordering::Release);
    result
}

/// Starts the periodic job. Keep the scheduler alive as long as the app.
pub async fn schedule(state: Arc<AppState>) -> anyhow::Result<JobScheduler> {
    let scheduler = JobScheduler::new().await?;
    let interval = state.config.reconcile_interval.max(Duration::from_secs(1));
    let job = Job::new_repeated_async(interval, move |_id, _scheduler| {
        let state = state.clone();
        Box::pin(async move {
            run_guarded(&state).await;
        })
    })?;
    scheduler.add(job).await?;
    scheduler.start().await?;
    Ok(scheduler)
}
