//! Claims left pending by a gateway that died between the Redis claim and the
//! Postgres commit. After the grace period (longer than any commit can take:
//! the statement timeout is shorter, checked at start-up) a pending claim with
//! a Postgres row is confirmed, one without is released.

use std::collections::HashSet;

use super::rebuild::RebuildError;
use crate::codes::{store, Code};
use crate::db::StoreError;
use crate::redemption::gate::Release;
use crate::state::AppState;

/// Claims looked at per code per run; the rest wait for the next run.
const MAX_PER_RUN: usize = 10_000;

#[derive(Debug, Default)]
pub struct SweepStats {
    pub released: usize,
    pub confirmed: usize,
}

pub async fn sweep_stale_claims(state: &AppState, code: &Code) -> Result<SweepStats, RebuildError> {
    let cutoff = state.gate.now_ms().await? - state.config.claim_grace.as_millis() as i64;
    let stale = state.gate.stale_claims(&code.code, cutoff, MAX_PER_RUN).await?;
    if stale.is_empty() {
        return Ok(SweepStats::default());
    }
    let holders: Vec<String> = stale.iter().map(|(h, _)| h.clone()).collect();
    let committed: HashSet<String> = {
        let db = state.pg.get().await.map_err(StoreError::from)?;
        store::committed_holders(&db, code, &holders).await?.into_iter().collect()
    };
    let confirmed: Vec<&String> = holders.iter().filter(|h| committed.contains(*h)).collect();
    state.gate.confirm(&code.code, &confirmed).await?;
    let mut stats = SweepStats { confirmed: confirmed.len(), released: 0 };
    for (holder, ticket) in stale.into_iter().filter(|(h, _)| !committed.contains(h)) {
        if state.gate.release(&code.code, &holder, ticket, Release::Free, true).await? {
            stats.released += 1;
            tracing::info!(code = %code.code, holder, ticket, "stale claim released");
        }
    }
    if stats.released > 0 {
        if let Some(hints) = state.codes.hints_of(&code.code) {
            hints.clear_sold_out();
        }
    }
    Ok(stats)
}
