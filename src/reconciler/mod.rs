//! The reconciler: keeps the Redis gate and Postgres (the truth) in step.
//! For each code it looks at it rebuilds missing gate state, releases claims
//! whose gateway died before committing, confirms committed ones, repairs the
//! gate's limit and controls where they differ from Postgres's, audits the
//! tickets of codes that changed (audit.rs), and writes the gate's counters
//! back to Postgres when they moved.
//!
//! Work proportional to what changed, not to every active code. A pass looks at:
//! - the index of touched codes in Redis (src/redemption/touched.rs): every
//!   code a gateway claimed on, released, cancelled, rebuilt or changed
//!   lately, kept there until a pass finds it settled (no pending claim, no
//!   audit due, counters written back);
//! - Postgres's change feed: codes an operator changed or whose tickets
//!   Postgres freed within the look-back (`store::reconcile_rows_changed`);
//! - a slice of `RECONCILE_SWEEP_CODES` active codes from a cursor (the slow
//!   sweep), so drift that nothing marked is still found: every active code
//!   within ceil(active codes / RECONCILE_SWEEP_CODES) passes.
//!
//! All of them are read in one batch from each store; only the codes whose
//! state calls for it get per-code work. `serve` starts listening first and
//! runs its first pass in the background (a claim that finds no state asks
//! for an on-demand rebuild); then every `RECONCILE_INTERVAL_SECONDS`, one
//! gateway at a time (a Redis lock), and by hand with `redeem-gateway reconcile`.

pub mod audit;
pub mod controls;
pub mod rebuild;
pub mod sweep;
pub mod sync;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_cron_scheduler::{Job, JobScheduler};

use self::rebuild::RebuildError;
use crate::codes::store::{self as codes_store, GateTruth, ReconcileRow};
use crate::codes::{Code, CodeStatus};
use crate::db::StoreError;
use crate::redemption::gate::{Controls, GateSnapshot};
use crate::redemption::touched;
use crate::state::AppState;
use crate::telemetry::{
    RECONCILER_CONFIRMED, RECONCILER_DURATION, RECONCILER_LIMITS_REPAIRED, RECONCILER_REBUILDS, RECONCILER_RELEASED,
    RECONCILER_RUNS, RECONCILER_TICKETS_FREED,
};

/// Touched codes looked at per pass at most (the oldest marks first).
const MAX_TOUCHED_PER_PASS: usize = 10_000;
/// Codes from Postgres's change feed looked at per pass at most (newest first).
const MAX_CHANGED_PER_PASS: i64 = 10_000;
/// How far back the change feed looks: several passes see every change, so
/// one pass that fails (or a gateway that dies holding the lock) loses nothing.
const CHANGE_LOOKBACK_MIN: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Clone, Copy)]
pub struct RunStats {
    /// Codes this pass looked at (touched, changed and swept, each once).
    pub codes_checked: usize,
    /// Of those: from the index of touched codes.
    pub codes_touched: usize,
    /// Of those: from Postgres's change feed.
    pub codes_changed: usize,
    /// Of those: the slow sweep's slice.
    pub codes_swept: usize,
    /// The slow sweep reached the last active code this pass (it starts over).
    pub sweep_completed: bool,
    /// Codes that needed work beyond the batch reads (a rebuild, a stale
    /// claim, a repair, an audit or a counter write).
    pub codes_worked: usize,
    /// Codes found settled and taken out of the index of touched codes.
    pub codes_settled: usize,
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
    /// Codes whose counters were written back to Postgres.
    pub counters_synced: usize,
    pub errors: usize,
    pub duration_ms: u64,
}

/// A code a pass looks at, and its mark in the index of touched codes.
struct Candidate {
    row: ReconcileRow,
    mark: Option<i64>,
}

/// One pass. Errors on one code are logged and do not stop the others.
pub async fn run_once(state: &Arc<AppState>) -> Result<RunStats, StoreError> {
    let started = Instant::now();
    let mut stats = RunStats::default();
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
    match reconcile_codes(state, &mut stats).await {
        Ok(()) => {}
        Err(RebuildError::Store(e)) => return Err(e),
        Err(RebuildError::Gate(e)) => {
            stats.errors += 1;
            tracing::warn!(error = %e, "reconciler pass cut short: the gate is unavailable");
        }
    }
    stats.duration_ms = started.elapsed().as_millis() as u64;
    record(&stats, started);
    Ok(stats)
}

