//! The scenarios: burst, flood, balance, mixed, and the HTTP ceiling driven
//! exactly like the flood. Each prepares its fixtures first, then measures.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::client::{Connection, Request};
use super::driver::{drive, Generator, Work};
use super::setup::{self, Users};
use super::stats::Summary;
use super::verify::{self, Invariants};
use crate::state::AppState;

/// Where and how hard to push.
pub struct Bench {
    /// For fixtures and verification (same database, Redis prefix and JWT secret as the gateway).
    pub state: Arc<AppState>,
    pub gateway: SocketAddr,
    pub connections: usize,
    /// The gateway's process, for its peak memory (VmHWM).
    pub gateway_pid: Option<u32>,
}

/// One measured scenario.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: String,
    pub summary: Summary,
    pub invariants: Option<Invariants>,
    /// The gateway's VmHWM (KiB) right after the scenario.
    pub peak_kib: Option<u64>,
}

impl Outcome {
    fn new(bench: &Bench, name: &str, summary: Summary, invariants: Option<Invariants>) -> Self {
        let peak_kib = bench.gateway_pid.and_then(setup::peak_memory_kib);
        Outcome { name: name.to_string(), summary, invariants, peak_kib }
    }

    /// False when a checked invariant broke.
    pub fn invariants_hold(&self) -> bool {
        self.invariants.as_ref().is_none_or(Invariants::hold)
    }
}

/// A code with limit `limit`; every user fires once, all released together.
pub async fn burst(bench: &Bench, users: &Users, limit: i64, amount: i64) -> anyhow::Result<Outcome> {
    let code = setup::new_code(&bench.state, "LG_BURST", amount, limit).await?;
    let requests: Vec<Request> = users.auth.iter().map(|a| setup::use_code(&code.code, a)).collect();
    let summary = drive(bench.gateway, bench.connections, Work::Once(Arc::new(requests)), &[410]).await?;
    let invariants = verify::check(&bench.state.pg, &code, summary.successes, users.len()).await?;
    Ok(Outcome::new(bench, "burst", summary, Some(invariants)))
}

/// A sold-out code hammered by distinct users (round-robin) for `duration`.
pub async fn flood(bench: &Bench, users: &Users, duration: Duration) -> anyhow::Result<Outcome> {
    let code = sold_out_code(&bench.state, bench.gateway).await?;
    let work = Work::for_duration(duration, use_code_generator(&code, users));
    let summary = drive(bench.gateway, bench.connections, work, &[410]).await?;
    Ok(Outcome::new(bench, "flood", summary, None))
}

/// `POST /wallet/balance {}` by random users for `duration`.
pub async fn balance(bench: &Bench, users: &Users, duration: Duration) -> anyhow::Result<Outcome> {
    let work = Work::for_duration(duration, balance_generator(users));
    let summary = drive(bench.gateway, bench.connections, work, &[]).await?;
    Ok(Outcome::new(bench, "balance", summary, None))
}

/// A burst (half the connections) while the other half keeps up everyday
/// traffic: balance lookups and attempts on an earlier, sold-out code.
pub async fn mixed(bench: &Bench, users: &Users, limit: i64, amount: i64) -> anyhow::Result<Vec<Outcome>> {
    let sold_out = sold_out_code(&bench.state, bench.gateway).await?;
    let code = setup::new_code(&bench.state, "LG_MIXED", amount, limit).await?;
    let requests: Vec<Request> = users.auth.iter().map(|a| setup::use_code(&code.code, a)).collect();
    let background_work = Work::for_duration(Duration::from_secs(120), blend_generator(&sold_out, users));
    let Work::Until { stop, .. } = &background_work else { anyhow::bail!("background work is open-ended") };
    let stop = stop.clone();
    let half = (bench.connections / 2).max(1);
    let (gateway, burst_work) = (bench.gateway, Work::Once(Arc::new(requests)));
    let background = tokio::spawn(async move { drive(gateway, half, background_work, &[410]).await });
    let burst = drive(bench.gateway, half, burst_work, &[410]).await;
    stop.store(true, Ordering::Relaxed);
    let (burst, background) = (burst?, background.await??);
    let invariants = verify::check(&bench.state.pg, &code, burst.successes, users.len()).await?;
    Ok(vec![
        Outcome::new(bench, "mixed: burst part", burst, Some(invariants)),
        Outcome::new(bench, "mixed: background (balance + sold-out)", background, None),
    ])
}

/// The trivial server (`ceiling-server`) driven exactly like the flood: same
/// requests, same connections, same duration.
pub async fn http_ceiling(
    ceiling: SocketAddr,
    connections: usize,
    users: &Users,
    duration: Duration,
) -> anyhow::Result<Summary> {
    let work = Work::for_duration(duration, use_code_generator("CEILING", users));
    drive(ceiling, connections, work, &[410]).await
}

/// A code with limit 1 whose one slot is already taken (by a user of its
/// own, not one of the load's), so it answers 410 to everyone.
pub async fn sold_out_code(state: &AppState, gateway: SocketAddr) -> anyhow::Result<String> {
    let code = setup::new_code(state, "LG_SOLD", 1, 1).await?;
    let winner = setup::create_users(state, 1).await?;
    let auth = winner.auth.first().ok_or_else(|| anyhow::anyhow!("no user"))?;
    let mut conn = Connection::open(gateway).await?;
    let status = conn.send(&setup::use_code(&code.code, auth)).await;
    anyhow::ensure!(status == 200, "priming the sold-out code answered {status}");
    Ok(code.code)
}

fn use_code_generator(code: &str, users: &Users) -> Generator {
    let body = setup::use_code_body(code);
    let auth = users.auth.clone();
    Arc::new(move |i| Request {
        path: "/codes/use",
        auth: Some(auth[(i % auth.len() as u64) as usize].clone()),
        body: body.clone(),
    })
}

fn balance_generator(users: &Users) -> Generator {
    let auth = users.auth.clone();
    Arc::new(move |i| setup::balance(&auth[(mix(i) % auth.len() as u64) as usize]))
}

/// Half balance lookups, half attempts on a sold-out code, by random users.
fn blend_generator(sold_out: &str, users: &Users) -> Generator {
    let body = setup::use_code_body(sold_out);
    let auth = users.auth.clone();
    Arc::new(move |i| {
        let user = &auth[(mix(i) % auth.len() as u64) as usize];
        if i % 2 == 0 {
            setup::balance(user)
        } else {
            Request { path: "/codes/use", auth: Some(user.clone()), body: body.clone() }
        }
    })
}

/// splitmix64: a cheap, well-spread pseudo-random index from a counter.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
