//! No slot lost for good (DESIGN invariant 6): whatever happened — a cancel
//! after Redis forgot the claim, a limit that drifted from Postgres, a claim
//! kept by release.lua's keep mode — after one reconciler pass the further
//! successful redemptions == limit - applied uses. Each scenario reproduces
//! its path against real Redis and Postgres, then drains the code.

use std::time::Duration;

use redeem_gateway::codes::{Code, CodeKind};
use redeem_gateway::coupons::store::{self as coupon_store, NewUse};
use redeem_gateway::reconciler;
use redeem_gateway::redemption::gate::{Claim, Release};
use redeem_gateway::redemption::service::Commit;
use serde_json::{json, Value};

use crate::coupons::coupon;
use crate::helpers::{spawn_app, spawn_app_with, Response, TestApp};

fn order(number: &str) -> Value {
    json!({"number": number, "payment_method": "card", "lines": [
        {"sku": "SIM-1", "category": "mobile", "unit_price": 100000, "quantity": 1}
    ]})
}

/// The checkout redeems for the user `token` belongs to.
async fn redeem_coupon(app: &TestApp, token: &str, code: &str, number: &str) -> Response {
    let user_id = app.state.tokens.verify(token).unwrap().user_id;
    let body = json!({"code": code, "user_id": user_id, "order": order(number)});
    app.post("/coupons/redeem", body, Some(&app.checkout_token())).await
}

/// Like a client: a 503 is retried (after the gate discarded a ticket
/// Postgres holds, the next try gets another one).
async fn redeem_coupon_retrying(app: &TestApp, token: &str, code: &str, number: &str) -> Response {
    let mut res = redeem_coupon(app, token, code, number).await;
    for _ in 0..10 {
        if res.status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        res = redeem_coupon(app, token, code, number).await;
    }
    res
}

/// Live uses of the code in Postgres.
async fn applied_uses(app: &TestApp, code: &Code) -> i64 {
    let sql = match code.kind {
        CodeKind::Credit => "SELECT count(*) FROM redemptions WHERE code_id = $1",
        CodeKind::Voucher => "SELECT count(*) FROM vouchers WHERE code_id = $1",
        CodeKind::Coupon => "SELECT count(*) FROM coupon_redemptions WHERE code_id = $1 AND status = 'applied'",
    };
    app.query_i64(sql, &[&code.id]).await
}

async fn limit_in_postgres(app: &TestApp, code: &Code) -> i64 {
    app.query_i64("SELECT redemption_limit::bigint FROM codes WHERE id = $1", &[&code.id]).await
}

/// Redeems with new users (and, for coupons, new orders) until 410; returns
/// how many succeeded. Any other answer fails the test — a 503 too: after the
/// reconciler's pass the gate must hand out no ticket Postgres holds (a
/// ticket freed twice, or freed while held, would show as one).
async fn drain(app: &TestApp, code: &Code) -> i64 {
    let ceiling = limit_in_postgres(app, code).await + 3;
    let mut won = 0;
    for i in 0..ceiling {
        let (_, token) = app.create_users(1).await.remove(0);
        let res = match code.kind {
            CodeKind::Coupon => redeem_coupon(app, &token, &code.code, &format!("DRAIN-{i}")).await,
            _ => app.use_code(&token, &code.code).await,
        };
        match res.status.as_u16() {
            200 => won += 1,
            410 => return won,
            s => panic!("drain of {}: unexpected {s} {:?}", code.code, res.body),
        }
    }
    panic!("drain of {} never reached 410 ({won} successes)", code.code);
}

/// The invariant: after the reconciler's pass, limit - applied uses slots are
/// still redeemable, no more, no fewer.
async fn assert_no_slot_lost(app: &TestApp, code: &Code) {
    let limit = limit_in_postgres(app, code).await;
    let applied = applied_uses(app, code).await;
    let gate = app.state.gate.snapshot(&code.code).await.unwrap().expect("gate state");
    assert_eq!(gate.remaining(), limit - applied, "the gate's count before the drain: {gate:?}");
    let further = drain(app, code).await;
    assert_eq!(further, limit - applied, "{}: limit {limit}, applied {applied}", code.code);
    assert_eq!(applied_uses(app, code).await, limit, "drained to the limit exactly");
    app.assert_money_invariants().await;
}

