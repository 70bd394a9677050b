//! The one place configuration is read: the environment, with a `.env` file
//! loaded first by `main` (variables already set win). Every knob has a
//! default that works with `scripts/services.sh`, except the JWT secret
//! outside dev mode.

use std::env;
use std::str::FromStr;
use std::time::Duration;

/// The secret shipped in `.env.example`; refused outside dev mode.
pub const EXAMPLE_JWT_SECRET: &str = "dev-only-secret-change-me-0123456789abcdef";
const MIN_SECRET_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is not valid: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("{0} must be set")]
    Missing(&'static str),
    #[error(
        "JWT_SECRET (or JWT_PREVIOUS_SECRET) is the example secret or shorter than {MIN_SECRET_LEN} bytes: \
         anyone who has read the repository could sign tokens with it. Make one with \
         `openssl rand -base64 48`. (APP_ENV=dev allows a weak secret on a loopback HTTP_ADDR only.)"
    )]
    WeakSecret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    Dev,
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Which routes and background work one process runs (`serve --role`, `ROLE`).
/// `All` is the single process (a code's credit in the redemption's own
/// statement); `Wallet` and `Redemption` are the two halves of the split,
/// each with its own database, talking REST (credits through an outbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeRole {
    All,
    Wallet,
    Redemption,
}

impl ServeRole {
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "all" => Ok(ServeRole::All),
            "wallet" => Ok(ServeRole::Wallet),
            "redemption" => Ok(ServeRole::Redemption),
            other => {
                Err(ConfigError::Invalid { name: "ROLE", reason: format!("{other:?} (use all, wallet or redemption)") })
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ServeRole::All => "all",
            ServeRole::Wallet => "wallet",
            ServeRole::Redemption => "redemption",
        }
    }

    /// Serves the redemption side: codes, gate, users, tokens.
    pub fn redeems(self) -> bool {
        self != ServeRole::Wallet
    }

    /// Serves the wallet: balances, ledger, service credits and debits.
    pub fn holds_wallets(self) -> bool {
        self != ServeRole::Redemption
    }
}

/// The split's settings (roles `wallet` and `redemption`); unused by `all`.
#[derive(Clone, Default)]
pub struct SplitConfig {
    /// The wallet role's database (`WALLET_DATABASE_URL`); the wallet role
    /// uses it instead of `DATABASE_URL` when set.
    pub wallet_database_url: Option<String>,
    /// Where the redemption role reaches the wallet (`WALLET_URL`, e.g. http://127.0.0.1:8082).
    pub wallet_url: Option<String>,
    /// The redemption role's credential on `POST /wallet/credits`. Unset: it
    /// mints its own (service `redemption`, scope `wallet:credit`) with its signing key.
    pub wallet_service_token: Option<String>,
    /// The Ed25519 private key (PKCS#8 PEM) the redemption role signs tokens with.
    pub jwt_signing_key_file: Option<String>,
    /// Where the wallet role fetches the issuer's public keys (`JWKS_URL`).
    pub jwks_url: Option<String>,
    /// One call to the wallet, at most this long.
    pub credit_timeout: Duration,
    /// Calls made while the user waits, before the credit is left pending.
    pub credit_attempts: u32,
    /// The drainer's longest wait between two tries of one pending credit.
    pub outbox_backoff_max: Duration,
    /// How often the drainer looks for pending credits.
    pub outbox_poll: Duration,
}

/// BODY_LIMIT_BYTES when unset. The order bounds (`coupons::MAX_ORDER_LINES`)
/// are chosen so that any order the spec allows fits in it.
pub const DEFAULT_BODY_LIMIT_BYTES: usize = 16 * 1024;

