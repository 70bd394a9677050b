//! The split's credit path (`serve --role redemption`): a credit code's
//! redemption is committed with an outbox row for its credit in one
//! statement, then the wallet service is asked to apply it
//! (`POST /wallet/credits`, reference `redemption:<id>`, exactly once per
//! reference there). The row is marked done when the wallet has answered for
//! the reference; until then the drainer retries it with backoff, for as
//! long as it takes. A user never loses a won slot to a wallet that is down:
//! the answer then says the credit is pending.
//!
//! Why the retry cannot double-credit: the wallet writes one ledger row per
//! reference (its unique index decides; a repeat answers the first row), so
//! any number of calls for one outbox row — a timed-out call that did land,
//! the drainer and a request racing — credit once.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};

use super::commit::{classify_error, Committed};
use crate::auth::Scope;
use crate::config::Config;
use crate::db::StoreError;
use crate::state::AppState;

/// How a process pays a code's credit, chosen once at start-up from its role.
pub enum CreditSink {
    /// Role `all`: in the redemption's own statement (redemption/commit.rs).
    InProcess,
    /// Role `redemption`: an outbox row, then the wallet service over REST.
    Wallet(WalletClient),
}

impl CreditSink {
    pub fn for_config(config: &Config) -> anyhow::Result<Self> {
        Ok(match config.role {
            crate::config::ServeRole::Redemption => CreditSink::Wallet(WalletClient::new(config)?),
            _ => CreditSink::InProcess,
        })
    }
}

/// Where a credit stands when the user is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CreditState {
    /// The wallet has applied it.
    Done,
    /// Owed: the wallet did not answer in time; the drainer keeps trying.
    Pending,
}

/// The redemption and its outbox row, one statement (one implicit
/// transaction): a redemption exists iff its credit is owed. Same guards as
/// the single process's commit (tickets, per-user, window/status triggers).
pub const OUTBOX_COMMIT_SQL: &str = "
WITH r AS (
    INSERT INTO redemptions (code_id, user_id, ticket, amount)
    SELECT id, $2, $3, amount FROM codes WHERE id = $1
    RETURNING id, amount
), o AS (
    INSERT INTO credit_outbox (redemption_id, code_id, user_id, amount, reference, reason, next_attempt_at)
    SELECT r.id, $1, $2, r.amount, 'redemption:' || r.id, 'code ' || c.code,
           now() + make_interval(secs => $4::float8)
    FROM r, codes c WHERE c.id = $1
)
SELECT r.id, r.amount FROM r";

/// Commits the redemption with its owed credit. `lease` keeps the drainer
/// off the row while the request itself calls the wallet. The balance in
/// the answer is 0: the wallet's to tell.
pub async fn commit(
    db: &impl GenericClient,
    code_id: i64,
    user_id: i64,
    ticket: i32,
    lease: Duration,
) -> Result<Committed, StoreError> {
    let stmt = db.prepare_cached(OUTBOX_COMMIT_SQL).await?;
    match db.query_opt(&stmt, &[&code_id, &user_id, &ticket, &lease.as_secs_f64()]).await {
        Ok(Some(row)) => Ok(Committed::Credited { redemption_id: row.get(0), amount: row.get(1), balance: 0 }),
        Ok(None) => Ok(Committed::TicketOutOfRange),
        Err(e) => classify_error(e),
    }
}

/// One owed credit, as the wallet is asked for it.
#[derive(Debug, Clone)]
pub struct Owed {
    pub redemption_id: i64,
    pub user_id: i64,
    pub amount: i64,
    pub reference: String,
    pub reason: String,
    pub attempts: i32,
}

#[derive(Serialize)]
struct CreditRequest<'a> {
    user_id: i64,
    amount: i64,
    reference: &'a str,
    reason: &'a str,
}

/// The part of the wallet's answer we keep.
#[derive(Debug, Deserialize)]
pub struct CreditAnswer {
    pub entry_id: i64,
    pub balance: i64,
}

