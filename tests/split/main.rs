//! The split (issue #18): a wallet process and a redemption process, each
//! with its own database, credits over REST through the redemption side's
//! outbox. Real processes (the debug binary, twice), a real Redis and
//! PostgreSQL, real kills, and a proxy that loses the wallet's answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../faults/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "../faults/load.rs"]
#[allow(dead_code)]
mod load;
#[path = "../support/local_pg.rs"]
mod local_pg;

mod drop_proxy;
mod setup;

mod credit_api;
mod scenarios;