#[derive(Clone)]
pub struct Config {
    pub app_env: AppEnv,
    /// What `serve` runs; `serve --role` overrides `ROLE`.
    pub role: ServeRole,
    pub split: SplitConfig,
    pub http_addr: String,
    /// Actix worker threads; 0 = one per CPU.
    pub http_workers: usize,
    pub body_limit_bytes: usize,
    pub database_url: String,
    pub pg_pool_size: usize,
    pub pg_statement_timeout: Duration,
    /// Group commit of credit-code redemptions (see redemption::batcher).
    pub commit_batch: crate::redemption::batcher::BatchLimits,
    /// Group read of balances (see wallet::reader).
    pub balance_read: crate::wallet::reader::ReadLimits,
    pub redis_url: String,
    /// Redis Cluster seed nodes (`REDIS_CLUSTER_NODES`); empty: the single
    /// Redis at `redis_url`. When set, every Redis call goes to the cluster.
    pub redis_cluster_nodes: Vec<String>,
    pub redis_pool_size: usize,
    pub redis_timeout: Duration,
    /// Prepended to every Redis key, so several deployments (or tests) share one Redis.
    pub redis_key_prefix: String,
    /// The current signing key: tokens are issued with it and its `kid`.
    pub jwt_secret: String,
    /// `kid` of the current key; derived from the secret when not set.
    pub jwt_kid: Option<String>,
    /// The key before the last rotation: verifies its own tokens (by `kid`)
    /// until they expire, never signs. Remove it one token lifetime after rotating.
    pub jwt_previous_secret: Option<String>,
    /// `kid` of the previous key, if it had an explicit one.
    pub jwt_previous_kid: Option<String>,
    pub jwt_ttl: Duration,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub jwt_leeway_seconds: u64,
    /// User tokens kept verified in memory (0 = verify every request).
    pub token_cache_size: usize,
    /// `aud` of service tokens. Differs from `jwt_audience`, so a user token
    /// never verifies as a service token, nor the other way round.
    pub service_jwt_audience: String,
    /// Lifetime of a service token minted by `token --service`.
    pub service_token_ttl: Duration,
    pub currency: String,
    /// IANA time zone new codes judge their day rules in, unless they say otherwise.
    pub default_time_zone: String,
    /// Which days `weekend` means in coupon rules.
    pub weekend: Vec<chrono::Weekday>,
    /// How long a code's definition is served from the in-process cache.
    pub code_cache_ttl: Duration,
    /// How long a code seen sold out is refused without asking Redis.
    pub sold_out_cache_ttl: Duration,
    pub reconcile_interval: Duration,
    /// Active codes the reconciler's slow sweep looks at per pass (besides
    /// the codes that changed), so that drift nothing marked is still found:
    /// every active code within ceil(active codes / this) passes.
    pub reconcile_sweep_codes: i64,
    /// A pending claim older than this with no Postgres row is released.
    pub claim_grace: Duration,
    pub log_format: LogFormat,
    pub rate_limits: RateLimits,
    /// Header naming the client address, set by a trusted reverse proxy
    /// (e.g. `x-forwarded-for`, its last hop is used). None = the socket's peer.
    pub trusted_proxy_header: Option<String>,
    /// Where Prometheus scrapes /metrics: a listener of its own (loopback by
    /// default), never the public one. None = no metrics listener.
    pub metrics_addr: Option<String>,
    /// Bounds on what one stranger can make the server do.
    pub limits: WorkLimits,
}

/// Bounds on the work strangers can cause: connections, slow bodies,
/// password hashing, live report streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkLimits {
    /// Open connections accepted in all (split evenly across workers); more
    /// wait in the listen backlog.
    pub max_connections: usize,
    /// Connections per worker in their TLS/accept handshake at once (actix's
    /// `max_connection_rate`; it only bites on TLS listeners).
    pub max_connection_rate: usize,
    /// Time a client has to send its request head (408 after).
    pub client_request_timeout: Duration,
    /// Time a client has to send its whole body once the head is in (408 after).
    pub body_read_timeout: Duration,
    /// Password hashes waiting for a CPU slot, at most; a full queue answers 503.
    pub hash_queue: usize,
    /// Longest a password hash waits for a slot before the request gets 503.
    pub hash_wait: Duration,
    /// Live report streams (SSE) open at once, per admin and in all.
    pub streams_per_admin: usize,
    pub streams_total: usize,
}

/// At most `burst` requests back to back; the bucket refills fully over `per`
/// (one request every `per / burst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub per: Duration,
    pub burst: u32,
}

impl Limit {
    pub fn per_minute(n: u32) -> Self {
        Limit { per: Duration::from_secs(60), burst: n }
    }

    pub fn per_hour(n: u32) -> Self {
        Limit { per: Duration::from_secs(3_600), burst: n }
    }

    /// The refill step of the bucket: one request's worth of time, in ms (at least 1).
    pub fn emission_interval_ms(&self) -> u64 {
        (self.per.as_millis() as u64 / u64::from(self.burst.max(1))).max(1)
    }
}

