//! Abuse resistance: guessing codes is cut off per user and per address, a
//! legitimate user elsewhere is untouched, and the limits hold across
//! gateway instances (they live in Redis).

use redeem_gateway::startup::Application;
use serde_json::json;

use crate::helpers::{spawn_app_with, TestApp};

const LIMITS_ON: [(&str, &str); 2] = [("RATE_LIMIT_ENABLED", "true"), ("TRUSTED_PROXY_HEADER", "x-forwarded-for")];

/// Tries `codes` unknown codes as `token` from `address` (via the trusted
/// proxy header: no traffic leaves this machine), `parallel` at a time.
/// Returns (404s, 429s, other).
async fn guess(
    app: &TestApp,
    base: &str,
    token: &str,
    address: &str,
    codes: usize,
    parallel: usize,
) -> (usize, usize, usize) {
    let (mut not_found, mut limited, mut other) = (0, 0, 0);
    for chunk in (0..codes).collect::<Vec<_>>().chunks(parallel) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|i| {
                let req = app
                    .client
                    .post(format!("{base}/codes/use"))
                    .bearer_auth(token)
                    .header("x-forwarded-for", address)
                    .json(&json!({"code": format!("GUESS-{i:06}")}));
                tokio::spawn(async move {
                    let res = req.send().await.unwrap();
                    let retry_after = res.headers().get("retry-after").is_some();
                    (res.status().as_u16(), retry_after)
                })
            })
            .collect();
        for t in tasks {
            match t.await.unwrap() {
                (404, _) => not_found += 1,
                (429, true) => limited += 1,
                _ => other += 1,
            }
        }
    }
    (not_found, limited, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_guesses_from_one_user_are_cut_off_while_others_redeem() {
    let app = spawn_app_with(&LIMITS_ON).await;
    app.create_code("REAL", 100, 10).await;
    let users = app.create_users(2).await;
    let (attacker, legit) = (&users[0].1, &users[1].1);

    let legit_redeems = {
        let req = app
            .client
            .post(format!("{}/codes/use", app.address))
            .bearer_auth(legit)
            .header("x-forwarded-for", "198.51.100.20")
            .json(&json!({"code": "REAL"}));
        tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
    };
    let (not_found, limited, other) = guess(&app, &app.address, attacker, "198.51.100.10", 10_000, 100).await;
    assert!(not_found <= 20, "only the user's budget of guesses is answered 404: {not_found}");
    assert_eq!(not_found + limited, 10_000, "every other guess is refused with 429 + Retry-After ({other} other)");
    assert_eq!(legit_redeems.await.unwrap(), 200, "a legitimate user elsewhere redeems normally");
    // Cut off from guessing, not from real codes: those never touch the budget.
    let res = app
        .client
        .post(format!("{}/codes/use", app.address))
        .bearer_auth(attacker)
        .header("x-forwarded-for", "198.51.100.10")
        .json(&json!({"code": "REAL"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // And past the budget the answer is 429, never whether a code exists.
    let res = app
        .client
        .post(format!("{}/codes/use", app.address))
        .bearer_auth(attacker)
        .header("x-forwarded-for", "198.51.100.10")
        .json(&json!({"code": "SOME-OTHER-GUESS"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(app.query_i64("SELECT count(*) FROM redemptions", &[]).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guesses_from_one_address_across_many_accounts_are_cut_off() {
    let app = spawn_app_with(&LIMITS_ON).await;
    let users = app.create_users(60).await;
    let mut not_found = 0;
    let mut limited = 0;
    for (_, token) in &users {
        let (n, l, _) = guess(&app, &app.address, token, "203.0.113.7", 10, 10).await;
        not_found += n;
        limited += l;
    }
    // 600 guesses, 10 per account (under the per-user limit), one address.
    assert!(not_found <= 200, "the address's budget: {not_found}");
    assert!(limited >= 400, "{limited}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateway_instances_share_one_limit() {
    let app = spawn_app_with(&LIMITS_ON).await;
    let mut config = app.state.config.clone();
    config.http_addr = "127.0.0.1:0".into();
    let second = Application::build(config).await.unwrap();
    let second_address = format!("http://127.0.0.1:{}", second.port());
    tokio::spawn(second.run_until_stopped());

    let (_, token) = app.create_users(1).await.remove(0);
    let (a_found, _, _) = guess(&app, &app.address, &token, "192.0.2.1", 40, 1).await;
    let (b_found, b_limited, _) = guess(&app, &second_address, &token, "192.0.2.1", 40, 1).await;
    assert!(a_found + b_found <= 20, "one budget across both: {a_found} + {b_found}");
    assert_eq!(b_limited, 40, "the second gateway knows the first one's count");
}

#[tokio::test]
async fn password_guessing_on_one_account_is_cut_off() {
    let app = spawn_app_with(&LIMITS_ON).await;
    app.post("/auth/register", json!({"username": "victim", "password": "correct-horse-1"}), None).await;
    let started = std::time::Instant::now();
    let mut statuses = vec![];
    for i in 0..15 {
        let res =
            app.post("/auth/login", json!({"username": "victim", "password": format!("guess-{i:04}")}), None).await;
        statuses.push(res.status.as_u16());
    }
    // 10 per minute: a burst of 10, then one more every 6 s (hashing is slow
    // on a loaded machine, so the refill during the test is allowed for).
    let refilled = (started.elapsed().as_secs() / 6) as usize;
    let tried = statuses.iter().filter(|s| **s == 401).count();
    assert!((10..=10 + refilled).contains(&tried), "{tried} passwords tried: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 15 - tried);
    assert!(statuses.iter().all(|s| *s == 401 || *s == 429));
}

#[tokio::test]
async fn real_codes_do_not_eat_the_guessing_budget() {
    let app = spawn_app_with(&LIMITS_ON).await;
    let (_, token) = app.create_users(1).await.remove(0);
    for i in 0..30 {
        app.create_code(&format!("REAL{i}"), 10, 5).await;
    }
    for i in 0..30 {
        let res = app.use_code(&token, &format!("REAL{i}")).await;
        assert_eq!(res.status, 200, "code {i}: {:?}", res.body);
        // The refund runs in the background; let it land before the next take.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spike_of_real_users_behind_one_carrier_address_is_not_refused() {
    let app = spawn_app_with(&LIMITS_ON).await;
    app.create_code("NAT", 10, 150).await;
    let tokens: Vec<String> = app.create_users(400).await.into_iter().map(|(_, t)| t).collect();
    // All from 127.0.0.1 (no proxy header): 400 concurrent real attempts.
    let responses = app.burst(&tokens, "NAT").await;
    let statuses: std::collections::BTreeMap<u16, usize> = responses.iter().fold(Default::default(), |mut m, r| {
        *m.entry(r.status.as_u16()).or_default() += 1;
        m
    });
    assert_eq!(statuses, [(200, 150), (410, 250)].into_iter().collect(), "no 429 for real codes");
}

async fn login_from(app: &TestApp, address: &str, username: &str, password: &str) -> u16 {
    app.client
        .post(format!("{}/auth/login", app.address))
        .header("x-forwarded-for", address)
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_attacker_hammering_a_username_cannot_lock_its_owner_out() {
    let app = spawn_app_with(&LIMITS_ON).await;
    let res = app.post("/auth/register", json!({"username": "victim", "password": "correct-horse-1"}), None).await;
    assert_eq!(res.status, 201);
    // The attacker: 40 wrong passwords from one address, 4 at a time, and
    // the owner logging in from elsewhere while it goes on, then after.
    let attack = {
        let app_client = app.client.clone();
        let url = format!("{}/auth/login", app.address);
        tokio::spawn(async move {
            let mut statuses = vec![];
            for round in 0..10 {
                let tries: Vec<_> = (0..4)
                    .map(|i| {
                        let req = app_client
                            .post(&url)
                            .header("x-forwarded-for", "198.51.100.66")
                            .json(&json!({"username": "Victim", "password": format!("guess-{round}-{i}")}));
                        tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
                    })
                    .collect();
                for t in tries {
                    statuses.push(t.await.unwrap());
                }
            }
            statuses
        })
    };
    let during = login_from(&app, "203.0.113.5", "victim", "correct-horse-1").await;
    let statuses = attack.await.unwrap();
    assert!(statuses.iter().filter(|s| **s == 429).count() >= 25, "the attacker is cut off: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 401 || *s == 429), "{statuses:?}");
    assert_eq!(during, 200, "the owner logs in while the attack goes on");
    for _ in 0..3 {
        assert_eq!(login_from(&app, "203.0.113.5", "victim", "correct-horse-1").await, 200, "and after it");
    }
    // The first-N campaign login is the same door.
    let body = json!({"username": "victim", "password": "correct-horse-1", "campaign": "NONE"});
    let res = app
        .client
        .post(format!("{}/campaigns/login", app.address))
        .header("x-forwarded-for", "203.0.113.5")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // The attacker's own address stays cut off for this username.
    assert_eq!(login_from(&app, "198.51.100.66", "victim", "correct-horse-1").await, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_username_ceiling_logins_are_slowed_never_refused() {
    let mut limits = LIMITS_ON.to_vec();
    limits.push(("RATE_LOGIN_FAILURES_PER_USERNAME_PER_HOUR", "5"));
    let app = spawn_app_with(&limits).await;
    app.post("/auth/register", json!({"username": "target", "password": "correct-horse-2"}), None).await;
    // A distributed attack: 12 addresses at once, one wrong password each.
    let attempts: Vec<_> = (0..12)
        .map(|i| {
            let req = app
                .client
                .post(format!("{}/auth/login", app.address))
                .header("x-forwarded-for", format!("192.0.2.{}", 10 + i))
                .json(&json!({"username": "target", "password": "wrong-password"}));
            tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
        })
        .collect();
    for a in attempts {
        assert_eq!(a.await.unwrap(), 401, "each address is within its own budget");
    }
    // Past the ceiling of 5: slowed by 250 ms a failure over it (at most 5 s), not refused.
    let started = std::time::Instant::now();
    assert_eq!(login_from(&app, "203.0.113.99", "target", "correct-horse-2").await, 200);
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_millis(1000), "slowed down: {took:?}");
    assert!(took < std::time::Duration::from_secs(8), "a delay, not a wall: {took:?}");
}
