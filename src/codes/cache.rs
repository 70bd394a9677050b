//! The in-process code cache the redemption path reads instead of Postgres.
//!
//! Entries are fresh for `CODE_CACHE_TTL_MS`, then served stale while one
//! background task refreshes them; unknown codes are cached too (so a flood
//! of one bad code costs one query), in a bounded map. Each code also
//! carries `GateHints`: "sold out as of a moment ago" (refuse without asking
//! Redis) and rejection counts not yet flushed to Redis. Hints survive a
//! refresh of the entry.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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

enum Lookup {
    Fresh(Option<Arc<CachedCode>>),
    Stale(Option<Arc<CachedCode>>),
    Missing,
}

struct Inner {
    ttl: Duration,
    entries: RwLock<HashMap<String, Entry>>,
    /// Cold loads, one per code at a time: a burst on a cold code costs one
    /// query, and a slow load of one code does not hold up the others.
    loads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Codes whose stale entry is being refreshed in the background.
    refreshing: Mutex<HashSet<String>>,
}

#[derive(Clone)]
pub struct CodeCache {
    inner: Arc<Inner>,
}

impl CodeCache {
    pub fn new(ttl: Duration) -> Self {
        CodeCache {
            inner: Arc::new(Inner {
                ttl,
                entries: RwLock::new(HashMap::new()),
                loads: Mutex::new(HashMap::new()),
                refreshing: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// The code named `name` (already normalised), or `None` if it does not
    /// exist. A stale entry is served at once while one background task
    /// refreshes it (and stays served if Postgres cannot be reached): only a
    /// code never seen waits for the database.
    pub async fn get(&self, pg: &Pool, name: &str) -> Result<Option<Arc<CachedCode>>, StoreError> {
        match self.lookup(name) {
            Lookup::Fresh(hit) => return Ok(hit),
            Lookup::Stale(hit) => {
                self.refresh_in_background(pg, name);
                return Ok(hit);
            }
            Lookup::Missing => {}
        }
        let lock = self.load_lock(name);
        let _guard = lock.lock().await;
        if let Lookup::Fresh(hit) | Lookup::Stale(hit) = self.lookup(name) {
            return Ok(hit); // loaded by the request we waited for
        }
        let loaded = load(pg, name).await;
        self.drop_load_lock(name);
        Ok(self.put(name, loaded?))
    }

    fn refresh_in_background(&self, pg: &Pool, name: &str) {
        let started = self.inner.refreshing.lock().map(|mut set| set.insert(name.to_string())).unwrap_or(false);
        if !started {
            return;
        }
        let (cache, pg, name) = (self.clone(), pg.clone(), name.to_string());
        tokio::spawn(async move {
            match load(&pg, &name).await {
                Ok(loaded) => {
                    cache.put(&name, loaded);
                }
                Err(e) => tracing::debug!(code = %name, error = %e, "code refresh failed; serving the cached one"),
            }
            if let Ok(mut set) = cache.inner.refreshing.lock() {
                set.remove(&name);
            }
        });
    }

    fn load_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        match self.inner.loads.lock() {
            Ok(mut loads) => loads.entry(name.to_string()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    fn drop_load_lock(&self, name: &str) {
        if let Ok(mut loads) = self.inner.loads.lock() {
            loads.remove(name);
        }
    }

    /// The code, only if a fresh entry holds it: no database, no task.
    pub fn fresh(&self, name: &str) -> Option<Arc<CachedCode>> {
        match self.lookup(name) {
            Lookup::Fresh(hit) => hit,
            _ => None,
        }
    }

    /// Whether this gateway has an entry for `name` (fresh or stale, known or
    /// unknown): if not, a read would query the database.
    pub fn has_entry(&self, name: &str) -> bool {
        !matches!(self.lookup(name), Lookup::Missing)
    }

    /// Drops the entry so the next read loads it (after an admin change).
    pub fn invalidate(&self, name: &str) {
        if let Ok(mut map) = self.inner.entries.write() {
            map.remove(name);
        }
    }

    /// Every cached code (for flushing hints).
    pub fn known(&self) -> Vec<Arc<CachedCode>> {
        self.inner.entries.read().map(|m| m.values().filter_map(|e| e.code.clone()).collect()).unwrap_or_default()
    }

    pub fn hints_of(&self, name: &str) -> Option<Arc<GateHints>> {
        let map = self.inner.entries.read().ok()?;
        map.get(name).and_then(|e| e.code.as_ref()).map(|c| c.hints.clone())
    }

    /// Whether the cached code `name` is tracked in the metrics (false when
    /// unknown or not cached): decided from the cache, never from input.
    pub fn is_tracked(&self, name: &str) -> bool {
        let Ok(map) = self.inner.entries.read() else { return false };
        map.get(name).and_then(|e| e.code.as_ref()).is_some_and(|c| c.code.tracked && c.code.batch.is_none())
    }

    fn lookup(&self, name: &str) -> Lookup {
        let Ok(map) = self.inner.entries.read() else { return Lookup::Missing };
        match map.get(name) {
            Some(e) if e.loaded_at.elapsed() < self.inner.ttl => Lookup::Fresh(e.code.clone()),
            Some(e) => Lookup::Stale(e.code.clone()),
            None => Lookup::Missing,
        }
    }

    fn put(&self, name: &str, loaded: Option<Code>) -> Option<Arc<CachedCode>> {
        let Ok(mut map) = self.inner.entries.write() else {
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

async fn load(pg: &Pool, name: &str) -> Result<Option<Code>, StoreError> {
    let db = pg.get().await?;
    store::find_by_name(&db, name).await
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
        assert_eq!(h.take_counts(), vec![(LocalReject::SoldOut, 2)], "restored counts are flushed next time");
    }
}
