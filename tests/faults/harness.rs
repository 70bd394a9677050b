//! Processes the fault tests start, stop and kill: a private Redis, a private
//! PostgreSQL cluster (when the test stops it), and gateway processes.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redeem_gateway::auth::{Role, Scope, TokenKeys};
use redeem_gateway::config::Config;
use tokio_postgres::NoTls;

pub const SECRET: &str = "fault-test-secret-0123456789abcdef0123456";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rg-fault-{tag}-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    // PostgreSQL runs as `postgres` when we are root: it must reach the folder.
    Command::new("chmod").arg("777").arg(&dir).status().unwrap();
    dir
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// A Redis of this test's own, so it can be flushed and restarted.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

impl RedisServer {
    pub fn start() -> Self {
        let mut server = RedisServer { port: free_port(), child: None, dir: scratch_dir("redis") };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/services.sh up installs it)");
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10));
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub async fn flushall(&self) {
        let mut conn = redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
        redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await.unwrap();
    }

    /// Kills Redis and starts it again, empty, on the same port.
    pub fn restart_empty(&mut self, down_for: Duration) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        std::thread::sleep(down_for);
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The PostgreSQL to create this test's database in: the project-local one,
/// or a private cluster when the test needs to stop it.
pub enum Postgres {
    Shared { server_url: String },
    Private(PgCluster),
}

impl Postgres {
    pub fn shared() -> Self {
        let _ = dotenvy::dotenv();
        let server_url = std::env::var("TEST_DATABASE_URL")
            .or_else(|_| std::env::var("DATABASE_URL"))
            .unwrap_or_else(|_| crate::local_pg::default_server_url());
        Postgres::Shared { server_url }
    }

    fn server_url(&self) -> String {
        match self {
            Postgres::Shared { server_url } => server_url.clone(),
            Postgres::Private(c) => format!("postgres://postgres@127.0.0.1:{}/postgres", c.port),
        }
    }

    /// Creates a fresh database and returns its URL.
    pub async fn create_database(&self) -> String {
        let server_url = self.server_url();
        let (client, conn) = tokio_postgres::connect(&server_url, NoTls).await.expect("test PostgreSQL reachable");
        tokio::spawn(conn);
        let name = format!("test_{:016x}", rand::random::<u64>());
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        crate::local_pg::with_database(&server_url, &name)
    }
}

pub struct PgCluster {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// Extra server settings, e.g. `-c track_commit_timestamp=on`.
    options: String,
}

