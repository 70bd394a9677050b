//! The Redis admission gate. Every key of one code shares the hash tag
//! `{CODE}`, so each script touches one Cluster slot. The gate knows Redis and
//! nothing of Postgres.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::redis_conn::RedisConn;
use redis::{AsyncCommands, Script};

use super::touched::{self, RecentMarks};
use crate::codes::{Code, NotNow};
use crate::config::Config;
use crate::error::ApiError;

#[derive(Debug, thiserror::Error)]
#[error("redis: {source}")]
pub struct GateError {
    #[source]
    source: redis::RedisError,
    /// Failed before the claim script was sent (the touch mark before it):
    /// nothing of this request can be held, so nothing may be released.
    claim_not_sent: bool,
}

impl From<redis::RedisError> for GateError {
    fn from(source: redis::RedisError) -> Self {
        Self { source, claim_not_sent: false }
    }
}

impl GateError {
    /// The claim may have run; only its reply is missing. Never true when the
    /// claim was not sent: releasing then would free a claim another request
    /// of the same holder holds while its commit is in flight.
    pub fn is_timeout(&self) -> bool {
        !self.claim_not_sent && self.source.is_timeout()
    }

    fn before_claim(mut self) -> Self {
        self.claim_not_sent = true;
        self
    }
}

impl From<GateError> for ApiError {
    fn from(e: GateError) -> Self {
        tracing::warn!(error = %e, "gate unavailable");
        ApiError::TryAgain("the gate is unavailable, try again shortly")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// A slot is held for the user: commit it, or release it.
    Granted {
        ticket: i32,
    },
    AlreadyClaimed,
    /// The user's own claim has been pending past the grace period: its
    /// gateway probably died. Settle it against Postgres before answering.
    Abandoned {
        ticket: i32,
    },
    SoldOut,
    /// Redis has no state for the code (flushed or restarted): rebuild first.
    StateMissing,
    /// The operator's controls say no (paused, ended, outside the window):
    /// nothing was taken.
    NotNow(NotNow),
}

/// A code's operator controls as the gate keeps them (see lua/set_status.lua).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controls {
    pub status: &'static str,
    pub starts_ms: Option<i64>,
    pub ends_ms: Option<i64>,
    pub rev: i64,
}

impl Controls {
    pub fn of(code: &Code) -> Self {
        Controls {
            status: code.status.as_str(),
            starts_ms: code.starts_at.map(|t| t.timestamp_millis()),
            ends_ms: code.ends_at.map(|t| t.timestamp_millis()),
            rev: code.control_rev,
        }
    }

    fn bound(ms: Option<i64>) -> String {
        ms.map(|m| m.to_string()).unwrap_or_default()
    }
}

/// What to do with a claim whose commit did not happen. See lua/release.lua.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Drop the claim and give the ticket back (to the free list, or set
    /// aside in `dropped` if it is not below the gate's limit).
    Free,
    /// The user did redeem (Postgres says so): keep the claim, give the ticket back.
    KeepClaim,
    /// The ticket is used or out of range: drop the claim, keep the ticket out.
    Discard,
}

impl Release {
    fn as_arg(self) -> &'static str {
        match self {
            Release::Free => "free",
            Release::KeepClaim => "keep",
            Release::Discard => "discard",
        }
    }
}

/// The gate's figures for one code.
#[derive(Debug, Clone, Default)]
pub struct GateSnapshot {
    pub limit: i64,
    pub next: i64,
    pub free: i64,
    pub claims: i64,
    pub pending: i64,
    pub rejections: HashMap<String, i64>,
    /// The `limit_version` the gate's limit came with (None: installed before versions).
    pub limit_version: Option<i64>,
    /// Tickets set aside above a lowered limit (lua/set_limit.lua).
    pub dropped: i64,
    /// Change marks for the ticket audit: `dirty` counts changes that may
    /// have lost a ticket; `audited` / `audited_pg` are the marks (Redis's and
    /// Postgres's `slot_changes`) the last completed audit started from.
    pub dirty: i64,
    pub audited: i64,
    pub audited_pg: i64,
    /// An audit sweep of this code is part-way through.
    pub audit_in_progress: bool,
    /// The operator's controls the gate holds (None: never written: active).
    pub status: Option<String>,
    pub status_rev: Option<i64>,
}

impl GateSnapshot {
    /// Slots the gate can still hand out.
    pub fn remaining(&self) -> i64 {
        (self.limit - self.next).max(0) + self.free
    }
}

