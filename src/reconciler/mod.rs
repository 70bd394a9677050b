//! The reconciler: keeps the Redis gate and Postgres (the truth) in step.
//! For each active code it rebuilds missing gate state, releases claims
//! whose gateway died before committing, confirms committed ones, repairs the
//! gate's limit where it differs from Postgres's, audits the tickets of codes
//! that changed (audit.rs), and syncs the gate's counters back to Postgres.
//! It runs at start-up, every `RECONCILE_INTERVAL_SECONDS` (one gateway at a
//! time, via a Redis lock), and by hand with `redeem-gateway reconcile`.

pub mod audit;
pub mod controls;
pub mod rebuild;
pub mod sweep;
pub mod sync;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_cron_scheduler::{Job, JobScheduler};

use self::rebuild::RebuildError;
use crate::codes::store::{self as codes_store, GateTruth};
use crate::codes::Code;
use crate::db::StoreError;
use crate::redemption::gate::Controls;
use crate::state::AppState;
use crate::telemetry::{
    RECONCILER_CONFIRMED, RECONCILER_DURATION, RECONCILER_LIMITS_REPAIRED, RECONCILER_REBUILDS, RECONCILER_RELEASED,
    RECONCILER_RUNS, RECONCILER_TICKETS_FREED,
};

#[derive(Debug, Default, Clone, Copy)]
pub struct RunStats {
    pub codes_checked: usize,
    pub codes_rebuilt: usize,
    pub claims_released: usize,
    pub claims_confirmed: usize,
    /// Codes whose gate limit differed from Postgres's and was repaired.
    pub limits_repaired: usize,
    pub codes_audited: usize,
    /// Tickets the audit gave back (lost slots recovered).
    pub tickets_freed: i64,
    /// Claims and free-list entries the audit corrected.
    pub entries_fixed: i64,
    /// Codes whose status or window in the gate disagreed with Postgres.
    pub controls_repaired: usize,
    pub errors: usize,
}

/// One pass over every active code. Errors on one code are logged and do not
/// stop the others.
pub async fn run_once(state: &Arc<AppState>) -> Result<RunStats, StoreError> {
    let started = Instant::now();
    let (codes, truths) = {
        let db = state.pg.get().await?;
        (codes_store::active_codes(&db).await?, codes_store::active_gate_truths(&db).await?)
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
    let mut audit_budget = audit::TICKETS_PER_PASS;
    // Start the walk at a different code each second, so that when the audit
    // budget runs out it is not always the same codes that wait.
    let start = if codes.is_empty() { 0 } else { (Utc::now().timestamp() as usize) % codes.len() };
    for code in codes[start..].iter().chain(&codes[..start]) {
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
        match check_gate(state, code, truths.get(&code.id).copied(), &mut audit_budget).await {
            Ok(c) => {
                stats.limits_repaired += usize::from(c.limit_repaired);
                stats.controls_repaired += usize::from(c.controls_repaired);
                stats.codes_audited += usize::from(c.audit.completed || c.audit.work > 0);
                stats.tickets_freed += c.audit.freed;
                stats.entries_fixed += c.audit.fixed;
            }
            Err(e) => {
                stats.errors += 1;
                tracing::warn!(code = %code.code, error = %e, "gate check failed");
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
    metrics::counter!(RECONCILER_LIMITS_REPAIRED).increment(stats.limits_repaired as u64);
    metrics::counter!(RECONCILER_TICKETS_FREED).increment(stats.tickets_freed.max(0) as u64);
    metrics::histogram!(RECONCILER_DURATION).record(started.elapsed().as_secs_f64());
    let eventful = stats.codes_rebuilt
        + stats.claims_released
        + stats.claims_confirmed
        + stats.limits_repaired
        + stats.controls_repaired
        + stats.tickets_freed as usize
        + stats.entries_fixed as usize
        + stats.errors
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
                limits_repaired = stats.limits_repaired,
                codes_audited = stats.codes_audited,
                tickets_freed = stats.tickets_freed,
                entries_fixed = stats.entries_fixed,
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

#[derive(Debug, Default)]
struct GateCheck {
    limit_repaired: bool,
    controls_repaired: bool,
    audit: audit::AuditStats,
}

/// Compares the gate with Postgres (read now, not from a cache): repairs the
/// limit if it differs (a set_limit that failed after its PATCH committed, a
/// rebuild from a stale row) and gives back tickets set aside below it; then
/// audits the code's tickets if its change marks moved, within the budget.
/// `truth` was read at the start of the pass: if a PATCH commits since, the
/// gate holds a newer version than `truth` and set_limit refuses the older one.
async fn check_gate(
    state: &AppState,
    code: &Code,
    truth: Option<GateTruth>,
    budget: &mut i64,
) -> Result<GateCheck, RebuildError> {
    let mut check = GateCheck::default();
    let Some(truth) = truth else { return Ok(check) };
    let Some(snapshot) = state.gate.snapshot(&code.code).await? else {
        return Ok(check); // no state yet: the rebuild reads Postgres
    };
    // `code` was read from Postgres this pass and is active: a gate that still
    // holds an older change (a resume or a window change whose Redis write was
    // lost, however long ago) is brought up to date. set_status keeps the newer.
    let status_behind = snapshot.status_rev.unwrap_or(0) < code.control_rev
        || snapshot.status.as_deref().is_some_and(|s| s != code.status.as_str());
    if status_behind && state.gate.set_status(&code.code, &Controls::of(code)).await? {
        check.controls_repaired = true;
        tracing::warn!(code = %code.code, gate = ?snapshot.status, postgres = code.status.as_str(), "gate controls repaired");
    }
    let behind = snapshot.limit_version.is_some_and(|v| v < truth.limit_version);
    if snapshot.limit != i64::from(truth.limit) || behind || snapshot.dropped > 0 {
        let applied = state.gate.set_limit(&code.code, truth.limit, truth.limit_version).await?;
        if applied {
            check.limit_repaired = true;
            tracing::warn!(code = %code.code, gate = snapshot.limit, postgres = truth.limit, "gate limit repaired");
            if let Some(hints) = state.codes.hints_of(&code.code) {
                hints.clear_sold_out();
            }
        }
    }
    if *budget > 0 && (check.limit_repaired || audit::wants_audit(&snapshot, truth.slot_changes)) {
        check.audit = audit::audit_code(state, code, *budget).await?;
        *budget -= check.audit.work;
        if check.audit.freed > 0 {
            if let Some(hints) = state.codes.hints_of(&code.code) {
                hints.clear_sold_out();
            }
        }
    }
    Ok(check)
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
