//! Proof by simulation: a seeded workload over several real gateway
//! processes, a nemesis injecting faults on the same seeded schedule (kills,
//! Redis and PostgreSQL restarts, network faults through proxies), a history
//! of every request and answer, and a checker of every invariant afterwards.
//!
//! `make soak` runs it (SOAK_SECONDS per seed, SOAK_SEEDS, SIM_SEED to
//! replay one); `make sim-ci` runs the short fixed-seed schedule of CI. See
//! the README's "Simulation" section for the knobs and what is checked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../faults/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "../support/local_pg.rs"]
mod local_pg;

mod checker;
mod cluster;
mod history;
mod nemesis;
mod proxy;
mod workload;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;

use checker::{ProbeResult, Violation};
use cluster::Cluster;
use history::{Answer, Event, History, Kind, PROBE};
use workload::{CodeKind, Request, SimCode, World, ORDER_PREFIX};

/// What a run is asked to do, from the environment.
#[derive(Debug, Clone)]
struct Settings {
    seeds: Vec<u64>,
    seconds: u64,
    gateways: usize,
    clients: usize,
    skip_rules: Vec<String>,
    skip_faults: Vec<String>,
    pause_bound_ms: i64,
}

fn list(var: &str) -> Vec<String> {
    std::env::var(var).unwrap_or_default().split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

fn number<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

impl Settings {
    fn from_env() -> Settings {
        let base = std::env::var("SIM_SEED").ok().and_then(|s| s.trim().parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() % 1_000_000
        });
        let seeds_var = std::env::var("SOAK_SEEDS").unwrap_or_default();
        let seeds = if seeds_var.contains(',') {
            list("SOAK_SEEDS").iter().map(|s| s.parse().expect("SOAK_SEEDS: numbers")).collect()
        } else {
            let n: u64 = seeds_var.trim().parse().unwrap_or(1);
            (base..base + n.max(1)).collect()
        };
        let settings = Settings {
            seeds,
            seconds: number("SOAK_SECONDS", 60),
            gateways: number("SIM_GATEWAYS", 3),
            clients: number("SIM_CLIENTS", 12),
            skip_rules: list("SIM_SKIP_RULES"),
            skip_faults: list("SIM_SKIP_FAULTS"),
            pause_bound_ms: number("SIM_PAUSE_BOUND_MS", 0),
        };
        for r in &settings.skip_rules {
            assert!(
                checker::RULES.contains(&r.as_str()),
                "SIM_SKIP_RULES: unknown rule {r} (rules: {:?})",
                checker::RULES
            );
        }
        for f in &settings.skip_faults {
            assert!(
                nemesis::KINDS.contains(&f.as_str()),
                "SIM_SKIP_FAULTS: unknown fault {f} (kinds: {:?})",
                nemesis::KINDS
            );
        }
        settings
    }

    fn replay(&self, seed: u64) -> String {
        let mut line = format!("SIM_SEED={seed} SOAK_SEEDS=1 SOAK_SECONDS={}", self.seconds);
        if self.gateways != 3 {
            line += &format!(" SIM_GATEWAYS={}", self.gateways);
        }
        if self.clients != 12 {
            line += &format!(" SIM_CLIENTS={}", self.clients);
        }
        if !self.skip_rules.is_empty() {
            line += &format!(" SIM_SKIP_RULES={}", self.skip_rules.join(","));
        }
        if !self.skip_faults.is_empty() {
            line += &format!(" SIM_SKIP_FAULTS={}", self.skip_faults.join(","));
        }
        if self.pause_bound_ms != 0 {
            line += &format!(" SIM_PAUSE_BOUND_MS={}", self.pause_bound_ms);
        }
        line + " make soak"
    }
}

struct SeedReport {
    seed: u64,
    tally: BTreeMap<&'static str, [usize; 5]>,
    faults: BTreeMap<&'static str, usize>,
    fault_log: Vec<history::FaultRecord>,
    violations: Vec<Violation>,
    events: Vec<Event>,
    unacknowledged: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "minutes long: run by `make soak` / `make sim-ci` (SOAK_SECONDS, SOAK_SEEDS, SIM_SEED)"]
