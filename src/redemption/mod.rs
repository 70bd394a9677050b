//! The redemption path: the Redis gate (claim / release, Lua), the Postgres
//! commit (one statement: redemption + wallet + ledger), and the service that
//! orders them. Only `service` knows both the gate and the commit. In the
//! split (role `redemption`) the credit goes through `outbox` to the wallet service.

pub mod batcher;
pub mod commit;
pub mod gate;
pub mod outbox;
pub mod routes;
pub mod service;
pub mod touched;

pub use gate::Gate;
