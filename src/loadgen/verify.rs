//! After a burst: the invariants, checked in Postgres. Exactly `limit`
//! redemptions when demand covered it (and as many as the 200s the clients
//! saw), no user twice, the code's credits sum to redemptions x amount, and
//! every wallet's balance equals the sum of its ledger rows.

use deadpool_postgres::Pool;

use crate::codes::Code;

#[derive(Debug, Clone)]
pub struct Invariants {
    pub code: String,
    pub limit: i64,
    pub http_successes: u64,
    pub redemptions: i64,
    pub distinct_users: i64,
    pub credits: i64,
    pub credited_sum: i64,
    pub expected_sum: i64,
    /// Wallets (in the whole database) whose balance is not the sum of their ledger.
    pub bad_balances: i64,
    /// Every broken invariant, in words; empty when all hold.
    pub failures: Vec<String>,
}

impl Invariants {
    pub fn hold(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Reads the code's redemptions and the wallets, and checks them. `demand`
/// is how many distinct users tried the code.
pub async fn check(pg: &Pool, code: &Code, http_successes: u64, demand: usize) -> anyhow::Result<Invariants> {
    let db = pg.get().await?;
    let row = db
        .query_one("SELECT count(*), count(DISTINCT user_id) FROM redemptions WHERE code_id = $1", &[&code.id])
        .await?;
    let (redemptions, distinct_users): (i64, i64) = (row.get(0), row.get(1));
    let row = db
        .query_one(
            "SELECT count(l.id), coalesce(sum(l.amount), 0)::bigint FROM redemptions r
             JOIN ledger l ON l.reference = 'redemption:' || r.id AND l.user_id = r.user_id
             WHERE r.code_id = $1",
            &[&code.id],
        )
        .await?;
    let (credits, credited_sum): (i64, i64) = (row.get(0), row.get(1));
    let bad_balances: i64 = db
        .query_one(
            "SELECT count(*) FROM wallets w
             WHERE w.balance <> (SELECT coalesce(sum(amount), 0) FROM ledger l WHERE l.user_id = w.user_id)",
            &[],
        )
        .await?
        .get(0);
    let limit = i64::from(code.limit);
    let mut inv = Invariants {
        code: code.code.clone(),
        limit,
        http_successes,
        redemptions,
        distinct_users,
        credits,
        credited_sum,
        expected_sum: limit * code.amount,
        bad_balances,
        failures: Vec::new(),
    };
    inv.failures = failures(&inv, code.amount, demand as i64);
    Ok(inv)
}

fn failures(inv: &Invariants, amount: i64, demand: i64) -> Vec<String> {
    let mut out = Vec::new();
    let expected = inv.limit.min(demand);
    if inv.redemptions != expected {
        out.push(format!("{} redemptions in Postgres, expected {expected}", inv.redemptions));
    }
    if inv.http_successes != inv.redemptions as u64 {
        out.push(format!(
            "clients saw {} successes but Postgres has {} redemptions",
            inv.http_successes, inv.redemptions
        ));
    }
    if inv.distinct_users != inv.redemptions {
        out.push(format!("{} redemptions by only {} distinct users", inv.redemptions, inv.distinct_users));
    }
    if inv.credits != inv.redemptions || inv.credited_sum != inv.redemptions * amount {
        out.push(format!(
            "{} credits summing to {}, expected {} summing to {}",
            inv.credits,
            inv.credited_sum,
            inv.redemptions,
            inv.redemptions * amount
        ));
    }
    if inv.redemptions == inv.limit && inv.credited_sum != inv.expected_sum {
        out.push(format!("ledger sum {} != limit x amount {}", inv.credited_sum, inv.expected_sum));
    }
    if inv.bad_balances != 0 {
        out.push(format!("{} wallets whose balance is not the sum of their ledger rows", inv.bad_balances));
    }
    out
}
