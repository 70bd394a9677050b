//! The index of touched codes: which codes' gate state changed lately, so the
//! reconciler visits those instead of every active code (lua/touch.lua,
//! lua/untouch.lua). This module keeps the gateway's side of it: the marks it
//! wrote lately, so that a busy code costs one mark per `TOUCH_EVERY`, not one
//! per claim.
//!
//! The argument that no pending claim escapes the index: a claim carries the
//! deadline of the mark that covers it (`deadline_ms`), and claim.lua refuses
//! to run past it (the gateway then marks afresh and claims again). So every
//! claim runs in Redis at most `TOUCH_EVERY + CLAIM_SLACK` after a mark of
//! its code, by Redis's one clock, however long the gateway stalled in
//! between. The reconciler removes a mark only if it is older than
//! `TOUCH_EVERY + CLAIM_SLACK + REMOVAL_MARGIN` when its pass starts and the
//! code, read after that, has no pending claim: every claim that mark
//! covered has run by then. (The slack is generous so that a gateway on an
//! overloaded machine, stalled between its mark and its claim, rarely has to
//! mark again.)

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A gateway marks a code at most this often.
pub const TOUCH_EVERY: Duration = Duration::from_secs(1);
/// How long after its mark's freshness ends a claim may still run under it.
pub const CLAIM_SLACK: Duration = Duration::from_secs(10);
/// Margin between the last deadline under a mark and its removal.
const REMOVAL_MARGIN: Duration = Duration::from_secs(5);
/// Marks remembered at most; beyond that, the stale ones are forgotten.
const MAX_REMEMBERED: usize = 50_000;

/// How old (ms) a mark must be before the reconciler may remove it.
pub fn removable_after_ms() -> i64 {
    (TOUCH_EVERY + CLAIM_SLACK + REMOVAL_MARGIN).as_millis() as i64
}

/// The deadline (Redis ms) of claims under a mark made at `mark_ms`.
pub fn deadline_of(mark_ms: i64) -> i64 {
    mark_ms + (TOUCH_EVERY + CLAIM_SLACK).as_millis() as i64
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    /// When this process sent the mark (before it reached Redis).
    sent: Instant,
    /// The mark's time in Redis (ms).
    redis_ms: i64,
}

/// The marks this process wrote lately, by code.
#[derive(Debug, Default)]
pub struct RecentMarks {
    marks: Mutex<HashMap<String, Mark>>,
}

impl RecentMarks {
    /// The deadline (Redis ms) a claim of `code` may carry under a mark still
    /// fresh, or None: mark first.
    pub fn deadline_ms(&self, code: &str) -> Option<i64> {
        let marks = self.marks.lock().ok()?;
        let mark = marks.get(code)?;
        (mark.sent.elapsed() < TOUCH_EVERY).then(|| deadline_of(mark.redis_ms))
    }

    /// Records a mark that Redis answered; `sent` is when it was sent.
    pub fn record(&self, code: &str, sent: Instant, redis_ms: i64) {
        let Ok(mut marks) = self.marks.lock() else { return };
        if marks.len() >= MAX_REMEMBERED {
            marks.retain(|_, m| m.sent.elapsed() < TOUCH_EVERY);
        }
        marks.insert(code.to_string(), Mark { sent, redis_ms });
    }

    /// Forgets the mark of `code` (Redis refused a claim past its deadline).
    pub fn forget(&self, code: &str) {
        if let Ok(mut marks) = self.marks.lock() {
            marks.remove(code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_mark_gives_a_deadline_past_its_time_and_a_forgotten_one_none() {
        let marks = RecentMarks::default();
        assert_eq!(marks.deadline_ms("A"), None);
        marks.record("A", Instant::now(), 1_000);
        assert_eq!(marks.deadline_ms("A"), Some(1_000 + 11_000));
        assert!(marks.deadline_ms("A").unwrap() < 1_000 + removable_after_ms(), "removal waits past every deadline");
        marks.forget("A");
        assert_eq!(marks.deadline_ms("A"), None);
        let old = Instant::now() - TOUCH_EVERY - Duration::from_millis(1);
        marks.record("B", old, 5);
        assert_eq!(marks.deadline_ms("B"), None, "a stale mark must be renewed");
    }
}
