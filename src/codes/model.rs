//! A code and the rules that decide whether it can be redeemed now.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// A code name that has passed the rules: 1-64 characters of `[A-Z0-9_-]`.
/// Input is trimmed and upper-cased, so "spring" and "SPRING" are one code.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CodeName(String);

impl CodeName {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let name = raw.trim().to_ascii_uppercase();
        if name.is_empty() || name.len() > Self::MAX_LEN {
            return Err(ApiError::InvalidInput(format!("code must be 1-{} characters", Self::MAX_LEN)));
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(ApiError::InvalidInput("code may contain only letters, digits, '_' and '-'".into()));
        }
        Ok(CodeName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The spec's schema of a code name, built from the same rules as
/// [`CodeName::parse`] (so the two cannot disagree): 1-64 of `A-Z a-z 0-9 _ -`.
/// The server also trims surrounding white space before it checks; the
/// spec states the canonical form.
pub struct CodeNameSchema;

impl CodeName {
    /// The characters a code may hold, as a JSON-Schema pattern class.
    pub const CLASS: &'static str = "[A-Za-z0-9_-]";

    pub fn pattern(max_len: usize) -> String {
        format!("^{}{{1,{max_len}}}$", Self::CLASS)
    }
}

impl utoipa::PartialSchema for CodeNameSchema {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(CodeName::MAX_LEN))
            .pattern(Some(CodeName::pattern(CodeName::MAX_LEN)))
            .description(Some("A code, case-insensitive (stored upper-case)."))
            .examples(["SPRING"])
            .into()
    }
}

impl utoipa::ToSchema for CodeNameSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "CodeName".into()
    }
}

/// The spec's schema of an instant the API takes: RFC 3339 with a time
/// zone offset, as chrono reads it (`format: date-time` alone is only an
/// annotation in JSON Schema 2020-12, so the pattern says what is refused).
pub struct TimestampSchema;

impl TimestampSchema {
    pub const PATTERN: &'static str = "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?(Z|[+-](0[0-9]|1[0-4]):[0-5][0-9])$";
}

impl utoipa::PartialSchema for TimestampSchema {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .pattern(Some(Self::PATTERN))
            .description(Some(
                "RFC 3339 with an offset, e.g. 2026-03-20T00:00:00+03:30. (The pattern admits days 01-28 \
                 only so that every value it admits is a real date; later days are accepted too.)",
            ))
            .examples(["2026-03-20T00:00:00+03:30"])
            .into()
    }
}

impl utoipa::ToSchema for TimestampSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }
}

/// The spec's schema of a code's time zone: the shape of an IANA name.
/// Which names exist is the server's tz database's word (chrono-tz), not
/// the spec's: listed as an enum, its aliases (`GMT0`, `GMT+0`, `GMT-0`)
/// collide in generated clients, and the list changes with tzdb releases.
/// An unknown name is 422 `invalid_input`.
pub struct TimeZoneSchema;

impl utoipa::PartialSchema for TimeZoneSchema {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(64))
            .pattern(Some("^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"))
            .description(Some("An IANA time zone name the server knows, e.g. Asia/Tehran."))
            .examples(["Asia/Tehran"])
            .into()
    }
}

impl utoipa::ToSchema for TimeZoneSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "TimeZone".into()
    }
}

impl std::fmt::Display for CodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CodeStatus {
    Active,
    Paused,
    Ended,
}

impl CodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CodeStatus::Active => "active",
            CodeStatus::Paused => "paused",
            CodeStatus::Ended => "ended",
        }
    }

    pub fn from_db(s: &str) -> Self {
        match s {
            "paused" => CodeStatus::Paused,
            "ended" => CodeStatus::Ended,
            _ => CodeStatus::Active,
        }
    }
}

/// The three kinds of limited reward, all behind the same gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CodeKind {
    /// The first N users get `amount` in their wallet.
    Credit,
    /// The first N users to log in to the campaign get a voucher.
    Voucher,
    /// A checkout applies it to an order, within its rules.
    Coupon,
}

