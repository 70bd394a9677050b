//! Fault tests: real gateway processes, a real Redis and PostgreSQL, real
//! kills. Each runs a burst (limit L, many more users than L, concurrent),
//! injects one fault mid-burst, lets the reconciler run, tops demand up with a
//! second wave, and checks: redemptions == L, no user twice, ledger sum ==
//! L x amount, every balance == its ledger, every 200 backed by a row.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster;
mod failover;
mod harness;
mod load;
#[path = "../support/local_pg.rs"]
mod local_pg;
mod pause;
mod scenarios;
