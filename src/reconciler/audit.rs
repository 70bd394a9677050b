//! The ticket audit: no slot lost for good. For a code whose gate state may
//! have drifted from Postgres, every ticket in `[0, min(next, limit))` that no
//! live row holds, no claim holds and that is not on the free list goes back
//! on it; stale claims (a holder with no live row) are dropped, committed
//! holders Redis forgot are recorded again, committed tickets are taken off
//! the free list, duplicates on it are removed.
//!
//! Bounded work, proportional to the codes that changed: a code is audited
//! only when one of its change marks moved since its last audit — Redis's
//! `meta.dirty` (bumped by the scripts that can lose a ticket: a discard, a
//! cancel that found its claim forgotten, a limit change, a rebuild) or
//! Postgres's `codes.slot_changes` (bumped by every coupon cancel, so a cancel
//! whose Redis step failed is seen too). A pass reads at most
//! `TICKETS_PER_PASS` tickets, `TICKETS_PER_STEP` per step; a code larger
//! than that is swept over several passes from a cursor kept in its meta.
//! Each step costs O(step + free list) in Redis, in short commands, and one
//! indexed range query in Postgres.
//!
//! Races: each step reads, in this order, the gate's marks (epoch, moves),
//! the free list, the owners of the range (with their claims and pending
//! state), then Postgres; lua/audit.lua acts only if epoch and moves are
//! unchanged and re-checks each ticket it frees. Its header has the argument
//! for why a ticket whose commit is in flight is never freed.

use std::collections::{HashMap, HashSet};

use super::rebuild::RebuildError;
use crate::codes::{store, Code};
use crate::db::StoreError;
use crate::redemption::gate::{AuditPlan, GateSnapshot, OwnedTicket};
use crate::state::AppState;

/// Tickets one audit step looks at.
pub const TICKETS_PER_STEP: i64 = 10_000;
/// Tickets (plus free-list entries) one reconciler pass reads for audits.
pub const TICKETS_PER_PASS: i64 = 200_000;
/// A step whose state moved under it is retried this many times in a pass.
const RETRIES: usize = 3;

#[derive(Debug, Default, Clone, Copy)]
pub struct AuditStats {
    /// Tickets given back to the free list.
    pub freed: i64,
    /// Claims dropped or restored, free-list entries removed.
    pub fixed: i64,
    /// The work spent (tickets and free-list entries read).
    pub work: i64,
    /// The sweep of the code reached its end this pass.
    pub completed: bool,
}

/// Whether the code's change marks moved since its last audit (or a sweep is
/// part-way through).
pub fn wants_audit(snapshot: &GateSnapshot, slot_changes: i64) -> bool {
    snapshot.audit_in_progress || snapshot.dirty != snapshot.audited || slot_changes != snapshot.audited_pg
}

/// Audits `code` for at most about `budget` work; resumes where the last pass stopped.
pub async fn audit_code(state: &AppState, code: &Code, budget: i64) -> Result<AuditStats, RebuildError> {
    let gate = &state.gate;
    let name = code.code.as_str();
    let mut stats = AuditStats::default();
    let mut retries = 0;
    while stats.work < budget.max(1) {
        // 1. Redis, in the order lua/audit.lua's argument needs.
        let Some(marks) = gate.audit_marks(name).await? else {
            return Ok(stats); // no state: a rebuild comes first
        };
        let top = marks.next.min(marks.limit).max(0);
        let from = marks.audit_at.unwrap_or(0).clamp(0, top);
        let to = (from + TICKETS_PER_STEP).min(top);
        let free = gate.free_list(name).await?;
        let owned = gate.owners_in(name, from, to).await?;
        // 2. Postgres, after.
        let (slot_changes, rows) = {
            let db = state.pg.get().await.map_err(StoreError::from)?;
            let Some(truth) = store::gate_truth(&db, code.id).await? else {
                return Ok(stats);
            };
            (truth.slot_changes, store::committed_in_range(&db, code, from, to).await?)
        };
        let unowned_rows: Vec<String> = {
            let owned_tickets: HashSet<i64> = owned.iter().map(|o| o.ticket).collect();
            rows.iter().filter(|(_, t)| !owned_tickets.contains(&(*t as i64))).map(|(h, _)| h.clone()).collect()
        };
        let claims = gate.claims_of(name, &unowned_rows).await?;
        let forgotten: HashSet<String> = unowned_rows
            .into_iter()
            .zip(claims)
            .filter(|(_, c)| matches!(c, None | Some(-1)))
            .map(|(h, _)| h)
            .collect();

        let mut plan = plan_step(from, to, &free, &owned, &rows, &forgotten);
        plan.cursor_after = (to < top).then_some(to);
        plan.start_marks = marks.audit_at.is_none().then_some((marks.dirty, slot_changes));
        stats.work += (to - from) + free.len() as i64;
        match gate.audit_apply(name, &marks, &plan).await? {
            Some((freed, fixed)) => {
                stats.freed += freed;
                stats.fixed += fixed;
                if freed > 0 {
                    tracing::info!(code = name, freed, from, to, "audit gave back lost tickets");
                }
                if plan.cursor_after.is_none() {
                    stats.completed = true;
                    return Ok(stats);
                }
            }
            None if retries < RETRIES => retries += 1,
            None => return Ok(stats), // busy code: the next pass tries again
        }
    }
    Ok(stats)
}

