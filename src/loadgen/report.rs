//! The markdown report: scenarios with their ratio to the matching ceiling,
//! the ceilings themselves, the targets, and the invariants after each burst.

use std::fmt::Write;
use std::time::Duration;

use super::scenarios::Outcome;
use super::stats::Summary;

/// How the run was made.
pub struct Meta {
    pub cores: usize,
    pub date: String,
    pub commit: String,
    pub parameters: Vec<(String, String)>,
}

/// Ceilings measured in the same run (absent ones are shown as "n/a").
#[derive(Default)]
pub struct Ceilings {
    pub http: Option<Summary>,
    /// redis-benchmark: EVALSHA of lua/claim.lua per second.
    pub redis_per_sec: Option<f64>,
    /// pgbench: commit transactions (COMMIT_SQL) per second.
    pub pg_per_sec: Option<f64>,
    /// pgbench: credits per second through the group commit's statement.
    pub pg_batch_per_sec: Option<f64>,
    /// pgbench: the balance query per second (same pool size).
    pub pg_balance_per_sec: Option<f64>,
    /// wrk on the sold-out code, against the gateway and the trivial server.
    pub wrk_flood_per_sec: Option<f64>,
    pub wrk_ceiling_per_sec: Option<f64>,
}

/// Which ceiling a scenario is compared with, and on which figure.
enum Against {
    Http,
    Postgres,
}

fn against(name: &str) -> Against {
    if name.contains("burst") {
        Against::Postgres
    } else {
        Against::Http
    }
}

/// The scenario's compared figure and the ceiling's, if both are known.
fn ratio(outcome: &Outcome, ceilings: &Ceilings) -> Option<(f64, f64)> {
    match against(&outcome.name) {
        Against::Http => Some((outcome.summary.requests_per_sec(), ceilings.http.as_ref()?.requests_per_sec())),
        Against::Postgres => Some((outcome.summary.successes_per_sec(), ceilings.pg_per_sec?)),
    }
    .filter(|(_, c)| *c > 0.0)
}

pub fn markdown(meta: &Meta, outcomes: &[Outcome], ceilings: &Ceilings) -> String {
    let mut out = String::new();
    header(&mut out, meta);
    scenarios(&mut out, outcomes, ceilings);
    ceiling_table(&mut out, ceilings);
    targets(&mut out, outcomes, ceilings);
    invariants(&mut out, outcomes);
    out
}

fn header(out: &mut String, meta: &Meta) {
    let _ = writeln!(out, "# Redeem Gateway benchmark\n");
    let _ = writeln!(out, "- date: {}", meta.date);
    let _ = writeln!(out, "- git commit: `{}`", meta.commit);
    let _ = writeln!(
        out,
        "- machine: {} cores (`nproc`); gateway, ceilings, Redis, PostgreSQL and the load generator all share them",
        meta.cores
    );
    for (k, v) in &meta.parameters {
        let _ = writeln!(out, "- {k}: {v}");
    }
    out.push('\n');
}

fn scenarios(out: &mut String, outcomes: &[Outcome], ceilings: &Ceilings) {
    let _ = writeln!(out, "## Scenarios\n");
    let _ = writeln!(
        out,
        "| scenario | requests | req/s | 200s | 200s/s | p50 | p90 | p99 | p99.9 | max | statuses | errors | gateway VmHWM | vs ceiling |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|");
    for o in outcomes {
        let s = &o.summary;
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            o.name,
            s.requests,
            s.requests_per_sec(),
            s.successes,
            s.successes_per_sec(),
            ms(s.p50),
            ms(s.p90),
            ms(s.p99),
            ms(s.p999),
            ms(s.max),
            s.statuses_text(),
            s.errors,
            o.peak_kib.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            ratio_text(o, ceilings),
        );
    }
    let _ = writeln!(
        out,
        "\n200s/s is over the window from the start to the last 200 (for a burst: while slots were left). \
         Burst rows compare 200s/s with the Postgres ceiling; the others compare req/s with the HTTP ceiling. \
         VmHWM is the gateway's peak resident memory since it started, read after the scenario.\n"
    );
}

fn ratio_text(outcome: &Outcome, ceilings: &Ceilings) -> String {
    let name = match against(&outcome.name) {
        Against::Http => "HTTP",
        Against::Postgres => "PG",
    };
    ratio(outcome, ceilings).map_or("n/a".into(), |(m, c)| format!("{:.2} x {name}", m / c))
}

