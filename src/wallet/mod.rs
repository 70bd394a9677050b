//! Wallets and their ledger: balances and the history of credits and debits.
//! Code credits are written by the redemption commit, in its transaction;
//! services' credits and debits (and top-ups paid with a voucher) by `service`.

pub mod reader;
pub mod routes;
pub mod service;
pub mod store;