async fn soak() {
    let settings = Settings::from_env();
    println!(
        "== simulation: seeds {:?}, {} s each, {} gateways, {} clients; skipped rules {:?}, skipped faults {:?}",
        settings.seeds,
        settings.seconds,
        settings.gateways,
        settings.clients,
        settings.skip_rules,
        settings.skip_faults
    );
    let mut reports = Vec::new();
    for &seed in &settings.seeds {
        reports.push(run_seed(seed, &settings).await);
    }
    print_table(&reports, &settings);
    let total: usize = reports.iter().map(|r| r.violations.len()).sum();
    if total > 0 {
        for r in reports.iter().filter(|r| !r.violations.is_empty()) {
            print_violations(r, &settings);
        }
        panic!("{total} invariant violations (details and replay commands above)");
    }
}

async fn run_seed(seed: u64, settings: &Settings) -> SeedReport {
    let started = Instant::now();
    let cluster = Arc::new(Cluster::start(settings.gateways).await);
    let mut rng = StdRng::seed_from_u64(seed);
    let codes = workload::plan_codes(&mut rng);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(4)).build().unwrap();
    let admin = cluster.admin_token();
    for c in &codes {
        let res = http
            .post(format!("{}/admin/codes", cluster.addresses[0]))
            .bearer_auth(&admin)
            .json(&workload::create_body(c))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 201, "creating {}: {}", c.name, res.text().await.unwrap_or_default());
    }
    let run_tag = format!("s{seed}");
    let users = cluster.create_users(&run_tag, 400).await;
    let history = Arc::new(History::default());
    let world = Arc::new(World {
        http,
        gateways: cluster.addresses.clone(),
        limits: Mutex::new(codes.iter().map(|c| c.limit).collect()),
        codes: codes.clone(),
        users,
        admin,
        checkout: cluster.checkout_token(),
        history: history.clone(),
        next_op: AtomicU64::new(0),
        run_tag: run_tag.clone(),
    });
    println!(
        "[seed {seed}] set up in {:.1} s: codes {}",
        started.elapsed().as_secs_f64(),
        codes.iter().map(|c| format!("{}(limit {})", c.name, c.limit)).collect::<Vec<_>>().join(" ")
    );

    let run_for = Duration::from_secs(settings.seconds);
    let deadline = Instant::now() + run_for;
    let done = Arc::new(AtomicBool::new(false));
    let progress = tokio::spawn(progress_line(seed, history.clone(), done.clone(), run_for));
    let clients = workload::spawn_clients(&world, settings.clients, seed, deadline);
    let operator = tokio::spawn(workload::operator(world.clone(), seed, deadline, run_for));
    let nemesis =
        tokio::spawn(nemesis::run(cluster.clone(), history.clone(), seed, deadline, settings.skip_faults.clone()));
    for c in clients {
        c.await.unwrap();
    }
    operator.await.unwrap();
    nemesis.await.unwrap();
    done.store(true, Ordering::Relaxed);
    let _ = progress.await;

    // Faults stop; every paused code resumes; one reconciler pass once every
    // pending claim is past its grace period; then the probes.
    nemesis::heal_all(&cluster);
    let db = cluster.db().await;
    let mut op_rng = StdRng::seed_from_u64(seed ^ 0xC0DE);
    for c in &codes {
        let status: String = db.query_one("SELECT status FROM codes WHERE code = $1", &[&c.name]).await.unwrap().get(0);
        if status == "paused" {
            workload::admin(
                &world,
                &mut op_rng,
                Kind::Resume,
                &format!("/admin/codes/{}/resume", c.name),
                &c.name,
                None,
            )
            .await;
        }
    }
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let c2 = cluster.clone();
    let reconciled = tokio::task::spawn_blocking(move || c2.reconcile()).await.unwrap();
    println!("[seed {seed}] reconciler pass: {}", reconciled.trim());
    // The gateways' code caches and sold-out hints expire (500 ms each).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let probes = probe_all(&cluster, &world, &db, seed).await;

    let snap = checker::snapshot(&db).await;
    let events = history.events();
    let input = checker::Input {
        codes: &codes,
        events: &events,
        snap: &snap,
        probes: &probes,
        pause_bound: chrono::Duration::milliseconds(settings.pause_bound_ms),
    };
    let violations = checker::check_all(&input, &settings.skip_rules);
    let unacknowledged = checker::unacknowledged(&input);
    let fault_log = history.faults();
    let mut faults = BTreeMap::new();
    for f in &fault_log {
        *faults.entry(f.kind).or_default() += 1;
    }
    println!(
        "[seed {seed}] done in {:.0} s: {} requests, {} faults, {} violations",
        started.elapsed().as_secs_f64(),
        events.len(),
        fault_log.len(),
        violations.len()
    );
    SeedReport { seed, tally: history.tally(), faults, fault_log, violations, events, unacknowledged }
}

