//! The system under test, all real processes: a private Redis (AOF on, so it
//! can come back from its log), a private PostgreSQL cluster (so it can be
//! stopped), and N gateway processes, each reaching Redis and PostgreSQL
//! through its own pair of proxies.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redeem_gateway::auth::Role;
use tokio_postgres::NoTls;

use crate::harness::{free_port, scratch_dir, Gateway, GatewayEnv, PgCluster};
use crate::proxy::Proxy;

/// A Redis of the run's own with `appendonly yes`, `appendfsync everysec`.
pub struct AofRedis {
    pub port: u16,
    child: Mutex<Option<Child>>,
    dir: PathBuf,
}

impl AofRedis {
    pub fn start() -> Self {
        let redis = AofRedis { port: free_port(), child: Mutex::new(None), dir: scratch_dir("sim-redis") };
        redis.spawn();
        redis
    }

    fn spawn(&self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "everysec", "--maxclients", "10000"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/services.sh up installs it)");
        *self.child.lock().unwrap() = Some(child);
        let start = Instant::now();
        // Loading a long AOF takes a moment: wait for PING to answer, not just the port.
        while !self.pings() {
            assert!(start.elapsed() < Duration::from_secs(30), "redis on {} did not come up", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pings(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 5];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn kill9(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL, then start again on the same directory: Redis replays its
    /// AOF, losing at most the last second of writes (appendfsync everysec).
    pub fn restart_from_aof(&self, down_for: Duration) {
        self.kill9();
        std::thread::sleep(down_for);
        self.spawn();
    }

    /// SIGKILL, delete its files, start empty.
    pub fn restart_empty(&self, down_for: Duration) {
        self.kill9();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            }
        }
        std::thread::sleep(down_for);
        self.spawn();
    }

    pub async fn flushall(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else { return false };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return false };
        redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await.is_ok()
    }
}

impl Drop for AofRedis {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Everything one seed's run talks to.
pub struct Cluster {
    pub redis: AofRedis,
    pub pg: Arc<PgCluster>,
    /// Direct (no proxy) URLs, for the checker and the CLI.
    pub env: GatewayEnv,
    pub gateways: Vec<Arc<Mutex<Gateway>>>,
    /// The fixed HTTP address of each gateway (a restart keeps its port).
    pub addresses: Vec<String>,
    pub redis_proxies: Vec<Proxy>,
    pub pg_proxies: Vec<Proxy>,
}

/// Gateway settings of the simulation (on top of the fault harness's).
pub fn sim_settings() -> Vec<(String, String)> {
    [
        // Short enough that a pause reaches every gateway within the run's rhythm.
        ("CODE_CACHE_TTL_MS", "500"),
        ("REDIS_TIMEOUT_MS", "1000"),
        ("PG_STATEMENT_TIMEOUT_MS", "1000"),
        ("CLAIM_GRACE_SECONDS", "2"),
        ("RECONCILE_INTERVAL_SECONDS", "1"),
        ("RATE_LIMIT_ENABLED", "false"),
        ("RUST_LOG", "warn,redeem_gateway=info"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl Cluster {
    pub async fn start(gateways: usize) -> Cluster {
        let redis = tokio::task::block_in_place(AofRedis::start);
        let pg = Arc::new(tokio::task::block_in_place(PgCluster::start));
        let pg_port = pg.port;
        let database_url = create_database(pg_port).await;
        let db_name = database_url.rsplit('/').next().unwrap().to_string();
        let mut env = GatewayEnv::new(database_url.clone(), redis.url());
        env.extra = sim_settings();
        // Migrate once up front (start-ups would race for the advisory lock anyway).
        run_cli(&env, &["migrate"]);

        let (mut gws, mut addresses, mut redis_proxies, mut pg_proxies) = (vec![], vec![], vec![], vec![]);
        for _ in 0..gateways {
            let rp = Proxy::start(redis.port).await;
            let pp = Proxy::start(pg_port).await;
            let mut genv = env.clone();
            genv.redis_url = format!("redis://127.0.0.1:{}/", rp.port);
            genv.database_url = format!("postgres://postgres@127.0.0.1:{}/{db_name}", pp.port);
            let gw = tokio::task::block_in_place(|| Gateway::start(&genv));
            addresses.push(gw.address());
            gws.push(Arc::new(Mutex::new(gw)));
            redis_proxies.push(rp);
            pg_proxies.push(pp);
        }
        Cluster { redis, pg, env, gateways: gws, addresses, redis_proxies, pg_proxies }
    }

    pub async fn db(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.env.database_url, NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }

    /// Users made by SQL, all with the same cheap password hash (argon2id at
    /// its smallest cost: a debug build verifies it in milliseconds), and
    /// their tokens. Returns (id, username, token).
    pub async fn create_users(&self, tag: &str, n: usize) -> Vec<SimUser> {
        let hash = cheap_hash(PASSWORD);
        let rows = self
            .db()
            .await
            .query(
                "INSERT INTO users (username, password_hash)
                 SELECT $1::text || '_' || g, $3 FROM generate_series(1, $2::int) g RETURNING id, username",
                &[&tag, &(n as i32), &hash],
            )
            .await
            .unwrap();
        let keys = self.env.tokens();
        rows.iter()
            .map(|r| {
                let id: i64 = r.get(0);
                SimUser { id, name: r.get(1), token: keys.issue(id, Role::User).unwrap() }
            })
            .collect()
    }

    pub fn admin_token(&self) -> String {
        self.env.admin_token()
    }

    pub fn checkout_token(&self) -> String {
        self.env.checkout_token()
    }

    /// One reconciler pass, by hand, straight to Redis and PostgreSQL.
    pub fn reconcile(&self) -> String {
        run_cli(&self.env, &["reconcile"])
    }
}

pub const PASSWORD: &str = "sim-password-1";

#[derive(Clone)]
pub struct SimUser {
    pub id: i64,
    pub name: String,
    pub token: String,
}

fn cheap_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    use argon2::{Algorithm, Argon2, Params, Version};
    let params = Params::new(8, 1, 1, None).unwrap();
    let salt = SaltString::encode_b64(b"sim-salt-16bytes").unwrap();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

/// The CLI with the run's settings (direct URLs); panics if it fails.
pub fn run_cli(env: &GatewayEnv, args: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_redeem-gateway"));
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).current_dir(std::env::temp_dir());
    let base = [
        ("APP_ENV", "dev".to_string()),
        ("JWT_SECRET", crate::harness::SECRET.to_string()),
        ("DATABASE_URL", env.database_url.clone()),
        ("REDIS_URL", env.redis_url.clone()),
        ("REDIS_KEY_PREFIX", env.prefix.clone()),
        ("RUST_LOG", "warn".to_string()),
    ];
    for (k, v) in base {
        cmd.env(k, v);
    }
    for (k, v) in &env.extra {
        cmd.env(k, v);
    }
    let out = cmd.args(args).output().unwrap();
    assert!(out.status.success(), "redeem-gateway {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh database on the run's cluster (shared with the nemesis, which stops and starts it).
async fn create_database(port: u16) -> String {
    let server = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let (client, conn) = tokio_postgres::connect(&server, NoTls).await.expect("the run's PostgreSQL");
    tokio::spawn(conn);
    let name = format!("sim_{:016x}", rand::random::<u64>());
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    format!("postgres://postgres@127.0.0.1:{port}/{name}")
}