/// The codes to look at this pass, each once: touched, changed, then the slice.
async fn candidates(state: &AppState, stats: &mut RunStats) -> Result<(Vec<Candidate>, i64), RebuildError> {
    let marks = state.gate.touched(MAX_TOUCHED_PER_PASS).await?;
    let sweep_after = state.gate.sweep_cursor().await?;
    let lookback = (state.config.reconcile_interval * 6).max(CHANGE_LOOKBACK_MIN);
    let slice_size = state.config.reconcile_sweep_codes;
    let (touched, changed, slice) = {
        let db = state.pg.get().await.map_err(StoreError::from)?;
        let names: Vec<String> = marks.iter().map(|(name, _)| name.clone()).collect();
        (
            codes_store::reconcile_rows_named(&db, &names).await?,
            codes_store::reconcile_rows_changed(&db, lookback.as_secs_f64(), MAX_CHANGED_PER_PASS).await?,
            codes_store::reconcile_rows_active_after(&db, sweep_after, slice_size).await?,
        )
    };
    (stats.codes_touched, stats.codes_changed, stats.codes_swept) = (touched.len(), changed.len(), slice.len());
    // Fewer than a full slice: the sweep reached the end and starts over.
    let next_cursor = match slice.last() {
        Some(row) if slice.len() as i64 >= slice_size => row.code.id,
        _ => {
            stats.sweep_completed = true;
            0
        }
    };
    let score: HashMap<&str, i64> = marks.iter().map(|(name, at)| (name.as_str(), *at)).collect();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(touched.len() + changed.len() + slice.len());
    for row in touched.into_iter().chain(changed).chain(slice) {
        if seen.insert(row.code.id) {
            let mark = score.get(row.code.code.as_str()).copied();
            out.push(Candidate { row, mark });
        }
    }
    // Marks of names Postgres does not know: nothing to reconcile.
    let known: std::collections::HashSet<&str> = out.iter().map(|c| c.row.code.code.as_str()).collect();
    let unknown: Vec<(String, i64)> = marks.iter().filter(|(n, _)| !known.contains(n.as_str())).cloned().collect();
    if !unknown.is_empty() {
        state.gate.untouch(&unknown).await?;
    }
    Ok((out, next_cursor))
}

async fn reconcile_codes(state: &Arc<AppState>, stats: &mut RunStats) -> Result<(), RebuildError> {
    // Read before anything of the codes: a mark older than this by
    // `touched::removable_after_ms` covers only claims that have run by now.
    let pass_started_ms = state.gate.now_ms().await?;
    let (codes, next_cursor) = candidates(state, stats).await?;
    stats.codes_checked = codes.len();
    let names: Vec<&str> = codes.iter().map(|c| c.row.code.code.as_str()).collect();
    let snapshots = state.gate.snapshots(&names).await?;
    let mut audit_budget = audit::TICKETS_PER_PASS;
    let mut settled: Vec<(String, i64)> = vec![];
    // Start the walk at a different code each second, so that when the audit
    // budget runs out it is not always the same codes that wait.
    let start = if codes.is_empty() { 0 } else { (Utc::now().timestamp() as usize) % codes.len() };
    let order = (start..codes.len()).chain(0..start);
    for i in order {
        let candidate = &codes[i];
        let done = visit(state, &candidate.row, snapshots[i].as_ref(), &mut audit_budget, stats).await;
        if let Some(at) = candidate.mark {
            if done && at <= pass_started_ms - touched::removable_after_ms() {
                settled.push((candidate.row.code.code.clone(), at));
            }
        }
    }
    stats.codes_settled = state.gate.untouch(&settled).await?;
    state.gate.set_sweep_cursor(next_cursor).await?;
    Ok(())
}