/// What the audit reads first (see lua/audit.lua).
#[derive(Debug, Clone)]
pub struct AuditMarks {
    pub limit: i64,
    pub next: i64,
    pub epoch: String,
    pub moves: String,
    pub dirty: i64,
    /// Where a sweep of the code's tickets stopped last pass, if part-way.
    pub audit_at: Option<i64>,
}

/// An owned ticket as the gate records it.
#[derive(Debug, Clone)]
pub struct OwnedTicket {
    pub ticket: i64,
    pub holder: String,
    /// The ticket the holder's claim names (None: no claim; -1: committed, untracked).
    pub claimed: Option<i64>,
    pub pending: bool,
}

/// What one audit step asks of lua/audit.lua.
#[derive(Debug, Default, Clone)]
pub struct AuditPlan {
    pub cursor_after: Option<i64>,
    pub start_marks: Option<(i64, i64)>,
    pub unhold: Vec<(i64, String)>,
    pub restore: Vec<(String, i64)>,
    pub purge: Vec<i64>,
    pub dedupe: Vec<i64>,
    pub free: Vec<i64>,
}

struct Keys {
    meta: String,
    claims: String,
    pending: String,
    free: String,
    stats: String,
    dropped: String,
    owners: String,
    base: String,
}

impl Keys {
    /// The live keys in the order release.lua, cancel.lua, audit.lua and
    /// install.lua take them as KEYS[1..6] (claim.lua puts `stats` between).
    fn live(&self) -> [&str; 6] {
        [&self.meta, &self.claims, &self.pending, &self.free, &self.dropped, &self.owners]
    }

    /// claim.lua's KEYS[1..7].
    fn claim(&self) -> [&str; 7] {
        [&self.meta, &self.claims, &self.pending, &self.free, &self.stats, &self.dropped, &self.owners]
    }

    /// set_limit.lua's KEYS[1..3].
    fn set_limit(&self) -> [&str; 3] {
        [&self.meta, &self.free, &self.dropped]
    }

    /// Where install() stages a rebuild (install.lua's KEYS[7..9]): under the
    /// code's hash tag, so the swap stays in its slot.
    fn staged(&self, tag: u64) -> [String; 3] {
        let base = &self.base;
        [
            format!("{base}:staged:{tag:x}:claims"),
            format!("{base}:staged:{tag:x}:free"),
            format!("{base}:staged:{tag:x}:owners"),
        ]
    }

    /// Every key one install_fresh() pipeline writes.
    fn fresh(&self) -> [&str; 6] {
        [&self.claims, &self.pending, &self.free, &self.dropped, &self.owners, &self.meta]
    }
}

#[derive(Clone)]
pub struct Gate {
    conn: RedisConn,
    prefix: String,
    claim_grace_ms: u64,
    claim: Script,
    release: Script,
    install: Script,
    set_limit: Script,
    cancel: Script,
    audit: Script,
    set_status: Script,
    touch: Script,
    untouch: Script,
    /// This process's recent marks in the index of touched codes (touched.rs).
    marks: Arc<RecentMarks>,
}

