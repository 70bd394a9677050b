//! spawn_app() and the checks every test shares.

use std::collections::HashMap;
use std::sync::Arc;

use redeem_gateway::auth::{Role, Scope};
use redeem_gateway::codes::admin::{create_code, CreateCode};
use redeem_gateway::codes::Code;
use redeem_gateway::config::Config;
use redeem_gateway::redis_conn::RedisConn;
use redeem_gateway::startup::{AppState, Application};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_postgres::NoTls;

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

/// The Postgres server to create test databases on, and the Redis to use.
fn service_urls() -> (String, String) {
    let _ = dotenvy::dotenv();
    let pg = std::env::var("TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| crate::local_pg::default_server_url());
    let redis = std::env::var("TEST_REDIS_URL")
        .or_else(|_| std::env::var("REDIS_URL"))
        .unwrap_or_else(|_| "redis://127.0.0.1:6479/".into());
    (pg, redis)
}

/// The Redis Cluster seeds to test against instead of the single Redis
/// (`TEST_REDIS_CLUSTER_NODES`, from `scripts/services.sh cluster-env`).
pub fn cluster_nodes() -> Option<String> {
    std::env::var("TEST_REDIS_CLUSTER_NODES").ok().filter(|v| !v.is_empty())
}

pub struct TestApp {
    pub address: String,
    /// The metrics listener (loopback, its own port).
    pub metrics_address: String,
    pub client: reqwest::Client,
    pub state: Arc<AppState>,
    pub database: String,
    /// The Postgres server's maintenance database, for acting on ours from outside.
    pub server_url: String,
    pub redis_url: String,
    pub prefix: String,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// A fresh app; `overrides` are configuration variables (e.g. the grace period).
pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    spawn_app_via(overrides, None).await
}

/// A fresh app whose Postgres connections go through `proxy_port` (a proxy
/// to the test PostgreSQL, see pgproxy.rs).
pub async fn spawn_app_via(overrides: &[(&str, &str)], proxy_port: Option<u16>) -> TestApp {
    let (server_url, redis_url) = service_urls();
    let id = format!("{:016x}", rand::random::<u64>());
    let database = format!("test_{id}");
    let mut database_url = create_database(&server_url, &database).await;
    if let Some(port) = proxy_port {
        let real: tokio_postgres::Config = database_url.parse().unwrap();
        let real_port = real.get_ports().first().copied().unwrap_or(5432);
        database_url = database_url.replace(&format!(":{real_port}/"), &format!(":{port}/"));
    }
    let prefix = format!("t_{id}");
    let config = test_config(&database_url, &redis_url, &prefix, overrides);
    let app = Application::build(config).await.expect("app builds");
    let port = app.port();
    let metrics_port = app.metrics_port().unwrap_or(0);
    let state = app.state();
    tokio::spawn(app.run_until_stopped());
    // The start-up run would race the tests' own runs: let it finish first.
    wait_for_reconciler_runs(&state, 1).await;
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        metrics_address: format!("http://127.0.0.1:{metrics_port}"),
        client: reqwest::Client::builder().pool_max_idle_per_host(2048).build().unwrap(),
        state,
        database,
        server_url,
        redis_url,
        prefix,
    }
}

