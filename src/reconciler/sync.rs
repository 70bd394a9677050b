//! Writes the gate's counters (remaining, rejections by reason) back to
//! Postgres, so the report still has them after a Redis loss.

use super::rebuild::RebuildError;
use crate::codes::{store, Code};
use crate::db::StoreError;
use crate::state::AppState;

pub async fn sync_counters(state: &AppState, code: &Code) -> Result<(), RebuildError> {
    let Some(snapshot) = state.gate.snapshot(&code.code).await? else {
        return Ok(());
    };
    let rejections = serde_json::to_value(&snapshot.rejections).unwrap_or_default();
    let remaining = i32::try_from(snapshot.remaining()).unwrap_or(i32::MAX);
    let db = state.pg.get().await.map_err(StoreError::from)?;
    store::save_synced_counters(&db, code.id, remaining, &rejections).await?;
    Ok(())
}
