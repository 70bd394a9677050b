//! The eligibility rules a reward may carry, and [`evaluate`], which judges an
//! order against them and lists every rule that fails.
//!
//! Every rule is optional; all that are present must hold. A present but empty
//! list allows nothing (it fails closed); [`Rules::validate`] refuses one, so an
//! admin never saves it by mistake.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, NaiveDate, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// The weekend the service will use unless a market says otherwise: Friday,
/// as in Iran, whose zone is [`DEFAULT_TIME_ZONE`]. It is only a default:
/// [`evaluate`] takes the weekend from the caller, because it differs by
/// market (e.g. `&[Weekday::Sat, Weekday::Sun]` elsewhere).
pub const DEFAULT_WEEKEND: &[Weekday] = &[Weekday::Fri];

/// The time zone a code's day rules will be judged in unless the code names
/// its own: `Asia/Tehran`, UTC+03:30 all year (Iran has had no daylight
/// saving since 2022). Nothing reads it yet; callers pass `tz` in [`Context`].
pub const DEFAULT_TIME_ZONE: Tz = chrono_tz::Asia::Tehran;

/// Longest list a rule may hold (see [`Rules::validate`]).
pub const MAX_LIST_LEN: usize = 10_000;
/// Longest string (in characters) a rule's list may hold.
pub const MAX_STR_LEN: usize = 64;

/// The spec's schema of one string in a rule's list, from the same bounds
/// [`Rules::validate`] checks: 1..=[`MAX_STR_LEN`] characters, not only
/// white space, no control character ([`crate::text::is_text`]).
pub struct RuleString;

impl utoipa::PartialSchema for RuleString {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::text::text_schema(1, MAX_STR_LEN, crate::text::NOT_BLANK_PATTERN)
    }
}

impl utoipa::ToSchema for RuleString {}

/// The spec's schema of a user id in `users`: a positive integer.
pub struct RuleUserId;

impl utoipa::PartialSchema for RuleUserId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(1))
            .into()
    }
}

impl utoipa::ToSchema for RuleUserId {}

/// Most lines an order may have. With every string at its longest
/// ([`crate::text::LABEL_MAX`] characters of 4-byte UTF-8) and every number
/// at its widest, a redeem request still fits the default body limit
/// (`config::DEFAULT_BODY_LIMIT_BYTES`, 16 KiB): any order the spec allows
/// is one the gateway reads (`service::tests::the_largest_order_fits_the_body_limit`).
pub const MAX_ORDER_LINES: usize = 25;

/// The order a coupon is judged against. Amounts are integer Toman.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub struct Order {
    /// 1-64 characters, no control character.
    #[schema(value_type = crate::text::Label, example = "ORD-1001")]
    pub number: String,
    /// 1-64 characters, no control character.
    #[schema(value_type = crate::text::Label, example = "card")]
    pub payment_method: String,
    /// 1-25 lines ([`MAX_ORDER_LINES`]).
    #[schema(min_items = 1, max_items = 25)]
    pub lines: Vec<OrderLine>,
}

/// One line of an [`Order`]: `unit_price * quantity` Toman.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub struct OrderLine {
    /// 1-64 characters, no control character.
    #[schema(value_type = crate::text::Label, example = "A1")]
    pub sku: String,
    /// 1-64 characters, no control character.
    #[schema(value_type = crate::text::Label, example = "shoes")]
    pub category: String,
    pub unit_price: i64,
    pub quantity: i64,
}

impl OrderLine {
    /// `unit_price * quantity`, or `None` if the line is invalid: a quantity
    /// that is not positive, a negative price, or a product that overflows.
    /// A price of 0 (a free item) is valid.
    pub fn amount(&self) -> Option<i64> {
        if self.quantity <= 0 || self.unit_price < 0 {
            return None;
        }
        self.unit_price.checked_mul(self.quantity)
    }
}

impl Order {
    /// The sum of all lines, or `None` if the order is invalid: no lines, an
    /// invalid line (see [`OrderLine::amount`]), or a sum that overflows.
    pub fn total(&self) -> Option<i64> {
        if self.lines.is_empty() {
            return None;
        }
        self.lines.iter().try_fold(0i64, |sum, line| sum.checked_add(line.amount()?))
    }
}

/// A day-of-week rule: one day, or a shorthand judged against the caller's
/// weekend (`weekend` = a day in it, `weekday` = a day not in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DayRule {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
    Weekend,
    Weekday,
}