async fn reconcile(app: &TestApp) -> reconciler::RunStats {
    reconciler::run_once(&app.state).await.unwrap()
}

/// A coupon use's row committed straight into Postgres with `ticket`, as the
/// commit of a gateway whose claim Redis has since forgotten would land.
async fn land_commit(app: &TestApp, code: &Code, user_id: i64, number: &str, ticket: i32) {
    let db = app.state.pg.get().await.unwrap();
    let new = NewUse {
        code_id: code.id,
        code: &code.code,
        user_id,
        order_number: number,
        ticket,
        order_total: 100_000,
        discount: 10_000,
    };
    assert!(matches!(coupon_store::record_use(&db, &new).await.unwrap(), Commit::Done(_)));
}

/// The common second half of the cancel scenarios: order A holds ticket 0 in
/// Postgres while Redis no longer has A's claim. B's redeem is handed ticket
/// 0, finds it taken (the gate discards it), and wins ticket 1 on retry; then
/// A is cancelled. Before the fix the cancel freed nothing and ticket 0 was
/// gone for good: a limit-2 coupon with 1 applied use answered 410.
async fn cancel_a_then_drain(app: &TestApp, code: &Code) {
    let (_, b) = app.create_users(1).await.remove(0);
    let res = redeem_coupon_retrying(app, &b, &code.code, "B").await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    let a_id = app.query_i64("SELECT id FROM coupon_redemptions WHERE order_number = 'A'", &[]).await;
    let res = app.post(&format!("/coupons/redemptions/{a_id}/cancel"), json!({}), Some(&app.checkout_token())).await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    reconcile(app).await;
    assert_no_slot_lost(app, code).await;
}

#[tokio::test]
async fn a_cancel_after_a_rebuild_forgot_the_claim_gives_the_slot_back() {
    let app = spawn_app().await;
    let code = app.create(coupon("REBUILTC", 2, 1, json!({}))).await;
    let (a, _) = app.create_users(1).await.remove(0);
    // A gateway claims for order A; Redis is lost and rebuilt (no row yet)
    // before A's slow commit lands.
    assert_eq!(app.state.gate.claim("REBUILTC", "order:A").await.unwrap(), Claim::Granted { ticket: 0 });
    app.wipe_redis().await;
    reconcile(&app).await;
    assert!(app.state.gate.snapshot("REBUILTC").await.unwrap().is_some(), "rebuilt");
    land_commit(&app, &code, a, "A", 0).await;
    cancel_a_then_drain(&app, &code).await;
}

#[tokio::test]
async fn a_cancel_after_a_commit_the_gateway_did_not_see_land_gives_the_slot_back() {
    let app = spawn_app().await;
    let code = app.create(coupon("UNSEEN", 2, 1, json!({}))).await;
    let (_, a_token) = app.create_users(1).await.remove(0);
    assert_eq!(redeem_coupon(&app, &a_token, "UNSEEN", "A").await.status, 200);
    // The commit landed but the gateway saw an error: it released the claim.
    assert!(app.state.gate.release("UNSEEN", "order:A", 0, Release::Free, false).await.unwrap());
    cancel_a_then_drain(&app, &code).await;
}

