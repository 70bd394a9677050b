//! Property tests: for arbitrary orders, rules and rewards, evaluate and quote
//! never panic, the discount stays in bounds, and huge values give
//! `invalid_order` instead of overflowing.

use chrono::{DateTime, NaiveDate, Utc, Weekday};
use chrono_tz::Tz;
use proptest::prelude::*;

use super::discount::{quote, CouponReward, DiscountKind};
use super::rules::{evaluate, Context, DayRule, Order, OrderLine, Reason, Rules};

const SKUS: &[&str] = &["A1", "B2", "C3", "D4"];
const CATEGORIES: &[&str] = &["shoes", "books", "toys"];
const ZONES: &[Tz] = &[
    chrono_tz::Asia::Tehran,
    chrono_tz::UTC,
    chrono_tz::America::New_York,
    chrono_tz::Pacific::Kiritimati,
    chrono_tz::Pacific::Pago_Pago,
    chrono_tz::Asia::Kathmandu,
];
const DAYS: &[Weekday] =
    &[Weekday::Mon, Weekday::Tue, Weekday::Wed, Weekday::Thu, Weekday::Fri, Weekday::Sat, Weekday::Sun];

/// Any i64, weighted towards the small, the edges and the huge.
fn any_amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 0i64..1_000_000,
        1 => Just(0i64),
        1 => -10i64..=0,
        1 => (i64::MAX / 4)..=i64::MAX,
        1 => any::<i64>(),
    ]
}

fn any_line() -> impl Strategy<Value = OrderLine> {
    (prop::sample::select(SKUS), prop::sample::select(CATEGORIES), any_amount(), any_amount()).prop_map(
        |(sku, category, unit_price, quantity)| OrderLine {
            sku: sku.to_string(),
            category: category.to_string(),
            unit_price,
            quantity,
        },
    )
}

fn any_order() -> impl Strategy<Value = Order> {
    (
        prop::sample::select(&["ORD-1", "ORD-2"][..]),
        prop::sample::select(&["card", "wallet"][..]),
        prop::collection::vec(any_line(), 0..6),
    )
        .prop_map(|(number, payment, lines)| Order {
            number: number.to_string(),
            payment_method: payment.to_string(),
            lines,
        })
}

fn some_of(items: &'static [&'static str]) -> impl Strategy<Value = Option<Vec<String>>> {
    prop::option::of(prop::sample::subsequence(items, 0..=items.len()))
        .prop_map(|o| o.map(|v| v.into_iter().map(str::to_string).collect()))
}

fn any_date() -> impl Strategy<Value = NaiveDate> {
    // 2026-03-14 ..= 2026-03-24, around the Tehran examples.
    (14u32..=24).prop_filter_map("a date", |d| NaiveDate::from_ymd_opt(2026, 3, d))
}

fn any_day_rule() -> impl Strategy<Value = DayRule> {
    prop::sample::select(
        &[
            DayRule::Mon,
            DayRule::Tue,
            DayRule::Wed,
            DayRule::Thu,
            DayRule::Fri,
            DayRule::Sat,
            DayRule::Sun,
            DayRule::Weekend,
            DayRule::Weekday,
        ][..],
    )
}

fn any_rules() -> impl Strategy<Value = Rules> {
    (
        some_of(&["ORD-1", "ORD-3"]),
        some_of(&["card", "cash"]),
        prop::option::of(prop::collection::vec(0i64..10, 0..3)),
        some_of(SKUS),
        some_of(CATEGORIES),
        prop::option::of(prop::collection::vec(any_date(), 0..3)),
        prop::option::of(prop::collection::vec(any_day_rule(), 0..4)),
    )
        .prop_map(|(order_numbers, payment_methods, users, skus, categories, special_days, days_of_week)| Rules {
            order_numbers,
            payment_methods,
            users,
            skus,
            categories,
            special_days,
            days_of_week,
        })
}

fn any_reward() -> impl Strategy<Value = CouponReward> {
    let kind = prop_oneof![
        prop_oneof![1u32..=100, any::<u32>()].prop_map(|percent| DiscountKind::Percent { percent }),
        any_amount().prop_map(|amount| DiscountKind::Fixed { amount }),
    ];
    (kind, prop::option::of(any_amount()), prop::option::of(any_amount()))
        .prop_map(|(kind, max_discount, min_order_amount)| CouponReward { kind, max_discount, min_order_amount })
}

fn any_now() -> impl Strategy<Value = DateTime<Utc>> {
    // 2026-03-14T00:00:00Z plus up to 11 days, to the second.
    (0i64..11 * 86_400).prop_filter_map("an instant", |s| DateTime::from_timestamp(1_773_446_400 + s, 0))
}