/// Decides one step from what was read (pure: unit-tested below).
/// `owned`: the gate's owners of tickets in `[from, to)`; `rows`: committed
/// (holder, ticket) in that range; `forgotten`: committed holders in the
/// range that Redis has no claim for (or only -1).
fn plan_step(
    from: i64,
    to: i64,
    free: &[i32],
    owned: &[OwnedTicket],
    rows: &[(String, i32)],
    forgotten: &HashSet<String>,
) -> AuditPlan {
    let committed: HashMap<i64, &str> = rows.iter().map(|(h, t)| (*t as i64, h.as_str())).collect();
    let mut on_list: HashMap<i64, usize> = HashMap::new();
    for t in free {
        *on_list.entry(*t as i64).or_default() += 1;
    }
    let mut plan = AuditPlan::default();
    // Tickets a live claim holds: a pending one (its commit may be in flight),
    // or one whose holder's row holds it.
    let mut held: HashSet<i64> = HashSet::new();
    for o in owned {
        let consistent = o.claimed == Some(o.ticket);
        if o.pending || (consistent && committed.get(&o.ticket) == Some(&o.holder.as_str())) {
            held.insert(o.ticket);
        } else if !committed.contains_key(&o.ticket) || !consistent {
            // Not pending, and no live row of this holder holds this ticket:
            // a stale claim (a cancel whose Redis step failed), or an owner
            // entry its claim no longer names.
            plan.unhold.push((o.ticket, o.holder.clone()));
        } else {
            held.insert(o.ticket);
        }
    }
    for (holder, ticket) in rows {
        let t = *ticket as i64;
        if forgotten.contains(holder) && !owned.iter().any(|o| o.ticket == t) {
            plan.restore.push((holder.clone(), t));
        }
    }
    for (t, n) in &on_list {
        if committed.contains_key(t) {
            plan.purge.push(*t);
        } else if *n > 1 {
            plan.dedupe.push(*t);
        }
    }
    for t in from..to {
        if !committed.contains_key(&t) && !held.contains(&t) && !on_list.contains_key(&t) {
            plan.free.push(t);
        }
    }
    plan.purge.sort_unstable();
    plan.dedupe.sort_unstable();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(ticket: i64, holder: &str, claimed: Option<i64>, pending: bool) -> OwnedTicket {
        OwnedTicket { ticket, holder: holder.into(), claimed, pending }
    }

    #[test]
    fn lost_tickets_are_freed_and_held_ones_kept() {
        let rows = vec![("order:a".to_string(), 0), ("order:b".to_string(), 2)];
        let owners = vec![
            owned(0, "order:a", Some(0), false), // committed, consistent
            owned(1, "order:p", Some(1), true),  // pending: its commit may be in flight
            owned(3, "order:c", Some(3), false), // not pending, no row: stale (cancelled)
        ];
        let forgotten: HashSet<String> = ["order:b".to_string()].into();
        let plan = plan_step(0, 7, &[5, 6, 6, 2], &owners, &rows, &forgotten);
        assert_eq!(plan.unhold, vec![(3, "order:c".to_string())]);
        assert_eq!(plan.restore, vec![("order:b".to_string(), 2)]);
        assert_eq!(plan.purge, vec![2], "a committed ticket does not stay on the free list");
        assert_eq!(plan.dedupe, vec![6]);
        // 3 (stale claim) and 4 (held by nobody) go back; 5 and 6 are free already.
        assert_eq!(plan.free, vec![3, 4]);
    }

    #[test]
    fn an_owner_whose_claim_names_another_ticket_holds_nothing() {
        let owners = vec![owned(1, "u7", Some(-1), false)];
        let plan = plan_step(0, 2, &[], &owners, &[], &HashSet::new());
        assert_eq!(plan.unhold, vec![(1, "u7".to_string())]);
        assert_eq!(plan.free, vec![0, 1]);
    }
}