#[tokio::test]
async fn a_cancel_after_a_sweep_release_gives_the_slot_back() {
    let app = spawn_app_with(&[("CLAIM_GRACE_SECONDS", "1"), ("PG_STATEMENT_TIMEOUT_MS", "500")]).await;
    let code = app.create(coupon("SWEPT", 2, 1, json!({}))).await;
    let (a, _) = app.create_users(1).await.remove(0);
    assert_eq!(app.state.gate.claim("SWEPT", "order:A").await.unwrap(), Claim::Granted { ticket: 0 });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut released = 0;
    for _ in 0..30 {
        released += reconcile(&app).await.claims_released;
        if released > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(released, 1, "the sweep released A's claim (no row yet)");
    land_commit(&app, &code, a, "A", 0).await; // ... and then A's commit landed
    cancel_a_then_drain(&app, &code).await;
}

/// Every key of one code, as DUMP gives them (None: absent).
async fn dump_code(app: &TestApp, code: &str) -> Vec<(String, Option<Vec<u8>>)> {
    let mut conn = app.redis().await;
    let mut out = vec![];
    for part in ["meta", "claims", "pending", "free", "stats", "dropped", "owners"] {
        let key = app.key(code, part);
        let dumped: Option<Vec<u8>> = redis::cmd("DUMP").arg(&key).query_async(&mut conn).await.unwrap();
        out.push((key, dumped));
    }
    out
}

/// Puts the keys back as dumped: Redis "lost its last writes".
async fn restore_code(app: &TestApp, dumped: &[(String, Option<Vec<u8>>)]) {
    let mut conn = app.redis().await;
    for (key, value) in dumped {
        redis::cmd("DEL").arg(key).query_async::<()>(&mut conn).await.unwrap();
        if let Some(v) = value {
            redis::cmd("RESTORE").arg(key).arg(0).arg(v).query_async::<()>(&mut conn).await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_cancel_after_redis_lost_its_last_writes_gives_the_slot_back() {
    let app = spawn_app().await;
    let code = app.create(coupon("AOFLOSS", 2, 1, json!({}))).await;
    let (_, a_token) = app.create_users(1).await.remove(0);
    // An AOF `everysec` Redis dies and comes back without its last second:
    // the state from before A's redeem, although A's commit is in Postgres.
    let before = dump_code(&app, "AOFLOSS").await;
    assert_eq!(redeem_coupon(&app, &a_token, "AOFLOSS", "A").await.status, 200);
    restore_code(&app, &before).await;
    cancel_a_then_drain(&app, &code).await;
}

#[tokio::test]
async fn a_cancel_whose_redis_step_failed_is_healed_by_the_audit() {
    let app = spawn_app().await;
    let code = app.create(coupon("HALFCANCEL", 2, 1, json!({}))).await;
    let (_, a_token) = app.create_users(1).await.remove(0);
    assert_eq!(redeem_coupon(&app, &a_token, "HALFCANCEL", "A").await.status, 200);
    let a_id = app.query_i64("SELECT id FROM coupon_redemptions WHERE order_number = 'A'", &[]).await;
    // The cancel committed in Postgres, then Redis was unreachable (the
    // client got 503 and never retried): nobody told the gate.
    let db = app.state.pg.get().await.unwrap();
    assert!(matches!(coupon_store::cancel(&db, a_id).await.unwrap(), coupon_store::Cancelled::Now { .. }));
    let stats = reconcile(&app).await;
    assert_eq!((stats.tickets_freed, stats.codes_audited), (1, 1), "{stats:?}");
    assert_no_slot_lost(&app, &code).await;
    // The audited code is quiet now: the next pass does not audit it again.
    assert_eq!(reconcile(&app).await.codes_audited, 0);
}

#[tokio::test]
async fn a_limit_changed_in_postgres_but_not_in_the_gate_is_repaired() {
    let app = spawn_app().await;
    let code = app.create_code("DRIFTUP", 10, 2).await;
    let (_, token) = app.create_users(1).await.remove(0);
    assert_eq!(app.use_code(&token, "DRIFTUP").await.status, 200);
    // A PATCH committed in Postgres, then its set_limit failed (Redis down:
    // the admin saw 503 although the limit changed).
    app.query_i64("UPDATE codes SET redemption_limit = 4 WHERE id = $1 RETURNING 0::bigint", &[&code.id]).await;
    let stats = reconcile(&app).await;
    assert_eq!(stats.limits_repaired, 1);
    assert_eq!(app.state.gate.snapshot("DRIFTUP").await.unwrap().unwrap().limit, 4);
    assert_no_slot_lost(&app, &code).await;
}

#[tokio::test]
async fn an_on_demand_rebuild_takes_the_limit_from_postgres_not_the_cache() {
    let app = spawn_app().await;
    let code = app.create_code("STALEROW", 10, 2).await;
    let users = app.create_users(2).await;
    assert_eq!(app.use_code(&users[0].1, "STALEROW").await.status, 200); // caches the row: limit 2
                                                                         // Another gateway raises the limit; this one's cache still says 2. Then Redis is lost.
    app.query_i64("UPDATE codes SET redemption_limit = 5 WHERE id = $1 RETURNING 0::bigint", &[&code.id]).await;
    app.wipe_redis().await;
    assert_eq!(app.use_code(&users[1].1, "STALEROW").await.status, 503); // starts the on-demand rebuild
    let mut gate = None;
    for _ in 0..50 {
        gate = app.state.gate.snapshot("STALEROW").await.unwrap();
        if gate.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gate = gate.expect("rebuilt on demand");
    assert_eq!((gate.limit, gate.limit_version), (5, Some(1)), "installed from Postgres's row");
    reconcile(&app).await;
    assert_no_slot_lost(&app, &code).await;
}

#[tokio::test]
async fn limit_changes_applied_out_of_order_cannot_regress_the_gate() {
    let app = spawn_app().await;
    let code = app.create_code("ORDERED", 10, 2).await;
    let admin = app.admin_token();
    let (_, token) = app.create_users(1).await.remove(0);
    assert_eq!(app.use_code(&token, "ORDERED").await.status, 200);
    for limit in [3, 6] {
        let res = app
            .request(reqwest::Method::PATCH, "/admin/codes/ORDERED", Some(json!({ "limit": limit })), Some(&admin))
            .await;
        assert_eq!(res.status, 200, "{:?}", res.body);
    }
    // The first PATCH's set_limit (version 1) arrives after the second's (version 2).
    assert!(!app.state.gate.set_limit("ORDERED", 3, 1).await.unwrap(), "an older version is not applied");
    let gate = app.state.gate.snapshot("ORDERED").await.unwrap().unwrap();
    assert_eq!((gate.limit, gate.limit_version), (6, Some(2)));
    reconcile(&app).await;
    assert_no_slot_lost(&app, &code).await;
}

#[tokio::test]
async fn a_spare_ticket_given_back_in_keep_mode_comes_back_after_a_lower_and_a_raise() {
    let app = spawn_app().await;
    let code = app.create_code("KEEPER", 10, 3).await;
    let admin = app.admin_token();
    let (u, token) = app.create_users(1).await.remove(0);
    assert_eq!(app.use_code(&token, "KEEPER").await.status, 200); // ticket 0
                                                                  // Redis forgets U's claim (as after a lost write); U tries again: the
                                                                  // gate hands out ticket 1, Postgres says U has redeemed, and release.lua
                                                                  // keeps U's claim and gives ticket 1 back.
    let mut conn = app.redis().await;
    redis::cmd("HDEL").arg(app.key("KEEPER", "claims")).arg(u).query_async::<()>(&mut conn).await.unwrap();
    redis::cmd("HDEL").arg(app.key("KEEPER", "owners")).arg(0).query_async::<()>(&mut conn).await.unwrap();
    assert_eq!(app.use_code(&token, "KEEPER").await.status, 409);
    let claimed: String =
        redis::cmd("HGET").arg(app.key("KEEPER", "claims")).arg(u).query_async(&mut conn).await.unwrap();
    assert_eq!(claimed, "-1", "the kept claim does not point at the ticket it gave back");
    // Lower to 1 (ticket 1 is popped and set aside), then raise to 3.
    let patch = |limit: i64| {
        app.request(reqwest::Method::PATCH, "/admin/codes/KEEPER", Some(json!({ "limit": limit })), Some(&admin))
    };
    assert_eq!(patch(1).await.status, 200);
    let (_, v) = app.create_users(1).await.remove(0);
    assert_eq!(app.use_code(&v, "KEEPER").await.status, 410);
    assert_eq!(patch(3).await.status, 200);
    reconcile(&app).await;
    assert_no_slot_lost(&app, &code).await;
}

/// Not a correctness test: times a limit change on a code with 100,000 claims
/// (`cargo test --test api set_limit_on_a_big_code -- --ignored --nocapture`).
#[tokio::test]
#[ignore]
async fn set_limit_on_a_big_code() {
    let app = spawn_app().await;
    app.create_code("BIGCODE", 10, 200_000).await;
    let mut conn = app.redis().await;
    // 100,000 claims (committed), next = 100,000; and 50,000 tickets set
    // aside as if given back while the limit was lower.
    // Filled 1,000 at a time: one long script would outlast the client's timeout.
    let fill = redis::Script::new(
        "for i = tonumber(ARGV[1]), tonumber(ARGV[1]) + 999 do
           redis.call('HSET', KEYS[2], 'u' .. i, i); redis.call('HSET', KEYS[3], i, 'u' .. i)
         end
         redis.call('HSET', KEYS[1], 'next', tonumber(ARGV[1]) + 1000)
         return 1",
    );
    for from in (0..100_000).step_by(1_000) {
        fill.key(app.key("BIGCODE", "meta"))
            .key(app.key("BIGCODE", "claims"))
            .key(app.key("BIGCODE", "owners"))
            .arg(from)
            .invoke_async::<i64>(&mut conn)
            .await
            .unwrap();
    }
    redis::cmd("CONFIG").arg("SET").arg("slowlog-log-slower-than").arg(0).query_async::<()>(&mut conn).await.unwrap();
    timed_set_limit(&app, &mut conn, "lower 200000 -> 50000", 50_000, 1).await;
    timed_set_limit(&app, &mut conn, "raise 50000 -> 200000 (nothing set aside)", 200_000, 2).await;
    timed_set_limit(&app, &mut conn, "lower 200000 -> 50000", 50_000, 3).await;
    let aside = redis::Script::new(
        "for i = tonumber(ARGV[1]), tonumber(ARGV[1]) + 999 do redis.call('ZADD', KEYS[1], i, i) end return 1",
    );
    for from in (50_000..100_000).step_by(1_000) {
        aside.key(app.key("BIGCODE", "dropped")).arg(from).invoke_async::<i64>(&mut conn).await.unwrap();
    }
    timed_set_limit(&app, &mut conn, "raise 50000 -> 200000 (50,000 tickets set aside)", 200_000, 4).await;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(10_000)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let gate = app.state.gate.snapshot("BIGCODE").await.unwrap().unwrap();
    assert_eq!((gate.limit, gate.dropped, gate.free), (200_000, 0, 50_000));
}

/// One limit change on BIGCODE, timed from here and by Redis's SLOWLOG.
async fn timed_set_limit(
    app: &TestApp,
    conn: &mut redeem_gateway::redis_conn::RedisConn,
    label: &str,
    limit: i32,
    version: i64,
) {
    redis::cmd("SLOWLOG").arg("RESET").query_async::<()>(conn).await.unwrap();
    let started = std::time::Instant::now();
    app.state.gate.set_limit("BIGCODE", limit, version).await.unwrap();
    let elapsed = started.elapsed();
    let log: Vec<redis::Value> = redis::cmd("SLOWLOG").arg("GET").arg(1000).query_async(conn).await.unwrap();
    let scripts: Vec<i64> = log
        .iter()
        .filter_map(|entry| match entry {
            redis::Value::Array(f) => match (f.get(2), f.get(3)) {
                (Some(redis::Value::Int(us)), Some(redis::Value::Array(cmd)))
                    if matches!(cmd.first(), Some(redis::Value::BulkString(n)) if n.eq_ignore_ascii_case(b"EVALSHA")) =>
                {
                    Some(*us)
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    println!(
        "{label}: {elapsed:?} in all; {} script call(s), longest {} µs, sum {} µs",
        scripts.len(),
        scripts.iter().max().unwrap_or(&0),
        scripts.iter().sum::<i64>()
    );
}

/// The audit's race: audits run back to back (the code marked for audit
/// before each) while 600 users race for 300 slots. A ticket freed while its
/// claim's commit is in flight would be handed out twice, and the second
/// commit would find it taken: release.lua would discard it, which bumps the
/// code's `dirty` mark. So: no discard may happen (`dirty` stays at the 1 the
/// code's creation left), and the count stays exact. (Clients retry 503s, so
/// a Redis reply lost to a loaded machine cannot fail the test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audits_during_a_burst_never_free_a_held_ticket() {
    let app = spawn_app().await;
    let code = app.create_code("AUDITED", 10, 300).await;
    let users = app.create_users(600).await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let meta = app.key("AUDITED", "meta");
    let auditor = {
        let (state, done, meta) = (app.state.clone(), done.clone(), meta.clone());
        let mut conn = app.redis().await;
        tokio::spawn(async move {
            let (mut audits, mut freed) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                // Forget the last audit, so that this pass audits the code again.
                let _ = redis::cmd("HDEL").arg(&meta).arg("audited").query_async::<()>(&mut conn).await;
                if let Ok(stats) = reconciler::run_once(&state).await {
                    audits += stats.codes_audited;
                    freed += stats.tickets_freed;
                }
            }
            (audits, freed)
        })
    };
    let tasks: Vec<_> = users
        .iter()
        .map(|(_, token)| {
            let (client, url, token) = (app.client.clone(), format!("{}/codes/use", app.address), token.clone());
            tokio::spawn(async move {
                for _ in 0..50 {
                    let res = client.post(&url).bearer_auth(&token).json(&json!({"code": "AUDITED"})).send().await;
                    match res.map(|r| r.status().as_u16()) {
                        Ok(503) | Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        Ok(status) => return status,
                    }
                }
                503
            })
        })
        .collect();
    let mut statuses = vec![];
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let (audits, freed) = auditor.await.unwrap();
    assert!(audits > 0, "the audit ran during the burst");
    let by_status = |s: u16| statuses.iter().filter(|x| **x == s).count();
    assert_eq!((by_status(200), by_status(410)), (300, 300), "{audits} audits, {freed} freed");
    let mut conn = app.redis().await;
    let dirty: i64 = redis::cmd("HGET").arg(&meta).arg("dirty").query_async(&mut conn).await.unwrap();
    assert_eq!(dirty, 1, "no ticket was discarded as taken ({audits} audits, {freed} freed)");
    assert_eq!(freed, 0, "nothing was lost, so nothing was freed");
    assert_eq!(app.redemption_counts(code.id).await, (300, 300));
    reconcile(&app).await;
    assert_no_slot_lost(&app, &code).await;
}

/// A code wider than one audit step (10,000 tickets) is audited step by
/// step from the cursor in its meta, and every lost ticket comes back once.
#[tokio::test]
async fn a_code_wider_than_one_audit_step_is_audited_step_by_step() {
    let app = spawn_app().await;
    let code = app.create_code("WIDE", 10, 25_000).await;
    let users = app.create_users(3).await;
    for (_, token) in &users {
        assert_eq!(app.use_code(token, "WIDE").await.status, 200); // tickets 0, 1, 2
    }
    reconcile(&app).await; // the audit the creation asked for
                           // Redis believes 25,000 tickets went out; the 24,997 nobody holds are lost.
    let mut conn = app.redis().await;
    redis::cmd("HSET").arg(app.key("WIDE", "meta")).arg("next").arg(25_000).query_async::<()>(&mut conn).await.unwrap();
    redis::cmd("HINCRBY").arg(app.key("WIDE", "meta")).arg("dirty").arg(1).query_async::<()>(&mut conn).await.unwrap();
    let stats = reconcile(&app).await;
    assert_eq!((stats.tickets_freed, stats.codes_audited), (24_997, 1), "{stats:?}");
    let free: Vec<i64> =
        redis::cmd("LRANGE").arg(app.key("WIDE", "free")).arg(0).arg(-1).query_async(&mut conn).await.unwrap();
    let distinct: std::collections::BTreeSet<i64> = free.iter().copied().collect();
    assert_eq!((free.len(), distinct.len()), (24_997, 24_997), "each lost ticket back once");
    assert_eq!((distinct.first(), distinct.last()), (Some(&3), Some(&24_999)));
    let gate = app.state.gate.snapshot("WIDE").await.unwrap().unwrap();
    assert!(!gate.audit_in_progress, "the sweep finished in one pass");
    assert_eq!(gate.remaining(), 25_000 - applied_uses(&app, &code).await);
    assert_eq!(reconcile(&app).await.codes_audited, 0, "quiet since");
    let (_, token) = app.create_users(1).await.remove(0);
    assert_eq!(app.use_code(&token, "WIDE").await.status, 200);
    app.assert_money_invariants().await;
}