async fn progress_line(seed: u64, history: Arc<History>, done: Arc<AtomicBool>, run_for: Duration) {
    let start = Instant::now();
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if done.load(Ordering::Relaxed) {
            break;
        }
        let tally = history.tally();
        let sum = |i: usize| tally.values().map(|r| r[i]).sum::<usize>();
        let faults = history.faults();
        println!(
            "[seed {seed}] {:>3}/{} s  requests {}  2xx {}  503/429 {}  no answer {}  faults {}{}",
            start.elapsed().as_secs(),
            run_for.as_secs(),
            sum(0),
            sum(1),
            sum(2),
            sum(3),
            faults.len(),
            faults.last().map(|f| format!(" (last: {} {})", f.kind, f.target)).unwrap_or_default()
        );
    }
}

/// No slot lost: for every code still open, fresh users redeem until it
/// answers sold out twice (the second after the sold-out caches expired).
async fn probe_all(cluster: &Cluster, world: &World, db: &tokio_postgres::Client, seed: u64) -> Vec<ProbeResult> {
    let probes = world.codes.iter().map(|c| probe_code(cluster, world, db, seed, c));
    futures::future::join_all(probes).await.into_iter().flatten().collect()
}

async fn probe_code(
    cluster: &Cluster,
    world: &World,
    db: &tokio_postgres::Client,
    seed: u64,
    c: &SimCode,
) -> Option<ProbeResult> {
    let row =
        db.query_one("SELECT status, redemption_limit::bigint FROM codes WHERE code = $1", &[&c.name]).await.unwrap();
    let (status, limit): (String, i64) = (row.get(0), row.get(1));
    if status != "active" {
        return None;
    }
    let live_before = live_uses(db, c).await;
    let expected = (limit - live_before).max(0) as usize;
    let users = cluster.create_users(&format!("p{seed}_{}", c.name.to_lowercase()), expected + 4).await;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9F0B);
    let (mut got, mut sold_out_seen, mut seqs) = (0i64, false, Vec::new());
    for (i, u) in users.iter().enumerate() {
        let r = probe_request(c, u, &world.checkout, &format!("{ORDER_PREFIX}-{}-probe-{}-{i}", world.run_tag, c.name));
        let before = world.history.len();
        let answer = world.until_final(PROBE, &mut rng, &r).await.0;
        // Other codes' probes run at once: keep this code's events only.
        seqs.extend(world.history.since(before).iter().filter(|e| e.code.as_deref() == Some(&c.name)).map(|e| e.seq));
        match answer {
            Answer::Ok => got += 1,
            Answer::SoldOut if sold_out_seen => break,
            Answer::SoldOut => {
                sold_out_seen = true;
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
            _ => {}
        }
    }
    let live_after = live_uses(db, c).await;
    Some(ProbeResult { code: c.name.clone(), limit, live_before, got, live_after, events: seqs })
}

fn probe_request(c: &SimCode, u: &cluster::SimUser, checkout: &str, order: &str) -> Request {
    let (kind, path, body, token) = match c.kind {
        CodeKind::Credit => (Kind::CreditUse, "/codes/use", json!({ "code": c.name }), Some(u.token.clone())),
        CodeKind::Voucher => (
            Kind::VoucherLogin,
            "/campaigns/login",
            json!({"username": u.name, "password": cluster::PASSWORD, "campaign": c.name}),
            None,
        ),
        CodeKind::Coupon => {
            let mut rng = StdRng::seed_from_u64(u.id as u64);
            (
                Kind::CouponRedeem,
                "/coupons/redeem",
                workload::redeem_body(&workload::order_body(&c.name, order, &mut rng), u.id),
                Some(checkout.to_string()),
            )
        }
    };
    Request {
        kind,
        method: reqwest::Method::POST,
        path: path.into(),
        token,
        body: Some(body),
        code: Some(c.name.clone()),
        user: Some(u.id),
        order: (c.kind == CodeKind::Coupon).then(|| order.to_string()),
        id: None,
    }
}

