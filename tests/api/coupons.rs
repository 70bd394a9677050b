//! Checkout coupons: quote, idempotent redeem per order, cancel once.

use redeem_gateway::codes::admin::CreateCode;
use redeem_gateway::codes::CodeKind;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, Response, TestApp};

pub fn coupon(code: &str, limit: i64, per_user: i64, rules: Value) -> CreateCode {
    CreateCode {
        kind: Some(CodeKind::Coupon),
        amount: None,
        per_user_limit: Some(per_user),
        reward: Some(
            json!({"kind": {"type": "percent", "percent": 10}, "max_discount": 50000, "min_order_amount": 1000}),
        ),
        rules: Some(rules),
        ..CreateCode::credit(code.into(), 1, limit)
    }
}

pub fn order(number: &str) -> Value {
    json!({"number": number, "payment_method": "card", "lines": [
        {"sku": "SIM-1", "category": "mobile", "unit_price": 100000, "quantity": 2},
        {"sku": "BOOK-9", "category": "books", "unit_price": 30000, "quantity": 1}
    ]})
}

async fn redeem(app: &TestApp, token: &str, code: &str, number: &str) -> Response {
    app.post("/coupons/redeem", json!({"code": code, "order": order(number)}), Some(token)).await
}

#[tokio::test]
async fn a_quote_gives_the_discount_or_the_reasons_and_consumes_nothing() {
    let app = spawn_app().await;
    app.create(coupon("MOBILE10", 5, 1, json!({"categories": ["mobile"], "payment_methods": ["card"]}))).await;
    let (_, token) = app.create_users(1).await.remove(0);
    let res = app.post("/coupons/quote", json!({"code": "mobile10", "order": order("A-1")}), Some(&token)).await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    // 10% of the mobile lines only (200,000), floor: 20,000.
    assert_eq!((res.body["eligible"].as_bool(), res.body["eligible_subtotal"].as_i64()), (Some(true), Some(200_000)));
    assert_eq!((res.body["discount"].as_i64(), res.body["new_total"].as_i64()), (Some(20_000), Some(210_000)));

    let mut cash = order("A-2");
    cash["payment_method"] = json!("cash");
    let res = app.post("/coupons/quote", json!({"code": "MOBILE10", "order": cash}), Some(&token)).await;
    assert_eq!(res.body["eligible"], false);
    assert_eq!(res.body["reasons"], json!(["payment_method_not_allowed"]));
    assert_eq!(res.body["discount"], 0);
    let gate = app.state.gate.snapshot("MOBILE10").await.unwrap().unwrap();
    assert_eq!(gate.remaining(), 5, "quotes consume nothing");
    // Not eligible is refused at redeem too, with the reasons.
    let res = app.post("/coupons/redeem", json!({"code": "MOBILE10", "order": cash}), Some(&token)).await;
    assert_eq!((res.status.as_u16(), res.error_code()), (422, "not_eligible"));
    assert!(res.body["error"]["message"].as_str().unwrap().contains("payment_method_not_allowed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_order_redeemed_20_times_at_once_is_one_use() {
    let app = spawn_app().await;
    let code = app.create(coupon("ONCEPERORDER", 50, 5, json!({}))).await;
    let (_, token) = app.create_users(1).await.remove(0);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (client, url, token) = (app.client.clone(), format!("{}/coupons/redeem", app.address), token.clone());
            tokio::spawn(async move {
                let res = client
                    .post(url)
                    .bearer_auth(token)
                    .json(&json!({"code": "ONCEPERORDER", "order": order("ORD-7")}))
                    .send()
                    .await
                    .unwrap();
                (res.status().as_u16(), res.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut answers = vec![];
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    let ids: std::collections::BTreeSet<i64> =
        answers.iter().map(|(_, b)| b["redemption_id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 1, "one redemption, the same answer for every retry");
    assert_eq!(answers.iter().filter(|(_, b)| b["replayed"] == false).count(), 1);
    assert!(answers.iter().all(|(_, b)| b["discount"] == 23_000));
    let uses = app.query_i64("SELECT count(*) FROM coupon_redemptions WHERE code_id = $1", &[&code.id]).await;
    assert_eq!(uses, 1);
    let gate = app.state.gate.snapshot("ONCEPERORDER").await.unwrap().unwrap();
    assert_eq!(gate.remaining(), 49, "one use consumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coupon_burst_with_repeated_orders_never_passes_the_limit() {
    let app = spawn_app().await;
    let code = app.create(coupon("TEN", 10, 1, json!({}))).await;
    let users = app.create_users(30).await;
    // 30 users, each sends its order 4 times at once: 120 requests, 30 orders, 10 uses.
    let mut tasks = vec![];
    for (i, (_, token)) in users.iter().enumerate() {
        for _ in 0..4 {
            let (client, url, token) = (app.client.clone(), format!("{}/coupons/redeem", app.address), token.clone());
            let body = json!({"code": "TEN", "order": order(&format!("B-{i}"))});
            tasks.push(tokio::spawn(async move {
                let res = client.post(url).bearer_auth(token).json(&body).send().await.unwrap();
                (i, res.status().as_u16(), res.json::<Value>().await.unwrap())
            }));
        }
    }
    let mut by_order = std::collections::BTreeMap::<usize, Vec<(u16, Value)>>::new();
    for t in tasks {
        let (i, s, b) = t.await.unwrap();
        by_order.entry(i).or_default().push((s, b));
    }
    let applied: Vec<_> = by_order.iter().filter(|(_, a)| a.iter().any(|(s, _)| *s == 200)).collect();
    assert_eq!(applied.len(), 10, "exactly the limit of orders got the coupon");
    for (i, answers) in &applied {
        let ids: std::collections::BTreeSet<_> =
            answers.iter().filter(|(s, _)| *s == 200).map(|(_, b)| b["redemption_id"].as_i64()).collect();
        assert_eq!(ids.len(), 1, "order {i}: one redemption");
    }
    let uses = app
        .query_i64("SELECT count(*) FROM coupon_redemptions WHERE code_id = $1 AND status = 'applied'", &[&code.id])
        .await;
    assert_eq!(uses, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_gives_the_use_back_exactly_once_even_when_called_concurrently() {
    let app = spawn_app().await;
    app.create(coupon("LASTONE", 1, 1, json!({}))).await;
    let users = app.create_users(3).await;
    let res = redeem(&app, &users[0].1, "LASTONE", "C-1").await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    let id = res.body["redemption_id"].as_i64().unwrap();
    assert_eq!(redeem(&app, &users[1].1, "LASTONE", "C-2").await.status, 410);

    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (client, url, token) =
                (app.client.clone(), format!("{}/coupons/redemptions/{id}/cancel", app.address), users[0].1.clone());
            tokio::spawn(async move { client.post(url).bearer_auth(token).send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut statuses = vec![];
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [vec![200], vec![409; 9]].concat());
    let gate = app.state.gate.snapshot("LASTONE").await.unwrap().unwrap();
    assert_eq!(gate.remaining(), 1, "one use back, not more");

    // Someone else's redemption cannot be cancelled (it looks absent).
    let res = app.post(&format!("/coupons/redemptions/{id}/cancel"), json!({}), Some(&users[1].1)).await;
    assert_eq!(res.status, 404);
    // The slot is redeemable again, once.
    assert_eq!(redeem(&app, &users[1].1, "LASTONE", "C-2").await.status, 200);
    assert_eq!(redeem(&app, &users[2].1, "LASTONE", "C-3").await.status, 410);
    // The cancelled order stays cancelled: a retry replays it, consuming nothing.
    let res = redeem(&app, &users[0].1, "LASTONE", "C-1").await;
    assert_eq!((res.status.as_u16(), res.body["status"].as_str()), (200, Some("cancelled")));
}

#[tokio::test]
async fn the_per_user_limit_counts_applied_orders() {
    let app = spawn_app().await;
    app.create(coupon("TWICE", 100, 2, json!({}))).await;
    let (_, token) = app.create_users(1).await.remove(0);
    assert_eq!(redeem(&app, &token, "TWICE", "P-1").await.status, 200);
    let second = redeem(&app, &token, "TWICE", "P-2").await;
    assert_eq!(second.status, 200);
    let res = redeem(&app, &token, "TWICE", "P-3").await;
    assert_eq!((res.status.as_u16(), res.error_code()), (409, "per_user_limit"));
    let gate = app.state.gate.snapshot("TWICE").await.unwrap().unwrap();
    assert_eq!(gate.remaining(), 98, "the refused third use gave its ticket back");
    // Cancelling one frees a per-user slot.
    let id = second.body["redemption_id"].as_i64().unwrap();
    assert_eq!(app.post(&format!("/coupons/redemptions/{id}/cancel"), json!({}), Some(&token)).await.status, 200);
    assert_eq!(redeem(&app, &token, "TWICE", "P-3").await.status, 200);
}