/// Calls the wallet's `POST /wallet/credits`, each call bounded by
/// `CREDIT_TIMEOUT_MS`.
pub struct WalletClient {
    url: String,
    client: reqwest::Client,
    /// `WALLET_SERVICE_TOKEN`; None: mint one with this role's signing key.
    token: Option<String>,
    /// The minted one and when, re-minted well before it expires.
    minted: std::sync::Mutex<Option<(String, std::time::Instant)>>,
    attempts: u32,
    backoff_max: Duration,
    timeout: Duration,
}

/// The service name the redemption role's own credential carries.
pub const SERVICE_NAME: &str = "redemption";
/// How long a minted credential is reused.
const REMINT: Duration = Duration::from_secs(3_600);
/// The most credits the drainer sends at once.
const DRAIN_BATCH: i64 = 64;
const DRAIN_PARALLEL: usize = 8;

impl WalletClient {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let base = config.split.wallet_url.clone().unwrap_or_default();
        let client = reqwest::Client::builder()
            .timeout(config.split.credit_timeout)
            .connect_timeout(config.split.credit_timeout)
            .pool_max_idle_per_host(32)
            .build()?;
        Ok(WalletClient {
            url: format!("{base}/wallet/credits"),
            client,
            token: config.split.wallet_service_token.clone(),
            minted: std::sync::Mutex::new(None),
            attempts: config.split.credit_attempts,
            backoff_max: config.split.outbox_backoff_max,
            timeout: config.split.credit_timeout,
        })
    }

    /// A configured `WALLET_SERVICE_TOKEN` must be ours, for service
    /// `redemption`, with `wallet:credit`: the wallet namespaces references by
    /// service name, so a credential of another name would file the same
    /// `redemption:<id>` under another key, and a retry could credit it twice.
    pub fn check_credential(&self, tokens: &crate::auth::TokenKeys) -> anyhow::Result<()> {
        let Some(token) = &self.token else { return Ok(()) };
        let id = tokens
            .verify_service(token)
            .map_err(|e| anyhow::anyhow!("WALLET_SERVICE_TOKEN does not verify with this role's key: {e}"))?;
        anyhow::ensure!(
            id.name == SERVICE_NAME && id.scopes.contains(&Scope::WalletCredit),
            "WALLET_SERVICE_TOKEN must be for service {SERVICE_NAME:?} with scope wallet:credit (it is {:?})",
            id.name
        );
        Ok(())
    }

    /// How long the request path may spend on the wallet (all its attempts):
    /// the drainer leaves a fresh row alone that long.
    pub fn lease(&self) -> Duration {
        self.timeout * self.attempts + Duration::from_secs(1)
    }

    /// The credential for the next call: the configured one, or our own,
    /// minted once and again after `REMINT` (far inside SERVICE_TOKEN_TTL_SECONDS).
    fn bearer(&self, state: &AppState) -> Result<String, String> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let mut minted = self.minted.lock().map_err(|_| "token cache poisoned".to_string())?;
        if let Some((token, at)) = minted.as_ref() {
            if at.elapsed() < REMINT.min(state.tokens.service_ttl() / 2) {
                return Ok(token.clone());
            }
        }
        let token = state.tokens.issue_service(SERVICE_NAME, &[Scope::WalletCredit]).map_err(|e| e.to_string())?;
        *minted = Some((token.clone(), std::time::Instant::now()));
        Ok(token)
    }

    /// One call. Ok: the wallet applied the credit (now or before: a replay
    /// answers the first row). Err: anything else, with why, to retry.
    async fn call(&self, state: &AppState, owed: &Owed) -> Result<CreditAnswer, String> {
        let body = CreditRequest {
            user_id: owed.user_id,
            amount: owed.amount,
            reference: &owed.reference,
            reason: &owed.reason,
        };
        let res = self
            .client
            .post(&self.url)
            .bearer_auth(self.bearer(state)?)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("wallet unreachable: {}", chain(&e)))?;
        let status = res.status();
        if status.is_success() {
            return res.json::<CreditAnswer>().await.map_err(|e| format!("wallet answer unreadable: {e}"));
        }
        let text = res.text().await.unwrap_or_default();
        Err(format!("wallet answered {status}: {}", text.chars().take(300).collect::<String>()))
    }

    /// The wait before try number `attempts + 1`: 250 ms doubling, capped,
    /// with up to a quarter of jitter so many rows do not retry in step.
    fn backoff(&self, attempts: i32) -> Duration {
        let base = Duration::from_millis(250).saturating_mul(1u32 << attempts.clamp(0, 16));
        let capped = base.min(self.backoff_max);
        let jitter = rand::random::<f64>() * 0.25;
        capped.mul_f64(1.0 - jitter)
    }
}