async fn live_uses(db: &tokio_postgres::Client, c: &SimCode) -> i64 {
    let sql = match c.kind {
        CodeKind::Credit => "SELECT count(*) FROM redemptions r JOIN codes c ON c.id = r.code_id WHERE c.code = $1",
        CodeKind::Voucher => "SELECT count(*) FROM vouchers v JOIN codes c ON c.id = v.code_id WHERE c.code = $1",
        CodeKind::Coupon => {
            "SELECT count(*) FROM coupon_redemptions r JOIN codes c ON c.id = r.code_id
             WHERE c.code = $1 AND r.status = 'applied'"
        }
    };
    db.query_one(sql, &[&c.name]).await.unwrap().get(0)
}

fn print_table(reports: &[SeedReport], settings: &Settings) {
    println!(
        "\n== simulation report: {} seed(s) x {} s, {} gateways, {} clients",
        reports.len(),
        settings.seconds,
        settings.gateways,
        settings.clients
    );
    println!("\n| seed | requests | 2xx | 503/429 | no answer | faults | violations | unacknowledged commits |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in reports {
        let sum = |i: usize| r.tally.values().map(|row| row[i]).sum::<usize>();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.seed,
            sum(0),
            sum(1),
            sum(2),
            sum(3),
            r.faults.values().sum::<usize>(),
            r.violations.len(),
            r.unacknowledged
        );
    }
    let mut ops: BTreeMap<&str, [usize; 5]> = BTreeMap::new();
    for r in reports {
        for (k, row) in &r.tally {
            let t = ops.entry(*k).or_default();
            for (sum, n) in t.iter_mut().zip(row) {
                *sum += n;
            }
        }
    }
    println!("\n| operation (attempts) | sent | 2xx | 503/429 | no answer | other answers |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (k, t) in &ops {
        println!("| {k} | {} | {} | {} | {} | {} |", t[0], t[1], t[2], t[3], t[4]);
    }
    println!("\n| fault | injected |");
    println!("|---|---:|");
    for kind in nemesis::KINDS {
        let n: usize = reports.iter().map(|r| r.faults.get(kind).copied().unwrap_or(0)).sum();
        let note = if settings.skip_faults.iter().any(|s| s == kind) { " (skipped)" } else { "" };
        println!("| {kind}{note} | {n} |");
    }
    println!("\n| invariant | violations |");
    println!("|---|---:|");
    for rule in checker::RULES {
        let n: usize = reports.iter().map(|r| r.violations.iter().filter(|v| v.rule == *rule).count()).sum();
        if settings.skip_rules.iter().any(|s| s == rule) {
            println!("| {rule} | skipped (SIM_SKIP_RULES) |");
        } else {
            println!("| {rule} | {n} |");
        }
    }
    println!();
}

fn print_violations(r: &SeedReport, settings: &Settings) {
    println!("== seed {}: {} violations", r.seed, r.violations.len());
    let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
    for v in &r.violations {
        let n = shown.entry(v.rule).or_default();
        *n += 1;
        if *n > 5 {
            continue;
        }
        println!("VIOLATION {} [{}] {}", v.rule, v.code, v.detail);
        for seq in v.events.iter().take(10) {
            if let Some(e) = r.events.get(*seq) {
                println!("    {}", e.describe());
            }
        }
        if v.events.len() > 10 {
            println!("    ... {} more events", v.events.len() - 10);
        }
        if let Some(first) = v.events.first().and_then(|s| r.events.get(*s)) {
            for f in r
                .fault_log
                .iter()
                .filter(|f| f.end >= first.start - chrono::Duration::seconds(3) && f.start <= first.end)
            {
                println!(
                    "    fault nearby: {} {} [{} .. {}]",
                    f.kind,
                    f.target,
                    f.start.format("%H:%M:%S%.3f"),
                    f.end.format("%H:%M:%S%.3f")
                );
            }
        }
    }
    for (rule, n) in shown.iter().filter(|(_, n)| **n > 5) {
        println!("... {} more {rule} violations", n - 5);
    }
    println!("replay: {}\n", settings.replay(r.seed));
}