impl CodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CodeKind::Credit => "credit",
            CodeKind::Voucher => "voucher",
            CodeKind::Coupon => "coupon",
        }
    }

    pub fn from_db(s: &str) -> Self {
        match s {
            "voucher" => CodeKind::Voucher,
            "coupon" => CodeKind::Coupon,
            _ => CodeKind::Credit,
        }
    }
}

/// What a voucher campaign hands out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoucherReward {
    /// Percentage off, 1-100.
    #[schema(minimum = 1, maximum = 100, example = 30)]
    pub percent: u32,
    /// Largest discount one use of the voucher gives, if capped.
    #[schema(minimum = 1, example = 50000)]
    pub max_amount: Option<i64>,
    /// What it applies to, e.g. "mobile_topup"; 1-64 characters.
    #[schema(value_type = crate::text::Label, example = "mobile_topup")]
    pub voucher_type: String,
    /// How long an issued voucher stays valid, 1-3650 days.
    #[schema(minimum = 1, maximum = 3650, example = 30)]
    pub valid_days: u32,
}

/// A credit code's reward is its `amount`: its `reward` is `{}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoReward {}

/// A code's stored reward, as the API shows it, by the code's `kind`:
/// `{}` for a credit code (its `amount` is the reward), a `VoucherReward`
/// for a voucher campaign, a `CouponReward` for a coupon. The shapes never
/// overlap (each refuses the others' fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum CodeReward {
    Credit(NoReward),
    Voucher(VoucherReward),
    Coupon(crate::coupons::CouponReward),
}

