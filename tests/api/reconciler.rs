//! The reconciler's core duties: rebuild gate state Redis lost, and give back
//! slots claimed by a gateway that died before committing.

use redeem_gateway::reconciler;
use redeem_gateway::redemption::gate::GateSnapshot;

use crate::helpers::{count_status, spawn_app, spawn_app_with, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_gate_state_answers_503_then_is_rebuilt_from_postgres() {
    let app = spawn_app().await;
    let code = app.create_code("REBUILT", 10, 5).await;
    let users = app.create_users(8).await;
    for (_, token) in &users[..3] {
        assert_eq!(app.use_code(token, "REBUILT").await.status, 200);
    }
    app.state.gate.confirm::<&str>("REBUILT", &[]).await.unwrap();
    app.wipe_redis().await; // as FLUSHALL would

    let res = app.use_code(&users[3].1, "REBUILT").await;
    assert_eq!((res.status.as_u16(), res.error_code()), (503, "try_again"), "{:?}", res.body);
    assert!(res.headers.contains_key("retry-after"));
    // The on-demand rebuild the 503 started (or the reconciler) restores the state.
    let gate = wait_for_gate_state(&app, "REBUILT").await;
    assert_eq!((gate.claims, gate.remaining()), (3, 2));

    // Earlier winners are still known; the rest compete for the 2 slots left.
    assert_eq!(app.use_code(&users[0].1, "REBUILT").await.status, 409);
    let tokens: Vec<String> = users[3..].iter().map(|(_, t)| t.clone()).collect();
    let responses = app.burst(&tokens, "REBUILT").await;
    assert_eq!(count_status(&responses, 200), 2);
    assert_eq!(app.redemption_counts(code.id).await, (5, 5));
    app.assert_money_invariants().await;
}

/// Runs the reconciler until a run settles something (releases or confirms a
/// claim), as its periodic job would; a run that hit a transient error on a
/// loaded machine is simply followed by the next. 5 s at most.
async fn run_until_settled(app: &TestApp) -> reconciler::RunStats {
    let mut stats = reconciler::run_once(&app.state).await.unwrap();
    for _ in 0..50 {
        if stats.claims_released + stats.claims_confirmed > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        stats = reconciler::run_once(&app.state).await.unwrap();
    }
    stats
}

/// Runs the reconciler until the code's gate state is back (5 s at most).
async fn wait_for_gate_state(app: &TestApp, code: &str) -> GateSnapshot {
    for _ in 0..50 {
        reconciler::run_once(&app.state).await.unwrap();
        if let Some(snapshot) = app.state.gate.snapshot(code).await.unwrap() {
            return snapshot;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the gate state of {code} was not rebuilt within 5 s");
}

#[tokio::test]
async fn a_claim_whose_gateway_died_is_released_after_the_grace_period() {
    let app = spawn_app_with(&[("CLAIM_GRACE_SECONDS", "3"), ("PG_STATEMENT_TIMEOUT_MS", "500")]).await;
    let code = app.create_code("ORPHAN", 10, 1).await;
    let mut users = app.create_users(2).await;
    let (ghost, _) = users.remove(0);
    let (_, token) = users.remove(0);
    // A gateway claims the only slot, then dies before committing.
    let claim = app.state.gate.claim("ORPHAN", &ghost.to_string()).await.unwrap();
    assert!(matches!(claim, redeem_gateway::redemption::gate::Claim::Granted { ticket: 0 }));
    assert_eq!(app.use_code(&token, "ORPHAN").await.status, 410, "the slot is held");

    // Within the grace period the reconciler leaves it alone.
    let stats = reconciler::run_once(&app.state).await.unwrap();
    assert_eq!(stats.claims_released, 0);
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    let stats = run_until_settled(&app).await;
    assert_eq!(stats.claims_released, 1);

    let res = app.use_code(&token, "ORPHAN").await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    assert_eq!(app.redemption_counts(code.id).await, (1, 1));
    app.assert_money_invariants().await;
}

#[tokio::test]
async fn a_committed_claim_left_pending_is_confirmed_not_released() {
    let app = spawn_app_with(&[("CLAIM_GRACE_SECONDS", "1"), ("PG_STATEMENT_TIMEOUT_MS", "500")]).await;
    app.create_code("DONE", 10, 2).await;
    let (user, token) = app.create_users(1).await.remove(0);
    assert_eq!(app.use_code(&token, "DONE").await.status, 200);
    // As if the gateway died between the commit and the confirm.
    let mut conn = app.redis().await;
    redis::cmd("ZADD").arg(app.key("DONE", "pending")).arg(0).arg(user).query_async::<()>(&mut conn).await.unwrap();

    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let stats = run_until_settled(&app).await;
    assert_eq!((stats.claims_released, stats.claims_confirmed), (0, 1));
    assert_eq!(app.use_code(&token, "DONE").await.status, 409, "the claim was kept");
    let gate = app.state.gate.snapshot("DONE").await.unwrap().unwrap();
    assert_eq!((gate.pending, gate.remaining()), (0, 1));
}

#[tokio::test]
async fn the_report_survives_a_redis_loss_with_the_synced_counters() {
    let app = spawn_app().await;
    app.create_code("KEPT", 10, 1).await;
    let users = app.create_users(3).await;
    for (_, token) in &users {
        app.use_code(token, "KEPT").await;
    }
    let admin = app.admin_token();
    let before = app.post("/codes/report", serde_json::json!({"code": "KEPT"}), Some(&admin)).await.body;
    reconciler::run_once(&app.state).await.unwrap(); // syncs the counters
    app.wipe_redis().await;
    wait_for_gate_state(&app, "KEPT").await; // rebuilt, counters seeded from Postgres
    let after = app.post("/codes/report", serde_json::json!({"code": "KEPT"}), Some(&admin)).await.body;
    assert_eq!(before["rejected"], after["rejected"]);
    assert_eq!(after["rejected"]["sold_out"], 2);
    assert_eq!((after["redeemed"].as_i64(), after["remaining"].as_i64()), (Some(1), Some(0)));
    assert!(after["synced_at"].is_string());
}

#[tokio::test]
async fn a_user_whose_own_claim_was_abandoned_is_settled_on_retry() {
    let app = spawn_app_with(&[("CLAIM_GRACE_SECONDS", "3"), ("PG_STATEMENT_TIMEOUT_MS", "500")]).await;
    let code = app.create_code("RETRY", 10, 1).await;
    let (user, token) = app.create_users(1).await.remove(0);
    // The user's first request reached a gateway that claimed, then died.
    let claim = app.state.gate.claim("RETRY", &user.to_string()).await.unwrap();
    assert!(matches!(claim, redeem_gateway::redemption::gate::Claim::Granted { .. }));

    // While a commit could still be running, the claim stands.
    assert_eq!(app.use_code(&token, "RETRY").await.status, 409);
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    // Past the grace period the retry settles it at once, without the reconciler.
    let res = app.use_code(&token, "RETRY").await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    assert_eq!(app.redemption_counts(code.id).await, (1, 1));
    assert_eq!(app.balance_of(user).await, 10);
    app.assert_money_invariants().await;
}