/// The configuration of a test app on `database_url` with key prefix `prefix`.
fn test_config(database_url: &str, redis_url: &str, prefix: &str, overrides: &[(&str, &str)]) -> Config {
    let mut vars: HashMap<String, String> = [
        ("APP_ENV", "dev"),
        ("HTTP_ADDR", "127.0.0.1:0"),
        ("HTTP_WORKERS", "2"),
        ("DATABASE_URL", database_url),
        ("REDIS_URL", redis_url),
        ("REDIS_KEY_PREFIX", prefix),
        ("JWT_SECRET", SECRET),
        ("PG_POOL_SIZE", "16"),
        // The periodic reconciler would race the tests' own assertions; tests
        // run it by hand. (Start-up still runs it once, in the background:
        // spawn_app waits for that run, see below.)
        ("RECONCILE_INTERVAL_SECONDS", "3600"),
        // Tests fire thousands of requests from one address; the abuse tests
        // turn the limits on.
        ("RATE_LIMIT_ENABLED", "false"),
        // Many apps per test process: each its own metrics port.
        ("METRICS_ADDR", "127.0.0.1:0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(nodes) = cluster_nodes() {
        vars.insert("REDIS_CLUSTER_NODES".into(), nodes);
    }
    for (k, v) in overrides {
        vars.insert(k.to_string(), v.to_string());
    }
    Config::from_lookup(|name| vars.get(name).cloned()).expect("test config")
}

/// Waits until `state` has finished `n` guarded reconciler runs (60 s at most).
pub async fn wait_for_reconciler_runs(state: &AppState, n: u64) {
    use std::sync::atomic::Ordering;
    for _ in 0..600 {
        if state.reconciler_runs.load(Ordering::Acquire) >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the reconciler did not finish {n} run(s) within 60 s");
}

/// host:port of the test PostgreSQL (what a proxy forwards to).
pub fn postgres_address() -> String {
    let (server_url, _) = service_urls();
    let config: tokio_postgres::Config = server_url.parse().unwrap();
    format!("127.0.0.1:{}", config.get_ports().first().copied().unwrap_or(5432))
}

/// A connection of our own to the app's database, for acting from outside
/// (locks, direct updates), as psql would.
impl TestApp {
    pub async fn psql(&self) -> tokio_postgres::Client {
        let mut config: tokio_postgres::Config = self.server_url.parse().unwrap();
        config.dbname(&self.database);
        let (client, conn) = config.connect(NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }
}

async fn create_database(server_url: &str, name: &str) -> String {
    let (client, conn) = tokio_postgres::connect(server_url, NoTls)
        .await
        .expect("cannot reach the test PostgreSQL; start it with `scripts/services.sh up` (make test does this)");
    tokio::spawn(conn);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    crate::local_pg::with_database(server_url, name)
}

pub struct Response {
    pub status: StatusCode,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Response {
    /// The stable error code of a JSON error body ("" if it is not one).
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl TestApp {
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Response {
        let mut req = self.client.request(method, format!("{}{path}", self.address));
        if let Some(body) = body {
            req = req.json(&body);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        into_response(req.send().await.expect("request sent")).await
    }

    pub async fn post(&self, path: &str, body: Value, token: Option<&str>) -> Response {
        self.request(reqwest::Method::POST, path, Some(body), token).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        self.request(reqwest::Method::GET, path, None, token).await
    }

    /// POST with a raw body (for malformed input).
    pub async fn post_raw(&self, path: &str, body: Vec<u8>, token: Option<&str>) -> Response {
        let mut req =
            self.client.post(format!("{}{path}", self.address)).header("content-type", "application/json").body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        into_response(req.send().await.expect("request sent")).await
    }

    pub async fn use_code(&self, token: &str, code: &str) -> Response {
        self.post("/codes/use", json!({ "code": code }), Some(token)).await
    }

    /// Like a well-behaved client: on 503 wait (Retry-After) and try again,
    /// up to `tries` times; returns the first other answer.
    pub async fn use_code_retrying(&self, token: &str, code: &str, tries: usize) -> Response {
        let mut res = self.use_code(token, code).await;
        for _ in 1..tries {
            if res.status != 503 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            res = self.use_code(token, code).await;
        }
        res
    }

    pub async fn create_code(&self, code: &str, amount: i64, limit: i64) -> Code {
        self.create(CreateCode::credit(code.into(), amount, limit)).await
    }

    /// Any kind of code.
    pub async fn create(&self, input: CreateCode) -> Code {
        create_code(&self.state.pg, &self.state.gate, input, "Asia/Tehran").await.expect("code created")
    }

    /// `n` users straight into the database (no password hashing: tests need
    /// many users fast), with tokens minted by the app's own keys.
    pub async fn create_users(&self, n: usize) -> Vec<(i64, String)> {
        let db = self.state.pg.get().await.unwrap();
        let tag = rand::random::<u32>();
        let rows = db
            .query(
                "INSERT INTO users (username, password_hash)
                 SELECT 'u' || $1::text || '_' || g, '!' FROM generate_series(1, $2::int) g RETURNING id",
                &[&tag.to_string(), &(n as i32)],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| {
                let id: i64 = r.get(0);
                (id, self.state.tokens.issue(id, Role::User).unwrap())
            })
            .collect()
    }

    pub fn admin_token(&self) -> String {
        self.state.tokens.issue(1_000_000_000, Role::Admin).unwrap()
    }

    /// A service token, as `redeem-gateway token --service NAME --scope ...` mints it.
    pub fn service_token(&self, name: &str, scopes: &[Scope]) -> String {
        self.state.tokens.issue_service(name, scopes).unwrap()
    }

    /// A checkout's token: redeem and cancel coupons.
    pub fn checkout_token(&self) -> String {
        self.service_token("checkout", &[Scope::CouponsRedeem, Scope::CouponsCancel])
    }

    pub async fn query_i64(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> i64 {
        let db = self.state.pg.get().await.unwrap();
        db.query_one(sql, params).await.unwrap().get(0)
    }

    /// The money invariants over the whole database: every balance equals the
    /// sum of its ledger rows; every redemption has exactly one credit of its
    /// amount and every code credit a redemption; no balance below zero; a
    /// voucher is spent by at most one ledger row, and is marked used iff it is.
    pub async fn assert_money_invariants(&self) {
        let mismatched = self
            .query_i64(
                "SELECT count(*) FROM wallets w
                 WHERE w.balance <> (SELECT coalesce(sum(amount), 0) FROM ledger l WHERE l.user_id = w.user_id)",
                &[],
            )
            .await;
        assert_eq!(mismatched, 0, "wallets whose balance is not the sum of their ledger");
        let orphan_ledger = self
            .query_i64(
                "SELECT count(*) FROM ledger l LEFT JOIN redemptions r ON l.reference = 'redemption:' || r.id
                 WHERE l.kind = 'code_credit' AND (r.id IS NULL OR r.amount <> l.amount OR r.user_id <> l.user_id)",
                &[],
            )
            .await;
        assert_eq!(orphan_ledger, 0, "ledger rows without their redemption");
        let uncredited = self
            .query_i64(
                "SELECT count(*) FROM redemptions r LEFT JOIN ledger l ON l.reference = 'redemption:' || r.id
                 WHERE l.id IS NULL",
                &[],
            )
            .await;
        assert_eq!(uncredited, 0, "redemptions without their credit");
        let ledger_without_wallet = self
            .query_i64(
                "SELECT count(DISTINCT user_id) FROM ledger WHERE user_id NOT IN (SELECT user_id FROM wallets)",
                &[],
            )
            .await;
        assert_eq!(ledger_without_wallet, 0);
        let negative = self.query_i64("SELECT count(*) FROM wallets WHERE balance < 0", &[]).await;
        assert_eq!(negative, 0, "wallets below zero");
        let voucher_mismatch = self
            .query_i64(
                "SELECT count(*) FROM vouchers v
                 WHERE (v.used_at IS NOT NULL) <> EXISTS (SELECT 1 FROM ledger l WHERE l.voucher_id = v.id)",
                &[],
            )
            .await;
        assert_eq!(voucher_mismatch, 0, "vouchers marked used without their debit, or the other way round");
    }

    /// Redemptions committed for a code, and how many distinct users hold them.
    pub async fn redemption_counts(&self, code_id: i64) -> (i64, i64) {
        let db = self.state.pg.get().await.unwrap();
        let row = db
            .query_one("SELECT count(*), count(DISTINCT user_id) FROM redemptions WHERE code_id = $1", &[&code_id])
            .await
            .unwrap();
        (row.get(0), row.get(1))
    }

    pub async fn balance_of(&self, user_id: i64) -> i64 {
        self.query_i64("SELECT coalesce((SELECT balance FROM wallets WHERE user_id = $1), 0)", &[&user_id]).await
    }

    pub async fn ledger_rows_of(&self, user_id: i64) -> i64 {
        self.query_i64("SELECT count(*) FROM ledger WHERE user_id = $1", &[&user_id]).await
    }

    /// The configuration of a second gateway beside this one: the same
    /// database and Redis key prefix (another process of the same deployment).
    pub fn config_beside(&self, overrides: &[(&str, &str)]) -> Config {
        let database_url = crate::local_pg::with_database(&self.server_url, &self.database);
        test_config(&database_url, &self.redis_url, &self.prefix, overrides)
    }

    /// A raw Redis connection, for inspecting or damaging the gate's keys:
    /// our own, to the app's Redis or cluster, to the app's Redis or cluster (KEYS,
    /// DEL, CONFIG SET, SLOWLOG go to every master there).
    pub async fn redis(&self) -> RedisConn {
        RedisConn::connect(&self.state.config).await.unwrap()
    }

    pub fn key(&self, code: &str, part: &str) -> String {
        format!("{}:code:{{{code}}}:{part}", self.prefix)
    }

    /// Deletes every Redis key of this app (as a FLUSHALL would, for this test only).
    pub async fn wipe_redis(&self) {
        let mut conn = self.redis().await;
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}:*", self.prefix)).query_async(&mut conn).await.unwrap();
        if !keys.is_empty() {
            redis::cmd("DEL").arg(&keys).query_async::<()>(&mut conn).await.unwrap();
        }
    }

    /// Fires `tokens.len()` requests for `code` at once (after a barrier), one per token.
    pub async fn burst(&self, tokens: &[String], code: &str) -> Vec<Response> {
        let barrier = Arc::new(tokio::sync::Barrier::new(tokens.len()));
        let tasks: Vec<_> = tokens
            .iter()
            .map(|t| {
                let (client, url, token, barrier) =
                    (self.client.clone(), format!("{}/codes/use", self.address), t.clone(), barrier.clone());
                let body = json!({ "code": code });
                tokio::spawn(async move {
                    barrier.wait().await;
                    let res = client.post(url).bearer_auth(token).json(&body).send().await.expect("sent");
                    into_response(res).await
                })
            })
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }
}

pub async fn into_response(res: reqwest::Response) -> Response {
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Response { status, body, headers }
}

pub fn count_status(responses: &[Response], status: u16) -> usize {
    responses.iter().filter(|r| r.status.as_u16() == status).count()
}
