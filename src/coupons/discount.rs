//! Discount arithmetic, in integer Toman, and [`quote`], which puts the rules
//! and the reward together into what the customer pays.
//!
//! Rounding rule (the one place it is written down):
//! - percent: `floor(eligible_subtotal * percent / 100)`, computed in `i128` so
//!   it cannot overflow, then capped by `max_discount`, then by the eligible
//!   subtotal. Rounding is always down, in the customer's disfavour by less
//!   than one Toman: 33% of 1001 is 330 (330.33 rounded down).
//! - fixed: `min(amount, eligible_subtotal)`, then capped by `max_discount`.
//!
//! So a discount is never negative, never more than the eligible subtotal nor
//! the cap, and `new_total = order_total - discount` is never negative. These
//! hold for any input, even a reward that [`CouponReward::validate`] would
//! refuse (a negative amount counts as 0, a percent over 100 is held to the
//! subtotal).

use serde::{Deserialize, Serialize};

use super::rules::{evaluate, Context, Reason, Rules};

/// What kind of discount a coupon gives. Serialized with a `type` tag:
/// `{"type": "percent", "percent": 10}` or `{"type": "fixed", "amount": 50000}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "type", deny_unknown_fields)]
pub enum DiscountKind {
    /// `percent` of the eligible subtotal, 1..=100, rounded down.
    #[schema(title = "PercentDiscount")]
    Percent {
        #[schema(minimum = 1, maximum = 100)]
        percent: u32,
    },
    /// A fixed amount in Toman, at most the eligible subtotal.
    #[schema(title = "FixedDiscount")]
    Fixed {
        #[schema(minimum = 1)]
        amount: i64,
    },
}

/// A checkout coupon's reward: the kind of discount, an optional cap on it,
/// and an optional minimum on the whole order's total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct CouponReward {
    pub kind: DiscountKind,
    /// The most the discount may be, in Toman (meant for percent coupons;
    /// it caps a fixed one too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_discount: Option<i64>,
    /// The order total (all lines, not only eligible ones) must be at least
    /// this; equal passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub min_order_amount: Option<i64>,
}

/// `floor(amount * percent / 100)` for a non-negative `amount`, in `i128`,
/// held to `[0, amount]` so the result always fits an `i64`.
pub fn percent_of(amount: i64, percent: u32) -> i64 {
    let amount = amount.max(0);
    let raw = i128::from(amount) * i128::from(percent) / 100;
    // raw <= amount * 4.3e9 / 100 fits i128; the clamp makes it fit i64.
    i64::try_from(raw.clamp(0, i128::from(amount))).unwrap_or(0)
}

impl CouponReward {
    /// The discount on `eligible_subtotal`, by the rounding rule in the module
    /// doc: always in `[0, min(eligible_subtotal, max_discount)]`.
    pub fn discount(&self, eligible_subtotal: i64) -> i64 {
        let subtotal = eligible_subtotal.max(0);
        let raw = match self.kind {
            DiscountKind::Percent { percent } => percent_of(subtotal, percent),
            DiscountKind::Fixed { amount } => amount,
        };
        let capped = match self.max_discount {
            Some(cap) => raw.min(cap),
            None => raw,
        };
        capped.clamp(0, subtotal)
    }

    /// Checks a reward before an admin saves it: percent in 1..=100, a
    /// positive fixed amount, and a positive cap and minimum when given.
    pub fn validate(&self) -> Result<(), String> {
        match self.kind {
            DiscountKind::Percent { percent } if !(1..=100).contains(&percent) => {
                return Err(format!("kind.percent: {percent} is outside 1..=100"));
            }
            DiscountKind::Fixed { amount } if amount <= 0 => {
                return Err(format!("kind.amount: {amount} is not a positive amount of Toman"));
            }
            _ => {}
        }
        if let Some(cap) = self.max_discount {
            if cap <= 0 {
                return Err(format!("max_discount: {cap} is not positive; omit it for no cap"));
            }
        }
        if let Some(min) = self.min_order_amount {
            if min <= 0 {
                return Err(format!("min_order_amount: {min} is not positive; omit it for no minimum"));
            }
        }
        Ok(())
    }
}

