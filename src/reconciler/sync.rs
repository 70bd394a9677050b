//! Writes the gate's counters (remaining, rejections by reason) back to
//! Postgres, so the report still has them after a Redis loss. Only when they
//! moved since the last write: a pass over many idle codes writes nothing.

use std::collections::BTreeMap;

use super::rebuild::RebuildError;
use crate::codes::store::{self, ReconcileRow};
use crate::db::StoreError;
use crate::redemption::gate::GateSnapshot;
use crate::state::AppState;

/// Writes the counters if they differ from the row's; returns whether it
/// wrote. `snapshot`: the gate as read this pass, if nothing changed it since
/// (else it is read again).
pub async fn sync_counters(
    state: &AppState,
    row: &ReconcileRow,
    snapshot: Option<&GateSnapshot>,
) -> Result<bool, RebuildError> {
    let fresh;
    let snapshot = match snapshot {
        Some(s) => s,
        None => match state.gate.snapshot(&row.code.code).await? {
            Some(s) => {
                fresh = s;
                &fresh
            }
            None => return Ok(false),
        },
    };
    let remaining = i32::try_from(snapshot.remaining()).unwrap_or(i32::MAX);
    if in_step(row.synced_remaining.unwrap_or(row.truth.limit), &row.synced_rejections, remaining, snapshot) {
        return Ok(false);
    }
    let rejections = serde_json::to_value(&snapshot.rejections).unwrap_or_default();
    let db = state.pg.get().await.map_err(StoreError::from)?;
    store::save_synced_counters(&db, row.code.id, remaining, &rejections).await?;
    Ok(true)
}

/// Whether Postgres already holds these counters. A code never synced counts
/// as holding its untouched state (all remaining, no rejection), so that the
/// codes of a bulk creation cost no write until they are used.
fn in_step(
    synced_remaining: i32,
    synced_rejections: &serde_json::Value,
    remaining: i32,
    snapshot: &GateSnapshot,
) -> bool {
    let nonzero = |m: BTreeMap<String, i64>| m.into_iter().filter(|(_, v)| *v != 0).collect::<BTreeMap<_, _>>();
    let synced: BTreeMap<String, i64> = synced_rejections
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| v.as_i64().map(|v| (k.clone(), v))).collect())
        .unwrap_or_default();
    let live: BTreeMap<String, i64> = snapshot.rejections.iter().map(|(k, v)| (k.clone(), *v)).collect();
    synced_remaining == remaining && nonzero(synced) == nonzero(live)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_untouched_code_never_synced_needs_no_write_and_a_used_one_does() {
        // A code never synced counts as synced with its limit remaining.
        let fresh = GateSnapshot { limit: 1, ..Default::default() };
        assert!(in_step(1, &json!({}), 1, &fresh));
        let used = GateSnapshot { limit: 1, next: 1, ..Default::default() };
        assert!(!in_step(1, &json!({}), 0, &used));
        assert!(in_step(0, &json!({}), 0, &used));
        let mut rejected = used.clone();
        rejected.rejections.insert("sold_out".into(), 2);
        assert!(!in_step(0, &json!({"sold_out": 1}), 0, &rejected));
        assert!(in_step(0, &json!({"sold_out": 2, "try_again": 0}), 0, &rejected));
    }
}
