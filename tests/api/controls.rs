//! Operator controls bind in the commit itself, by the database's clock:
//! whatever the gateway's cache and the Redis gate believe, no use of a
//! paused, ended or out-of-window code commits, for all three kinds. And the
//! race with a pause: a commit that reaches the code's row after a pause
//! locked it is refused; one that got there first lands before the pause
//! answers.

use std::time::Duration;

use serde_json::json;

use crate::coupons::{coupon, order};
use crate::helpers::{spawn_app, TestApp};
use crate::vouchers::voucher_campaign;

/// Changes the code's row behind the gateway's back (no cache invalidation,
/// no Redis write): only the commit can notice.
async fn behind_the_back(app: &TestApp, sql: &str, code: &str) {
    let n = app.psql().await.execute(sql, &[&code]).await.unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn the_commit_refuses_a_code_paused_ended_or_expired_behind_the_gates_back() {
    let app = spawn_app().await;
    let users = app.create_users(4).await;
    for (i, (sql, message)) in [
        ("UPDATE codes SET status = 'paused' WHERE code = $1", "this code is paused"),
        ("UPDATE codes SET status = 'ended' WHERE code = $1", "this code has ended"),
        ("UPDATE codes SET ends_at = now() - interval '1 second' WHERE code = $1", "this code has expired"),
        ("UPDATE codes SET starts_at = now() + interval '1 hour' WHERE code = $1", "this code is not active yet"),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("BACK{i}");
        let code = app.create_code(&name, 100, 10).await;
        // Warm the cache: the gateway believes the code is active.
        assert_eq!(app.use_code(&users[0].1, &name).await.status, 200);
        behind_the_back(&app, sql, &name).await;
        let res = app.use_code(&users[1].1, &name).await;
        assert_eq!((res.status.as_u16(), res.error_code()), (422, "not_eligible"), "{sql}: {:?}", res.body);
        assert_eq!(res.body["error"]["message"], message);
        assert_eq!(app.redemption_counts(code.id).await, (1, 1), "{sql}: nothing committed");
        // The ticket went back: the gate still holds 9.
        assert_eq!(app.state.gate.snapshot(&name).await.unwrap().unwrap().remaining(), 9);
    }
    app.assert_money_invariants().await;
}

#[tokio::test]
async fn vouchers_and_coupons_are_refused_by_the_commit_too() {
    let app = spawn_app().await;
    app.create(voucher_campaign("VPAUSE", 10)).await;
    app.create(coupon("CPAUSE", 10, 1, json!({}))).await;
    let (user_id, token) = app.create_users(1).await.remove(0);
    // Warm the coupon's cache entry.
    let quote = app.post("/coupons/quote", json!({"code": "CPAUSE", "order": order("P-0")}), Some(&token)).await;
    assert_eq!(quote.status, 200);
    behind_the_back(&app, "UPDATE codes SET status = 'paused' WHERE code = $1", "CPAUSE").await;
    let body = json!({"code": "CPAUSE", "user_id": user_id, "order": order("P-1")});
    let res = app.post("/coupons/redeem", body, Some(&app.checkout_token())).await;
    assert_eq!((res.status.as_u16(), res.error_code()), (422, "not_eligible"), "{:?}", res.body);
    assert_eq!(app.query_i64("SELECT count(*) FROM coupon_redemptions", &[]).await, 0);

    // A voucher is issued through the same path; drive it with a direct
    // commit attempt through the store (the login route hashes passwords).
    let voucher_code = app.state.codes.get(&app.state.pg, "VPAUSE").await.unwrap().unwrap();
    behind_the_back(&app, "UPDATE codes SET status = 'ended' WHERE code = $1", "VPAUSE").await;
    let reward = voucher_code.code.voucher_reward().unwrap();
    let db = app.state.pg.get().await.unwrap();
    let user = app.create_users(1).await.remove(0).0;
    let outcome =
        redeem_gateway::vouchers::store::issue(&db, "VPAUSE", voucher_code.code.id, user, 0, &reward).await.unwrap();
    assert!(
        matches!(outcome, redeem_gateway::redemption::service::Commit::Refused(ref e) if e.to_string() == "this code has ended"),
        "{outcome:?}"
    );
    assert_eq!(app.query_i64("SELECT count(*) FROM vouchers", &[]).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_that_reaches_the_row_after_a_pause_locked_it_is_refused() {
    let app = spawn_app().await;
    let code = app.create_code("RACE", 100, 10).await;
    let (_, token) = app.create_users(1).await.remove(0);
    // A pause in progress, as the admin route runs it: the row locked FOR
    // UPDATE, then the status written, then the commit.
    let mut psql = app.psql().await;
    let tx = psql.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM codes WHERE id = $1 FOR UPDATE", &[&code.id]).await.unwrap();
    // The redemption passes the cache and the gate (both say active), then
    // its commit waits for the row.
    let redeem = use_code_in_background(&app, &token, "RACE");
    wait_for_lock_waiters(&app, 1).await;
    tx.execute("UPDATE codes SET status = 'paused', updated_at = now() WHERE id = $1", &[&code.id]).await.unwrap();
    tx.commit().await.unwrap();
    let res = redeem.await.unwrap().unwrap();
    assert_eq!(res.status(), 422, "the commit re-read the row after the pause: {:?}", res.text().await);
    assert_eq!(app.redemption_counts(code.id).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_held_up_before_its_check_is_refused_by_a_pause_that_lands_first() {
    let app = spawn_app().await;
    let code = app.create_code("INFLIGHT", 100, 10).await;
    app.create_code("WALLET", 1, 10).await;
    let (user, token) = app.create_users(1).await.remove(0);
    assert_eq!(app.use_code(&token, "WALLET").await.status, 200, "the user has a wallet row");
    // Hold the user's wallet: the commit has written its redemption but not
    // yet reached its check on the code's row (V10: once per statement, at
    // its end), so it holds no lock on the code while it waits.
    let mut psql = app.psql().await;
    let tx = psql.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM wallets WHERE user_id = $1 FOR UPDATE", &[&user]).await.unwrap();
    let redeem = use_code_in_background(&app, &token, "INFLIGHT");
    wait_for_lock_waiters(&app, 1).await;
    let paused = app.post("/admin/codes/INFLIGHT/pause", json!({}), Some(&app.admin_token())).await;
    assert_eq!(paused.status, 200, "nothing holds the code: the pause lands at once: {:?}", paused.body);
    tx.rollback().await.unwrap();
    let res = redeem.await.unwrap().unwrap();
    assert_eq!(res.status(), 422, "checked after the pause committed: {:?}", res.text().await);
    assert_eq!(app.redemption_counts(code.id).await, (0, 0), "its redemption went with the statement");
    assert_eq!(app.balance_of(user).await, 1, "and so did its credit");
    app.assert_money_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_limit_cut_below_a_commit_held_up_before_its_check_binds_it() {
    let app = spawn_app().await;
    let code = app.create_code("CUT", 100, 10).await;
    app.create_code("WALLET", 1, 10).await;
    for (_, token) in app.create_users(3).await {
        assert_eq!(app.use_code(&token, "CUT").await.status, 200, "tickets 0, 1, 2");
    }
    let (user, token) = app.create_users(1).await.remove(0);
    assert_eq!(app.use_code(&token, "WALLET").await.status, 200, "the user has a wallet row");
    // Ticket 3's commit waits on the user's wallet, before its check on the code.
    let mut psql = app.psql().await;
    let tx = psql.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM wallets WHERE user_id = $1 FOR UPDATE", &[&user]).await.unwrap();
    let redeem = use_code_in_background(&app, &token, "CUT");
    wait_for_lock_waiters(&app, 1).await;
    let admin = app.admin_token();
    let patch = |limit: i64| {
        app.request(reqwest::Method::PATCH, "/admin/codes/CUT", Some(json!({ "limit": limit })), Some(&admin))
    };
    assert_eq!(patch(3).await.status, 200, "ticket 3 is not committed: the limit may go down to 3 at once");
    tx.rollback().await.unwrap();
    let res = redeem.await.unwrap().unwrap();
    assert_eq!(res.status(), 410, "ticket 3 is not below the new limit: {:?}", res.text().await);
    assert_eq!(app.redemption_counts(code.id).await, (3, 3), "never more than the limit in force");
    assert_eq!(app.balance_of(user).await, 1);
    // Raised again, the set-aside ticket comes back: exactly 7 more.
    assert_eq!(patch(10).await.status, 200);
    let late: Vec<String> = app.create_users(9).await.into_iter().map(|(_, t)| t).collect();
    let answers = app.burst(&late, "CUT").await;
    assert_eq!(crate::helpers::count_status(&answers, 200), 7);
    assert_eq!(app.redemption_counts(code.id).await, (10, 10));
    app.assert_money_invariants().await;
}

/// POST /codes/use in a task of its own, so the test can act while the
/// request waits on a lock.
fn use_code_in_background(
    app: &TestApp,
    token: &str,
    code: &str,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let (client, url, token) = (app.client.clone(), format!("{}/codes/use", app.address), token.to_string());
    let body = json!({ "code": code });
    tokio::spawn(async move { client.post(url).bearer_auth(token).json(&body).send().await })
}

/// Waits until `n` of the app's connections wait on a lock.
async fn wait_for_lock_waiters(app: &TestApp, n: i64) {
    let psql = app.psql().await;
    for _ in 0..200 {
        let waiting: i64 = psql
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                 AND application_name = 'redeem-gateway' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{n} lock waiters never showed up");
}

async fn gate_status(app: &TestApp, code: &str) -> Option<String> {
    let mut redis = app.redis().await;
    redis::cmd("HGET").arg(app.key(code, "meta")).arg("status").query_async(&mut redis).await.unwrap()
}

#[tokio::test]
async fn the_reconciler_repairs_a_gate_that_missed_a_pause() {
    let app = spawn_app().await;
    app.create_code("MISSED", 100, 10).await;
    let admin = app.admin_token();
    assert_eq!(app.post("/admin/codes/MISSED/pause", json!({}), Some(&admin)).await.status, 200);
    assert_eq!(gate_status(&app, "MISSED").await.as_deref(), Some("paused"), "the pause wrote the gate");
    // As if Redis had missed that write (down at the time).
    let mut redis = app.redis().await;
    redis::cmd("HSET")
        .arg(app.key("MISSED", "meta"))
        .arg("status")
        .arg("active")
        .arg("status_rev")
        .arg(0)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    redeem_gateway::reconciler::run_once(&app.state).await.unwrap();
    assert_eq!(gate_status(&app, "MISSED").await.as_deref(), Some("paused"), "re-asserted from Postgres");
    // A resume then goes through (a later change: a larger control_rev).
    assert_eq!(app.post("/admin/codes/MISSED/resume", json!({}), Some(&admin)).await.status, 200);
    assert_eq!(gate_status(&app, "MISSED").await.as_deref(), Some("active"));
    let (_, token) = app.create_users(1).await.remove(0);
    assert_eq!(app.use_code(&token, "MISSED").await.status, 200);
}

#[tokio::test]
async fn a_rebuild_takes_the_controls_from_postgres_not_from_a_cached_copy() {
    let app = spawn_app().await;
    app.create_code("REBUILT", 100, 10).await;
    let users = app.create_users(2).await;
    // The gateway caches the code as active.
    assert_eq!(app.use_code(&users[0].1, "REBUILT").await.status, 200);
    // Paused behind its back, then Redis loses the code's state.
    behind_the_back(&app, "UPDATE codes SET status = 'paused', updated_at = now() WHERE code = $1", "REBUILT").await;
    app.wipe_redis().await;
    // The claim finds no state: 503, and a rebuild from the cached (active) copy is asked for.
    assert_eq!(app.use_code(&users[1].1, "REBUILT").await.status, 503);
    let mut status = None;
    for _ in 0..50 {
        status = gate_status(&app, "REBUILT").await;
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status.as_deref(), Some("paused"), "the rebuild read the row as it is now");
    let res = app.use_code(&users[1].1, "REBUILT").await;
    assert_eq!((res.status.as_u16(), res.body["error"]["message"].as_str()), (422, Some("this code is paused")));
}

#[tokio::test]
async fn a_slow_writer_with_an_older_change_cannot_undo_a_pause() {
    use redeem_gateway::redemption::gate::Controls;
    let app = spawn_app().await;
    app.create_code("ORDERED", 100, 10).await;
    let admin = app.admin_token();
    assert_eq!(app.post("/admin/codes/ORDERED/pause", json!({}), Some(&admin)).await.status, 200);
    let paused_rev = app.query_i64("SELECT control_rev FROM codes WHERE code = 'ORDERED'", &[]).await;
    assert!(paused_rev > 0);
    // A writer that read the row before the pause (say, a reconciler pass).
    let stale = Controls { status: "active", starts_ms: None, ends_ms: None, rev: paused_rev - 1 };
    assert!(!app.state.gate.set_status("ORDERED", &stale).await.unwrap(), "an older change is not written");
    assert_eq!(gate_status(&app, "ORDERED").await.as_deref(), Some("paused"));
    let (_, token) = app.create_users(1).await.remove(0);
    let res = app.use_code(&token, "ORDERED").await;
    assert_eq!((res.status.as_u16(), res.body["error"]["message"].as_str()), (422, Some("this code is paused")));
}

/// Review finding: a resume whose Redis write was lost, found only after the
/// reconciler's look-back for recent changes has passed, must still reach the
/// gate (every pass compares the gate's `status_rev` with the row's).
#[tokio::test]
async fn a_resume_the_gate_missed_is_repaired_however_long_ago_it_was() {
    let app = spawn_app().await;
    app.create_code("LONGAGO", 100, 10).await;
    let admin = app.admin_token();
    assert_eq!(app.post("/admin/codes/LONGAGO/pause", json!({}), Some(&admin)).await.status, 200);
    let mut redis = app.redis().await;
    let paused_rev: i64 =
        redis::cmd("HGET").arg(app.key("LONGAGO", "meta")).arg("status_rev").query_async(&mut redis).await.unwrap();
    assert_eq!(app.post("/admin/codes/LONGAGO/resume", json!({}), Some(&admin)).await.status, 200);
    // As if Redis had missed the resume (partitioned away, then back with its
    // data), and the change were older than any look-back.
    redis::cmd("HSET")
        .arg(app.key("LONGAGO", "meta"))
        .arg("status")
        .arg("paused")
        .arg("status_rev")
        .arg(paused_rev)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let db = app.state.pg.get().await.unwrap();
    db.execute("UPDATE codes SET updated_at = now() - interval '1 day' WHERE code = 'LONGAGO'", &[]).await.unwrap();
    let stats = redeem_gateway::reconciler::run_once(&app.state).await.unwrap();
    assert_eq!(stats.controls_repaired, 1, "{stats:?}");
    assert_eq!(gate_status(&app, "LONGAGO").await.as_deref(), Some("active"));
    let (_, token) = app.create_users(1).await.remove(0);
    assert_eq!(app.use_code_retrying(&token, "LONGAGO", 20).await.status, 200);
}
