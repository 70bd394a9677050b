//! Bad input gets a clear JSON error with the right status and changes nothing.

use serde_json::json;

use crate::helpers::{spawn_app, TestApp};

/// A fingerprint of everything a request could change.
async fn state_fingerprint(app: &TestApp) -> (i64, i64, i64, i64, i64, Vec<String>) {
    let mut conn = app.redis().await;
    let mut keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{}:*", app.prefix)).query_async(&mut conn).await.unwrap();
    keys.sort();
    let claims: i64 = redis::cmd("HLEN").arg(app.key("SAFE", "claims")).query_async(&mut conn).await.unwrap();
    (
        app.query_i64("SELECT count(*) FROM users", &[]).await,
        app.query_i64("SELECT count(*) FROM redemptions", &[]).await,
        app.query_i64("SELECT count(*) FROM ledger", &[]).await,
        app.query_i64("SELECT count(*) FROM codes", &[]).await,
        claims,
        keys,
    )
}

#[tokio::test]
async fn malformed_missing_wrong_typed_and_oversized_bodies_are_refused_cleanly() {
    let app = spawn_app().await;
    app.create_code("SAFE", 100, 10).await;
    let (_, token) = app.create_users(1).await.remove(0);
    let admin = app.admin_token();
    let before = state_fingerprint(&app).await;

    let long = "x".repeat(65);
    let huge = format!("{{\"code\": \"{}\"}}", "X".repeat(3_000_000)).into_bytes();
    // (name, path, body, token, status, error code)
    type Case<'a> = (&'a str, &'a str, Vec<u8>, Option<&'a str>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("use: malformed", "/codes/use", b"{\"code\": ".to_vec(), Some(&token), 400, "malformed_json"),
        ("use: not json", "/codes/use", b"code=SAFE".to_vec(), Some(&token), 400, "malformed_json"),
        ("use: empty body", "/codes/use", vec![], Some(&token), 400, "malformed_json"),
        ("use: missing field", "/codes/use", br#"{"nope": 1}"#.to_vec(), Some(&token), 422, "invalid_input"),
        ("use: wrong type", "/codes/use", br#"{"code": 42}"#.to_vec(), Some(&token), 422, "invalid_input"),
        ("use: null", "/codes/use", br#"{"code": null}"#.to_vec(), Some(&token), 422, "invalid_input"),
        ("use: empty code", "/codes/use", br#"{"code": "  "}"#.to_vec(), Some(&token), 422, "invalid_input"),
        ("use: bad chars", "/codes/use", br#"{"code": "SAFE}{"}"#.to_vec(), Some(&token), 422, "invalid_input"),
        ("use: too long", "/codes/use", json!({"code": long}).to_string().into_bytes(), Some(&token), 422, "invalid_input"),
        ("use: oversized", "/codes/use", huge.clone(), Some(&token), 413, "payload_too_large"),
        ("register: missing password", "/auth/register", br#"{"username": "carol"}"#.to_vec(), None, 422, "invalid_input"),
        ("register: short password", "/auth/register", br#"{"username": "carol", "password": "short"}"#.to_vec(), None, 422, "invalid_input"),
        ("register: bad username", "/auth/register", br#"{"username": "c a", "password": "long-enough-1"}"#.to_vec(), None, 422, "invalid_input"),
        ("register: empty username", "/auth/register", br#"{"username": "", "password": "long-enough-1"}"#.to_vec(), None, 422, "invalid_input"),
        ("register: bad phone", "/auth/register", br#"{"username": "carol", "password": "long-enough-1", "phone": "call me"}"#.to_vec(), None, 422, "invalid_input"),
        ("register: oversized", "/auth/register", huge.clone(), None, 413, "payload_too_large"),
        ("login: malformed", "/auth/login", b"{".to_vec(), None, 400, "malformed_json"),
        ("balance: malformed", "/wallet/balance", b"{]".to_vec(), Some(&token), 400, "malformed_json"),
        ("balance: wrong type", "/wallet/balance", br#"{"user_id": "me"}"#.to_vec(), Some(&token), 422, "invalid_input"),
        ("create: negative amount", "/admin/codes", br#"{"code": "NEG", "amount": -5, "limit": 3}"#.to_vec(), Some(&admin), 422, "invalid_input"),
        ("create: float amount", "/admin/codes", br#"{"code": "FLT", "amount": 1.5, "limit": 3}"#.to_vec(), Some(&admin), 422, "invalid_input"),
        ("create: zero limit", "/admin/codes", br#"{"code": "ZERO", "amount": 5, "limit": 0}"#.to_vec(), Some(&admin), 422, "invalid_input"),
        ("create: overflow", "/admin/codes", br#"{"code": "BIG", "amount": 99999999999999999999, "limit": 3}"#.to_vec(), Some(&admin), 422, "invalid_input"),
        ("create: window", "/admin/codes", br#"{"code": "WIN", "amount": 5, "limit": 3, "starts_at": "2030-01-02T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"}"#.to_vec(), Some(&admin), 422, "invalid_input"),
        ("create: duplicate", "/admin/codes", br#"{"code": "safe", "amount": 5, "limit": 3}"#.to_vec(), Some(&admin), 409, "code_exists"),
        ("report: missing", "/codes/report", b"{}".to_vec(), Some(&admin), 422, "invalid_input"),
        // PostgreSQL cannot store a NUL: refused as input, not a 500 (found by the fuzzer).
        ("create: NUL in voucher_type", "/admin/codes", br#"{"code": "NULV", "kind": "voucher", "limit": 3, "reward": {"percent": 2, "voucher_type": "a\u0000b", "valid_days": 3}}"#.to_vec(), Some(&admin), 422, "invalid_input"),
        ("create: NUL in a rule", "/admin/codes", br#"{"code": "NULR", "kind": "coupon", "limit": 3, "reward": {"discount": {"kind": "percent", "percent": 10}}, "rules": {"categories": ["a\u0000"]}}"#.to_vec(), Some(&admin), 422, "invalid_input"),
        ("bulk: NUL in batch", "/admin/codes/bulk", br#"{"prefix": "NULB", "count": 2, "amount": 5, "limit": 1, "batch": "b\u0000"}"#.to_vec(), Some(&admin), 422, "invalid_input"),
    ];
    for (name, path, body, tok, status, code) in cases {
        let res = app.post_raw(path, body, tok).await;
        assert_eq!(res.status.as_u16(), status, "{name}: {:?}", res.body);
        assert_eq!(res.error_code(), code, "{name}: {:?}", res.body);
        assert!(res.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}");
    }
    assert_eq!(state_fingerprint(&app).await, before, "a refused request changed state");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let app = spawn_app().await;
    let res = app.get("/no/such/route", None).await;
    assert_eq!((res.status.as_u16(), res.error_code()), (404, "not_found"));
    let res = app.get("/codes/use", None).await;
    assert!(res.status.is_client_error());
    assert!(!res.error_code().is_empty(), "{:?}", res.body);
    let res = app.get("/wallet/transactions?limit=1000", Some(&app.create_users(1).await[0].1)).await;
    assert_eq!((res.status.as_u16(), res.error_code()), (422, "invalid_input"));
    let res = app.get("/wallet/transactions?limit=abc", Some(&app.create_users(1).await[0].1)).await;
    assert_eq!((res.status.as_u16(), res.error_code()), (422, "invalid_input"));
}