impl VoucherReward {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100).contains(&self.percent) {
            return Err("percent must be between 1 and 100".into());
        }
        if self.max_amount.is_some_and(|m| m <= 0) {
            return Err("max_amount must be positive".into());
        }
        if !crate::text::is_label(&self.voucher_type, 64) {
            return Err("voucher_type must be 1-64 characters, none of them a control character".into());
        }
        if !(1..=3650).contains(&self.valid_days) {
            return Err("valid_days must be between 1 and 3650".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Code {
    #[serde(skip)]
    pub id: i64,
    pub code: String,
    pub kind: CodeKind,
    /// Credit per redemption, in the wallet's currency unit (integer Toman); 0 for other kinds.
    pub amount: i64,
    pub limit: i32,
    /// How many times one user may use it (1 for credit codes and vouchers).
    pub per_user_limit: i32,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub status: CodeStatus,
    /// IANA time zone in which day rules are judged.
    pub time_zone: String,
    /// Voucher or coupon reward, by `kind`; {} for credit codes.
    #[schema(value_type = CodeReward)]
    pub reward: serde_json::Value,
    /// Coupon eligibility rules; {} when none.
    #[schema(value_type = crate::coupons::Rules)]
    pub rules: serde_json::Value,
    /// The campaign a bulk-generated code belongs to.
    pub batch: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Orders the changes of the code's controls (see migrations/V4).
    #[serde(skip)]
    pub control_rev: i64,
    /// Its redemptions are counted under its own name in the metrics
    /// (`redemptions_total{code=...}`); others share one label. Never for bulk codes.
    pub tracked: bool,
}

impl Code {
    pub fn voucher_reward(&self) -> Result<VoucherReward, ApiError> {
        serde_json::from_value(self.reward.clone())
            .map_err(|e| ApiError::internal(anyhow::anyhow!("code {} has a bad voucher reward: {e}", self.code)))
    }

    pub fn coupon_reward(&self) -> Result<crate::coupons::CouponReward, ApiError> {
        serde_json::from_value(self.reward.clone())
            .map_err(|e| ApiError::internal(anyhow::anyhow!("code {} has a bad coupon reward: {e}", self.code)))
    }

    pub fn coupon_rules(&self) -> Result<crate::coupons::Rules, ApiError> {
        serde_json::from_value(self.rules.clone())
            .map_err(|e| ApiError::internal(anyhow::anyhow!("code {} has bad rules: {e}", self.code)))
    }

    pub fn tz(&self) -> chrono_tz::Tz {
        self.time_zone.parse().unwrap_or(crate::coupons::DEFAULT_TIME_ZONE)
    }
}

/// Why a code cannot be used right now. The same four reasons come from the
/// in-process cache, the Redis gate (claim.lua) and the commit (the database
/// trigger), so a client sees one answer whichever of them noticed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotNow {
    Paused,
    Ended,
    NotStarted,
    Expired,
}

impl NotNow {
    /// The reason as claim.lua and the database trigger name it.
    pub fn parse(reason: &str) -> Option<Self> {
        match reason {
            "paused" => Some(NotNow::Paused),
            "ended" => Some(NotNow::Ended),
            "not_started" => Some(NotNow::NotStarted),
            "expired" => Some(NotNow::Expired),
            _ => None,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            NotNow::Paused => "this code is paused",
            NotNow::Ended => "this code has ended",
            NotNow::NotStarted => "this code is not active yet",
            NotNow::Expired => "this code has expired",
        }
    }
}

impl From<NotNow> for ApiError {
    fn from(why: NotNow) -> Self {
        ApiError::NotEligible(why.message().into())
    }
}

impl Code {
    /// Whether the code may be redeemed at `now`: active and inside its window
    /// (`starts_at` inclusive, `ends_at` exclusive).
    pub fn check_redeemable(&self, now: DateTime<Utc>) -> Result<(), ApiError> {
        match self.not_redeemable_at(now) {
            Some(why) => Err(why.into()),
            None => Ok(()),
        }
    }

    pub fn not_redeemable_at(&self, now: DateTime<Utc>) -> Option<NotNow> {
        match self.status {
            CodeStatus::Active => {}
            CodeStatus::Paused => return Some(NotNow::Paused),
            CodeStatus::Ended => return Some(NotNow::Ended),
        }
        if self.starts_at.is_some_and(|s| now < s) {
            return Some(NotNow::NotStarted);
        }
        if self.ends_at.is_some_and(|e| now >= e) {
            return Some(NotNow::Expired);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn code(starts: Option<i64>, ends: Option<i64>, status: CodeStatus) -> Code {
        let t = |s: i64| Utc.timestamp_opt(s, 0).single();
        Code {
            id: 1,
            code: "X".into(),
            kind: CodeKind::Credit,
            amount: 1,
            limit: 1,
            per_user_limit: 1,
            starts_at: starts.and_then(t),
            ends_at: ends.and_then(t),
            status,
            time_zone: "Asia/Tehran".into(),
            reward: serde_json::json!({}),
            rules: serde_json::json!({}),
            batch: None,
            created_at: Utc::now(),
            control_rev: 0,
            tracked: false,
        }
    }

    #[test]
    fn the_window_is_start_inclusive_end_exclusive() {
        let at = |s: i64| Utc.timestamp_opt(s, 0).single().unwrap_or_default();
        let c = code(Some(100), Some(200), CodeStatus::Active);
        assert!(c.check_redeemable(at(99)).is_err());
        assert!(c.check_redeemable(at(100)).is_ok());
        assert!(c.check_redeemable(at(199)).is_ok());
        assert!(c.check_redeemable(at(200)).is_err());
        assert!(code(None, None, CodeStatus::Active).check_redeemable(at(0)).is_ok());
        assert!(code(None, None, CodeStatus::Paused).check_redeemable(at(0)).is_err());
        assert!(code(None, None, CodeStatus::Ended).check_redeemable(at(0)).is_err());
    }

    #[test]
    fn code_names_are_normalised_and_checked() {
        assert_eq!(CodeName::parse(" spring-1 ").ok().map(|c| c.0).as_deref(), Some("SPRING-1"));
        for bad in ["", "   ", "A{B}", "a b", "ö", &"X".repeat(65)] {
            assert!(CodeName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