impl DayRule {
    /// Whether `day` satisfies this rule, given the market's `weekend`.
    pub fn matches(self, day: Weekday, weekend: &[Weekday]) -> bool {
        let exact = |d: Weekday| day == d;
        match self {
            DayRule::Mon => exact(Weekday::Mon),
            DayRule::Tue => exact(Weekday::Tue),
            DayRule::Wed => exact(Weekday::Wed),
            DayRule::Thu => exact(Weekday::Thu),
            DayRule::Fri => exact(Weekday::Fri),
            DayRule::Sat => exact(Weekday::Sat),
            DayRule::Sun => exact(Weekday::Sun),
            DayRule::Weekend => weekend.contains(&day),
            DayRule::Weekday => !weekend.contains(&day),
        }
    }
}

/// The rules a coupon carries. Every field is optional; all that are present
/// must hold.
///
/// Items: with neither `skus` nor `categories`, every line is eligible. With
/// either or both, a line is eligible if its sku is in `skus` OR its category
/// is in `categories` (a union: "all shoes plus sku X"). To limit a coupon to
/// some skus of a category, list those skus alone. The discount applies only
/// to the eligible lines.
///
/// Days (`special_days`, `days_of_week`) are judged on the calendar date and
/// weekday of `now` in the code's time zone, not in UTC.
/// Each list holds 1 to 10,000 entries; omit a rule to allow any value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", default, deny_unknown_fields)]
pub struct Rules {
    /// Valid only for these order numbers.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<RuleString>>, min_items = 1, max_items = 10000)]
    pub order_numbers: Option<Vec<String>>,
    /// Valid only when paying with one of these methods.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<RuleString>>, min_items = 1, max_items = 10000)]
    pub payment_methods: Option<Vec<String>>,
    /// Personal: valid only for these user ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<RuleUserId>>, min_items = 1, max_items = 10000)]
    pub users: Option<Vec<i64>>,
    /// The discount applies only to lines with these skus (or categories).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<RuleString>>, min_items = 1, max_items = 10000)]
    pub skus: Option<Vec<String>>,
    /// The discount applies only to lines in these categories (or skus).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<RuleString>>, min_items = 1, max_items = 10000)]
    pub categories: Option<Vec<String>>,
    /// Valid only on these calendar dates, in the code's time zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1, max_items = 10000)]
    pub special_days: Option<Vec<NaiveDate>>,
    /// Valid only on these days of the week, in the code's time zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1, max_items = 10000)]
    pub days_of_week: Option<Vec<DayRule>>,
}

/// Why a coupon does not apply. Serialized as a stable snake_case code, e.g.
/// `"not_a_special_day"`; [`Evaluation::reasons`] lists them in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    OrderNotAllowed,
    PaymentMethodNotAllowed,
    UserNotAllowed,
    NoEligibleItems,
    NotASpecialDay,
    DayOfWeekNotAllowed,
    BelowMinimumOrder,
    InvalidOrder,
}

impl Reason {
    /// The stable code, the same string serde writes.
    pub fn code(self) -> &'static str {
        match self {
            Reason::OrderNotAllowed => "order_not_allowed",
            Reason::PaymentMethodNotAllowed => "payment_method_not_allowed",
            Reason::UserNotAllowed => "user_not_allowed",
            Reason::NoEligibleItems => "no_eligible_items",
            Reason::NotASpecialDay => "not_a_special_day",
            Reason::DayOfWeekNotAllowed => "day_of_week_not_allowed",
            Reason::BelowMinimumOrder => "below_minimum_order",
            Reason::InvalidOrder => "invalid_order",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// What [`evaluate`] judges: who, which order, and when and where.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub user_id: i64,
    pub order: &'a Order,
    /// The instant of the request; converted to `tz` for day rules.
    pub now: DateTime<Utc>,
    /// The code's IANA time zone, usually [`DEFAULT_TIME_ZONE`].
    pub tz: Tz,
    /// The market's weekend, for the `weekend`/`weekday` shorthands; usually
    /// [`DEFAULT_WEEKEND`].
    pub weekend: &'a [Weekday],
}

/// The verdict of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct Evaluation {
    /// True exactly when `reasons` is empty.
    pub eligible: bool,
    /// Every rule that failed, not just the first, in [`Reason`] order.
    pub reasons: Vec<Reason>,
    /// Sum of all lines; 0 when the order is invalid.
    pub order_total: i64,
    /// Sum of the eligible lines' `unit_price * quantity`; 0 when the order
    /// is invalid.
    pub eligible_subtotal: i64,
}

