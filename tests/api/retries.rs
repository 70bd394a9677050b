//! Safe retries: a repeat without a key learns its redemption (409 with it);
//! an `Idempotency-Key` answers the operation's outcome — 200 when the credit
//! committed, even when the first answer was a 503 because the gateway lost
//! sight of a commit that landed — and the same refusal otherwise.

use std::time::Duration;

use serde_json::json;

use crate::coupons::{coupon, order};
use crate::helpers::{postgres_address, spawn_app, spawn_app_via, Response, TestApp};
use crate::pgproxy::PgProxy;

async fn use_code_with(app: &TestApp, token: &str, code: &str, key: Option<&str>) -> Response {
    let mut req = app.client.post(format!("{}/codes/use", app.address)).bearer_auth(token).json(&json!({"code": code}));
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    crate::helpers::into_response(req.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_that_landed_while_the_gateway_saw_an_error_is_answered_200_on_retry() {
    // The commit's own parameter (the ledger kind) marks the message whose
    // reply the proxy loses once armed.
    let proxy = PgProxy::start(postgres_address(), b"code_credit").await;
    let app = spawn_app_via(&[], Some(proxy.port)).await;
    let code = app.create_code("AMBIGUOUS", 700, 10).await;
    let (user, token) = app.create_users(1).await.remove(0);

    proxy.arm();
    let key = "8d0f5a52-5f7e-4d3c-9a43-ambiguous";
    let first = use_code_with(&app, &token, "AMBIGUOUS", Some(key)).await;
    assert_eq!(first.status, 503, "the gateway lost the commit's reply: {:?}", first.body);
    assert_eq!(first.error_code(), "try_again");
    assert_eq!(proxy.cut.load(std::sync::atomic::Ordering::SeqCst), 1, "exactly the commit's reply was lost");
    // Yet the commit landed: the user is credited.
    assert_eq!((app.ledger_rows_of(user).await, app.balance_of(user).await), (1, 700), "the commit landed");

    // The same key: the operation's outcome, from Postgres — it committed.
    let again = use_code_with(&app, &token, "AMBIGUOUS", Some(key)).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.body, json!({"code": "AMBIGUOUS", "amount": 700, "balance": 700}));
    // And from then on the kept answer, marked as a replay.
    let replay = use_code_with(&app, &token, "AMBIGUOUS", Some(key)).await;
    assert_eq!((replay.status.as_u16(), &replay.body), (200, &again.body));
    assert_eq!(replay.headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));

    // Without a key: the contract's 409, with the redemption beside the error.
    let keyless = use_code_with(&app, &token, "AMBIGUOUS", None).await;
    assert_eq!((keyless.status.as_u16(), keyless.error_code()), (409, "already_redeemed"));
    let r = &keyless.body["redemption"];
    assert_eq!(
        (r["code"].as_str(), r["amount"].as_i64(), r["balance"].as_i64()),
        (Some("AMBIGUOUS"), Some(700), Some(700))
    );
    assert!(r["redeemed_at"].as_str().is_some_and(|t| t.len() >= 20), "{r}");
    assert!(r["redemption_id"].as_i64().is_some());

    // Nothing credited twice.
    assert_eq!((app.ledger_rows_of(user).await, app.balance_of(user).await), (1, 700));
    assert_eq!(app.redemption_counts(code.id).await, (1, 1));
    app.assert_money_invariants().await;
}

#[tokio::test]
async fn a_key_answers_the_same_outcome_and_refuses_another_body() {
    let app = spawn_app().await;
    app.create_code("KEYED", 100, 10).await;
    app.create_code("OTHER", 100, 10).await;
    let users = app.create_users(2).await;
    let ((user, token), (_, token2)) = (&users[0], &users[1]);

    let first = use_code_with(&app, token, "KEYED", Some("order-42")).await;
    assert_eq!((first.status.as_u16(), &first.body), (200, &json!({"code": "KEYED", "amount": 100, "balance": 100})));
    // The same request again (case differs: the same code): the same answer, nothing more credited.
    let again = use_code_with(&app, token, "keyed", Some("order-42")).await;
    assert_eq!((again.status.as_u16(), &again.body), (200, &first.body));
    assert_eq!(app.ledger_rows_of(*user).await, 1);
    // Another body under the key: refused, nothing done.
    let other = use_code_with(&app, token, "OTHER", Some("order-42")).await;
    assert_eq!((other.status.as_u16(), other.error_code()), (422, "idempotency_key_reused"));
    assert_eq!(app.ledger_rows_of(*user).await, 1);
    // Keys are per caller: another user's "order-42" is their own.
    let theirs = use_code_with(&app, token2, "KEYED", Some("order-42")).await;
    assert_eq!(theirs.status, 200, "{:?}", theirs.body);

    // A refusal is answered the same on a repeat, even once things changed.
    app.create_code("ONE", 5, 1).await;
    assert_eq!(use_code_with(&app, token2, "ONE", None).await.status, 200);
    let sold = use_code_with(&app, token, "ONE", Some("late")).await;
    assert_eq!((sold.status.as_u16(), sold.error_code()), (410, "sold_out"));
    let admin = app.admin_token();
    let raised = app.request(reqwest::Method::PATCH, "/admin/codes/ONE", Some(json!({"limit": 2})), Some(&admin)).await;
    assert_eq!(raised.status, 200);
    let still = use_code_with(&app, token, "ONE", Some("late")).await;
    assert_eq!((still.status.as_u16(), still.error_code()), (410, "sold_out"), "the key's outcome stands");
    assert_eq!(use_code_with(&app, token, "ONE", Some("later")).await.status, 200, "a new key is a new request");
}

