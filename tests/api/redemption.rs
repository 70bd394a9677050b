//! POST /codes/use: the first N win, nobody twice, money exact, and a failed
//! commit gives its slot back.

use serde_json::json;

use crate::helpers::{count_status, spawn_app, spawn_app_with, TestApp};

const AMOUNT: i64 = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_1000_users_on_limit_100_gives_exactly_100_credits() {
    let app = spawn_app().await;
    let code = app.create_code("SPRING", AMOUNT, 100).await;
    let users = app.create_users(1000).await;
    let tokens: Vec<String> = users.iter().map(|(_, t)| t.clone()).collect();

    let mut responses = app.burst(&tokens, "spring").await;
    // A loaded machine may answer some of the burst 503 (the gate's reply
    // timed out): clients retry those, as the app does (Retry-After). What
    // is checked is exactness, whatever the load.
    for (token, res) in tokens.iter().zip(responses.iter_mut()) {
        for _ in 0..40 {
            if res.status != 503 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            *res = app.use_code(token, "spring").await;
        }
    }

    let ok = count_status(&responses, 200);
    let gone = count_status(&responses, 410);
    assert_eq!((ok, gone), (100, 900), "statuses: {:?}", status_histogram(&responses));
    assert!(responses.iter().filter(|r| r.status == 410).all(|r| r.error_code() == "sold_out"));
    assert!(responses
        .iter()
        .filter(|r| r.status == 200)
        .all(|r| r.body["amount"] == AMOUNT && r.body["balance"] == AMOUNT && r.body["code"] == "SPRING"));

    let (redemptions, distinct_users) = app.redemption_counts(code.id).await;
    assert_eq!((redemptions, distinct_users), (100, 100), "no user twice, nothing over the limit");
    let ledger_sum =
        app.query_i64("SELECT coalesce(sum(amount), 0)::bigint FROM ledger WHERE kind = 'code_credit'", &[]).await;
    assert_eq!(ledger_sum, 100 * AMOUNT);
    app.assert_money_invariants().await;
    // The winners are exactly those who got 200, each credited once.
    for ((user_id, _), res) in users.iter().zip(&responses) {
        let expected = if res.status == 200 { AMOUNT } else { 0 };
        assert_eq!(app.balance_of(*user_id).await, expected, "user {user_id}");
    }

    let gate = app.state.gate.snapshot("SPRING").await.unwrap().expect("gate state");
    assert_eq!(gate.remaining(), 0, "Redis has no slot left");
    assert_eq!(gate.claims, 100);
    assert_eq!(gate.pending, 0, "every winner's claim was confirmed");
    assert!(gate.rejections.get("sold_out").copied().unwrap_or(0) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_user_firing_50_concurrent_requests_is_credited_once() {
    let app = spawn_app().await;
    let code = app.create_code("ONCE", AMOUNT, 10).await;
    let (user_id, token) = app.create_users(1).await.remove(0);

    let responses = app.burst(&vec![token.clone(); 50], "ONCE").await;

    assert_eq!(count_status(&responses, 200), 1, "statuses: {:?}", status_histogram(&responses));
    assert_eq!(count_status(&responses, 409), 49);
    assert!(responses.iter().filter(|r| r.status == 409).all(|r| r.error_code() == "already_redeemed"));
    assert_eq!(app.redemption_counts(code.id).await, (1, 1));
    assert_eq!(app.balance_of(user_id).await, AMOUNT);
    assert_eq!(app.ledger_rows_of(user_id).await, 1);
    // And later, too.
    assert_eq!(app.use_code(&token, "ONCE").await.status, 409);
    app.assert_money_invariants().await;
}

#[tokio::test]
async fn unknown_codes_are_404_and_the_answer_names_the_reason() {
    let app = spawn_app().await;
    let (_, token) = app.create_users(1).await.remove(0);
    let res = app.use_code(&token, "NO-SUCH-CODE").await;
    assert_eq!(res.status, 404);
    assert_eq!(res.error_code(), "code_not_found");
    assert!(res.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn a_code_outside_its_window_is_not_eligible_and_takes_no_slot() {
    let app = spawn_app().await;
    let db = app.state.pg.get().await.unwrap();
    db.execute(
        "INSERT INTO codes (code, amount, redemption_limit, starts_at, ends_at) VALUES
         ('LATER', 10, 5, now() + interval '1 day', NULL), ('OVER', 10, 5, NULL, now() - interval '1 second')",
        &[],
    )
    .await
    .unwrap();
    let (user_id, token) = app.create_users(1).await.remove(0);
    for code in ["LATER", "OVER"] {
        let res = app.use_code(&token, code).await;
        assert_eq!((res.status.as_u16(), res.error_code()), (422, "not_eligible"), "{code}");
    }
    assert_eq!(app.balance_of(user_id).await, 0);
    assert_eq!(app.query_i64("SELECT count(*) FROM redemptions", &[]).await, 0);
}

/// Makes every commit for `user_id` fail the way a struggling database does:
/// the statement outlives its timeout and Postgres cancels it.
async fn make_commits_hang_for(app: &TestApp, user_id: i64) {
    let db = app.state.pg.get().await.unwrap();
    db.batch_execute(&format!(
        "CREATE FUNCTION hang() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_sleep(3); RETURN NEW; END $$;
         CREATE TRIGGER hang BEFORE INSERT ON ledger FOR EACH ROW
         WHEN (NEW.user_id = {user_id}) EXECUTE FUNCTION hang();"
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn a_failed_commit_releases_the_slot_and_credits_nothing() {
    let app = spawn_app_with(&[("PG_STATEMENT_TIMEOUT_MS", "300")]).await;
    let code = app.create_code("LAST", AMOUNT, 1).await;
    let mut users = app.create_users(2).await;
    let (unlucky, unlucky_token) = users.remove(0);
    let (other, other_token) = users.remove(0);
    make_commits_hang_for(&app, unlucky).await;

    let res = app.use_code(&unlucky_token, "LAST").await;
    assert_eq!((res.status.as_u16(), res.error_code()), (503, "try_again"), "{:?}", res.body);
    assert_eq!(res.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(app.balance_of(unlucky).await, 0);
    assert_eq!(app.ledger_rows_of(unlucky).await, 0);
    assert_eq!(app.redemption_counts(code.id).await, (0, 0));
    let gate = app.state.gate.snapshot("LAST").await.unwrap().unwrap();
    assert_eq!((gate.claims, gate.pending, gate.remaining()), (0, 0, 1), "the claim was released");

    // The only slot is redeemable again.
    let res = app.use_code(&other_token, "LAST").await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    assert_eq!(app.balance_of(other).await, AMOUNT);
    assert_eq!(app.use_code(&unlucky_token, "LAST").await.status, 410);
    app.assert_money_invariants().await;
}

#[tokio::test]
async fn a_database_that_goes_away_mid_redemption_releases_the_slot() {
    // A long cache TTL, so the code is known without Postgres when it is gone.
    let app = spawn_app_with(&[("CODE_CACHE_TTL_MS", "600000")]).await;
    let code = app.create_code("AWAY", AMOUNT, 1).await;
    let mut users = app.create_users(2).await;
    let (first, first_token) = users.remove(0);
    let (second, second_token) = users.remove(0);
    app.state.codes.get(&app.state.pg, "AWAY").await.unwrap().expect("cached");

    // Take the database away: refuse new connections, cut the existing ones.
    let (admin, conn) = tokio_postgres::connect(&app.server_url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let db = app.database.clone();
    admin.batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false")).await.unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db],
        )
        .await
        .unwrap();

    let res = app.use_code(&first_token, "AWAY").await;
    assert_eq!((res.status.as_u16(), res.error_code()), (503, "try_again"), "{:?}", res.body);
    let gate = app.state.gate.snapshot("AWAY").await.unwrap().unwrap();
    assert_eq!((gate.claims, gate.remaining()), (0, 1), "the claim was released while Postgres was away");

    admin.batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true")).await.unwrap();
    // Pooled connections cut while the database was away fail once each
    // (503), as a client honouring Retry-After would see.
    let res = app.use_code_retrying(&second_token, "AWAY", 40).await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    assert_eq!(app.redemption_counts(code.id).await, (1, 1));
    assert_eq!(app.balance_of(first).await, 0);
    assert_eq!(app.balance_of(second).await, AMOUNT);
    app.assert_money_invariants().await;
}

#[tokio::test]
async fn the_report_counts_redemptions_and_rejections() {
    let app = spawn_app().await;
    app.create_code("REPORTED", 500, 2).await;
    let users = app.create_users(4).await;
    let statuses = [
        app.use_code(&users[0].1, "REPORTED").await.status,
        app.use_code(&users[0].1, "REPORTED").await.status,
        app.use_code(&users[1].1, "REPORTED").await.status,
        app.use_code(&users[2].1, "REPORTED").await.status,
        app.use_code(&users[3].1, "REPORTED").await.status,
    ];
    assert_eq!(statuses.map(|s| s.as_u16()), [200, 409, 200, 410, 410]);
    let res = app.post("/codes/report", json!({"code": "reported"}), Some(&app.admin_token())).await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    let r = &res.body;
    assert_eq!((r["redeemed"].as_i64(), r["remaining"].as_i64(), r["limit"].as_i64()), (Some(2), Some(0), Some(2)));
    assert_eq!(r["total_credited"], 1000);
    assert_eq!(r["rejected"]["sold_out"], 2);
    assert_eq!(r["rejected"]["already_redeemed"], 1);
    assert!(r["first_at"].is_string() && r["last_at"].is_string());
    let res = app.post("/codes/report", json!({"code": "NOPE"}), Some(&app.admin_token())).await;
    assert_eq!((res.status.as_u16(), res.error_code()), (404, "code_not_found"));
}

/// Answers by status, with the error message for anything but 200 and 410,
/// so a failed burst says why (which 503: queue, pool, Redis...).
fn status_histogram(responses: &[crate::helpers::Response]) -> std::collections::BTreeMap<String, usize> {
    let mut h = std::collections::BTreeMap::new();
    for r in responses {
        let key = match r.status.as_u16() {
            s @ (200 | 410) => s.to_string(),
            s => format!("{s} {}", r.body["error"]["message"]),
        };
        *h.entry(key).or_default() += 1;
    }
    h
}
