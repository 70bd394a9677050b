//! The in-process code cache the redemption path reads instead of Postgres.
//!
//! Entries live for `CODE_CACHE_TTL_MS`; unknown codes are cached too (so a
//! flood of one bad code costs one query), in a bounded map. Each code also
//! carries `GateHints`: "sold out as of a moment ago" (refuse without asking
//! Redis) and rejection counts not yet flushed to Redis. Hints survive a
//! refresh of the entry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;

use super::model::Code;
use super::store;
use crate::db::StoreError;

/// Unknown codes remembered at most; beyond that the negative entries are dropped.
const MAX_NEGATIVE_ENTRIES: usize = 100_000;

/// Rejection reasons counted in-process and flushed to the gate's stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalReject {
    SoldOut,
    NotEligible,
    TryAgain,
}

impl LocalReject {
    pub const ALL: [LocalReject; 3] = [LocalReject::SoldOut, LocalReject::NotEligible, LocalReject::TryAgain];

    pub fn as_str(self) -> &'static str {
        match self {
            LocalReject::SoldOut => "sold_out",
            LocalReject::NotEligible => "not_eligible",
            LocalReject::TryAgain => "try_again",
        }
    }
}

#[derive(Debug)]
pub struct GateHints {
    epoch: Instant,
    /// Milliseconds since `epoch` until which the code is taken as sold out.
    sold_out_until_ms: AtomicU64,
    unflushed: [AtomicU64; 3],
}

impl GateHints {
    fn new() -> Self {
        GateHints { epoch: Instant::now(), sold_out_until_ms: AtomicU64::new(0), unflushed: Default::default() }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn is_sold_out(&self) -> bool {
        self.now_ms() < self.sold_out_until_ms.load(Ordering::Relaxed)
    }

    pub fn mark_sold_out(&self, ttl: Duration) {
        self.sold_out_until_ms.store(self.now_ms() + ttl.as_millis() as u64, Ordering::Relaxed);
    }

    /// Forget "sold out" at once (a slot was given back, or the limit raised).
    pub fn clear_sold_out(&self) {
        self.sold_out_until_ms.store(0, Ordering::Relaxed);
    }

    pub fn count(&self, reason: LocalReject) {
        self.unflushed[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the unflushed counts (resetting them).
    pub fn take_counts(&self) -> Vec<(LocalReject, u64)> {
        LocalReject::ALL
            .iter()
            .map(|r| (*r, self.unflushed[*r as usize].swap(0, Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Puts counts back after a failed flush.
    pub fn restore_counts(&self, counts: &[(LocalReject, u64)]) {
        for (r, n) in counts {
            self.unflushed[*r as usize].fetch_add(*n, Ordering::Relaxed);
        }
    }

    pub fn peek(&self, reason: LocalReject) -> u64 {
        self.unflushed[reason as usize].load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct CachedCode {
    pub code: Code,
    pub hints: Arc<GateHints>,
}

struct Entry {
    code: Option<Arc<CachedCode>>,
    loaded_at: Instant,
}

pub struct CodeCache {
    ttl: Duration,
    entries: RwLock<HashMap<String, Entry>>,
    /// One load at a time: a burst on a cold code costs one query, not thousands.
    loading: tokio::sync::Mutex<()>,
}

impl CodeCache {
    pub fn new(ttl: Duration) -> Self {
        CodeCache { ttl, entries: RwLock::new(HashMap::new()), loading: tokio::sync::Mutex::new(()) }
    }

    /// The code named `name` (already normalised), or `None` if it does not exist.
    pub async fn get(&self, pg: &Pool, name: &str) -> Result<Option<Arc<CachedCode>>, StoreError> {
        if let Some(hit) = self.fresh(name) {
            return Ok(hit);
        }
        let _guard = self.loading.lock().await;
        if let Some(hit) = self.fresh(name) {
            return Ok(hit);
        }
        let db = pg.get().await?;
        let loaded = store::find_by_name(&db, name).await?;
        Ok(self.put(name, loaded))
    }

    /// Drops the entry so the next read loads it (after an admin change).
    pub fn invalidate(&self, name: &str) {
        if let Ok(mut map) = self.entries.write() {
            map.remove(name);
        }
    }

    /// Every cached code (for flushing hints).
    pub fn known(&self) -> Vec<Arc<CachedCode>> {
        self.entries.read().map(|m| m.values().filter_map(|e| e.code.clone()).collect()).unwrap_or_default()
    }

    pub fn hints_of(&self, name: &str) -> Option<Arc<GateHints>> {
        let map = self.entries.read().ok()?;
        map.get(name).and_then(|e| e.code.as_ref()).map(|c| c.hints.clone())
    }

    fn fresh(&self, name: &str) -> Option<Option<Arc<CachedCode>>> {
        let map = self.entries.read().ok()?;
        let entry = map.get(name)?;
        (entry.loaded_at.elapsed() < self.ttl).then(|| entry.code.clone())
    }

    fn put(&self, name: &str, loaded: Option<Code>) -> Option<Arc<CachedCode>> {
        let Ok(mut map) = self.entries.write() else {
            return loaded.map(|code| Arc::new(CachedCode { code, hints: Arc::new(GateHints::new()) }));
        };
        let hints = map
            .get(name)
            .and_then(|e| e.code.as_ref())
            .map(|c| c.hints.clone())
            .unwrap_or_else(|| Arc::new(GateHints::new()));
        let code = loaded.map(|code| Arc::new(CachedCode { code, hints }));
        if code.is_none() && map.len() >= MAX_NEGATIVE_ENTRIES {
            map.retain(|_, e| e.code.is_some());
        }
        map.insert(name.to_string(), Entry { code: code.clone(), loaded_at: Instant::now() });
        code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_count_and_expire() {
        let h = GateHints::new();
        assert!(!h.is_sold_out());
        h.mark_sold_out(Duration::from_secs(60));
        assert!(h.is_sold_out());
        h.clear_sold_out();
        assert!(!h.is_sold_out());
        h.count(LocalReject::SoldOut);
        h.count(LocalReject::SoldOut);
        let taken = h.take_counts();
        assert_eq!(taken, vec![(LocalReject::SoldOut, 2)]);
        assert!(h.take_counts().is_empty());
        h.restore_counts(&taken);
        assert_eq!(h.peek(LocalReject::SoldOut), 2);
    }
}
