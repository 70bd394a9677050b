//! Wallets and their ledger: balances and the history of credits. Credits
//! themselves are written by the redemption commit, in its transaction.

pub mod routes;
pub mod store;
