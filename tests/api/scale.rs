//! Flat cost at scale: a reconciler pass works on the codes that changed (the
//! index of touched codes, Postgres's change feed) plus a fixed slice of the
//! slow sweep, never on every active code; drift nothing marked is still found
//! within a sweep round; and a gateway serves before its first pass is done.

use std::sync::atomic::Ordering;
use std::time::Duration;

use redeem_gateway::reconciler::{self, RunStats};
use redeem_gateway::startup::Application;
use serde_json::json;

use crate::helpers::{spawn_app_with, wait_for_reconciler_runs, TestApp};

/// Bulk-creates `count` single-use codes named PREFIX-...; returns their names.
async fn bulk_codes(app: &TestApp, prefix: &str, count: usize) -> Vec<String> {
    let res = app
        .client
        .post(format!("{}/admin/codes/bulk", app.address))
        .bearer_auth(app.admin_token())
        .json(&json!({"prefix": prefix, "count": count, "amount": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let csv = res.text().await.unwrap();
    let names: Vec<String> = csv
        .lines()
        .filter_map(|line| line.split(',').next())
        .filter(|c| c.starts_with(prefix))
        .map(str::to_string)
        .collect();
    assert_eq!(names.len(), count, "{}", &csv[..csv.len().min(300)]);
    names
}

async fn pass(app: &TestApp) -> RunStats {
    let stats = reconciler::run_once(&app.state).await.unwrap();
    assert_eq!(stats.errors, 0, "{stats:?}");
    stats
}

/// Runs passes until the slow sweep completes a round; returns them all.
async fn sweep_round(app: &TestApp, max_passes: usize) -> Vec<RunStats> {
    let mut passes = vec![];
    for _ in 0..max_passes {
        let stats = pass(app).await;
        passes.push(stats);
        if stats.sweep_completed {
            return passes;
        }
    }
    panic!("no sweep round completed within {max_passes} passes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_over_many_idle_codes_works_only_on_the_ones_that_changed() {
    const SLICE: usize = 500;
    let app = spawn_app_with(&[("RECONCILE_SWEEP_CODES", "500")]).await;
    let codes = bulk_codes(&app, "MANY", 5_000).await;
    // A whole round over 5,000 idle codes: each pass reads one slice, and
    // works on nothing (a bulk code nobody used needs no counter write).
    let round = sweep_round(&app, 5_000 / SLICE + 2).await;
    for stats in &round {
        assert!(stats.codes_checked <= SLICE, "{stats:?}");
        assert_eq!((stats.codes_worked, stats.counters_synced, stats.codes_touched), (0, 0, 0), "{stats:?}");
    }
    assert!(round.len() >= 5_000 / SLICE, "a round visits every code: {round:?}");

    let users = app.create_users(3).await;
    for ((_, token), code) in users.iter().zip(&codes[1_000..]) {
        assert_eq!(app.use_code(token, code).await.status, 200);
    }
    let stats = pass(&app).await;
    assert_eq!(stats.codes_touched, 3, "the three used codes are in the index: {stats:?}");
    assert_eq!(stats.codes_worked, 3, "and only they are worked on: {stats:?}");
    assert_eq!(stats.counters_synced, 3, "{stats:?}");
    assert!(stats.codes_checked <= SLICE + 3, "{stats:?}");
    let used: Vec<String> = codes[1_000..1_003].to_vec();
    let synced =
        app.query_i64("SELECT count(*) FROM codes WHERE synced_remaining = 0 AND code = ANY($1)", &[&used]).await;
    assert_eq!(synced, 3);

    // Settled codes leave the index once their marks are older than any claim
    // they could cover; then a pass has nothing of them left to do.
    tokio::time::sleep(Duration::from_millis(16_200)).await;
    let stats = pass(&app).await;
    assert_eq!((stats.codes_touched, stats.codes_settled, stats.codes_worked), (3, 3, 0), "{stats:?}");
    let stats = pass(&app).await;
    assert_eq!((stats.codes_touched, stats.codes_worked), (0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_on_codes_nothing_marked_is_found_by_the_slow_sweep_within_a_round() {
    const SLICE: usize = 200;
    let app = spawn_app_with(&[("RECONCILE_SWEEP_CODES", "200")]).await;
    let codes = bulk_codes(&app, "DRIFT", 2_000).await;
    sweep_round(&app, 2_000 / SLICE + 2).await; // start from a known cursor: 0
    let (limit_drift, lost, paused_drift) = (&codes[1_500], &codes[700], &codes[1_999]);
    // Behind the gateways' backs (no mark, no Postgres change): a limit lost,
    // a code's whole state lost, a status the gate holds wrongly.
    let mut redis = app.redis().await;
    redis::cmd("HSET")
        .arg(app.key(limit_drift, "meta"))
        .arg("limit")
        .arg(0)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    redis::cmd("DEL").arg(app.key(lost, "meta")).query_async::<()>(&mut redis).await.unwrap();
    redis::cmd("HSET")
        .arg(app.key(paused_drift, "meta"))
        .arg("status")
        .arg("paused")
        .query_async::<()>(&mut redis)
        .await
        .unwrap();

    // The documented bound: every active code within ceil(active / RECONCILE_SWEEP_CODES) passes.
    let bound = 2_000_usize.div_ceil(SLICE);
    let mut found = RunStats::default();
    for _ in 0..bound {
        let stats = pass(&app).await;
        assert!(stats.codes_checked <= SLICE + stats.codes_touched, "{stats:?}");
        found.limits_repaired += stats.limits_repaired;
        found.codes_rebuilt += stats.codes_rebuilt;
        found.controls_repaired += stats.controls_repaired;
    }
    assert_eq!((found.limits_repaired, found.codes_rebuilt, found.controls_repaired), (1, 1, 1), "{found:?}");
    for code in [limit_drift, lost, paused_drift] {
        let gate = app.state.gate.snapshot(code).await.unwrap().expect("state");
        assert_eq!((gate.limit, gate.remaining(), gate.status.as_deref()), (1, 1, Some("active")), "{code}");
    }
    let (_, token) = app.create_users(1).await.remove(0);
    assert_eq!(app.use_code(&token, paused_drift).await.status, 200);
}

/// A PATCH that committed in Postgres but whose gate write was lost (and its
/// touch mark with it) is found through Postgres's change feed on the next
/// pass, though the slow sweep would take hundreds of passes to reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_change_the_gate_missed_is_found_through_the_change_feed() {
    let app = spawn_app_with(&[("RECONCILE_SWEEP_CODES", "1")]).await;
    bulk_codes(&app, "FILLER", 300).await;
    app.create_code("FEED", 10, 10).await;
    let admin = app.admin_token();
    let res = app.request(reqwest::Method::PATCH, "/admin/codes/FEED", Some(json!({"limit": 20})), Some(&admin)).await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    // As if Redis had lost that write, and the mark in the touched index too.
    let mut redis = app.redis().await;
    redis::cmd("HSET")
        .arg(app.key("FEED", "meta"))
        .arg("limit")
        .arg(10)
        .arg("limit_version")
        .arg(0)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    redis::cmd("DEL").arg(format!("{}:touched", app.prefix)).query_async::<()>(&mut redis).await.unwrap();

    let stats = pass(&app).await;
    assert_eq!((stats.codes_changed, stats.limits_repaired), (1, 1), "{stats:?}");
    assert!(stats.codes_checked <= 2, "the feed's code and the slice's one: {stats:?}");
    assert_eq!(app.state.gate.snapshot("FEED").await.unwrap().unwrap().limit, 20);
}

/// The first reconciler run of a starting gateway is held up (a row it must
/// delete is locked): the gateway still answers /healthz, and serves a code
/// whose gate state Redis lost, through the on-demand rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_serves_before_its_first_reconciler_run_has_finished() {
    let app = spawn_app_with(&[]).await;
    let code = app.create_code("EARLY", 10, 5).await;
    let users = app.create_users(3).await;
    assert_eq!(app.use_code(&users[0].1, "EARLY").await.status, 200);
    app.wipe_redis().await; // as FLUSHALL would

    // An expired idempotency key, locked: the pass's purge waits on it.
    let blocker = app.psql().await;
    blocker
        .batch_execute(
            "INSERT INTO idempotency_keys (user_id, key, fingerprint, created_at)
                 VALUES (1, 'old', '\\x00', now() - interval '2 days')",
        )
        .await
        .unwrap();
    blocker.batch_execute("BEGIN; SELECT 1 FROM idempotency_keys WHERE key = 'old' FOR UPDATE").await.unwrap();

    let overrides = [("PG_STATEMENT_TIMEOUT_MS", "60000"), ("CLAIM_GRACE_SECONDS", "120")];
    let second = tokio::time::timeout(Duration::from_secs(30), Application::build(app.config_beside(&overrides)))
        .await
        .expect("the gateway listens without waiting for a reconciler pass")
        .expect("builds");
    let address = format!("http://127.0.0.1:{}", second.port());
    let state = second.state();
    tokio::spawn(second.run_until_stopped());

    let health = app.client.get(format!("{address}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(state.reconciler_runs.load(Ordering::Acquire), 0, "the first run is still held up");
    assert!(state.reconciling.load(Ordering::Acquire));

    // Redeeming through the new gateway: state missing -> 503 and an on-demand
    // rebuild from Postgres -> the earlier winner is still known, a new user wins.
    let on_second = TestApp {
        address: address.clone(),
        metrics_address: String::new(),
        client: app.client.clone(),
        state: state.clone(),
        database: app.database.clone(),
        server_url: app.server_url.clone(),
        redis_url: app.redis_url.clone(),
        prefix: app.prefix.clone(),
    };
    let res = on_second.use_code_retrying(&users[1].1, "EARLY", 50).await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    assert_eq!(on_second.use_code(&users[0].1, "EARLY").await.status, 409);
    assert_eq!(state.reconciler_runs.load(Ordering::Acquire), 0, "served while the run is still held up");

    blocker.batch_execute("ROLLBACK").await.unwrap();
    wait_for_reconciler_runs(&state, 1).await;
    assert_eq!(app.redemption_counts(code.id).await, (2, 2));
    app.assert_money_invariants().await;
}