/// Judges `ctx` against every rule in `rules` and lists every one that fails.
///
/// Never panics and never overflows: an order with no lines, a line with a
/// quantity below 1 or a negative price, or amounts whose sum does not fit in
/// an `i64` gives [`Reason::InvalidOrder`] (with totals of 0). The other rules
/// are still judged, so the caller sees all reasons at once; `no_eligible_items`
/// is judged on skus/categories only, so it is reported for an invalid order
/// too when no line matches.
pub fn evaluate(rules: &Rules, ctx: &Context<'_>) -> Evaluation {
    let mut reasons = BTreeSet::new();
    let order = ctx.order;

    if !allows(&rules.order_numbers, &order.number) {
        reasons.insert(Reason::OrderNotAllowed);
    }
    if !allows(&rules.payment_methods, &order.payment_method) {
        reasons.insert(Reason::PaymentMethodNotAllowed);
    }
    if let Some(users) = &rules.users {
        if !users.contains(&ctx.user_id) {
            reasons.insert(Reason::UserNotAllowed);
        }
    }

    let eligible_line = |line: &OrderLine| line_is_eligible(rules, line);
    if !order.lines.is_empty() && !order.lines.iter().any(eligible_line) {
        reasons.insert(Reason::NoEligibleItems);
    }

    let local = ctx.now.with_timezone(&ctx.tz);
    if let Some(days) = &rules.special_days {
        if !days.contains(&local.date_naive()) {
            reasons.insert(Reason::NotASpecialDay);
        }
    }
    if let Some(days) = &rules.days_of_week {
        let today = local.weekday();
        if !days.iter().any(|rule| rule.matches(today, ctx.weekend)) {
            reasons.insert(Reason::DayOfWeekNotAllowed);
        }
    }

    let totals = order.total().and_then(|total| {
        let subtotal = order
            .lines
            .iter()
            .filter(|line| eligible_line(line))
            .try_fold(0i64, |sum, line| sum.checked_add(line.amount()?))?;
        Some((total, subtotal))
    });
    let (order_total, eligible_subtotal) = match totals {
        Some(totals) => totals,
        None => {
            reasons.insert(Reason::InvalidOrder);
            (0, 0)
        }
    };

    let reasons: Vec<Reason> = reasons.into_iter().collect();
    Evaluation { eligible: reasons.is_empty(), reasons, order_total, eligible_subtotal }
}

/// An absent list allows anything; a present one only its members.
fn allows(list: &Option<Vec<String>>, value: &str) -> bool {
    match list {
        None => true,
        Some(list) => list.iter().any(|item| item == value),
    }
}

fn line_is_eligible(rules: &Rules, line: &OrderLine) -> bool {
    let in_list = |list: &Option<Vec<String>>, value: &str| list.as_ref().is_some_and(|l| l.iter().any(|v| v == value));
    match (&rules.skus, &rules.categories) {
        (None, None) => true,
        (skus, categories) => in_list(skus, &line.sku) || in_list(categories, &line.category),
    }
}

impl Rules {
    /// Checks a rule set before an admin saves it: no present-but-empty list
    /// (omit the field instead), at most [`MAX_LIST_LEN`] entries per list,
    /// strings of 1..=[`MAX_STR_LEN`] characters, positive user ids.
    pub fn validate(&self) -> Result<(), String> {
        check_strings("order_numbers", &self.order_numbers)?;
        check_strings("payment_methods", &self.payment_methods)?;
        check_strings("skus", &self.skus)?;
        check_strings("categories", &self.categories)?;
        if let Some(users) = &self.users {
            check_len("users", users.len())?;
            if let Some(bad) = users.iter().find(|&&id| id <= 0) {
                return Err(format!("users: user id {bad} is not positive"));
            }
        }
        if let Some(days) = &self.special_days {
            check_len("special_days", days.len())?;
        }
        if let Some(days) = &self.days_of_week {
            check_len("days_of_week", days.len())?;
        }
        Ok(())
    }
}

fn check_len(field: &str, len: usize) -> Result<(), String> {
    if len == 0 {
        return Err(format!("{field}: the list is empty; omit the field to allow any value"));
    }
    if len > MAX_LIST_LEN {
        return Err(format!("{field}: {len} entries, at most {MAX_LIST_LEN} allowed"));
    }
    Ok(())
}

