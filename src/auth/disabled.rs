//! Disabled users: their tokens are refused on every request. The check must
//! be cheap (it runs before every protected handler), so each gateway keeps
//! the set of disabled user ids in memory, reloaded from Postgres every
//! `DISABLED_REFRESH` and updated at once when this gateway disables someone.
//! Another gateway refuses the user's tokens within that interval.
//!
//! Fails closed: until the first load has succeeded the set is unknown, and
//! every token is refused with 503 (and /readyz says not ready), rather than
//! letting a disabled user through because Postgres was slow at start-up.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use deadpool_postgres::GenericClient;

use crate::db::StoreError;

pub const DISABLED_REFRESH: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct DisabledUsers {
    ids: RwLock<HashSet<i64>>,
    /// The set has been loaded from Postgres at least once.
    loaded: AtomicBool,
}

impl DisabledUsers {
    /// False until the first load from Postgres succeeded: no token can be
    /// judged until then.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn contains(&self, user_id: i64) -> bool {
        self.ids.read().map(|s| s.contains(&user_id)).unwrap_or(false)
    }

    pub fn insert(&self, user_id: i64) {
        if let Ok(mut s) = self.ids.write() {
            s.insert(user_id);
        }
    }

    pub fn remove(&self, user_id: i64) {
        if let Ok(mut s) = self.ids.write() {
            s.remove(&user_id);
        }
    }

    /// The wallet role of the split: it has no users table (disabling is the
    /// redemption side's), so it judges tokens by signature and expiry alone.
    pub fn assume_none(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    pub async fn reload(&self, db: &impl GenericClient) -> Result<(), StoreError> {
        let stmt = db.prepare_cached("SELECT id FROM users WHERE disabled_at IS NOT NULL").await?;
        let ids: HashSet<i64> = db.query(&stmt, &[]).await?.iter().map(|r| r.get(0)).collect();
        if let Ok(mut s) = self.ids.write() {
            *s = ids;
            self.loaded.store(true, Ordering::Release);
        }
        Ok(())
    }
}

/// Sets or clears `disabled_at`; `false` if there is no such user.
pub async fn set_disabled(db: &impl GenericClient, user_id: i64, disabled: bool) -> Result<bool, StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE users SET disabled_at = CASE WHEN $2 THEN coalesce(disabled_at, now()) ELSE NULL END
             WHERE id = $1",
        )
        .await?;
    Ok(db.execute(&stmt, &[&user_id, &disabled]).await? == 1)
}
