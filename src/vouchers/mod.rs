//! Voucher campaigns: the first N users who log in during a campaign get a
//! percentage voucher, once each, through the same gate as credit codes.

pub mod routes;
pub mod service;
pub mod store;
