//! Balance and ledger history.

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn transactions_are_the_callers_own_newest_first_and_paginated() {
    let app = spawn_app().await;
    for (i, name) in ["A1", "A2", "A3"].iter().enumerate() {
        app.create_code(name, 100 * (i as i64 + 1), 10).await;
    }
    let mut users = app.create_users(2).await;
    let (me, token) = users.remove(0);
    let (_, other_token) = users.remove(0);
    for name in ["A1", "A2", "A3"] {
        assert_eq!(app.use_code(&token, name).await.status, 200);
    }
    app.use_code(&other_token, "A1").await;

    let res = app.get("/wallet/transactions?limit=2", Some(&token)).await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    let items = res.body["items"].as_array().unwrap();
    assert_eq!(items.iter().map(|i| i["amount"].as_i64().unwrap()).collect::<Vec<_>>(), vec![300, 200]);
    let next = res.body["next_before"].as_i64().unwrap();
    let res = app.get(&format!("/wallet/transactions?limit=2&before={next}"), Some(&token)).await;
    let items = res.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["amount"], 100);
    assert!(items[0]["reference"].as_str().unwrap().starts_with("redemption:"));
    assert!(res.body["next_before"].is_null());

    let res = app.post("/wallet/balance", json!({}), Some(&token)).await;
    assert_eq!((res.body["user_id"].as_i64(), res.body["balance"].as_i64()), (Some(me), Some(600)));
    assert_eq!(res.body["currency"], "TOMAN");
    // An empty body is the same as {}.
    let res = app.post_raw("/wallet/balance", vec![], Some(&token)).await;
    assert_eq!(res.body["balance"], 600);
    app.assert_money_invariants().await;
}

#[tokio::test]
async fn a_user_with_no_credit_has_a_zero_balance_and_no_history() {
    let app = spawn_app().await;
    let (_, token) = app.create_users(1).await.remove(0);
    let res = app.post("/wallet/balance", json!({}), Some(&token)).await;
    assert_eq!((res.status.as_u16(), res.body["balance"].as_i64()), (200, Some(0)));
    let res = app.get("/wallet/transactions", Some(&token)).await;
    assert_eq!(res.body["items"].as_array().map(Vec::len), Some(0));
}
