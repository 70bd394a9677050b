//! Re-asserts the operator's controls (status, window) of recently changed
//! codes in the gate, from Postgres. A pause writes them itself; this repairs
//! the gate when that write was lost (Redis down at the time, or flushed and
//! rebuilt in between). Work per pass is proportional to the codes changed
//! lately, not to every code. The commit checks the controls anyway: this
//! only keeps the gate from handing out tickets that would be refused.

use std::time::Duration;

use super::rebuild::RebuildError;
use crate::codes::store;
use crate::db::StoreError;
use crate::redemption::gate::Controls;
use crate::state::AppState;

/// How far back a pass looks: several passes see every change, so one pass
/// that fails (or a gateway that dies holding the lock) loses nothing.
const LOOKBACK_MIN: Duration = Duration::from_secs(60);
/// Codes looked at per pass at most (the most recently changed first).
const MAX_PER_PASS: i64 = 10_000;

/// Returns how many codes' gate controls disagreed with Postgres and were set.
pub async fn reassert_controls(state: &AppState) -> Result<usize, RebuildError> {
    let lookback = (state.config.reconcile_interval * 6).max(LOOKBACK_MIN);
    let codes = {
        let db = state.pg.get().await.map_err(StoreError::from)?;
        store::codes_changed_within(&db, lookback.as_secs_f64(), MAX_PER_PASS).await?
    };
    let mut repaired = 0;
    for code in &codes {
        let before = state.gate.status_of(&code.code).await?;
        // Written whatever it held (the window may differ while the status
        // agrees); set_status never goes back to an older change.
        if state.gate.set_status(&code.code, &Controls::of(code)).await?
            && before.as_deref().is_some_and(|b| b != code.status.as_str())
        {
            repaired += 1;
            tracing::info!(code = %code.code, status = code.status.as_str(), gate = ?before, "gate controls repaired");
        }
    }
    Ok(repaired)
}
