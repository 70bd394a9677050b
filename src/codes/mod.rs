//! Codes: what they are (model), where they live (store), the in-process
//! cache the hot path reads, the report, and the admin routes.

pub mod admin;
pub mod cache;
pub mod contract;
pub mod live;
pub mod model;
pub mod report;
pub mod routes;
pub mod store;

pub use cache::{CachedCode, CodeCache};
pub use model::{Code, CodeKind, CodeName, CodeNameSchema, CodeStatus, NotNow, VoucherReward};
