//! Integration tests: each spawns the real app on a random port against its
//! own fresh Postgres database and Redis key prefix (the project-local
//! services from scripts/services.sh), and talks HTTP to it like a client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;
#[path = "../support/local_pg.rs"]
mod local_pg;
mod pgproxy;

mod abuse;
mod admin;
mod auth;
mod bad_input;
mod balance_reads;
mod batching;
mod cluster;
mod controls;
mod coupons;
mod openapi;
mod operations;
mod reconciler;
mod redemption;
mod retries;
mod scale;
mod services;
mod slots;
mod stranger;
mod tokens;
mod vouchers;
mod wallet;