fn any_weekend() -> impl Strategy<Value = Vec<Weekday>> {
    prop::sample::subsequence(DAYS, 0..=2)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn quote_stays_in_bounds(
        rules in any_rules(),
        reward in any_reward(),
        order in any_order(),
        user_id in 0i64..10,
        now in any_now(),
        tz in prop::sample::select(ZONES),
        weekend in any_weekend(),
    ) {
        let ctx = Context { user_id, order: &order, now, tz, weekend: &weekend };
        let q = quote(&rules, &reward, &ctx);

        prop_assert!(q.discount >= 0);
        prop_assert!(q.discount <= q.eligible_subtotal);
        if let Some(cap) = reward.max_discount {
            prop_assert!(q.discount <= cap.max(0));
        }
        prop_assert!(q.eligible_subtotal >= 0);
        prop_assert!(q.eligible_subtotal <= q.order_total);
        prop_assert!(q.new_total >= 0);
        prop_assert_eq!(q.new_total, q.order_total - q.discount);
        prop_assert_eq!(q.eligible, q.reasons.is_empty());
        if !q.eligible {
            prop_assert_eq!(q.discount, 0);
        }
        prop_assert!(q.reasons.windows(2).all(|w| w[0] < w[1]), "reasons sorted, no repeats: {:?}", q.reasons);
        if let Some(min) = reward.min_order_amount {
            let below = q.reasons.contains(&Reason::BelowMinimumOrder);
            let invalid = q.reasons.contains(&Reason::InvalidOrder);
            prop_assert_eq!(below, !invalid && q.order_total < min);
        }

        // quote adds nothing to evaluate but the minimum and the price.
        let e = evaluate(&rules, &ctx);
        let mut without_min = q.reasons.clone();
        without_min.retain(|r| *r != Reason::BelowMinimumOrder);
        prop_assert_eq!(e.reasons, without_min);
        prop_assert_eq!(e.order_total, q.order_total);
        prop_assert_eq!(e.eligible_subtotal, q.eligible_subtotal);
    }

    #[test]
    fn evaluate_reports_invalid_exactly_when_arithmetic_fails(
        rules in any_rules(),
        order in any_order(),
        now in any_now(),
        tz in prop::sample::select(ZONES),
    ) {
        let ctx = Context { user_id: 1, order: &order, now, tz, weekend: &[Weekday::Fri] };
        let e = evaluate(&rules, &ctx);
        // A reference computed in i128, which cannot overflow for <= 6 lines.
        let valid_lines = order.lines.iter().all(|l| l.quantity > 0 && l.unit_price >= 0);
        let total: i128 = order.lines.iter().map(|l| i128::from(l.unit_price) * i128::from(l.quantity)).sum();
        let valid = !order.lines.is_empty() && valid_lines && total <= i128::from(i64::MAX);
        prop_assert_eq!(e.reasons.contains(&Reason::InvalidOrder), !valid);
        if valid {
            prop_assert_eq!(i128::from(e.order_total), total);
        } else {
            prop_assert_eq!((e.order_total, e.eligible_subtotal), (0, 0));
            prop_assert!(!e.eligible);
        }
    }

    #[test]
    fn huge_orders_are_invalid_not_overflowing(
        unit_price in (i64::MAX / 2 + 1)..=i64::MAX,
        quantity in 2i64..1_000,
        extra in prop::collection::vec(any_line(), 0..3),
        reward in any_reward(),
    ) {
        let mut lines = vec![OrderLine { sku: "A1".into(), category: "shoes".into(), unit_price, quantity }];
        lines.extend(extra);
        let order = Order { number: "ORD-1".into(), payment_method: "card".into(), lines };
        let ctx = Context { user_id: 1, order: &order, now: DateTime::from_timestamp(1_773_446_400, 0).unwrap(), tz: chrono_tz::Asia::Tehran, weekend: &[] };
        let q = quote(&Rules::default(), &reward, &ctx);
        prop_assert_eq!(q.reasons, vec![Reason::InvalidOrder]);
        prop_assert_eq!((q.order_total, q.eligible_subtotal, q.discount, q.new_total), (0, 0, 0, 0));
    }

    #[test]
    fn valid_rewards_on_valid_orders_match_the_rounding_rule(
        subtotal in 0i64..=i64::MAX,
        percent in 1u32..=100,
        cap in prop::option::of(1i64..=i64::MAX),
        amount in 1i64..=i64::MAX,
    ) {
        let pct = CouponReward { kind: DiscountKind::Percent { percent }, max_discount: cap, min_order_amount: None };
        prop_assert_eq!(pct.validate(), Ok(()));
        let floor = i128::from(subtotal) * i128::from(percent) / 100;
        let want = floor.min(i128::from(cap.unwrap_or(i64::MAX))).min(i128::from(subtotal));
        prop_assert_eq!(i128::from(pct.discount(subtotal)), want);

        let fix = CouponReward { kind: DiscountKind::Fixed { amount }, max_discount: None, min_order_amount: None };
        prop_assert_eq!(fix.discount(subtotal), amount.min(subtotal));
    }
}
