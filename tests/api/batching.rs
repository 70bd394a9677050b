//! Group commit (redemption::batcher): many redemptions in one statement,
//! each with its own outcome. Against real Postgres: a burst through HTTP
//! that is forced into batches, and batches built by hand that mix every
//! kind of bad row with good ones.

use redeem_gateway::codes::NotNow;
use redeem_gateway::redemption::batcher::{commit_rows, Row};
use redeem_gateway::redemption::commit::Committed;

use crate::helpers::{count_status, spawn_app, spawn_app_with};

const AMOUNT: i64 = 1_000;

/// Transactions that wrote the code's redemptions (rows of one batch share one).
async fn transactions_of(app: &crate::helpers::TestApp, code_id: i64) -> i64 {
    app.query_i64("SELECT count(DISTINCT xmin::text) FROM redemptions WHERE code_id = $1", &[&code_id]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_committed_in_batches_gives_exactly_limit_credits() {
    // One committer: everything that arrives while it is busy waits for the next batch.
    let app = spawn_app_with(&[("COMMIT_BATCH_COMMITTERS", "1"), ("COMMIT_BATCH_MAX_ROWS", "16")]).await;
    let code = app.create_code("GROUPED", AMOUNT, 100).await;
    let users = app.create_users(300).await;
    let tokens: Vec<String> = users.iter().map(|(_, t)| t.clone()).collect();

    let responses = app.burst(&tokens, "GROUPED").await;

    assert_eq!((count_status(&responses, 200), count_status(&responses, 410)), (100, 200));
    assert!(responses
        .iter()
        .filter(|r| r.status == 200)
        .all(|r| r.body["amount"] == AMOUNT && r.body["balance"] == AMOUNT));
    assert_eq!(app.redemption_counts(code.id).await, (100, 100), "no user twice, nothing over the limit");
    let ledger_sum = app
        .query_i64(
            "SELECT coalesce(sum(l.amount), 0)::bigint FROM ledger l JOIN redemptions r ON l.reference = 'redemption:' || r.id
             WHERE r.code_id = $1",
            &[&code.id],
        )
        .await;
    assert_eq!(ledger_sum, 100 * AMOUNT);
    for ((user_id, _), res) in users.iter().zip(&responses) {
        let expected = if res.status == 200 { AMOUNT } else { 0 };
        assert_eq!(app.balance_of(*user_id).await, expected, "user {user_id}");
        assert_eq!(app.ledger_rows_of(*user_id).await, expected / AMOUNT, "user {user_id}");
    }
    app.assert_money_invariants().await;
    let transactions = transactions_of(&app, code.id).await;
    assert!(transactions < 100, "100 credits in {transactions} transactions: no batch formed");
    assert!(transactions >= 100 / 16, "a batch holds at most 16 rows");
    let gate = app.state.gate.snapshot("GROUPED").await.unwrap().expect("gate state");
    assert_eq!((gate.claims, gate.pending, gate.remaining()), (100, 0, 0), "every winner confirmed");
}

#[tokio::test]
async fn one_bad_row_fails_only_itself_and_its_neighbours_commit() {
    let app = spawn_app().await;
    let open = app.create_code("OPEN", AMOUNT, 10).await;
    let other = app.create_code("OTHER", 3 * AMOUNT, 10).await;
    let paused = app.create_code("PAUSED", AMOUNT, 10).await;
    let users = app.create_users(5).await;
    let ids: Vec<i64> = users.iter().map(|(id, _)| *id).collect();
    let db = app.state.pg.get().await.unwrap();
    db.execute("UPDATE codes SET status = 'paused' WHERE id = $1", &[&paused.id]).await.unwrap();
    // User 0 already holds OPEN with ticket 0.
    let first = commit_rows(&db, &[Row { code_id: open.id, user_id: ids[0], ticket: 0 }]).await;
    assert!(matches!(first[0], Ok(Committed::Credited { .. })));

    let rows = [
        Row { code_id: open.id, user_id: ids[1], ticket: 1 },   // fine
        Row { code_id: open.id, user_id: ids[0], ticket: 2 },   // user already has OPEN
        Row { code_id: open.id, user_id: ids[2], ticket: 0 },   // ticket 0 is taken
        Row { code_id: paused.id, user_id: ids[3], ticket: 0 }, // code paused: the trigger refuses the batch
        Row { code_id: open.id, user_id: ids[4], ticket: 3 },   // one user, two codes, one batch
        Row { code_id: other.id, user_id: ids[4], ticket: 0 },
        Row { code_id: open.id, user_id: ids[3], ticket: 10 }, // not below the limit
        Row { code_id: open.id, user_id: i64::MAX, ticket: 4 }, // no such user
    ];
    let out = commit_rows(&db, &rows).await;
    let out: Vec<Committed> = out.into_iter().map(|o| o.expect("no store error")).collect();

    assert!(matches!(out[0], Committed::Credited { amount: AMOUNT, balance: AMOUNT, .. }), "{:?}", out[0]);
    assert_eq!(out[1], Committed::AlreadyRedeemed);
    assert_eq!(out[2], Committed::TicketTaken);
    assert_eq!(out[3], Committed::NotRedeemable(NotNow::Paused));
    assert_eq!(out[6], Committed::TicketOutOfRange);
    assert_eq!(out[7], Committed::UnknownUser);
    let (Committed::Credited { balance: b4, .. }, Committed::Credited { balance: b5, .. }) = (out[4], out[5]) else {
        panic!("both of user 4's codes credited: {:?} {:?}", out[4], out[5]);
    };
    // Each answer is the balance right after its own credit, as if committed one by one.
    let mut answered = [b4, b5];
    answered.sort();
    assert!(answered == [AMOUNT, 4 * AMOUNT] || answered == [3 * AMOUNT, 4 * AMOUNT], "{answered:?}");
    assert_eq!(app.balance_of(ids[4]).await, 4 * AMOUNT);
    assert_eq!(app.ledger_rows_of(ids[4]).await, 2);
    assert_eq!(app.balance_of(ids[2]).await, 0);
    assert_eq!(app.balance_of(ids[3]).await, 0);
    assert_eq!(app.redemption_counts(open.id).await, (3, 3));
    assert_eq!(app.redemption_counts(paused.id).await, (0, 0));
    app.assert_money_invariants().await;
}

#[tokio::test]
async fn a_batch_with_only_conflicts_skipped_commits_the_rest_in_one_transaction() {
    let app = spawn_app().await;
    let code = app.create_code("SKIP", AMOUNT, 10).await;
    let users = app.create_users(4).await;
    let ids: Vec<i64> = users.iter().map(|(id, _)| *id).collect();
    let db = app.state.pg.get().await.unwrap();
    commit_rows(&db, &[Row { code_id: code.id, user_id: ids[0], ticket: 0 }]).await;

    let rows = [
        Row { code_id: code.id, user_id: ids[1], ticket: 1 },
        Row { code_id: code.id, user_id: ids[0], ticket: 5 }, // already redeemed: skipped, not fatal
        Row { code_id: code.id, user_id: ids[2], ticket: 2 },
        Row { code_id: code.id, user_id: ids[3], ticket: 3 },
    ];
    let out: Vec<Committed> = commit_rows(&db, &rows).await.into_iter().map(|o| o.unwrap()).collect();

    assert_eq!(out[1], Committed::AlreadyRedeemed);
    for i in [0, 2, 3] {
        assert!(matches!(out[i], Committed::Credited { balance: AMOUNT, .. }), "{:?}", out[i]);
    }
    // The first redemption, then one transaction for the three good rows.
    assert_eq!(transactions_of(&app, code.id).await, 2);
    app.assert_money_invariants().await;
}

/// V10 checks each statement once instead of each row; what it refuses must
/// be what the foreign keys and the row trigger refused, under the same names
/// (the gateway maps them to outcomes), and users and codes must stay put.
#[tokio::test]
async fn the_statement_checks_refuse_what_the_row_checks_refused() {
    let app = spawn_app().await;
    let code = app.create_code("CHECKED", AMOUNT, 2).await;
    let (user, _) = app.create_users(1).await.remove(0);
    let db = app.psql().await;
    let refusal = |e: tokio_postgres::Error| {
        let db_error = e.as_db_error().expect("a database error");
        (db_error.code().code().to_string(), db_error.constraint().unwrap_or_default().to_string())
    };
    let fk = |name: &str| ("23503".to_string(), name.to_string());
    let insert_redemption = "INSERT INTO redemptions (code_id, user_id, ticket, amount) VALUES ($1, $2, $3, 1000)";

    let e = db.execute(insert_redemption, &[&code.id, &i64::MAX, &0i32]).await.unwrap_err();
    assert_eq!(refusal(e), fk("redemptions_user_id_fkey"));
    let e = db.execute(insert_redemption, &[&code.id, &user, &2i32]).await.unwrap_err();
    assert_eq!(refusal(e), ("23514".into(), "redemptions_ticket_below_limit".into()), "ticket 2 of limit 2");
    let e = db.execute(insert_redemption, &[&i64::MAX, &user, &0i32]).await.unwrap_err();
    assert_eq!(refusal(e), ("23514".into(), "redemptions_ticket_below_limit".into()), "no such code");
    let e = db.execute("INSERT INTO wallets (user_id, balance) VALUES ($1, 0)", &[&i64::MAX]).await.unwrap_err();
    assert_eq!(refusal(e), fk("wallets_user_id_fkey"));
    let e = db
        .execute("INSERT INTO ledger (user_id, amount, kind, reference) VALUES ($1, 1, 'x', 'ghost')", &[&i64::MAX])
        .await
        .unwrap_err();
    assert_eq!(refusal(e), fk("ledger_user_id_fkey"));
    // One bad row refuses the whole multi-row statement.
    let e = db
        .execute(
            "INSERT INTO redemptions (code_id, user_id, ticket, amount) VALUES ($1, $2, 0, 1000), ($1, $3, 1, 1000)",
            &[&code.id, &user, &i64::MAX],
        )
        .await
        .unwrap_err();
    assert_eq!(refusal(e), fk("redemptions_user_id_fkey"));
    db.execute("UPDATE codes SET status = 'paused' WHERE id = $1", &[&code.id]).await.unwrap();
    let e = db.execute(insert_redemption, &[&code.id, &user, &0i32]).await.unwrap_err();
    assert_eq!(refusal(e), ("23514".into(), "code_not_redeemable".into()));
    assert_eq!(app.redemption_counts(code.id).await, (0, 0), "nothing written");

    // Nothing the foreign keys protected can go away or be re-pointed.
    db.execute("UPDATE codes SET status = 'active' WHERE id = $1", &[&code.id]).await.unwrap();
    db.execute(insert_redemption, &[&code.id, &user, &0i32]).await.unwrap();
    let (other, _) = app.create_users(1).await.remove(0);
    for sql in [
        format!("DELETE FROM users WHERE id = {user}"),
        format!("DELETE FROM codes WHERE id = {}", code.id),
        "TRUNCATE users CASCADE".to_string(),
        "TRUNCATE codes CASCADE".to_string(),
        format!("UPDATE users SET id = -id WHERE id = {user}"),
        format!("UPDATE codes SET id = -id WHERE id = {}", code.id),
        format!("UPDATE redemptions SET user_id = {other} WHERE code_id = {}", code.id),
    ] {
        let e = db.batch_execute(&sql).await.expect_err(&sql);
        assert_eq!(refusal(e).0, "23001", "{sql}: restrict_violation");
    }
    assert_eq!(app.redemption_counts(code.id).await, (1, 1));
}
