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
        "| Postgres | pgbench, the COMMIT_SQL statement, random users/tickets, PG_POOL_SIZE clients | {} | | |\n",
        rate(ceilings.pg_per_sec)
    );
}

fn targets(out: &mut String, outcomes: &[Outcome], ceilings: &Ceilings) {
    let _ = writeln!(out, "## Targets\n");
    let _ = writeln!(out, "| target | measured | ceiling | ratio | met |");
    let _ = writeln!(out, "|---|---:|---:|---:|---|");
    for (name, want) in [("flood", 0.8), ("burst", 0.7), ("balance", 0.5)] {
        let Some(o) = outcomes.iter().find(|o| o.name == name) else { continue };
        let Some((m, c)) = ratio(o, ceilings) else {
            let _ = writeln!(out, "| {name} >= {want} x ceiling | | n/a | | not measured |");
            continue;
        };
        let clean = name != "burst" || (o.summary.errors == 0 && o.invariants_hold());
        let met = m / c >= want && clean;
        let _ = writeln!(
            out,
            "| {name} >= {want} x ceiling{} | {m:.0}/s | {c:.0}/s | {:.2} | {} |",
            if name == "burst" { " (no errors, invariants hold)" } else { "" },
            m / c,
            if met { "yes" } else { "**no**" }
        );
    }
    out.push('\n');
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
