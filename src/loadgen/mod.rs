//! The load generator behind `loadgen` (src/bin/loadgen.rs) and the smoke
//! test: fixtures made fast through the library (`setup`), a fixed pool of
//! keep-alive connections (`client`, `driver`), exact latency statistics
//! (`stats`), the scenarios, the invariants checked in Postgres afterwards
//! (`verify`), the trivial HTTP ceiling server (`ceiling`), the pgbench
//! script of the Postgres ceiling (`pgbench`) and the markdown
//! report (`report`).

pub mod ceiling;
pub mod client;
pub mod driver;
pub mod pgbench;
pub mod report;
pub mod scenarios;
pub mod setup;
pub mod stats;
pub mod verify;

pub use scenarios::{Bench, Outcome};
