//! First-N voucher campaigns on login.

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use redeem_gateway::codes::admin::CreateCode;
use redeem_gateway::codes::CodeKind;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

pub fn voucher_campaign(code: &str, limit: i64) -> CreateCode {
    CreateCode {
        kind: Some(CodeKind::Voucher),
        amount: None,
        reward: Some(json!({"percent": 30, "max_amount": 50000, "voucher_type": "mobile_topup", "valid_days": 30})),
        ..CreateCode::credit(code.into(), 1, limit)
    }
}

/// `n` users who can log in with `password` (hashed once, with cheap
/// argon2id parameters: the test is about the gate, not about hashing).
async fn users_with_password(app: &TestApp, n: usize, password: &str) -> Vec<String> {
    let params = Params::new(1024, 1, 1, None).unwrap();
    let salt = SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA").unwrap();
    let hash = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string();
    let db = app.state.pg.get().await.unwrap();
    let tag = format!("{:06x}", rand::random::<u32>() & 0xffffff);
    let rows = db
        .query(
            "INSERT INTO users (username, password_hash)
             SELECT 'v' || $1::text || '_' || g, $2 FROM generate_series(1, $3::int) g RETURNING username",
            &[&tag, &hash, &(n as i32)],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_burst_gives_exactly_100_vouchers_one_per_user() {
    // About the gate under a login burst, not about shedding load: the hash
    // queue holds the whole burst, as a client honouring Retry-After would
    // spread it. (The bounded queue itself: tests/api/stranger.rs.)
    let app = spawn_app_with(&[("HASH_QUEUE", "4000"), ("HASH_WAIT_MS", "120000")]).await;
    let code = app.create(voucher_campaign("TOPUP30", 100)).await;
    let names = users_with_password(&app, 1000, "campaign-pass-1").await;
    // Every user logs in three times, all 3,000 logins at once. Argon2 makes
    // logins CPU-bound, so on a small machine some get 503: the client
    // retries them, as the app does (Retry-After).
    let all_names = names.clone();
    let logins: Vec<String> = names.iter().flat_map(|n| std::iter::repeat_n(n.clone(), 3)).collect();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(logins.len()));
    let tasks: Vec<_> = logins
        .into_iter()
        .map(|name| {
            let (client, url, barrier) =
                (app.client.clone(), format!("{}/campaigns/login", app.address), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let body = json!({"username": name, "password": "campaign-pass-1", "campaign": "topup30"});
                for _ in 0..60 {
                    // A connection the loaded server timed out (408 before the
                    // request was written) is retried like a 503.
                    let Ok(res) = client.post(&url).json(&body).send().await else {
                        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                        continue;
                    };
                    let status = res.status().as_u16();
                    let answer: serde_json::Value = res.json().await.unwrap_or_default();
                    // 503 (or 408: the loaded server timed the connection out before the
                    // request was read), or logged in with the voucher step saying try again: retry.
                    if status != 503 && status != 408 && answer["voucher"]["reason"] != "try_again" {
                        return (name, status, answer);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                (name, 503, serde_json::Value::Null)
            })
        })
        .collect();
    let mut issued = std::collections::HashMap::<String, usize>::new();
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for t in tasks {
        let (name, status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body["access_token"].is_string(), "login works whatever the voucher");
        if body["voucher"]["issued"] == true {
            *issued.entry(name).or_default() += 1;
            assert_eq!(body["voucher"]["voucher"]["percent"], 30);
        } else {
            *reasons.entry(body["voucher"]["reason"].as_str().unwrap_or("?").to_string()).or_default() += 1;
        }
    }
    assert!(issued.len() <= 100, "never more than the limit: {}", issued.len());
    assert!(issued.values().all(|n| *n == 1), "nobody got two");
    assert!(reasons.keys().all(|r| r == "already_issued" || r == "campaign_full"), "{reasons:?}");
    // A slot whose commit failed under the storm goes back to the gate; once
    // demand goes on (the users without one log in again), the campaign fills
    // to exactly its limit.
    let without: Vec<String> = all_names.iter().filter(|n| !issued.contains_key(*n)).take(300).cloned().collect();
    for name in &without {
        let body = json!({"username": name, "password": "campaign-pass-1", "campaign": "topup30"});
        let res = app.post("/campaigns/login", body, None).await;
        if res.body["voucher"]["issued"] == true {
            issued.insert(name.clone(), 1);
        }
    }
    assert_eq!(issued.len(), 100, "users with a voucher after demand went on");
    let (count, distinct) = {
        let db = app.state.pg.get().await.unwrap();
        let row = db
            .query_one("SELECT count(*), count(DISTINCT user_id) FROM vouchers WHERE code_id = $1", &[&code.id])
            .await
            .unwrap();
        (row.get::<_, i64>(0), row.get::<_, i64>(1))
    };
    assert_eq!((count, distinct), (100, 100));
    let gate = app.state.gate.snapshot("TOPUP30").await.unwrap().unwrap();
    assert_eq!(gate.remaining(), 0);
}

#[tokio::test]
async fn the_answer_says_why_no_voucher_and_vouchers_are_listed() {
    let app = spawn_app().await;
    app.create(voucher_campaign("ONE", 1)).await;
    let mut later = voucher_campaign("LATER", 5);
    later.starts_at = Some(chrono::Utc::now() + chrono::Duration::days(1));
    app.create(later).await;
    app.create_code("CREDIT", 10, 5).await;
    let names = users_with_password(&app, 2, "campaign-pass-1").await;
    let login = |name: &str, campaign: &str| {
        app.post(
            "/campaigns/login",
            json!({"username": name, "password": "campaign-pass-1", "campaign": campaign}),
            None,
        )
    };
    let first = login(&names[0], "ONE").await;
    assert_eq!(first.body["voucher"]["issued"], true, "{:?}", first.body);
    let cases = [
        (&names[0], "ONE", "already_issued"),
        (&names[1], "ONE", "campaign_full"),
        (&names[1], "LATER", "not_active"),
        (&names[1], "NOPE", "no_such_campaign"),
        (&names[1], "CREDIT", "no_such_campaign"),
    ];
    for (name, campaign, reason) in cases {
        let res = login(name, campaign).await;
        assert_eq!(res.status, 200);
        assert_eq!(
            (res.body["voucher"]["issued"].as_bool(), res.body["voucher"]["reason"].as_str()),
            (Some(false), Some(reason)),
            "{campaign}"
        );
        // Only the user's own earlier voucher is ever shown, and only with already_issued.
        let shown = res.body["voucher"]["voucher"]["id"].as_i64();
        let expected = (reason == "already_issued").then(|| first.body["voucher"]["voucher"]["id"].as_i64().unwrap());
        assert_eq!(shown, expected, "{campaign}: {:?}", res.body);
    }
    let wrong = app
        .post("/campaigns/login", json!({"username": names[1], "password": "wrong-password", "campaign": "ONE"}), None)
        .await;
    assert_eq!((wrong.status.as_u16(), wrong.error_code()), (401, "invalid_credentials"));

    let token = first.body["access_token"].as_str().unwrap();
    let res = app.get("/vouchers", Some(token)).await;
    let items = res.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!((items[0]["campaign"].as_str(), items[0]["voucher_type"].as_str()), (Some("ONE"), Some("mobile_topup")));
    let issued = chrono::DateTime::parse_from_rfc3339(items[0]["issued_at"].as_str().unwrap()).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(items[0]["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - issued).num_days(), 30);
}