/// The abuse limits, enforced in Redis so they hold across gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub enabled: bool,
    /// Login attempts, per (username, client address): one address guessing
    /// one account. A successful login gives its attempt back, so only
    /// failures use it up; a guesser elsewhere never touches the owner's.
    pub login: Limit,
    /// Login attempts, per client address. Generous: mobile carriers put
    /// thousands of users behind one address.
    pub login_address: Limit,
    /// Failed logins per username, from anywhere (ASVS 2.2.1: at most 100 an
    /// hour). Past it, logins for the username are slowed down, never refused.
    pub login_failures: Limit,
    /// Registrations, per client address.
    pub register: Limit,
    /// Code redemption attempts, per user.
    pub code: Limit,
    /// Unknown codes tried, per user.
    pub failed_code: Limit,
    /// Unknown codes tried, per client address (many accounts, one guesser).
    pub failed_code_address: Limit,
}

impl std::fmt::Debug for Config {
    // Hand-written so the secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("app_env", &self.app_env)
            .field("http_addr", &self.http_addr)
            .field("database_url", &redact_url(&self.database_url))
            .field("redis_url", &redact_url(&self.redis_url))
            .field("redis_cluster_nodes", &self.redis_cluster_nodes.iter().map(|u| redact_url(u)).collect::<Vec<_>>())
            .field("redis_key_prefix", &self.redis_key_prefix)
            .field("jwt_secret", &"<redacted>")
            .field("jwt_previous_secret", &self.jwt_previous_secret.as_ref().map(|_| "<redacted>"))
            .field("rate_limits", &self.rate_limits)
            .field("trusted_proxy_header", &self.trusted_proxy_header)
            .field("metrics_addr", &self.metrics_addr)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_string(),
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| env::var(name).ok())
    }

    /// The environment, with `ROLE` replaced by `role` (`serve --role`).
    pub fn from_env_with_role(role: &str) -> Result<Self, ConfigError> {
        Self::from_lookup(|name| if name == "ROLE" { Some(role.to_string()) } else { env::var(name).ok() })
    }

    /// Builds the config from any source of variables (the environment, or a
    /// map in tests), applying defaults and validating.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let vars = Vars(&lookup);
        let app_env = match vars.or("APP_ENV", "production").to_ascii_lowercase().as_str() {
            "dev" | "development" | "local" | "test" => AppEnv::Dev,
            "prod" | "production" => AppEnv::Production,
            other => {
                return Err(ConfigError::Invalid {
                    name: "APP_ENV",
                    reason: format!("{other:?} (use dev or production)"),
                })
            }
        };
        let log_format = match vars.or("LOG_FORMAT", "text").as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                return Err(ConfigError::Invalid {
                    name: "LOG_FORMAT",
                    reason: format!("{other:?} (use text or json)"),
                })
            }
        };
        let role = ServeRole::parse(&vars.or("ROLE", "all"))?;
        let split = SplitConfig {
            wallet_database_url: vars.get("WALLET_DATABASE_URL"),
            wallet_url: vars.get("WALLET_URL").map(|u| u.trim_end_matches('/').to_string()),
            wallet_service_token: vars.get("WALLET_SERVICE_TOKEN"),
            jwt_signing_key_file: vars.get("JWT_SIGNING_KEY_FILE"),
            jwks_url: vars.get("JWKS_URL"),
            credit_timeout: Duration::from_millis(vars.parse("CREDIT_TIMEOUT_MS", 2_000)?),
            credit_attempts: vars.parse("CREDIT_ATTEMPTS", 2)?,
            outbox_backoff_max: Duration::from_millis(vars.parse("OUTBOX_BACKOFF_MAX_MS", 10_000)?),
            outbox_poll: Duration::from_millis(vars.parse("OUTBOX_POLL_MS", 500)?),
        };
        let config = Config {
            app_env,
            role,
            split,
            http_addr: vars.or("HTTP_ADDR", "127.0.0.1:8080"),
            http_workers: vars.parse("HTTP_WORKERS", 0)?,
            body_limit_bytes: vars.parse("BODY_LIMIT_BYTES", DEFAULT_BODY_LIMIT_BYTES)?,
            database_url: vars.required("DATABASE_URL")?,
            pg_pool_size: vars.parse("PG_POOL_SIZE", 32)?,
            pg_statement_timeout: Duration::from_millis(vars.parse("PG_STATEMENT_TIMEOUT_MS", 5_000)?),
            commit_batch: crate::redemption::batcher::BatchLimits {
                max_rows: vars.parse("COMMIT_BATCH_MAX_ROWS", 64)?,
                committers: vars.parse("COMMIT_BATCH_COMMITTERS", 4)?,
                queue: vars.parse("COMMIT_QUEUE_MAX", 4_096)?,
                // As long as a commit may wait for a pool connection today.
                max_wait: Duration::from_millis(vars.parse("COMMIT_QUEUE_WAIT_MS", 2_000)?),
            },
            balance_read: crate::wallet::reader::ReadLimits {
                // Two reads in flight keep both cores' worth of requests
                // batching without holding more than two pool connections.
                readers: vars.parse("BALANCE_READERS", 2)?,
                max_batch: vars.parse("BALANCE_BATCH_MAX", 256)?,
                queue: vars.parse("BALANCE_QUEUE_MAX", 4_096)?,
                max_wait: Duration::from_millis(vars.parse("BALANCE_QUEUE_WAIT_MS", 2_000)?),
            },
            // With a cluster the seeds name the Redis; REDIS_URL is then not needed.
            redis_url: match vars.get("REDIS_CLUSTER_NODES") {
                Some(_) => vars.or("REDIS_URL", ""),
                None => vars.required("REDIS_URL")?,
            },
            redis_cluster_nodes: vars.list("REDIS_CLUSTER_NODES"),
            redis_pool_size: vars.parse("REDIS_POOL_SIZE", 8)?,
            redis_timeout: Duration::from_millis(vars.parse("REDIS_TIMEOUT_MS", 1_000)?),
            redis_key_prefix: vars.or("REDIS_KEY_PREFIX", "rg"),
            // The split signs with Ed25519 (JWT_SIGNING_KEY_FILE / JWKS_URL), not a shared secret.
            jwt_secret: if role == ServeRole::All { vars.required("JWT_SECRET")? } else { vars.or("JWT_SECRET", "") },
            jwt_kid: vars.get("JWT_KID"),
            jwt_previous_secret: vars.get("JWT_PREVIOUS_SECRET"),
            jwt_previous_kid: vars.get("JWT_PREVIOUS_KID"),
            jwt_ttl: Duration::from_secs(vars.parse("JWT_TTL_SECONDS", 3_600)?),
            jwt_issuer: vars.or("JWT_ISSUER", "redeem-gateway"),
            jwt_audience: vars.or("JWT_AUDIENCE", "redeem-gateway"),
            jwt_leeway_seconds: vars.parse("JWT_LEEWAY_SECONDS", 5)?,
            token_cache_size: vars.parse("TOKEN_CACHE_SIZE", 50_000)?,
            service_jwt_audience: vars
                .get("SERVICE_JWT_AUDIENCE")
                .unwrap_or_else(|| format!("{}:services", vars.or("JWT_AUDIENCE", "redeem-gateway"))),
            service_token_ttl: Duration::from_secs(vars.parse("SERVICE_TOKEN_TTL_SECONDS", 30 * 86_400)?),
            currency: vars.or("CURRENCY", "TOMAN"),
            default_time_zone: vars.or("DEFAULT_TIME_ZONE", "Asia/Tehran"),
            weekend: parse_weekdays(&vars.or("WEEKEND_DAYS", "fri"))?,
            code_cache_ttl: Duration::from_millis(vars.parse("CODE_CACHE_TTL_MS", 2_000)?),
            sold_out_cache_ttl: Duration::from_millis(vars.parse("SOLD_OUT_CACHE_MS", 500)?),
            reconcile_interval: Duration::from_secs(vars.parse("RECONCILE_INTERVAL_SECONDS", 5)?),
            reconcile_sweep_codes: vars.parse("RECONCILE_SWEEP_CODES", 1_000)?,
            claim_grace: Duration::from_secs(vars.parse("CLAIM_GRACE_SECONDS", 30)?),
            log_format,
            rate_limits: RateLimits {
                enabled: vars.parse("RATE_LIMIT_ENABLED", true)?,
                login: Limit::per_hour(vars.parse("RATE_LOGIN_PER_USERNAME_ADDRESS_PER_HOUR", 10)?),
                login_address: Limit::per_minute(vars.parse("RATE_LOGIN_PER_ADDRESS_PER_MINUTE", 600)?),
                login_failures: Limit::per_hour(vars.parse("RATE_LOGIN_FAILURES_PER_USERNAME_PER_HOUR", 100)?),
                register: Limit::per_hour(vars.parse("RATE_REGISTER_PER_HOUR", 600)?),
                code: Limit::per_minute(vars.parse("RATE_CODE_PER_MINUTE", 60)?),
                failed_code: Limit::per_hour(vars.parse("RATE_FAILED_CODE_PER_HOUR", 20)?),
                failed_code_address: Limit::per_hour(vars.parse("RATE_FAILED_CODE_PER_ADDRESS_PER_HOUR", 200)?),
            },
            trusted_proxy_header: vars.get("TRUSTED_PROXY_HEADER").map(|h| h.trim().to_ascii_lowercase()),
            // Unset: loopback. Set but empty, or "off": no metrics listener.
            metrics_addr: match lookup("METRICS_ADDR").as_deref().map(str::trim) {
                None => Some("127.0.0.1:9464".to_string()),
                Some("" | "off") => None,
                Some(addr) => Some(addr.to_string()),
            },
            limits: WorkLimits {
                max_connections: vars.parse("MAX_CONNECTIONS", 10_000)?,
                max_connection_rate: vars.parse("MAX_CONNECTION_RATE", 256)?,
                client_request_timeout: Duration::from_millis(vars.parse("CLIENT_REQUEST_TIMEOUT_MS", 5_000)?),
                body_read_timeout: Duration::from_millis(vars.parse("BODY_READ_TIMEOUT_MS", 10_000)?),
                hash_queue: vars.parse("HASH_QUEUE", 64)?,
                hash_wait: Duration::from_millis(vars.parse("HASH_WAIT_MS", 2_000)?),
                streams_per_admin: vars.parse("SSE_STREAMS_PER_ADMIN", 16)?,
                streams_total: vars.parse("SSE_STREAMS_TOTAL", 64)?,
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// A weak secret (the example, or under 32 bytes) is allowed only in dev
    /// mode on a loopback address: on any other address strangers can reach
    /// the gateway, and the example secret is public.
    fn weak_secret_allowed(&self) -> bool {
        self.app_env == AppEnv::Dev && is_loopback(&self.http_addr)
    }

    /// The database this role owns: the wallet role's own when
    /// `WALLET_DATABASE_URL` is set, else `DATABASE_URL`.
    pub fn role_database_url(&self) -> &str {
        match (self.role, &self.split.wallet_database_url) {
            (ServeRole::Wallet, Some(url)) => url,
            _ => &self.database_url,
        }
    }

    fn validate_split(&self) -> Result<(), ConfigError> {
        let s = &self.split;
        match self.role {
            ServeRole::All => return Ok(()),
            ServeRole::Wallet if s.jwks_url.is_none() => return Err(ConfigError::Missing("JWKS_URL")),
            ServeRole::Redemption if s.wallet_url.is_none() => return Err(ConfigError::Missing("WALLET_URL")),
            ServeRole::Redemption if s.jwt_signing_key_file.is_none() => {
                return Err(ConfigError::Missing("JWT_SIGNING_KEY_FILE"))
            }
            _ => {}
        }
        for (name, value) in [
            ("CREDIT_TIMEOUT_MS", s.credit_timeout.as_millis() as usize),
            ("CREDIT_ATTEMPTS", s.credit_attempts as usize),
            ("OUTBOX_BACKOFF_MAX_MS", s.outbox_backoff_max.as_millis() as usize),
            ("OUTBOX_POLL_MS", s.outbox_poll.as_millis() as usize),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid { name, reason: "must be at least 1".into() });
            }
        }
        // A bound on how long a user waits for the wallet.
        if s.credit_attempts > 5 {
            return Err(ConfigError::Invalid { name: "CREDIT_ATTEMPTS", reason: "at most 5".into() });
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_split()?;
        if self.role != ServeRole::All {
            // No shared secret in the split: the checks below are about it.
            return self.validate_common();
        }
        if is_weak(&self.jwt_secret) && !self.weak_secret_allowed() {
            return Err(ConfigError::WeakSecret);
        }
        if self.jwt_secret.is_empty() {
            return Err(ConfigError::Missing("JWT_SECRET"));
        }
        if let Some(previous) = &self.jwt_previous_secret {
            if is_weak(previous) && !self.weak_secret_allowed() {
                return Err(ConfigError::WeakSecret);
            }
            if previous == &self.jwt_secret {
                return Err(ConfigError::Invalid {
                    name: "JWT_PREVIOUS_SECRET",
                    reason: "is the same as JWT_SECRET (leave it empty unless rotating)".into(),
                });
            }
        }
        self.validate_common()
    }

    fn validate_common(&self) -> Result<(), ConfigError> {
        if self.default_time_zone.parse::<chrono_tz::Tz>().is_err() {
            return Err(ConfigError::Invalid {
                name: "DEFAULT_TIME_ZONE",
                reason: format!("{:?} is not an IANA time zone", self.default_time_zone),
            });
        }
        if self.service_jwt_audience == self.jwt_audience {
            return Err(ConfigError::Invalid {
                name: "SERVICE_JWT_AUDIENCE",
                reason: "must differ from JWT_AUDIENCE (a user token must never pass as a service token)".into(),
            });
        }
        self.validate_rate_limits()?;
        self.validate_work_limits()?;
        if let Some(h) = &self.trusted_proxy_header {
            if actix_web::http::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(ConfigError::Invalid {
                    name: "TRUSTED_PROXY_HEADER",
                    reason: format!("{h:?} is not a header name"),
                });
            }
        }
        if let Some(bad) = self.redis_cluster_nodes.iter().find(|n| !n.starts_with("redis://")) {
            return Err(ConfigError::Invalid {
                name: "REDIS_CLUSTER_NODES",
                reason: format!("{:?} (comma-separated redis://host:port seeds)", redact_url(bad)),
            });
        }
        if self.redis_key_prefix.contains(['{', '}']) {
            return Err(ConfigError::Invalid {
                name: "REDIS_KEY_PREFIX",
                reason: "must not contain braces (they are the Redis Cluster hash tag)".into(),
            });
        }
        for (name, value) in [
            ("PG_POOL_SIZE", self.pg_pool_size),
            ("REDIS_POOL_SIZE", self.redis_pool_size),
            ("COMMIT_BATCH_MAX_ROWS", self.commit_batch.max_rows),
            ("COMMIT_BATCH_COMMITTERS", self.commit_batch.committers),
            ("COMMIT_QUEUE_MAX", self.commit_batch.queue),
            ("BALANCE_BATCH_MAX", self.balance_read.max_batch),
            ("BALANCE_QUEUE_MAX", self.balance_read.queue),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid { name, reason: "must be at least 1".into() });
            }
        }
        if !(1..=100_000).contains(&self.reconcile_sweep_codes) {
            return Err(ConfigError::Invalid {
                name: "RECONCILE_SWEEP_CODES",
                reason: "must be between 1 and 100000".into(),
            });
        }
        if self.claim_grace <= self.pg_statement_timeout {
            // A commit still running when its claim is swept would cost a retry.
            return Err(ConfigError::Invalid {
                name: "CLAIM_GRACE_SECONDS",
                reason: "must be longer than PG_STATEMENT_TIMEOUT_MS".into(),
            });
        }
        Ok(())
    }

    fn validate_work_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        for (name, value) in [
            ("MAX_CONNECTIONS", l.max_connections),
            ("MAX_CONNECTION_RATE", l.max_connection_rate),
            ("SSE_STREAMS_PER_ADMIN", l.streams_per_admin),
            ("SSE_STREAMS_TOTAL", l.streams_total),
            ("CLIENT_REQUEST_TIMEOUT_MS", l.client_request_timeout.as_millis() as usize),
            ("BODY_READ_TIMEOUT_MS", l.body_read_timeout.as_millis() as usize),
            ("HASH_WAIT_MS", l.hash_wait.as_millis() as usize),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid { name, reason: "must be at least 1".into() });
            }
        }
        // Port 0 (a free port each, in tests) cannot collide.
        if self.metrics_addr.as_deref() == Some(self.http_addr.as_str()) && !self.http_addr.ends_with(":0") {
            return Err(ConfigError::Invalid {
                name: "METRICS_ADDR",
                reason: "must differ from HTTP_ADDR (metrics are never served to the public listener)".into(),
            });
        }
        Ok(())
    }

    fn validate_rate_limits(&self) -> Result<(), ConfigError> {
        let r = &self.rate_limits;
        for (name, limit) in [
            ("RATE_LOGIN_PER_USERNAME_ADDRESS_PER_HOUR", r.login),
            ("RATE_LOGIN_PER_ADDRESS_PER_MINUTE", r.login_address),
            ("RATE_LOGIN_FAILURES_PER_USERNAME_PER_HOUR", r.login_failures),
            ("RATE_REGISTER_PER_HOUR", r.register),
            ("RATE_CODE_PER_MINUTE", r.code),
            ("RATE_FAILED_CODE_PER_HOUR", r.failed_code),
            ("RATE_FAILED_CODE_PER_ADDRESS_PER_HOUR", r.failed_code_address),
        ] {
            // 0 would refuse everyone; RATE_LIMIT_ENABLED=false is the off switch.
            if limit.burst == 0 {
                return Err(ConfigError::Invalid { name, reason: "must be at least 1".into() });
            }
        }
        Ok(())
    }
}

