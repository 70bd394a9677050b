//! Starting the split: a Redis, two databases (the redemption role's and the
//! wallet role's, on one PostgreSQL server), an Ed25519 signing key, and the
//! two processes, each told where the other is. Plus the load and the checks.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redeem_gateway::auth::{Role, Scope, TokenKeys};
use redeem_gateway::config::Config;
use serde_json::{json, Value};

use crate::drop_proxy::DropProxy;
use crate::harness::{free_port, scratch_dir, Gateway, GatewayEnv, Postgres, RedisServer};

pub struct Split {
    pub redis: RedisServer,
    pub redemption_env: GatewayEnv,
    pub wallet_env: GatewayEnv,
    pub wallet: Gateway,
    pub redemption: Gateway,
    pub wallet_port: u16,
    /// Between the redemption role and the wallet, when asked for.
    pub proxy: Option<DropProxy>,
    key_pem: String,
    _key_dir: PathBuf,
}

/// Settings that make the outbox quick to observe in a test.
const SPLIT_VARS: [(&str, &str); 5] = [
    ("CREDIT_TIMEOUT_MS", "1000"),
    ("CREDIT_ATTEMPTS", "2"),
    ("OUTBOX_BACKOFF_MAX_MS", "1000"),
    ("OUTBOX_POLL_MS", "200"),
    ("RUST_LOG", "warn,redeem_gateway=info"),
];

impl Split {
    /// Both roles up; `with_proxy`: the redemption role reaches the wallet
    /// through a `DropProxy`.
    pub async fn start(with_proxy: bool) -> Split {
        let redis = RedisServer::start();
        let pg = Postgres::shared();
        let (redemption_db, wallet_db) = (pg.create_database().await, pg.create_database().await);
        let key_dir = scratch_dir("split-key");
        let key_path = key_dir.join("signing.pem");
        let key_pem = redeem_gateway::auth::keys::generate_pem();
        std::fs::write(&key_path, &key_pem).unwrap();
        let (wallet_port, redemption_port) = (free_port(), free_port());
        let proxy = if with_proxy { Some(DropProxy::start(wallet_port).await) } else { None };
        let wallet_url_port = proxy.as_ref().map_or(wallet_port, |p| p.port);

        let mut wallet_env = GatewayEnv::new(wallet_db, redis.url());
        wallet_env.extra = vars(&[
            ("ROLE", "wallet"),
            ("JWKS_URL", &format!("http://127.0.0.1:{redemption_port}/.well-known/jwks.json")),
        ]);
        let mut redemption_env = GatewayEnv::new(redemption_db, redis.url());
        redemption_env.extra = vars(&[
            ("ROLE", "redemption"),
            ("WALLET_URL", &format!("http://127.0.0.1:{wallet_url_port}")),
            ("JWT_SIGNING_KEY_FILE", &key_path.display().to_string()),
        ]);
        let wallet = tokio::task::block_in_place(|| Gateway::start_on(&wallet_env, wallet_port));
        let redemption = tokio::task::block_in_place(|| Gateway::start_on(&redemption_env, redemption_port));
        Split { redis, redemption_env, wallet_env, wallet, redemption, wallet_port, proxy, key_pem, _key_dir: key_dir }
    }

