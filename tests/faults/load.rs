//! The load the fault tests put on the gateways, and the checks after it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redeem_gateway::auth::{Role, TokenKeys};
use serde_json::{json, Value};
use tokio_postgres::NoTls;

use crate::harness::GatewayEnv;

/// The final answer one user got (0: gave up without one).
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    pub user_id: i64,
    pub status: u16,
}

/// Progress of a running wave, for deciding when to inject the fault.
#[derive(Default)]
pub struct Progress {
    pub successes: AtomicUsize,
    pub finished: AtomicUsize,
    pub retries: AtomicUsize,
    /// Answers that are neither final nor 503 with Retry-After (a 500, say): must stay 0.
    pub unexpected: AtomicUsize,
}

/// The gateways a client may reach; a test swaps them as it kills some.
pub type Targets = Arc<RwLock<Vec<String>>>;

pub async fn db(database_url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(database_url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// `n` users by SQL, with tokens minted with the gateways' secret.
pub async fn create_users(env: &GatewayEnv, n: usize) -> Vec<(i64, String)> {
    create_users_in(&env.database_url, &env.tokens(), n).await
}

/// `n` users by SQL in `database_url`, with tokens minted by `keys`.
pub async fn create_users_in(database_url: &str, keys: &TokenKeys, n: usize) -> Vec<(i64, String)> {
    let client = db(database_url).await;
    let tag = format!("{:08x}", rand::random::<u32>());
    let rows = client
        .query(
            "INSERT INTO users (username, password_hash)
             SELECT 'f' || $1::text || '_' || g, '!' FROM generate_series(1, $2::int) g RETURNING id",
            &[&tag, &(n as i32)],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let id: i64 = r.get(0);
            (id, keys.issue(id, Role::User).unwrap())
        })
        .collect()
}

/// Each user redeems `code` once, `concurrency` at a time, like a mobile app
/// that retries on 503 and on a dropped connection (trying another gateway)
/// until it gets a final answer or `patience` runs out.
pub async fn wave(
    users: Vec<(i64, String)>,
    code: &str,
    targets: Targets,
    concurrency: usize,
    patience: Duration,
    progress: Arc<Progress>,
) -> Vec<Outcome> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let users = Arc::new(users);
    let next = Arc::new(AtomicUsize::new(0));
    let body = json!({ "code": code });
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, users, next, targets, progress, body) =
            (client.clone(), users.clone(), next.clone(), targets.clone(), progress.clone(), body.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((user_id, token)) = users.get(i) else { break };
                let status = redeem_until_final(&client, &targets, token, &body, patience, &progress, i).await;
                if status == 200 {
                    progress.successes.fetch_add(1, Ordering::Relaxed);
                }
                progress.finished.fetch_add(1, Ordering::Relaxed);
                out.push(Outcome { user_id: *user_id, status });
            }
            out
        }));
    }
    let mut outcomes = Vec::new();
    for w in workers {
        outcomes.extend(w.await.unwrap());
    }
    outcomes
}

async fn redeem_until_final(
    client: &reqwest::Client,
    targets: &Targets,
    token: &str,
    body: &Value,
    patience: Duration,
    progress: &Progress,
    seed: usize,
) -> u16 {
    let start = Instant::now();
    let mut attempt = seed;
    while start.elapsed() < patience {
        let target = {
            let t = targets.read().unwrap();
            if t.is_empty() {
                None
            } else {
                Some(t[attempt % t.len()].clone())
            }
        };
        attempt += 1;
        if let Some(base) = target {
            let sent = client.post(format!("{base}/codes/use")).bearer_auth(token).json(body).send().await;
            if let Ok(res) = sent {
                let status = res.status().as_u16();
                if matches!(status, 200 | 404 | 409 | 410 | 422) {
                    return status;
                }
                // A 503 must say when to come back; anything else (a 500) is a bug.
                if status != 503 || !res.headers().contains_key("retry-after") {
                    progress.unexpected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        progress.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    0
}

/// Waits until `cond` holds (polling), or panics after `within`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a wave has this many successes (the moment to inject a fault).
pub async fn wait_for_successes(progress: &Progress, n: usize) {
    // Polled finely: a burst on a small limit is over in a fraction of a second.
    let start = Instant::now();
    while progress.successes.load(Ordering::Relaxed) < n {
        assert!(start.elapsed() < Duration::from_secs(60), "the burst never got going");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until the gate holds no pending claim (the reconciler has settled
/// what the fault left behind), asking the report of any live gateway.
pub async fn wait_for_settled(env: &GatewayEnv, targets: &Targets, code: &str) {
    let client = reqwest::Client::new();
    let admin = env.admin_token();
    wait_until("pending claims to be settled", Duration::from_secs(30), || {
        let (client, admin, targets) = (client.clone(), admin.clone(), targets.clone());
        async move {
            let Some(base) = targets.read().unwrap().first().cloned() else { return false };
            let Ok(res) = client
                .post(format!("{base}/codes/report"))
                .bearer_auth(&admin)
                .json(&json!({ "code": code }))
                .send()
                .await
            else {
                return false;
            };
            let report: Value = res.json().await.unwrap_or_default();
            report["pending"] == 0 && report["counters"] == "live"
        }
    })
    .await;
}

/// The invariants, checked in Postgres against what the clients were told.
pub async fn assert_invariants(env: &GatewayEnv, code: &str, limit: i64, amount: i64, outcomes: &[Outcome]) {
    let client = db(&env.database_url).await;
    let one = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap() }
    };
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT r.user_id), coalesce(sum(r.amount), 0)::bigint
             FROM redemptions r JOIN codes c ON c.id = r.code_id WHERE c.code = $1",
            &[&code],
        )
        .await
        .unwrap();
    let (count, distinct, sum): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(count, limit, "successful redemptions == limit (nothing leaked, nothing over-issued)");
    assert_eq!(distinct, count, "no user twice");
    assert_eq!(sum, limit * amount);
    let ledger_sum: i64 = one("SELECT coalesce(sum(amount), 0)::bigint FROM ledger").await.get(0);
    assert_eq!(ledger_sum, limit * amount, "ledger sum == successes x amount");
    let bad_wallets: i64 = one("SELECT count(*) FROM wallets w
         WHERE balance <> (SELECT coalesce(sum(amount), 0) FROM ledger l WHERE l.user_id = w.user_id)")
    .await
    .get(0);
    assert_eq!(bad_wallets, 0, "every balance == the sum of its ledger rows");
    let unmatched: i64 =
        one("SELECT count(*) FROM redemptions r FULL JOIN ledger l ON l.reference = 'redemption:' || r.id
         WHERE r.id IS NULL OR l.id IS NULL")
        .await
        .get(0);
    assert_eq!(unmatched, 0, "a redemption exists iff its credit exists");
    // Every client told "200" holds a committed redemption.
    let winners: Vec<i64> = outcomes.iter().filter(|o| o.status == 200).map(|o| o.user_id).collect();
    let backed: i64 =
        client.query_one("SELECT count(*) FROM redemptions WHERE user_id = ANY($1)", &[&winners]).await.unwrap().get(0);
    assert_eq!(backed, winners.len() as i64, "every 200 is backed by a row");
}

pub fn histogram(outcomes: &[Outcome]) -> std::collections::BTreeMap<u16, usize> {
    let mut h = std::collections::BTreeMap::new();
    for o in outcomes {
        *h.entry(o.status).or_default() += 1;
    }
    h
}
