//! One Redis connection type over a single Redis or a Redis Cluster
//! (`REDIS_CLUSTER_NODES`), so the gate, the rate limiter and the reconciler
//! lock name one type whichever is configured. Also the key slot, for the
//! tests that prove every script touches one slot.
//!
//! Why not deadpool-redis's cluster pool on the hot path: a cluster connection
//! of the redis crate is already multiplexed over every node and reconnects by
//! itself, so a pool of them buys nothing; and deadpool's cluster manager
//! builds its client with the crate's defaults (16 retries, no response
//! time-out), which would resend a script after a dropped connection. The
//! single-Redis path sends each command at most once, and the scripts were
//! written for that (a claim whose reply was lost is released, never run
//! twice); the cluster path keeps it: the client never retries by itself, and
//! `RedisConn` resends only what the cluster refused before running it
//! (MOVED, TRYAGAIN, CLUSTERDOWN, a refused connection...).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value};

use crate::config::Config;

/// Resends of a command the cluster refused without running it.
const REFUSED_RETRIES: u32 = 3;
/// The first wait before such a resend (doubled each time): the client
/// rebuilds its slot map in the background meanwhile.
const REFUSED_BACKOFF: Duration = Duration::from_millis(40);

/// A multiplexed, reconnecting connection to one Redis or to a cluster. Cheap
/// to clone; clones share the connection.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// Connects with the configured time-outs: to the cluster when
    /// `REDIS_CLUSTER_NODES` is set, else to `REDIS_URL`.
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        if config.redis_cluster_nodes.is_empty() {
            return Self::connect_single(config).await;
        }
        let client = ClusterClientBuilder::new(config.redis_cluster_nodes.iter().map(String::as_str))
            .connection_timeout(config.redis_timeout)
            .response_timeout(config.redis_timeout)
            // At most once per call, as on a single Redis (see the module comment).
            .retries(0)
            .build()
            .map_err(|e| anyhow::anyhow!("REDIS_CLUSTER_NODES is not valid: {e}"))?;
        let conn = client
            .get_async_connection()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the Redis Cluster at REDIS_CLUSTER_NODES: {e}"))?;
        Ok(RedisConn::Cluster(conn))
    }

    async fn connect_single(config: &Config) -> anyhow::Result<Self> {
        let client = redis::Client::open(config.redis_url.as_str())
            .map_err(|e| anyhow::anyhow!("REDIS_URL is not valid: {e}"))?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.redis_timeout))
            .set_connection_timeout(Some(config.redis_timeout))
            .set_number_of_retries(2);
        let conn = client
            .get_connection_manager_with_config(manager_config)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach Redis at REDIS_URL: {e}"))?;
        Ok(RedisConn::Single(conn))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }
}

/// True when the cluster answered that it did not run the command (wrong
/// node, slot moving, failover under way) or it never reached a node: safe
/// to send again. A dropped connection or a time-out is not: the command may
/// have run.
fn refused_unrun(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::BusyLoading
        ),
        ErrorKind::ClusterConnectionNotFound => true,
        _ => e.is_connection_refusal(),
    }
}

/// Sends `$send` (an expression yielding a future), again after a short wait
/// while the cluster refuses it unrun; the last answer is the caller's.
macro_rules! with_refusals_retried {
    ($send:expr) => {
        Box::pin(async move {
            let mut wait = REFUSED_BACKOFF;
            for _ in 0..REFUSED_RETRIES {
                match $send.await {
                    Err(e) if refused_unrun(&e) => {
                        tracing::debug!(error = %e, "redis cluster refused a command; sending it again");
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                    done => return done,
                }
            }
            $send.await
        })
    };
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => with_refusals_retried!(c.req_packed_command(cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => with_refusals_retried!(c.req_packed_commands(pipeline, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Connections for operator and background work. On a single Redis, a
/// deadpool pool; on a cluster, the one multiplexed cluster connection
/// handed out as clones (see the module comment).
#[derive(Clone)]
pub enum RedisPool {
    Single(deadpool_redis::Pool),
    Cluster(RedisConn),
}

/// A connection from `RedisPool::get`.
pub enum PooledConn {
    Single(deadpool_redis::Connection),
    Cluster(RedisConn),
}

impl RedisPool {
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        if config.redis_cluster_nodes.is_empty() {
            return Ok(RedisPool::Single(
                deadpool_redis::Config::from_url(&config.redis_url)
                    .builder()?
                    .max_size(config.redis_pool_size)
                    .runtime(deadpool_redis::Runtime::Tokio1)
                    .wait_timeout(Some(Duration::from_secs(2)))
                    .create_timeout(Some(Duration::from_secs(2)))
                    .recycle_timeout(Some(Duration::from_secs(1)))
                    .build()?,
            ));
        }
        Ok(RedisPool::Cluster(RedisConn::connect(config).await?))
    }

    pub async fn get(&self) -> Result<PooledConn, deadpool_redis::PoolError> {
        match self {
            RedisPool::Single(p) => p.get().await.map(PooledConn::Single),
            RedisPool::Cluster(c) => Ok(PooledConn::Cluster(c.clone())),
        }
    }

    /// For the pool gauges: a cluster connection counts as one, always available.
    pub fn status(&self) -> deadpool_redis::Status {
        match self {
            RedisPool::Single(p) => p.status(),
            RedisPool::Cluster(_) => deadpool_redis::Status { max_size: 1, size: 1, available: 1, waiting: 0 },
        }
    }
}

impl ConnectionLike for PooledConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            PooledConn::Single(c) => c.req_packed_command(cmd),
            PooledConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            PooledConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            PooledConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            PooledConn::Single(c) => c.get_db(),
            PooledConn::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis Cluster slot of a key (CLUSTER KEYSLOT): CRC16 (XMODEM) of the
/// key's hash tag (the part between the first `{` and the next `}`, if not
/// empty), else of the whole key, mod 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter().position(|&b| b == b'}').filter(|&close| close > 0).map(|close| &rest[..close])
    });
    crc16_xmodem(tagged.unwrap_or(key)) % 16384
}

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_match_redis() {
        // Values from Redis's own CLUSTER KEYSLOT and its cluster spec.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"{user1000}.followers"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
    }

    #[test]
    fn only_refusals_are_sent_again() {
        let moved =
            RedisError::from((ErrorKind::Server(ServerErrorKind::Moved), "MOVED", "3999 127.0.0.1:7001".into()));
        assert!(refused_unrun(&moved));
        let timeout = RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"));
        assert!(!refused_unrun(&timeout));
        let dropped = RedisError::from(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "gone"));
        assert!(!refused_unrun(&dropped));
        let refused = RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "no"));
        assert!(refused_unrun(&refused));
    }
}
