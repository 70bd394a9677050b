//! The nemesis: faults on a seeded schedule, one at a time, each healed
//! before the next. Every kind can be switched off with SIM_SKIP_FAULTS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::Cluster;
use crate::history::{FaultRecord, History};
use crate::proxy::{Mode, Proxy};
use crate::workload::{ORDER_PREFIX, VOUCHER_TYPE};

/// Every fault kind, by the name SIM_SKIP_FAULTS and the table use.
pub const KINDS: &[&str] = &[
    "gateway_kill",
    "gateway_term",
    "redis_flushall",
    "redis_restart_empty",
    "redis_restart_aof",
    "pg_restart",
    "net_latency",
    "net_drop",
    "net_half_open",
    "net_reset_after_commit",
];

/// What the PostgreSQL commits of each kind carry in their bound parameters:
/// the ledger kind of a credit, the voucher type, the order number.
const PG_COMMIT_MARKERS: &[&[u8]] = &[b"code_credit", VOUCHER_TYPE.as_bytes(), ORDER_PREFIX.as_bytes()];
/// Every gate script runs by EVALSHA.
const REDIS_MARKERS: &[&[u8]] = &[b"EVALSHA"];

pub async fn run(cluster: Arc<Cluster>, history: Arc<History>, seed: u64, deadline: Instant, skip: Vec<String>) {
    let kinds: Vec<&'static str> = KINDS.iter().copied().filter(|k| !skip.iter().any(|s| s == k)).collect();
    if kinds.is_empty() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x4E3E_5151);
    // Let the workload get going first.
    tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..2500))).await;
    while Instant::now() + Duration::from_secs(3) < deadline {
        let kind = kinds[rng.gen_range(0..kinds.len())];
        let start = Utc::now();
        let target = inject(&cluster, &mut rng, kind).await;
        history.fault(FaultRecord { kind, target, start, end: Utc::now() });
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2500))).await;
    }
}

fn proxy_of<'a>(cluster: &'a Cluster, rng: &mut StdRng) -> (&'a Proxy, String) {
    let i = rng.gen_range(0..cluster.addresses.len());
    if rng.gen_bool(0.5) {
        (&cluster.redis_proxies[i], format!("gw{i}->redis"))
    } else {
        (&cluster.pg_proxies[i], format!("gw{i}->pg"))
    }
}

/// Injects one fault and heals it; returns what it hit.
async fn inject(cluster: &Arc<Cluster>, rng: &mut StdRng, kind: &'static str) -> String {
    let held = Duration::from_millis(rng.gen_range(300..2500));
    match kind {
        "gateway_kill" | "gateway_term" => {
            let i = rng.gen_range(0..cluster.gateways.len());
            let gw = cluster.gateways[i].clone();
            if kind == "gateway_term" {
                let pid = gw.lock().unwrap().pid();
                let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
                // Graceful: in-flight requests finish; whatever is left is SIGKILLed by the restart.
                tokio::time::sleep(held.max(Duration::from_millis(1500))).await;
            } else {
                gw.lock().unwrap().kill();
                tokio::time::sleep(held).await;
            }
            tokio::task::spawn_blocking(move || gw.lock().unwrap().restart()).await.unwrap();
            format!("gw{i}")
        }
        "redis_flushall" => {
            cluster.redis.flushall().await;
            "redis".into()
        }
        "redis_restart_empty" => {
            let c = cluster.clone();
            tokio::task::spawn_blocking(move || c.redis.restart_empty(held.min(Duration::from_millis(800))))
                .await
                .unwrap();
            "redis".into()
        }
        "redis_restart_aof" => {
            let c = cluster.clone();
            tokio::task::spawn_blocking(move || c.redis.restart_from_aof(held.min(Duration::from_millis(800))))
                .await
                .unwrap();
            "redis".into()
        }
        "pg_restart" => {
            let pg = cluster.pg.clone();
            tokio::task::spawn_blocking(move || {
                pg.stop_server();
                std::thread::sleep(held);
                pg.start_server();
            })
            .await
            .unwrap();
            "postgres".into()
        }
        "net_latency" => {
            let (p, name) = proxy_of(cluster, rng);
            let ms = rng.gen_range(20..600);
            p.set_mode(Mode::Latency(Duration::from_millis(ms)));
            tokio::time::sleep(held).await;
            p.heal();
            format!("{name} +{ms}ms")
        }
        "net_drop" => {
            let (p, name) = proxy_of(cluster, rng);
            p.drop_connections();
            name
        }
        "net_half_open" => {
            let (p, name) = proxy_of(cluster, rng);
            p.set_mode(Mode::HalfOpen);
            tokio::time::sleep(held).await;
            // Half the time the link comes back (held bytes flow late), half
            // the time the connections die (as a TCP timeout would end them).
            if rng.gen_bool(0.5) {
                p.drop_connections();
            }
            p.heal();
            name
        }
        "net_reset_after_commit" => {
            let i = rng.gen_range(0..cluster.addresses.len());
            let (p, name, markers) = if rng.gen_bool(0.7) {
                (&cluster.pg_proxies[i], format!("gw{i}->pg"), PG_COMMIT_MARKERS)
            } else {
                (&cluster.redis_proxies[i], format!("gw{i}->redis"), REDIS_MARKERS)
            };
            let count = rng.gen_range(1..=5);
            let before = p.cuts_done();
            p.cut_after(markers, count);
            tokio::time::sleep(held.max(Duration::from_secs(1))).await;
            p.heal();
            format!("{name} cut {} of {count}", p.cuts_done() - before)
        }
        other => unreachable!("fault kind {other}"),
    }
}

/// Heals every link (used before the checks).
pub fn heal_all(cluster: &Cluster) {
    for p in cluster.redis_proxies.iter().chain(&cluster.pg_proxies) {
        p.heal();
    }
}
