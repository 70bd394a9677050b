//! Redeem Gateway: a Redis-gated, Postgres-ledgered service that hands out
//! limited rewards fairly under a traffic spike. README.md explains the
//! design (how the gate works, what survives what); each module says what it owns.

pub mod auth;
pub mod cli;
pub mod codes;
pub mod config;
pub mod coupons;
pub mod db;
pub mod error;
pub mod http;
pub mod idempotency;
pub mod loadgen;
pub mod ratelimit;
pub mod reconciler;
pub mod redemption;
pub mod redis_conn;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod text;
pub mod vouchers;
pub mod wallet;
