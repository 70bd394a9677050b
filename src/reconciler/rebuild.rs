//! Rebuilding a code's gate state from Postgres after Redis lost it. The
//! committed rows give the claims and the highest ticket; every ticket below
//! that which no row holds is free. Until the state is installed the claim
//! script answers "state missing" and the gateway answers 503, never a guess.

use std::collections::HashSet;
use std::sync::Arc;

use crate::codes::{store, Code};
use crate::db::StoreError;
use crate::redemption::gate::{Controls, GateError};
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Gate(#[from] GateError),
}

/// Rebuilds the code's state if Redis has none. Returns whether it did.
pub async fn rebuild_if_missing(state: &AppState, code: &Code) -> Result<bool, RebuildError> {
    if state.gate.has_state(&code.code).await? {
        return Ok(false);
    }
    let Some(guard) = state.gate.try_lock(&format!("rebuild:{}", code.code), 30_000).await? else {
        return Ok(false); // another gateway is on it
    };
    let result = rebuild(state, code).await;
    if let Err(e) = state.gate.unlock(guard).await {
        tracing::debug!(error = %e, "rebuild lock left to expire");
    }
    result
}

async fn rebuild(state: &AppState, code: &Code) -> Result<bool, RebuildError> {
    // The limit and the controls come from Postgres as it is now, not from
    // `code`: the caller's copy may be a cached row older than a limit change
    // or a pause (a rebuild must not resurrect a paused code nor install a stale
    // limit). A change that commits after these reads is repaired: the controls
    // are read once more below, the limit by the next reconciler pass.
    let (claims, synced, truth, fresh) = {
        let db = state.pg.get().await.map_err(StoreError::from)?;
        let Some(truth) = store::gate_truth(&db, code.id).await? else {
            return Ok(false); // the code is gone
        };
        let fresh = store::find_by_name(&db, &code.code).await?;
        (store::committed_claims(&db, code).await?, store::synced_counters(&db, code.id).await?, truth, fresh)
    };
    let Some(fresh) = fresh else { return Ok(false) };
    let (next, free) = free_tickets(&claims);
    let installed = state
        .gate
        .install(&code.code, truth.limit, truth.limit_version, next, &claims, &free, false, &Controls::of(&fresh))
        .await?;
    if installed {
        // A change that committed while we were building found no state to
        // write into: read the controls once more (set_status keeps the newer).
        let db = state.pg.get().await.map_err(StoreError::from)?;
        if let Some(now) = store::find_by_name(&db, &code.code).await? {
            state.gate.set_status(&code.code, &Controls::of(&now)).await?;
        }
    }
    if installed {
        // Carry the rejection counts over from the last sync, so the report keeps them.
        let seeds: Vec<(&str, u64)> = synced
            .rejections
            .as_object()
            .map(|m| m.iter().filter_map(|(k, v)| v.as_u64().map(|v| (k.as_str(), v))).collect())
            .unwrap_or_default();
        state.gate.add_rejections(&code.code, &seeds).await?;
        tracing::info!(code = %code.code, committed = claims.len(), next, free = free.len(), "gate state rebuilt");
    }
    Ok(installed)
}

/// `next` = one past the highest committed ticket; free = the unused tickets below it.
fn free_tickets(claims: &[(String, i32)]) -> (i32, Vec<i32>) {
    let used: HashSet<i32> = claims.iter().map(|(_, t)| *t).collect();
    let next = used.iter().max().map_or(0, |m| m + 1);
    let free = (0..next).filter(|t| !used.contains(t)).collect();
    (next, free)
}

/// Asks for a rebuild of `code` in the background (from the hot path, when a
/// claim finds no state). At most one per code per process at a time.
pub fn request(state: &Arc<AppState>, code: &Code) {
    let inserted = state.rebuilding.lock().map(|mut set| set.insert(code.id)).unwrap_or(false);
    if !inserted {
        return;
    }
    let state = state.clone();
    let code = code.clone();
    tokio::spawn(async move {
        if let Err(e) = rebuild_if_missing(&state, &code).await {
            tracing::warn!(code = %code.code, error = %e, "on-demand rebuild failed");
        }
        if let Ok(mut set) = state.rebuilding.lock() {
            set.remove(&code.id);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_tickets_are_the_gaps_below_the_highest_used() {
        assert_eq!(free_tickets(&[]), (0, vec![]));
        let held = |pairs: &[(&str, i32)]| pairs.iter().map(|(h, t)| (h.to_string(), *t)).collect::<Vec<_>>();
        assert_eq!(free_tickets(&held(&[("1", 0), ("2", 1)])), (2, vec![]));
        assert_eq!(free_tickets(&held(&[("1", 4), ("order:9", 1)])), (5, vec![0, 2, 3]));
    }
}
