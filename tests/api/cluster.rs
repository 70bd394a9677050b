//! Redis Cluster: every script and pipeline of the gate, and every rate
//! limiter check, stays in one slot (a cluster refuses anything else with
//! CROSSSLOT). The keys come from the same builders the calls use. With
//! TEST_REDIS_CLUSTER_NODES set, the slots are also checked against the
//! cluster's own CLUSTER KEYSLOT, and the calls run there.

use redeem_gateway::ratelimit::Bucket;
use redeem_gateway::redis_conn::key_slot;

use crate::helpers::{cluster_nodes, spawn_app, spawn_app_with};

const BUCKETS: [Bucket; 7] = [
    Bucket::Login,
    Bucket::LoginAddress,
    Bucket::LoginFailures,
    Bucket::Register,
    Bucket::CodeAttempt,
    Bucket::FailedCode,
    Bucket::FailedCodeAddress,
];

/// Codes of every shape the validation lets through (A-Z 0-9 _ -, 1 to 64).
fn sample_codes() -> Vec<String> {
    let mut codes: Vec<String> = ["SPRING", "A", "0", "X-1_2", "WELCOME2026", "--__--"].map(String::from).to_vec();
    codes.push("Z".repeat(64));
    for _ in 0..50 {
        codes.push(format!("C{:X}", rand::random::<u64>()));
    }
    codes
}

/// Subjects of every kind: user ids, usernames, addresses (v4, v6), and
/// hostile ones (braces would make a hash tag; long ones are hashed).
fn sample_subjects() -> Vec<String> {
    let mut subjects: Vec<String> =
        ["1", "42", "sara", "sara|10.0.0.1", "10.0.0.1", "2001:db8::1", "{SPRING}", "a{b}c"].map(String::from).to_vec();
    subjects.push("x".repeat(300));
    subjects
}

async fn cluster_keyslot(conn: &mut redeem_gateway::redis_conn::RedisConn, key: &str) -> u16 {
    redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(conn).await.unwrap()
}

#[tokio::test]
async fn every_script_and_pipeline_of_the_gate_touches_one_slot() {
    let app = spawn_app().await;
    let mut conn = if cluster_nodes().is_some() { Some(app.redis().await) } else { None };
    let mut checked = 0;
    for code in sample_codes() {
        let calls = app.state.gate.keys_by_call(&code);
        assert!(calls.len() >= 12, "every script and pipeline is listed");
        for (call, keys) in calls {
            assert!(!keys.is_empty(), "{call} takes keys");
            let slots: Vec<u16> = keys.iter().map(|k| key_slot(k.as_bytes())).collect();
            let is_lock = call.contains("lock");
            if !is_lock {
                // Every key of a code carries its hash tag, so the code alone picks the slot.
                assert!(
                    slots.iter().all(|s| *s == key_slot(code.as_bytes())),
                    "{call} of {code}: {keys:?} -> {slots:?}"
                );
            }
            assert!(slots.windows(2).all(|w| w[0] == w[1]), "{call} of {code} spans slots: {keys:?} -> {slots:?}");
            if let Some(conn) = conn.as_mut() {
                for (key, slot) in keys.iter().zip(&slots) {
                    assert_eq!(cluster_keyslot(conn, key).await, *slot, "{key}");
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 600);
}

#[tokio::test]
async fn every_rate_limiter_check_touches_one_key_in_one_slot() {
    let app = spawn_app_with(&[("RATE_LIMIT_ENABLED", "true")]).await;
    let mut conn = if cluster_nodes().is_some() { Some(app.redis().await) } else { None };
    for bucket in BUCKETS {
        for subject in sample_subjects() {
            let key = app.state.limiter.key(bucket, &subject);
            // One key per check (lua/ratelimit.lua takes KEYS[1] only), and no
            // subject can smuggle in a hash tag of its own.
            assert!(!key.contains(['{', '}']), "{key}");
            if let Some(conn) = conn.as_mut() {
                assert_eq!(cluster_keyslot(conn, &key).await, key_slot(key.as_bytes()), "{key}");
            }
            // And the script runs (on a cluster: on the key's master).
            app.state.limiter.check(bucket, &subject).await.unwrap();
        }
    }
}

/// The reconciler reads many codes' snapshots in one batch: on a cluster the
/// codes live in different slots, so the batch must not be one pipeline
/// (CROSSSLOT aborted every pass there, and a dead gateway's claims were
/// never released). Codes whose names hash to many slots, one pass, no error.
#[tokio::test]
async fn a_reconciler_pass_over_codes_in_many_slots_reads_them_all() {
    let app = spawn_app().await;
    let names: Vec<String> = (0..12).map(|i| format!("SLOTS{i}")).collect();
    let slots: std::collections::HashSet<u16> = names.iter().map(|n| key_slot(n.as_bytes())).collect();
    assert!(slots.len() > 1, "the codes span several slots");
    for name in &names {
        app.create_code(name, 10, 3).await;
    }
    let snapshots = app.state.gate.snapshots(&names).await.expect("one read per code, whatever its slot");
    assert_eq!(snapshots.len(), names.len());
    assert!(snapshots.iter().all(|s| s.as_ref().is_some_and(|s| s.remaining() == 3)), "{snapshots:?}");
    let stats = redeem_gateway::reconciler::run_once(&app.state).await.expect("a whole pass");
    assert_eq!(stats.errors, 0, "{stats:?}");
}
