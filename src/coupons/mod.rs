//! Coupons: the eligibility rules a reward may carry (order, payment method,
//! user, items, special days, days of the week) and the integer discount
//! arithmetic. Pure functions only: no database, no HTTP, no Redis.

pub mod discount;
pub mod rules;

#[cfg(test)]
mod proptests;

pub use discount::{quote, CouponReward, DiscountKind, Quote};
pub use rules::{
    evaluate, Context, DayRule, Evaluation, Order, OrderLine, Reason, Rules, DEFAULT_TIME_ZONE, DEFAULT_WEEKEND,
};