    /// The redemption role's keys (Ed25519): users' and admins' tokens.
    pub fn keys(&self) -> TokenKeys {
        let mut all = SPLIT_VARS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        all.extend(self.redemption_env.extra.iter().cloned());
        all.extend(vars(&[
            ("DATABASE_URL", &self.redemption_env.database_url),
            ("REDIS_URL", &self.redemption_env.redis_url),
            ("APP_ENV", "dev"),
        ]));
        let config = Config::from_lookup(|n| all.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())).unwrap();
        TokenKeys::ed25519(&config, &self.key_pem).unwrap()
    }

    pub fn admin_token(&self) -> String {
        self.keys().issue(1, Role::Admin).unwrap()
    }

    /// A service token the wallet accepts: the redemption role's key, scope wallet:credit.
    pub fn credit_service_token(&self, scopes: &[Scope]) -> String {
        self.keys().issue_service("topup", scopes).unwrap()
    }

    pub async fn redemption_db(&self) -> tokio_postgres::Client {
        db(&self.redemption_env.database_url).await
    }

    pub async fn wallet_db(&self) -> tokio_postgres::Client {
        db(&self.wallet_env.database_url).await
    }

    /// `n` users (in the redemption role's database) with their tokens.
    pub async fn users(&self, n: usize) -> Vec<(i64, String)> {
        create_users_in(&self.redemption_env.database_url, &self.keys(), n).await
    }

    /// Credits owed and not yet applied, from the outbox.
    pub async fn pending_credits(&self) -> i64 {
        let db = self.redemption_db().await;
        db.query_one("SELECT count(*) FROM credit_outbox WHERE done_at IS NULL", &[]).await.unwrap().get(0)
    }

    /// Waits until every owed credit is applied; returns how long it took.
    pub async fn wait_drained(&self, within: Duration) -> Duration {
        let start = Instant::now();
        let db = self.redemption_db().await;
        loop {
            let left: i64 =
                db.query_one("SELECT count(*) FROM credit_outbox WHERE done_at IS NULL", &[]).await.unwrap().get(0);
            if left == 0 {
                return start.elapsed();
            }
            assert!(start.elapsed() < within, "{left} credits still pending after {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The code's report from the redemption role.
    pub async fn report(&self, code: &str) -> Value {
        reqwest::Client::new()
            .post(format!("{}/codes/report", self.redemption.address()))
            .bearer_auth(self.admin_token())
            .json(&json!({ "code": code }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The money invariants across the two databases, once drained: every
    /// redemption has exactly one wallet ledger row under its reference, the
    /// ledger sums to limit x amount, every balance is its ledger's sum, and
    /// every user told 200 or 202 holds a redemption and its credit.
    pub async fn assert_money_exact(&self, code: &str, limit: i64, amount: i64, outcomes: &[Outcome]) {
        let rdb = self.redemption_db().await;
        let wdb = self.wallet_db().await;
        let rows = rdb
            .query(
                "SELECT r.id, r.user_id, r.amount FROM redemptions r JOIN codes c ON c.id = r.code_id WHERE c.code = $1",
                &[&code],
            )
            .await
            .unwrap();
        assert_eq!(rows.len() as i64, limit, "redemptions == limit");
        let mut users: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
        users.sort_unstable();
        users.dedup();
        assert_eq!(users.len(), rows.len(), "no user twice");
        let undone: i64 =
            rdb.query_one("SELECT count(*) FROM credit_outbox WHERE done_at IS NULL", &[]).await.unwrap().get(0);
        assert_eq!(undone, 0, "every owed credit applied");
        let outboxed: i64 = rdb
            .query_one(
                "SELECT count(*) FROM redemptions r JOIN credit_outbox o ON o.redemption_id = r.id \
                 AND o.reference = 'redemption:' || r.id AND o.amount = r.amount",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(outboxed, limit, "a redemption exists iff its outbox row does");

        let ledger = wdb.query("SELECT user_id, amount, reference FROM ledger ORDER BY id", &[]).await.unwrap();
        assert_eq!(ledger.len() as i64, limit, "one ledger row per redemption: none lost, none twice");
        let sum: i64 = ledger.iter().map(|r| r.get::<_, i64>(1)).sum();
        assert_eq!(sum, limit * amount, "ledger sum == limit x amount");
        let mut expected: Vec<(i64, i64, String)> = rows
            .iter()
            .map(|r| (r.get(1), r.get(2), format!("svc:redemption:redemption:{}", r.get::<_, i64>(0))))
            .collect();
        let mut got: Vec<(i64, i64, String)> = ledger.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        expected.sort();
        got.sort();
        assert_eq!(got, expected, "each redemption credited to its user, its amount, under its reference");
        let bad: i64 = wdb
            .query_one(
                "SELECT count(*) FROM wallets w \
                 WHERE balance <> (SELECT coalesce(sum(amount), 0) FROM ledger l WHERE l.user_id = w.user_id)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(bad, 0, "every balance == its ledger's sum");
        let winners: Vec<i64> = outcomes.iter().filter(|o| matches!(o.status, 200 | 202)).map(|o| o.user_id).collect();
        assert_eq!(winners.len() as i64, limit, "every winner was told so (200 or 202)");
        let credited: i64 = wdb
            .query_one("SELECT count(DISTINCT user_id) FROM ledger WHERE user_id = ANY($1)", &[&winners])
            .await
            .unwrap()
            .get(0);
        assert_eq!(credited, limit, "every winner credited");
    }
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = SPLIT_VARS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    v.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    v
}

pub use crate::load::{create_users_in, db};

/// The final answer one user got (0: none within the patience).
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub user_id: i64,
    pub status: u16,
}

/// Each user redeems `code` once, `concurrency` at a time, retrying 503s and
/// dropped connections like a mobile app. Returns the outcomes and how long
/// the wave took. `winners` counts 200s and 202s as they come.
pub async fn wave(
    base: &str,
    users: Vec<(i64, String)>,
    code: &str,
    concurrency: usize,
    winners: Arc<AtomicUsize>,
) -> (Vec<Outcome>, Duration) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let users = Arc::new(users);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, users, next, winners) = (client.clone(), users.clone(), next.clone(), winners.clone());
        let (base, body) = (base.to_string(), json!({ "code": code }));
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((user_id, token)) = users.get(i) else { break };
                let mut status = 0;
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    let sent = client.post(format!("{base}/codes/use")).bearer_auth(token).json(&body).send().await;
                    if let Ok(res) = sent {
                        let s = res.status().as_u16();
                        if s != 503 {
                            status = s;
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if matches!(status, 200 | 202) {
                    winners.fetch_add(1, Ordering::Relaxed);
                }
                out.push(Outcome { user_id: *user_id, status });
            }
            out
        }));
    }
    let mut outcomes = Vec::new();
    for w in workers {
        outcomes.extend(w.await.unwrap());
    }
    (outcomes, started.elapsed())
}

pub fn histogram(outcomes: &[Outcome]) -> std::collections::BTreeMap<u16, usize> {
    let mut h = std::collections::BTreeMap::new();
    for o in outcomes {
        *h.entry(o.status).or_default() += 1;
    }
    h
}
