//! The split under load: a burst, the wallet killed mid-burst, the wallet's
//! answers lost. Each ends with the money checked across both databases.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{Gateway, GatewayEnv, Postgres};
use crate::setup::{create_users_in, histogram, wave, Split};

const AMOUNT: i64 = 25_000;

/// A burst on the split: every winner is credited exactly once. The same
/// burst on the single process, for the ratio (printed, not asserted: the
/// machine is shared).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_burst_credits_every_winner_exactly_once() {
    const LIMIT: i64 = 200;
    const USERS: usize = 600;
    let split = Split::start(false).await;
    split.redemption_env.create_code("SPLITBURST", AMOUNT, LIMIT);
    let users = split.users(USERS).await;
    let tokens: std::collections::HashMap<i64, String> = users.iter().cloned().collect();
    let (outcomes, split_took) = wave(&split.redemption.address(), users, "SPLITBURST", 32, Arc::default()).await;
    let h = histogram(&outcomes);
    assert_eq!(h.get(&0), None, "clients without an answer: {h:?}");
    split.wait_drained(Duration::from_secs(30)).await;
    split.assert_money_exact("SPLITBURST", LIMIT, AMOUNT, &outcomes).await;
    let report = split.report("SPLITBURST").await;
    assert_eq!(report["credits_pending"], 0, "{report}");
    assert_eq!(report["redeemed"], LIMIT, "{report}");
    // Every user reads its balance on the wallet role, all at once (its
    // group read): the winners their credit, the others 0.
    let client = reqwest::Client::new();
    let reads: Vec<_> = outcomes
        .iter()
        .map(|o| {
            let expected = if matches!(o.status, 200 | 202) { AMOUNT } else { 0 };
            let req = client
                .post(format!("{}/wallet/balance", split.wallet.address()))
                .bearer_auth(&tokens[&o.user_id])
                .json(&serde_json::json!({}));
            let user_id = o.user_id;
            tokio::spawn(async move {
                let body: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
                assert_eq!(
                    (body["user_id"].as_i64(), body["balance"].as_i64()),
                    (Some(user_id), Some(expected)),
                    "{body}"
                );
            })
        })
        .collect();
    for r in reads {
        r.await.unwrap();
    }

    // The single process, same burst, same machine.
    let single_env = GatewayEnv::new(Postgres::shared().create_database().await, split.redis.url());
    single_env.create_code("SINGLEBURST", AMOUNT, LIMIT);
    let single = tokio::task::block_in_place(|| Gateway::start(&single_env));
    let keys = single_env.tokens();
    let users = create_users_in(&single_env.database_url, &keys, USERS).await;
    let (single_outcomes, single_took) = wave(&single.address(), users, "SINGLEBURST", 32, Arc::default()).await;
    let single_ok = histogram(&single_outcomes).get(&200).copied().unwrap_or(0);
    assert_eq!(single_ok as i64, LIMIT);
    println!(
        "burst of {USERS} users on limit {LIMIT}: split {:.0} ms ({h:?}), single {:.0} ms; split/single = {:.2}",
        split_took.as_secs_f64() * 1e3,
        single_took.as_secs_f64() * 1e3,
        split_took.as_secs_f64() / single_took.as_secs_f64()
    );
}

/// The wallet is SIGKILLed once a quarter of the slots are gone and comes
/// back seconds later: winners meanwhile are told 202 (credit pending), keep
/// their slot, and are credited exactly once when the drainer gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wallet_killed_mid_burst_then_restarted() {
    const LIMIT: i64 = 200;
    const USERS: usize = 600;
    const DOWN_FOR: Duration = Duration::from_secs(3);
    let mut split = Split::start(false).await;
    split.redemption_env.create_code("WALLETKILL", AMOUNT, LIMIT);
    let users = split.users(USERS).await;

    // Sample the outbox while the burst runs: the most credits owed at once.
    let stop = Arc::new(AtomicBool::new(false));
    let pending_max = Arc::new(AtomicI64::new(0));
    let sampler = {
        let (stop, pending_max, db) = (stop.clone(), pending_max.clone(), split.redemption_db().await);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n: i64 = db
                    .query_one("SELECT count(*) FROM credit_outbox WHERE done_at IS NULL", &[])
                    .await
                    .map(|r| r.get(0))
                    .unwrap_or(0);
                pending_max.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let winners = Arc::new(AtomicUsize::new(0));
    let base = split.redemption.address();
    let burst = tokio::spawn({
        let winners = winners.clone();
        async move { wave(&base, users, "WALLETKILL", 32, winners).await }
    });
    let start = Instant::now();
    while winners.load(Ordering::Relaxed) < (LIMIT / 4) as usize {
        assert!(start.elapsed() < Duration::from_secs(60), "the burst never got going");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    split.wallet.kill();
    tokio::time::sleep(DOWN_FOR).await;
    let pending_while_down = split.pending_credits().await;
    tokio::task::block_in_place(|| split.wallet.restart());
    let restarted = Instant::now();
    let (outcomes, took) = burst.await.unwrap();
    let drained_after_restart = split.wait_drained(Duration::from_secs(60)).await + restarted.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();

    let h = histogram(&outcomes);
    assert_eq!(h.get(&0), None, "clients without an answer: {h:?}");
    let pending_max = pending_max.load(Ordering::Relaxed);
    assert!(h.get(&202).copied().unwrap_or(0) > 0, "nobody was told the credit is pending: {h:?}");
    assert!(pending_max > 0 && pending_while_down > 0, "the kill did not leave credits owed");
    split.assert_money_exact("WALLETKILL", LIMIT, AMOUNT, &outcomes).await;
    let report = split.report("WALLETKILL").await;
    assert_eq!(report["credits_pending"], 0, "{report}");
    println!(
        "wallet killed mid-burst ({USERS} users, limit {LIMIT}, down {DOWN_FOR:?}): answers {h:?}, burst {:.0} ms, \
         pending at the restart {pending_while_down}, pending max {pending_max}, drained {:.0} ms after the restart",
        took.as_secs_f64() * 1e3,
        drained_after_restart.as_secs_f64() * 1e3
    );
}

/// The wallet applies credits and its answers are lost on the way back (a
/// proxy cuts the connection after the wallet wrote its answer): the caller
/// retries (in the request, then the drainer) and the wallet answers the
/// repeat from its first row — nothing credited twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_wallet_answer_is_retried_without_crediting_twice() {
    const LIMIT: i64 = 20;
    const LOST: usize = 8;
    let split = Split::start(true).await;
    let proxy = split.proxy.clone().unwrap();
    split.redemption_env.create_code("LOSTANSWER", AMOUNT, LIMIT);
    let users = split.users(LIMIT as usize).await;
    proxy.drop_next(LOST);
    let (outcomes, _) = wave(&split.redemption.address(), users, "LOSTANSWER", 4, Arc::default()).await;
    split.wait_drained(Duration::from_secs(30)).await;
    assert_eq!(proxy.dropped(), LOST, "the proxy lost answers the wallet had written");
    let calls: i64 = split
        .redemption_db()
        .await
        .query_one("SELECT sum(attempts)::bigint FROM credit_outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert!(calls > LIMIT, "some credits were sent more than once ({calls} calls for {LIMIT} credits)");
    split.assert_money_exact("LOSTANSWER", LIMIT, AMOUNT, &outcomes).await;
}