fn is_weak(secret: &str) -> bool {
    secret == EXAMPLE_JWT_SECRET || secret.len() < MIN_SECRET_LEN
}

/// Whether `addr` (host:port) can only be reached from this machine:
/// `localhost`, or a loopback IP. Anything else (0.0.0.0, a hostname, a
/// public address) counts as reachable by strangers.
pub fn is_loopback(addr: &str) -> bool {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn parse_weekdays(list: &str) -> Result<Vec<chrono::Weekday>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.parse::<chrono::Weekday>()
                .map_err(|_| ConfigError::Invalid { name: "WEEKEND_DAYS", reason: format!("{d:?} is not a weekday") })
        })
        .collect()
}

struct Vars<'a, F: Fn(&str) -> Option<String>>(&'a F);

impl<F: Fn(&str) -> Option<String>> Vars<'_, F> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.is_empty())
    }

    fn or(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| default.to_string())
    }

    /// A comma-separated list; blanks dropped.
    fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
            .unwrap_or_default()
    }

    fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.get(name).ok_or(ConfigError::Missing(name))
    }

    fn parse<T: FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            Some(v) => v.parse().map_err(|e: T::Err| ConfigError::Invalid { name, reason: format!("{v:?}: {e}") }),
            None => Ok(default),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    const BASE: [(&str, &str); 2] = [("DATABASE_URL", "postgres://h/db"), ("REDIS_URL", "redis://h/")];

    #[test]
    fn the_example_secret_is_refused_outside_dev() {
        let with = |extra: &[(&str, &str)]| {
            let mut pairs = BASE.to_vec();
            pairs.extend_from_slice(extra);
            Config::from_lookup(lookup(&pairs))
        };
        assert!(matches!(with(&[("JWT_SECRET", EXAMPLE_JWT_SECRET)]), Err(ConfigError::WeakSecret)));
        assert!(matches!(with(&[("JWT_SECRET", "short")]), Err(ConfigError::WeakSecret)));
        assert!(with(&[("JWT_SECRET", EXAMPLE_JWT_SECRET), ("APP_ENV", "dev")]).is_ok());
        // Dev mode allows it on loopback only: never where strangers connect.
        for public in ["0.0.0.0:8080", "[::]:8080", "10.0.0.5:80", "gateway.example:8080"] {
            let c = with(&[("JWT_SECRET", EXAMPLE_JWT_SECRET), ("APP_ENV", "dev"), ("HTTP_ADDR", public)]);
            assert!(matches!(c, Err(ConfigError::WeakSecret)), "{public}");
            let c = with(&[("JWT_SECRET", "short-but-dev"), ("APP_ENV", "dev"), ("HTTP_ADDR", public)]);
            assert!(matches!(c, Err(ConfigError::WeakSecret)), "{public}");
        }
        for local in ["127.0.0.1:8080", "localhost:0", "[::1]:8080", "127.1.2.3:9"] {
            let c = with(&[("JWT_SECRET", EXAMPLE_JWT_SECRET), ("APP_ENV", "dev"), ("HTTP_ADDR", local)]);
            assert!(c.is_ok(), "{local}");
        }
        assert!(with(&[("JWT_SECRET", &"s".repeat(40)), ("HTTP_ADDR", "0.0.0.0:8080")]).is_ok());
        assert!(with(&[("JWT_SECRET", &"s".repeat(40))]).is_ok());
        assert!(matches!(with(&[]), Err(ConfigError::Missing("JWT_SECRET"))));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let mut pairs = BASE.to_vec();
        pairs.extend_from_slice(&[("JWT_SECRET", EXAMPLE_JWT_SECRET), ("APP_ENV", "dev"), ("PG_POOL_SIZE", "lots")]);
        let err = Config::from_lookup(lookup(&pairs)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("PG_POOL_SIZE"), "{err}");
    }

    fn config_with(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut pairs = BASE.to_vec();
        pairs.extend_from_slice(&[("JWT_SECRET", EXAMPLE_JWT_SECRET), ("APP_ENV", "dev")]);
        pairs.extend_from_slice(extra);
        Config::from_lookup(lookup(&pairs))
    }

    #[test]
    fn cluster_nodes_are_a_list_of_redis_urls_and_stand_in_for_redis_url() {
        let c = config_with(&[("REDIS_CLUSTER_NODES", " redis://a:7000, redis://b:7001 ,")]).ok();
        assert_eq!(c.map(|c| c.redis_cluster_nodes), Some(vec!["redis://a:7000".to_string(), "redis://b:7001".into()]));
        assert_eq!(config_with(&[]).ok().map(|c| c.redis_cluster_nodes.len()), Some(0));
        let err = config_with(&[("REDIS_CLUSTER_NODES", "a:7000")]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("REDIS_CLUSTER_NODES"), "{err}");
        let no_url = [
            ("DATABASE_URL", "postgres://h/db"),
            ("JWT_SECRET", EXAMPLE_JWT_SECRET),
            ("APP_ENV", "dev"),
            ("REDIS_CLUSTER_NODES", "redis://a:7000"),
        ];
        assert!(Config::from_lookup(lookup(&no_url)).is_ok());
    }

    #[test]
    fn rate_limits_have_defaults_and_refuse_zero() {
        let c = config_with(&[]).map(|c| c.rate_limits).ok();
        let expected = RateLimits {
            enabled: true,
            login: Limit::per_hour(10),
            login_address: Limit::per_minute(600),
            login_failures: Limit::per_hour(100),
            register: Limit::per_hour(600),
            code: Limit::per_minute(60),
            failed_code: Limit::per_hour(20),
            failed_code_address: Limit::per_hour(200),
        };
        assert_eq!(c, Some(expected));
        assert_eq!(Limit::per_minute(10).emission_interval_ms(), 6_000);
        let off = config_with(&[("RATE_LIMIT_ENABLED", "false"), ("RATE_CODE_PER_MINUTE", "5")]).ok();
        assert_eq!(off.map(|c| (c.rate_limits.enabled, c.rate_limits.code.burst)), Some((false, 5)));
        let err = config_with(&[("RATE_LOGIN_PER_USERNAME_ADDRESS_PER_HOUR", "0")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("RATE_LOGIN_PER_USERNAME_ADDRESS_PER_HOUR"), "{err}");
    }

    #[test]
    fn the_proxy_header_must_be_a_header_name() {
        let c = config_with(&[("TRUSTED_PROXY_HEADER", "X-Forwarded-For")]).ok();
        assert_eq!(c.and_then(|c| c.trusted_proxy_header).as_deref(), Some("x-forwarded-for"));
        assert!(config_with(&[("TRUSTED_PROXY_HEADER", "not a header")]).is_err());
        assert_eq!(config_with(&[]).ok().map(|c| c.trusted_proxy_header), Some(None));
    }

    #[test]
    fn the_previous_jwt_secret_must_differ_and_be_strong_outside_dev() {
        assert!(config_with(&[("JWT_PREVIOUS_SECRET", EXAMPLE_JWT_SECRET)]).is_err());
        let strong = "s".repeat(40);
        let prod = |previous: &str| {
            let mut pairs = BASE.to_vec();
            pairs.extend_from_slice(&[("JWT_SECRET", strong.as_str()), ("JWT_PREVIOUS_SECRET", previous)]);
            Config::from_lookup(lookup(&pairs))
        };
        assert!(matches!(prod("short"), Err(ConfigError::WeakSecret)));
        assert!(prod(&"p".repeat(40)).is_ok());
    }

    #[test]
    fn metrics_get_their_own_loopback_listener_unless_turned_off() {
        assert_eq!(config_with(&[]).ok().and_then(|c| c.metrics_addr).as_deref(), Some("127.0.0.1:9464"));
        assert_eq!(config_with(&[("METRICS_ADDR", "off")]).ok().map(|c| c.metrics_addr), Some(None));
        assert_eq!(config_with(&[("METRICS_ADDR", "")]).ok().map(|c| c.metrics_addr), Some(None));
        assert!(config_with(&[("METRICS_ADDR", "127.0.0.1:8080")]).is_err(), "never on the public listener");
    }

    #[test]
    fn work_limits_have_defaults_and_refuse_zero() {
        let l = config_with(&[]).map(|c| c.limits).ok();
        assert_eq!(
            l.map(|l| (l.max_connections, l.hash_queue, l.streams_per_admin, l.streams_total)),
            Some((10_000, 64, 16, 64))
        );
        for name in ["MAX_CONNECTIONS", "BODY_READ_TIMEOUT_MS", "SSE_STREAMS_TOTAL", "HASH_WAIT_MS"] {
            let err = config_with(&[(name, "0")]).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn urls_lose_their_password_in_debug_output() {
        assert_eq!(redact_url("postgres://u:secret@h:5/db"), "postgres://***@h:5/db");
        assert_eq!(redact_url("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
    }
}