impl Gate {
    /// Connects (with automatic reconnection) and loads the scripts.
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let conn = crate::db::redis_manager(config).await?;
        let gate = Gate {
            conn,
            prefix: config.redis_key_prefix.clone(),
            claim_grace_ms: config.claim_grace.as_millis() as u64,
            claim: Script::new(include_str!("../../lua/claim.lua")),
            release: Script::new(include_str!("../../lua/release.lua")),
            install: Script::new(include_str!("../../lua/install.lua")),
            set_limit: Script::new(include_str!("../../lua/set_limit.lua")),
            cancel: Script::new(include_str!("../../lua/cancel.lua")),
            audit: Script::new(include_str!("../../lua/audit.lua")),
            set_status: Script::new(include_str!("../../lua/set_status.lua")),
            touch: Script::new(include_str!("../../lua/touch.lua")),
            untouch: Script::new(include_str!("../../lua/untouch.lua")),
            marks: Arc::new(RecentMarks::default()),
        };
        gate.load_scripts().await?;
        Ok(gate)
    }

    /// SCRIPT LOAD, so the first EVALSHA hits. (`invoke_async` reloads on NOSCRIPT
    /// too, e.g. after a Redis restart.)
    async fn load_scripts(&self) -> Result<(), GateError> {
        let mut conn = self.conn.clone();
        for script in [
            &self.claim,
            &self.release,
            &self.install,
            &self.set_limit,
            &self.cancel,
            &self.audit,
            &self.set_status,
            &self.touch,
            &self.untouch,
        ] {
            script.prepare_invoke().load_async(&mut conn).await?;
        }
        Ok(())
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn keys(&self, code: &str) -> Keys {
        let base = format!("{}:code:{{{}}}", self.prefix, code);
        Keys {
            meta: format!("{base}:meta"),
            claims: format!("{base}:claims"),
            pending: format!("{base}:pending"),
            free: format!("{base}:free"),
            stats: format!("{base}:stats"),
            dropped: format!("{base}:dropped"),
            owners: format!("{base}:owners"),
            base,
        }
    }

    /// The keys each script and each pipeline of the gate receives for
    /// `code`, from the same builders the calls use: the slot test checks
    /// that each list stays in one Cluster slot.
    pub fn keys_by_call(&self, code: &str) -> Vec<(&'static str, Vec<String>)> {
        let k = self.keys(code);
        let owned = |keys: &[&str]| keys.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut install = owned(&k.live());
        install.extend(k.staged(rand::random::<u64>()));
        vec![
            ("claim.lua", owned(&k.claim())),
            ("release.lua", owned(&k.live())),
            ("cancel.lua", owned(&k.live())),
            ("audit.lua", owned(&k.live())),
            ("install.lua", install),
            ("install staging pipeline", k.staged(rand::random::<u64>()).to_vec()),
            ("install_fresh pipeline", owned(&k.fresh())),
            ("set_limit.lua", owned(&k.set_limit())),
            ("set_status.lua", vec![k.meta.clone()]),
            ("snapshot pipeline", owned(&[&k.meta, &k.free, &k.claims, &k.pending, &k.dropped, &k.stats])),
            ("owners_in / stale_claims", owned(&[&k.owners, &k.claims, &k.pending])),
            ("reconciler lock (SET NX, unlock script)", vec![self.lock_key("reconciler")]),
            ("rebuild lock (SET NX, unlock script)", vec![self.lock_key(&format!("rebuild:{code}"))]),
        ]
    }

    pub async fn ping(&self) -> Result<(), String> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<String>(&mut conn).await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Claims a slot of `code` for `holder` (a user id, or an order for coupons).
    /// Under a fresh mark in the index of touched codes (touched.rs): a
    /// gateway that dies holding the claim has left the code there.
    pub async fn claim(&self, code: &str, holder: &str) -> Result<Claim, GateError> {
        let k = self.keys(code);
        let mut conn = self.conn.clone();
        let mut reply: Vec<i64> = vec![];
        for _ in 0..3 {
            let deadline = match self.marks.deadline_ms(code) {
                Some(deadline) => deadline,
                None => self.mark(code).await.map_err(GateError::before_claim)?,
            };
            reply = self
                .claim
                .key(&k.claim()[..])
                .arg(holder)
                .arg(self.claim_grace_ms)
                .arg(deadline)
                .invoke_async(&mut conn)
                .await?;
            if reply != [7] {
                break;
            }
            // The mark went stale on the way (this process stalled): mark afresh.
            self.marks.forget(code);
        }
        Ok(match reply.as_slice() {
            [1, ticket] => Claim::Granted { ticket: *ticket as i32 },
            [2] => Claim::AlreadyClaimed,
            [5, ticket] => Claim::Abandoned { ticket: *ticket as i32 },
            [3] => Claim::SoldOut,
            [6, 1] => Claim::NotNow(NotNow::Paused),
            [6, 2] => Claim::NotNow(NotNow::Ended),
            [6, 3] => Claim::NotNow(NotNow::NotStarted),
            [6, 4] => Claim::NotNow(NotNow::Expired),
            _ => Claim::StateMissing,
        })
    }

    /// Marks `code` in the index of touched codes now; returns the deadline
    /// (Redis ms) a claim under this mark must run by.
    async fn mark(&self, code: &str) -> Result<i64, GateError> {
        let sent = Instant::now();
        let mut conn = self.conn.clone();
        let at: i64 = self.touch.key(self.touched_key()).arg(code).invoke_async(&mut conn).await?;
        self.marks.record(code, sent, at);
        Ok(touched::deadline_of(at))
    }

    /// Marks `code` as touched, unless this process did so within `TOUCH_EVERY`
    /// (`always`: mark in any case, after a change the reconciler must see).
    /// A failure is logged only: the reconciler's slow sweep finds what a
    /// lost mark hides.
    pub async fn touch(&self, code: &str, always: bool) {
        if always || self.marks.deadline_ms(code).is_none() {
            if let Err(e) = self.mark(code).await {
                tracing::debug!(code, error = %e, "touch mark not written; left to the slow sweep");
            }
        }
    }

    fn touched_key(&self) -> String {
        format!("{}:touched", self.prefix)
    }

    /// The oldest `max` marks of the index of touched codes: (code, Redis ms).
    pub async fn touched(&self, max: usize) -> Result<Vec<(String, i64)>, GateError> {
        if max == 0 {
            return Ok(vec![]);
        }
        let mut conn = self.conn.clone();
        let marks: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(self.touched_key())
            .arg(0)
            .arg(max - 1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        Ok(marks.into_iter().map(|(code, at)| (code, at as i64)).collect())
    }

    /// Removes settled codes from the index, each only if its mark is still
    /// the one read (lua/untouch.lua). Returns how many went.
    pub async fn untouch(&self, marks: &[(String, i64)]) -> Result<usize, GateError> {
        let mut conn = self.conn.clone();
        let mut removed = 0;
        for chunk in marks.chunks(500) {
            let mut inv = self.untouch.prepare_invoke();
            inv.key(self.touched_key());
            for (code, at) in chunk {
                inv.arg(code).arg(at);
            }
            removed += inv.invoke_async::<usize>(&mut conn).await?;
        }
        Ok(removed)
    }

    /// Where the reconciler's slow sweep over all active codes stands (the
    /// last code id it looked at; 0 = start).
    pub async fn sweep_cursor(&self) -> Result<i64, GateError> {
        let mut conn = self.conn.clone();
        let at: Option<i64> = conn.get(format!("{}:reconciler:sweep_after", self.prefix)).await?;
        Ok(at.unwrap_or(0))
    }

    pub async fn set_sweep_cursor(&self, after_id: i64) -> Result<(), GateError> {
        let mut conn = self.conn.clone();
        conn.set::<_, _, ()>(format!("{}:reconciler:sweep_after", self.prefix), after_id).await?;
        Ok(())
    }

    /// Undoes a claim (see `Release`). Returns whether anything changed.
    pub async fn release(
        &self,
        code: &str,
        holder: &str,
        ticket: i32,
        mode: Release,
        only_if_pending: bool,
    ) -> Result<bool, GateError> {
        self.run_release(code, holder, &ticket.to_string(), mode, only_if_pending).await
    }

    /// After a claim whose reply never came (a timeout): drop the holder's
    /// claim if it is pending, whatever its ticket. Sent on the same connection,
    /// so Redis runs it after the claim if the claim ran at all.
    pub async fn release_unanswered_claim(&self, code: &str, holder: &str) -> Result<bool, GateError> {
        self.run_release(code, holder, "*", Release::Free, true).await
    }

    /// lua/release.lua; `ticket` is a ticket number or `*` (see the script).
    async fn run_release(
        &self,
        code: &str,
        holder: &str,
        ticket: &str,
        mode: Release,
        only_if_pending: bool,
    ) -> Result<bool, GateError> {
        let k = self.keys(code);
        let mut conn = self.conn.clone();
        let released: i64 = self
            .release
            .key(&k.live()[..])
            .arg(holder)
            .arg(ticket)
            .arg(mode.as_arg())
            .arg(if only_if_pending { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await?;
        Ok(released == 1)
    }

    /// The claim is committed in Postgres: it is no longer pending.
    pub async fn confirm<H: AsRef<str>>(&self, code: &str, holders: &[H]) -> Result<(), GateError> {
        if holders.is_empty() {
            return Ok(());
        }
        let k = self.keys(code);
        let mut conn = self.conn.clone();
        let holders: Vec<&str> = holders.iter().map(AsRef::as_ref).collect();
        conn.zrem::<_, _, ()>(&k.pending, holders).await?;
        Ok(())
    }

    /// Holders whose claim has been pending since before `cutoff_ms` (Redis
    /// time, ms), with their tickets; at most `max`.
    pub async fn stale_claims(&self, code: &str, cutoff_ms: i64, max: usize) -> Result<Vec<(String, i32)>, GateError> {
        let k = self.keys(code);
        let mut conn = self.conn.clone();
        let users: Vec<String> = redis::cmd("ZRANGE")
            .arg(&k.pending)
            .arg("-inf")
            .arg(cutoff_ms)
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(max)
            .query_async(&mut conn)
            .await?;
        if users.is_empty() {
            return Ok(vec![]);
        }
        let tickets: Vec<Option<i32>> = redis::cmd("HMGET").arg(&k.claims).arg(&users).query_async(&mut conn).await?;
        Ok(users.into_iter().zip(tickets).filter_map(|(u, t)| t.map(|t| (u, t))).collect())
    }

    /// Redis's clock in ms (one clock for every gateway's claim timestamps).
    pub async fn now_ms(&self) -> Result<i64, GateError> {
        let mut conn = self.conn.clone();
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await?;
        Ok(secs * 1000 + micros / 1000)
    }

    pub async fn has_state(&self, code: &str) -> Result<bool, GateError> {
        let mut conn = self.conn.clone();
        Ok(conn.exists(self.keys(code).meta).await?)
    }

    /// Installs a code's state: `claims` (committed holder -> ticket) and the
    /// `free` tickets below `next`, with the operator's `controls`. Staged
    /// under temporary keys, then swapped in by one script; meta last. Unless
    /// `force`, existing state wins.
    #[allow(clippy::too_many_arguments)]
    pub async fn install(
        &self,
        code: &str,
        limit: i32,
        limit_version: i64,
        next: i32,
        claims: &[(String, i32)],
        free: &[i32],
        force: bool,
        controls: &Controls,
    ) -> Result<bool, GateError> {
        const CHUNK: usize = 5_000;
        let k = self.keys(code);
        let tag = rand::random::<u64>();
        let [staged_claims, staged_free, staged_owners] = k.staged(tag);
        let mut conn = self.conn.clone();
        for chunk in claims.chunks(CHUNK) {
            let owners: Vec<(i32, &str)> = chunk.iter().map(|(h, t)| (*t, h.as_str())).collect();
            let mut pipe = redis::pipe();
            pipe.hset_multiple(&staged_claims, chunk).ignore().pexpire(&staged_claims, 600_000).ignore();
            pipe.hset_multiple(&staged_owners, &owners).ignore().pexpire(&staged_owners, 600_000).ignore();
            pipe.query_async::<()>(&mut conn).await?;
        }
        for chunk in free.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            pipe.rpush(&staged_free, chunk).ignore().pexpire(&staged_free, 600_000).ignore();
            pipe.query_async::<()>(&mut conn).await?;
        }
        let installed: i64 = self
            .install
            .key(&k.live()[..])
            .key(&staged_claims)
            .key(&staged_free)
            .key(&staged_owners)
            .arg(limit)
            .arg(next)
            .arg(if force { "1" } else { "0" })
            .arg(limit_version)
            .arg(rand::random::<u32>())
            .arg(controls.status)
            .arg(Controls::bound(controls.starts_ms))
            .arg(Controls::bound(controls.ends_ms))
            .arg(controls.rev)
            .invoke_async(&mut conn)
            .await?;
        if installed == 1 {
            // The staged keys were renamed: their expiry must not follow them.
            let mut pipe = redis::pipe();
            pipe.persist(&k.claims).ignore().persist(&k.free).ignore().persist(&k.owners).ignore();
            pipe.query_async::<()>(&mut conn).await?;
            self.touch(code, true).await; // an install calls for an audit
        }
        Ok(installed == 1)
    }

    pub async fn snapshot(&self, code: &str) -> Result<Option<GateSnapshot>, GateError> {
        Ok(self.snapshots(&[code]).await?.pop().flatten())
    }

    /// The snapshots of many codes (the reconciler's batch read): one
    /// pipeline per code, since a pipeline must stay in one Cluster slot, and
    /// up to 500 of them in flight at once on the multiplexed connection.
    pub async fn snapshots<S: AsRef<str>>(&self, codes: &[S]) -> Result<Vec<Option<GateSnapshot>>, GateError> {
        let mut out = Vec::with_capacity(codes.len());
        for chunk in codes.chunks(500) {
            let reads = chunk.iter().map(|code| {
                let k = self.keys(code.as_ref());
                let mut pipe = redis::pipe();
                // `pending` before `meta`: a release that drops a claim and marks the
                // code dirty (one script) is then seen by one read or the other, never
                // missed by both (the reconciler would call the code settled).
                pipe.zcard(&k.pending)
                    .hgetall(&k.meta)
                    .llen(&k.free)
                    .hlen(&k.claims)
                    .zcard(&k.dropped)
                    .hgetall(&k.stats);
                let mut conn = self.conn.clone();
                async move { pipe.query_async::<PendingFirst>(&mut conn).await }
            });
            for parts in futures_util::future::join_all(reads).await {
                let (pending, meta, free, claims, dropped, stats) = parts?;
                out.push(snapshot_from((meta, free, claims, pending, dropped, stats)));
            }
        }
        Ok(out)
    }
}

type SnapshotParts = (HashMap<String, String>, i64, i64, i64, i64, HashMap<String, i64>);
/// A snapshot as read: pending, meta, free, claims, dropped, stats.
type PendingFirst = (i64, HashMap<String, String>, i64, i64, i64, HashMap<String, i64>);

fn snapshot_from((meta, free, claims, pending, dropped, rejections): SnapshotParts) -> Option<GateSnapshot> {
    {
        let field = |name: &str| meta.get(name).and_then(|v| v.parse::<i64>().ok());
        let limit = field("limit")?;
        Some(GateSnapshot {
            limit,
            next: field("next").unwrap_or(0),
            free,
            claims,
            pending,
            rejections,
            limit_version: field("limit_version"),
            dropped,
            dirty: field("dirty").unwrap_or(0),
            audited: field("audited").unwrap_or(0),
            audited_pg: field("audited_pg").unwrap_or(0),
            audit_in_progress: meta.contains_key("audit_at"),
            status: meta.get("status").cloned(),
            status_rev: field("status_rev"),
        })
    }
}

impl Gate {
    /// Installs empty state for brand-new codes (bulk creation): one
    /// pipeline per code (a pipeline must stay in one Cluster slot), a
    /// thousand in flight at once on the multiplexed connection.
    pub async fn install_fresh(&self, codes: &[String], limit: i32, controls: &Controls) -> Result<(), GateError> {
        for chunk in codes.chunks(1_000) {
            let sends = chunk.iter().map(|code| {
                let pipe = self.fresh_pipeline(code, limit, controls);
                let mut conn = self.conn.clone();
                async move { pipe.query_async::<()>(&mut conn).await }
            });
            for sent in futures_util::future::join_all(sends).await {
                sent?;
            }
        }
        Ok(())
    }

    fn fresh_pipeline(&self, code: &str, limit: i32, controls: &Controls) -> redis::Pipeline {
        let k = self.keys(code);
        let mut pipe = redis::pipe();
        pipe.del(&k.fresh()[..]).ignore();
        let mut fields = vec![
            ("limit", limit.to_string()),
            ("next", "0".to_string()),
            ("limit_version", "0".to_string()),
            ("status", controls.status.to_string()),
            ("status_rev", controls.rev.to_string()),
        ];
        if let Some(s) = controls.starts_ms {
            fields.push(("starts_ms", s.to_string()));
        }
        if let Some(e) = controls.ends_ms {
            fields.push(("ends_ms", e.to_string()));
        }
        pipe.hset_multiple(&k.meta, &fields).ignore();
        pipe
    }

    /// Sets the gate's limit (if the code's state is loaded; otherwise a
    /// rebuild reads it from Postgres), ordered by `version` (the Postgres
    /// row's `limit_version`): an older one never overrides a newer one. Work
    /// proportional to what changed (lua/set_limit.lua): a raise gives back
    /// the tickets set aside while the limit was lower, `MOVES_PER_CALL` per
    /// call. Returns whether this call's limit was applied.
    pub async fn set_limit(&self, code: &str, limit: i32, version: i64) -> Result<bool, GateError> {
        const MOVES_PER_CALL: usize = 5_000; // also under Lua's unpack() ceiling
        let k = self.keys(code);
        let mut conn = self.conn.clone();
        let mut applied = false;
        loop {
            let (done, left): (i64, i64) = self
                .set_limit
                .key(&k.set_limit()[..])
                .arg(limit)
                .arg(version)
                .arg(MOVES_PER_CALL)
                .invoke_async(&mut conn)
                .await?;
            applied |= done == 1;
            if left == 0 {
                if applied {
                    self.touch(code, true).await; // the audit checks the new limit
                }
                return Ok(applied);
            }
        }
    }

    /// Gives back the ticket of a use Postgres has just cancelled, even if
    /// Redis forgot the claim (lua/cancel.lua). Returns whether it went back.
    pub async fn give_back(&self, code: &str, holder: &str, ticket: i32) -> Result<bool, GateError> {
        let k = self.keys(code);
        let mut conn = self.conn.clone();
        self.touch(code, false).await;
        let given: i64 = self.cancel.key(&k.live()[..]).arg(holder).arg(ticket).invoke_async(&mut conn).await?;
        // A forgotten claim marks the code for the audit: the reconciler must see it.
        self.touch(code, true).await;
        Ok(given > 0)
    }

    /// The audit's first read: the marks that tell whether the state moved.
    pub async fn audit_marks(&self, code: &str) -> Result<Option<AuditMarks>, GateError> {
        let k = self.keys(code);
        let mut conn = self.conn.clone();
        let v: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&k.meta)
            .arg(&["limit", "next", "epoch", "moves", "dirty", "audit_at"])
            .query_async(&mut conn)
            .await?;
        let num = |i: usize| v.get(i).cloned().flatten().and_then(|s| s.parse::<i64>().ok());
        let Some(limit) = num(0) else { return Ok(None) };
        Ok(Some(AuditMarks {
            limit,
            next: num(1).unwrap_or(0),
            epoch: v.get(2).cloned().flatten().unwrap_or_default(),
            moves: v.get(3).cloned().flatten().unwrap_or_else(|| "0".into()),
            dirty: num(4).unwrap_or(0),
            audit_at: num(5),
        }))
    }

    /// The whole free list, read in chunks (never one long command).
    pub async fn free_list(&self, code: &str) -> Result<Vec<i32>, GateError> {
        const CHUNK: isize = 10_000;
        let k = self.keys(code);
        let mut conn = self.conn.clone();
        let mut out = vec![];
        let mut at = 0isize;
        loop {
            let part: Vec<i32> = conn.lrange(&k.free, at, at + CHUNK - 1).await?;
            let n = part.len() as isize;
            out.extend(part);
            if n < CHUNK {
                return Ok(out);
            }
            at += CHUNK;
        }
    }

    /// Owners of the tickets in `[from, to)`: (ticket, holder, the holder's
    /// claimed ticket, whether its claim is pending).
    pub async fn owners_in(&self, code: &str, from: i64, to: i64) -> Result<Vec<OwnedTicket>, GateError> {
        if from >= to {
            return Ok(vec![]);
        }
        let k = self.keys(code);
        let mut conn = self.conn.clone();
        let tickets: Vec<i64> = (from..to).collect();
        let owners: Vec<Option<String>> =
            redis::cmd("HMGET").arg(&k.owners).arg(&tickets).query_async(&mut conn).await?;
        let owned: Vec<(i64, String)> =
            tickets.into_iter().zip(owners).filter_map(|(t, h)| h.map(|h| (t, h))).collect();
        if owned.is_empty() {
            return Ok(vec![]);
        }
        let holders: Vec<&str> = owned.iter().map(|(_, h)| h.as_str()).collect();
        let claimed: Vec<Option<String>> =
            redis::cmd("HMGET").arg(&k.claims).arg(&holders).query_async(&mut conn).await?;
        let pending: Vec<Option<f64>> =
            redis::cmd("ZMSCORE").arg(&k.pending).arg(&holders).query_async(&mut conn).await?;
        Ok(owned
            .into_iter()
            .zip(claimed)
            .zip(pending)
            .map(|(((ticket, holder), claimed), pending)| OwnedTicket {
                ticket,
                claimed: claimed.and_then(|c| c.parse().ok()),
                holder,
                pending: pending.is_some(),
            })
            .collect())
    }

    /// Whether each holder has a claim (of any ticket, -1 included).
    pub async fn claims_of(&self, code: &str, holders: &[String]) -> Result<Vec<Option<i64>>, GateError> {
        if holders.is_empty() {
            return Ok(vec![]);
        }
        let k = self.keys(code);
        let mut conn = self.conn.clone();
        let claimed: Vec<Option<String>> =
            redis::cmd("HMGET").arg(&k.claims).arg(holders).query_async(&mut conn).await?;
        Ok(claimed.into_iter().map(|c| c.and_then(|c| c.parse().ok())).collect())
    }

    /// The audit's last step (lua/audit.lua). `None`: the state moved since
    /// `marks` were read; nothing was done.
    pub async fn audit_apply(
        &self,
        code: &str,
        marks: &AuditMarks,
        plan: &AuditPlan,
    ) -> Result<Option<(i64, i64)>, GateError> {
        let k = self.keys(code);
        let mut conn = self.conn.clone();
        let mut inv = self.audit.prepare_invoke();
        inv.key(&k.live()[..]);
        inv.arg(&marks.epoch).arg(&marks.moves);
        inv.arg(plan.cursor_after.map(|c| c.to_string()).unwrap_or_default());
        inv.arg(plan.start_marks.map(|(d, p)| format!("{d}:{p}")).unwrap_or_default());
        inv.arg(plan.unhold.len());
        for (t, h) in &plan.unhold {
            inv.arg(t).arg(h);
        }
        inv.arg(plan.restore.len());
        for (h, t) in &plan.restore {
            inv.arg(h).arg(t);
        }
        inv.arg(plan.purge.len()).arg(&plan.purge);
        inv.arg(plan.dedupe.len()).arg(&plan.dedupe);
        inv.arg(plan.free.len()).arg(&plan.free);
        let reply: Vec<i64> = inv.invoke_async(&mut conn).await?;
        Ok(match reply.as_slice() {
            [1, freed, fixed] => Some((*freed, *fixed)),
            _ => None,
        })
    }

    /// Writes the operator's controls into the code's state, unless a later
    /// change is there already (lua/set_status.lua). Returns whether it wrote;
    /// a code without state gets them at its rebuild.
    pub async fn set_status(&self, code: &str, controls: &Controls) -> Result<bool, GateError> {
        let k = self.keys(code);
        let mut conn = self.conn.clone();
        let written: i64 = self
            .set_status
            .key(&k.meta)
            .arg(controls.status)
            .arg(Controls::bound(controls.starts_ms))
            .arg(Controls::bound(controls.ends_ms))
            .arg(controls.rev)
            .invoke_async(&mut conn)
            .await?;
        if written == 1 {
            self.touch(code, true).await;
        }
        Ok(written == 1)
    }

    /// The controls the gate holds for `code` (status, or None without state).
    pub async fn status_of(&self, code: &str) -> Result<Option<String>, GateError> {
        let mut conn = self.conn.clone();
        let (limit, status): (Option<i64>, Option<String>) =
            redis::cmd("HMGET").arg(self.keys(code).meta).arg("limit").arg("status").query_async(&mut conn).await?;
        Ok(limit.map(|_| status.unwrap_or_else(|| "active".into())))
    }

    /// Adds rejection counts counted in-process.
    pub async fn add_rejections(&self, code: &str, counts: &[(&str, u64)]) -> Result<(), GateError> {
        if counts.is_empty() {
            return Ok(());
        }
        self.touch(code, false).await; // the reconciler writes the counts back to Postgres
        let k = self.keys(code);
        let mut pipe = redis::pipe();
        for (reason, n) in counts {
            pipe.hincr(&k.stats, *reason, *n).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Takes the lock `name` for `ttl_ms` if nobody holds it; `None` if somebody does.
    pub async fn try_lock(&self, name: &str, ttl_ms: u64) -> Result<Option<LockGuard>, GateError> {
        let key = self.lock_key(name);
        let token = format!("{:x}", rand::random::<u128>());
        let mut conn = self.conn.clone();
        let won: Option<String> =
            redis::cmd("SET").arg(&key).arg(&token).arg("NX").arg("PX").arg(ttl_ms).query_async(&mut conn).await?;
        Ok(won.map(|_| LockGuard { key, token }))
    }

    fn lock_key(&self, name: &str) -> String {
        format!("{}:lock:{name}", self.prefix)
    }

    /// Releases a lock if we still hold it (compare-and-delete).
    pub async fn unlock(&self, guard: LockGuard) -> Result<(), GateError> {
        let script = Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
        );
        let mut conn = self.conn.clone();
        script.key(&guard.key).arg(&guard.token).invoke_async::<i64>(&mut conn).await?;
        Ok(())
    }
}

/// Proof of holding a Redis lock; hand it back to `Gate::unlock`.
#[must_use]
pub struct LockGuard {
    key: String,
    token: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_that_timed_out_before_the_claim_is_no_reason_to_release() {
        let timeout = || redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"));
        assert!(GateError::from(timeout()).is_timeout(), "a claim that timed out may have run");
        assert!(!GateError::from(timeout()).before_claim().is_timeout(), "no claim was sent");
    }
}
