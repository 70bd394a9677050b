//! Register, login, and every protected route refusing bad tokens.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp, SECRET};

#[tokio::test]
async fn register_then_login_gives_a_token_that_works() {
    let app = spawn_app().await;
    let res = app.post("/auth/register", json!({"username": "Alice", "password": "correct-horse-1"}), None).await;
    assert_eq!(res.status, 201, "{:?}", res.body);
    assert_eq!(res.body["username"], "alice");
    let user_id = res.body["user_id"].as_i64().unwrap();

    let res = app.post("/auth/register", json!({"username": "alice", "password": "another-pass-2"}), None).await;
    assert_eq!((res.status.as_u16(), res.error_code()), (409, "username_taken"));

    let res = app.post("/auth/login", json!({"username": "ALICE", "password": "correct-horse-1"}), None).await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    assert_eq!(res.body["token_type"], "Bearer");
    assert_eq!(res.body["expires_in"], 3600);
    let token = res.body["access_token"].as_str().unwrap().to_string();
    let res = app.post("/wallet/balance", json!({}), Some(&token)).await;
    assert_eq!((res.status.as_u16(), res.body["user_id"].as_i64()), (200, Some(user_id)));
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_answer() {
    let app = spawn_app().await;
    app.post("/auth/register", json!({"username": "bob", "password": "correct-horse-1"}), None).await;
    let wrong = app.post("/auth/login", json!({"username": "bob", "password": "wrong-horse-1"}), None).await;
    let unknown = app.post("/auth/login", json!({"username": "nobody", "password": "wrong-horse-1"}), None).await;
    assert_eq!((wrong.status.as_u16(), wrong.error_code()), (401, "invalid_credentials"));
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(wrong.status, unknown.status);
}

#[tokio::test]
async fn a_password_only_user_made_by_the_cli_cannot_log_in() {
    let app = spawn_app().await;
    let db = app.state.pg.get().await.unwrap();
    db.execute("INSERT INTO users (username, password_hash) VALUES ('operator', '!')", &[]).await.unwrap();
    let res = app.post("/auth/login", json!({"username": "operator", "password": "anything-at-all"}), None).await;
    assert_eq!(res.status, 401);
}

fn sign(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Tokens that must all be refused, each with what is wrong with it.
fn bad_tokens(user_id: i64) -> Vec<(&'static str, Option<String>)> {
    let claims = |exp: i64, role: &str| {
        json!({"sub": user_id.to_string(), "role": role, "iss": "redeem-gateway", "aud": "redeem-gateway",
               "iat": now(), "exp": exp})
    };
    vec![
        ("no token", None),
        ("forged", Some(sign(claims(now() + 600, "admin"), "not-the-secret-but-long-enough-0123456789"))),
        ("expired", Some(sign(claims(now() - 3600, "admin"), SECRET))),
        ("garbage", Some("abc.def.ghi".into())),
        (
            "alg none",
            Some(format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", {
                use base64::Engine;
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims(now() + 600, "admin").to_string())
            })),
        ),
    ]
}

async fn protected_routes(app: &TestApp) -> Vec<(Method, &'static str, Option<Value>)> {
    let _ = app;
    vec![
        (Method::POST, "/codes/use", Some(json!({"code": "GUARDED"}))),
        (Method::POST, "/wallet/balance", Some(json!({}))),
        (Method::GET, "/wallet/transactions", None),
        (Method::POST, "/codes/report", Some(json!({"code": "GUARDED"}))),
        (Method::POST, "/admin/codes", Some(json!({"code": "NEWCODE", "amount": 1, "limit": 1}))),
        (Method::GET, "/admin/codes", None),
        (Method::GET, "/admin/codes/GUARDED", None),
    ]
}

#[tokio::test]
async fn every_protected_route_refuses_missing_forged_and_expired_tokens() {
    let app = spawn_app().await;
    let code = app.create_code("GUARDED", 100, 10).await;
    let (user_id, _) = app.create_users(1).await.remove(0);
    for (method, path, body) in protected_routes(&app).await {
        for (defect, token) in bad_tokens(user_id) {
            let res = app.request(method.clone(), path, body.clone(), token.as_deref()).await;
            assert_eq!(res.status, 401, "{method} {path} with {defect} token: {:?}", res.body);
            assert!(matches!(res.error_code(), "unauthorized" | "token_expired"), "{defect}: {:?}", res.body);
        }
    }
    let expired = bad_tokens(user_id)[2].1.clone();
    let res = app.request(Method::POST, "/wallet/balance", Some(json!({})), expired.as_deref()).await;
    assert_eq!(res.error_code(), "token_expired");
    // Nothing changed.
    assert_eq!(app.redemption_counts(code.id).await, (0, 0));
    assert_eq!(app.query_i64("SELECT count(*) FROM codes", &[]).await, 1);
}

#[tokio::test]
async fn plain_users_cannot_use_admin_routes_or_read_others() {
    let app = spawn_app().await;
    app.create_code("GUARDED", 100, 10).await;
    let mut users = app.create_users(2).await;
    let (_, token) = users.remove(0);
    let (other, _) = users.remove(0);
    for (method, path, body) in protected_routes(&app).await.into_iter().skip(3) {
        let res = app.request(method.clone(), path, body, Some(&token)).await;
        assert_eq!((res.status.as_u16(), res.error_code()), (403, "forbidden"), "{method} {path}");
    }
    let res = app.post("/wallet/balance", json!({"user_id": other}), Some(&token)).await;
    assert_eq!((res.status.as_u16(), res.error_code()), (403, "forbidden"));
    assert_eq!(app.query_i64("SELECT count(*) FROM codes", &[]).await, 1);

    // An admin may.
    let res = app.post("/wallet/balance", json!({"user_id": other}), Some(&app.admin_token())).await;
    assert_eq!(
        (res.status.as_u16(), res.body["user_id"].as_i64(), res.body["balance"].as_i64()),
        (200, Some(other), Some(0))
    );
}