#[tokio::test]
async fn bad_idempotency_keys_are_400_and_change_nothing() {
    let app = spawn_app().await;
    app.create_code("BADKEY", 100, 10).await;
    let (user, token) = app.create_users(1).await.remove(0);
    let long = "k".repeat(256);
    for bad in ["", "has space", long.as_str(), "tab\there"] {
        let res = use_code_with(&app, &token, "BADKEY", Some(bad)).await;
        assert_eq!(
            (res.status.as_u16(), res.error_code()),
            (400, "invalid_idempotency_key"),
            "{bad:?}: {:?}",
            res.body
        );
    }
    assert_eq!(app.ledger_rows_of(user).await, 0);
    assert_eq!(use_code_with(&app, &token, "BADKEY", Some(&"k".repeat(255))).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_still_in_flight_is_409_and_then_replays() {
    let app = spawn_app().await;
    app.create_code("FIRST", 10, 10).await;
    app.create_code("SLOW", 20, 10).await;
    let (user, token) = app.create_users(1).await.remove(0);
    assert_eq!(use_code_with(&app, &token, "FIRST", None).await.status, 200, "the user has a wallet row");

    // Hold the user's wallet row: the commit of the first request waits on it.
    let mut psql = app.psql().await;
    let tx = psql.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM wallets WHERE user_id = $1 FOR UPDATE", &[&user]).await.unwrap();
    let in_flight = {
        let (client, url, token) = (app.client.clone(), format!("{}/codes/use", app.address), token.clone());
        tokio::spawn(async move {
            let res = client.post(url).bearer_auth(token).header("Idempotency-Key", "slow-1");
            crate::helpers::into_response(res.json(&json!({"code": "SLOW"})).send().await.unwrap()).await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = use_code_with(&app, &token, "SLOW", Some("slow-1")).await;
    assert_eq!((second.status.as_u16(), second.error_code()), (409, "idempotency_in_progress"));
    assert!(second.headers.get("retry-after").is_some());
    tx.rollback().await.unwrap();
    let first = in_flight.await.unwrap();
    assert_eq!((first.status.as_u16(), first.body["balance"].as_i64()), (200, Some(30)));
    let replay = use_code_with(&app, &token, "SLOW", Some("slow-1")).await;
    assert_eq!((replay.status.as_u16(), &replay.body), (200, &first.body));
    assert_eq!(app.ledger_rows_of(user).await, 2);
}

#[tokio::test]
async fn a_coupon_use_under_a_key_replays_and_the_key_refuses_another_order() {
    let app = spawn_app().await;
    app.create(coupon("KEYED10", 5, 3, json!({}))).await;
    let (user_id, _) = app.create_users(1).await.remove(0);
    let checkout = app.checkout_token();
    let redeem = |number: &'static str| {
        let req = app
            .client
            .post(format!("{}/coupons/redeem", app.address))
            .bearer_auth(&checkout)
            .header("Idempotency-Key", "checkout-7")
            .json(&json!({"code": "KEYED10", "user_id": user_id, "order": order(number)}));
        async move { crate::helpers::into_response(req.send().await.unwrap()).await }
    };
    let first = redeem("K-1").await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let again = redeem("K-1").await;
    assert_eq!((again.status.as_u16(), &again.body), (200, &first.body));
    let other = redeem("K-2").await;
    assert_eq!((other.status.as_u16(), other.error_code()), (422, "idempotency_key_reused"));
    let gate = app.state.gate.snapshot("KEYED10").await.unwrap().unwrap();
    assert_eq!(gate.remaining(), 4, "one use consumed");
}