fn ceiling_table(out: &mut String, ceilings: &Ceilings) {
    let _ = writeln!(out, "## Ceilings (same run)\n");
    let _ = writeln!(out, "| ceiling | what | rate/s | p50 | p99 |");
    let _ = writeln!(out, "|---|---|---:|---:|---:|");
    match &ceilings.http {
        Some(s) => {
            let _ = writeln!(
                out,
                "| HTTP | trivial actix-web server, same JSON body, 410 JSON answer, same workers and connections | {:.0} | {} | {} |",
                s.requests_per_sec(),
                ms(s.p50),
                ms(s.p99)
            );
        }
        None => {
            let _ = writeln!(out, "| HTTP | not measured | n/a | | |");
        }
    }
    let _ = writeln!(
        out,
        "| Redis | redis-benchmark, EVALSHA of lua/claim.lua, huge limit, random user ids | {} | | |",
        rate(ceilings.redis_per_sec)
    );
    let _ = writeln!(
        out,
        "| Postgres | pgbench, the COMMIT_SQL statement, random users/tickets, PG_POOL_SIZE clients | {} | | |",
        rate(ceilings.pg_per_sec)
    );
    let _ = writeln!(
        out,
        "| Postgres, batched | pgbench, the group commit's statement, fresh users/tickets, COMMIT_BATCH_COMMITTERS clients: credits/s | {} | | |",
        rate(ceilings.pg_batch_per_sec)
    );
    let _ = writeln!(
        out,
        "| Postgres, balance | pgbench -M prepared, the balance query, random users, PG_POOL_SIZE clients | {} | | |",
        rate(ceilings.pg_balance_per_sec)
    );
    let _ = writeln!(
        out,
        "| HTTP by wrk | wrk, same script (rotating tokens, sold-out code) against the trivial server | {} | | |",
        rate(ceilings.wrk_ceiling_per_sec)
    );
    let _ = writeln!(
        out,
        "| gateway by wrk | wrk against the gateway, sold-out code | {} | | |\n",
        rate(ceilings.wrk_flood_per_sec)
    );
}

fn targets(out: &mut String, outcomes: &[Outcome], ceilings: &Ceilings) {
    let _ = writeln!(out, "## Targets\n");
    let _ = writeln!(out, "| target | measured | ceiling | ratio | met |");
    let _ = writeln!(out, "|---|---:|---:|---:|---|");
    let find = |name: &str| outcomes.iter().find(|o| o.name == name);
    let http = ceilings.http.as_ref().map(Summary::requests_per_sec);
    if let Some(o) = find("burst") {
        let clean = o.summary.errors == 0 && o.invariants_hold() && o.summary.p99 <= Duration::from_millis(50);
        let p99 = ms(o.summary.p99);
        target_row(
            out,
            &format!("burst >= 1.5 x pgbench COMMIT_SQL (no errors, invariants hold, p99 {p99} <= 50 ms)"),
            o.summary.successes_per_sec(),
            ceilings.pg_per_sec,
            1.5,
            clean,
        );
    }
    if let Some(o) = find("flood") {
        target_row(
            out,
            "flood >= 0.8 x trivial actix (project loadgen)",
            o.summary.requests_per_sec(),
            http,
            0.8,
            true,
        );
    }
    if let Some(w) = ceilings.wrk_flood_per_sec {
        target_row(out, "flood >= 0.8 x trivial actix (wrk)", w, ceilings.wrk_ceiling_per_sec, 0.8, true);
    }
    if let Some(o) = find("balance") {
        let rps = o.summary.requests_per_sec();
        target_row(out, "balance >= 0.7 x pgbench balance query", rps, ceilings.pg_balance_per_sec, 0.7, true);
        target_row(out, "balance vs trivial actix (for reference)", rps, http, 0.0, true);
    }
    out.push('\n');
}

fn target_row(out: &mut String, name: &str, measured: f64, ceiling: Option<f64>, want: f64, clean: bool) {
    match ceiling.filter(|c| *c > 0.0) {
        Some(c) => {
            let met = if want == 0.0 {
                "-"
            } else if measured / c >= want && clean {
                "yes"
            } else {
                "**no**"
            };
            let _ = writeln!(out, "| {name} | {measured:.0}/s | {c:.0}/s | {:.2} | {met} |", measured / c);
        }
        None => {
            let _ = writeln!(out, "| {name} | {measured:.0}/s | n/a | | not measured |");
        }
    }
}

fn invariants(out: &mut String, outcomes: &[Outcome]) {
    let _ = writeln!(out, "## Invariants (checked in Postgres after each burst)\n");
    for o in outcomes {
        let Some(inv) = &o.invariants else { continue };
        let verdict = if inv.hold() { "hold".to_string() } else { format!("**BROKEN**: {}", inv.failures.join("; ")) };
        let _ = writeln!(
            out,
            "- {} (code {}): limit {}, 200s {}, redemptions {}, distinct users {}, credits {} summing to {} (limit x amount = {}), wallets off their ledger {} — {verdict}",
            o.name,
            inv.code,
            inv.limit,
            inv.http_successes,
            inv.redemptions,
            inv.distinct_users,
            inv.credits,
            inv.credited_sum,
            inv.expected_sum,
            inv.bad_balances
        );
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn rate(r: Option<f64>) -> String {
    r.map_or("n/a".into(), |r| format!("{r:.0}"))
}
