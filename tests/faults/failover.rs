//! Redis Cluster failover mid-burst: the master serving the code's slot is
//! killed (SIGKILL) while its replica is frozen and behind, so the replica
//! that takes over never saw the last claims. Meanwhile the gateways answer
//! 503 with Retry-After (never 500); they find the new master themselves
//! (topology refresh); the reconciler repairs the gate from Postgres; and the
//! invariants hold: no over-issue, no double credit, every slot back.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redeem_gateway::redis_conn::key_slot;
use serde_json::{json, Value};
use tokio::task::block_in_place;

use crate::cluster::RedisCluster;
use crate::harness::{Gateway, GatewayEnv, Postgres};
use crate::load::{self, histogram, Progress, Targets};

const CODE: &str = "FAILOVER";
const LIMIT: i64 = 200;
const USERS: usize = 1500;
const AMOUNT: i64 = 10_000;
const CONCURRENCY: usize = 32;
/// Generous: a failover takes a few seconds, more on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(90);

fn meta_next(cluster: &RedisCluster, port: u16, prefix: &str) -> i64 {
    cluster.cli(port, &["hget", &format!("{prefix}:code:{{{CODE}}}:meta"), "next"]).trim().parse().unwrap_or(-1)
}

async fn report(env: &GatewayEnv, base: &str) -> Value {
    reqwest::Client::new()
        .post(format!("{base}/codes/report"))
        .bearer_auth(env.admin_token())
        .json(&json!({ "code": CODE }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_mid_burst_fails_over_and_nothing_is_lost() {
    let mut cluster = block_in_place(RedisCluster::start);
    let database_url = Postgres::shared().create_database().await;
    let mut env = GatewayEnv::new(database_url, format!("redis://127.0.0.1:{}/", cluster.ports[0]));
    env.extra.push(("REDIS_CLUSTER_NODES".into(), cluster.nodes()));
    env.create_code(CODE, AMOUNT, LIMIT);
    let mut first = Gateway::start(&env);
    let second = Gateway::start(&env);
    let targets: Targets = Arc::new(RwLock::new(vec![first.address(), second.address()]));

    let slot = key_slot(CODE.as_bytes());
    let (master, replica) = cluster.owner_of(slot, cluster.ports[0]).expect("the code's slot has a master");
    let replica = replica.expect("the master has a replica");

    // Freeze the replica and push more than its socket buffers hold through
    // the replication stream: every claim after this stays in the master's
    // memory only, and dies with it.
    let users = load::create_users(&env, USERS).await;
    cluster.freeze(replica, true);
    // (16 MiB take a while to send on a loaded machine: a long reply time-out.)
    let slow = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    let mut direct = redis::Client::open(format!("redis://127.0.0.1:{master}/"))
        .unwrap()
        .get_multiplexed_async_connection_with_config(&slow)
        .await
        .unwrap();
    redis::cmd("SET")
        .arg(format!("{{{CODE}}}:ballast"))
        .arg(vec![b'x'; 16 << 20])
        .query_async::<()>(&mut direct)
        .await
        .expect("ballast on the master");

    // The burst; a quarter of the slots in, the master dies.
    let progress = Arc::new(Progress::default());
    let wave = tokio::spawn(load::wave(users, CODE, targets.clone(), CONCURRENCY, PATIENCE, progress.clone()));
    load::wait_for_successes(&progress, (LIMIT / 4) as usize).await;
    let next_on_master = meta_next(&cluster, master, &env.prefix);
    let successes_while_frozen = progress.successes.load(Ordering::Relaxed);
    block_in_place(|| cluster.kill(master));
    // A gateway starting now, its code's master dead and the replica not yet
    // promoted (still frozen), comes up: nothing at start-up needs every node.
    let third = block_in_place(|| Gateway::start(&env));
    cluster.freeze(replica, false);
    let unfrozen = std::time::Instant::now();
    targets.write().unwrap().push(third.address());

    // The replica takes over (its peers see the master fail after the node time-out).
    let retries_before = progress.retries.load(Ordering::Relaxed);
    block_in_place(|| {
        crate::cluster::wait_for("the replica's promotion", Duration::from_secs(60), || {
            cluster.owner_of(slot, replica).map(|(m, _)| m) == Some(replica)
        })
    });
    let promoted_after = unfrozen.elapsed();
    let next_on_new_master = meta_next(&cluster, replica, &env.prefix);
    println!(
        "failover: master {master} -> {replica}, promoted {promoted_after:?} after it could run; \
         {successes_while_frozen} redemptions while it was frozen; next {next_on_master} on the old master, \
         {next_on_new_master} on the new one"
    );

    let mut outcomes = wave.await.unwrap();
    // And one restarted after the failover, the dead node still in the
    // cluster's tables.
    block_in_place(|| first.restart());
    assert!(progress.retries.load(Ordering::Relaxed) > retries_before, "the failover was felt (503s)");
    assert_eq!(
        progress.unexpected.load(Ordering::Relaxed),
        0,
        "every answer was final, or 503 with Retry-After: never a 500"
    );
    assert!(
        next_on_new_master < next_on_master,
        "the new master never saw the claims made while it was frozen (so the repair below is tested)"
    );

    // The reconciler settles what the failover left: every ticket is either
    // redeemed in Postgres or free in the gate.
    load::wait_for_settled(&env, &targets, CODE).await;
    let db = load::db(&env.database_url).await;
    load::wait_until("the gate to match Postgres", Duration::from_secs(60), || {
        let (env, db, base) = (&env, &db, first.address());
        async move {
            let committed: i64 = db
                .query_one(
                    "SELECT count(*) FROM redemptions r JOIN codes c ON c.id = r.code_id WHERE c.code = $1",
                    &[&CODE],
                )
                .await
                .unwrap()
                .get(0);
            let r = report(env, &base).await;
            r["remaining"].as_i64() == Some(LIMIT - committed) && r["pending"] == 0
        }
    })
    .await;

    // Demand tops up to the limit: nothing was lost for good.
    let fresh = load::create_users(&env, LIMIT as usize).await;
    let second_wave =
        load::wave(fresh, CODE, targets.clone(), CONCURRENCY, PATIENCE, Arc::new(Progress::default())).await;
    outcomes.extend(second_wave);
    let h = histogram(&outcomes);
    println!("failover outcomes: {h:?}");
    assert_eq!(h.get(&0), None, "clients that never got an answer: {h:?}");
    load::assert_invariants(&env, CODE, LIMIT, AMOUNT, &outcomes).await;
    drop((first, second, third));
}
