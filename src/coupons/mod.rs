//! Coupons: the eligibility rules a reward may carry (order, payment method,
//! user, items, special days, days of the week) and the integer discount
//! arithmetic (pure: `rules`, `discount`), and the checkout's quote, redeem
//! and cancel through the gate (`store` -> `service` -> thin `routes`).

pub mod discount;
pub mod routes;
pub mod rules;
pub mod service;
pub mod store;

#[cfg(test)]
mod proptests;

pub use discount::{quote, CouponReward, DiscountKind, Quote};
pub use rules::{
    evaluate, Context, DayRule, Evaluation, Order, OrderLine, Reason, Rules, DEFAULT_TIME_ZONE, DEFAULT_WEEKEND,
};
