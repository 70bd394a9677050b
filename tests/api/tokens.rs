//! Every token defect an attacker would try is refused (401, or 403 for a
//! user token on an admin route) and changes nothing.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use redeem_gateway::auth::{Role, TokenKeys};
use redeem_gateway::config::Config;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, TestApp, SECRET};

fn keys_for(secret: &str) -> TokenKeys {
    let config = Config::from_lookup(|name| match name {
        "DATABASE_URL" => Some("postgres://x/y".into()),
        "REDIS_URL" => Some("redis://x/".into()),
        "JWT_SECRET" => Some(secret.into()),
        "APP_ENV" => Some("dev".into()),
        _ => None,
    })
    .unwrap();
    TokenKeys::new(&config)
}

fn claims(user_id: i64, exp_offset: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"sub": user_id.to_string(), "role": "user", "iss": "redeem-gateway", "aud": "redeem-gateway",
           "iat": now, "exp": now + exp_offset})
}

fn sign(claims: &Value, alg: Algorithm, secret: &str) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

async fn redeem_with(app: &TestApp, token: Option<&str>) -> u16 {
    app.request(Method::POST, "/codes/use", Some(json!({"code": "TOKENS"})), token).await.status.as_u16()
}

#[tokio::test]
async fn each_token_defect_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let code = app.create_code("TOKENS", 10, 100).await;
    let (user, good) = app.create_users(1).await.remove(0);
    let mut wrong_iss = claims(user, 600);
    wrong_iss["iss"] = json!("someone-else");
    let mut wrong_aud = claims(user, 600);
    wrong_aud["aud"] = json!("another-service");
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let alg_none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims(user, 600)));
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("bad signature", Some(sign(&claims(user, 600), Algorithm::HS256, "not-the-secret-0123456789abcdef0123"))),
        ("alg none", Some(alg_none)),
        ("another algorithm (HS512)", Some(sign(&claims(user, 600), Algorithm::HS512, SECRET))),
        ("expired", Some(sign(&claims(user, -3600), Algorithm::HS256, SECRET))),
        ("wrong iss", Some(sign(&wrong_iss, Algorithm::HS256, SECRET))),
        ("wrong aud", Some(sign(&wrong_aud, Algorithm::HS256, SECRET))),
        ("rotated-out key", Some(keys_for("an-old-secret-that-was-rotated-out-0123").issue(user, Role::User).unwrap())),
    ];
    for (defect, token) in &cases {
        assert_eq!(redeem_with(&app, token.as_deref()).await, 401, "{defect}");
    }
    // A user token on an admin route.
    let res = app.post("/codes/report", json!({"code": "TOKENS"}), Some(&good)).await;
    assert_eq!(res.status, 403);
    // A disabled ("deleted") user's valid token.
    let res = app.post(&format!("/admin/users/{user}/disable"), json!({}), Some(&app.admin_token())).await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    assert_eq!(redeem_with(&app, Some(&good)).await, 401, "disabled user");
    assert_eq!(app.redemption_counts(code.id).await, (0, 0), "nothing changed");
    // Enabled again, the same token works.
    app.post(&format!("/admin/users/{user}/enable"), json!({}), Some(&app.admin_token())).await;
    assert_eq!(redeem_with(&app, Some(&good)).await, 200);
}

#[tokio::test]
async fn a_disabled_user_cannot_log_in_and_other_gateways_learn_it() {
    let app = spawn_app().await;
    app.post("/auth/register", json!({"username": "leaving", "password": "correct-horse-1"}), None).await;
    let res = app.post("/auth/login", json!({"username": "leaving", "password": "correct-horse-1"}), None).await;
    let token = res.body["access_token"].as_str().unwrap().to_string();
    let user = app.query_i64("SELECT id FROM users WHERE username = 'leaving'", &[]).await;
    // Disabled behind this gateway's back (another gateway, or SQL).
    let db = app.state.pg.get().await.unwrap();
    db.execute("UPDATE users SET disabled_at = now() WHERE id = $1", &[&user]).await.unwrap();
    let res = app.post("/auth/login", json!({"username": "leaving", "password": "correct-horse-1"}), None).await;
    assert_eq!((res.status.as_u16(), res.error_code()), (401, "invalid_credentials"));
    // Refused once the gateway's next reload has run (every 2 s).
    let mut status = 200;
    for _ in 0..50 {
        status = app.post("/wallet/balance", json!({}), Some(&token)).await.status.as_u16();
        if status == 401 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(status, 401, "refused after the reload");
}

#[tokio::test]
async fn a_previous_key_is_accepted_during_a_rotation() {
    let old = "the-key-before-the-rotation-0123456789abc";
    let app = spawn_app_with(&[("JWT_PREVIOUS_SECRET", old)]).await;
    let (user, _) = app.create_users(1).await.remove(0);
    let token = keys_for(old).issue(user, Role::User).unwrap();
    let res = app.post("/wallet/balance", json!({}), Some(&token)).await;
    assert_eq!(res.status, 200, "{:?}", res.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_that_could_not_load_the_disabled_users_refuses_tokens_until_it_has() {
    let app = spawn_app().await;
    let users = app.create_users(2).await;
    let ((disabled, disabled_token), (_, ok_token)) = (&users[0], &users[1]);
    let res = app.post(&format!("/admin/users/{disabled}/disable"), json!({}), Some(&app.admin_token())).await;
    assert_eq!(res.status, 200);

    // A second gateway starts while the users table is locked: its first
    // load of the disabled set times out.
    let mut psql = app.psql().await;
    let tx = psql.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let mut config = app.state.config.clone();
    config.http_addr = "127.0.0.1:0".into();
    config.pg_statement_timeout = std::time::Duration::from_millis(500);
    let second = redeem_gateway::startup::Application::build(config).await.unwrap();
    let base = format!("http://127.0.0.1:{}", second.port());
    tokio::spawn(second.run_until_stopped());
    let balance = |token: &str| {
        let req = app.client.post(format!("{base}/wallet/balance")).bearer_auth(token).json(&json!({}));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // Fails closed: nobody's token is judged (the disabled user's least of all).
    assert_eq!(balance(disabled_token).await, 503, "a disabled user's token is not let through");
    assert_eq!(balance(ok_token).await, 503);
    let ready = app.client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready until the set is loaded");

    // Once Postgres answers, the next reload (every 2 s) loads it.
    tx.rollback().await.unwrap();
    let mut statuses = (0, 0);
    for _ in 0..50 {
        statuses = (balance(disabled_token).await, balance(ok_token).await);
        if statuses == (401, 200) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(statuses, (401, 200));
    assert_eq!(app.client.get(format!("{base}/readyz")).send().await.unwrap().status(), 200);
}