/// Everything a pass does for one code. Returns whether the code is settled:
/// nothing pending, nothing left to repair or audit, its counters written
/// back, no error. `snapshot` was read after the pass started.
async fn visit(
    state: &Arc<AppState>,
    row: &ReconcileRow,
    snapshot: Option<&GateSnapshot>,
    audit_budget: &mut i64,
    stats: &mut RunStats,
) -> bool {
    let code = &row.code;
    let Some(snapshot) = snapshot else {
        // No state. Only codes that take traffic are rebuilt (a claim on any
        // other asks for its own rebuild); the install marks the code again.
        if code.status != CodeStatus::Active {
            return true;
        }
        stats.codes_worked += 1;
        return match rebuild::rebuild_if_missing(state, code).await {
            Ok(rebuilt) => {
                stats.codes_rebuilt += usize::from(rebuilt);
                false
            }
            Err(e) => {
                stats.errors += 1;
                tracing::warn!(code = %code.code, error = %e, "rebuild failed");
                false
            }
        };
    };
    let mut settled = true;
    let mut moved = false;
    let mut worked = false;
    if snapshot.pending > 0 {
        // Claims not yet stale keep the code in the index until they are.
        settled = false;
        worked = true;
        match sweep::sweep_stale_claims(state, code).await {
            Ok(s) => {
                stats.claims_released += s.released;
                stats.claims_confirmed += s.confirmed;
                moved |= s.released > 0;
            }
            Err(e) => {
                stats.errors += 1;
                tracing::warn!(code = %code.code, error = %e, "sweep failed");
            }
        }
    }
    if needs_check(code, &row.truth, snapshot) {
        worked = true;
        match check_gate(state, code, row.truth, snapshot, audit_budget).await {
            Ok(c) => {
                stats.limits_repaired += usize::from(c.limit_repaired);
                stats.controls_repaired += usize::from(c.controls_repaired);
                stats.codes_audited += usize::from(c.audit.completed || c.audit.work > 0);
                stats.tickets_freed += c.audit.freed;
                stats.entries_fixed += c.audit.fixed;
                moved |= c.limit_repaired || c.controls_repaired || c.audit.freed + c.audit.fixed > 0;
                // Settled once a pass finds nothing to do (a due audit that the
                // budget left for later included).
                settled &= !c.limit_repaired
                    && !c.controls_repaired
                    && c.audit.work == 0
                    && !audit::wants_audit(snapshot, row.truth.slot_changes);
            }
            Err(e) => {
                stats.errors += 1;
                settled = false;
                tracing::warn!(code = %code.code, error = %e, "gate check failed");
            }
        }
    }
    match sync::sync_counters(state, row, (!moved).then_some(snapshot)).await {
        Ok(wrote) => {
            worked |= wrote;
            stats.counters_synced += usize::from(wrote);
        }
        Err(e) => {
            stats.errors += 1;
            settled = false;
            tracing::warn!(code = %code.code, error = %e, "counter sync failed");
        }
    }
    stats.codes_worked += usize::from(worked);
    settled
}

/// Whether the gate's copy of the code disagrees with Postgres's, or its
/// tickets are due an audit (cheap: from the batch reads only).
fn needs_check(code: &Code, truth: &GateTruth, snapshot: &GateSnapshot) -> bool {
    let status_behind = snapshot.status_rev.unwrap_or(0) < code.control_rev
        || snapshot.status.as_deref().is_some_and(|s| s != code.status.as_str());
    let limit_behind = snapshot.limit != i64::from(truth.limit)
        || snapshot.limit_version.is_some_and(|v| v < truth.limit_version)
        || snapshot.dropped > 0;
    status_behind || limit_behind || audit::wants_audit(snapshot, truth.slot_changes)
}

fn record(stats: &RunStats, started: Instant) {
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
                codes_touched = stats.codes_touched,
                codes_changed = stats.codes_changed,
                codes_swept = stats.codes_swept,
                codes_worked = stats.codes_worked,
                codes_settled = stats.codes_settled,
                codes_rebuilt = stats.codes_rebuilt,
                claims_released = stats.claims_released,
                claims_confirmed = stats.claims_confirmed,
                limits_repaired = stats.limits_repaired,
                codes_audited = stats.codes_audited,
                tickets_freed = stats.tickets_freed,
                entries_fixed = stats.entries_fixed,
                controls_repaired = stats.controls_repaired,
                counters_synced = stats.counters_synced,
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
    truth: GateTruth,
    snapshot: &GateSnapshot,
    budget: &mut i64,
) -> Result<GateCheck, RebuildError> {
    let mut check = GateCheck::default();
    // `code` was read from Postgres this pass: a gate that still
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
    if *budget > 0 && (check.limit_repaired || audit::wants_audit(snapshot, truth.slot_changes)) {
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
    state.reconciler_runs.fetch_add(1, Ordering::AcqRel);
    result
}

/// Starts the periodic job, and a first run at once in the background: a
/// gateway answers while it runs (whatever it would rebuild, a claim that
/// finds no state rebuilds on demand). Keep the scheduler alive as long as the app.
pub async fn schedule(state: Arc<AppState>) -> anyhow::Result<JobScheduler> {
    let first = state.clone();
    tokio::spawn(async move {
        run_guarded(&first).await;
    });
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
