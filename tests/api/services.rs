//! Services as callers: service credentials kept apart from user and admin
//! tokens; wallet credits and debits exactly once per reference, never below
//! zero; vouchers spent once, on a top-up of their type, with the debit.

use std::collections::BTreeSet;
use std::sync::Arc;

use redeem_gateway::auth::Scope;
use redeem_gateway::codes::CodeName;
use serde_json::{json, Value};

use crate::helpers::{count_status, spawn_app, Response, TestApp};
use crate::vouchers::voucher_campaign;

fn wallet_token(app: &TestApp) -> String {
    app.service_token("topup", &[Scope::WalletCredit, Scope::WalletDebit])
}

async fn credit(app: &TestApp, user: i64, amount: i64, reference: &str) -> Response {
    let body = json!({"user_id": user, "amount": amount, "reference": reference, "reason": "test credit"});
    app.post("/wallet/credits", body, Some(&wallet_token(app))).await
}

async fn debit(app: &TestApp, body: Value) -> Response {
    app.post("/wallet/debits", body, Some(&wallet_token(app))).await
}

/// Fires every (path, body) at once, after a barrier, with `token`.
async fn fire(app: &TestApp, token: &str, calls: Vec<(&'static str, Value)>) -> Vec<Response> {
    let barrier = Arc::new(tokio::sync::Barrier::new(calls.len()));
    let tasks: Vec<_> = calls
        .into_iter()
        .map(|(path, body)| {
            let (client, url, token, barrier) =
                (app.client.clone(), format!("{}{path}", app.address), token.to_string(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let res = client.post(url).bearer_auth(token).json(&body).send().await.unwrap();
                let status = res.status();
                let headers = res.headers().clone();
                let body = res.json::<Value>().await.unwrap_or(Value::Null);
                Response { status, body, headers }
            })
        })
        .collect();
    let mut out = vec![];
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Like `fire`, while another transaction holds the user's wallet row for
/// `hold_ms`: every call gets as far as the wallet before any commits, so
/// the races the guards are for really happen (not one call after another).
async fn fire_held(app: &TestApp, user: i64, hold_ms: u64, calls: Vec<(&'static str, Value)>) -> Vec<Response> {
    let mut holder = app.state.pg.get().await.unwrap();
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM wallets WHERE user_id = $1 FOR UPDATE", &[&user]).await.unwrap();
    let release = async move {
        tokio::time::sleep(std::time::Duration::from_millis(hold_ms)).await;
        tx.commit().await.unwrap();
    };
    let token = wallet_token(app);
    let (answers, ()) = tokio::join!(fire(app, &token, calls), release);
    answers
}

async fn ledger_sum(app: &TestApp, user: i64) -> i64 {
    app.query_i64("SELECT coalesce(sum(amount), 0)::bigint FROM ledger WHERE user_id = $1", &[&user]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_reference_20_times_at_once_is_one_debit() {
    let app = spawn_app().await;
    let users = app.create_users(2).await;
    let (user, other) = (users[0].0, users[1].0);
    assert_eq!(credit(&app, user, 100_000, "fund-1").await.status, 200);

    let body = json!({"user_id": user, "amount": 30_000, "reference": "D-1", "reason": "order 1"});
    let answers = fire_held(&app, user, 700, vec![("/wallet/debits", body.clone()); 20]).await;
    assert_eq!(count_status(&answers, 200), 20, "{:?}", answers.iter().map(|r| &r.body).collect::<Vec<_>>());
    let entries: BTreeSet<i64> = answers.iter().map(|r| r.body["entry_id"].as_i64().unwrap()).collect();
    assert_eq!(entries.len(), 1, "one ledger entry, the same answer for every call");
    assert_eq!(answers.iter().filter(|r| r.body["replayed"] == false).count(), 1);
    assert!(answers.iter().all(|r| r.body["balance"] == 70_000 && r.body["wallet_change"] == -30_000));
    assert_eq!(app.balance_of(user).await, 70_000);
    assert_eq!(app.ledger_rows_of(user).await, 2);

    // The same reference for another movement: 409, nothing written.
    for (why, body) in [
        ("another amount", json!({"user_id": user, "amount": 30_001, "reference": "D-1", "reason": "x"})),
        ("another user", json!({"user_id": other, "amount": 30_000, "reference": "D-1", "reason": "x"})),
    ] {
        let res = debit(&app, body).await;
        assert_eq!((res.status.as_u16(), res.error_code()), (409, "reference_conflict"), "{why}");
    }
    let res = credit(&app, user, 30_000, "D-1").await;
    assert_eq!(
        (res.status.as_u16(), res.error_code()),
        (409, "reference_conflict"),
        "a credit under a debit's reference"
    );
    // Another service's reference space is its own.
    let checkout = app.service_token("checkout", &[Scope::WalletDebit]);
    let res = app.post("/wallet/debits", body, Some(&checkout)).await;
    assert_eq!((res.status.as_u16(), res.body["replayed"].as_bool()), (200, Some(false)));
    assert_eq!(app.balance_of(user).await, 40_000);

    // Credits too: 20 at once, one credit.
    let body = json!({"user_id": other, "amount": 5_000, "reference": "C-1", "reason": "cashback"});
    let answers = fire(&app, &wallet_token(&app), vec![("/wallet/credits", body); 20]).await;
    assert_eq!(count_status(&answers, 200), 20);
    assert_eq!(answers.iter().filter(|r| r.body["replayed"] == false).count(), 1);
    assert_eq!((app.balance_of(other).await, app.ledger_rows_of(other).await), (5_000, 1));
    app.assert_money_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn debits_racing_credits_never_take_a_balance_below_zero() {
    let app = spawn_app().await;
    let (user, _) = app.create_users(1).await.remove(0);
    assert_eq!(credit(&app, user, 50_000, "seed").await.status, 200);
    // 60 debits of 10,000 against 50,000 plus 20 credits of 10,000 arriving
    // at the same time: at most 25 debits can be paid, in whatever order.
    let mut calls = vec![];
    for i in 0..80 {
        if i % 4 == 3 {
            calls.push((
                "/wallet/credits",
                json!({"user_id": user, "amount": 10_000, "reference": format!("c-{i}"), "reason": "credit"}),
            ));
        } else {
            calls.push((
                "/wallet/debits",
                json!({"user_id": user, "amount": 10_000, "reference": format!("d-{i}"), "reason": "debit"}),
            ));
        }
    }
    let answers = fire_held(&app, user, 700, calls).await;
    let (mut paid, mut refused, mut credited) = (0, 0, 0);
    for r in &answers {
        match (r.status.as_u16(), r.body["direction"].as_str(), r.error_code()) {
            (200, Some("debit"), _) => paid += 1,
            (200, Some("credit"), _) => credited += 1,
            (409, _, "insufficient_funds") => refused += 1,
            other => panic!("unexpected answer {other:?}: {}", r.body),
        }
        if r.status == 200 {
            assert!(r.body["balance"].as_i64().unwrap() >= 0);
        }
    }
    assert_eq!((credited, paid + refused), (20, 60));
    assert!(paid <= 25, "paid {paid} debits with 250,000 available");
    let balance = app.balance_of(user).await;
    assert_eq!(balance, 50_000 + 200_000 - paid * 10_000);
    assert_eq!(balance, ledger_sum(&app, user).await, "balance == sum of the ledger");
    assert_eq!(app.ledger_rows_of(user).await, 1 + 20 + paid, "refused debits wrote nothing");
    println!("debits racing credits: {paid} paid, {refused} refused insufficient_funds, final balance {balance}");
    app.assert_money_invariants().await;
}

/// A voucher of `user` from a campaign (30%, at most 50,000, mobile_topup),
/// issued through the real campaign path.
async fn voucher_of(app: &TestApp, campaign: &str, user: i64) -> i64 {
    let name = CodeName::parse(campaign).unwrap();
    let outcome = redeem_gateway::vouchers::service::voucher_for(&app.state, user, &name).await;
    assert!(outcome.issued, "voucher issued");
    outcome.voucher.unwrap().id
}

fn topup(user: i64, amount: i64, reference: &str, voucher: i64, purchase_type: &str) -> Value {
    json!({"user_id": user, "amount": amount, "reference": reference, "reason": "mobile top-up",
           "voucher_id": voucher, "purchase_type": purchase_type})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_top_ups_racing_for_one_voucher_spend_it_once() {
    let app = spawn_app().await;
    app.create(voucher_campaign("TOPUP30", 10)).await;
    let (user, user_token) = app.create_users(1).await.remove(0);
    let voucher = voucher_of(&app, "TOPUP30", user).await;
    assert_eq!(credit(&app, user, 1_000_000, "fund").await.status, 200);

    // 10 top-ups (different references) race for the one voucher.
    let calls = (0..10).map(|i| ("/wallet/debits", topup(user, 100_000, &format!("t-{i}"), voucher, "mobile_topup")));
    let answers = fire_held(&app, user, 700, calls.collect()).await;
    assert_eq!(count_status(&answers, 200), 1, "{:?}", answers.iter().map(|r| &r.body).collect::<Vec<_>>());
    assert!(answers.iter().filter(|r| r.status != 200).all(|r| r.error_code() == "voucher_used"));
    let won = answers.iter().find(|r| r.status == 200).unwrap();
    // 30% of 100,000 = 30,000 (under the 50,000 cap): the wallet pays 70,000.
    assert_eq!((won.body["discount"].as_i64(), won.body["wallet_change"].as_i64()), (Some(30_000), Some(-70_000)));
    assert_eq!(app.balance_of(user).await, 930_000);
    assert_eq!(app.ledger_rows_of(user).await, 2);
    let spent = app.query_i64("SELECT count(*) FROM ledger WHERE voucher_id = $1", &[&voucher]).await;
    assert_eq!(spent, 1);

    // The user sees the voucher used, and the debit in their history.
    let listed = app.get("/vouchers", Some(&user_token)).await;
    assert!(listed.body["items"][0]["used_at"].is_string(), "{:?}", listed.body);
    let history = app.get("/wallet/transactions", Some(&user_token)).await;
    let first = &history.body["items"][0];
    assert_eq!((first["direction"].as_str(), first["amount"].as_i64()), (Some("debit"), Some(-70_000)));
    assert_eq!((first["voucher_id"].as_i64(), first["discount"].as_i64()), (Some(voucher), Some(30_000)));
    assert_eq!(history.body["items"][1]["direction"], "credit");

    // The cap: 30% of 1,000,000 would be 300,000; the voucher gives 50,000.
    let second = voucher_of(&app, "TOPUP30", app.create_users(1).await[0].0).await;
    let owner = app.query_i64("SELECT user_id FROM vouchers WHERE id = $1", &[&second]).await;
    assert_eq!(credit(&app, owner, 1_000_000, "fund-2").await.status, 200);
    let res = debit(&app, topup(owner, 1_000_000, "big", second, "mobile_topup")).await;
    assert_eq!((res.body["discount"].as_i64(), res.body["balance"].as_i64()), (Some(50_000), Some(50_000)));
    app.assert_money_invariants().await;
}

#[tokio::test]
async fn expired_foreign_or_wrong_type_vouchers_are_refused_and_nothing_is_written() {
    let app = spawn_app().await;
    app.create(voucher_campaign("TOPUP30", 10)).await;
    let users = app.create_users(2).await;
    let (user, stranger) = (users[0].0, users[1].0);
    let mine = voucher_of(&app, "TOPUP30", user).await;
    let theirs = voucher_of(&app, "TOPUP30", stranger).await;
    assert_eq!(credit(&app, user, 50_000, "fund").await.status, 200);
    // An expired voucher of the user's own, from a second campaign (one voucher per campaign and user).
    app.create(voucher_campaign("OLD", 10)).await;
    let old = voucher_of(&app, "OLD", user).await;
    let db = app.state.pg.get().await.unwrap();
    db.execute("UPDATE vouchers SET expires_at = now() - interval '1 second' WHERE id = $1", &[&old]).await.unwrap();

    let cases = [
        ("another user's voucher", topup(user, 10_000, "r1", theirs, "mobile_topup"), 404, "not_found"),
        ("an expired voucher", topup(user, 10_000, "r2", old, "mobile_topup"), 422, "voucher_expired"),
        ("the wrong purchase type", topup(user, 10_000, "r3", mine, "bill_payment"), 422, "voucher_wrong_type"),
        ("no such voucher", topup(user, 10_000, "r4", 99_999_999, "mobile_topup"), 404, "not_found"),
        ("more than the balance", topup(user, 100_000, "r5", mine, "mobile_topup"), 409, "insufficient_funds"),
    ];
    for (why, body, status, code) in cases {
        let res = debit(&app, body).await;
        assert_eq!((res.status.as_u16(), res.error_code()), (status, code), "{why}: {:?}", res.body);
    }
    assert_eq!(app.balance_of(user).await, 50_000, "no money moved");
    assert_eq!(app.ledger_rows_of(user).await, 1, "no ledger row written");
    let used = app.query_i64("SELECT count(*) FROM vouchers WHERE used_at IS NOT NULL", &[]).await;
    assert_eq!(used, 0, "no voucher spent (the refused debit rolled the voucher back too)");
    // The voucher still works for a top-up the balance covers.
    let res = debit(&app, topup(user, 10_000, "r6", mine, "mobile_topup")).await;
    assert_eq!((res.status.as_u16(), res.body["wallet_change"].as_i64()), (200, Some(-7_000)), "{:?}", res.body);
    app.assert_money_invariants().await;
}

#[tokio::test]
async fn each_caller_kind_stays_on_its_own_routes() {
    let app = spawn_app().await;
    app.create_code("KIND", 10, 10).await;
    let (user, user_token) = app.create_users(1).await.remove(0);
    let admin = app.admin_token();
    let service = wallet_token(&app);
    let credit_only = app.service_token("refunds", &[Scope::WalletCredit]);
    let body = json!({"user_id": user, "amount": 100, "reference": "k-1", "reason": "x"});
    // (why, method, path, body, token, status, error code)
    type Check<'a> = (&'a str, reqwest::Method, &'a str, Option<Value>, Option<&'a str>, u16, &'a str);
    let checks: Vec<Check> = vec![
        (
            "user token on a service route",
            reqwest::Method::POST,
            "/wallet/credits",
            Some(body.clone()),
            Some(user_token.as_str()),
            403,
            "forbidden",
        ),
        (
            "admin token on a service route",
            reqwest::Method::POST,
            "/wallet/debits",
            Some(body.clone()),
            Some(admin.as_str()),
            403,
            "forbidden",
        ),
        (
            "service token without the scope",
            reqwest::Method::POST,
            "/wallet/debits",
            Some(body.clone()),
            Some(credit_only.as_str()),
            403,
            "missing_scope",
        ),
        (
            "no token on a service route",
            reqwest::Method::POST,
            "/wallet/credits",
            Some(body.clone()),
            None,
            401,
            "unauthorized",
        ),
        (
            "service token on an admin route",
            reqwest::Method::GET,
            "/admin/codes",
            None,
            Some(service.as_str()),
            403,
            "forbidden",
        ),
        (
            "service token on the admin report",
            reqwest::Method::POST,
            "/codes/report",
            Some(json!({"code": "KIND"})),
            Some(service.as_str()),
            403,
            "forbidden",
        ),
        (
            "service token on a user route",
            reqwest::Method::POST,
            "/codes/use",
            Some(json!({"code": "KIND"})),
            Some(service.as_str()),
            403,
            "forbidden",
        ),
        (
            "service token on a user's balance",
            reqwest::Method::POST,
            "/wallet/balance",
            Some(json!({})),
            Some(service.as_str()),
            403,
            "forbidden",
        ),
    ];
    for (why, method, path, body, token, status, code) in checks {
        let res = app.request(method, path, body, token).await;
        assert_eq!((res.status.as_u16(), res.error_code()), (status, code), "{why}: {:?}", res.body);
    }
    assert_eq!((app.balance_of(user).await, app.ledger_rows_of(user).await), (0, 0), "nothing written");
    assert_eq!(credit(&app, user, 100, "k-1").await.status, 200, "the right credential works");
}

#[tokio::test]
async fn bad_movements_get_clear_errors_and_change_nothing() {
    let app = spawn_app().await;
    let (user, _) = app.create_users(1).await.remove(0);
    assert_eq!(credit(&app, user, 1_000, "fund").await.status, 200);
    let ok = json!({"user_id": user, "amount": 10, "reference": "ok-1", "reason": "fine"});
    let with = |field: &str, value: Value| {
        let mut b = ok.clone();
        b[field] = value;
        b
    };
    let without = |field: &str| {
        let mut b = ok.clone();
        b.as_object_mut().unwrap().remove(field);
        b
    };
    let cases = [
        ("zero amount", with("amount", json!(0)), 422),
        ("negative amount", with("amount", json!(-10)), 422),
        ("too large", with("amount", json!(1_000_000_000_001_i64)), 422),
        ("fractional", with("amount", json!(10.5)), 422),
        ("amount as text", with("amount", json!("10")), 422),
        ("reference with a space", with("reference", json!("a b")), 422),
        ("reference too long", with("reference", json!("r".repeat(101))), 422),
        ("empty reference", with("reference", json!("")), 422),
        ("empty reason", with("reason", json!("")), 422),
        ("reason too long", with("reason", json!("x".repeat(201))), 422),
        ("missing reason", without("reason"), 422),
        ("missing user", without("user_id"), 422),
        ("unknown field", with("balance", json!(5)), 422),
        ("voucher without purchase type", with("voucher_id", json!(1)), 422),
        ("unknown user", with("user_id", json!(987_654_321)), 404),
    ];
    for (why, body, status) in cases {
        let res = debit(&app, body).await;
        assert_eq!(res.status.as_u16(), status, "{why}: {:?}", res.body);
        assert!(!res.error_code().is_empty(), "{why}: a JSON error");
    }
    let res = app.post_raw("/wallet/debits", b"{\"user_id\": ".to_vec(), Some(&wallet_token(&app))).await;
    assert_eq!((res.status.as_u16(), res.error_code()), (400, "malformed_json"));
    assert_eq!((app.balance_of(user).await, app.ledger_rows_of(user).await), (1_000, 1), "nothing written");
}

/// Review finding: a retry of a movement that committed is answered as a
/// replay even if the user was disabled in between (the service must learn
/// the money moved), while a new movement for that user is refused.
#[tokio::test]
async fn a_committed_movement_replays_after_its_user_is_disabled() {
    let app = spawn_app().await;
    let (user, _) = app.create_users(1).await.remove(0);
    assert_eq!(credit(&app, user, 100_000, "fund").await.status, 200);
    let body = json!({"user_id": user, "amount": 40_000, "reference": "d-1", "reason": "top-up"});
    assert_eq!(debit(&app, body.clone()).await.status, 200);
    let res = app.post(&format!("/admin/users/{user}/disable"), json!({}), Some(&app.admin_token())).await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    let retry = debit(&app, body).await;
    assert_eq!((retry.status.as_u16(), retry.body["replayed"].as_bool()), (200, Some(true)), "{:?}", retry.body);
    let new = debit(&app, json!({"user_id": user, "amount": 1_000, "reference": "d-2", "reason": "x"})).await;
    assert_eq!((new.status.as_u16(), new.error_code()), (422, "user_disabled"));
    assert_eq!(app.balance_of(user).await, 60_000);
    app.assert_money_invariants().await;
}

/// Review finding: a voucher whose discount floors to 0 on this amount is
/// refused, not burned for nothing.
#[tokio::test]
async fn a_voucher_worth_nothing_on_the_amount_is_refused_and_not_spent() {
    let app = spawn_app().await;
    app.create(voucher_campaign("TINY", 10)).await;
    let (user, _) = app.create_users(1).await.remove(0);
    let voucher = voucher_of(&app, "TINY", user).await;
    assert_eq!(credit(&app, user, 1_000, "fund").await.status, 200);
    // 30% of 3 Toman floors to 0.
    let res = debit(&app, topup(user, 3, "tiny-1", voucher, "mobile_topup")).await;
    assert_eq!((res.status.as_u16(), res.error_code()), (422, "invalid_input"), "{:?}", res.body);
    let used = app.query_i64("SELECT count(*) FROM vouchers WHERE used_at IS NOT NULL", &[]).await;
    assert_eq!(used, 0, "the voucher is not spent");
    assert_eq!(app.balance_of(user).await, 1_000);
    app.assert_money_invariants().await;
}