/// What the customer would pay with the coupon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub struct Quote {
    /// True exactly when `reasons` is empty.
    pub eligible: bool,
    /// Every failing rule (including `below_minimum_order`), in [`Reason`] order.
    pub reasons: Vec<Reason>,
    /// All lines; 0 when the order is invalid.
    pub order_total: i64,
    /// The lines the coupon applies to; 0 when the order is invalid.
    pub eligible_subtotal: i64,
    /// 0 when not eligible.
    pub discount: i64,
    /// `order_total - discount`, never negative.
    pub new_total: i64,
}

/// Evaluates `rules` on `ctx`, checks the reward's minimum order amount on
/// the order total, and prices the discount. When anything fails the
/// discount is 0 and `new_total` is the order total.
pub fn quote(rules: &Rules, reward: &CouponReward, ctx: &Context<'_>) -> Quote {
    let evaluation = evaluate(rules, ctx);
    let mut reasons = evaluation.reasons;
    let order_valid = !reasons.contains(&Reason::InvalidOrder);
    if let Some(min) = reward.min_order_amount {
        if order_valid && evaluation.order_total < min {
            reasons.push(Reason::BelowMinimumOrder);
            reasons.sort_unstable();
        }
    }
    let eligible = reasons.is_empty();
    let discount = if eligible { reward.discount(evaluation.eligible_subtotal) } else { 0 };
    // eligible_subtotal <= order_total and discount <= eligible_subtotal, so
    // this cannot go below 0; the clamp states it rather than trusts it.
    let new_total = evaluation.order_total.saturating_sub(discount).max(0);
    Quote {
        eligible,
        reasons,
        order_total: evaluation.order_total,
        eligible_subtotal: evaluation.eligible_subtotal,
        discount,
        new_total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coupons::rules::{Order, OrderLine, DEFAULT_WEEKEND};
    use chrono::{DateTime, Utc};
    use chrono_tz::Asia::Tehran;

    fn percent(percent: u32, max_discount: Option<i64>) -> CouponReward {
        CouponReward { kind: DiscountKind::Percent { percent }, max_discount, min_order_amount: None }
    }

    fn fixed(amount: i64, max_discount: Option<i64>) -> CouponReward {
        CouponReward { kind: DiscountKind::Fixed { amount }, max_discount, min_order_amount: None }
    }

    #[test]
    fn discount_table() {
        // (name, reward, eligible subtotal, expected discount)
        let rows: Vec<(&str, CouponReward, i64, i64)> = vec![
            ("33% of 1001 rounds down (330.33)", percent(33, None), 1001, 330),
            ("10% of 999 rounds down (99.9)", percent(10, None), 999, 99),
            ("1% of 99 rounds down to 0", percent(1, None), 99, 0),
            ("1% of 100", percent(1, None), 100, 1),
            ("50% of an odd amount", percent(50, None), 1001, 500),
            ("99% of 1", percent(99, None), 1, 0),
            ("100% is the whole subtotal", percent(100, None), 1001, 1001),
            ("percent under the cap", percent(50, Some(600)), 1000, 500),
            ("percent at the cap", percent(50, Some(500)), 1000, 500),
            ("percent over the cap", percent(50, Some(300)), 1000, 300),
            ("cap of 1", percent(100, Some(1)), 1_000_000, 1),
            ("percent of 0", percent(50, None), 0, 0),
            ("percent of i64::MAX does not overflow", percent(50, None), i64::MAX, i64::MAX / 2),
            ("99% of i64::MAX", percent(99, None), i64::MAX, ((i64::MAX as i128) * 99 / 100) as i64),
            ("100% of i64::MAX", percent(100, None), i64::MAX, i64::MAX),
            ("fixed under the subtotal", fixed(2_000, None), 3_000, 2_000),
            ("fixed equal to the subtotal", fixed(3_000, None), 3_000, 3_000),
            ("fixed larger than the subtotal", fixed(5_000, None), 3_000, 3_000),
            ("fixed of a 0 subtotal", fixed(5_000, None), 0, 0),
            ("fixed capped", fixed(2_000, Some(1_500)), 3_000, 1_500),
            // Inputs validate() refuses still give a discount in bounds.
            ("percent over 100 held to the subtotal", percent(250, None), 1_000, 1_000),
            ("percent u32::MAX of i64::MAX", percent(u32::MAX, None), i64::MAX, i64::MAX),
            ("percent 0", percent(0, None), 1_000, 0),
            ("negative fixed amount is 0", fixed(-5, None), 1_000, 0),
            ("negative cap is 0", percent(50, Some(-1)), 1_000, 0),
            ("negative subtotal is 0", fixed(100, None), -1_000, 0),
        ];
        for (name, reward, subtotal, want) in rows {
            assert_eq!(reward.discount(subtotal), want, "{name}");
        }
    }

    #[test]
    fn percent_of_is_floor() {
        assert_eq!(percent_of(1001, 33), 330);
        assert_eq!(percent_of(0, 100), 0);
        assert_eq!(percent_of(-5, 50), 0);
        assert_eq!(percent_of(i64::MAX, 100), i64::MAX);
    }

    fn order(lines: &[(&str, &str, i64, i64)]) -> Order {
        Order {
            number: "ORD-1".into(),
            payment_method: "card".into(),
            lines: lines
                .iter()
                .map(|&(sku, category, unit_price, quantity)| OrderLine {
                    sku: sku.into(),
                    category: category.into(),
                    unit_price,
                    quantity,
                })
                .collect(),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-17T08:00:00Z").unwrap().with_timezone(&Utc)
    }

    /// Total 245_000; books 30_000.
    fn sample() -> Order {
        order(&[("A1", "shoes", 100_000, 2), ("B2", "books", 30_000, 1), ("C3", "shoes", 5_000, 3)])
    }

    #[test]
    fn quote_table() {
        let books = Rules { categories: Some(vec!["books".into()]), ..Rules::default() };
        let only_user_1 = Rules { users: Some(vec![1]), ..Rules::default() };
        let with_min = |reward: CouponReward, min: i64| CouponReward { min_order_amount: Some(min), ..reward };
        // (name, rules, reward, order, eligible, reasons, total, subtotal, discount, new total)
        type Row = (&'static str, Rules, CouponReward, Order, bool, Vec<Reason>, i64, i64, i64, i64);
        let rows: Vec<Row> = vec![
            (
                "10% of everything",
                Rules::default(),
                percent(10, None),
                sample(),
                true,
                vec![],
                245_000,
                245_000,
                24_500,
                220_500,
            ),
            (
                "10% of the books only",
                books.clone(),
                percent(10, None),
                sample(),
                true,
                vec![],
                245_000,
                30_000,
                3_000,
                242_000,
            ),
            (
                "fixed larger than the books",
                books.clone(),
                fixed(50_000, None),
                sample(),
                true,
                vec![],
                245_000,
                30_000,
                30_000,
                215_000,
            ),
            (
                "min order equal to the total passes",
                Rules::default(),
                with_min(fixed(1_000, None), 245_000),
                sample(),
                true,
                vec![],
                245_000,
                245_000,
                1_000,
                244_000,
            ),
            (
                "min order one above the total fails",
                Rules::default(),
                with_min(fixed(1_000, None), 245_001),
                sample(),
                false,
                vec![Reason::BelowMinimumOrder],
                245_000,
                245_000,
                0,
                245_000,
            ),
            (
                "min order is on the total, not the eligible subtotal",
                books.clone(),
                with_min(percent(10, None), 100_000),
                sample(),
                true,
                vec![],
                245_000,
                30_000,
                3_000,
                242_000,
            ),
            (
                "min order failing with another rule: both, in order",
                only_user_1,
                with_min(percent(10, None), 1_000_000),
                sample(),
                false,
                vec![Reason::UserNotAllowed, Reason::BelowMinimumOrder],
                245_000,
                245_000,
                0,
                245_000,
            ),
            (
                "invalid order: no minimum judged",
                Rules::default(),
                with_min(percent(10, None), 1_000),
                order(&[]),
                false,
                vec![Reason::InvalidOrder],
                0,
                0,
                0,
                0,
            ),
            (
                "100% of an order brings it to 0",
                Rules::default(),
                percent(100, None),
                sample(),
                true,
                vec![],
                245_000,
                245_000,
                245_000,
                0,
            ),
            (
                "the cap bounds a 100% coupon",
                Rules::default(),
                percent(100, Some(50_000)),
                sample(),
                true,
                vec![],
                245_000,
                245_000,
                50_000,
                195_000,
            ),
            (
                "free line only: eligible, 0 off",
                Rules { skus: Some(vec!["GIFT".into()]), ..Rules::default() },
                percent(50, None),
                order(&[("A1", "shoes", 100, 1), ("GIFT", "gift", 0, 2)]),
                true,
                vec![],
                100,
                0,
                0,
                100,
            ),
            (
                "huge order: no overflow",
                Rules::default(),
                percent(100, None),
                order(&[("A1", "shoes", i64::MAX, 1)]),
                true,
                vec![],
                i64::MAX,
                i64::MAX,
                i64::MAX,
                0,
            ),
        ];
        for (name, rules, reward, order, eligible, reasons, total, subtotal, discount, new_total) in rows {
            let ctx = Context { user_id: 7, order: &order, now: now(), tz: Tehran, weekend: DEFAULT_WEEKEND };
            let want =
                Quote { eligible, reasons, order_total: total, eligible_subtotal: subtotal, discount, new_total };
            assert_eq!(quote(&rules, &reward, &ctx), want, "{name}");
        }
    }

    #[test]
    fn validate_reward() {
        assert_eq!(percent(1, None).validate(), Ok(()));
        assert_eq!(percent(100, Some(1)).validate(), Ok(()));
        assert_eq!(fixed(1, None).validate(), Ok(()));
        assert_eq!(CouponReward { min_order_amount: Some(1), ..fixed(10, Some(5)) }.validate(), Ok(()));
        let cases = [
            (percent(0, None), "kind.percent: 0 is outside 1..=100"),
            (percent(101, None), "kind.percent: 101 is outside 1..=100"),
            (fixed(0, None), "kind.amount: 0 is not a positive amount"),
            (fixed(-1, None), "kind.amount: -1 is not a positive amount"),
            (percent(10, Some(0)), "max_discount: 0 is not positive"),
            (CouponReward { min_order_amount: Some(-1), ..percent(10, None) }, "min_order_amount: -1 is not positive"),
        ];
        for (reward, want) in cases {
            let err = reward.validate().unwrap_err();
            assert!(err.starts_with(want), "{err:?} should start with {want:?}");
        }
    }

    #[test]
    fn reward_json_shape() {
        let reward = CouponReward { min_order_amount: Some(100_000), ..percent(15, Some(50_000)) };
        let json = serde_json::json!({
            "kind": {"type": "percent", "percent": 15},
            "max_discount": 50_000,
            "min_order_amount": 100_000,
        });
        assert_eq!(serde_json::to_value(reward).unwrap(), json);
        assert_eq!(serde_json::from_value::<CouponReward>(json).unwrap(), reward);
        let fixed_json = serde_json::json!({"kind": {"type": "fixed", "amount": 20_000}});
        assert_eq!(serde_json::from_value::<CouponReward>(fixed_json).unwrap(), fixed(20_000, None));
        assert!(serde_json::from_value::<CouponReward>(
            serde_json::json!({"kind": {"type": "percent", "percent": 1.5}})
        )
        .is_err());
        assert!(serde_json::from_value::<CouponReward>(
            serde_json::json!({"kind": {"type": "fixed", "amount": 1}, "cap": 3})
        )
        .is_err());
    }
}