/// An error with its causes (reqwest's own text leaves out why a call failed).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The request path, right after the commit: up to `CREDIT_ATTEMPTS` calls.
/// Done: the row is marked and the wallet's balance returned. Pending: the
/// row is left to the drainer (its lease, then its backoff).
pub async fn deliver_now(state: &AppState, client: &WalletClient, owed: Owed) -> (CreditState, Option<i64>) {
    let mut last_error = String::new();
    for attempt in 0..client.attempts {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match client.call(state, &owed).await {
            Ok(answer) => {
                mark_done(state, owed.redemption_id, answer.entry_id).await;
                return (CreditState::Done, Some(answer.balance));
            }
            Err(e) => last_error = e,
        }
    }
    tracing::warn!(redemption_id = owed.redemption_id, error = %last_error, "credit pending; the drainer retries it");
    let wait = client.backoff(owed.attempts);
    if let Err(e) = mark_failed(state, owed.redemption_id, client.attempts as i32, wait, &last_error).await {
        // The lease lapses on its own: the drainer takes the row then.
        tracing::debug!(error = %e, "outbox attempt not recorded");
    }
    (CreditState::Pending, None)
}

/// Best effort: a row left undone is sent again, and the wallet answers the
/// repeat with the first entry, so nothing is lost or doubled if this fails.
async fn mark_done(state: &AppState, redemption_id: i64, entry_id: i64) {
    let result = async {
        let db = state.pg.get().await?;
        let stmt = db
            .prepare_cached(
                "UPDATE credit_outbox SET done_at = now(), wallet_entry_id = $2, last_error = NULL, \
                 attempts = attempts + 1 WHERE redemption_id = $1 AND done_at IS NULL",
            )
            .await?;
        db.execute(&stmt, &[&redemption_id, &entry_id]).await?;
        Ok::<_, StoreError>(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(redemption_id, error = %e, "credit applied; outbox row left for the drainer to confirm");
    }
}

async fn mark_failed(
    state: &AppState,
    redemption_id: i64,
    calls: i32,
    wait: Duration,
    error: &str,
) -> Result<(), StoreError> {
    let db = state.pg.get().await?;
    let stmt = db
        .prepare_cached(
            "UPDATE credit_outbox SET attempts = attempts + $2, last_error = $3, \
             next_attempt_at = now() + make_interval(secs => $4::float8) \
             WHERE redemption_id = $1 AND done_at IS NULL",
        )
        .await?;
    db.execute(&stmt, &[&redemption_id, &calls, &error, &wait.as_secs_f64()]).await?;
    Ok(())
}

/// Takes up to `DRAIN_BATCH` due rows and leases them (moves their next try
/// past the lease), so two drainers — or a drainer and a request — do not
/// call for one row at once. `SKIP LOCKED`: drainers never queue on each other.
async fn lease_due(state: &AppState, lease: Duration) -> Result<Vec<Owed>, StoreError> {
    let db = state.pg.get().await?;
    let stmt = db
        .prepare_cached(
            "UPDATE credit_outbox o SET next_attempt_at = now() + make_interval(secs => $2::float8)
             WHERE o.redemption_id IN (
                 SELECT redemption_id FROM credit_outbox
                 WHERE done_at IS NULL AND next_attempt_at <= now()
                 ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING o.redemption_id, o.user_id, o.amount, o.reference, o.reason, o.attempts",
        )
        .await?;
    let rows = db.query(&stmt, &[&DRAIN_BATCH, &lease.as_secs_f64()]).await?;
    Ok(rows
        .iter()
        .map(|r| Owed {
            redemption_id: r.get(0),
            user_id: r.get(1),
            amount: r.get(2),
            reference: r.get(3),
            reason: r.get(4),
            attempts: r.get(5),
        })
        .collect())
}

/// One pass: every due row, one call each (a few at once). Returns how many
/// were delivered and how many stay pending.
pub async fn drain_once(state: &AppState, client: &WalletClient) -> Result<(usize, usize), StoreError> {
    use futures_util::StreamExt;
    // Long enough for the whole pass (the batch goes DRAIN_PARALLEL at a
    // time, each call bounded by the timeout), so another drainer does not
    // take a row back while this one still holds it.
    let rounds = (DRAIN_BATCH as u32).div_ceil(DRAIN_PARALLEL as u32);
    let due = lease_due(state, client.timeout * rounds + Duration::from_secs(1)).await?;
    let outcomes: Vec<bool> = futures_util::stream::iter(due)
        .map(|owed| async move {
            match client.call(state, &owed).await {
                Ok(answer) => {
                    mark_done(state, owed.redemption_id, answer.entry_id).await;
                    true
                }
                Err(e) => {
                    let wait = client.backoff(owed.attempts + 1);
                    if let Err(e) = mark_failed(state, owed.redemption_id, 1, wait, &e).await {
                        tracing::debug!(error = %e, "outbox attempt not recorded");
                    }
                    false
                }
            }
        })
        .buffer_unordered(DRAIN_PARALLEL)
        .collect()
        .await;
    let done = outcomes.iter().filter(|ok| **ok).count();
    Ok((done, outcomes.len() - done))
}

/// The drainer: every `OUTBOX_POLL_MS`, and straight again while it finds
/// work. Runs in every redemption-role process; the leases keep them apart.
pub fn spawn_drainer(state: Arc<AppState>) {
    tokio::spawn(async move {
        let CreditSink::Wallet(client) = &state.credits else { return };
        let poll = state.config.split.outbox_poll;
        loop {
            match drain_once(&state, client).await {
                Ok((done, pending)) if done + pending > 0 => {
                    tracing::info!(done, pending, "outbox drained");
                    if done > 0 {
                        continue;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "outbox not drained this time"),
            }
            tokio::time::sleep(poll).await;
        }
    });
}

/// Credits owed and not yet applied by the wallet, for one code (the report).
pub async fn pending_for_code(db: &impl GenericClient, code_id: i64) -> Result<(i64, i64), StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT count(*), coalesce(sum(amount), 0)::bigint FROM credit_outbox \
             WHERE code_id = $1 AND done_at IS NULL",
        )
        .await?;
    let row = db.query_one(&stmt, &[&code_id]).await?;
    Ok((row.get(0), row.get(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_bounded_jitter() {
        let client = WalletClient {
            url: String::new(),
            client: reqwest::Client::new(),
            token: None,
            minted: std::sync::Mutex::new(None),
            attempts: 2,
            backoff_max: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
        };
        for (attempts, nominal) in [(0, 250), (1, 500), (3, 2_000), (10, 10_000), (40, 10_000)] {
            let got = client.backoff(attempts).as_millis() as u64;
            assert!(got <= nominal && got >= nominal * 3 / 4, "attempt {attempts}: {got} ms");
        }
        assert_eq!(client.lease(), Duration::from_secs(3));
    }
}
