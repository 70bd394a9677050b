//! The group read of balances (wallet::reader): requests share statements,
//! and every answer is as fresh as a query of its own.

use std::sync::Arc;
use std::time::Duration;

use redeem_gateway::auth::Scope;
use serde_json::json;

use crate::helpers::{into_response, spawn_app_with, Response, TestApp};

fn credit_token(app: &TestApp) -> String {
    app.service_token("topup", &[Scope::WalletCredit])
}

async fn balance(app: &TestApp, token: &str, body: serde_json::Value) -> Response {
    let req = app.client.post(format!("{}/wallet/balance", app.address)).bearer_auth(token).json(&body);
    into_response(req.send().await.expect("sent")).await
}

/// `n` balance requests at once (after a barrier), each (token, body).
async fn balances_at_once(app: &TestApp, calls: Vec<(String, serde_json::Value)>) -> Vec<Response> {
    let barrier = Arc::new(tokio::sync::Barrier::new(calls.len()));
    let tasks: Vec<_> = calls
        .into_iter()
        .map(|(token, body)| {
            let (client, url, barrier) =
                (app.client.clone(), format!("{}/wallet/balance", app.address), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                into_response(client.post(url).bearer_auth(token).json(&body).send().await.expect("sent")).await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// A stale read (a cache, or a request joining a statement sent before it
/// arrived) would answer a balance without the credit just answered. Many
/// users at once, one reader, so their balance reads share statements: each
/// user credits (a code redemption, then service credits) and at once reads
/// its balance, which must be the sum of everything credited so far.
#[tokio::test]
async fn each_user_reads_its_own_latest_credit_while_reads_are_grouped() {
    let app = Arc::new(spawn_app_with(&[("BALANCE_READERS", "1")]).await);
    app.create_code("FRESH", 1_000, 100).await;
    let users = app.create_users(40).await;
    let service = credit_token(&app);
    let before = app.state.balances.statements();
    let tasks: Vec<_> = users
        .into_iter()
        .map(|(user_id, token)| {
            let (app, service) = (app.clone(), service.clone());
            tokio::spawn(async move {
                let res = app.use_code_retrying(&token, "FRESH", 20).await;
                assert_eq!(res.status, 200, "{:?}", res.body);
                let mut expected = 1_000;
                let res = balance(&app, &token, json!({})).await;
                assert_eq!(
                    (res.status.as_u16(), res.body["balance"].as_i64()),
                    (200, Some(expected)),
                    "user {user_id}"
                );
                for round in 1..=5 {
                    let amount = user_id * 10 + round;
                    let body = json!({"user_id": user_id, "amount": amount,
                        "reference": format!("fresh-{user_id}-{round}"), "reason": "freshness"});
                    let res = app.post("/wallet/credits", body, Some(&service)).await;
                    assert_eq!(res.status, 200, "{:?}", res.body);
                    expected += amount;
                    let res = balance(&app, &token, json!({})).await;
                    assert_eq!(
                        (res.status.as_u16(), res.body["user_id"].as_i64(), res.body["balance"].as_i64()),
                        (200, Some(user_id), Some(expected)),
                        "user {user_id} round {round}: a stale balance"
                    );
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // 40 users x 6 reads; how many statements they took depends on timing.
    let statements = app.state.balances.statements() - before;
    assert!((1..=240).contains(&statements), "{statements} statements for 240 reads");
    app.assert_money_invariants().await;
}

/// Holds every balance read up: an ACCESS EXCLUSIVE lock on `wallets`, from
/// a connection of the test's own, so the reader's statement waits on it.
async fn lock_wallets(app: &TestApp) -> tokio_postgres::Client {
    let db = app.psql().await;
    db.batch_execute("BEGIN; LOCK TABLE wallets IN ACCESS EXCLUSIVE MODE").await.unwrap();
    db
}

/// Waits (4 s at most: below the statement timeout the held read runs
/// under) until `n` requests wait in the reader's queue.
async fn wait_queued(app: &TestApp, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    while app.state.balances.queued() < n && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Requests that queue while the reader is busy share one statement. The
/// one reader's first statement is held up by a lock until every other
/// request has queued behind it; each still gets its own user's balance.
#[tokio::test]
async fn concurrent_balance_requests_share_statements() {
    let app = spawn_app_with(&[("BALANCE_READERS", "1"), ("BALANCE_QUEUE_WAIT_MS", "30000")]).await;
    let users = app.create_users(100).await;
    {
        let db = app.state.pg.get().await.unwrap();
        db.execute(
            "INSERT INTO wallets (user_id, balance) SELECT id, id * 7 FROM users WHERE id = ANY($1)",
            &[&users.iter().map(|(id, _)| *id).collect::<Vec<_>>()],
        )
        .await
        .unwrap();
    }
    // Two requests per user: a batch with a user twice answers both.
    let calls: Vec<_> =
        users.iter().chain(users.iter()).map(|(_, token)| (token.clone(), json!({}))).collect::<Vec<_>>();
    let requests = calls.len();
    let before = app.state.balances.statements();
    let lock = lock_wallets(&app).await;
    let app = Arc::new(app);
    let fired = {
        let app = app.clone();
        tokio::spawn(async move { balances_at_once(&app, calls).await })
    };
    // One request is in the held read; the rest queue behind it.
    wait_queued(&app, requests - 1).await;
    lock.batch_execute("COMMIT").await.unwrap();
    let answers = fired.await.unwrap();
    let statements = app.state.balances.statements() - before;
    for (res, (user_id, _)) in answers.iter().zip(users.iter().chain(users.iter())) {
        assert_eq!(
            (res.status.as_u16(), res.body["user_id"].as_i64(), res.body["balance"].as_i64()),
            (200, Some(*user_id), Some(user_id * 7)),
            "{:?}",
            res.body
        );
    }
    assert!(statements < 20, "{statements} statements for {requests} requests: the reads were not grouped");
}

/// A full queue is refused at once (503 try_again), as the commit queue is.
#[tokio::test]
async fn a_full_balance_queue_answers_try_again() {
    let app =
        spawn_app_with(&[("BALANCE_READERS", "1"), ("BALANCE_QUEUE_MAX", "1"), ("BALANCE_QUEUE_WAIT_MS", "30000")])
            .await;
    let users = app.create_users(20).await;
    let calls: Vec<_> = users.iter().map(|(_, token)| (token.clone(), json!({}))).collect();
    let lock = lock_wallets(&app).await;
    let app = Arc::new(app);
    let fired = {
        let app = app.clone();
        tokio::spawn(async move { balances_at_once(&app, calls).await })
    };
    // The read holds one request, the queue one more: the rest are refused
    // while the lock is held (half of them at least, however late some
    // arrive on a busy machine).
    wait_queued(&app, 1).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    lock.batch_execute("COMMIT").await.unwrap();
    let answers = fired.await.unwrap();
    let refused = answers.iter().filter(|r| (r.status.as_u16(), r.error_code()) == (503, "try_again")).count();
    let read = answers.iter().filter(|r| r.status == 200 && r.body["balance"] == 0).count();
    assert_eq!(refused + read, answers.len(), "only 200 or 503 try_again");
    assert!(refused >= answers.len() / 2, "{refused} refused of {}", answers.len());
}

/// An admin reads other users' balances through the same grouped reads: each
/// answer is that user's, a user without a wallet has 0, an unknown user is
/// 404 and a user may still not read another's (403).
#[tokio::test]
async fn an_admin_reads_other_users_balances_with_the_same_rules() {
    let app = spawn_app_with(&[("BALANCE_READERS", "1")]).await;
    let users = app.create_users(30).await;
    let service = credit_token(&app);
    for (user_id, _) in users.iter().take(20) {
        let body =
            json!({"user_id": user_id, "amount": user_id * 3, "reference": format!("adm-{user_id}"), "reason": "x"});
        assert_eq!(app.post("/wallet/credits", body, Some(&service)).await.status, 200);
    }
    let admin = app.admin_token();
    let calls: Vec<_> = users.iter().map(|(id, _)| (admin.clone(), json!({"user_id": id}))).collect();
    let answers = balances_at_once(&app, calls).await;
    for (i, (res, (user_id, _))) in answers.iter().zip(&users).enumerate() {
        let expected = if i < 20 { user_id * 3 } else { 0 };
        assert_eq!(
            (res.status.as_u16(), res.body["user_id"].as_i64(), res.body["balance"].as_i64()),
            (200, Some(*user_id), Some(expected))
        );
    }
    let unknown = users.iter().map(|(id, _)| id).max().unwrap() + 1_000;
    let res = balance(&app, &admin, json!({"user_id": unknown})).await;
    assert_eq!((res.status.as_u16(), res.error_code()), (404, "not_found"));
    let (_, token) = &users[0];
    let res = balance(&app, token, json!({"user_id": users[1].0})).await;
    assert_eq!((res.status.as_u16(), res.error_code()), (403, "forbidden"));
    // The admin's own wallet (no user row behind the admin id): 0, as before.
    let res = balance(&app, &admin, json!({})).await;
    assert_eq!((res.status.as_u16(), res.body["balance"].as_i64()), (200, Some(0)));
}

/// BALANCE_READERS=0 turns the group read off: one statement per request,
/// the same answers.
#[tokio::test]
async fn with_the_group_read_off_each_request_is_its_own_statement() {
    let app = spawn_app_with(&[("BALANCE_READERS", "0")]).await;
    let users = app.create_users(10).await;
    let service = credit_token(&app);
    let body = json!({"user_id": users[0].0, "amount": 5, "reference": "off-1", "reason": "x"});
    assert_eq!(app.post("/wallet/credits", body, Some(&service)).await.status, 200);
    let before = app.state.balances.statements();
    let calls: Vec<_> = users.iter().map(|(_, token)| (token.clone(), json!({}))).collect();
    let answers = balances_at_once(&app, calls).await;
    assert_eq!(app.state.balances.statements() - before, 10);
    let balances: Vec<_> = answers.iter().map(|r| r.body["balance"].as_i64()).collect();
    assert_eq!(balances[0], Some(5));
    assert!(balances[1..].iter().all(|b| *b == Some(0)), "{balances:?}");
}