impl PgCluster {
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// A private cluster started with extra server settings.
    pub fn start_with(options: &str) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server installed (scripts/services.sh up)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("initdb");
        let cluster = PgCluster { port: free_port(), dir: scratch_dir("pg"), bin, options: options.to_string() };
        cluster.as_postgres(&format!(
            "'{}' -D '{}/data' -A trust -U postgres --no-sync >/dev/null",
            cluster.tool("initdb"),
            cluster.dir.display()
        ));
        cluster.start_server();
        cluster
    }

    fn tool(&self, name: &str) -> String {
        self.bin.join(name).display().to_string()
    }

    fn as_postgres(&self, cmd: &str) {
        let status = if is_root() {
            Command::new("su").args(["postgres", "-s", "/bin/sh", "-c", cmd]).status()
        } else {
            Command::new("sh").args(["-c", cmd]).status()
        };
        assert!(status.map(|s| s.success()).unwrap_or(false), "failed: {cmd}");
    }

    pub fn start_server(&self) {
        let dir = self.dir.display();
        self.as_postgres(&format!(
            "'{}' -D '{dir}/data' -l '{dir}/pg.log' -w -t 60 start -o \"-p {} -k '{dir}' -c listen_addresses=127.0.0.1 -c fsync=off {}\" >/dev/null",
            self.tool("pg_ctl"),
            self.port,
            self.options
        ));
    }

    pub fn stop_server(&self) {
        let dir = self.dir.display();
        self.as_postgres(&format!("'{}' -D '{dir}/data' -m fast -w stop >/dev/null", self.tool("pg_ctl")));
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let dir = self.dir.display();
        let cmd = format!("'{}' -D '{dir}/data' -m immediate -w stop >/dev/null 2>&1", self.tool("pg_ctl"));
        let _ = if is_root() {
            Command::new("su").args(["postgres", "-s", "/bin/sh", "-c", &cmd]).status()
        } else {
            Command::new("sh").args(["-c", &cmd]).status()
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for_port(port: u16, within: Duration) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < within, "nothing listening on {port} after {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The shared Redis Cluster to run the fault tests on (make test sets it
/// for its second pass; see the Makefile), if any.
fn shared_cluster_nodes() -> Option<String> {
    std::env::var("TEST_REDIS_CLUSTER_NODES").ok().filter(|v| !v.is_empty())
}

/// Settings shared by every gateway process of one test.
#[derive(Clone)]
pub struct GatewayEnv {
    pub database_url: String,
    pub redis_url: String,
    pub prefix: String,
    pub extra: Vec<(String, String)>,
}

impl GatewayEnv {
    /// With TEST_REDIS_CLUSTER_NODES set, the gateways use that cluster
    /// instead of `redis_url` (see `on_cluster`).
    pub fn new(database_url: String, redis_url: String) -> Self {
        let mut extra = vec![];
        if let Some(nodes) = shared_cluster_nodes() {
            extra.push(("REDIS_CLUSTER_NODES".to_string(), nodes));
        }
        GatewayEnv { database_url, redis_url, prefix: format!("f_{:08x}", rand::random::<u32>()), extra }
    }

    /// Whether the gateways speak to a Redis Cluster.
    #[allow(dead_code)] // used by the fault tests, not the simulation
    pub fn on_cluster(&self) -> bool {
        self.extra.iter().any(|(k, _)| k == "REDIS_CLUSTER_NODES")
    }

    /// A Redis connection like the gateways' own (single Redis or cluster).
    #[allow(dead_code)] // used by the fault tests, not the simulation
    pub async fn redis(&self) -> redeem_gateway::redis_conn::RedisConn {
        let vars = self.vars(0);
        let config = Config::from_lookup(|n| vars.iter().rev().find(|(k, _)| k == n).map(|(_, v)| v.clone())).unwrap();
        redeem_gateway::redis_conn::RedisConn::connect(&config).await.unwrap()
    }

    /// Deletes this test's keys everywhere (on a cluster: on every master),
    /// as a FLUSHALL would for this test alone.
    #[allow(dead_code)] // used by the fault tests, not the simulation
    pub async fn wipe_redis(&self) {
        let mut conn = self.redis().await;
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}:*", self.prefix)).query_async(&mut conn).await.unwrap();
        if !keys.is_empty() {
            redis::cmd("DEL").arg(&keys).query_async::<()>(&mut conn).await.unwrap();
        }
    }

    fn vars(&self, port: u16) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = [
            ("APP_ENV", "dev"),
            ("HTTP_WORKERS", "2"),
            ("JWT_SECRET", SECRET),
            ("PG_POOL_SIZE", "8"),
            ("PG_STATEMENT_TIMEOUT_MS", "1000"),
            ("CLAIM_GRACE_SECONDS", "2"),
            ("RECONCILE_INTERVAL_SECONDS", "1"),
            ("CODE_CACHE_TTL_MS", "500"),
            ("RATE_LIMIT_ENABLED", "false"),
            // Several gateways per test: no fixed metrics port to fight over.
            ("METRICS_ADDR", "off"),
            ("RUST_LOG", "warn,redeem_gateway=info"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        v.push(("HTTP_ADDR".into(), format!("127.0.0.1:{port}")));
        v.push(("DATABASE_URL".into(), self.database_url.clone()));
        v.push(("REDIS_URL".into(), self.redis_url.clone()));
        v.push(("REDIS_KEY_PREFIX".into(), self.prefix.clone()));
        v.extend(self.extra.iter().cloned());
        v
    }

    fn command(&self, port: u16) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_redeem-gateway"));
        cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
        // Keep any .env out of it: everything comes from here.
        cmd.current_dir(std::env::temp_dir());
        for (k, v) in self.vars(port) {
            cmd.env(k, v);
        }
        cmd
    }

    /// `redeem-gateway create-code` (migrates, writes Postgres, loads Redis).
    pub fn create_code(&self, code: &str, amount: i64, limit: i64) {
        let out = self
            .command(0)
            .args(["create-code", "--code", code, "--amount", &amount.to_string(), "--limit", &limit.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "create-code failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn tokens(&self) -> TokenKeys {
        let vars = self.vars(0);
        let config = Config::from_lookup(|n| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())).unwrap();
        TokenKeys::new(&config)
    }

    pub fn admin_token(&self) -> String {
        self.tokens().issue(1, Role::Admin).unwrap()
    }

    /// A checkout's credential: coupon redeems and cancels are its calls.
    #[allow(dead_code)] // used by the simulation, which shares this file
    pub fn checkout_token(&self) -> String {
        self.tokens().issue_service("checkout", &[Scope::CouponsRedeem, Scope::CouponsCancel]).unwrap()
    }
}

/// One `redeem-gateway serve` process.
pub struct Gateway {
    pub port: u16,
    env: GatewayEnv,
    child: Option<Child>,
    log: PathBuf,
}

impl Gateway {
    pub fn start(env: &GatewayEnv) -> Self {
        Self::start_on(env, free_port())
    }

    /// On a port chosen beforehand (the split's two roles name each other's).
    pub fn start_on(env: &GatewayEnv, port: u16) -> Self {
        let log = std::env::temp_dir().join(format!("rg-fault-gateway-{port}.log"));
        let mut gw = Gateway { port, env: env.clone(), child: None, log };
        gw.spawn();
        gw
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child =
            self.env.command(self.port).arg("serve").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(60));
    }

    fn wait_healthy(&mut self, within: Duration) {
        let start = Instant::now();
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.ends_with(b"200") {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("gateway exited at start-up ({status}); log: {}", self.log_tail());
            }
            assert!(start.elapsed() < within, "gateway not healthy; log: {}", self.log_tail());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL: no shutdown, no cleanup, in-flight requests abandoned.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the process to exit; returns its success.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else { return false };
        Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap();
        c.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    #[allow(dead_code)]
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}