fn check_strings(field: &str, list: &Option<Vec<String>>) -> Result<(), String> {
    let Some(list) = list else { return Ok(()) };
    check_len(field, list.len())?;
    for (i, value) in list.iter().enumerate() {
        let chars = value.chars().count();
        if value.trim().is_empty() {
            return Err(format!("{field}[{i}]: empty string"));
        }
        if chars > MAX_STR_LEN {
            return Err(format!("{field}[{i}]: {chars} characters, at most {MAX_STR_LEN} allowed"));
        }
        if crate::text::has_control(value) {
            return Err(format!("{field}[{i}]: a control character"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Offset, TimeZone};
    use chrono_tz::Asia::Tehran;
    use chrono_tz::UTC;

    use Reason::*;

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().with_timezone(&Utc)
    }

    fn date(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn line(sku: &str, category: &str, unit_price: i64, quantity: i64) -> OrderLine {
        OrderLine { sku: sku.into(), category: category.into(), unit_price, quantity }
    }

    /// Total 245_000: shoes 215_000 (A1 200_000 + C3 15_000), books 30_000.
    fn order() -> Order {
        order_with(vec![line("A1", "shoes", 100_000, 2), line("B2", "books", 30_000, 1), line("C3", "shoes", 5_000, 3)])
    }

    fn order_with(lines: Vec<OrderLine>) -> Order {
        Order { number: "ORD-1".into(), payment_method: "card".into(), lines }
    }

    fn strings(items: &[&str]) -> Option<Vec<String>> {
        Some(items.iter().map(|s| s.to_string()).collect())
    }

    /// A Tuesday: 2026-03-17 11:30 in Tehran, the same date in UTC.
    const TUESDAY: &str = "2026-03-17T08:00:00Z";
    /// 2026-03-20 (Fri) 23:59:59 in Tehran; 20:30:00Z is 2026-03-21 (Sat) 00:00.
    const LAST_SECOND_OF_FRI_TEHRAN: &str = "2026-03-20T20:29:59Z";
    const MIDNIGHT_SAT_TEHRAN: &str = "2026-03-20T20:30:00Z";
    /// Thursday 21:00 in UTC is already Friday 00:30 in Tehran.
    const THU_UTC_FRI_TEHRAN: &str = "2026-03-19T21:00:00Z";
    /// Thursday 23:59:59 in Tehran; one second later it is Friday there.
    const LAST_SECOND_OF_THU_TEHRAN: &str = "2026-03-19T20:29:59Z";
    const MIDNIGHT_FRI_TEHRAN: &str = "2026-03-19T20:30:00Z";

    struct Row {
        name: &'static str,
        rules: Rules,
        user_id: i64,
        order: Order,
        now: &'static str,
        tz: Tz,
        weekend: &'static [Weekday],
        eligible: bool,
        reasons: Vec<Reason>,
        subtotal: i64,
    }

    /// A row with no rules, user 7, [`order`], a Tuesday in Tehran, Friday
    /// weekend: eligible with the whole 245_000.
    fn row(name: &'static str) -> Row {
        Row {
            name,
            rules: Rules::default(),
            user_id: 7,
            order: order(),
            now: TUESDAY,
            tz: Tehran,
            weekend: DEFAULT_WEEKEND,
            eligible: true,
            reasons: vec![],
            subtotal: 245_000,
        }
    }

    impl Row {
        fn rules(mut self, rules: Rules) -> Self {
            self.rules = rules;
            self
        }
        fn user(mut self, user_id: i64) -> Self {
            self.user_id = user_id;
            self
        }
        fn order(mut self, order: Order) -> Self {
            self.order = order;
            self
        }
        fn now(mut self, now: &'static str) -> Self {
            self.now = now;
            self
        }
        fn tz(mut self, tz: Tz) -> Self {
            self.tz = tz;
            self
        }
        fn weekend(mut self, weekend: &'static [Weekday]) -> Self {
            self.weekend = weekend;
            self
        }
        /// Expect a refusal with exactly these reasons.
        fn fails(mut self, reasons: &[Reason]) -> Self {
            self.eligible = false;
            self.reasons = reasons.to_vec();
            self
        }
        fn subtotal(mut self, subtotal: i64) -> Self {
            self.subtotal = subtotal;
            self
        }
    }

    fn table() -> Vec<Row> {
        let shoes = || Rules { categories: strings(&["shoes"]), ..Rules::default() };
        let special = |d: &str| Rules { special_days: Some(vec![date(d)]), ..Rules::default() };
        let days = |d: &[DayRule]| Rules { days_of_week: Some(d.to_vec()), ..Rules::default() };
        vec![
            row("no rules: everything eligible"),
            // order numbers
            row("order number listed").rules(Rules { order_numbers: strings(&["ORD-0", "ORD-1"]), ..Rules::default() }),
            row("order number not listed")
                .rules(Rules { order_numbers: strings(&["ORD-2"]), ..Rules::default() })
                .fails(&[OrderNotAllowed]),
            row("order number match is exact (case)")
                .rules(Rules { order_numbers: strings(&["ord-1"]), ..Rules::default() })
                .fails(&[OrderNotAllowed]),
            row("empty order list allows nothing")
                .rules(Rules { order_numbers: Some(vec![]), ..Rules::default() })
                .fails(&[OrderNotAllowed]),
            // payment methods
            row("payment method listed")
                .rules(Rules { payment_methods: strings(&["wallet", "card"]), ..Rules::default() }),
            row("payment method not listed")
                .rules(Rules { payment_methods: strings(&["wallet"]), ..Rules::default() })
                .fails(&[PaymentMethodNotAllowed]),
            // users
            row("personal: user listed").rules(Rules { users: Some(vec![3, 7]), ..Rules::default() }),
            row("personal: user not listed")
                .rules(Rules { users: Some(vec![3, 8]), ..Rules::default() })
                .fails(&[UserNotAllowed]),
            row("personal: other user")
                .rules(Rules { users: Some(vec![7]), ..Rules::default() })
                .user(70)
                .fails(&[UserNotAllowed]),
            // items
            row("skus limit the subtotal").rules(Rules { skus: strings(&["B2"]), ..Rules::default() }).subtotal(30_000),
            row("categories limit the subtotal").rules(shoes()).subtotal(215_000),
            row("skus and categories: a line matching either is eligible").rules(Rules {
                skus: strings(&["B2"]),
                categories: strings(&["shoes"]),
                ..Rules::default()
            }),
            row("sku of a listed category counts once")
                .rules(Rules { skus: strings(&["A1"]), categories: strings(&["shoes"]), ..Rules::default() })
                .subtotal(215_000),
            row("no line matches the skus")
                .rules(Rules { skus: strings(&["ZZ"]), ..Rules::default() })
                .fails(&[NoEligibleItems])
                .subtotal(0),
            row("no line matches skus nor categories")
                .rules(Rules { skus: strings(&["ZZ"]), categories: strings(&["toys"]), ..Rules::default() })
                .fails(&[NoEligibleItems])
                .subtotal(0),
            row("empty sku list, category matches")
                .rules(Rules { skus: Some(vec![]), categories: strings(&["books"]), ..Rules::default() })
                .subtotal(30_000),
            row("category match is exact (case)")
                .rules(Rules { categories: strings(&["Shoes"]), ..Rules::default() })
                .fails(&[NoEligibleItems])
                .subtotal(0),
            row("free eligible line: eligible with subtotal 0")
                .rules(Rules { skus: strings(&["GIFT"]), ..Rules::default() })
                .order(order_with(vec![line("A1", "shoes", 100, 1), line("GIFT", "gift", 0, 1)]))
                .subtotal(0),
            // special days, judged in the code's zone
            row("special day: last second before it in Tehran")
                .rules(special("2026-03-21"))
                .now(LAST_SECOND_OF_FRI_TEHRAN)
                .fails(&[NotASpecialDay]),
            row("special day: its first second in Tehran (still the 20th in UTC)")
                .rules(special("2026-03-21"))
                .now(MIDNIGHT_SAT_TEHRAN),
            row("special day: the same instant judged in UTC is the day before")
                .rules(special("2026-03-21"))
                .now(MIDNIGHT_SAT_TEHRAN)
                .tz(UTC)
                .fails(&[NotASpecialDay]),
            row("special day: UTC date is the 20th but Tehran's is over")
                .rules(special("2026-03-20"))
                .now(MIDNIGHT_SAT_TEHRAN)
                .fails(&[NotASpecialDay]),
            row("special day: the 20th in UTC").rules(special("2026-03-20")).now(MIDNIGHT_SAT_TEHRAN).tz(UTC),
            row("special day: one of several")
                .rules(Rules { special_days: Some(vec![date("2026-01-01"), date("2026-03-17")]), ..Rules::default() }),
            // days of week, judged in the code's zone
            row("fri: Thursday 21:00 UTC is Friday in Tehran").rules(days(&[DayRule::Fri])).now(THU_UTC_FRI_TEHRAN),
            row("fri: the same instant is Thursday in UTC")
                .rules(days(&[DayRule::Fri]))
                .now(THU_UTC_FRI_TEHRAN)
                .tz(UTC)
                .fails(&[DayOfWeekNotAllowed]),
            row("thu: the same instant is no longer Thursday in Tehran")
                .rules(days(&[DayRule::Thu]))
                .now(THU_UTC_FRI_TEHRAN)
                .fails(&[DayOfWeekNotAllowed]),
            row("weekend: Friday in Tehran").rules(days(&[DayRule::Weekend])).now(THU_UTC_FRI_TEHRAN),
            row("weekend: Thursday in UTC")
                .rules(days(&[DayRule::Weekend]))
                .now(THU_UTC_FRI_TEHRAN)
                .tz(UTC)
                .fails(&[DayOfWeekNotAllowed]),
            row("weekend: last second of Thursday in Tehran")
                .rules(days(&[DayRule::Weekend]))
                .now(LAST_SECOND_OF_THU_TEHRAN)
                .fails(&[DayOfWeekNotAllowed]),
            row("weekend: first second of Friday in Tehran").rules(days(&[DayRule::Weekend])).now(MIDNIGHT_FRI_TEHRAN),
            row("weekend: Saturday is not Iran's weekend")
                .rules(days(&[DayRule::Weekend]))
                .now(MIDNIGHT_SAT_TEHRAN)
                .fails(&[DayOfWeekNotAllowed]),
            row("weekend: Saturday is a Sat+Sun market's weekend")
                .rules(days(&[DayRule::Weekend]))
                .now(MIDNIGHT_SAT_TEHRAN)
                .weekend(&[Weekday::Sat, Weekday::Sun]),
            row("weekend: Friday is not a Sat+Sun market's weekend")
                .rules(days(&[DayRule::Weekend]))
                .now(THU_UTC_FRI_TEHRAN)
                .weekend(&[Weekday::Sat, Weekday::Sun])
                .fails(&[DayOfWeekNotAllowed]),
            row("weekday: Friday in Tehran is not one")
                .rules(days(&[DayRule::Weekday]))
                .now(THU_UTC_FRI_TEHRAN)
                .fails(&[DayOfWeekNotAllowed]),
            row("weekday: the same instant is Thursday in UTC")
                .rules(days(&[DayRule::Weekday]))
                .now(THU_UTC_FRI_TEHRAN)
                .tz(UTC),
            row("weekday: Saturday is one in Iran").rules(days(&[DayRule::Weekday])).now(MIDNIGHT_SAT_TEHRAN),
            row("weekday: Tuesday").rules(days(&[DayRule::Weekday])),
            row("weekday: everything with no weekend")
                .rules(days(&[DayRule::Weekday]))
                .now(THU_UTC_FRI_TEHRAN)
                .weekend(&[]),
            row("weekend: nothing with no weekend")
                .rules(days(&[DayRule::Weekend]))
                .now(THU_UTC_FRI_TEHRAN)
                .weekend(&[])
                .fails(&[DayOfWeekNotAllowed]),
            row("sat: one second too early in Tehran")
                .rules(days(&[DayRule::Sat]))
                .now(LAST_SECOND_OF_FRI_TEHRAN)
                .fails(&[DayOfWeekNotAllowed]),
            row("sat: midnight in Tehran").rules(days(&[DayRule::Sat])).now(MIDNIGHT_SAT_TEHRAN),
            row("tue or wed on a Tuesday").rules(days(&[DayRule::Tue, DayRule::Wed])),
            row("mon, wed, sun on a Tuesday")
                .rules(days(&[DayRule::Mon, DayRule::Wed, DayRule::Sun]))
                .fails(&[DayOfWeekNotAllowed]),
            // invalid orders
            row("no lines").order(order_with(vec![])).fails(&[InvalidOrder]).subtotal(0),
            row("no lines, with an item rule: invalid, not 'no eligible items'")
                .rules(shoes())
                .order(order_with(vec![]))
                .fails(&[InvalidOrder])
                .subtotal(0),
            row("zero quantity").order(order_with(vec![line("A1", "shoes", 10, 0)])).fails(&[InvalidOrder]).subtotal(0),
            row("negative quantity")
                .order(order_with(vec![line("A1", "shoes", 10, 1), line("B2", "books", 10, -1)]))
                .fails(&[InvalidOrder])
                .subtotal(0),
            row("negative price on a line the coupon does not cover")
                .rules(shoes())
                .order(order_with(vec![line("A1", "shoes", 10, 1), line("B2", "books", -10, 1)]))
                .fails(&[InvalidOrder])
                .subtotal(0),
            row("line amount overflows")
                .order(order_with(vec![line("A1", "shoes", i64::MAX, 2)]))
                .fails(&[InvalidOrder])
                .subtotal(0),
            row("sum of lines overflows")
                .order(order_with(vec![
                    line("A1", "shoes", i64::MAX / 2 + 1, 1),
                    line("C3", "shoes", i64::MAX / 2 + 1, 1),
                ]))
                .fails(&[InvalidOrder])
                .subtotal(0),
            row("largest valid order")
                .order(order_with(vec![line("A1", "shoes", i64::MAX / 2, 1), line("C3", "shoes", i64::MAX / 2 + 1, 1)]))
                .subtotal(i64::MAX),
            row("invalid order and no matching item: both reported")
                .rules(Rules { skus: strings(&["ZZ"]), ..Rules::default() })
                .order(order_with(vec![line("A1", "shoes", 10, 0)]))
                .fails(&[NoEligibleItems, InvalidOrder])
                .subtotal(0),
            // combinations
            row("all rules present and holding")
                .rules(Rules {
                    order_numbers: strings(&["ORD-1"]),
                    payment_methods: strings(&["card"]),
                    users: Some(vec![7]),
                    skus: strings(&["B2"]),
                    categories: strings(&["toys"]),
                    special_days: Some(vec![date("2026-03-21")]),
                    days_of_week: Some(vec![DayRule::Sat, DayRule::Weekend]),
                })
                .now(MIDNIGHT_SAT_TEHRAN)
                .subtotal(30_000),
            row("order, payment and user all fail")
                .rules(Rules {
                    order_numbers: strings(&["ORD-9"]),
                    payment_methods: strings(&["wallet"]),
                    users: Some(vec![1]),
                    ..Rules::default()
                })
                .fails(&[OrderNotAllowed, PaymentMethodNotAllowed, UserNotAllowed]),
            row("every rule fails, all reasons listed")
                .rules(Rules {
                    order_numbers: strings(&["ORD-9"]),
                    payment_methods: strings(&["wallet"]),
                    users: Some(vec![1]),
                    skus: strings(&["ZZ"]),
                    categories: strings(&["toys"]),
                    special_days: Some(vec![date("2026-03-21")]),
                    days_of_week: Some(vec![DayRule::Weekend]),
                })
                .now(LAST_SECOND_OF_THU_TEHRAN)
                .fails(&[
                    OrderNotAllowed,
                    PaymentMethodNotAllowed,
                    UserNotAllowed,
                    NoEligibleItems,
                    NotASpecialDay,
                    DayOfWeekNotAllowed,
                ])
                .subtotal(0),
            row("day rules both fail one second before Tehran's midnight")
                .rules(Rules {
                    special_days: Some(vec![date("2026-03-21")]),
                    days_of_week: Some(vec![DayRule::Sat]),
                    categories: strings(&["shoes"]),
                    ..Rules::default()
                })
                .now(LAST_SECOND_OF_FRI_TEHRAN)
                .fails(&[NotASpecialDay, DayOfWeekNotAllowed])
                .subtotal(215_000),
            row("day rules both hold at Tehran's midnight")
                .rules(Rules {
                    special_days: Some(vec![date("2026-03-21")]),
                    days_of_week: Some(vec![DayRule::Sat]),
                    categories: strings(&["shoes"]),
                    ..Rules::default()
                })
                .now(MIDNIGHT_SAT_TEHRAN)
                .subtotal(215_000),
            row("user fails on an invalid order: both reported")
                .rules(Rules { users: Some(vec![1]), ..Rules::default() })
                .order(order_with(vec![]))
                .fails(&[UserNotAllowed, InvalidOrder])
                .subtotal(0),
            row("payment fails while items limit the subtotal")
                .rules(Rules { payment_methods: strings(&["wallet"]), skus: strings(&["C3"]), ..Rules::default() })
                .fails(&[PaymentMethodNotAllowed])
                .subtotal(15_000),
        ]
    }

    #[test]
    fn every_rule_alone_and_combined() {
        let rows = table();
        assert!(rows.len() >= 50, "the table lost rows: {}", rows.len());
        let mut failures = Vec::new();
        for r in &rows {
            let ctx = Context { user_id: r.user_id, order: &r.order, now: at(r.now), tz: r.tz, weekend: r.weekend };
            let got = evaluate(&r.rules, &ctx);
            let want_total = r.order.total().unwrap_or(0);
            if got.eligible != r.eligible
                || got.reasons != r.reasons
                || got.eligible_subtotal != r.subtotal
                || got.order_total != want_total
            {
                failures.push(format!(
                    "{}: got eligible={} reasons={:?} subtotal={} total={}; want eligible={} reasons={:?} subtotal={} total={}",
                    r.name,
                    got.eligible,
                    got.reasons,
                    got.eligible_subtotal,
                    got.order_total,
                    r.eligible,
                    r.reasons,
                    r.subtotal,
                    want_total
                ));
            }
        }
        assert!(failures.is_empty(), "{} of {} rows failed:\n{}", failures.len(), rows.len(), failures.join("\n"));
    }

    #[test]
    fn tehran_is_utc_plus_3_30_all_year() {
        assert_eq!(DEFAULT_TIME_ZONE, Tehran);
        assert_eq!(DEFAULT_TIME_ZONE.name(), "Asia/Tehran");
        // Iran dropped daylight saving in 2022: +03:30 in winter and summer.
        for instant in ["2026-01-15T12:00:00Z", "2026-03-20T20:30:00Z", "2026-07-01T12:00:00Z", "2026-09-22T12:00:00Z"]
        {
            let offset = Tehran.offset_from_utc_datetime(&at(instant).naive_utc()).fix();
            assert_eq!(offset.local_minus_utc(), 3 * 3600 + 30 * 60, "{instant}");
        }
        let local = at(MIDNIGHT_SAT_TEHRAN).with_timezone(&Tehran);
        assert_eq!(local.format("%Y-%m-%d %H:%M:%S %a").to_string(), "2026-03-21 00:00:00 Sat");
        let local = at(THU_UTC_FRI_TEHRAN).with_timezone(&Tehran);
        assert_eq!(local.format("%Y-%m-%d %H:%M %a").to_string(), "2026-03-20 00:30 Fri");
    }

    #[test]
    fn day_rule_matches_each_day_once() {
        let exact = [
            (DayRule::Mon, Weekday::Mon),
            (DayRule::Tue, Weekday::Tue),
            (DayRule::Wed, Weekday::Wed),
            (DayRule::Thu, Weekday::Thu),
            (DayRule::Fri, Weekday::Fri),
            (DayRule::Sat, Weekday::Sat),
            (DayRule::Sun, Weekday::Sun),
        ];
        for (rule, day) in exact {
            for other in exact.map(|(_, d)| d) {
                assert_eq!(rule.matches(other, DEFAULT_WEEKEND), other == day, "{rule:?} on {other:?}");
            }
        }
        for (_, day) in exact {
            let weekend = day == Weekday::Fri;
            assert_eq!(DayRule::Weekend.matches(day, DEFAULT_WEEKEND), weekend, "{day:?}");
            assert_eq!(DayRule::Weekday.matches(day, DEFAULT_WEEKEND), !weekend, "{day:?}");
        }
    }

    #[test]
    fn reasons_serialize_as_their_stable_codes() {
        let all = [
            OrderNotAllowed,
            PaymentMethodNotAllowed,
            UserNotAllowed,
            NoEligibleItems,
            NotASpecialDay,
            DayOfWeekNotAllowed,
            BelowMinimumOrder,
            InvalidOrder,
        ];
        for reason in all {
            assert_eq!(serde_json::to_value(reason).unwrap(), serde_json::json!(reason.code()));
            let back: Reason = serde_json::from_value(serde_json::json!(reason.code())).unwrap();
            assert_eq!(back, reason);
        }
        assert_eq!(NotASpecialDay.to_string(), "not_a_special_day");
    }

    #[test]
    fn rules_json_round_trip_and_refuse_unknown_fields() {
        let json = serde_json::json!({
            "payment_methods": ["card"],
            "special_days": ["2026-03-21"],
            "days_of_week": ["sat", "weekend", "weekday"],
        });
        let rules: Rules = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(rules.special_days, Some(vec![date("2026-03-21")]));
        assert_eq!(rules.days_of_week, Some(vec![DayRule::Sat, DayRule::Weekend, DayRule::Weekday]));
        assert_eq!(serde_json::to_value(&rules).unwrap(), json);
        assert_eq!(serde_json::from_str::<Rules>("{}").unwrap(), Rules::default());
        assert!(serde_json::from_str::<Rules>(r#"{"sku": ["A1"]}"#).is_err(), "a typo must not pass as no rule");
        assert!(serde_json::from_str::<Rules>(r#"{"days_of_week": ["friday"]}"#).is_err());
    }

    #[test]
    fn validate_rules() {
        let ok = Rules {
            order_numbers: strings(&["ORD-1"]),
            payment_methods: strings(&["card"]),
            users: Some(vec![1]),
            skus: strings(&["A1"]),
            categories: strings(&["shoes"]),
            special_days: Some(vec![date("2026-03-21")]),
            days_of_week: Some(vec![DayRule::Weekend]),
        };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(Rules::default().validate(), Ok(()));
        let long = "x".repeat(MAX_STR_LEN);
        assert_eq!(Rules { skus: Some(vec![long.clone()]), ..Rules::default() }.validate(), Ok(()));
        // 64 characters of Persian are more than 64 bytes but within bounds.
        assert_eq!(Rules { categories: Some(vec!["ک".repeat(MAX_STR_LEN)]), ..Rules::default() }.validate(), Ok(()));

        let cases: Vec<(Rules, &str)> = vec![
            (Rules { skus: Some(vec![]), ..Rules::default() }, "skus: the list is empty"),
            (Rules { users: Some(vec![]), ..Rules::default() }, "users: the list is empty"),
            (Rules { special_days: Some(vec![]), ..Rules::default() }, "special_days: the list is empty"),
            (Rules { days_of_week: Some(vec![]), ..Rules::default() }, "days_of_week: the list is empty"),
            (Rules { payment_methods: strings(&["card", ""]), ..Rules::default() }, "payment_methods[1]: empty string"),
            (Rules { categories: strings(&["  "]), ..Rules::default() }, "categories[0]: empty string"),
            (
                Rules { order_numbers: Some(vec![format!("{long}y")]), ..Rules::default() },
                "order_numbers[0]: 65 characters, at most 64",
            ),
            (
                Rules { skus: Some(vec!["A".to_string(); MAX_LIST_LEN + 1]), ..Rules::default() },
                "skus: 10001 entries, at most 10000",
            ),
            (Rules { users: Some(vec![5, 0]), ..Rules::default() }, "users: user id 0 is not positive"),
            (Rules { users: Some(vec![-3]), ..Rules::default() }, "users: user id -3 is not positive"),
        ];
        for (rules, want) in cases {
            let err = rules.validate().unwrap_err();
            assert!(err.starts_with(want), "{err:?} should start with {want:?}");
        }
        let at_limit = Rules { users: Some((1..=MAX_LIST_LEN as i64).collect()), ..Rules::default() };
        assert_eq!(at_limit.validate(), Ok(()));
    }
}
